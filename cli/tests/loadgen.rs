//! `metaproxy bench` against in-process echo backends (both protocols), against
//! backends that answer with errors or wrong ids, and through the CLI's `--json`.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use meta_protocol::{Message, MessageKind};
use metaproxy_cli::backend::{self, Backend, Responder};
use metaproxy_cli::loadgen::{
    run_bench, BenchArgs, BenchProtocol, ThriftProtocolArg, ThriftTransportArg,
};
use metaproxy_thrift::frames::FrameSpec;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn spawn(rt: &tokio::runtime::Runtime, protocol: BenchProtocol, responder: Responder) -> Backend {
    let factory = match protocol {
        BenchProtocol::Dubbo => backend::dubbo_factory(),
        BenchProtocol::Thrift => backend::thrift_factory(),
        BenchProtocol::Frame => unreachable!("frame benches spawn their own codec's backend"),
    };
    rt.block_on(backend::spawn(
        "127.0.0.1:0".parse().unwrap(),
        factory,
        Default::default(),
        responder,
    ))
    .unwrap()
}

fn args(protocol: BenchProtocol, backend: &Backend) -> BenchArgs {
    BenchArgs {
        connections: 4,
        pipeline: 8,
        requests: Some(2_000),
        timeout: Duration::from_secs(5),
        threads: Some(2),
        ..BenchArgs::new(protocol, backend.addr().to_string())
    }
}

#[test]
fn dubbo_requests_are_all_answered_and_counted() {
    let rt = runtime();
    let b = spawn(&rt, BenchProtocol::Dubbo, backend::dubbo_echo("v1"));
    for payload in [128, 4096] {
        let before = b.stats().requests();
        let r = run_bench(
            &BenchArgs {
                payload,
                ..args(BenchProtocol::Dubbo, &b)
            },
            false,
        )
        .unwrap();
        assert_eq!(r.errors, 0, "{:?} {:?}", r.errors_by_kind, r.first_error);
        assert_eq!(r.ok, 2_000);
        assert_eq!(
            b.stats().requests() - before,
            2_000,
            "backend saw every request"
        );
        assert!(r.requests_per_sec > 0.0);
        let l = r.latency_us;
        assert!(
            l.min > 0.0 && l.min <= l.p50 && l.p50 <= l.p99 && l.p99 <= l.max,
            "{l:?}"
        );
    }
}

#[test]
fn thrift_requests_are_all_answered_in_every_format() {
    let rt = runtime();
    let b = spawn(&rt, BenchProtocol::Thrift, backend::thrift_echo());
    for transport in [
        ThriftTransportArg::Framed,
        ThriftTransportArg::Unframed,
        ThriftTransportArg::Header,
    ] {
        for thrift_protocol in [ThriftProtocolArg::Binary, ThriftProtocolArg::Compact] {
            let before = b.stats().requests();
            let r = run_bench(
                &BenchArgs {
                    transport,
                    thrift_protocol,
                    requests: Some(500),
                    payload: 4096,
                    ..args(BenchProtocol::Thrift, &b)
                },
                false,
            )
            .unwrap();
            assert_eq!(
                r.errors, 0,
                "{transport:?}/{thrift_protocol:?}: {:?}",
                r.first_error
            );
            assert_eq!(r.ok, 500);
            assert_eq!(b.stats().requests() - before, 500);
        }
    }
}

#[test]
fn duration_mode_stops_on_time_and_answers_everything() {
    let rt = runtime();
    let b = spawn(&rt, BenchProtocol::Thrift, backend::thrift_echo());
    let r = run_bench(
        &BenchArgs {
            requests: None,
            duration: Duration::from_millis(500),
            ..args(BenchProtocol::Thrift, &b)
        },
        false,
    )
    .unwrap();
    assert_eq!(r.errors, 0, "{:?}", r.first_error);
    assert!(r.ok > 0);
    assert_eq!(
        b.stats().requests(),
        r.ok,
        "every sent request was answered and counted"
    );
    assert!((0.5..3.0).contains(&r.elapsed_s), "elapsed {}", r.elapsed_s);
}

#[test]
fn fixed_rate_mode_paces_requests() {
    let rt = runtime();
    let b = spawn(&rt, BenchProtocol::Dubbo, backend::dubbo_echo("v1"));
    // 100 requests at 200/s take about half a second whatever the server's speed.
    let r = run_bench(
        &BenchArgs {
            requests: Some(100),
            rate: Some(200.0),
            connections: 2,
            ..args(BenchProtocol::Dubbo, &b)
        },
        false,
    )
    .unwrap();
    assert_eq!(r.errors, 0, "{:?}", r.first_error);
    assert_eq!(r.ok, 100);
    assert!((0.4..2.0).contains(&r.elapsed_s), "elapsed {}", r.elapsed_s);
}

