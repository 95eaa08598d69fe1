//! Metrics, admin endpoints, reload from file and access logs, end to end.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A minimal HTTP/1.1 client: returns (status, body).
async fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: admin\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

const CONFIG: &str = r#"
admin: {address: "127.0.0.1:0"}
listeners:
  - name: kv-in
    address: "127.0.0.1:0"
    codec: kv
    route_config: r
    access_log: {path: "{log}"}
route_configs:
  - name: r
    routes:
      - name: main
        match: {metadata: [{key: service, exact: calc}]}
        route:
          weighted_clusters: [{cluster: v1, weight: 1}]
          mirror: [{cluster: shadow, percent: 100}]
clusters:
  - {name: v1, endpoints: ["{v1}"]}
  - {name: shadow, endpoints: ["{shadow}"]}
"#;

#[tokio::test]
async fn metrics_admin_reload_and_access_log() {
    let v1 = backend("v1").await;
    let shadow = backend("shadow").await;
    let dir = std::env::temp_dir().join(format!("metaproxy-observe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log_path = dir.join("access.log");
    let cfg_path = dir.join("proxy.yaml");
    let text = CONFIG
        .replace("{v1}", &v1.addr.to_string())
        .replace("{shadow}", &shadow.addr.to_string())
        .replace("{log}", log_path.to_str().unwrap());
    std::fs::write(&cfg_path, &text).unwrap();
    let server = metaproxy::Server::from_file(&cfg_path, registry()).unwrap();
    let running = server.bind().await.unwrap();
    let admin = running.admin_addr().unwrap();
    let mut c = Client::connect(running.local_addr("kv-in").unwrap()).await;
    for _ in 0..10 {
        c.call(&[("service", "calc"), ("method", "add")], b"x")
            .await;
    }
    c.call(&[("service", "nope")], b"").await;
    // The mirror received every request of the route.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while shadow.received() < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "mirror got {}",
            shadow.received()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let (status, body) = http(admin, "GET", "/metrics").await;
    assert_eq!(status, 200);
    let lines: Vec<_> = body.lines().map(|l| Ok(l.to_owned())).collect();
    let scrape = prometheus_parse::Scrape::parse(lines.into_iter()).unwrap();
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert_eq!(
        value(
            "metaproxy_requests_total",
            &[("listener", "kv-in"), ("route", "main"), ("cluster", "v1")]
        ),
        10.0
    );
    assert_eq!(
        value(
            "metaproxy_responses_total",
            &[("listener", "kv-in"), ("cluster", "v1"), ("status", "ok")]
        ),
        10.0
    );
    assert_eq!(
        value(
            "metaproxy_local_replies_total",
            &[("listener", "kv-in"), ("reason", "no_route")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "metaproxy_mirror_requests_total",
            &[("cluster", "shadow"), ("result", "sent")]
        ),
        10.0
    );
    assert_eq!(
        value(
            "metaproxy_downstream_connections_active",
            &[("listener", "kv-in")]
        ),
        1.0
    );
    assert!(
        value(
            "metaproxy_upstream_connections_active",
            &[("cluster", "v1")]
        ) >= 1.0
    );

    assert_eq!(http(admin, "GET", "/ready").await.0, 200);
    let (status, body) = http(admin, "GET", "/clusters").await;
    assert_eq!(status, 200);
    let clusters: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(clusters[0]["name"], "v1");
    assert_eq!(clusters[0]["endpoints"][0]["address"], v1.addr.to_string());
    assert_eq!(clusters[0]["endpoints"][0]["health"], "healthy");
    let (status, body) = http(admin, "GET", "/config").await;
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["listeners"][0]["name"], "kv-in");
    assert_eq!(config["provenance"]["listeners"]["kv-in"]["source"], "file");
    assert_eq!(config["provenance"]["clusters"]["v1"]["source"], "file");

    // Reload from the file: a broken file is rejected and counted, a good one applied.
    std::fs::write(&cfg_path, text.replace("weight: 1", "weight: 0")).unwrap();
    let (status, body) = http(admin, "POST", "/reload").await;
    assert!(status >= 400, "{status} {body}");
    assert!(body.contains("total weight is 0"), "{body}");
    std::fs::write(&cfg_path, text.replace("exact: calc", "exact: nope")).unwrap();
    let (status, body) = http(admin, "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");
    let r = c.call(&[("service", "nope")], b"").await;
    assert_eq!(header(&r, "backend").as_deref(), Some("v1"));
    let (_, body) = http(admin, "GET", "/metrics").await;
    assert!(
        body.contains("metaproxy_config_reloads_total{result=\"ok\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("metaproxy_config_reloads_total{result=\"error\"} 1"),
        "{body}"
    );

    // The kv protocol cannot tell a client to move: the drain waits for it to close.
    drop(c);
    running.shutdown().await;
    // The access log has one JSON line per request, written off the request path.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let lines = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= 12 || tokio::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(lines.len(), 12, "{lines:?}");
    assert_eq!(lines[0]["listener"], "kv-in");
    assert_eq!(lines[0]["route"], "main");
    assert_eq!(lines[0]["cluster"], "v1");
    assert_eq!(lines[0]["status"], "ok");
    assert_eq!(lines[0]["metadata"]["service"], "calc");
    assert_eq!(lines[10]["status"], "no_route");
}

/// `/clusters` counts each endpoint's requests in flight (on its upstream connections)
/// whatever the balancer, and least-request clusters still balance on theirs.
#[tokio::test]
async fn admin_shows_requests_in_flight_per_endpoint() {
    let slow = backend("slow").await;
    let spare = backend("spare").await;
    let text = format!(
        r#"
admin: {{address: "127.0.0.1:0"}}
listeners:
  - {{name: rr-in, address: "127.0.0.1:0", codec: kv, route_config: rr}}
  - {{name: lr-in, address: "127.0.0.1:0", codec: kv, route_config: lr}}
route_configs:
  - {{name: rr, routes: [{{route: {{cluster: rr}}}}]}}
  - {{name: lr, routes: [{{route: {{cluster: lr}}}}]}}
clusters:
  - {{name: rr, endpoints: ["{slow}"]}}
  - {{name: lr, lb_policy: least_request, endpoints: ["{slow}", "{spare}"]}}
"#,
        slow = slow.addr,
        spare = spare.addr
    );
    let config = metaproxy::config::parse(&text, "test.yaml".as_ref()).unwrap();
    let running = metaproxy::Server::new(config, registry())
        .unwrap()
        .bind()
        .await
        .unwrap();
    let admin = running.admin_addr().unwrap();
    let in_flight = |body: &str, cluster: &str| -> Vec<u64> {
        let clusters: serde_json::Value = serde_json::from_str(body).unwrap();
        let c = clusters
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == cluster)
            .unwrap()
            .clone();
        c["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["active_requests"].as_u64().unwrap())
            .collect()
    };

    // Three slow requests through the round-robin cluster are in flight at once.
    let mut c = Client::connect(running.local_addr("rr-in").unwrap()).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(c.send(&[("sleep-ms", "1500")], b"x").await);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let (_, body) = http(admin, "GET", "/clusters").await;
        if in_flight(&body, "rr") == [3] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never 3 in flight: {body}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..3 {
        let m = c.recv_timeout(Duration::from_secs(5)).await.unwrap();
        assert!(ids.contains(&m.request_id()));
    }
    let (_, body) = http(admin, "GET", "/clusters").await;
    assert_eq!(in_flight(&body, "rr"), [0], "{body}");

    // Least request: while one endpoint holds a request, the two random draws of the
    // power of two choices pick it only when both name it (a quarter of the quick
    // requests, against a half if the balancer did not see the held one).
    let mut lr = Client::connect(running.local_addr("lr-in").unwrap()).await;
    lr.send(&[("sleep-ms", "3000")], b"held").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while slow.received() + spare.received() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "held request not received"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The round-robin cluster's three went to `slow` (3); the held one to either.
    let busy_is_slow = slow.received() == 4;
    let before = (slow.received(), spare.received());
    let mut quick = Client::connect(running.local_addr("lr-in").unwrap()).await;
    for _ in 0..200 {
        quick.call(&[], b"q").await;
    }
    let (to_slow, to_spare) = (slow.received() - before.0, spare.received() - before.1);
    assert_eq!(to_slow + to_spare, 200);
    let to_busy = if busy_is_slow { to_slow } else { to_spare };
    assert!(
        to_busy < 75,
        "{to_busy} of 200 quick requests went to the endpoint holding a request"
    );
    let (_, body) = http(admin, "GET", "/clusters").await;
    let mut held = in_flight(&body, "lr");
    held.sort_unstable();
    assert_eq!(held, [0, 1], "{body}");
    // The held request is answered before the clients go.
    lr.recv_timeout(Duration::from_secs(5)).await.unwrap();
    drop((c, lr, quick));
    running.shutdown().await;
}

/// After a reload, a client connection that stays open but idle lets go of the old
/// config: a cluster the new config dropped closes its upstream connection, and the
/// same client connection's next request takes the new route.
#[tokio::test]
async fn an_idle_connection_lets_go_of_the_old_config_after_a_reload() {
    let old = backend("old").await;
    let new = backend("new").await;
    let dir = std::env::temp_dir().join(format!("metaproxy-letgo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg_path = dir.join("proxy.yaml");
    let config = |cluster: &str, addr: std::net::SocketAddr| {
        format!(
            r#"
admin: {{address: "127.0.0.1:0"}}
listeners:
  - {{name: in, address: "127.0.0.1:0", codec: kv, route_config: r}}
route_configs:
  - {{name: r, routes: [{{route: {{cluster: {cluster}, timeout: 300ms}}}}]}}
clusters:
  - {{name: {cluster}, endpoints: ["{addr}"]}}
"#
        )
    };
    std::fs::write(&cfg_path, config("old", old.addr)).unwrap();
    let running = metaproxy::Server::from_file(&cfg_path, registry())
        .unwrap()
        .bind()
        .await
        .unwrap();
    let admin = running.admin_addr().unwrap();
    let mut c = Client::connect(running.local_addr("in").unwrap()).await;
    for _ in 0..20 {
        let r = c.call(&[], b"x").await;
        assert_eq!(header(&r, "backend").as_deref(), Some("old"));
    }
    std::fs::write(&cfg_path, config("new", new.addr)).unwrap();
    let (status, body) = http(admin, "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");
    let open_to_old = |metrics: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with("metaproxy_upstream_connections_active{cluster=\"old\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .map(|v| v.to_owned())
    };
    let (_, metrics) = http(admin, "GET", "/metrics").await;
    assert_eq!(open_to_old(&metrics).as_deref(), Some("1"), "{metrics}");
    // The client connection stays open and sends nothing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = http(admin, "GET", "/metrics").await;
        if open_to_old(&metrics).as_deref() == Some("0") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old cluster's connection stayed open: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = c.call(&[], b"y").await;
    assert_eq!(header(&r, "backend").as_deref(), Some("new"));
    drop(c);
    running.shutdown().await;
}
