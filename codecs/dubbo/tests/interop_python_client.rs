//! `interop/client.py` (an independent Python Dubbo client, dubbo-ssl-python, installed
//! by `scripts/interop/dubbo.sh`) against a small backend built on this crate: the
//! client reads our responses and error statuses, and our decoder reads its requests.
//! Only with `--features interop`; a missing peer fails.
#![cfg(feature = "interop")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use meta_protocol::{Codec, MessageKind, Metadata, Side, DEFAULT_MAX_FRAME_SIZE};
use metaproxy_dubbo::frames::{echo_response, ResponseFrame};
use metaproxy_dubbo::DubboCodec;
use serde_json::Value as Json;

type Seen = Arc<Mutex<Vec<Metadata>>>;

fn serve(mut s: TcpStream, seen: Seen) {
    let mut codec = DubboCodec::new(Side::Downstream, DEFAULT_MAX_FRAME_SIZE);
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = s.read(&mut chunk) {
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Ok(Some(msg)) = codec.decode(&mut buf) {
            if msg.kind() == MessageKind::Request {
                seen.lock().unwrap().push(msg.metadata().clone());
            }
            let method = msg.metadata().get("method").unwrap_or_default().to_owned();
            let reply = match method.strip_prefix("error") {
                Some(st) if msg.kind() == MessageKind::Request => Some(
                    ResponseFrame::error(msg.request_id(), st.parse().unwrap(), "backend says no")
                        .encode(),
                ),
                _ => echo_response(&msg),
            };
            if let Some(r) = reply {
                if s.write_all(&r).is_err() {
                    return;
                }
            }
        }
    }
}

fn backend() -> (String, Seen) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let seen: Seen = Arc::default();
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let s3 = s2.clone();
            std::thread::spawn(move || serve(c, s3));
        }
    });
    (addr, seen)
}

fn client(args: &[&str]) -> Vec<Json> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("../../.interop/dubbo/venv/bin/python");
    assert!(
        python.exists(),
        "the Python Dubbo client is not installed at {}: run scripts/interop/dubbo.sh",
        python.display()
    );
    let out = Command::new(python)
        .arg(root.join("interop/client.py"))
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text.is_empty(),
        "client.py printed nothing: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn python_client_calls_and_reads_replies_and_error_statuses() {
    let (addr, seen) = backend();
    let lines = client(&[
        "--target",
        &addr,
        "--interface",
        "com.example.Demo",
        "--method",
        "sayHello",
        "--version",
        "1.0.0",
        "--group",
        "blue",
        "--attachment",
        "user=alice",
        "--args",
        r#"["hello 中文", 7]"#,
        "--count",
        "2",
    ]);
    assert_eq!(lines.len(), 2);
    for l in &lines {
        assert_eq!(l["ok"], Json::Bool(true), "{l}");
        assert_eq!(l["result"], "hello 中文");
    }
    let md = seen.lock().unwrap()[0].clone();
    assert_eq!(md.get("interface"), Some("com.example.Demo"));
    assert_eq!(md.get("method"), Some("sayHello"));
    assert_eq!(md.get("version"), Some("1.0.0"));
    assert_eq!(md.get("group"), Some("blue"));
    assert_eq!(md.get("user"), Some("alice"));

    for status in [60, 80, 31, 100, 40] {
        let method = format!("error{status}");
        let lines = client(&["--target", &addr, "--interface", "I", "--method", &method]);
        assert_eq!(lines[0]["ok"], Json::Bool(false));
        assert_eq!(lines[0]["status"], status, "{}", lines[0]);
        assert!(lines[0]["error"]
            .as_str()
            .unwrap()
            .contains("backend says no"));
    }
}
