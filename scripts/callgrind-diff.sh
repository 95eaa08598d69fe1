#!/usr/bin/env bash
# Instructions per proxied request in steady state, start-up and shut-down excluded:
# runs `metaproxy run` under callgrind twice (2,000 and 22,000 requests from 16 client
# connections through a weighted 90/10 route to the bench harness's echo backends) and
# divides the difference by 20,000. Counts are exact, so they compare builds on a busy
# machine where timings cannot.
#
#   scripts/callgrind-diff.sh [PROTOCOL [PIPELINE [PAYLOAD [METAPROXY]]]]
#   scripts/callgrind-diff.sh dubbo 16 128            # the default
#   scripts/callgrind-diff.sh thrift 1 128 /tmp/old-metaproxy
#   ROUTE_MATCH=1 scripts/callgrind-diff.sh dubbo   # the bench matrix's route: a
#       metadata match (Dubbo `interface`, Thrift `method`) before the 90/10 split
#   ATOMICS=1 scripts/callgrind-diff.sh thrift      # and the atomic read-modify-write
#       instructions per request, by function (scripts/atomics-per-request.py)
#   CONNECTIONS=256 scripts/callgrind-diff.sh thrift 16   # 256 client connections (the
#       runs then take 10,000 and 60,000 requests, so that the pipelines fill first)
#   FIRST=60000 LAST=160000 CONNECTIONS=256 scripts/callgrind-diff.sh thrift 16   # other
#       run lengths (to tell what the first requests cost from what every request does)
#   RUNS=5 scripts/callgrind-diff.sh dubbo 1        # five measurements and their median:
#       runs of one binary differ at pipeline 1 (how the 16 clients' requests fall into
#       wake-ups): by up to about 90 instructions while idle parks emptied the buffer
#       pool, about 15 since; compare medians near a threshold
#
# Needs valgrind; builds the release binary and the harness when METAPROXY is not given.
# Leaves the profiles in target/callgrind-diff/ for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
PROTO=${1:-dubbo}
PIPE=${2:-16}
PAY=${3:-128}
MP=${4:-}
command -v valgrind >/dev/null || { echo "callgrind-diff: valgrind is not installed" >&2; exit 1; }
CONNS=${CONNECTIONS:-16}
if [ "$CONNS" -gt 16 ]; then FIRST=${FIRST:-10000}; LAST=${LAST:-60000}; else FIRST=${FIRST:-2000}; LAST=${LAST:-22000}; fi
OUT=target/callgrind-diff/$PROTO-p$PIPE-$PAY
[ "$CONNS" = 16 ] || OUT=target/callgrind-diff/$PROTO-c$CONNS-p$PIPE-$PAY
# shellcheck source=scripts/serve-harness.sh
. scripts/serve-harness.sh
start_harness "$PROTO" "$OUT"
trap stop_harness EXIT
V1=$(grep -o 'v1 [0-9.:]*' "$OUT/serve.txt" | head -1 | cut -d' ' -f2)
V2=$(grep -o 'v2 [0-9.:]*' "$OUT/serve.txt" | head -1 | cut -d' ' -f2)
PORT=$((20000 + RANDOM % 20000))
MATCH=""
if [ -n "${ROUTE_MATCH:-}" ]; then
    case "$PROTO" in
        dubbo) MATCH="match: {metadata: [{key: interface, exact: org.apache.dubbo.bench.EchoService}]}, " ;;
        *) MATCH="match: {metadata: [{key: method, exact: echo}]}, " ;;
    esac
fi
cat > "$OUT/metaproxy.yaml" <<YAML
listeners:
  - {name: in, address: "127.0.0.1:$PORT", codec: $PROTO, route_config: r, max_connections: 30000}
route_configs:
  - name: r
    routes:
      - {${MATCH}route: {weighted_clusters: [{cluster: v1, weight: 90}, {cluster: v2, weight: 10}]}}
      - route: {cluster: v1}
clusters:
  - {name: v1, endpoints: ["$V1"], max_pending_requests: 100000}
  - {name: v2, endpoints: ["$V2"], max_pending_requests: 100000}
YAML
DUMP=""
if [ -n "${ATOMICS:-}" ]; then
    DUMP="--dump-instr=yes --dump-line=no --compress-pos=no --compress-strings=no"
fi
RUNS=${RUNS:-1}
RESULTS=()
for _run in $(seq 1 "$RUNS"); do
    declare -A TOTAL
    for N in $FIRST $LAST; do
        # shellcheck disable=SC2086
        taskset -c 0 valgrind --tool=callgrind $DUMP --callgrind-out-file="$OUT/callgrind-$N.out" \
            "$MP" run --config "$OUT/metaproxy.yaml" > /dev/null 2> "$OUT/valgrind-$N.log" &
        VG=$!
        for _ in $(seq 1 300); do (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.2; done
        taskset -c 1 "$MP" bench --protocol "$PROTO" --target "127.0.0.1:$PORT" --connections "$CONNS" \
            --pipeline "$PIPE" --payload "$PAY" --requests "$N" --header user=bench \
            --timeout 30s --json > "$OUT/bench-$N.json"
        kill -TERM "$VG"
        wait "$VG" || true
        TOTAL[$N]=$(callgrind_annotate "$OUT/callgrind-$N.out" 2>/dev/null \
            | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    done
    PER=$(( (TOTAL[$LAST] - TOTAL[$FIRST]) / (LAST - FIRST) ))
    RESULTS+=("$PER")
    echo "$PROTO $CONNS connections, pipeline $PIPE, $PAY B: $PER instructions per request (${TOTAL[$FIRST]} for $FIRST requests, ${TOTAL[$LAST]} for $LAST)"
done
if [ "$RUNS" -gt 1 ]; then
    MEDIAN=$(printf '%s\n' "${RESULTS[@]}" | sort -n \
        | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : int((v[NR / 2] + v[NR / 2 + 1]) / 2)}')
    echo "$PROTO $CONNS connections, pipeline $PIPE, $PAY B: median $MEDIAN instructions per request over $RUNS runs (${RESULTS[*]})"
fi
if [ -n "${ATOMICS:-}" ]; then
    python3 scripts/atomics-per-request.py "$OUT/callgrind-$FIRST.out" "$OUT/callgrind-$LAST.out" $((LAST - FIRST))
fi
