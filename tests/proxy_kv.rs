//! End-to-end behaviour of the runtime with the kv example protocol: backends on port 0,
//! the proxy in-process, real sockets.

mod common;

use std::time::{Duration, Instant};

use common::*;
use metaproxy_example_kv::{frames, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BASIC: &str = r#"
listeners:
  - {name: kv-in, address: "127.0.0.1:0", codec: kv, route_config: r, max_frame_size: 65536}
route_configs:
  - name: r
    routes:
      - name: slow
        match: {metadata: [{key: service, exact: slow}]}
        route: {cluster: v1, timeout: 200ms}
      - name: dead
        match: {metadata: [{key: service, exact: dead}]}
        route: {cluster: dead}
      - name: mutate
        match: {metadata: [{key: service, exact: mutate}]}
        route: {cluster: v1}
        request_mutation: [{key: x-route, value: beta}]
        response_mutation: [{key: x-proxy, value: metaproxy}]
      - name: canary
        match: {metadata: [{key: service, exact: canary}]}
        route:
          weighted_clusters: [{cluster: v1, weight: 90}, {cluster: v2, weight: 10}]
      - name: users
        match:
          metadata:
            - {key: service, prefix: "user."}
            - {key: method, regex: "^(get|list)", invert: true}
        route: {cluster: v2}
      - name: tight
        match: {metadata: [{key: service, exact: tight}]}
        route: {cluster: tight}
      - name: retry
        match: {metadata: [{key: service, exact: retry}]}
        route: {cluster: half-dead, retries: {attempts: 2}}
      - name: retry-slow
        match: {metadata: [{key: service, exact: retry-slow}]}
        route: {cluster: half-dead, retries: {attempts: 2}, timeout: 300ms}
      - name: default
        match: {metadata: [{key: service, present: true}]}
        route: {cluster: v1}
clusters:
  - {name: v1, endpoints: ["{v1}"], max_pending_requests: 100000}
  - {name: tight, endpoints: ["{v2}"], max_pending_requests: 2}
  - {name: half-dead, endpoints: ["{dead}", "{v2}"], lb_policy: round_robin}
  - {name: v2, endpoints: ["{v2}"]}
  - {name: dead, endpoints: ["{dead}"], connect_timeout: 500ms}
"#;

/// An address nothing listens on.
async fn dead_addr() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

async fn setup() -> (Backend, Backend, metaproxy::RunningServer) {
    let v1 = backend("v1").await;
    let v2 = backend("v2").await;
    let dead = dead_addr().await;
    let p = proxy(BASIC, &[("v1", v1.addr), ("v2", v2.addr), ("dead", dead)]).await;
    (v1, v2, p)
}

#[tokio::test]
async fn forwards_and_returns_the_reply() {
    let (v1, _v2, p) = setup().await;
    let mut c = Client::connect(p.local_addr("kv-in").unwrap()).await;
    let r = c
        .call(&[("service", "calc"), ("method", "add")], b"1+2")
        .await;
    assert_eq!(frames::status(&r), Status::Ok as u8);
    assert_eq!(header(&r, "backend").as_deref(), Some("v1"));
    assert_eq!(frames::body(&r), b"1+2");
    assert_eq!(v1.received(), 1);
}

#[tokio::test]
async fn routes_on_metadata_with_prefix_regex_and_invert() {
    let (_v1, _v2, p) = setup().await;
    let mut c = Client::connect(p.local_addr("kv-in").unwrap()).await;
    let r = c
        .call(&[("service", "user.profile"), ("method", "update")], b"")
        .await;
    assert_eq!(header(&r, "backend").as_deref(), Some("v2"));
    // The inverted regex excludes get*/list* from the users route: default route.
    let r = c
        .call(&[("service", "user.profile"), ("method", "getName")], b"")
        .await;
    assert_eq!(header(&r, "backend").as_deref(), Some("v1"));
}

#[tokio::test]
async fn no_route_gets_a_native_error_reply() {
    let (v1, _v2, p) = setup().await;
    let mut c = Client::connect(p.local_addr("kv-in").unwrap()).await;
    let r = c.call(&[("method", "orphan")], b"").await;
    assert_eq!(frames::status(&r), Status::NoRoute as u8);
    assert!(String::from_utf8_lossy(frames::body(&r)).contains("no route"));
    assert_eq!(v1.received(), 0);
}

#[tokio::test]
async fn pipelined_requests_get_matching_replies_out_of_order() {
    let (_v1, _v2, p) = setup().await;
    let mut c = Client::connect(p.local_addr("kv-in").unwrap()).await;
    // The first request is slow (answered after 100ms), the rest are fast: replies come
    // back in completion order and each matches its request by id and body.
    let mut sent = std::collections::HashMap::new();
    let slow = c
        .send(&[("service", "calc"), ("sleep-ms", "100")], b"slow")
        .await;
    sent.insert(slow, b"slow".to_vec());
    for i in 0..50u32 {
        let body = format!("req-{i}");
        let id = c.send(&[("service", "calc")], body.as_bytes()).await;
        sent.insert(id, body.into_bytes());
    }
    let mut order = Vec::new();
    for _ in 0..51 {
        let r = c.recv_timeout(Duration::from_secs(5)).await.unwrap();
        let body = sent
            .remove(&r.request_id())
            .expect("reply to a request we sent, once");
        assert_eq!(frames::body(&r), &body[..]);
        order.push(r.request_id());
    }
    assert!(sent.is_empty());
    assert_eq!(
        *order.last().unwrap(),
        slow,
        "the slow reply should come last"
    );
}

#[tokio::test]
async fn weighted_split_follows_the_weights() {
    let (v1, v2, p) = setup().await;
    let mut c = Client::connect(p.local_addr("kv-in").unwrap()).await;
    let n = 2000;
    for _ in 0..n {
        c.send(&[("service", "canary")], b"").await;
    }
    let mut replies = Vec::new();
    for _ in 0..n {
        replies.push(c.recv_timeout(Duration::from_secs(5)).await.unwrap());
    }
    let t = tally(&replies);
    let v2_share = *t.get("v2").unwrap_or(&0) as f64 / n as f64;
    // 10% expected; binomial sd = sqrt(0.09/2000) = 0.0067, so +-0.035 is > 5 sd.
    assert!(
        (v2_share - 0.10).abs() < 0.035,
        "v2 share {v2_share}, tally {t:?}"
    );
    assert_eq!(v1.received() + v2.received(), n);
}

#[tokio::test]
async fn route_timeout_gives_a_timeout_reply() {
    let (_v1, _v2, p) = setup().await;
    let mut c = Client::connect(p.local_addr("kv-in").unwrap()).await;
    let started = Instant::now();
    let r = c
        .call(&[("service", "slow"), ("sleep-ms", "2000")], b"")
        .await;
    assert_eq!(frames::status(&r), Status::Timeout as u8);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    // The late reply from the backend must not reach the client as a second answer.
    let next = c.call(&[("service", "calc")], b"after").await;
    assert_eq!(frames::body(&next), b"after");
}

#[tokio::test]
async fn dead_endpoint_gives_an_upstream_failure_promptly() {
    let (_v1, _v2, p) = setup().await;
    let mut c = Client::connect(p.local_addr("kv-in").unwrap()).await;
    let started = Instant::now();
    let r = c.call(&[("service", "dead")], b"").await;
    assert_eq!(frames::status(&r), Status::UpstreamFailure as u8);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Again, while the endpoint is marked unreachable.
    let r = c.call(&[("service", "dead")], b"").await;
    assert_eq!(frames::status(&r), Status::UpstreamFailure as u8);
}

#[tokio::test]
async fn mutations_reach_the_backend_and_the_client() {
    let (v1, _v2, p) = setup().await;
    let mut c = Client::connect(p.local_addr("kv-in").unwrap()).await;
    let r = c.call(&[("service", "mutate")], b"").await;
    assert_eq!(header(&r, "x-proxy").as_deref(), Some("metaproxy"));
    let seen = v1.seen.lock().unwrap().clone();
    assert!(
        seen[0].contains(&("x-route".to_owned(), "beta".to_owned())),
        "{seen:?}"
    );
}

#[tokio::test]
async fn one_way_is_forwarded_and_never_answered() {
    let (v1, _v2, p) = setup().await;
    let mut c = Client::connect(p.local_addr("kv-in").unwrap()).await;
    c.stream
        .write_all(&frames::one_way(77, &[("service", "calc")], b"fire"))
        .await
        .unwrap();
    // A one-way to no route must not be answered either.
    c.stream
        .write_all(&frames::one_way(78, &[("nothing", "x")], b""))
        .await
        .unwrap();
    let r = c.call(&[("service", "calc")], b"two-way").await;
    assert_eq!(
        frames::body(&r),
        b"two-way",
        "the first reply is the two-way call's"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while v1.one_way.load(std::sync::atomic::Ordering::SeqCst) < 1 {
        assert!(
            Instant::now() < deadline,
            "one-way never reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(tokio::time::timeout(Duration::from_millis(200), c.recv())
        .await
        .is_err());
}

#[tokio::test]
async fn heartbeats_are_answered_by_the_proxy() {
    let (v1, _v2, p) = setup().await;
    let mut c = Client::connect(p.local_addr("kv-in").unwrap()).await;
    c.stream.write_all(&frames::heartbeat(5)).await.unwrap();
    let r = c.recv_timeout(Duration::from_secs(2)).await.unwrap();
    assert_eq!(r.kind(), meta_protocol::MessageKind::Event);
    assert_eq!(r.request_id(), 5);
    assert_eq!(v1.received(), 0);
}

#[tokio::test]
async fn garbage_closes_only_the_offending_connection() {
    let (_v1, _v2, p) = setup().await;
    let addr = p.local_addr("kv-in").unwrap();
    let mut good = Client::connect(addr).await;
    let mut bad = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Unknown kind byte 9, valid length, request id 3.
    let mut frame = frames::request(3, &[], b"x").to_vec();
    frame[4] = 9;
    bad.write_all(&frame).await.unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(2), bad.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(n > 0, "expected a bad-request reply before the close");
    let mut codec = metaproxy_example_kv::KvCodec::new(1 << 20);
    let reply = meta_protocol::Codec::decode(&mut codec, &mut bytes::BytesMut::from(&buf[..]))
        .unwrap()
        .unwrap();
    assert_eq!(reply.request_id(), 3);
    assert_eq!(frames::status(&reply), Status::BadRequest as u8);
    let r = good.call(&[("service", "calc")], b"still fine").await;
    assert_eq!(frames::body(&r), b"still fine");
}

/// The value of `metaproxy_decode_errors_total` for the kv listener, once it reaches
/// `want` (the connection task counts it a moment after the client sees the close).
async fn decode_errors_reach(p: &metaproxy::RunningServer, want: u64) -> u64 {
    let line = "metaproxy_decode_errors_total{listener=\"kv-in\"} ";
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let text = p.handle().metrics_text();
        let now = text
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if now >= want || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_bad_one_way_frame_closes_the_connection_without_a_reply() {
    let (_v1, _v2, p) = setup().await;
    let mut s = tokio::net::TcpStream::connect(p.local_addr("kv-in").unwrap())
        .await
        .unwrap();
    // A one-way frame that announces a header it does not carry: the codec reports a
    // bad request for a one-way id, and the runtime (not the codec) must stay silent.
    let mut frame = frames::one_way(5, &[], b"").to_vec();
    frame[15] = 1;
    s.write_all(&frame).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf))
        .await
        .expect("the connection is closed")
        .unwrap();
    assert!(buf.is_empty(), "a one-way request was answered: {buf:02x?}");
    assert_eq!(decode_errors_reach(&p, 1).await, 1);
    let local = p.handle().metrics_text();
    assert!(
        local
            .contains("metaproxy_local_replies_total{listener=\"kv-in\",reason=\"bad_request\"} 1"),
        "{local}"
    );
}

#[tokio::test]
async fn a_frame_cut_short_by_the_client_closing_is_a_decode_error() {
    let (_v1, _v2, p) = setup().await;
    let addr = p.local_addr("kv-in").unwrap();
    // A whole request, then the first half of another, then the client shuts its side.
    let whole = frames::request(1, &[("service", "calc")], b"done");
    let half = frames::request(2, &[("service", "calc")], b"never finished");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(&whole).await.unwrap();
    s.write_all(&half[..half.len() / 2]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf))
        .await
        .expect("the connection is closed")
        .unwrap();
    // The whole request is answered; the half one is counted, not answered.
    let mut codec = metaproxy_example_kv::KvCodec::new(1 << 20);
    let mut rest = bytes::BytesMut::from(&buf[..]);
    let reply = meta_protocol::Codec::decode(&mut codec, &mut rest)
        .unwrap()
        .expect("the whole request's reply");
    assert_eq!(
        (reply.request_id(), frames::body(&reply)),
        (1, &b"done"[..])
    );
    assert!(rest.is_empty(), "only one reply expected");
    assert_eq!(decode_errors_reach(&p, 1).await, 1);

    // A client that closes between frames is not an error.
    let mut c = Client::connect(addr).await;
    c.call(&[("service", "calc")], b"x").await;
    c.stream.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(decode_errors_reach(&p, 0).await, 1);
}

#[tokio::test]
async fn oversized_frame_is_rejected_from_its_header() {
    let (_v1, _v2, p) = setup().await;
    let addr = p.local_addr("kv-in").unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Announce 1 MiB (limit 64 KiB) and send only the first bytes: the proxy must close
    // without waiting for (or buffering) the rest.
    let mut head = frames::request(1, &[], b"").to_vec();
    head[0..4].copy_from_slice(&(1u32 << 20).to_be_bytes());
    s.write_all(&head).await.unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "connection should be closed promptly");
}

