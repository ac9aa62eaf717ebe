#!/bin/sh
# As the official seaweedfs image: a weed command (server, master, volume, filer, s3, ...) runs
# `weed -logtostderr=true COMMAND ...`; anything else runs as given.
set -eu
case "${1:-}" in
  server|master|volume|filer|s3|shell|version|iam|mq.broker|webdav) exec /usr/bin/weed -logtostderr=true "$@" ;;
esac
exec "$@"