/// Answers every Dubbo request with status 80 (server error).
fn dubbo_failing() -> Responder {
    Arc::new(|req: &Message, out: &mut BytesMut| {
        if req.kind() == MessageKind::Request {
            metaproxy_dubbo::write_error_response(
                req.request_id(),
                metaproxy_dubbo::header::status::SERVER_ERROR,
                "boom",
                out,
            )
            .unwrap();
        }
    })
}

/// Answers every other Thrift call with a TApplicationException, the rest with a
/// declared exception.
fn thrift_failing() -> Responder {
    Arc::new(|req: &Message, out: &mut BytesMut| {
        let (t, p) = metaproxy_thrift::split_wire(req.wire()).unwrap();
        let spec = FrameSpec::new(t, p, req.name(), req.request_id() as i32);
        if req.request_id().is_multiple_of(2) {
            metaproxy_thrift::frames::write_app_exception_frame(&spec, 6, "boom", out).unwrap();
        } else {
            metaproxy_thrift::frames::write_declared_exception(&spec, 1, "nope", out).unwrap();
        }
    })
}

#[test]
fn error_replies_are_counted_by_kind() {
    let rt = runtime();
    let d = spawn(&rt, BenchProtocol::Dubbo, dubbo_failing());
    let r = run_bench(&args(BenchProtocol::Dubbo, &d), false).unwrap();
    assert_eq!(r.ok, 0);
    assert_eq!(r.errors, 2_000);
    assert_eq!(r.errors_by_kind.get("error_status"), Some(&2_000));
    assert!(r.first_error.is_some());

    let t = spawn(&rt, BenchProtocol::Thrift, thrift_failing());
    let r = run_bench(
        &BenchArgs {
            connections: 1,
            pipeline: 1,
            requests: Some(100),
            ..args(BenchProtocol::Thrift, &t)
        },
        false,
    )
    .unwrap();
    assert_eq!(r.ok, 0);
    assert_eq!(r.errors_by_kind.get("error_status"), Some(&50));
    assert_eq!(r.errors_by_kind.get("exception"), Some(&50));
}

#[test]
fn short_payload_and_wrong_ids_are_errors() {
    let rt = runtime();
    // Echoes only half of the payload back.
    let half: Responder = Arc::new(|req: &Message, out: &mut BytesMut| {
        let payload = metaproxy_thrift::frames::call_payload(req)
            .unwrap()
            .unwrap();
        let (t, p) = metaproxy_thrift::split_wire(req.wire()).unwrap();
        let spec = FrameSpec::new(t, p, req.name(), req.request_id() as i32);
        metaproxy_thrift::frames::write_reply(&spec, &payload[..payload.len() / 2], out).unwrap();
    });
    let b = spawn(&rt, BenchProtocol::Thrift, half);
    let r = run_bench(
        &BenchArgs {
            requests: Some(200),
            ..args(BenchProtocol::Thrift, &b)
        },
        false,
    )
    .unwrap();
    assert_eq!(r.ok, 0);
    assert_eq!(r.errors_by_kind.get("payload_mismatch"), Some(&200));

    // Answers with an id nobody sent: the reply is rejected and the request times out.
    let shifted: Responder = Arc::new(|req: &Message, out: &mut BytesMut| {
        let mut m = req.clone();
        m.set_request_id(req.request_id() + 1_000_000);
        let echo = backend::dubbo_echo("v1");
        echo(&m, out);
    });
    let b = spawn(&rt, BenchProtocol::Dubbo, shifted);
    let r = run_bench(
        &BenchArgs {
            connections: 1,
            pipeline: 1,
            requests: Some(1),
            timeout: Duration::from_millis(300),
            ..args(BenchProtocol::Dubbo, &b)
        },
        false,
    )
    .unwrap();
    assert_eq!(r.ok, 0);
    assert_eq!(r.errors_by_kind.get("unknown_id"), Some(&1));
    assert_eq!(r.errors_by_kind.get("timeout"), Some(&1));
}

#[test]
fn nothing_listening_is_an_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = run_bench(
        &BenchArgs {
            connections: 1,
            requests: Some(1),
            timeout: Duration::from_millis(200),
            ..BenchArgs::new(BenchProtocol::Dubbo, format!("127.0.0.1:{port}"))
        },
        false,
    )
    .unwrap_err();
    assert!(err.to_string().contains("cannot connect"), "{err}");
}

