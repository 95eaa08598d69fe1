//! The ADS client against a scriptable in-process tonic ADS server: subscriptions,
//! versions and nonces, ACK and NACK, resource removal, out-of-order arrival and
//! reconnection, with kv traffic through a real proxy.

mod support;

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::HealthStatus;
use metaproxy_xds::state::ResourceType::{Cluster, Endpoint, Route};
use metaproxy_xds::XdsClient;
use support::*;

const OK: u8 = 0;

struct Setup {
    ads: AdsServer,
    stream: AdsStream,
    proxy: metaproxy::RunningServer,
    client: XdsClient,
}

/// A proxy whose client has opened its stream and sent its first requests (checked).
async fn setup() -> Setup {
    let mut ads = AdsServer::start().await;
    let proxy = proxy(&proxy_yaml(ads.addr)).await;
    let client = metaproxy_xds::spawn_if_configured(&proxy.handle()).expect("xds: is set");
    let mut stream = ads.stream().await;
    let cds = stream.request_of(Cluster).await;
    assert!(cds.resource_names.is_empty(), "CDS is a wildcard: {cds:?}");
    assert_eq!(cds.version_info, "");
    assert_eq!(cds.response_nonce, "");
    let node = cds
        .node
        .as_ref()
        .expect("the first request carries the node");
    assert_eq!(node.id, "test-node");
    assert_eq!(node.cluster, "test");
    assert_eq!(node.user_agent_name, "metaproxy");
    let rds = stream.request_of(Route).await;
    assert_eq!(rds.resource_names, ["kv-routes"]);
    Setup {
        ads,
        stream,
        proxy,
        client,
    }
}

