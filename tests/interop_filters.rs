//! Listener filters seen by independent clients: the Python Dubbo client (dubbo-ssl-python)
//! and Apache Thrift's Python client, calling through the proxy (in-process, started from
//! a config file that is rewritten and reloaded). Per-user rate limits, access rules, the
//! documented statuses, and a reload that changes the limit without dropping requests.
//! Needs `scripts/interop/dubbo.sh` and `scripts/interop/thrift.sh` (run by
//! `scripts/test.sh`).
#![cfg(feature = "interop")]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use bytes::BytesMut;
use meta_protocol::{Message, MessageKind};
use metaproxy_cli::backend::{self, Responder};
use metaproxy_dubbo::frames::{echo_response, ResponseFrame};
use serde_json::Value;

mod common;
use common::peers::{dubbo_python, json_lines, thrift_python, workspace_root, ThriftServer};

/// The Python Dubbo client: one JSON object per call.
fn dubbo_client(target: SocketAddr, args: &[&str]) -> Vec<Value> {
    let mut cmd = Command::new(dubbo_python());
    cmd.arg(workspace_root().join("codecs/dubbo/interop/client.py"))
        .args(["--target", &target.to_string()])
        .args([
            "--interface",
            "com.example.Greeter",
            "--method",
            "sayHello",
            "--args",
            "[\"hi\"]",
        ])
        .args(args);
    json_lines(cmd)
}

/// Writes `yaml` to `path` and starts the proxy from that file in-process.
async fn start(path: &Path, yaml: &str) -> metaproxy::RunningServer {
    std::fs::write(path, yaml).unwrap();
    metaproxy::Server::from_file(path, metaproxy::default_registry())
        .unwrap()
        .bind()
        .await
        .unwrap()
}

fn statuses(lines: &[Value]) -> Vec<i64> {
    lines
        .iter()
        .map(|l| {
            if l["ok"] == true {
                20
            } else {
                l["status"].as_i64().unwrap_or(-1)
            }
        })
        .collect()
}