#[test]
fn cli_json_is_one_object_with_the_documented_fields() {
    let rt = runtime();
    let b = spawn(&rt, BenchProtocol::Thrift, backend::thrift_echo());
    let out = Command::new(env!("CARGO_BIN_EXE_metaproxy"))
        .args(["bench", "--protocol", "thrift", "--target"])
        .arg(b.addr().to_string())
        .args([
            "--connections",
            "2",
            "--requests",
            "300",
            "--payload",
            "64",
            "--pipeline",
            "4",
            "--transport",
            "header",
            "--thrift-protocol",
            "compact",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stderr.is_empty(), "no progress bar with --json");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.trim().lines().count(), 1, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["protocol"], "thrift");
    assert_eq!(v["thrift"], "header/compact");
    assert_eq!(v["connections"], 2);
    assert_eq!(v["pipeline"], 4);
    assert_eq!(v["payload"], 64);
    assert_eq!(v["ok"], 300);
    assert_eq!(v["errors"], 0);
    assert!(v["errors_by_kind"].as_object().unwrap().is_empty());
    assert!(v["requests_per_sec"].as_f64().unwrap() > 0.0);
    for k in ["min", "mean", "p50", "p90", "p99", "p99_9", "max"] {
        assert!(v["latency_us"][k].as_f64().unwrap() > 0.0, "{k}");
    }
    assert_eq!(b.stats().requests(), 300);
}

#[test]
fn cli_text_report_names_percentiles() {
    let rt = runtime();
    let b = spawn(&rt, BenchProtocol::Dubbo, backend::dubbo_echo("v1"));
    let out = Command::new(env!("CARGO_BIN_EXE_metaproxy"))
        .args(["bench", "--protocol", "dubbo", "--target"])
        .arg(b.addr().to_string())
        .args(["--connections", "1", "--requests", "50"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "50 ok, 0 errors",
        "requests/s",
        "p50",
        "p90",
        "p99 ",
        "p99.9",
        "max",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from {text}");
    }
}

#[test]
fn cli_exits_non_zero_after_its_report_when_a_reply_was_wrong() {
    let rt = runtime();
    let b = spawn(&rt, BenchProtocol::Dubbo, dubbo_failing());
    let out = Command::new(env!("CARGO_BIN_EXE_metaproxy"))
        .args(["bench", "--protocol", "dubbo", "--target"])
        .arg(b.addr().to_string())
        .args(["--connections", "1", "--requests", "20", "--json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "bench must fail on error replies"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report still printed");
    assert_eq!(v["errors"], 20);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("20 of 20 replies were wrong or failed"),
        "{err}"
    );
}

/// A custom binary benches its own protocol: `--protocol frame` with its codec and a
/// request frame from a file, every reply checked by id and status.
#[test]
fn a_custom_binary_benches_its_own_codec_from_a_request_file() {
    use metaproxy_cli::Cli;
    use metaproxy_example_kv::{frames, KvCodecFactory};
    use std::process::ExitCode;

    let rt = runtime();
    let kv_backend = |status: u8| {
        let responder: Responder = Arc::new(move |req: &Message, out: &mut BytesMut| {
            if req.kind() == MessageKind::Request {
                out.extend_from_slice(&frames::response(req.request_id(), status, &[], b"ok"));
            }
        });
        rt.block_on(backend::spawn(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(KvCodecFactory),
            Default::default(),
            responder,
        ))
        .unwrap()
    };
    let dir = std::env::temp_dir().join(format!("metaproxy-bench-frame-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let request = dir.join("request.bin");
    std::fs::write(&request, frames::request(1, &[("service", "calc")], b"2+2")).unwrap();

    let with_kv = || {
        let mut codecs = metaproxy::default_registry();
        codecs.register(Arc::new(KvCodecFactory));
        Cli::new(codecs)
    };
    let bench = |cli: Cli, target: String| {
        cli.main_from([
            "my-proxy",
            "bench",
            "--protocol",
            "frame",
            "--codec",
            "kv",
            "--request-file",
            request.to_str().unwrap(),
            "--target",
            &target,
            "--connections",
            "2",
            "--pipeline",
            "4",
            "--requests",
            "200",
            "--json",
        ])
    };

    let ok = kv_backend(0);
    assert_eq!(bench(with_kv(), ok.addr().to_string()), ExitCode::SUCCESS);
    assert_eq!(
        ok.stats().requests(),
        200,
        "every request reached the backend"
    );

    // Error statuses are wrong replies: the run fails after its report.
    let failing = kv_backend(10);
    assert_eq!(
        bench(with_kv(), failing.addr().to_string()),
        ExitCode::FAILURE
    );
    assert!(failing.stats().requests() > 0);

    // A binary without the codec cannot bench it.
    let none = Cli::new(metaproxy::default_registry());
    assert_eq!(bench(none, ok.addr().to_string()), ExitCode::FAILURE);
    assert_eq!(ok.stats().requests(), 200);
    let _ = std::fs::remove_dir_all(&dir);
}
