//! Resilience: rejected reloads change nothing, limits hold whatever the worker count,
//! and hostile backends and clients get bounded treatment (every two-way request
//! answered, memory bounded). Loopback only, each test bounded in time.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use metaproxy_example_kv::{frames, Status};

/// The `/clusters` entry of endpoint `i` of cluster `name`.
fn endpoint_json(p: &metaproxy::RunningServer, name: &str, i: usize) -> serde_json::Value {
    let clusters = p.handle().clusters_json();
    clusters
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no cluster {name} in {clusters}"))["endpoints"][i]
        .clone()
}

const ONE_AT_A_TIME: &str = r#"
listeners:
  - {name: in, address: "127.0.0.1:0", codec: kv, options: {multiplexing: "false"}, route_config: r}
route_configs:
  - {name: r, routes: [{route: {cluster: v1}}]}
clusters:
  - {name: v1, endpoints: ["{v1}"], max_connections: 2, connect_timeout: 1s}
"#;

#[tokio::test]
async fn a_rejected_reload_changes_no_live_setting() {
    let v1 = backend("v1").await;
    let p = proxy(ONE_AT_A_TIME, &[("v1", v1.addr)]).await;
    let handle = p.handle();
    let before = endpoint_json(&p, "v1", 0);
    assert_eq!(before["max_connections"], 2);
    assert_eq!(before["connect_timeout_ms"], 1000);

    // Changed pool limits plus a route table that fails to compile.
    let mut bad = (*handle.config()).clone();
    bad.clusters[0].max_connections = 6;
    bad.clusters[0].connect_timeout = "50ms".parse().unwrap();
    bad.route_configs[0].routes[0].route.hash_policy = vec![String::new()];
    let problems = handle.apply(bad).await.expect_err("must be rejected");
    assert!(
        problems
            .iter()
            .any(|p| p.field.starts_with("route_configs[0].routes[0]")),
        "{problems:?}"
    );
    assert_eq!(endpoint_json(&p, "v1", 0), before);
    assert_eq!(handle.config().clusters[0].max_connections, 2);

    // Behaviour too: six concurrent slow requests still share at most two connections.
    let mut c = Client::connect(p.local_addr("in").unwrap()).await;
    for _ in 0..6 {
        c.send(&[("sleep-ms", "50")], b"slow").await;
    }
    for _ in 0..6 {
        let r = c.recv_timeout(Duration::from_secs(5)).await.unwrap();
        assert_eq!(frames::status(&r), Status::Ok as u8);
    }
    assert!(v1.connections.load(Ordering::SeqCst) <= 2);

    // `check` runs the same compile step and reports the same field.
    let mut bad = (*handle.config()).clone();
    bad.route_configs[0].routes[0].route.hash_policy = vec![String::new()];
    let problems = metaproxy::config::validate(&bad, &registry()).expect_err("rejected");
    assert!(problems
        .iter()
        .any(|p| p.field.starts_with("route_configs[0].routes[0]")));
}

#[tokio::test]
async fn max_connections_holds_across_per_core_workers() {
    let v1 = backend("v1").await;
    let yaml = ONE_AT_A_TIME
        .replace(", options: {multiplexing: \"false\"}", "")
        .replace("max_connections: 2", "max_connections: 1");
    let p = proxy_with(
        &yaml,
        &[("v1", v1.addr)],
        metaproxy::runtime::Threading::PerCore { workers: 2 },
    )
    .await;
    let addr = p.local_addr("in").unwrap();
    // Enough client connections that both workers accept some.
    let mut tasks = Vec::new();
    for i in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            for j in 0..5 {
                let body = format!("{i}-{j}");
                let r = c.call(&[("sleep-ms", "5")], body.as_bytes()).await;
                assert_eq!(frames::body(&r), body.as_bytes());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(v1.connections.load(Ordering::SeqCst), 1);
    p.shutdown().await;
}
