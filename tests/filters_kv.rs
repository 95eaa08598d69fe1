//! Listener filters end to end with the kv example protocol: backends on port 0, the
//! proxy in-process, real sockets.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use metaproxy::filter::*;
use metaproxy::meta_protocol::{LocalReplyKind, Message, MetaStr, ResponseStatus};
use metaproxy_example_kv::{frames, Status};

const LIMITS: &str = r#"
listeners:
  - name: kv-in
    address: "127.0.0.1:0"
    codec: kv
    route_config: r
    filters:
      - name: access_control
        config:
          action: deny
          rules:
            - metadata: [{key: user, exact: mallory}]
            - metadata: [{key: method, prefix: drop}, {key: user, present: true, invert: true}]
      - name: local_rate_limit
        config: {rate: 1, per: 1h, burst: 3, by: metadata, key: user}
route_configs:
  - name: r
    routes:
      - name: all
        route: {cluster: v1}
clusters:
  - {name: v1, endpoints: ["{v1}"]}
"#;

fn metric(text: &str, name: &str, labels: &str) -> f64 {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
        .parse()
        .unwrap()
}

/// Requests of listener `kv-in` refused by its `local_rate_limit` filter.
fn rate_limited(text: &str) -> f64 {
    let labels = r#"listener="kv-in",filter="local_rate_limit""#;
    metric(text, "metaproxy_rate_limited_total", labels)
}

/// Local replies of listener `kv-in` for `reason`.
fn local_replies(text: &str, reason: &str) -> f64 {
    let labels = format!(r#"listener="kv-in",reason="{reason}""#);
    metric(text, "metaproxy_local_replies_total", &labels)
}

async fn call_as(c: &mut Client, user: &str) -> u8 {
    frames::status(&c.call(&[("user", user), ("method", "get")], b"").await)
}

#[tokio::test]
async fn per_user_limit_lets_exactly_the_burst_through_and_spares_other_users() {
    let v1 = backend("v1").await;
    let p = proxy(LIMITS, &[("v1", v1.addr)]).await;
    let mut c = Client::connect(p.local_addr("kv-in").unwrap()).await;
    let mut alice = Vec::new();
    for _ in 0..5 {
        alice.push(call_as(&mut c, "alice").await);
    }
    let ok = Status::Ok as u8;
    let limited = Status::RateLimited as u8;
    assert_eq!(alice, [ok, ok, ok, limited, limited]);
    let r = c.call(&[("user", "alice")], b"").await;
    assert!(
        String::from_utf8_lossy(frames::body(&r)).contains("rate limited"),
        "{:?}",
        frames::body(&r)
    );
    for _ in 0..3 {
        assert_eq!(call_as(&mut c, "bob").await, ok, "bob has his own bucket");
    }
    assert_eq!(v1.received(), 6);
    let text = p.handle().metrics_text();
    assert_eq!(rate_limited(&text), 3.0);
    assert_eq!(local_replies(&text, "rate_limited"), 3.0);
}

#[tokio::test]
async fn access_control_denies_and_allows_as_configured() {
    let v1 = backend("v1").await;
    let p = proxy(LIMITS, &[("v1", v1.addr)]).await;
    let mut c = Client::connect(p.local_addr("kv-in").unwrap()).await;
    let r = c.call(&[("user", "mallory")], b"").await;
    assert_eq!(frames::status(&r), Status::Forbidden as u8);
    assert!(String::from_utf8_lossy(frames::body(&r)).contains("forbidden"));
    // Second rule: drop* without a user is refused, with a user it passes.
    let r = c.call(&[("method", "dropTable")], b"").await;
    assert_eq!(frames::status(&r), Status::Forbidden as u8);
    let r = c
        .call(&[("method", "dropTable"), ("user", "alice")], b"")
        .await;
    assert_eq!(frames::status(&r), Status::Ok as u8);
    let r = c.call(&[("method", "get")], b"").await;
    assert_eq!(frames::status(&r), Status::Ok as u8);
    assert_eq!(v1.received(), 2);
    let text = p.handle().metrics_text();
    assert_eq!(local_replies(&text, "forbidden"), 2.0);
    // Denied requests consume no rate-limit token (the limiter runs after the rule).
    assert_eq!(rate_limited(&text), 0.0);
}

#[tokio::test]
async fn reload_changes_limits_without_dropping_requests() {
    let v1 = backend("v1").await;
    let yaml = LIMITS.replace(
        "{rate: 1, per: 1h, burst: 3,",
        "{rate: 1, per: 1h, burst: 2,",
    );
    let p = proxy(&yaml, &[("v1", v1.addr)]).await;
    let addr = p.local_addr("kv-in").unwrap();
    let handle = p.handle();
    let mut c = Client::connect(addr).await;
    let ok = Status::Ok as u8;
    let limited = Status::RateLimited as u8;
    assert_eq!(call_as(&mut c, "alice").await, ok);
    assert_eq!(call_as(&mut c, "alice").await, ok);
    assert_eq!(call_as(&mut c, "alice").await, limited);

    // Steady traffic of requests without a user (never limited) across the reloads.
    let traffic = tokio::spawn(async move {
        let mut c = Client::connect(addr).await;
        for i in 0..300 {
            let r = c.call(&[("method", "get")], b"").await;
            assert_eq!(frames::status(&r), Status::Ok as u8, "request {i} failed");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });

    // The same filters again: the buckets carry over, alice stays limited.
    let same = (*handle.config()).clone();
    handle.apply(same.clone()).await.expect("valid config");
    assert_eq!(call_as(&mut c, "alice").await, limited);

    // A larger burst: a new bucket per user with the new quota.
    let mut bigger = same.clone();
    bigger.listeners[0].filters[1].config["burst"] = serde_json::json!(4);
    handle.apply(bigger).await.expect("valid config");
    let after: Vec<u8> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(call_as(&mut c, "alice").await);
        }
        v
    };
    assert_eq!(after, [ok, ok, ok, ok, limited]);

    // An invalid limit is rejected whole; the old one keeps serving.
    let mut bad = same;
    bad.listeners[0].filters[1].config["rate"] = serde_json::json!(0);
    let problems = handle.apply(bad).await.unwrap_err();
    assert_eq!(
        problems[0].to_string(),
        "listeners[0].filters[1].config.rate: must be greater than 0"
    );
    assert_eq!(call_as(&mut c, "alice").await, limited);
    traffic.await.unwrap();
}

