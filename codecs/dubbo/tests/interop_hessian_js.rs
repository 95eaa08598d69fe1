//! Golden tests against hessian.js, an independent hessian2 implementation (installed by
//! `scripts/interop/dubbo.sh`). Only with `--features interop`; a missing peer fails.
#![cfg(feature = "interop")]

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use bytes::{Bytes, BytesMut};
use meta_protocol::{Codec, LocalReply, LocalReplyKind, ReplyContext};
use metaproxy_dubbo::frames::{Args, RequestFrame, ResponseFrame};
use metaproxy_dubbo::hessian2::{Reader, Value, Writer};
use serde_json::{json, Value as Json};

fn interop_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.interop/dubbo");
    assert!(
        root.join("node_modules/hessian.js/package.json").exists(),
        "hessian.js is not installed in {}: run scripts/interop/dubbo.sh",
        root.display()
    );
    root
}

fn node(script: &str, stdin: Option<&str>) -> Json {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("interop")
        .join(script);
    let mut child = Command::new("node")
        .arg(&script)
        .env("DUBBO_INTEROP_DIR", interop_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node is required for the dubbo interop tests");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("node printed JSON")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Numbers compared as f64 on both sides (JSON does not tell int from double).
fn floats(v: Json) -> Json {
    match v {
        Json::Number(n) => json!(n.as_f64().unwrap()),
        Json::Array(a) => Json::Array(a.into_iter().map(floats).collect()),
        Json::Object(o) => Json::Object(o.into_iter().map(|(k, v)| (k, floats(v))).collect()),
        v => v,
    }
}

/// The neutral form of hessian_encode.js. `strict`: objects keep their class; otherwise
/// they look like maps of their fields (as hessian.js decodes them). Refs are resolved
/// through `table` (lists, maps and objects, numbered in wire order).
fn norm(v: &Value, strict: bool, table: &mut Vec<Json>) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Bool(b) => json!(b),
        Value::Int(i) => json!(f64::from(*i)),
        Value::Long(l) => json!(*l as f64),
        Value::Double(d) => json!(d),
        Value::Date(d) => json!({ "$date": *d as f64 }),
        Value::String(s) => json!(s),
        Value::Binary(b) => json!({ "$binary": hex(b) }),
        Value::Ref(i) => table
            .get(*i as usize)
            .cloned()
            .unwrap_or(json!({"$badref": i})),
        Value::List { items, .. } | Value::FixedList { items, .. } => {
            let slot = table.len();
            table.push(Json::Null);
            let out = Json::Array(items.iter().map(|i| norm(i, strict, table)).collect());
            table[slot] = out.clone();
            out
        }
        Value::Map { entries, .. } => {
            let slot = table.len();
            table.push(Json::Null);
            let mut m = serde_json::Map::new();
            for (k, v) in entries {
                let k = match k {
                    Value::String(s) => s.clone(),
                    k => norm(k, strict, table).to_string(),
                };
                m.insert(k, norm(v, strict, table));
            }
            let out = json!({ "$map": m });
            table[slot] = out.clone();
            out
        }
        Value::Object { class, fields } => {
            let slot = table.len();
            table.push(Json::Null);
            let mut m = serde_json::Map::new();
            for (k, v) in fields {
                m.insert(k.clone(), norm(v, strict, table));
            }
            let out = if strict {
                json!({ "$class": class, "$": m })
            } else {
                json!({ "$map": m })
            };
            table[slot] = out.clone();
            out
        }
    }
}

#[test]
fn values_written_by_hessian_js_are_skipped_and_read_exactly() {
    let cases = node("hessian_encode.js", None);
    let cases = cases.as_array().unwrap();
    assert!(cases.len() > 30);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let bytes = Bytes::from(unhex(c["hex"].as_str().unwrap()));
        let sequence = c.get("sequence").is_some();
        let count = if sequence {
            c["expect"].as_array().unwrap().len()
        } else {
            1
        };
        let mut skip = Reader::new(&bytes);
        for _ in 0..count {
            skip.skip_value()
                .unwrap_or_else(|e| panic!("{name}: skip failed: {e}"));
        }
        assert!(
            skip.is_at_end(),
            "{name}: skip stopped at {} of {}",
            skip.position(),
            bytes.len()
        );
        let mut read = Reader::new(&bytes);
        let mut table = Vec::new();
        let got: Vec<Json> = (0..count)
            .map(|_| {
                let v = read
                    .read_value()
                    .unwrap_or_else(|e| panic!("{name}: read failed: {e}"));
                norm(&v, true, &mut table)
            })
            .collect();
        let got = if sequence {
            Json::Array(got)
        } else {
            got.into_iter().next().unwrap()
        };
        assert_eq!(floats(got), floats(c["expect"].clone()), "{name}");
    }
}

