//! The request path under both threading models with many clients sharing few upstream
//! connections: client connections encode requests straight into upstream connections'
//! write buffers and upstream connections encode responses straight into clients'
//! write buffers, so with tokio's work-stealing runtime these calls cross threads.
//! Every request must get exactly its own reply (checked by id and body), whatever
//! thread each side runs on, and the upstream connections must stay few.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::hostile::*;
use common::*;
use metaproxy::runtime::Threading;
use metaproxy_example_kv::Status;

fn config(multiplexing: bool) -> String {
    format!(
        r#"
listeners:
  - {{name: in, address: "127.0.0.1:0", codec: kv, options: {{multiplexing: "{multiplexing}"}}, route_config: r}}
route_configs:
  - {{name: r, routes: [{{route: {{cluster: echo, timeout: 20s}}}}]}}
clusters:
  - {{name: echo, endpoints: ["{{echo}}"], max_pending_requests: 100000, max_connections: 8}}
"#
    )
}

/// 48 clients × 150 requests, 8 in flight each, bodies of 1.5 KiB (several frames per
/// read on both sides).
async fn load(addr: std::net::SocketAddr) -> Outcome {
    drive(addr, "echo", 48, 150, 8, 1536, Duration::from_secs(60)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn work_stealing_answers_every_request_across_threads() {
    let echo = backend("echo").await;
    let p = proxy(&config(true), &[("echo", echo.addr)]).await;
    let outcome = load(p.local_addr("in").unwrap()).await;
    assert_eq!(outcome.count(Status::Ok), 48 * 150, "{outcome:?}");
    assert_eq!(outcome.wrong_bodies, 0);
    assert_eq!(echo.received.load(Ordering::SeqCst), 48 * 150);
    assert!(
        echo.connections.load(Ordering::SeqCst) <= 8,
        "max_connections holds: {} upstream connections",
        echo.connections.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_core_workers_answer_every_request_with_and_without_multiplexing() {
    for multiplexing in [true, false] {
        let echo = backend("echo").await;
        let p = proxy_with(
            &config(multiplexing),
            &[("echo", echo.addr)],
            Threading::PerCore { workers: 2 },
        )
        .await;
        let outcome = load(p.local_addr("in").unwrap()).await;
        assert_eq!(
            outcome.count(Status::Ok),
            48 * 150,
            "multiplexing {multiplexing}: {outcome:?}"
        );
        assert_eq!(outcome.wrong_bodies, 0);
        assert_eq!(echo.received.load(Ordering::SeqCst), 48 * 150);
        assert!(echo.connections.load(Ordering::SeqCst) <= 8);
        assert!(p.shutdown().await, "drains");
    }
}

/// Per-core workers write upstream at the end of their turn (when they run out of
/// ready tasks), not from the upstream connection's task. One client with one request
/// at a time is the case where nothing else would make the worker write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_core_workers_write_a_lone_request_when_they_run_out_of_work() {
    let echo = backend("echo").await;
    let p = proxy_with(
        &config(true),
        &[("echo", echo.addr)],
        Threading::PerCore { workers: 1 },
    )
    .await;
    let outcome = drive(
        p.local_addr("in").unwrap(),
        "echo",
        1,
        300,
        1,
        64,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(outcome.count(Status::Ok), 300, "{outcome:?}");
    assert_eq!(outcome.wrong_bodies, 0);
    assert!(p.shutdown().await, "drains");
}

/// A write at the end of a turn that the socket cannot take whole (the backend reads
/// nothing for a while; the requests are large) leaves the rest to the connection's
/// task, which waits until the socket takes it: every request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_core_workers_finish_writes_a_stalled_backend_could_not_take_at_once() {
    let stalled = hostile_backend(Fault::StallThenEcho(300)).await;
    let yaml = r#"
listeners:
  - {name: in, address: "127.0.0.1:0", codec: kv, route_config: r}
route_configs:
  - {name: r, routes: [{route: {cluster: c, timeout: 20s}}]}
clusters:
  - {name: c, endpoints: ["{c}"], outlier_detection: {enabled: false}}
"#;
    let p = proxy_with(
        yaml,
        &[("c", stalled.addr)],
        Threading::PerCore { workers: 1 },
    )
    .await;
    let outcome = drive(
        p.local_addr("in").unwrap(),
        "any",
        4,
        6,
        4,
        256 * 1024,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(outcome.count(Status::Ok), 24, "{outcome:?}");
    assert_eq!(outcome.wrong_bodies, 0);
    assert_eq!(stalled.received.load(Ordering::SeqCst), 24);
    assert!(p.shutdown().await, "drains");
}
