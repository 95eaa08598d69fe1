#!/usr/bin/env bash
# CPU time per proxied request, user and system apart, for metaproxy and for HAProxy in
# TCP mode, on the bench harness's echo backends with the matrix's route (a metadata
# match and a 90/10 split; HAProxy 9/1 per connection). Pinned as in the matrix: both
# proxies and the echo backends on CPU 1, the load generator on CPU 0; the targets
# alternate, RUNS times each.
#
#   scripts/cpu-split.sh [PROTOCOL [CONNECTIONS [PIPELINE [PAYLOAD [METAPROXY]]]]]
#   scripts/cpu-split.sh dubbo 16 16 128                 # the default
#   REQUESTS=1000000 RUNS=3 scripts/cpu-split.sh thrift 256 16
#   PROFILE=1 scripts/cpu-split.sh dubbo 16 16           # and a perf profile of metaproxy
#   SYSCALLS=1 scripts/cpu-split.sh thrift 16 16         # and syscalls per request by kind
#   BACKENDS_SCHED=batch scripts/cpu-split.sh thrift 16 16
#   SINGLE=1 scripts/cpu-split.sh thrift 1 16            # both proxies on their route
#       without the split (everything to v1, as the matrix's →v1 cases)
#
# Times and minor page faults come from /proc/PID/stat; times are in clock ticks, so a
# run should last a second or more (REQUESTS, default 600,000). Context switches per
# request, voluntary (the proxy waited) and involuntary (it was preempted), are summed
# over the proxy's threads (/proc/PID/task/*/status). Each proxy's peak RSS over all its
# runs (VmHWM, /proc/PID/status) is printed at the end. With SYSCALLS=1, `perf stat`
# counts the proxy's system calls during each run (all of them, and the receives, sends
# and epoll waits apart). BACKENDS_SCHED=batch runs the echo backends under SCHED_BATCH
# (the harness's --backends-sched batch): a backend woken by the proxy's write then does
# not preempt the proxy on their shared core, as a backend on another machine could not. With PROFILE=1,
# `perf record -e cpu-clock` samples metaproxy during its runs; the script prints its
# top user-space functions and the share of their samples that fall right after an
# atomic (locked) instruction, which is where an atomic read-modify-write's cost shows.
# Needs haproxy (scripts/bench-e2e.sh installs it) and, for PROFILE=1, perf.
set -euo pipefail
cd "$(dirname "$0")/.."
PROTO=${1:-dubbo}
CONNS=${2:-16}
PIPE=${3:-16}
PAY=${4:-128}
MP=${5:-}
REQUESTS=${REQUESTS:-600000}
RUNS=${RUNS:-2}
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
[ -x "$HAPROXY" ] || { echo "cpu-split: haproxy is not installed (scripts/bench-e2e.sh installs it)" >&2; exit 1; }
if [ -n "${PROFILE:-}" ]; then
    command -v perf > /dev/null || { echo "cpu-split: PROFILE=1 needs perf" >&2; exit 1; }
fi
OUT=target/cpu-split/$PROTO-${CONNS}c-p$PIPE-$PAY
# shellcheck source=scripts/serve-harness.sh
. scripts/serve-harness.sh
case "${BACKENDS_SCHED:-}" in
    "" | batch) ;;
    *) echo "cpu-split: BACKENDS_SCHED=$BACKENDS_SCHED: expected batch" >&2; exit 1 ;;
esac
start_harness "$PROTO" "$OUT" ${BACKENDS_SCHED:+--backends-sched "$BACKENDS_SCHED"}
HAPID=""
PERFPID=""
STATPID=""
cleanup() {
    [ -n "$PERFPID" ] && kill -INT "$PERFPID" 2>/dev/null || true
    [ -n "$STATPID" ] && kill -INT "$STATPID" 2>/dev/null || true
    [ -n "$HAPID" ] && kill "$HAPID" 2>/dev/null || true
    stop_harness
}
trap cleanup EXIT
LINE=$(grep backend "$OUT/serve.txt" | head -1)
MP_ADDR=$(echo "$LINE" | grep -o 'metaproxy [0-9.:]*' | cut -d' ' -f2)
MP_PID=$(echo "$LINE" | grep -o '(pid [0-9]*)' | head -1 | tr -dc '0-9')
HA_ADDR=$(echo "$LINE" | grep -o 'haproxy [0-9.:]*' | cut -d' ' -f2)
[ -n "$MP_PID" ] || { echo "cpu-split: the harness did not start metaproxy: $LINE" >&2; exit 1; }
if [ -n "${SINGLE:-}" ]; then
    # The listeners whose route sends everything to v1: metaproxy's "<protocol>-single"
    # and HAProxy's "<protocol>_single" frontend.
    MP_ADDR=$(awk -v n="$PROTO-single" '$0 ~ "name: " n "$" { f = 1 } f && /address:/ { print $2; exit }' "$OUT/metaproxy.yaml")
    HA_ADDR=$(awk -v n="${PROTO}_single" '$1 == "frontend" && $2 == n { f = 1 } f && $1 == "bind" { print $2; exit }' "$OUT/haproxy.cfg")
    [ -n "$MP_ADDR" ] && [ -n "$HA_ADDR" ] || { echo "cpu-split: SINGLE=1: no single-backend listener in the harness's configs" >&2; exit 1; }
