#!/usr/bin/env bash
# Install what the tests need beyond Python, through apt, and only what is missing:
#   chromium        headless Swagger UI check (playwright drives /usr/bin/chromium; no `playwright install`)
#   busybox-static  tests build `FROM scratch` images from /bin/busybox
#   tmux            terminal tests of the CLI
# `apt-get update` runs once, and only when something must be installed.
# Not root or not Debian: say what is missing and how to get it, exit 1.
set -euo pipefail

# package  file the tests use
TOOLS=(
  "chromium       /usr/bin/chromium"
  "busybox-static /bin/busybox"
  "tmux           /usr/bin/tmux"
)

say() { echo "ensure-test-tools: $*" >&2; }
is_debian() { [ -r /etc/debian_version ] && command -v apt-get >/dev/null 2>&1 && command -v dpkg-query >/dev/null 2>&1; }
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
for entry in "${TOOLS[@]}"; do
  read -r package file <<<"$entry"
  if is_debian; then
    installed "$package" && [ -e "$file" ] || missing+=("$package")
  else
    [ -e "$file" ] || missing+=("$package")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ] || ! is_debian; then
  say "ERROR: missing test tools: ${missing[*]}"
  if is_debian; then
    say "  get them: sudo apt-get update && sudo apt-get install -y ${missing[*]}"
  else
    say "  the tests expect Debian's paths: /usr/bin/chromium, a static /bin/busybox, tmux on PATH;"
    say "  install the equivalents of: ${missing[*]} with your system's package manager"
  fi
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
say "installing ${missing[*]} (apt-get)"
apt-get -o DPkg::Lock::Timeout=300 update -q
apt-get -o DPkg::Lock::Timeout=300 install -y -q "${missing[@]}"

for entry in "${TOOLS[@]}"; do
  read -r package file <<<"$entry"
  [ -e "$file" ] || { say "ERROR: $package was installed but $file is missing"; exit 1; }
done
