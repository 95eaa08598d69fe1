//! Hot restart through the library API, as an embedding program would use it:
//! `Server::take_over` in one server hands the sockets over from another, whose
//! `run_until` then drains and returns.

mod common;

use std::time::Duration;

use common::*;
use metaproxy::runtime::Threading;
use metaproxy::{HotRestartError, Server};

fn yaml(socket: &std::path::Path, backend: std::net::SocketAddr) -> String {
    format!(
        r#"
hot_restart: {{socket: "{}", drain_timeout: 5s}}
listeners:
  - {{name: kv-in, address: "127.0.0.1:0", codec: kv, route_config: r}}
route_configs:
  - {{name: r, routes: [{{route: {{cluster: c}}}}]}}
clusters:
  - {{name: c, endpoints: ["{backend}"]}}
"#,
        socket.display()
    )
}

fn server(text: &str) -> Server {
    let config = metaproxy::config::parse(text, "test.yaml".as_ref()).unwrap();
    Server::new(config, registry()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn take_over_moves_the_sockets_and_the_old_server_drains() {
    let v1 = backend("v1").await;
    let dir = std::env::temp_dir().join(format!("metaproxy-hr-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("hr.sock");
    let _ = std::fs::remove_file(&socket);
    let text = yaml(&socket, v1.addr);

    let old = server(&text)
        .bind_with(Threading::PerCore { workers: 2 })
        .await
        .unwrap();
    assert_eq!(old.hot_restart_epoch(), 0);
    let addr = old.local_addr("kv-in").unwrap();
    let mut kept = Client::connect(addr).await;
    let r = kept.call(&[("service", "calc")], b"before").await;
    assert_eq!(header(&r, "metaproxy-drain"), None);

    // A second server on the same socket without taking over refuses to start.
    let err = server(&text)
        .bind()
        .await
        .err()
        .expect("a second bind must fail");
    assert!(
        err.to_string().contains("another metaproxy process"),
        "{err}"
    );

    let old_handle = old.handle();
    let old_run = tokio::spawn(old.run_until(std::future::pending()));
    let new = server(&text)
        .take_over(Threading::WorkStealing { workers: 0 })
        .await
        .unwrap();
    assert_eq!(new.hot_restart_epoch(), 1);
    assert_eq!(new.local_addr("kv-in"), Some(addr));
    assert!(!old_handle.is_ready(), "the old server drains");
    assert!(new.handle().is_ready());
    assert!(new
        .handle()
        .metrics_text()
        .contains("\nmetaproxy_hot_restart_epoch 1\n"));

    // New connections reach the new server; the old connection is still served (the
    // kv protocol has no go-away), with the drain header on its replies.
    let mut fresh = Client::connect(addr).await;
    let r = fresh.call(&[("service", "calc")], b"fresh").await;
    assert_eq!(header(&r, "metaproxy-drain"), None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = kept.call(&[("service", "calc")], b"after").await;
    assert_eq!(header(&r, "metaproxy-drain").as_deref(), Some("1"));
    drop(kept);
    assert!(
        tokio::time::timeout(Duration::from_secs(5), old_run)
            .await
            .expect("the old server stops once its last client left")
            .unwrap(),
        "drained within drain_timeout"
    );
    assert!(
        socket.exists(),
        "the socket file now belongs to the new server"
    );

    // A takeover without hot_restart.socket is a clear error.
    let plain = text.replace(
        &format!("hot_restart: {{socket: \"{}\", ", socket.display()),
        "hot_restart: {",
    );
    let err = server(&plain)
        .take_over(Threading::WorkStealing { workers: 0 })
        .await
        .err()
        .unwrap();
    assert!(matches!(err, HotRestartError::NoSocketConfigured), "{err}");

    drop(fresh);
    assert!(new.shutdown().await);
    assert!(!socket.exists(), "removed by its owner at a clean stop");
}

#[tokio::test]
async fn a_start_that_fails_leaves_no_socket_file() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = std::env::temp_dir().join(format!("metaproxy-hr-api-fail-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("hr.sock");
    let _ = std::fs::remove_file(&socket);
    let text = yaml(&socket, "127.0.0.1:1".parse().unwrap()).replace(
        "address: \"127.0.0.1:0\"",
        &format!("address: \"{}\"", busy.local_addr().unwrap()),
    );
    let err = server(&text).bind().await.err().expect("the port is taken");
    assert_eq!(err.listener, "kv-in");
    assert!(
        !socket.exists(),
        "the hot-restart socket of a failed start was left behind"
    );
}
