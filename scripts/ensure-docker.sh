#!/usr/bin/env bash
# Make sure a Docker Engine answers `docker info`.
#
# - Already answering: exit 0 at once.
# - Root on Debian: install docker.io when dockerd (or the docker CLI) is missing, then start the engine
#   (systemctl when systemd runs, else dockerd in the background, detached so that it outlives make)
#   and wait up to DOCKER_WAIT seconds (60) for `docker info` to answer.
# - Anywhere else: say what is missing and how to get it, exit 1.
# Never succeeds without an engine that answers.
set -euo pipefail

WAIT="${DOCKER_WAIT:-60}"
LOG="${DOCKERD_LOG:-/var/log/dockerd.log}"

say() { echo "ensure-docker: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }
answers() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }
is_root() { [ "${EUID:-$(id -u)}" -eq 0 ]; }
is_debian() { [ -r /etc/debian_version ] && command -v apt-get >/dev/null 2>&1; }
# Any process named dockerd (read from /proc: procps may be missing on a slim machine).
# dockerd lives in /usr/sbin, which a non-root PATH may lack.
have_dockerd() { command -v dockerd >/dev/null 2>&1 || [ -x /usr/sbin/dockerd ] || [ -x /usr/bin/dockerd ]; }
dockerd_running() { grep -qsx dockerd /proc/[0-9]*/comm; }

if answers; then
  exit 0
fi

# ---- not root or not Debian: explain and fail -------------------------------------------------
if ! is_root || ! is_debian; then
  say "ERROR: no Docker Engine answers 'docker info'."
  reason=""
  if ! command -v docker >/dev/null 2>&1; then
    say "  missing: the docker CLI$(have_dockerd || echo ' and the engine (dockerd)')."
  else
    # (old CLIs print the server's error on stdout, new ones on stderr)
    reason="$(docker info 2>&1 | grep -iE 'error|cannot|denied|refused|no such' \
      | grep -v 'errors pretty printing' | head -n 3 || true)"
    [ -n "$reason" ] && while IFS= read -r line; do say "  docker info says: ${line# }"; done <<<"$reason"
  fi
  if [ -n "${DOCKER_HOST:-}" ]; then
    say "  note: DOCKER_HOST=${DOCKER_HOST} is set; that engine must answer (or unset DOCKER_HOST)."
  fi
  if grep -qi 'permission denied' <<<"$reason"; then
    # The engine runs; this user may not use its socket.
    say "  fix: add yourself to the docker group: sudo usermod -aG docker \"\$USER\" (then log in again),"
    say "       or run as root"
  elif is_debian; then
    if ! have_dockerd || ! command -v docker >/dev/null 2>&1; then
      say "  get it:   sudo apt-get update && sudo apt-get install -y docker.io"
    fi
    say "  start it: sudo systemctl start docker   (or let this script do both: sudo bash $0)"
    is_root || say "  then, as a non-root user, join the docker group: sudo usermod -aG docker \"\$USER\""
  elif [ "$(uname -s)" = Darwin ]; then
    say "  get it:   install and start Docker Desktop (https://docs.docker.com/desktop/) or colima"
  else
    say "  get it:   install Docker Engine (https://docs.docker.com/engine/install/) and start it"
    say "            (usually: sudo systemctl start docker); a non-root user needs access to its socket"
  fi
  exit 1
fi

# ---- root on Debian: install if needed --------------------------------------------------------
export DEBIAN_FRONTEND=noninteractive
if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
  say "installing docker.io (apt-get)"
  apt-get -o DPkg::Lock::Timeout=300 update -q
  apt-get -o DPkg::Lock::Timeout=300 install -y -q docker.io
  command -v dockerd >/dev/null 2>&1 || die "apt-get installed docker.io but dockerd is still not on PATH"
  # The package's scripts may have started the engine already.
  if answers; then
    exit 0
  fi
fi

# ---- start the engine -------------------------------------------------------------------------
where="journalctl -u docker, or /var/log/docker.log"   # where the engine logs unless started here
if dockerd_running; then
  say "dockerd is running but does not answer yet; waiting for it"
elif [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1 && systemctl start docker 2>/dev/null; then
  say "started docker.service (systemctl)"
else
  # A pid file left by an engine that died would make dockerd refuse to start.
  if [ -e /var/run/docker.pid ] && ! dockerd_running; then
    rm -f /var/run/docker.pid
  fi
  mkdir -p "$(dirname "$LOG")"
  where="$LOG"
  say "starting dockerd in the background (log: $LOG)"
  # setsid: its own session, so that neither make exiting nor a Ctrl-C in make's terminal stops it.
  if command -v setsid >/dev/null 2>&1; then
    setsid nohup dockerd >>"$LOG" 2>&1 </dev/null &
  else
    nohup dockerd >>"$LOG" 2>&1 </dev/null &
  fi
  disown || true
fi

for ((i = 0; i < WAIT; i++)); do
  if answers; then
    say "Docker Engine answers (after ${i}s)"
    exit 0
  fi
  if [ "$i" -ge 3 ] && ! dockerd_running; then
    [ "$where" = "$LOG" ] && [ -r "$LOG" ] && tail -n 20 "$LOG" >&2
    die "dockerd exited; see $where"
  fi
  sleep 1
done

[ "$where" = "$LOG" ] && [ -r "$LOG" ] && tail -n 20 "$LOG" >&2
die "Docker Engine did not answer 'docker info' within ${WAIT}s (log: $where)"
