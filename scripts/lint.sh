#!/usr/bin/env bash
# The checks CI runs before the tests: formatting, clippy with warnings as errors (with
# and without the interop tests compiled in), and docs with warnings as errors.
set -euo pipefail
cd "$(dirname "$0")/.."
FEATURES="metaproxy/interop metaproxy-cli/interop metaproxy-dubbo/interop metaproxy-thrift/interop metaproxy-xds/interop"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --features "$FEATURES" -- -D warnings
echo "== cargo doc -D warnings"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
echo "lint: ok"
