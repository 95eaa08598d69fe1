//! How many heap allocations the proxy makes per request, counted on the proxy's own
//! thread (the client and the backend run on another thread and are not counted).
//!
//! The figure is printed and bounded; it is the evidence for "no heap allocation per
//! request in steady state".

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::*;

const WARMUP: usize = 3_000;
const MEASURED: usize = 20_000;

#[test]
fn proxy_allocations_per_request() {
    // Backend and client live on their own thread and runtime.
    let (addr_tx, addr_rx) = mpsc::channel();
    let (proxy_tx, proxy_rx) = mpsc::channel::<std::net::SocketAddr>();
    let (warm_tx, warm_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let peer = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let b = backend("v1").await;
            addr_tx.send(b.addr).unwrap();
            let proxy = tokio::task::spawn_blocking(move || proxy_rx.recv().unwrap())
                .await
                .unwrap();
            let mut c = Client::connect(proxy).await;
            let headers = [
                ("service", "calc"),
                ("method", "add"),
                ("version", "1.0"),
                ("user", "alice"),
            ];
            for _ in 0..WARMUP {
                c.call(&headers, b"payload-of-a-typical-request").await;
            }
            warm_tx.send(()).unwrap();
            tokio::task::spawn_blocking(move || go_rx.recv().unwrap())
                .await
                .unwrap();
            for _ in 0..MEASURED {
                c.call(&headers, b"payload-of-a-typical-request").await;
            }
            done_tx.send(()).unwrap();
            drop(b);
        });
    });

    let backend_addr = addr_rx.recv().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let yaml = r#"
listeners:
  - {name: kv-in, address: "127.0.0.1:0", codec: kv, route_config: r}
route_configs:
  - name: r
    routes:
      - name: other
        match: {metadata: [{key: service, exact: other}]}
        route: {cluster: v1}
      - name: main
        match: {metadata: [{key: service, exact: calc}, {key: method, prefix: ad}]}
        route: {weighted_clusters: [{cluster: v1, weight: 9}, {cluster: v1b, weight: 1}]}
clusters:
  - {name: v1, endpoints: ["{v1}"]}
  - {name: v1b, endpoints: ["{v1}"]}
"#;
    let running = rt.block_on(proxy(yaml, &[("v1", backend_addr)]));
    proxy_tx.send(running.local_addr("kv-in").unwrap()).unwrap();
    // One `block_on` per wait, as a worker runs one for its life: the scheduler's
    // per-`block_on` state (such as its list of tasks that yielded) is made once, not
    // every 200 µs.
    let wait = |rx: &mpsc::Receiver<()>| {
        rt.block_on(async {
            while rx.try_recv().is_err() {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        })
    };
    wait(&warm_rx);
    let info = allocation_counter::measure(|| {
        go_tx.send(()).unwrap();
        wait(&done_rx);
    });
    peer.join().unwrap();
    let per_request = info.count_total as f64 / MEASURED as f64;
    let bytes_per_request = info.bytes_total as f64 / MEASURED as f64;
    println!(
        "proxy thread: {} allocations, {} bytes over {MEASURED} requests = {per_request:.3} allocations and {bytes_per_request:.0} bytes per request",
        info.count_total, info.bytes_total
    );
    // Buffers come from the worker's pool and tables keep their room: in steady state
    // no request allocates (a handful of allocations over the whole run, for tables
    // reaching their working size, is not per request).
    assert!(
        info.count_total <= 20,
        "{} allocations over {MEASURED} requests ({per_request} per request)",
        info.count_total
    );
}
