#!/usr/bin/env bash
# Concord's test command: every suite, from one place.
#
# Installs the Node packages of the JS interop and browser suites (from their lock files)
# when npm is available, then runs the whole Rust workspace's tests, which start the real
# server and drive those suites. Without Node or Chromium those two suites say they were
# skipped; with CI=true set, a missing prerequisite is a failure instead.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v npm >/dev/null 2>&1; then
  for suite in tests/js tests/mcp tests/browser bench/peer; do
    if [ -f "$suite/package-lock.json" ]; then
      echo "==> npm ci in $suite"
      npm ci --prefix "$suite" --no-audit --no-fund --loglevel=error
    fi
  done
else
  echo "==> npm not found: the JS interop and browser suites will be skipped"
fi

echo "==> cargo test --workspace"
cargo test --workspace --locked "$@"
