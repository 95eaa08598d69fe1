#!/usr/bin/env bash
# Runs every fuzz target for a bounded time: the Dubbo and Thrift decode targets and the
# runtime-level session target (random byte streams through full client sessions).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 60)
#
# The coverage-guided targets need cargo-fuzz, which needs a nightly toolchain. Without
# one this script says so and runs the stable harnesses instead (the same invariants,
# with deterministic mutations of valid frames; each one's budget is set below).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"

targets=(
  "codecs/dubbo/fuzz decode"
  "codecs/thrift/fuzz decode"
  "fuzz session"
)

if cargo +nightly fuzz --version >/dev/null 2>&1; then
  for entry in "${targets[@]}"; do
    read -r dir target <<<"$entry"
    echo "== cargo fuzz: $dir $target (${secs}s)"
    (cd "$dir/.." && cargo +nightly fuzz run --fuzz-dir "$(basename "$dir")" "$target" -- \
      -max_total_time="$secs" -rss_limit_mb=2048)
  done
  exit 0
fi

echo "cargo-fuzz with a nightly toolchain is not available here (install with"
echo "'rustup toolchain install nightly && cargo install cargo-fuzz');"
echo "running the stable harnesses instead, about ${secs}s each."
echo "== dubbo decode (stable harness: tests/fuzzish.rs)"
cargo test --release -p metaproxy-dubbo --test fuzzish
echo "== thrift decode (stable harness: tests/fuzz_stable.rs)"
THRIFT_FUZZ_SECS="$secs" cargo test --release -p metaproxy-thrift --test fuzz_stable -- --nocapture
echo "== runtime sessions (stable harness: tests/fuzz_session.rs)"
METAPROXY_FUZZ_SECS="$secs" cargo test --release -p metaproxy --test fuzz_session -- --nocapture