#[test]
fn hessian_js_strings_become_metadata() {
    // A string written by hessian.js (CESU-8 surrogate pairs) as an attachment value.
    let cases = node("hessian_encode.js", None);
    let emoji = cases
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "string_emoji")
        .unwrap();
    let mut b = BytesMut::new();
    let mut w = Writer::new(&mut b);
    w.write_map_start(None).write_string("user");
    w.write_raw(&unhex(emoji["hex"].as_str().unwrap()));
    w.write_end();
    let frame = RequestFrame {
        args: Args::None,
        ..RequestFrame::new(1, "svc", "m")
    }
    .encode();
    // Replace the builder's map with the one holding hessian.js's string.
    let map_at = frame.len() - {
        let mut m = BytesMut::new();
        Writer::new(&mut m).write_string_map([
            ("path", "svc"),
            ("interface", "svc"),
            ("version", "0.0.0"),
        ]);
        m.len()
    };
    let mut f = BytesMut::from(&frame[..map_at]);
    f.extend_from_slice(&b);
    let len = (f.len() - 16) as u32;
    f[12..16].copy_from_slice(&len.to_be_bytes());
    let msg = common::decode_one(&f);
    assert_eq!(msg.metadata().get("user"), emoji["expect"].as_str());
}

struct Case {
    name: String,
    kind: &'static str,
    bytes: Vec<u8>,
    args: usize,
}

fn value_case(name: &str, v: &Value) -> (Case, Json) {
    let mut b = BytesMut::new();
    Writer::new(&mut b).write_value(v);
    let expect = norm(v, false, &mut Vec::new());
    (
        Case {
            name: name.into(),
            kind: "value",
            bytes: b.to_vec(),
            args: 0,
        },
        expect,
    )
}

fn run_decoder(cases: &[Case]) -> Vec<Json> {
    let input: Vec<Json> = cases
        .iter()
        .map(|c| json!({ "name": c.name, "kind": c.kind, "hex": hex(&c.bytes), "args": c.args }))
        .collect();
    let out = node("hessian_decode.js", Some(&Json::Array(input).to_string()));
    let out = out.as_array().unwrap().clone();
    for (c, o) in cases.iter().zip(&out) {
        assert_eq!(o["name"], json!(c.name));
        assert_eq!(
            o["ok"],
            json!(true),
            "hessian.js could not decode {}: {}",
            c.name,
            o["error"]
        );
    }
    out.into_iter().map(|o| o["value"].clone()).collect()
}

fn point(x: i32, y: i32) -> Value {
    Value::Object {
        class: "com.example.Point".into(),
        fields: vec![("x".into(), Value::Int(x)), ("y".into(), Value::Int(y))],
    }
}

#[test]
fn values_written_by_us_are_read_by_hessian_js() {
    // hessian.js 2.11 does not read variable-length lists (`U`/`W`, which Java reads):
    // lists are written with their length here; our reader's handling of `U`/`W` is
    // covered by the property tests.
    let values = vec![
        ("emoji", Value::str("smile \u{1F600} rocket \u{1F680}")),
        (
            "cjk",
            Value::str("\u{4E2D}\u{6587} \u{65E5}\u{672C}\u{8A9E} \u{D55C}\u{AD6D}\u{C5B4}"),
        ),
        ("long_ascii", Value::String("z".repeat(100_000))),
        (
            "long_mixed",
            Value::String("a\u{1F600}\u{4E2D}".repeat(20_000)),
        ),
        (
            "ints",
            Value::FixedList {
                ty: None,
                items: [
                    0,
                    -16,
                    47,
                    -2048,
                    2047,
                    262_143,
                    -262_144,
                    i32::MAX,
                    i32::MIN,
                ]
                .map(Value::Int)
                .to_vec(),
            },
        ),
        (
            "longs",
            Value::FixedList {
                ty: Some("[long".into()),
                items: [0, 15, -8, 2047, 262_143, 1 << 40, -(1 << 50)]
                    .map(Value::Long)
                    .to_vec(),
            },
        ),
        (
            "doubles",
            Value::FixedList {
                ty: None,
                items: [
                    0.0,
                    1.0,
                    -128.0,
                    32767.0,
                    12.25,
                    std::f64::consts::PI,
                    -1e300,
                ]
                .map(Value::Double)
                .to_vec(),
            },
        ),
        (
            "dates",
            Value::FixedList {
                ty: None,
                items: vec![Value::Date(894_621_060_000), Value::Date(1_700_000_000_123)],
            },
        ),
        ("binary", Value::Binary((0..=255).collect())),
        ("binary_long", Value::Binary(vec![0x5a; 70_000])),
        (
            "nested",
            Value::Map {
                ty: None,
                entries: vec![
                    (
                        Value::str("list"),
                        Value::FixedList {
                            ty: None,
                            items: vec![
                                Value::Int(1),
                                Value::Map {
                                    ty: None,
                                    entries: vec![(
                                        Value::str("deep"),
                                        Value::FixedList {
                                            ty: None,
                                            items: vec![Value::Null, Value::Bool(true)],
                                        },
                                    )],
                                },
                            ],
                        },
                    ),
                    (
                        Value::str("typed"),
                        Value::Map {
                            ty: Some("java.util.HashMap".into()),
                            entries: vec![(Value::str("k"), Value::str("v"))],
                        },
                    ),
                ],
            },
        ),
        (
            "objects_and_refs",
            Value::FixedList {
                ty: None,
                items: vec![point(1, 2), point(3, 4), Value::Ref(1)],
            },
        ),
    ];
    let mut cases = Vec::new();
    let mut expects = Vec::new();
    for (name, v) in &values {
        let (c, e) = value_case(name, v);
        cases.push(c);
        expects.push(e);
    }
    let got = run_decoder(&cases);
    for ((c, e), g) in cases.iter().zip(expects).zip(got) {
        assert_eq!(floats(g), floats(e), "{}", c.name);
    }
}