fn metric(handle: &metaproxy::ServerHandle, kind: &str, result: &str) -> u64 {
    let text = handle.metrics_text();
    let prefix = format!("metaproxy_xds_updates_total{{type=\"{kind}\",result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Sends clusters v1 and v2 (EDS) with their endpoints and a 100/0 route, checking
/// every ACK and the EDS subscription on the way.
async fn serve_v1(s: &mut Setup, v1: &Backend, v2: &Backend) {
    let nonce = s
        .stream
        .respond(Cluster, "c1", vec![eds_cluster("v1"), eds_cluster("v2")]);
    let ack = s.stream.request_of(Cluster).await;
    assert_eq!(ack.version_info, "c1");
    assert_eq!(ack.response_nonce, nonce);
    assert!(ack.error_detail.is_none());
    let eds = s.stream.request_of(Endpoint).await;
    assert_eq!(eds.resource_names, ["v1", "v2"]);
    assert_eq!(eds.version_info, "");
    let nonce = s.stream.respond(
        Endpoint,
        "e1",
        vec![assignment("v1", &[v1.addr]), assignment("v2", &[v2.addr])],
    );
    let ack = s.stream.request_of(Endpoint).await;
    assert_answer(&ack, "e1", &nonce);
    let nonce = s.stream.respond(
        Route,
        "r1",
        vec![route_config("kv-routes", &[("v1", 100), ("v2", 0)])],
    );
    let ack = s.stream.request_of(Route).await;
    assert_answer(&ack, "r1", &nonce);
    assert!(ack.error_detail.is_none());
}

#[tokio::test]
async fn clusters_endpoints_and_routes_are_acked_applied_and_shown_with_their_source() {
    let mut s = setup().await;
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    let mut kv = KvClient::connect(s.proxy.local_addr("kv-in").unwrap()).await;
    // Before any route config: the proxy answers by itself.
    let (status, backend) = kv.call("canary").await.unwrap();
    assert_ne!(status, OK);
    assert_eq!(backend, "");
    serve_v1(&mut s, &v1, &v2).await;
    for _ in 0..20 {
        assert_eq!(kv.call("canary").await.unwrap(), (OK, "v1".to_owned()));
    }
    assert_eq!(v1.received(), 20);
    let handle = s.proxy.handle();
    let p = handle.provenance();
    assert_eq!(p.route_configs["kv-routes"].source, "xds");
    assert_eq!(p.route_configs["kv-routes"].version.as_deref(), Some("r1"));
    assert_eq!(p.clusters["v2"].version.as_deref(), Some("c1"));
    assert_eq!(p.listeners["kv-in"].source, "static");
    for kind in ["cluster", "endpoint", "route"] {
        assert_eq!(metric(&handle, kind, "ack"), 1, "{kind}");
        assert_eq!(metric(&handle, kind, "nack"), 0, "{kind}");
    }
    s.client.shutdown().await;
}

#[tokio::test]
async fn an_invalid_update_is_nacked_with_its_reason_and_the_previous_version_keeps_serving() {
    let mut s = setup().await;
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    serve_v1(&mut s, &v1, &v2).await;
    let mut kv = KvClient::connect(s.proxy.local_addr("kv-in").unwrap()).await;
    assert_eq!(kv.call("canary").await.unwrap(), (OK, "v1".to_owned()));

    // Rejected by the runtime's validation (total weight 0).
    let nonce = s.stream.respond(
        Route,
        "r2",
        vec![route_config("kv-routes", &[("v1", 0), ("v2", 0)])],
    );
    let nack = s.stream.request_of(Route).await;
    assert_eq!(
        nack.version_info, "r1",
        "a NACK carries the last accepted version"
    );
    assert_eq!(nack.response_nonce, nonce);
    let detail = nack.error_detail.expect("a NACK has error_detail");
    assert!(
        detail.message.contains("total weight is 0"),
        "{}",
        detail.message
    );
    assert_eq!(detail.code, 3);

    // Rejected by the conversion (an endpoint with port 0).
    let bad = assignment("v1", &["127.0.0.1:0".parse().unwrap()]);
    let nonce = s.stream.respond(Endpoint, "e2", vec![bad]);
    let nack = s.stream.request_of(Endpoint).await;
    assert_answer(&nack, "e1", &nonce);
    let detail = nack.error_detail.unwrap().message;
    assert!(detail.contains("port_value"), "{detail}");

    // A resource of another type inside a cluster response.
    let nonce = s
        .stream
        .respond(Cluster, "c2", vec![assignment("v1", &[v1.addr])]);
    let nack = s.stream.request_of(Cluster).await;
    assert_answer(&nack, "c1", &nonce);
    assert!(nack
        .error_detail
        .unwrap()
        .message
        .contains("ClusterLoadAssignment"));

    for _ in 0..10 {
        assert_eq!(kv.call("canary").await.unwrap(), (OK, "v1".to_owned()));
    }
    let handle = s.proxy.handle();
    assert_eq!(metric(&handle, "route", "nack"), 1);
    assert_eq!(metric(&handle, "endpoint", "nack"), 1);
    assert_eq!(metric(&handle, "cluster", "nack"), 1);
    assert_eq!(
        handle.provenance().route_configs["kv-routes"]
            .version
            .as_deref(),
        Some("r1")
    );

    // The next good update is taken.
    let nonce = s.stream.respond(
        Route,
        "r3",
        vec![route_config("kv-routes", &[("v1", 0), ("v2", 1)])],
    );
    let ack = s.stream.request_of(Route).await;
    assert_answer(&ack, "r3", &nonce);
    assert!(ack.error_detail.is_none());
    assert_eq!(kv.call("canary").await.unwrap(), (OK, "v2".to_owned()));
    s.client.shutdown().await;
}

#[tokio::test]
async fn removed_clusters_and_endpoints_go_away_and_eds_is_resubscribed() {
    let mut s = setup().await;
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    serve_v1(&mut s, &v1, &v2).await;
    let mut kv = KvClient::connect(s.proxy.local_addr("kv-in").unwrap()).await;
    // Route everything to v2, then remove v2's endpoint: the proxy answers by itself.
    s.stream
        .respond(Route, "r2", vec![route_config("kv-routes", &[("v2", 1)])]);
    s.stream.request_of(Route).await;
    assert_eq!(kv.call("canary").await.unwrap(), (OK, "v2".to_owned()));
    s.stream.respond(
        Endpoint,
        "e2",
        vec![assignment_with_health(
            "v2",
            &[(v2.addr, HealthStatus::Draining)],
        )],
    );
    s.stream.request_of(Endpoint).await;
    let (status, backend) = kv.call("canary").await.unwrap();
    assert_ne!(status, OK);
    assert_eq!(backend, "");

    // CDS without v2: the cluster is gone from the config and from the EDS
    // subscription; the route still names it, so it stays as a pending placeholder.
    s.stream.respond(Cluster, "c2", vec![eds_cluster("v1")]);
    let ack = s.stream.request_of(Cluster).await;
    assert_eq!(ack.version_info, "c2");
    let eds = s.stream.request_of(Endpoint).await;
    assert_eq!(eds.resource_names, ["v1"]);
    assert_eq!(eds.version_info, "e2");
    let p = s.proxy.handle().provenance();
    assert!(p.clusters["v2"].pending, "{p:?}");
    assert_eq!(p.clusters["v1"].version.as_deref(), Some("c2"));
    // The route moves back to v1, and v2 disappears entirely.
    s.stream
        .respond(Route, "r3", vec![route_config("kv-routes", &[("v1", 1)])]);
    s.stream.request_of(Route).await;
    assert_eq!(kv.call("canary").await.unwrap(), (OK, "v1".to_owned()));
    let config = s.proxy.handle().config();
    let names: Vec<&str> = config.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["v1"]);
    s.client.shutdown().await;
}

#[tokio::test]
async fn routes_arriving_before_their_clusters_are_served_once_the_clusters_arrive() {
    let mut s = setup().await;
    let v1 = backend("v1").await;
    let mut kv = KvClient::connect(s.proxy.local_addr("kv-in").unwrap()).await;
    let nonce = s
        .stream
        .respond(Route, "r1", vec![route_config("kv-routes", &[("v1", 1)])]);
    let ack = s.stream.request_of(Route).await;
    assert_answer(&ack, "r1", &nonce);
    assert!(ack.error_detail.is_none(), "{ack:?}");
    assert!(s.proxy.handle().provenance().clusters["v1"].pending);
    let (status, _) = kv.call("canary").await.unwrap();
    assert_ne!(status, OK, "no endpoints yet");
    // Endpoints the proxy did not ask for are not used (nor NACKed).
    s.stream
        .respond(Endpoint, "e0", vec![assignment("v1", &[v1.addr])]);
    let ack = s.stream.request_of(Endpoint).await;
    assert!(ack.error_detail.is_none());
    assert_ne!(kv.call("canary").await.unwrap().0, OK);
    // A response of a type the proxy never subscribed to is not answered.
    s.stream.respond_url(
        "type.googleapis.com/envoy.config.listener.v3.Listener",
        "l1",
        vec![],
    );
    s.stream.respond(Cluster, "c1", vec![eds_cluster("v1")]);
    let ack = s.stream.request_of(Cluster).await;
    assert_eq!(ack.version_info, "c1");
    let eds = s.stream.request_of(Endpoint).await;
    assert_eq!(eds.resource_names, ["v1"]);
    assert_eq!(eds.version_info, "e0");
    s.stream
        .respond(Endpoint, "e1", vec![assignment("v1", &[v1.addr])]);
    s.stream.request_of(Endpoint).await;
    assert_eq!(kv.call("canary").await.unwrap(), (OK, "v1".to_owned()));
    assert!(!s.proxy.handle().provenance().clusters["v1"].pending);
    s.client.shutdown().await;
}

#[tokio::test]
async fn a_lost_stream_keeps_the_config_and_reconnects_with_the_accepted_versions() {
    let mut s = setup().await;
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    serve_v1(&mut s, &v1, &v2).await;
    let mut kv = KvClient::connect(s.proxy.local_addr("kv-in").unwrap()).await;
    // The server ends the stream.
    drop(s.stream);
    let mut stream = s.ads.stream().await;
    for _ in 0..10 {
        assert_eq!(kv.call("canary").await.unwrap(), (OK, "v1".to_owned()));
    }
    let mut first = Vec::new();
    for _ in 0..3 {
        first.push(stream.request().await);
    }
    first.sort_by(|a, b| a.type_url.cmp(&b.type_url));
    let summary: Vec<(&str, &str, Vec<String>)> = first
        .iter()
        .map(|r| {
            assert_eq!(r.response_nonce, "", "a new stream starts without a nonce");
            (
                r.type_url.rsplit('.').next().unwrap(),
                r.version_info.as_str(),
                r.resource_names.clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("RouteConfiguration", "r1", vec!["kv-routes".to_owned()]),
            ("Cluster", "c1", vec![]),
            (
                "ClusterLoadAssignment",
                "e1",
                vec!["v1".to_owned(), "v2".to_owned()]
            ),
        ]
    );
    // A new update on the new stream is applied.
    let nonce = stream.respond(Route, "r2", vec![route_config("kv-routes", &[("v2", 1)])]);
    let ack = stream.request_of(Route).await;
    assert_answer(&ack, "r2", &nonce);
    assert_eq!(
        eventually(&mut kv, "canary", |r| r.1 == "v2").await,
        (OK, "v2".to_owned())
    );
    s.client.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_control_plane_is_retried_while_the_proxy_serves() {
    // Nothing listens on this address at first.
    let reserved = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = reserved.local_addr().unwrap();
    drop(reserved);
    let proxy = proxy(&proxy_yaml(addr)).await;
    let client = metaproxy_xds::spawn_if_configured(&proxy.handle()).unwrap();
    let mut kv = KvClient::connect(proxy.local_addr("kv-in").unwrap()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_ne!(kv.call("canary").await.unwrap().0, OK);
    // The control plane comes up on that address; the client finds it.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let mut ads = AdsServer::start_on(listener).await;
    let mut stream = ads.stream().await;
    stream.request_of(Cluster).await;
    stream.request_of(Route).await;
    let v1 = backend("v1").await;
    stream.respond(Cluster, "c1", vec![eds_cluster("v1")]);
    stream.request_of(Cluster).await;
    stream.request_of(Endpoint).await;
    stream.respond(Endpoint, "e1", vec![assignment("v1", &[v1.addr])]);
    stream.request_of(Endpoint).await;
    stream.respond(Route, "r1", vec![route_config("kv-routes", &[("v1", 1)])]);
    stream.request_of(Route).await;
    assert_eq!(kv.call("canary").await.unwrap(), (OK, "v1".to_owned()));
    client.shutdown().await;
}

/// Fifty route updates in a row, each ACKed with its own version and nonce while kv
/// traffic runs; prints the update-to-ACK latency (the client ACKs only after the swap)
/// for docs/XDS.md. Run with `--nocapture` to see the figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_updates_are_each_acked_in_order_under_load() {
    let mut s = setup().await;
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    serve_v1(&mut s, &v1, &v2).await;
    let listener = s.proxy.local_addr("kv-in").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut kv = KvClient::connect(listener).await;
            let (mut sent, mut failed) = (0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                sent += 1;
                if !matches!(kv.call("canary").await, Some((OK, b)) if !b.is_empty()) {
                    failed += 1;
                }
            }
            (sent, failed)
        })
    };
    let mut latencies = Vec::new();
    for i in 0..50u32 {
        let version = format!("u{i}");
        let split = if i % 2 == 0 {
            [("v1", 0), ("v2", 1)]
        } else {
            [("v1", 1), ("v2", 0)]
        };
        let started = std::time::Instant::now();
        let nonce = s
            .stream
            .respond(Route, &version, vec![route_config("kv-routes", &split)]);
        let ack = s.stream.request_of(Route).await;
        latencies.push(started.elapsed());
        assert_answer(&ack, version.as_str(), &nonce);
        assert!(ack.error_detail.is_none());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, failed) = load.await.unwrap();
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed during the updates"
    );
    assert!(sent > 0);
    latencies.sort();
    println!(
        "50 route updates under load: update-to-ACK p50 {:?}, p90 {:?}, max {:?}; {sent} requests, {failed} failed",
        latencies[25], latencies[45], latencies[49]
    );
    s.client.shutdown().await;
}