/// A custom filter: tags requests, steers them by metadata, waits on an "external"
/// check for some, and stamps the response with its status and latency.
struct Tagger;

impl Filter for Tagger {
    fn on_request(&self, request: &mut FilterRequest<'_>) -> Verdict {
        request.push_mutation("x-tagged".into(), "yes".into());
        request.push_mutation("x-dropped".into(), "no".into());
        request.remove_mutation("x-dropped");
        if request.metadata().get("tenant") == Some("beta") {
            request
                .metadata_mut()
                .set("service".into(), MetaStr::from_static("beta"));
        }
        match request.metadata().get("user") {
            Some("hold") => Verdict::Wait(Box::pin(async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Decision::Continue
            })),
            Some("panic") => Verdict::Wait(Box::pin(async {
                tokio::task::yield_now().await;
                panic!("a filter bug");
            })),
            Some("slow-ok") | Some("slow-no") => {
                let deny = request.metadata().get("user") == Some("slow-no");
                Verdict::Wait(Box::pin(async move {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    if deny {
                        Decision::Reply(
                            LocalReplyKind::Forbidden,
                            "metaproxy: forbidden: remote check".into(),
                        )
                    } else {
                        Decision::Continue
                    }
                }))
            }
            _ => Verdict::Continue,
        }
    }

    fn on_response(&self, response: &mut FilterResponse<'_>) {
        let status = match response.status() {
            ResponseStatus::Ok => "ok",
            _ => "not-ok",
        };
        response.push_mutation("x-status".into(), MetaStr::from_static(status));
        let millis = response.elapsed().as_millis().to_string();
        response.push_mutation("x-elapsed-ms".into(), MetaStr::from(millis));
        let route = format!("{}/{}", response.route(), response.cluster());
        response.push_mutation("x-route".into(), route.into());
    }
}

struct TaggerFactory;

impl FilterFactory for TaggerFactory {
    fn name(&self) -> &str {
        "tagger"
    }

    fn build(
        &self,
        config: &serde_json::Value,
        _ctx: &FilterContext<'_>,
    ) -> Result<Arc<dyn Filter>, Vec<FilterConfigError>> {
        if !config.is_null() {
            return Err(vec![FilterConfigError::new("", "takes no config")]);
        }
        Ok(Arc::new(Tagger))
    }
}