#[test]
fn frames_written_by_us_are_read_by_hessian_js() {
    let mut args = BytesMut::new();
    Writer::new(&mut args)
        .write_int(42)
        .write_string("\u{1F600} arg")
        .write_value(&point(5, 6));
    let request = RequestFrame {
        version: "1.2.3",
        group: Some("blue"),
        attachments: &[("user", "\u{5F20}\u{4E09}"), ("emoji", "\u{1F680}")],
        args: Args::Encoded {
            types: "ILjava/lang/String;Lcom/example/Point;",
            values: &args,
        },
        ..RequestFrame::new(77, "com.example.Demo", "call")
    }
    .encode();
    // The same request after a mutation by the proxy.
    let mut msg = common::decode_one(&request);
    msg.push_mutation("x-route".into(), "beta \u{1F600}".into());
    msg.push_mutation("user".into(), "mallory".into());
    msg.set_request_id(78);
    let mutated = common::encode(&msg);
    let response = ResponseFrame::string(77, "ok \u{1F600}")
        .with_attachments(&[("backend", "v2")])
        .encode();
    let mut local = BytesMut::new();
    common::codec()
        .encode_local_reply(
            &ReplyContext {
                request_id: 79,
                ..Default::default()
            },
            &LocalReply::new(LocalReplyKind::NoRoute, "metaproxy: no route \u{1F6AB}"),
            &mut local,
        )
        .unwrap();
    let cases = vec![
        Case {
            name: "request".into(),
            kind: "request",
            bytes: request.to_vec(),
            args: 3,
        },
        Case {
            name: "mutated".into(),
            kind: "request",
            bytes: mutated.to_vec(),
            args: 3,
        },
        Case {
            name: "response".into(),
            kind: "response",
            bytes: response.to_vec(),
            args: 0,
        },
        Case {
            name: "local".into(),
            kind: "response",
            bytes: local.to_vec(),
            args: 0,
        },
    ];
    let got = run_decoder(&cases);
    let req = &got[0];
    assert_eq!(req["header"]["id"], "77");
    assert_eq!(req["dubbo"], "2.0.2");
    assert_eq!(req["path"], "com.example.Demo");
    assert_eq!(req["version"], "1.2.3");
    assert_eq!(req["method"], "call");
    assert_eq!(req["types"], "ILjava/lang/String;Lcom/example/Point;");
    assert_eq!(
        floats(req["args"].clone()),
        floats(json!([42, "\u{1F600} arg", {"$map": {"x": 5, "y": 6}}]))
    );
    let att = &req["attachments"]["$map"];
    assert_eq!(att["group"], "blue");
    assert_eq!(att["user"], "\u{5F20}\u{4E09}");
    assert_eq!(att["emoji"], "\u{1F680}");
    let m = &got[1];
    assert_eq!(m["header"]["id"], "78");
    assert_eq!(m["args"], req["args"]);
    assert_eq!(m["attachments"]["$map"]["x-route"], "beta \u{1F600}");
    assert_eq!(m["attachments"]["$map"]["user"], "mallory");
    assert_eq!(m["attachments"]["$map"]["group"], "blue");
    let r = &got[2];
    assert_eq!(r["type"], 4);
    assert_eq!(r["value"], "ok \u{1F600}");
    assert_eq!(r["attachments"]["$map"]["backend"], "v2");
    let l = &got[3];
    assert_eq!(l["header"]["status"], 60);
    assert_eq!(l["header"]["id"], "79");
    assert_eq!(l["error"], "metaproxy: no route \u{1F6AB}");
}