#[tokio::test]
async fn a_reload_of_the_base_config_keeps_the_xds_resources() {
    let mut s = setup().await;
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    serve_v1(&mut s, &v1, &v2).await;
    let handle = s.proxy.handle();
    let mut kv = KvClient::connect(s.proxy.local_addr("kv-in").unwrap()).await;
    // A new base: one more file route config, and different xds settings.
    let yaml = proxy_yaml(s.ads.addr).replace("backoff_max: 200ms", "backoff_max: 300ms")
        + "route_configs:\n  - {name: unused, routes: []}\n";
    let base = metaproxy::config::parse(&yaml, "reload.yaml".as_ref()).unwrap();
    let outcome = handle.apply(base).await.unwrap();
    assert!(
        outcome
            .restart_required
            .iter()
            .any(|r| r.contains("xds section changed")),
        "{outcome:?}"
    );
    assert_eq!(kv.call("canary").await.unwrap(), (OK, "v1".to_owned()));
    let p = handle.provenance();
    assert_eq!(p.route_configs["unused"].source, "static");
    assert_eq!(p.route_configs["kv-routes"].version.as_deref(), Some("r1"));
    s.client.shutdown().await;
}

#[tokio::test]
async fn responses_sent_back_to_back_are_answered_in_order_each_with_its_own_nonce() {
    let mut s = setup().await;
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    serve_v1(&mut s, &v1, &v2).await;
    let bad = route_config("kv-routes", &[("v1", 0), ("v2", 0)]);
    let n2 = s
        .stream
        .respond(Route, "r2", vec![route_config("kv-routes", &[("v2", 1)])]);
    let n3 = s.stream.respond(Route, "r3", vec![bad]);
    let n4 = s
        .stream
        .respond(Route, "r4", vec![route_config("kv-routes", &[("v1", 1)])]);
    let ack2 = s.stream.request_of(Route).await;
    assert_answer(&ack2, "r2", &n2);
    let nack3 = s.stream.request_of(Route).await;
    assert_answer(&nack3, "r2", &n3);
    assert!(nack3.error_detail.is_some());
    let ack4 = s.stream.request_of(Route).await;
    assert_answer(&ack4, "r4", &n4);
    assert!(ack4.error_detail.is_none());
    let mut kv = KvClient::connect(s.proxy.local_addr("kv-in").unwrap()).await;
    assert_eq!(kv.call("canary").await.unwrap(), (OK, "v1".to_owned()));
    s.client.shutdown().await;
}
