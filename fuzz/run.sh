#!/usr/bin/env bash
# Runs Concord's cargo-fuzz targets, each for a bounded time, and prints how many inputs
# each one executed. See TESTING.md, "Fuzzing".
#
#   fuzz/run.sh [SECONDS] [TARGET...]     default: 60 seconds, every target
#   fuzz/run.sh --runs N [TARGET...]      N executions of each, however long they take
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). The toolchain is stable: libFuzzer's
# nightly-only flags are allowed with RUSTC_BOOTSTRAP=1. Builds optimized, without a
# sanitizer (safe Rust; the fuzzers look for panics and broken invariants), with debug
# assertions and overflow checks as fuzz/Cargo.toml's release profile sets them.
# New crashers land in fuzz/artifacts/<target>/; once fixed, copy each one to
# tests/fuzz-regressions/<target>/ so that `cargo test` replays it.
set -euo pipefail
cd "$(dirname "$0")"
if [ "${1:-}" = "--runs" ]; then
  [ -n "${2:-}" ] || { echo "fuzz/run.sh: --runs needs a count" >&2; exit 2; }
  budget=(-runs="$2")
  what="$2 executions"
  shift 2
else
  budget=(-max_total_time="${1:-60}")
  what="${1:-60}s"
  shift || true
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(json_patch reconcile ws_message sync_message repo_message stored_bytes)
fi
RUSTC_BOOTSTRAP=1 cargo fuzz build -O -s none
bin="target/$(rustc -vV | sed -n 's/^host: //p')/release"
status=0
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target" "artifacts/$target"
  log="artifacts/$target/last-run.log"
  # WebSocket messages are capped at 256 bytes: what the decoder can get wrong shows in
  # short messages, and a long one spends its time diffing the text it writes, which the
  # reconcile target covers.
  case "$target" in
    ws_message) limits=(-max_len=256) ;;
    *) limits=() ;;
  esac
  echo "==> $target for $what"
  started=$SECONDS
  if "$bin/$target" "corpus/$target" "seeds/$target" \
      -artifact_prefix="artifacts/$target/" "${budget[@]}" ${limits[@]+"${limits[@]}"} \
      -rss_limit_mb=4096 -timeout=20 -print_final_stats=1 >"$log" 2>&1; then
    echo "    ok: $(sed -n 's/^stat::number_of_executed_units: *//p' "$log") executions in $((SECONDS - started)) s"
  else
    status=1
    echo "    FAILED: see $log"
    grep -E "panicked at|SUMMARY|Test unit written" "$log" | head -5 | sed 's/^/    /' || true
  fi
done
exit $status
