#!/usr/bin/env bash
# Installs the independent test peers (idempotently) and runs the whole test suite with
# the interop tests on. Plain `cargo test` works offline without any of this.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing interop peers"
for installer in scripts/interop/*.sh; do
  [ -e "$installer" ] || continue
  echo "-- $installer"
  bash "$installer"
done

echo "== cargo test (interop on)"
# Integration tests start many sockets at once (1,000 concurrent clients).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo test --workspace --features "metaproxy/interop metaproxy-cli/interop metaproxy-dubbo/interop metaproxy-thrift/interop metaproxy-xds/interop" "$@"
