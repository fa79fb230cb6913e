#!/usr/bin/env bash
# `make test`: lint and the test suite, with the independent tiers run side by side.
#
#   tier "lint"    ruff + mypy strict                                  (no engine)
#   tier "units"   the aws provider on moto, API refusals, parsers, units    (no engine)
#   tier "engine"  everything else: real racks on the real Docker Engine, Chromium
#
# The two tiers that need no engine start at once, while the engine, the test tools and the offline images
# are made ready; the engine tier starts when those are. Each side tier's output is printed when it ends;
# the run fails when any tier fails (pytest's "no tests collected" included). With PYTEST_ARGS set (a
# targeted run: `make test PYTEST_ARGS='tests/test_x.py -k y'`), lint runs first and then one pytest.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=.venv/bin
PYTEST_ARGS=${PYTEST_ARGS:-}

# Files of the "units" tier: none of them needs a Docker Engine (checked in CI: the tier runs with
# DOCKER_HOST pointing at nothing, so a test that starts needing one fails there instead of slowing down).
UNITS=(
  tests/aws
  tests/test_archive.py tests/test_bench_chart.py tests/test_builds_api.py
  tests/test_builds_cli.py tests/test_frames_units.py tests/test_handoff_units.py tests/test_health_units.py tests/test_raw_units.py tests/test_exec_records.py tests/test_limits.py tests/test_logfmt.py tests/test_logs_api.py
  tests/test_logs_units.py tests/test_manifest.py tests/test_manifest_compose.py tests/test_manifest_corpus.py
  tests/test_names.py
  tests/test_packaging.py tests/test_protocol.py tests/test_services_api.py
)

say() { echo "test: $*" >&2; }

pytest_rc() {  # pytest's exit code, with "no tests collected" (5) named
  local rc=$1 tier=$2
  [ "$rc" -eq 5 ] && say "ERROR: pytest collected no tests in tier $tier"
  return "$rc"
}

prepare() { make --no-print-directory docker test-tools images; }

if [ -n "$PYTEST_ARGS" ]; then
  prepare || exit 1
  make --no-print-directory lint || exit 1
  # shellcheck disable=SC2086  # PYTEST_ARGS is a list of words by design
  $BIN/pytest -q $PYTEST_ARGS
  pytest_rc $? targeted
  exit
fi

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
started=$SECONDS

make --no-print-directory lint >"$logs/lint" 2>&1 &
lint_pid=$!
DOCKER_HOST=unix:///nonexistent/docker.sock $BIN/pytest -q -p no:cacheprovider "${UNITS[@]}" >"$logs/units" 2>&1 &
units_pid=$!

engine_rc=0
if prepare; then
  ignores=()
  for path in "${UNITS[@]}"; do ignores+=("--ignore=$path"); done
  say "tier engine: starting ($((SECONDS - started)) s in)"
  $BIN/pytest -q "${ignores[@]}"
  pytest_rc $? engine || engine_rc=$?
else
  say "ERROR: the engine, the test tools or the offline images could not be made ready"
  engine_rc=1
fi

wait "$lint_pid"; lint_rc=$?
wait "$units_pid"; units_rc=$?
pytest_rc "$units_rc" units || true
for tier in lint units; do
  rc_var=${tier}_rc
  echo "---- tier $tier (exit ${!rc_var}) ----"
  if [ "${!rc_var}" -eq 0 ]; then tail -n 3 "$logs/$tier"; else cat "$logs/$tier"; fi
done
say "lint=$lint_rc units=$units_rc engine=$engine_rc in $((SECONDS - started)) s"
[ "$lint_rc" -eq 0 ] && [ "$units_rc" -eq 0 ] && [ "$engine_rc" -eq 0 ]
