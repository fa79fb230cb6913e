#!/bin/sh
# The official memcached image's contract on Debian's memcached: flags alone mean memcached; the server runs
# as the memcache user (it refuses to run as root), on every interface.
set -eu

case "${1:-memcached}" in
  -*) set -- memcached "$@" ;;
esac
[ $# -gt 0 ] || set -- memcached
if [ "$1" = memcached ] && [ "$(id -u)" = 0 ]; then
  exec setpriv --reuid=memcache --regid=memcache --init-groups -- "$@"
fi
exec "$@"
