#!/bin/sh
# The official mysql image's contract on Debian's MariaDB: initialise the data dir on first start (users,
# database, grants) with networking off, then the server on 0.0.0.0:3306.
set -eu

DATADIR=/var/lib/mysql
SOCKET=/run/mysqld/mysqld.sock

case "${1:-mysqld}" in
  -*) set -- mysqld "$@" ;;
esac
case "${1:-mysqld}" in
  mysqld|mariadbd) [ $# -gt 0 ] && shift ;;
  *) exec "$@" ;;
esac

# A string for a single-quoted SQL literal.
sql() { printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e "s/'/\\\\'/g"; }
ident() { printf '%s' "$1" | sed -e 's/`/``/g'; }

mkdir -p "$DATADIR" /run/mysqld
chown mysql:mysql "$DATADIR" /run/mysqld

if [ ! -d "$DATADIR/mysql" ]; then
  root_password=${MYSQL_ROOT_PASSWORD:-}
  if [ -z "$root_password" ]; then
    if [ -n "${MYSQL_RANDOM_ROOT_PASSWORD:-}" ]; then
      root_password=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
      echo "GENERATED ROOT PASSWORD: $root_password"
    elif [ -z "${MYSQL_ALLOW_EMPTY_PASSWORD:-}" ]; then
      echo "error: the database is uninitialized and MYSQL_ROOT_PASSWORD is not set" >&2
      exit 1
    fi
  fi
  mariadb-install-db --user=mysql --datadir="$DATADIR" --auth-root-authentication-method=normal \
    --skip-test-db --skip-name-resolve >/dev/null
  mariadbd --user=mysql --datadir="$DATADIR" --skip-networking --socket="$SOCKET" >/dev/null 2>&1 &
  pid=$!
  i=0
  until mariadb-admin --socket="$SOCKET" -uroot ping >/dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -gt 300 ] || ! kill -0 "$pid" 2>/dev/null; then
      echo "error: the server did not start for initialisation" >&2
      exit 1
    fi
    sleep 0.1
  done
  {
    echo "DELETE FROM mysql.global_priv WHERE User = '';"
    echo "ALTER USER 'root'@'localhost' IDENTIFIED BY '$(sql "$root_password")';"
    echo "CREATE USER 'root'@'%' IDENTIFIED BY '$(sql "$root_password")';"
    echo "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
    if [ -n "${MYSQL_DATABASE:-}" ]; then
      echo "CREATE DATABASE IF NOT EXISTS \`$(ident "$MYSQL_DATABASE")\`;"
    fi
    if [ -n "${MYSQL_USER:-}" ] && [ -n "${MYSQL_PASSWORD:-}" ]; then
      echo "CREATE USER '$(sql "$MYSQL_USER")'@'%' IDENTIFIED BY '$(sql "$MYSQL_PASSWORD")';"
      if [ -n "${MYSQL_DATABASE:-}" ]; then
        echo "GRANT ALL ON \`$(ident "$MYSQL_DATABASE")\`.* TO '$(sql "$MYSQL_USER")'@'%';"
      fi
    fi
    echo "FLUSH PRIVILEGES;"
  } | mariadb --socket="$SOCKET" -uroot --binary-mode
  kill "$pid"
  wait "$pid" || true
  echo "mysql: initialized $DATADIR"
fi

exec mariadbd --user=mysql --datadir="$DATADIR" --socket="$SOCKET" --bind-address=0.0.0.0 --port=3306 \
  --skip-name-resolve "$@"
