//! `metaproxy demo` end to end: run the built binary and check that its numbers add up
//! (recomputed here from the raw counts, not taken from the demo's own checks), and
//! that the config it prints is one `metaproxy run` accepts.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn demo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_metaproxy"))
        .arg("demo")
        .args(args)
        .output()
        .expect("cannot run the metaproxy binary")
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

fn arr(v: &Value) -> &Vec<Value> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}"))
}

#[test]
fn demo_numbers_add_up() {
    let out = demo(&["--duration", "2s", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_str(&stdout).expect("--json prints one JSON object");
    let protocols = arr(&r["protocols"]);
    let names: Vec<&str> = protocols
        .iter()
        .filter_map(|p| p["protocol"].as_str())
        .collect();
    assert_eq!(names, ["dubbo", "thrift"]);

    for p in protocols {
        let proto = p["protocol"].as_str().unwrap();
        let listener = p["listener"].as_str().unwrap();
        let sent = n(&p["sent"]);
        let ok = n(&p["ok"]);
        let errors = n(&p["errors"]);
        let local: u64 = p["local_replies"]
            .as_object()
            .unwrap()
            .values()
            .map(n)
            .sum();
        assert!(sent > 50, "{proto}: only {sent} requests in 2s");
        assert_eq!(
            sent,
            ok + local + errors,
            "{proto}: sent != ok + local replies + errors"
        );
        assert_eq!(errors, 0, "{proto}: errors: {}", p["error_samples"]);
        assert_eq!(n(&p["wrong_replies"]), 0, "{proto}: {}", p["error_samples"]);
        let no_route = n(&p["local_replies"]["no_route"]);
        assert!(
            no_route > 0,
            "{proto}: no local reply for the unrouted service"
        );

        // The proxy's own local-reply counter agrees with the clients.
        let proxy_no_route: u64 = arr(&r["local_replies"])
            .iter()
            .filter(|l| l["listener"] == listener && l["reason"] == "no_route")
            .map(|l| n(&l["count"]))
            .sum();
        assert_eq!(
            proxy_no_route, no_route,
            "{proto}: metaproxy_local_replies_total"
        );

        // Routed requests (proxy metric) = v1 + v2 backend counts = verified replies.
        let routes: Vec<&Value> = arr(&r["routes"])
            .iter()
            .filter(|x| x["listener"] == listener)
            .collect();
        let routed: u64 = routes.iter().map(|x| n(&x["requests"])).sum();
        let clusters: Vec<&Value> = arr(&r["clusters"])
            .iter()
            .filter(|c| c["protocol"] == proto)
            .collect();
        let backend_count = |shadow: bool| -> u64 {
            clusters
                .iter()
                .filter(|c| c["shadow"] == shadow)
                .flat_map(|c| arr(&c["endpoints"]))
                .map(|e| n(&e["requests"]))
                .sum()
        };
        assert_eq!(
            backend_count(false),
            routed,
            "{proto}: v1 + v2 backends vs routed requests"
        );
        assert_eq!(
            routed, ok,
            "{proto}: every routed request gets one verified reply"
        );
        let by_backend: u64 = p["replies_by_backend"]
            .as_object()
            .unwrap()
            .values()
            .map(n)
            .sum();
        assert_eq!(by_backend, ok);

        // Canary: about 10% of the canary route goes to v2 (4 sigma, at least 5 points).
        let canary: Vec<&&Value> = routes.iter().filter(|x| x["route"] == "canary").collect();
        let canary_total: u64 = canary.iter().map(|x| n(&x["requests"])).sum();
        let canary_v2: u64 = canary
            .iter()
            .filter(|x| x["cluster"].as_str().unwrap().ends_with("-v2"))
            .map(|x| n(&x["requests"]))
            .sum();
        assert!(canary_total > 0, "{proto}: no canary traffic");
        let share = canary_v2 as f64 / canary_total as f64;
        let bound = (4.0 * (0.09 / canary_total as f64).sqrt()).max(0.05);
        assert!(
            (share - 0.10).abs() <= bound,
            "{proto}: canary share {share:.3} of {canary_total} is not about 10% (bound {bound:.3})"
        );
        // Beta users all went to v2.
        for x in routes.iter().filter(|x| x["route"] == "beta-users") {
            if !x["cluster"].as_str().unwrap().ends_with("-v2") {
                assert_eq!(
                    n(&x["requests"]),
                    0,
                    "{proto}: beta user routed to {}",
                    x["cluster"]
                );
            }
        }
        assert!(routes
            .iter()
            .any(|x| x["route"] == "beta-users" && n(&x["requests"]) > 0));

        // Mirroring: every canary request copied once, and the shadow got every copy.
        let mirror = arr(&r["mirrors"])
            .iter()
            .find(|m| m["listener"] == listener)
            .unwrap_or_else(|| panic!("{proto}: no mirror row"));
        assert_eq!(mirror["route"], "canary");
        assert_eq!(n(&mirror["route_requests"]), canary_total);
        assert_eq!(
            n(&mirror["sent"]) + n(&mirror["dropped"]),
            canary_total,
            "{proto}: mirror 100%"
        );
        assert_eq!(n(&mirror["dropped"]), 0, "{proto}: mirror copies dropped");
        assert_eq!(
            n(&mirror["received"]),
            n(&mirror["sent"]),
            "{proto}: shadow backend vs mirrored"
        );
        assert_eq!(
            backend_count(true),
            n(&mirror["sent"]),
            "{proto}: shadow backend count"
        );
    }
    assert_eq!(r["ok"], true);
}

#[test]
fn printed_config_runs_as_is() {
    let out = demo(&["--print-config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 config");
    let config =
        metaproxy::config::parse(&text, Path::new("demo.yaml")).unwrap_or_else(|e| panic!("{e}"));
    if let Err(problems) = metaproxy::validate(&config, &metaproxy::default_registry()) {
        panic!("printed config is invalid: {problems:?}");
    }
    // Fixed, conventional addresses a user can run against.
    for l in &config.listeners {
        assert!(
            !l.address.ends_with(":0"),
            "listener {} has no fixed port",
            l.address
        );
    }
    assert!(text.contains("127.0.0.1:20880"));
    // It shows what the demo claims to show.
    let routes: Vec<_> = config
        .route_configs
        .iter()
        .flat_map(|rc| &rc.routes)
        .collect();
    assert!(routes.iter().any(|r| {
        r.route.weighted_clusters.as_ref().is_some_and(|w| {
            let weights: Vec<u32> = w.iter().map(|c| c.weight).collect();
            weights == [90, 10]
        })
    }));
    assert!(routes
        .iter()
        .any(|r| r.route.mirror.iter().any(|m| m.percent == 100.0)));
    assert!(routes
        .iter()
        .any(|r| r.match_.metadata.iter().any(|m| m.key == "user")));
    assert!(routes
        .iter()
        .any(|r| r.match_.metadata.iter().any(|m| m.key == "method")));
    assert!(routes.iter().any(|r| !r.request_mutation.is_empty()));
    // And `metaproxy check` agrees.
    let dir = std::env::temp_dir().join(format!("metaproxy-demo-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("demo.yaml");
    std::fs::write(&file, &text).unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_metaproxy"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(!String::from_utf8_lossy(&check.stdout).contains("warning"));
}

#[test]
fn rejects_a_useless_duration() {
    let out = demo(&["--duration", "0s"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--duration"));
}
