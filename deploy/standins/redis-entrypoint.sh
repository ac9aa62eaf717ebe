#!/bin/sh
# As the official redis image: flags alone (or a .conf file) are given to redis-server.
set -eu
case "${1:-}" in -*|*.conf) set -- redis-server "$@" ;; esac
exec "$@"
