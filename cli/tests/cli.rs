//! The `metaproxy` binary: `check` diagnostics, and `run` end to end with a Dubbo
//! backend, SIGHUP reload and SIGTERM drain.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::binary::{backend_name, call, start_proxy_env};

use common::binary::bin;

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("metaproxy-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn check(text: &str, name: &str) -> (i32, String, String) {
    let path = temp_file(name, text);
    let out = bin()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const VALID: &str = r#"
listeners:
  - {name: dubbo-in, address: "127.0.0.1:20880", codec: dubbo, route_config: r}
  - {name: thrift-in, address: "127.0.0.1:9090", codec: thrift, options: {transport: framed}, route_config: r}
route_configs:
  - name: r
    routes:
      - name: beta
        match: {metadata: [{key: user, present: true}]}
        route: {cluster: v2}
        request_mutation: [{key: x-route, value: beta}]
      - route: {weighted_clusters: [{cluster: v1, weight: 90}, {cluster: v2, weight: 10}]}
clusters:
  - {name: v1, endpoints: ["127.0.0.1:20881"]}
  - {name: v2, endpoints: [{address: "127.0.0.1:20882", weight: 3}]}
"#;

#[test]
fn check_accepts_a_valid_config_and_summarises_it() {
    let (code, out, err) = check(VALID, "valid.yaml");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("listeners: 2"), "{out}");
    assert!(out.contains("clusters: 2"), "{out}");
    assert!(out.contains("(2 routes)"), "{out}");
    // The framed thrift listener cannot carry the beta route's mutation.
    assert!(out.contains("warning: route_configs[0].routes[0]"), "{out}");
}

#[test]
fn check_reports_every_semantic_problem_with_its_path() {
    let bad = VALID
        .replace(
            "weight: 90}, {cluster: v2, weight: 10}",
            "weight: 0}, {cluster: v2, weight: 0}",
        )
        .replace("route: {cluster: v2}", "route: {cluster: v3}");
    let (code, _out, err) = check(&bad, "semantic.yaml");
    assert_eq!(code, 1);
    assert!(err.contains("semantic.yaml"), "{err}");
    assert!(
        err.contains("route_configs[0].routes[1].route.weighted_clusters: total weight is 0"),
        "{err}"
    );
    assert!(
        err.contains("route_configs[0].routes[0].route.cluster: no cluster named \"v3\""),
        "{err}"
    );
}

#[test]
fn check_rejects_unknown_fields_and_bad_yaml_with_positions() {
    let (code, _, err) = check(
        &VALID.replace("codec: dubbo,", "codec: dubbo, colour: red,"),
        "unknown.yaml",
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("unknown.yaml") && err.contains("colour"),
        "{err}"
    );
    let (code, _, err) = check("listeners:\n  - name: [unclosed\n", "syntax.yaml");
    assert_ne!(code, 0);
    assert!(err.contains("syntax.yaml") && err.contains('2'), "{err}");
}

#[test]
fn every_example_config_passes_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = bin()
                .args(["check", "--config"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            n += 1;
        }
    }
    assert!(n >= 2, "expected example configs in {}", dir.display());
}

#[test]
fn run_serves_reloads_on_sighup_and_drains_on_sigterm() {
    serve_reload_drain(&[]);
}

#[test]
fn per_core_threading_serves_reloads_and_drains_too() {
    serve_reload_drain(&[
        ("METAPROXY_THREADING", "per-core"),
        ("METAPROXY_WORKERS", "2"),
    ]);
}

#[test]
fn work_stealing_threading_serves_reloads_and_drains_too() {
    serve_reload_drain(&[
        ("METAPROXY_THREADING", "work-stealing"),
        ("METAPROXY_WORKERS", "2"),
    ]);
}

