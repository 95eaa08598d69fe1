# Sourced by scripts/callgrind-diff.sh and scripts/cpu-split.sh (not run on its own).
#
# start_harness PROTOCOL OUT [HARNESS ARGUMENTS...]: builds the release binary when MP is
# empty (and sets MP), then starts the bench harness in serve mode for PROTOCOL with its
# files in OUT (made afresh) and any further arguments (e.g. --backends-sched batch): the echo backends v1 and v2, `metaproxy run` with the matrix's config, and
# HAProxy's config in OUT/haproxy.cfg. Pinned as in the matrix: the harness process
# (the echo backends, all its threads) and its metaproxy on CPU 1, which leaves CPU 0 to
# the load generator (its pinning line is in OUT/serve.err). Returns once the harness
# printed their addresses to OUT/serve.txt. Sets HOLD and SERVE, which stop_harness
# uses.
start_harness() {
    local proto=$1 out=$2 e2e
    shift 2
    if [ -z "${MP:-}" ]; then
        cargo build --release --bin metaproxy >&2
        MP=target/release/metaproxy
    fi
    e2e=$(cargo bench -p metaproxy-cli --bench e2e --no-run --message-format=json 2>/dev/null \
        | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | grep '/deps/e2e-' | tail -1)
    rm -rf "$out" && mkdir -p "$out"
    mkfifo "$out/hold"
    ( sleep 100000 > "$out/hold" ) &
    HOLD=$!
    "$e2e" --e2e --serve --protocols "$proto" --metaproxy "$MP" --out "$out" "$@" \
        < "$out/hold" > "$out/serve.txt" 2> "$out/serve.err" &
    SERVE=$!
    for _ in $(seq 1 150); do grep -q backend "$out/serve.txt" 2>/dev/null && break; sleep 0.2; done
}

# stop_harness: stops what start_harness started (the harness ends its backends and its
# metaproxy when its input closes).
stop_harness() {
    kill "$HOLD" 2>/dev/null || true
    wait "$SERVE" 2>/dev/null || true
}