fi
# The harness pins itself (the echo backends, all its threads) and metaproxy to CPU 1
# already, as in the matrix; both are pinned again here so that the split does not
# depend on the harness's defaults.
taskset -a -p -c 1 "$SERVE" > /dev/null
taskset -a -p -c 1 "$MP_PID" > /dev/null
if [ -n "${SYSCALLS:-}" ]; then
    command -v perf > /dev/null || { echo "cpu-split: SYSCALLS=1 needs perf" >&2; exit 1; }
    SYSCALL_EVENTS=raw_syscalls:sys_enter
    for call in read readv recvfrom recvmsg write writev sendto sendmsg epoll_wait epoll_pwait; do
        SYSCALL_EVENTS="$SYSCALL_EVENTS,syscalls:sys_enter_$call"
    done
fi
# Voluntary and involuntary context switches of all of PID's threads.
switches() {
    cat /proc/"$1"/task/*/status 2> /dev/null \
        | awk '/^voluntary_ctxt/ { v += $2 } /^nonvoluntary_ctxt/ { n += $2 } END { print v + 0, n + 0 }'
}
taskset -c 1 "$HAPROXY" -f "$OUT/haproxy.cfg" -db > "$OUT/haproxy.log" 2>&1 &
HAPID=$!
for _ in $(seq 1 50); do (echo > "/dev/tcp/${HA_ADDR%:*}/${HA_ADDR##*:}") 2>/dev/null && break; sleep 0.1; done
TICK=$(getconf CLK_TCK)
if [ -n "${PROFILE:-}" ]; then
    perf record -e cpu-clock -F 10000 -p "$MP_PID" -o "$OUT/perf.data" 2> "$OUT/perf.log" &
    PERFPID=$!
    sleep 0.3
fi
echo "$PROTO ${CONNS}c×$PIPE ${PAY} B${SINGLE:+ →v1 (no split)}, $REQUESTS requests per run${BACKENDS_SCHED:+, echo backends under SCHED_BATCH}; per request: CPU µs (user + system), minor page faults, context switches (voluntary + involuntary):"
for run in $(seq 1 "$RUNS"); do
    for target in metaproxy haproxy; do
        if [ "$target" = metaproxy ]; then PID=$MP_PID; ADDR=$MP_ADDR; else PID=$HAPID; ADDR=$HA_ADDR; fi
        before="$(awk '{print $14, $15, $10}' "/proc/$PID/stat") $(switches "$PID")"
        if [ -n "${SYSCALLS:-}" ]; then
            perf stat -x, -e "$SYSCALL_EVENTS" -p "$PID" -o "$OUT/syscalls.txt" &
            STATPID=$!
            sleep 0.2
        fi
        rate=$(taskset -c 0 "$MP" bench --protocol "$PROTO" --target "$ADDR" \
            --connections "$CONNS" --pipeline "$PIPE" --payload "$PAY" \
            --requests "$REQUESTS" --header user=bench --timeout 30s 2>&1 \
            | grep -m1 -o 'throughput: [0-9]* requests/s' || echo "throughput: ? requests/s")
        after="$(awk '{print $14, $15, $10}' "/proc/$PID/stat") $(switches "$PID")"
        echo "$before $after" | awk -v n="$REQUESTS" -v tick="$TICK" -v t="$target" -v run="$run" -v rate="$rate" \
            '{ u = ($6 - $1) * 1e6 / tick / n; s = ($7 - $2) * 1e6 / tick / n;
               printf "  run %d %-9s  user %.3f  system %.3f  total %.3f  page faults %.4f  switches %.4f + %.4f  (%s)\n",
                   run, t, u, s, u + s, ($8 - $3) / n, ($9 - $4) / n, ($10 - $5) / n, rate }'
        if [ -n "${SYSCALLS:-}" ]; then
            kill -INT "$STATPID"
            wait "$STATPID" 2> /dev/null || true
            STATPID=""
            awk -F, -v n="$REQUESTS" '
                $1 ~ /^[0-9]+$/ { name = $3; sub(/.*sys_enter_?/, "", name); c[name] += $1 }
                END {
                    printf "      syscalls %.4f: receives %.4f  sends %.4f  epoll waits %.4f\n", c[""] / n,
                        (c["read"] + c["readv"] + c["recvfrom"] + c["recvmsg"]) / n,
                        (c["write"] + c["writev"] + c["sendto"] + c["sendmsg"]) / n,
                        (c["epoll_wait"] + c["epoll_pwait"]) / n
                }' "$OUT/syscalls.txt"
        fi
    done
done
echo "peak RSS (VmHWM): metaproxy $(awk '/^VmHWM/ {print $2, $3}' "/proc/$MP_PID/status"), haproxy $(awk '/^VmHWM/ {print $2, $3}' "/proc/$HAPID/status")"
if [ -n "${PROFILE:-}" ]; then
    kill -INT "$PERFPID"
    wait "$PERFPID" 2>/dev/null || true
    PERFPID=""
    echo "metaproxy's top user-space functions (share of all its samples):"
    { perf report -i "$OUT/perf.data" --no-children --sort sym --stdio 2>/dev/null || true; } \
        | grep -E '^ +[0-9.]+%.*\[\.\]' | head -15 || true
    # perf annotate prints, per function, its sample count and each instruction's share
    # of it; sum the shares of instructions that follow a locked one.
    # (Kernel functions cannot be annotated without vmlinux: perf says so and goes on.)
    { perf annotate -i "$OUT/perf.data" --stdio 2> /dev/null || true; } | awk '
        /Disassembly of .* for cpu-clock \(/ { s = $0; sub(/.* for cpu-clock \(/, "", s); n = s + 0; total += n; after = 0; next }
        /^ +[0-9.]+ +: +[0-9a-f]+:/ {
            pct = $1; ins = $4
            if (after) locked += pct * n / 100
            after = (ins == "lock" || ins ~ /^xchg/)
        }
        END { if (total) printf "user-space samples right after a locked instruction: %.1f %% of %d\n", 100 * locked / total, total }'
    echo "profile: $OUT/perf.data"
fi
