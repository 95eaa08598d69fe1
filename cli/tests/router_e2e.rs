//! Router behaviour through the real binary with Dubbo backends: canary split observed at
//! the backends, a mirror that dies changes nothing for clients, and a reload under
//! continuous traffic flips weights with zero failed requests.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::binary::{call, start_proxy};
use metaproxy_cli::backend;

fn config(v1: SocketAddr, v2: SocketAddr, shadow: SocketAddr, w1: u32, w2: u32) -> String {
    format!(
        r#"
listeners:
  - {{name: dubbo-in, address: "127.0.0.1:0", codec: dubbo, route_config: r}}
route_configs:
  - name: r
    routes:
      - name: canary
        match: {{metadata: [{{key: interface, prefix: com.example.}}]}}
        route:
          weighted_clusters: [{{cluster: v1, weight: {w1}}}, {{cluster: v2, weight: {w2}}}]
          mirror: [{{cluster: shadow, percent: 100}}]
clusters:
  - {{name: v1, endpoints: ["{v1}"]}}
  - {{name: v2, endpoints: ["{v2}"]}}
  - {{name: shadow, endpoints: ["{shadow}"], connect_timeout: 200ms}}
"#
    )
}

#[test]
fn canary_mirror_and_live_reload_through_the_binary() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (v1, v2, shadow) = rt.block_on(async {
        let f = backend::dubbo_factory;
        (
            backend::spawn(any, f(), Default::default(), backend::dubbo_echo("v1"))
                .await
                .unwrap(),
            backend::spawn(any, f(), Default::default(), backend::dubbo_echo("v2"))
                .await
                .unwrap(),
            backend::spawn(any, f(), Default::default(), backend::dubbo_echo("shadow"))
                .await
                .unwrap(),
        )
    });
    let dir = std::env::temp_dir().join(format!("metaproxy-router-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.yaml");
    std::fs::write(&path, config(v1.addr(), v2.addr(), shadow.addr(), 90, 10)).unwrap();
    let (proxy, addr, logs) = start_proxy(&path);
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();

    // Canary 90/10, observed at the backends.
    let n = 3000u64;
    for id in 0..n {
        let (status, _) = call(&mut s, id, "com.example.DemoService");
        assert_eq!(status, 20);
    }
    let (c1, c2) = (v1.stats().requests(), v2.stats().requests());
    assert_eq!(c1 + c2, n);
    let share = c2 as f64 / n as f64;
    // sd = sqrt(0.09 / 3000) = 0.0055; 0.03 is over 5 sd.
    assert!((share - 0.10).abs() < 0.03, "v2 share {share} ({c1}/{c2})");
    // The mirror received a copy of every request.
    let deadline = Instant::now() + Duration::from_secs(5);
    while shadow.stats().requests() < n {
        assert!(
            Instant::now() < deadline,
            "mirror saw {} of {n}",
            shadow.stats().requests()
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // Kill the mirror: clients see no difference.
    shadow.stop();
    std::thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    for id in n..n + 500 {
        let (status, _) = call(&mut s, id, "com.example.DemoService");
        assert_eq!(status, 20, "request {id} failed after the mirror died");
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "mirror death slowed clients: {:?}",
        started.elapsed()
    );

    // Reload under continuous traffic from another connection: weights flip to 0/100
    // and no request fails.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let traffic = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut id = 1_000_000u64;
            while !stop.load(Ordering::SeqCst) {
                let (status, _) = call(&mut s, id, "com.example.DemoService");
                assert_eq!(status, 20, "request {id} failed during reload");
                sent.fetch_add(1, Ordering::SeqCst);
                id += 1;
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(&path, config(v1.addr(), v2.addr(), shadow.addr(), 0, 100)).unwrap();
    let line = proxy.reload(&logs);
    assert!(line.contains("config reloaded"), "{line}");
    // A request routed on the old snapshot just before the swap may still be in flight.
    std::thread::sleep(Duration::from_millis(100));
    let v1_after_reload = v1.stats().requests();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    traffic.join().expect("traffic thread saw a failure");
    assert!(
        sent.load(Ordering::SeqCst) > 50,
        "too little traffic: {}",
        sent.load(Ordering::SeqCst)
    );
    assert_eq!(
        v1.stats().requests(),
        v1_after_reload,
        "v1 got requests after its weight went to 0"
    );
    for id in 0..100 {
        let (status, att) = call(&mut s, 2_000_000 + id, "com.example.DemoService");
        assert_eq!(status, 20);
        assert_eq!(common::binary::backend_name(&att), Some("v2"));
    }
    drop(proxy);
}