fn dubbo_yaml(backend: SocketAddr, burst: u32) -> String {
    format!(
        r#"
listeners:
  - name: dubbo-in
    address: "127.0.0.1:0"
    codec: dubbo
    route_config: r
    filters:
      - name: access_control
        config:
          action: deny
          rules: [{{metadata: [{{key: user, exact: mallory}}]}}]
      - name: local_rate_limit
        config: {{rate: 1, per: 1h, burst: {burst}, by: metadata, key: user}}
route_configs:
  - name: r
    routes: [{{name: all, route: {{cluster: v1}}}}]
clusters:
  - {{name: v1, endpoints: ["{backend}"]}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_dubbo_client_per_user_limit_access_rules_and_reload() {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let answer: Responder = Arc::new(|req: &Message, out: &mut BytesMut| {
        if req.kind() != MessageKind::Request {
            if let Some(frame) = echo_response(req) {
                out.extend_from_slice(&frame);
            }
            return;
        }
        out.extend_from_slice(&ResponseFrame::string(req.request_id(), "hello").encode());
    });
    let v1 = backend::spawn(any, backend::dubbo_factory(), Default::default(), answer)
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("metaproxy-filters-dubbo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dubbo.yaml");
    let proxy = start(&path, &dubbo_yaml(v1.addr(), 3)).await;
    let addr = proxy.local_addr("dubbo-in").unwrap();
    let client = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            dubbo_client(addr, &args)
        })
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    // Exactly the burst passes; the rest get 70 SERVICE_ERROR saying "rate limited".
    let alice = client(args(&["--attachment", "user=alice", "--count", "5"]))
        .await
        .unwrap();
    assert_eq!(statuses(&alice), [20, 20, 20, 70, 70], "{alice:?}");
    assert!(
        alice[4]["error"].as_str().unwrap().contains("rate limited"),
        "{alice:?}"
    );
    // Other users are unaffected.
    let bob = client(args(&["--attachment", "user=bob", "--count", "3"]))
        .await
        .unwrap();
    assert_eq!(statuses(&bob), [20, 20, 20], "{bob:?}");
    // Denied by the access rule, with its own message.
    let mallory = client(args(&["--attachment", "user=mallory"]))
        .await
        .unwrap();
    assert_eq!(statuses(&mallory), [70], "{mallory:?}");
    assert!(
        mallory[0]["error"].as_str().unwrap().contains("forbidden"),
        "{mallory:?}"
    );
    assert_eq!(v1.stats().requests(), 6);

    // Reload with a larger burst while calls without a user keep flowing.
    let steady = client(args(&["--count", "150"]));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    std::fs::write(&path, dubbo_yaml(v1.addr(), 5)).unwrap();
    let outcome = proxy.handle().reload().await.expect("reload accepted");
    assert!(outcome.restart_required.is_empty(), "{outcome}");
    let steady = steady.await.unwrap();
    assert_eq!(steady.len(), 150);
    assert!(steady.iter().all(|l| l["ok"] == true), "{steady:?}");
    let alice = client(args(&["--attachment", "user=alice", "--count", "6"]))
        .await
        .unwrap();
    assert_eq!(statuses(&alice), [20, 20, 20, 20, 20, 70], "{alice:?}");
    let text = proxy.handle().metrics_text();
    assert!(
        text.contains(
            "metaproxy_rate_limited_total{listener=\"dubbo-in\",filter=\"local_rate_limit\"} 3\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "metaproxy_local_replies_total{listener=\"dubbo-in\",reason=\"forbidden\"} 1\n"
        ),
        "{text}"
    );
}

fn thrift_client(addr: SocketAddr, args: &[&str]) -> Vec<Value> {
    let mut cmd = Command::new(thrift_python());
    cmd.arg(workspace_root().join("codecs/thrift/interop/client.py"))
        .args(["--transport", "header", "--protocol", "binary"])
        .arg(addr.to_string())
        .args(args);
    json_lines(cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apache_thrift_python_per_user_limit_and_access_rules() {
    let server = ThriftServer::start("header", "binary");
    let yaml = format!(
        r#"
listeners:
  - name: thrift-in
    address: "127.0.0.1:0"
    codec: thrift
    options: {{transport: header, protocol: binary}}
    route_config: r
    filters:
      - name: access_control
        config:
          action: allow
          rules: [{{metadata: [{{key: user, present: true}}, {{key: user, exact: mallory, invert: true}}]}}]
      - name: local_rate_limit
        config: {{rate: 1, per: 1h, burst: 3, by: metadata, key: user}}
route_configs:
  - name: r
    routes: [{{name: all, route: {{cluster: py}}}}]
clusters:
  - {{name: py, endpoints: ["{}"]}}
"#,
        server.addr
    );
    let dir = std::env::temp_dir().join(format!("metaproxy-filters-thrift-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let proxy = start(&dir.join("thrift.yaml"), &yaml).await;
    let addr = proxy.local_addr("thrift-in").unwrap();
    let run = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            thrift_client(addr, &args)
        })
    };

    // Exactly the burst passes; the rest get TApplicationException 6 "rate limited".
    let alice = run(&["--calls", "add,add,add,add,add", "--header", "user=alice"])
        .await
        .unwrap();
    let results: Vec<Value> = alice.iter().map(|l| l["result"].clone()).collect();
    assert_eq!(&results[..3], [5, 5, 5], "{alice:?}");
    for limited in &alice[3..] {
        assert_eq!(limited["type"], 6, "{alice:?}");
        assert!(limited["message"]
            .as_str()
            .unwrap()
            .contains("rate limited"));
    }
    let bob = run(&["--calls", "add,add,add", "--header", "user=bob"])
        .await
        .unwrap();
    assert!(bob.iter().all(|l| l["result"] == 5), "{bob:?}");

    // Allow-list: no user, or mallory, is refused with type 0 "forbidden".
    for args in [
        &["--calls", "add"][..],
        &["--calls", "add", "--header", "user=mallory"][..],
    ] {
        let lines = run(args).await.unwrap();
        assert_eq!(lines[0]["error"], "TApplicationException", "{lines:?}");
        assert_eq!(lines[0]["type"], 0, "{lines:?}");
        assert!(lines[0]["message"].as_str().unwrap().contains("forbidden"));
    }
    let text = proxy.handle().metrics_text();
    assert!(
        text.contains(
            "metaproxy_rate_limited_total{listener=\"thrift-in\",filter=\"local_rate_limit\"} 2\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "metaproxy_local_replies_total{listener=\"thrift-in\",reason=\"forbidden\"} 2\n"
        ),
        "{text}"
    );
}
