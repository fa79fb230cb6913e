#!/usr/bin/env bash
# `make images`: the offline images the rack's tests (and an offline rack) use, built from Debian's packages.
#
#   rack-local/debian:bookworm    debootstrap --variant=minbase, `docker import`ed (the base of the others)
#   rack-local/postgres:bookworm  PostgreSQL 15, honouring the official postgres image's environment
#   rack-local/mysql:bookworm     MariaDB 10.11, honouring the official mysql image's environment
#   rack-local/redis:bookworm     Redis 7.0, taking the official redis image's command line
#   rack-local/memcached:bookworm Memcached 1.6, taking the official memcached image's command line
#   rack-local/clients:bookworm   psql, mariadb/mysql (+ mysql-url), redis-cli and busybox: an app base image
#   rack-local/python3:bookworm   Python 3.11 with `python` and `pip` (a venv): `convox init --base offline`
#   rack-local/node:bookworm      Node.js 18 and npm 9: `convox init --base offline`
#   rack-local/builder:bookworm   the rack's builder task on AWS (`python -m services.builder`, the stack's BuildImage)
#
# No container registry is reachable here, so nothing is pulled: the base is made with debootstrap from a
# Debian mirror and the others are `docker build`s on top of it (apt-get through the host's network).
# Cached: every image carries a label with a hash of what it is built from (this script's settings and its
# directory under images/); an image whose label matches is not rebuilt, so a second run does nothing.
#
#   bash images/build.sh [NAME...]     NAME: debian postgres mysql redis memcached clients python3 node builder (default: all)
#   DEBIAN_MIRROR=http://...  RACK_IMAGE_PREFIX=rack-local  IMAGES_FORCE=1 (rebuild all)
set -euo pipefail
SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")
cd "$(dirname "$SCRIPT")"

SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PREFIX=${RACK_IMAGE_PREFIX:-rack-local}
LABEL=rack.images.hash
BASE=$PREFIX/debian:$SUITE
SERVICES=(postgres mysql redis memcached clients)
SERVICES+=(python3 node)  # the language bases of apps (images/README.md)
SERVICES+=(builder)  # the rack's builder task on AWS
# Images that run the product's own code: these paths (from the repository's root) are copied into the build
# context's product/ directory, and are part of the image's hash.
declare -A PRODUCT_CODE=(
  [builder]="services/__init__.py services/builder shared/__init__.py shared/archive.py shared/dockerignore.py shared/errors.py"
)

say() { echo "images: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

command -v docker >/dev/null 2>&1 || die "docker is missing (run \`make docker\`)"
docker info >/dev/null 2>&1 || die "no Docker Engine answers (run \`make docker\`)"

# What an image is made from, as a short hash: the base's settings and, for the others, their directory.
base_hash() {
  printf '%s\n' "$SUITE" "$MIRROR" "$(sed -n '/^make_base()/,/^}/p' "$SCRIPT")" | sha256sum | cut -c1-16
}
dir_hash() {
  { base_hash; find "$1" -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum; product_files "$1" | xargs -r0 sha256sum; } |
    sha256sum | cut -c1-16
}
# The product's files an image carries (NUL-separated, sorted; paths relative to images/).
product_files() {
  local path
  for path in ${PRODUCT_CODE[$1]:-}; do find "../$path" -type f -name '*.py' -print0; done | LC_ALL=C sort -z
}
built_hash() { docker image inspect -f "{{ index .Config.Labels \"$LABEL\" }}" "$1" 2>/dev/null || true; }
fresh() { [ -z "${IMAGES_FORCE:-}" ] && [ "$(built_hash "$1")" = "$2" ]; }

ensure_debootstrap() {
  command -v debootstrap >/dev/null 2>&1 && return 0
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing debootstrap (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 install -y -q debootstrap >/dev/null 2>&1 || {
      apt-get -o DPkg::Lock::Timeout=300 update -q >/dev/null
      apt-get -o DPkg::Lock::Timeout=300 install -y -q debootstrap >/dev/null
    }
  fi
  command -v debootstrap >/dev/null 2>&1 || die "debootstrap is missing (Debian: apt-get install debootstrap; needs root)"
}

make_base() {
  local hash=$1 root
  [ "$(id -u)" -eq 0 ] || die "building $BASE needs root (debootstrap)"
  ensure_debootstrap
  root=$(mktemp -d /tmp/rack-images.XXXXXX)
  trap 'rm -rf "$root"' EXIT
  say "debootstrap $SUITE (minbase) from $MIRROR"
  debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 || {
    tail -20 "$root.log" >&2; rm -f "$root.log"; die "debootstrap failed"; }
  rm -f "$root.log"
  cat >"$root/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb ${MIRROR%/debian}/debian-security $SUITE-security main
SOURCES
  cat >"$root/etc/apt/apt.conf.d/90rack" <<'APT'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Retries "3";
APT
  cat >"$root/etc/dpkg/dpkg.cfg.d/90rack-nodoc" <<'DPKG'
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
DPKG
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/*
  say "docker import $BASE"
  tar --numeric-owner -C "$root" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -c . |
    docker import \
      -c "LABEL $LABEL=$hash" \
      -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
      -c 'CMD ["/bin/bash"]' \
      - "$BASE" >/dev/null
  rm -rf "$root"
  trap - EXIT
}

build_service() {
  local name=$1 hash=$2 image=$PREFIX/$1:$SUITE log
  local context=$name
  log=$(mktemp /tmp/rack-images-"$name".XXXXXX)
  if [ -n "${PRODUCT_CODE[$name]:-}" ]; then  # its directory plus the product's code, in a scratch context
    context=$(mktemp -d /tmp/rack-images-"$name"-context.XXXXXX)
    cp -r "$name"/. "$context"/
    product_files "$name" | while IFS= read -r -d '' file; do
      mkdir -p "$context/product/$(dirname "${file#../}")" && cp "$file" "$context/product/${file#../}"
    done
  fi
  say "docker build $image"
  if ! docker build --network host --build-arg "BASE=$BASE" --label "$LABEL=$hash" -t "$image" "$context" >"$log" 2>&1; then
    tail -30 "$log" >&2; rm -f "$log"; [ "$context" = "$name" ] || rm -rf "$context"; die "building $image failed"
  fi
  rm -f "$log"
  [ "$context" = "$name" ] || rm -rf "$context"
}

wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=(debian "${SERVICES[@]}")
start=$SECONDS

hash=$(base_hash)
if fresh "$BASE" "$hash"; then
  say "$BASE is up to date"
else
  make_base "$hash"
fi

for name in "${wanted[@]}"; do
  [ "$name" = debian ] && continue
  [ -d "$name" ] || die "no such image: $name (known: debian ${SERVICES[*]})"
  hash=$(dir_hash "$name")
  if fresh "$PREFIX/$name:$SUITE" "$hash"; then
    say "$PREFIX/$name:$SUITE is up to date"
  else
    build_service "$name" "$hash"
  fi
done
say "done in $((SECONDS - start))s"
