#!/usr/bin/env bash
# Runs Concord's cargo-fuzz targets, each for a bounded time, and prints how many inputs
# each one executed. See TESTING.md, "Fuzzing".
#
#   fuzz/run.sh [SECONDS] [TARGET...]     default: 60 seconds, every target
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). The toolchain is stable: libFuzzer's
# nightly-only flags are allowed with RUSTC_BOOTSTRAP=1. Builds without a sanitizer (safe
# Rust; the fuzzers look for panics and broken invariants), with debug assertions.
# New crashers land in fuzz/artifacts/<target>/; once fixed, copy each one to
# tests/fuzz-regressions/<target>/ so that `cargo test` replays it.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(json_patch reconcile ws_message sync_message repo_message stored_bytes)
fi
RUSTC_BOOTSTRAP=1 cargo fuzz build -s none
bin="target/$(rustc -vV | sed -n 's/^host: //p')/release"
status=0
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target" "artifacts/$target"
  log="artifacts/$target/last-run.log"
  echo "==> $target for ${seconds}s"
  if "$bin/$target" "corpus/$target" "seeds/$target" \
      -artifact_prefix="artifacts/$target/" -max_total_time="$seconds" \
      -rss_limit_mb=4096 -timeout=20 -print_final_stats=1 >"$log" 2>&1; then
    echo "    ok: $(sed -n 's/^stat::number_of_executed_units: *//p' "$log") executions"
  else
    status=1
    echo "    FAILED: see $log"
    grep -E "panicked at|SUMMARY|Test unit written" "$log" | head -5 | sed 's/^/    /'
  fi
done
exit $status