const CUSTOM: &str = r#"
listeners:
  - name: kv-in
    address: "127.0.0.1:0"
    codec: kv
    route_config: r
    filters: [{name: tagger}]
route_configs:
  - name: r
    routes:
      - name: beta
        match: {metadata: [{key: service, exact: beta}]}
        route: {cluster: v2}
      - name: all
        route: {cluster: v1}
clusters:
  - {name: v1, endpoints: ["{v1}"]}
  - {name: v2, endpoints: ["{v2}"]}
"#;

#[tokio::test]
async fn a_registered_filter_mutates_steers_waits_and_sees_responses() {
    let v1 = backend("v1").await;
    let v2 = backend("v2").await;
    let config = config(CUSTOM, &[("v1", v1.addr), ("v2", v2.addr)]);
    // Without the registration the name is unknown, with its field path.
    let err = metaproxy::Server::new(config.clone(), registry())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("listeners[0].filters[0].name: unknown filter \"tagger\""),
        "{err}"
    );
    let p = proxy_with_filter(config, Arc::new(TaggerFactory)).await;
    let mut c = Client::connect(p.local_addr("kv-in").unwrap()).await;

    let r = c.call(&[("tenant", "beta"), ("sleep-ms", "40")], b"").await;
    assert_eq!(
        header(&r, "backend").as_deref(),
        Some("v2"),
        "steered by metadata"
    );
    assert_eq!(header(&r, "x-status").as_deref(), Some("ok"));
    let elapsed: u64 = header(&r, "x-elapsed-ms").unwrap().parse().unwrap();
    assert!(
        (40..5000).contains(&elapsed),
        "the backend slept 40ms: {elapsed}"
    );
    assert_eq!(header(&r, "x-route").as_deref(), Some("beta/v2"));
    let seen = v2.seen.lock().unwrap().clone();
    assert!(
        seen[0].contains(&("x-tagged".into(), "yes".into())),
        "{seen:?}"
    );
    assert!(!seen[0].iter().any(|(k, _)| k == "x-dropped"), "{seen:?}");

    // A waiting filter: other requests of the connection go on meanwhile.
    let slow_ok = c.send(&[("user", "slow-ok")], b"").await;
    let slow_no = c.send(&[("user", "slow-no")], b"").await;
    let fast = c.send(&[("user", "fast")], b"").await;
    let mut replies: Vec<Message> = Vec::new();
    for _ in 0..3 {
        replies.push(c.recv_timeout(Duration::from_secs(5)).await.unwrap());
    }
    assert_eq!(replies[0].request_id(), fast, "the fast request overtakes");
    let by_id = |id: u64| replies.iter().find(|m| m.request_id() == id).unwrap();
    assert_eq!(frames::status(by_id(slow_ok)), Status::Ok as u8);
    assert_eq!(frames::status(by_id(slow_no)), Status::Forbidden as u8);
    assert_eq!(v1.received(), 2);
}

#[tokio::test]
async fn waiting_requests_are_bounded_per_connection_and_a_failing_filter_gets_a_reply() {
    let v1 = backend("v1").await;
    let v2 = backend("v2").await;
    let config = config(CUSTOM, &[("v1", v1.addr), ("v2", v2.addr)]);
    let p = proxy_with_filter(config, Arc::new(TaggerFactory)).await;
    let mut c = Client::connect(p.local_addr("kv-in").unwrap()).await;
    let total = MAX_WAITING_PER_CONNECTION + 6;
    for _ in 0..total {
        c.send(&[("user", "hold")], b"").await;
    }
    let mut statuses = std::collections::HashMap::new();
    for _ in 0..total {
        let r = c.recv_timeout(Duration::from_secs(10)).await.unwrap();
        *statuses.entry(frames::status(&r)).or_insert(0) += 1;
    }
    assert_eq!(
        statuses.get(&(Status::Ok as u8)),
        Some(&MAX_WAITING_PER_CONNECTION)
    );
    assert_eq!(
        statuses.get(&(Status::Overloaded as u8)),
        Some(&6),
        "{statuses:?}"
    );
    // A waiting filter that panics: the request gets a reply, the connection lives on.
    let r = c.call(&[("user", "panic")], b"").await;
    assert_eq!(frames::status(&r), Status::UpstreamFailure as u8);
    let r = c.call(&[("user", "fast")], b"").await;
    assert_eq!(frames::status(&r), Status::Ok as u8);
}
