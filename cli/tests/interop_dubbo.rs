//! A Python Dubbo client from PyPI (dubbo-ssl-python, the Dubbo TCP protocol with
//! hessian2) calling through the real `metaproxy` binary to Dubbo backends: routing on
//! interface, method, version, group and an attachment, a request mutation seen by the
//! backend, canary split, and the local-reply statuses of docs/CONFIG.md at the client.
//! Needs `scripts/interop/dubbo.sh` (run by `scripts/test.sh`).
#![cfg(feature = "interop")]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use common::binary::start_proxy;
use common::net::{dead_addr, silent_backend};
use common::peers::{dubbo_python, json_lines, workspace_root};
use meta_protocol::{Message, MessageKind};
use metaproxy_cli::backend::{self, Responder};
use metaproxy_dubbo::frames::{echo_response, parse_request, ResponseFrame};
use serde_json::Value;

/// Runs the Python client; one JSON object per call.
fn client(target: SocketAddr, args: &[&str]) -> Vec<Value> {
    let mut cmd = Command::new(dubbo_python());
    cmd.arg(workspace_root().join("codecs/dubbo/interop/client.py"))
        .args(["--target", &target.to_string()])
        .args(args);
    json_lines(cmd)
}

/// Runs the Python client calling `interface.method` with `args` (a JSON array) and
/// further options `extra`.
fn call(
    target: SocketAddr,
    interface: &str,
    method: &str,
    args: &str,
    extra: &[&str],
) -> Vec<Value> {
    let call = ["--interface", interface, "--method", method, "--args", args];
    client(target, &[&call[..], extra].concat())
}

/// Answers each call with the string `<name>|x-route=<attachment or ->`.
fn tagged(name: &'static str) -> Responder {
    Arc::new(move |req: &Message, out: &mut BytesMut| {
        if req.kind() != MessageKind::Request {
            if let Some(frame) = echo_response(req) {
                out.extend_from_slice(&frame);
            }
            return;
        }
        let parsed = parse_request(req.frame()).expect("the proxy forwards valid requests");
        let x_route = parsed
            .attachments
            .iter()
            .find(|(k, _)| k == "x-route")
            .map_or("-", |(_, v)| v.as_str());
        let text = format!("{name}|x-route={x_route}");
        out.extend_from_slice(&ResponseFrame::string(req.request_id(), &text).encode());
    })
}

#[test]
fn python_dubbo_client_through_the_proxy_binary() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (v1, v2) = rt.block_on(async {
        (
            backend::spawn(
                any,
                backend::dubbo_factory(),
                Default::default(),
                tagged("v1"),
            )
            .await
            .unwrap(),
            backend::spawn(
                any,
                backend::dubbo_factory(),
                Default::default(),
                tagged("v2"),
            )
            .await
            .unwrap(),
        )
    });
    let silent = silent_backend();
    let dead = dead_addr();
    let yaml = format!(
        r#"
listeners:
  - {{name: dubbo-in, address: "127.0.0.1:0", codec: dubbo, route_config: r}}
route_configs:
  - name: r
    routes:
      - name: by-attachment
        match: {{metadata: [{{key: user, exact: beta}}]}}
        route: {{cluster: v2}}
        request_mutation: [{{key: x-route, value: beta}}]
      - name: by-version
        match: {{metadata: [{{key: interface, exact: com.example.Greeter}}, {{key: version, exact: 2.0.0}}]}}
        route: {{cluster: v2}}
      - name: by-group
        match: {{metadata: [{{key: group, exact: blue}}]}}
        route: {{cluster: v2}}
      - name: by-method
        match: {{metadata: [{{key: method, exact: slowCall}}]}}
        route: {{cluster: silent, timeout: 300ms}}
      - name: dead
        match: {{metadata: [{{key: interface, exact: com.example.Dead}}]}}
        route: {{cluster: dead}}
      - name: canary
        match: {{metadata: [{{key: interface, exact: com.example.Greeter}}]}}
        route: {{weighted_clusters: [{{cluster: v1, weight: 80}}, {{cluster: v2, weight: 20}}]}}
clusters:
  - {{name: v1, endpoints: ["{}"]}}
  - {{name: v2, endpoints: ["{}"]}}
  - {{name: silent, endpoints: ["{silent}"]}}
  - {{name: dead, endpoints: ["{dead}"]}}
"#,
        v1.addr(),
        v2.addr()
    );
    let dir = std::env::temp_dir().join(format!("metaproxy-dubbo-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dubbo.yaml");
    std::fs::write(&path, yaml).unwrap();
    let (_proxy, addr, _logs) = start_proxy(&path);
    let greeter = [
        "--interface",
        "com.example.Greeter",
        "--method",
        "sayHello",
        "--version",
        "1.0.0",
        "--args",
        "[\"hi\"]",
    ];

    // Canary split 80/20, observed in the replies and at the backends.
    let lines = client(addr, &[&greeter[..], &["--count", "300"]].concat());
    assert_eq!(lines.len(), 300);
    assert!(lines.iter().all(|l| l["ok"] == true), "{lines:?}");
    let to_v2 = lines
        .iter()
        .filter(|l| l["result"].as_str().unwrap().starts_with("v2|"))
        .count();
    assert!(
        (30..=95).contains(&to_v2),
        "v2 got {to_v2} of 300 (expected about 60)"
    );
    assert_eq!(v1.stats().requests() + v2.stats().requests(), 300);

    // Routing on an attachment, with the request mutation seen by the backend.
    let lines = client(
        addr,
        &[&greeter[..], &["--attachment", "user=beta"]].concat(),
    );
    assert_eq!(lines[0]["result"], "v2|x-route=beta", "{lines:?}");
    // Routing on version and on group.
    for (interface, method, args, extra) in [
        (
            "com.example.Greeter",
            "sayHello",
            "[\"x\"]",
            ["--version", "2.0.0", "--count", "20"],
        ),
        (
            "com.example.Other",
            "m",
            "[]",
            ["--group", "blue", "--count", "5"],
        ),
    ] {
        let lines = call(addr, interface, method, args, &extra);
        assert!(
            lines.iter().all(|l| l["result"] == "v2|x-route=-"),
            "{interface}.{method}: {lines:?}"
        );
    }

    // Error statuses at a stock client: no route 60, dead backend 80, timeout 31.
    for (interface, method, status) in [
        ("com.example.Nope", "m", 60),
        ("com.example.Dead", "m", 80),
        ("com.example.Greeter", "slowCall", 31),
    ] {
        let lines = call(addr, interface, method, "[]", &[]);
        assert_eq!(
            lines[0]["status"], status,
            "{interface}.{method}: {lines:?}"
        );
    }

    // Garbage closes only the offending connection.
    let mut bad = TcpStream::connect(addr).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    bad.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut sink = Vec::new();
    let _ = bad.read_to_end(&mut sink);
    let lines = client(addr, &greeter);
    assert_eq!(lines[0]["ok"], true, "{lines:?}");
}