fn serve_reload_drain(env: &[(&str, &str)]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (v1, v2) = rt.block_on(async {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let v1 = metaproxy_cli::backend::spawn(
            any,
            metaproxy_cli::backend::dubbo_factory(),
            Default::default(),
            metaproxy_cli::backend::dubbo_echo("v1"),
        )
        .await
        .unwrap();
        let v2 = metaproxy_cli::backend::spawn(
            any,
            metaproxy_cli::backend::dubbo_factory(),
            Default::default(),
            metaproxy_cli::backend::dubbo_echo("v2"),
        )
        .await
        .unwrap();
        (v1, v2)
    });
    let config = |cluster: &str| {
        format!(
            r#"
hot_restart: {{drain_timeout: 5s}}
listeners:
  - {{name: dubbo-in, address: "127.0.0.1:0", codec: dubbo, route_config: r}}
route_configs:
  - name: r
    routes:
      - match: {{metadata: [{{key: interface, exact: com.example.Greeter}}]}}
        route: {{cluster: {cluster}}}
clusters:
  - {{name: v1, endpoints: ["{}"]}}
  - {{name: v2, endpoints: ["{}"]}}
"#,
            v1.addr(),
            v2.addr()
        )
    };
    let name: Vec<&str> = env.iter().map(|(_, v)| *v).collect();
    let path = temp_file(&format!("run-{}.yaml", name.join("-")), &config("v1"));
    let (mut proxy, addr, logs) = start_proxy_env(&path, env);
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (status, att) = call(&mut s, 1, "com.example.Greeter");
    assert_eq!(status, 20);
    assert_eq!(backend_name(&att), Some("v1"));
    let (status, _) = call(&mut s, 2, "com.example.Unknown");
    assert_eq!(status, 60, "no route is SERVICE_NOT_FOUND");

    // SIGHUP with a broken file: rejected, old config keeps serving.
    std::fs::write(
        &path,
        config("v1").replace("cluster: v1}", "cluster: nope}"),
    )
    .unwrap();
    let line = proxy.reload(&logs);
    assert!(
        line.contains("reload rejected") && line.contains("no cluster named"),
        "{line}"
    );
    assert_eq!(
        backend_name(&call(&mut s, 3, "com.example.Greeter").1),
        Some("v1")
    );

    // SIGHUP with a good file: new requests go to v2 on the same connection.
    std::fs::write(&path, config("v2")).unwrap();
    let line = proxy.reload(&logs);
    assert!(line.contains("config reloaded"), "{line}");
    assert_eq!(
        backend_name(&call(&mut s, 4, "com.example.Greeter").1),
        Some("v2")
    );

    // SIGTERM: drains and exits 0.
    drop(s);
    proxy.signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = proxy.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "proxy did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

/// A custom binary is `Cli::new(registry).main()`: its `check` knows the codecs it
/// registered, and the stock binary's does not.
#[test]
fn check_in_a_custom_binary_sees_its_codec() {
    use metaproxy_cli::Cli;
    use std::process::ExitCode;

    let kv_yaml = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/kvproto/kv.yaml");
    let with_kv = || {
        let mut codecs = metaproxy::default_registry();
        codecs.register(std::sync::Arc::new(metaproxy_example_kv::KvCodecFactory));
        Cli::new(codecs)
    };
    let check = |cli: Cli| cli.main_from(["my-proxy", "check", "--config", kv_yaml]);
    assert_eq!(check(with_kv()), ExitCode::SUCCESS);
    assert_eq!(
        check(Cli::new(metaproxy::default_registry())),
        ExitCode::FAILURE,
        "without the kv codec registered the listener's codec is unknown"
    );
    // And through the stock binary, which has only dubbo and thrift.
    let out = bin().args(["check", "--config", kv_yaml]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("kv"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A custom binary registers its own filters with `Cli::filters`: its `check` (and
/// `run`) know them, and a binary without them reports the name with its field path.
#[test]
fn check_in_a_custom_binary_sees_its_filters() {
    use metaproxy::filter::{
        Filter, FilterConfigError, FilterContext, FilterFactory, FilterRegistry,
    };
    use metaproxy_cli::Cli;
    use std::process::ExitCode;
    use std::sync::Arc;

    struct PassThrough;
    impl Filter for PassThrough {}
    struct PassThroughFactory;
    impl FilterFactory for PassThroughFactory {
        fn name(&self) -> &str {
            "pass_through"
        }
        fn build(
            &self,
            config: &serde_json::Value,
            _ctx: &FilterContext<'_>,
        ) -> Result<Arc<dyn Filter>, Vec<FilterConfigError>> {
            match config.get("strict") {
                Some(serde_json::Value::Bool(_)) | None => Ok(Arc::new(PassThrough)),
                Some(_) => Err(vec![FilterConfigError::new("strict", "must be a boolean")]),
            }
        }
    }

    let dir = std::env::temp_dir().join(format!("metaproxy-cli-filters-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, strict: &str| {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!(
                r#"
listeners:
  - name: in
    address: "127.0.0.1:0"
    codec: dubbo
    route_config: r
    filters:
      - {{name: pass_through, config: {{strict: {strict}}}}}
      - {{name: local_rate_limit, config: {{rate: 10}}}}
route_configs: [{{name: r, routes: [{{route: {{cluster: c}}}}]}}]
clusters: [{{name: c, endpoints: ["127.0.0.1:1"]}}]
"#
            ),
        )
        .unwrap();
        path
    };
    let good = write("good.yaml", "true");
    let bad = write("bad.yaml", "\"yes\"");
    let with_filter = || {
        let mut filters = FilterRegistry::builtin();
        filters.register(Arc::new(PassThroughFactory));
        Cli::new(metaproxy::default_registry()).filters(filters)
    };
    let check = |cli: Cli, path: &std::path::Path| {
        cli.main_from(["my-proxy", "check", "--config", path.to_str().unwrap()])
    };
    assert_eq!(check(with_filter(), &good), ExitCode::SUCCESS);
    assert_eq!(check(with_filter(), &bad), ExitCode::FAILURE);
    assert_eq!(
        check(Cli::new(metaproxy::default_registry()), &good),
        ExitCode::FAILURE,
        "without the registration the filter name is unknown"
    );
    let out = bin()
        .args(["check", "--config", good.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("listeners[0].filters[0].name: unknown filter \"pass_through\""),
        "{stderr}"
    );
    let out = bin()
        .args(["check", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// With `xds:`, `check` accepts a listener whose route config is to come from the
/// control plane, and `run` opens a gRPC (HTTP/2) connection to the control plane.
#[test]
fn run_with_xds_connects_to_the_control_plane() {
    use std::io::Read;
    let control_plane = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let text = format!(
        r#"
xds: {{address: "{}", node_id: cli-test}}
listeners:
  - {{name: dubbo-in, address: "127.0.0.1:0", codec: dubbo, route_config: from-xds}}
"#,
        control_plane.local_addr().unwrap()
    );
    let (code, out, err) = check(&text, "xds.yaml");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("warning: listeners[0].route_config") && out.contains("control plane"),
        "{out}"
    );
    let path = temp_file("xds-run.yaml", &text);
    let (_proxy, _addr, _logs) = start_proxy_env(&path, &[]);
    control_plane.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut conn = loop {
        match control_plane.accept() {
            Ok((conn, _)) => break conn,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("the proxy did not connect to the control plane: {e}"),
        }
    };
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut preface = [0u8; 14];
    conn.read_exact(&mut preface).unwrap();
    assert_eq!(
        &preface, b"PRI * HTTP/2.0",
        "gRPC starts with the HTTP/2 preface"
    );
}
