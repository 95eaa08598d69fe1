#!/usr/bin/env bash
# End-to-end benchmark, one command: direct vs metaproxy vs HAProxy (TCP mode) on
# loopback, with the in-process echo backends of `metaproxy_cli::backend`.
#
#   scripts/bench-e2e.sh            # full matrix (about 14 minutes on 2 cores)
#   scripts/bench-e2e.sh --quick    # 128 B only, one 1 s run per target, no profile (under 2 minutes)
#
# BENCH_PROFILE=0|1 forces the profile off/on; BENCH_REPORT_DIR changes the output dir.
# Extra arguments go to the harness (cli/benches/e2e.rs): --duration 3s (each run; 2 s
# by default), --rounds 5 (runs per target per case, the targets alternating; the report
# gives each target's median round; 3 by default, 1 with --quick), --protocols dubbo,
# --serve (start backends + proxies, print addresses and pids, wait for stdin to close),
# --no-pin, --idle-connections N, --out DIR, --only-multiplexing-cases (1 connection × 64
# and 256 × 4 to one backend only), --payloads 4096 (chosen payload sizes; with --quick
# the default is 128 only), --no-syscalls (skip the perf syscall counts),
# --backends-sched batch (the echo backends under SCHED_BATCH, so that one woken by the
# proxy's write does not preempt the proxy on their shared core: a diagnostic of what
# co-location costs, not how the Results in docs/PERFORMANCE.md are measured).
# Installs Debian's haproxy when missing.
# Writes target/bench-report/{report.md,results.json,*.svg}.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${BENCH_REPORT_DIR:-$ROOT/target/bench-report}

if ! command -v haproxy >/dev/null 2>&1; then
    echo "bench-e2e: installing haproxy" >&2
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
    export DEBIAN_FRONTEND=noninteractive
    if ! $SUDO apt-get install -y -q haproxy >/dev/null 2>&1; then
        $SUDO apt-get update -q >/dev/null
        $SUDO apt-get install -y -q haproxy >/dev/null
    fi
fi
HAPROXY=$(command -v haproxy)

echo "bench-e2e: building release" >&2
cargo build --release --bin metaproxy
# Build the harness (bench profile = release settings) before the clock starts.
cargo bench -p metaproxy-cli --bench e2e --no-run

# 10,000 idle client connections in the harness plus the backends' and HAProxy's ends.
HARD=$(ulimit -Hn)
if [ "$HARD" = unlimited ] || [ "$HARD" -ge 65536 ]; then ulimit -n 65536; else ulimit -n "$HARD"; fi
echo "bench-e2e: open files limit $(ulimit -n)" >&2

# Profile: perf when it can count instructions here, else callgrind on a short run.
# Skipped in --quick mode unless BENCH_PROFILE=1; BENCH_PROFILE=0 skips it always.
PROFILE=()
WANT_PROFILE=${BENCH_PROFILE:-}
if [ -z "$WANT_PROFILE" ]; then
    WANT_PROFILE=1
    for a in "$@"; do [ "$a" = --quick ] && WANT_PROFILE=0; done
fi
if [ "$WANT_PROFILE" != 1 ]; then
    :
elif command -v perf >/dev/null 2>&1 && PERF_OUT=$(perf stat -e instructions true 2>&1) \
    && ! grep -q "not supported" <<<"$PERF_OUT"; then
    PROFILE=(--perf)
elif command -v valgrind >/dev/null 2>&1; then
    echo "bench-e2e: perf cannot count instructions here; profiling with valgrind --tool=callgrind" >&2
    PROFILE=(--callgrind)
else
    echo "bench-e2e: neither perf (with counters) nor valgrind: no profile" >&2
fi

mkdir -p "$OUT"
cargo bench -p metaproxy-cli --bench e2e -- --e2e \
    --metaproxy "$CARGO_TARGET_DIR/release/metaproxy" \
    --haproxy "$HAPROXY" \
    --out "$OUT" "${PROFILE[@]}" "$@"
