//! Resident memory under the two loads that used to grow it without bound, measured
//! from /proc/self/status in a test binary of its own (one test, so nothing else runs
//! in the process): a backend that never reads while clients send 1 MiB requests, and
//! clients that pipeline requests and never read their replies. RSS must stay within
//! a stated bound during the load and come back near the baseline afterwards, and the
//! proxy's buffered-bytes gauge must return to zero.

mod common;

use std::time::Duration;

use common::hostile::*;
use common::*;
use metaproxy_example_kv::Status;

/// RSS growth allowed while the hostile load runs.
const PEAK_MARGIN_KIB: u64 = 160 * 1024;
/// RSS growth allowed once the load stopped and the proxy settled.
const SETTLED_MARGIN_KIB: u64 = 64 * 1024;

const CONFIG: &str = r#"
listeners:
  - {name: in, address: "127.0.0.1:0", codec: kv, route_config: r, max_buffered_bytes: 1048576, write_timeout: 1s}
route_configs:
  - name: r
    routes:
      - {match: {metadata: [{key: service, exact: stuck}]}, route: {cluster: stuck, timeout: 300ms}}
      - {route: {cluster: echo}}
clusters:
  - {name: stuck, endpoints: ["{stuck}"], write_timeout: 1s, outlier_detection: {enabled: false}}
  - {name: echo, endpoints: ["{echo}"], max_pending_requests: 100000}
"#;

fn buffered(p: &metaproxy::RunningServer) -> f64 {
    metric(&p.handle().metrics_text(), "metaproxy_buffered_bytes", None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rss_stays_bounded_under_a_stuck_backend_and_clients_that_never_read() {
    let stuck = hostile_backend(Fault::NeverRead).await;
    let echo = backend("echo").await;
    let p = proxy(CONFIG, &[("stuck", stuck.addr), ("echo", echo.addr)]).await;
    let addr = p.local_addr("in").unwrap();
    // Warm up every path once, then take the baseline.
    drive(addr, "warm", 2, 20, 4, 60_000, Duration::from_secs(5)).await;
    drive(addr, "stuck", 1, 2, 2, 1 << 20, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = rss_kib();
    let mut peak = baseline;

    // 4 clients x 4 in flight x 1 MiB requests against a backend that never reads,
    // two rounds (about 2 s of load).
    for _ in 0..2 {
        let load = tokio::spawn(drive(
            addr,
            "stuck",
            4,
            8,
            4,
            1 << 20,
            Duration::from_secs(10),
        ));
        while !load.is_finished() {
            peak = peak.max(rss_kib());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let outcome = load.await.unwrap();
        assert_eq!(
            outcome.count(Status::Timeout) + outcome.count(Status::UpstreamFailure),
            32,
            "{outcome:?}"
        );
    }
    // 10 clients pipelining 200 requests with 60 KB replies they never read.
    let mut hogs = Vec::new();
    for _ in 0..10 {
        hogs.push(tokio::spawn(never_reading_client(addr, "hog", 200, 60_000)));
    }
    let mut streams = Vec::new();
    for h in hogs {
        streams.push(h.await.unwrap().0);
        peak = peak.max(rss_kib());
    }
    for _ in 0..40 {
        peak = peak.max(rss_kib());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(streams);

    // Settle: everything buffered is released.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while buffered(&p) != 0.0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(buffered(&p), 0.0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let settled = rss_kib();
    eprintln!(
        "RSS baseline {} MiB, peak {} MiB, settled {} MiB",
        baseline / 1024,
        peak / 1024,
        settled / 1024
    );
    assert!(
        peak < baseline + PEAK_MARGIN_KIB,
        "peak RSS {peak} KiB vs baseline {baseline} KiB"
    );
    assert!(
        settled < baseline + SETTLED_MARGIN_KIB,
        "settled RSS {settled} KiB vs baseline {baseline} KiB"
    );
}
