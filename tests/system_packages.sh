#!/usr/bin/env bash
# The programs some tests drive that pip cannot install: Debian's Chromium and its driver (the
# /ui browser test) and Prometheus' promtool and server (the rules' tests and the scrape test).
# Installed with apt-get where they are missing and we may (root); otherwise the one line says
# what to install, and `make test` stops before running anything.
set -euo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} (Debian packages the tests drive)" >&2
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  exit 0
fi
echo "make test needs these Debian packages: ${missing[*]} (sudo apt-get install ${missing[*]})" >&2
exit 1
