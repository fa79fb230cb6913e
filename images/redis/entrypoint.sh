#!/bin/sh
# The official redis image's contract on Debian's Redis: flags alone mean redis-server; the server runs
# as the redis user in /data; REDIS_PASSWORD (when set) becomes --requirepass.
set -eu

case "${1:-redis-server}" in
  -*|*.conf) set -- redis-server "$@" ;;
esac
[ $# -gt 0 ] || set -- redis-server
if [ "$1" = redis-server ]; then
  if [ -n "${REDIS_PASSWORD:-}" ]; then
    set -- "$@" --requirepass "$REDIS_PASSWORD"
  fi
  if [ "$(id -u)" = 0 ]; then
    chown -R redis:redis /data 2>/dev/null || true
    exec setpriv --reuid=redis --regid=redis --init-groups -- "$@" --dir /data
  fi
fi
exec "$@"
