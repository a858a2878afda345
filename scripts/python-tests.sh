#!/usr/bin/env bash
# The Python client's suite (python/): installs it with its test extra into a virtual
# environment (target/py-venv, made if missing) and runs its tests against the real server
# binary, $CONCORD_BIN or else target/debug/concord (this script builds nothing: run
# `cargo build` first). The tests start their own servers on 127.0.0.1:0 and also run the
# examples (python/examples) as programs. Arguments go to pytest.
#
# Without a usable python3 it says the suite was skipped and succeeds; with CI set, that
# is a failure instead.
set -euo pipefail

# A relative CONCORD_BIN means relative to where the script was started.
if [ -n "${CONCORD_BIN:-}" ] && [ "${CONCORD_BIN#/}" = "$CONCORD_BIN" ]; then
  CONCORD_BIN="$PWD/$CONCORD_BIN"
fi
cd "$(dirname "$0")/.."

skip() {
  if [ -n "${CI:-}" ]; then
    echo "python suite FAILED: $1 (CI is set, so it may not be skipped)" >&2
    exit 1
  fi
  echo "python suite SKIPPED: $1"
  exit 0
}

command -v python3 >/dev/null 2>&1 || skip "python3 not found"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' \
  || skip "python3 is $(python3 -c 'import platform; print(platform.python_version())'), 3.9 or newer is needed"
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 \
  || skip "python3 cannot make virtual environments (on Debian: apt-get install python3-venv)"

export CONCORD_BIN="${CONCORD_BIN:-$PWD/target/debug/concord}"
if [ ! -x "$CONCORD_BIN" ]; then
  echo "python suite FAILED: no server binary at $CONCORD_BIN (run cargo build, or set CONCORD_BIN)" >&2
  exit 1
fi

venv=target/py-venv
if [ ! -x "$venv/bin/python" ]; then
  echo "==> python3 -m venv $venv"
  python3 -m venv "$venv"
fi
echo "==> pip install ./python[test]"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "./python[test]"
echo "==> pytest -q python/tests"
"$venv/bin/python" -m pytest -q python/tests "$@"