#[tokio::test]
async fn a_thousand_clients_with_pipelining_all_get_their_replies() {
    let (v1, _v2, p) = setup().await;
    let addr = p.local_addr("kv-in").unwrap();
    let clients = 1000;
    let per_client = 5;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..clients {
        tasks.spawn(async move {
            let mut c = Client::connect(addr).await;
            let mut expected = std::collections::HashMap::new();
            for j in 0..per_client {
                let body = format!("{i}-{j}");
                let id = c.send(&[("service", "calc")], body.as_bytes()).await;
                expected.insert(id, body);
            }
            for _ in 0..per_client {
                let r = c
                    .recv_timeout(Duration::from_secs(20))
                    .await
                    .expect("reply");
                let body = expected.remove(&r.request_id()).expect("known id");
                assert_eq!(frames::body(&r), body.as_bytes());
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    assert_eq!(v1.received(), clients * per_client);
    // Many downstream connections were multiplexed over few upstream connections.
    assert!(v1.connections.load(std::sync::atomic::Ordering::SeqCst) <= 64);
}

#[tokio::test]
async fn over_max_pending_requests_gets_overloaded() {
    let (_v1, v2, p) = setup().await;
    let mut c = Client::connect(p.local_addr("kv-in").unwrap()).await;
    for _ in 0..5 {
        c.send(&[("service", "tight"), ("sleep-ms", "300")], b"")
            .await;
    }
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(frames::status(
            &c.recv_timeout(Duration::from_secs(5)).await.unwrap(),
        ));
    }
    let overloaded = statuses
        .iter()
        .filter(|s| **s == Status::Overloaded as u8)
        .count();
    let ok = statuses.iter().filter(|s| **s == Status::Ok as u8).count();
    assert_eq!((ok, overloaded), (2, 3), "{statuses:?}");
    assert_eq!(v2.received(), 2);
}

#[tokio::test]
async fn requests_never_sent_are_retried_on_another_endpoint() {
    let (_v1, v2, p) = setup().await;
    let mut c = Client::connect(p.local_addr("kv-in").unwrap()).await;
    // Round robin alternates between the dead and the live endpoint; with retries every
    // request succeeds.
    for i in 0..10 {
        let r = c
            .call(&[("service", "retry")], format!("{i}").as_bytes())
            .await;
        assert_eq!(
            frames::status(&r),
            Status::Ok as u8,
            "request {i}: {:?}",
            String::from_utf8_lossy(frames::body(&r))
        );
        assert_eq!(header(&r, "backend").as_deref(), Some("v2"));
    }
    assert_eq!(v2.received(), 10);
}

#[tokio::test]
async fn a_retried_request_still_times_out_at_its_route_timeout() {
    let (_v1, v2, p) = setup().await;
    let mut c = Client::connect(p.local_addr("kv-in").unwrap()).await;
    // Round robin sends one of the two to the dead endpoint first; it is retried on v2.
    // v2 answers both after 5 s: each must get its timeout reply at 300 ms instead.
    let started = Instant::now();
    for i in 0..2 {
        c.send(
            &[("service", "retry-slow"), ("sleep-ms", "5000")],
            format!("{i}").as_bytes(),
        )
        .await;
    }
    for _ in 0..2 {
        let r = c
            .recv_timeout(Duration::from_secs(3))
            .await
            .expect("a reply within 3 s");
        assert_eq!(
            frames::status(&r),
            Status::Timeout as u8,
            "{:?}",
            String::from_utf8_lossy(frames::body(&r))
        );
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        v2.received(),
        2,
        "the request sent to the dead endpoint was retried"
    );
}

#[tokio::test]
async fn a_connection_routes_by_the_new_table_after_a_reload() {
    let (v1, v2, p) = setup().await;
    let handle = p.handle();
    let mut c = Client::connect(p.local_addr("kv-in").unwrap()).await;
    let backend = |r: &metaproxy::meta_protocol::Message| header(r, "backend");
    // The same values again and again: the connection answers them from its last lookup
    // (the last route, `default`, to v1).
    for i in 0..3 {
        let r = c
            .call(&[("service", "calc")], format!("{i}").as_bytes())
            .await;
        assert_eq!(backend(&r).as_deref(), Some("v1"));
    }
    // The first route now takes these values to v2. The new table has as many routes,
    // and its last is still `default` to v1: an answer kept from the old table would
    // still say v1.
    let slow = "match: {metadata: [{key: service, exact: slow}]}\n        route: {cluster: v1, timeout: 200ms}";
    assert!(BASIC.contains(slow));
    let yaml = BASIC.replace(
        slow,
        "match: {metadata: [{key: service, exact: calc}]}\n        route: {cluster: v2, timeout: 200ms}",
    );
    let dead = dead_addr().await;
    handle
        .apply(config(
            &yaml,
            &[("v1", v1.addr), ("v2", v2.addr), ("dead", dead)],
        ))
        .await
        .expect("valid config");
    for i in 3..6 {
        let r = c
            .call(&[("service", "calc")], format!("{i}").as_bytes())
            .await;
        assert_eq!(backend(&r).as_deref(), Some("v2"), "request {i}");
    }
}

#[tokio::test]
async fn reload_swaps_routes_without_dropping_requests() {
    let (v1, v2, p) = setup().await;
    let addr = p.local_addr("kv-in").unwrap();
    let handle = p.handle();
    let traffic = tokio::spawn(async move {
        let mut c = Client::connect(addr).await;
        let mut backends = Vec::new();
        for i in 0..400 {
            let r = c
                .call(&[("service", "calc")], format!("{i}").as_bytes())
                .await;
            assert_eq!(
                frames::status(&r),
                Status::Ok as u8,
                "request {i} failed during reload"
            );
            backends.push(header(&r, "backend").unwrap());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        backends
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Point the default route at v2.
    let mut config = (*handle.config()).clone();
    let rc = &mut config.route_configs[0];
    let default = rc.routes.last_mut().unwrap();
    default.route.cluster = Some("v2".into());
    let outcome = handle.apply(config.clone()).await.expect("valid config");
    assert!(outcome.restart_required.is_empty(), "{outcome:?}");
    // An invalid config is rejected whole and the old one keeps serving.
    let mut bad = config.clone();
    bad.route_configs[0]
        .routes
        .last_mut()
        .unwrap()
        .route
        .cluster = Some("nope".into());
    assert!(handle.apply(bad).await.is_err());
    let backends = traffic.await.unwrap();
    assert_eq!(backends.len(), 400);
    assert_eq!(backends.first().map(String::as_str), Some("v1"));
    assert_eq!(backends.last().map(String::as_str), Some("v2"));
    // Once switched, it never flips back.
    let first_v2 = backends.iter().position(|b| b == "v2").unwrap();
    assert!(backends[first_v2..].iter().all(|b| b == "v2"));
    assert_eq!(v1.received() + v2.received(), 400);
}

#[tokio::test]
async fn drain_answers_everything_and_keeps_a_connection_that_cannot_be_told_to_move() {
    let (v1, _v2, p) = setup().await;
    let addr = p.local_addr("kv-in").unwrap();
    let mut c = Client::connect(addr).await;
    for i in 0..20 {
        let sleep = if i % 2 == 0 { "100" } else { "0" };
        c.send(&[("service", "calc"), ("sleep-ms", sleep)], b"in-flight")
            .await;
    }
    // Give the proxy a moment to read the pipelined requests, then drain.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let drained = tokio::spawn(p.shutdown());
    // Sent after the drain began, on the existing connection: still answered.
    c.send(&[("service", "calc")], b"late").await;
    for _ in 0..21 {
        let r = c
            .recv_timeout(Duration::from_secs(5))
            .await
            .expect("a reply for every request");
        assert_eq!(frames::status(&r), Status::Ok as u8);
    }
    // The kv protocol cannot tell a client to move, so the proxy never closes the
    // connection between two requests: a request sent after a quiet spell is answered.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = c.call(&[("service", "calc")], b"after a pause").await;
    assert_eq!(frames::status(&r), Status::Ok as u8);
    // Replies written while draining carry the drain header, for clients that look.
    assert_eq!(common::header(&r, "metaproxy-drain").as_deref(), Some("1"));
    // Once the client closes, the drain completes in time.
    drop(c);
    assert!(
        drained.await.unwrap(),
        "drain should finish before drain_timeout"
    );
    assert_eq!(v1.received(), 22);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener should be closed"
    );
}

#[tokio::test]
async fn codecs_without_multiplexing_get_one_request_per_connection_at_a_time() {
    let v1 = backend("v1").await;
    let yaml = r#"
listeners:
  - {name: in, address: "127.0.0.1:0", codec: kv, options: {multiplexing: "false"}, route_config: r}
route_configs:
  - {name: r, routes: [{route: {cluster: v1}}]}
clusters:
  - {name: v1, endpoints: ["{v1}"], max_connections: 2}
"#;
    let p = proxy(yaml, &[("v1", v1.addr)]).await;
    let mut c = Client::connect(p.local_addr("in").unwrap()).await;
    let started = Instant::now();
    for _ in 0..6 {
        c.send(&[("sleep-ms", "100")], b"slow").await;
    }
    for _ in 0..6 {
        let r = c.recv_timeout(Duration::from_secs(5)).await.unwrap();
        assert_eq!(frames::status(&r), Status::Ok as u8);
    }
    // Two connections, one request each at a time: three rounds of 100 ms.
    assert_eq!(
        v1.max_in_flight_per_connection
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert!(v1.connections.load(std::sync::atomic::Ordering::SeqCst) <= 2);
    assert!(
        started.elapsed() >= Duration::from_millis(290),
        "{:?}",
        started.elapsed()
    );
    // The multiplexing listener in `setup` puts concurrent requests on one connection.
    let (v1, _v2, p) = setup().await;
    let mut c = Client::connect(p.local_addr("kv-in").unwrap()).await;
    for _ in 0..6 {
        c.send(&[("service", "calc"), ("sleep-ms", "100")], b"slow")
            .await;
    }
    for _ in 0..6 {
        c.recv_timeout(Duration::from_secs(5)).await.unwrap();
    }
    assert!(
        v1.max_in_flight_per_connection
            .load(std::sync::atomic::Ordering::SeqCst)
            > 1
    );
}

#[tokio::test]
async fn outlier_detection_ejects_an_endpoint_that_keeps_failing() {
    let good = backend("good").await;
    let silent = common::net::silent_backend();
    let yaml = r#"
listeners:
  - {name: in, address: "127.0.0.1:0", codec: kv, route_config: r}
route_configs:
  - {name: r, routes: [{route: {cluster: c, timeout: 100ms}}]}
clusters:
  - name: c
    endpoints: ["{good}", "{silent}"]
    outlier_detection: {consecutive_failures: 2, base_ejection_time: 30s, max_ejection_percent: 50}
"#;
    let p = proxy(yaml, &[("good", good.addr), ("silent", silent)]).await;
    let mut c = Client::connect(p.local_addr("in").unwrap()).await;
    let mut timeouts = 0;
    for _ in 0..4 {
        let r = c.call(&[], b"").await;
        if frames::status(&r) == Status::Timeout as u8 {
            timeouts += 1;
        }
    }
    assert_eq!(
        timeouts, 2,
        "round robin sends every other request to the silent endpoint until it is ejected"
    );
    for i in 0..20 {
        let r = c.call(&[], b"").await;
        assert_eq!(
            frames::status(&r),
            Status::Ok as u8,
            "request {i} after ejection"
        );
    }
    let clusters = p.handle().clusters_json();
    let endpoints = clusters[0]["endpoints"].as_array().unwrap();
    let silent_state = endpoints
        .iter()
        .find(|e| e["address"] == silent.to_string())
        .unwrap();
    assert_eq!(silent_state["health"], "ejected", "{clusters}");
    assert_eq!(endpoints.iter().filter(|e| e["ejected"] == true).count(), 1);
    assert!(p
        .handle()
        .metrics_text()
        .contains("metaproxy_outlier_ejections_total{cluster=\"c\"} 1"));
}

#[tokio::test]
async fn a_slow_mirror_is_bounded_and_never_delays_clients() {
    let v1 = backend("v1").await;
    let silent = common::net::silent_backend();
    let yaml = r#"
listeners:
  - {name: in, address: "127.0.0.1:0", codec: kv, route_config: r}
route_configs:
  - name: r
    routes:
      - route: {cluster: v1, timeout: 300ms, mirror: [{cluster: shadow}]}
clusters:
  - {name: v1, endpoints: ["{v1}"]}
  - {name: shadow, endpoints: ["{silent}"], max_pending_requests: 5}
"#;
    let p = proxy(yaml, &[("v1", v1.addr), ("silent", silent)]).await;
    let mut c = Client::connect(p.local_addr("in").unwrap()).await;
    let started = Instant::now();
    for i in 0..20 {
        let r = c.call(&[], format!("{i}").as_bytes()).await;
        assert_eq!(frames::status(&r), Status::Ok as u8);
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // The shadow never answers: five copies wait (its max_pending_requests), the rest are
    // dropped and counted.
    let metrics = p.handle().metrics_text();
    assert!(
        metrics.contains("metaproxy_mirror_requests_total{cluster=\"shadow\",result=\"sent\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("metaproxy_mirror_requests_total{cluster=\"shadow\",result=\"dropped\"} 15"),
        "{metrics}"
    );
    // Expired copies give their slots back (deadline + sweep grace), and mirroring resumes.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    c.call(&[], b"again").await;
    let metrics = p.handle().metrics_text();
    assert!(
        metrics.contains("metaproxy_mirror_requests_total{cluster=\"shadow\",result=\"sent\"} 6"),
        "{metrics}"
    );
}

#[tokio::test]
async fn per_core_workers_serve_pipelined_clients_and_drain() {
    let v1 = backend("v1").await;
    let v2 = backend("v2").await;
    let dead = dead_addr().await;
    let threading = metaproxy::runtime::Threading::PerCore { workers: 2 };
    let p = proxy_with(
        BASIC,
        &[("v1", v1.addr), ("v2", v2.addr), ("dead", dead)],
        threading,
    )
    .await;
    let addr = p.local_addr("kv-in").unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        tasks.spawn(async move {
            let mut c = Client::connect(addr).await;
            let mut expected = std::collections::HashMap::new();
            for j in 0..5 {
                let body = format!("{i}-{j}");
                expected.insert(c.send(&[("service", "calc")], body.as_bytes()).await, body);
            }
            for _ in 0..5 {
                let r = c
                    .recv_timeout(Duration::from_secs(10))
                    .await
                    .expect("reply");
                assert_eq!(
                    frames::body(&r),
                    expected.remove(&r.request_id()).unwrap().as_bytes()
                );
            }
            // Local replies work on every worker too.
            let r = c.call(&[("service", "dead")], b"").await;
            assert_eq!(frames::status(&r), Status::UpstreamFailure as u8);
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    assert_eq!(v1.received(), 1000);
    assert!(p.shutdown().await, "per-core drain should complete");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
