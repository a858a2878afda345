#!/usr/bin/env bash
# The API conformance run: starts the real server (on 127.0.0.1, a free port, a temporary
# data folder) and runs schemathesis against it with the server's own description
# (/openapi.json): generated requests for every operation, and every check — no 5xx, every
# status, content type, header and body as described. Settings: tests/schemathesis/.
#
# `ensure_resource_availability` is left out: schemathesis sends the same Idempotency-Key
# with the same body again, the server answers the first create again (as it must), and a
# document created, deleted and then "created" by that replay is not there.
#
# Two passes: every other check but `positive_data_acceptance` over all phases, then that check
# alone over the generated phases (examples, fuzzing, stateful), leaving out two things it
# cannot judge: the coverage phase, which writes If-Match values of its own that are not
# entity tags (`If-Match: 0`), and `POST /v1/docs/{id}/changes`, whose body is any octets
# in the description but Automerge changes only if they decode (400 otherwise, as it must).
# The live streams (WebSocket, Server-Sent Events, sync), MCP (JSON-RPC, whose errors the
# SDK answers partly as plain text) and the comparison runs are described but not generated
# against: they are protocols and long runs, tested by their own suites.
#
# The server binary is $CONCORD_BIN, else target/debug/concord (nothing is built here).
# Without a usable python3 it says the run was skipped and succeeds; with CI set, that is a
# failure instead.
set -euo pipefail

if [ -n "${CONCORD_BIN:-}" ] && [ "${CONCORD_BIN#/}" = "$CONCORD_BIN" ]; then
  CONCORD_BIN="$PWD/$CONCORD_BIN"
fi
cd "$(dirname "$0")/.."
root=$PWD

skip() {
  if [ -n "${CI:-}" ]; then
    echo "api conformance FAILED: $1 (CI is set, so it may not be skipped)" >&2
    exit 1
  fi
  echo "api conformance SKIPPED: $1"
  exit 0
}

command -v python3 >/dev/null 2>&1 || skip "python3 not found"
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 \
  || skip "python3 cannot make virtual environments (on Debian: apt-get install python3-venv)"
bin="${CONCORD_BIN:-$root/target/debug/concord}"
[ -x "$bin" ] || { echo "api conformance FAILED: no server binary at $bin" >&2; exit 1; }

venv=target/st-venv
if [ ! -x "$venv/bin/st" ]; then
  echo "==> python3 -m venv $venv"
  python3 -m venv "$venv"
fi
echo "==> pip install -r tests/schemathesis/requirements.txt"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r tests/schemathesis/requirements.txt

work=$(mktemp -d)
server=
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" serve --addr 127.0.0.1:0 --data "$work/data" >"$work/out" 2>"$work/log" &
server=$!
url=
for _ in $(seq 1 100); do
  url=$(sed -n 's/^concord listening on \(http:[^ ]*\)$/\1/p' "$work/out")
  [ -n "$url" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$work/log" >&2; echo "api conformance FAILED: the server did not start" >&2; exit 1; }
  sleep 0.1
done
[ -n "$url" ] || { echo "api conformance FAILED: the server did not say where it listens" >&2; exit 1; }

streams='(/events$|/ws$|/sync$|^/v1/repo$|^/v1/compare|^/mcp$)'
run() {
  (cd "$root/tests/schemathesis" && "$root/$venv/bin/st" run "$url/openapi.json" \
    --workers 1 --request-timeout 20 --seed 1 --exclude-path-regex "$streams" "$@")
}
echo "==> schemathesis: every check but positive_data_acceptance, every phase"
run --checks all --exclude-checks positive_data_acceptance,ensure_resource_availability
echo "==> schemathesis: positive_data_acceptance (examples, fuzzing, stateful)"
run --checks positive_data_acceptance --phases examples,fuzzing,stateful \
  --exclude-name 'POST /v1/docs/{id}/changes'
if ! kill -0 "$server" 2>/dev/null; then
  echo "api conformance FAILED: the server exited during the run" >&2
  exit 1
fi
echo "api conformance: passed"
