//! The runtime-level fuzz harness: arbitrary byte streams through full downstream
//! sessions of a running proxy (Dubbo, Thrift and kv listeners in front of echo
//! backends). Shared by the stable harness (tests/fuzz_session.rs) and the cargo-fuzz
//! target (fuzz/fuzz_targets/session.rs).
//!
//! One input is one client connection: the first byte picks the listener, the rest is
//! written in chunks whose sizes come from the input too, then the client half-closes
//! and reads until the proxy closes. Checked after each session: no panic anywhere in
//! the process (a panic hook records them, tasks included), the proxy closed the
//! connection within [`SESSION_LIMIT`], and every reply it sent decodes in the
//! listener's protocol.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use meta_protocol::{Codec, CodecContext, CodecFactory, CodecOptions, CodecRegistry, Side};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long one session may last after the client half-closed.
pub const SESSION_LIMIT: Duration = Duration::from_secs(3);

static PANICS: AtomicUsize = AtomicUsize::new(0);

const CONFIG: &str = r#"
listeners:
  - {name: dubbo, address: "127.0.0.1:0", codec: dubbo, route_config: r, frame_timeout: 300ms, max_frame_size: 65536}
  - {name: thrift, address: "127.0.0.1:0", codec: thrift, route_config: t, frame_timeout: 300ms, max_frame_size: 65536}
  - {name: kv, address: "127.0.0.1:0", codec: kv, route_config: k, frame_timeout: 300ms, max_frame_size: 65536}
route_configs:
  - name: r
    routes:
      - {match: {metadata: [{key: method, prefix: "x"}]}, route: {cluster: nowhere, timeout: 200ms}}
      - {route: {cluster: dubbo, timeout: 300ms}}
  - {name: t, routes: [{route: {cluster: thrift, timeout: 300ms}}]}
  - {name: k, routes: [{match: {metadata: [{key: service, present: true}]}, route: {cluster: kv, timeout: 300ms}}]}
clusters:
  - {name: dubbo, endpoints: ["{dubbo}"]}
  - {name: thrift, endpoints: ["{thrift}"]}
  - {name: kv, endpoints: ["{kv}"]}
  - {name: nowhere, endpoints: ["{nowhere}"], connect_timeout: 100ms}
"#;

/// Which protocol a listener speaks.
#[derive(Clone, Copy, Debug)]
pub enum Proto {
    Dubbo,
    Thrift,
    Kv,
}

/// A running proxy with echo backends, fed one session at a time.
pub struct SessionFuzz {
    rt: tokio::runtime::Runtime,
    server: Option<metaproxy::RunningServer>,
    listeners: [(Proto, SocketAddr); 3],
}

impl SessionFuzz {
    pub fn new() -> Self {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (server, listeners) = rt.block_on(async {
            let dubbo = echo_backend(Arc::new(metaproxy::dubbo::DubboCodecFactory), |m, out| {
                if let Some(r) = metaproxy::dubbo::frames::echo_response(m) {
                    out.extend_from_slice(&r);
                }
            })
            .await;
            let thrift = echo_backend(Arc::new(metaproxy::thrift::ThriftCodecFactory), |m, out| {
                let _ = metaproxy::thrift::frames::echo_reply(m, out);
            })
            .await;
            let kv = echo_backend(Arc::new(metaproxy_example_kv::KvCodecFactory), |m, out| {
                if m.kind() == meta_protocol::MessageKind::Request {
                    let body = metaproxy_example_kv::frames::body(m);
                    out.extend_from_slice(&metaproxy_example_kv::frames::response(
                        m.request_id(),
                        0,
                        &[],
                        body,
                    ));
                }
            })
            .await;
            let nowhere = TcpListener::bind("127.0.0.1:0")
                .await
                .unwrap()
                .local_addr()
                .unwrap();
            let text = CONFIG
                .replace("{dubbo}", &dubbo.to_string())
                .replace("{thrift}", &thrift.to_string())
                .replace("{kv}", &kv.to_string())
                .replace("{nowhere}", &nowhere.to_string());
            let config = metaproxy::config::parse(&text, "fuzz.yaml".as_ref()).unwrap();
            let server = metaproxy::Server::new(config, registry())
                .unwrap()
                .bind()
                .await
                .unwrap();
            let listeners = [
                (Proto::Dubbo, server.local_addr("dubbo").unwrap()),
                (Proto::Thrift, server.local_addr("thrift").unwrap()),
                (Proto::Kv, server.local_addr("kv").unwrap()),
            ];
            (server, listeners)
        });
        SessionFuzz {
            rt,
            server: Some(server),
            listeners,
        }
    }

    /// Runs one session with `data` (see the module docs); panics on a violation.
    pub fn session(&self, data: &[u8]) {
        let Some((&selector, rest)) = data.split_first() else {
            return;
        };
        let (proto, addr) = self.listeners[usize::from(selector) % self.listeners.len()];
        // The low bits of the selector choose the chunk size: 1..=64, or everything.
        let chunk = match selector >> 2 {
            0 => rest.len().max(1),
            n => usize::from(n),
        };
        self.rt.block_on(async {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let mut replies = BytesMut::new();
            for piece in rest.chunks(chunk) {
                if stream.write_all(piece).await.is_err() {
                    break; // the proxy closed on a bad frame
                }
            }
            let _ = stream.shutdown().await;
            let closed = tokio::time::timeout(SESSION_LIMIT, async {
                loop {
                    match stream.read_buf(&mut replies).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            assert!(
                closed.is_ok(),
                "the proxy kept a {proto:?} session open {SESSION_LIMIT:?} after the client finished"
            );
            check_replies(proto, &mut replies);
        });
        assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a panic happened");
    }

    /// The proxy still serves a valid request on every listener, and has released
    /// every buffered byte.
    pub fn check_healthy(&self) {
        let server = self.server.as_ref().unwrap();
        let handle = server.handle();
        self.rt.block_on(async {
            for (proto, addr) in self.listeners {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                let request = valid_request(proto, 7);
                stream.write_all(&request).await.unwrap();
                let mut buf = BytesMut::new();
                let mut codec = client_codec(proto);
                let reply = tokio::time::timeout(Duration::from_secs(5), async {
                    loop {
                        if let Some(m) = codec.decode(&mut buf).unwrap() {
                            return m;
                        }
                        assert!(
                            stream.read_buf(&mut buf).await.unwrap() > 0,
                            "{proto:?}: closed"
                        );
                    }
                })
                .await
                .unwrap_or_else(|_| panic!("{proto:?}: no reply to a valid request"));
                assert_eq!(reply.request_id(), 7, "{proto:?}");
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            loop {
                let text = handle.metrics_text();
                let buffered = text
                    .lines()
                    .find_map(|l| l.strip_prefix("metaproxy_buffered_bytes "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .unwrap_or(0.0);
                if buffered == 0.0 {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{buffered} bytes still buffered after every session ended"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a panic happened");
    }
}

impl Default for SessionFuzz {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for SessionFuzz {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            self.rt.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(5), server.shutdown()).await;
            });
        }
    }
}

fn registry() -> CodecRegistry {
    let mut r = metaproxy::default_registry();
    r.register(Arc::new(metaproxy_example_kv::KvCodecFactory));
    r
}

fn client_codec(proto: Proto) -> Box<dyn Codec> {
    let options = CodecOptions::new();
    let factory: Box<dyn CodecFactory> = match proto {
        Proto::Dubbo => Box::new(metaproxy::dubbo::DubboCodecFactory),
        Proto::Thrift => Box::new(metaproxy::thrift::ThriftCodecFactory),
        Proto::Kv => Box::new(metaproxy_example_kv::KvCodecFactory),
    };
    factory
        .configure(&options)
        .unwrap()
        .new_codec(&CodecContext {
            side: Side::Upstream,
            max_frame_size: 1 << 24,
            wire: None,
            lazy_metadata: false,
        })
        .unwrap()
}

/// Every byte the proxy sent must decode as replies of the listener's protocol.
fn check_replies(proto: Proto, replies: &mut BytesMut) {
    let mut codec = client_codec(proto);
    loop {
        match codec.decode(replies) {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => panic!("{proto:?}: the proxy sent bytes that do not decode: {e}"),
        }
    }
    assert!(
        replies.is_empty(),
        "{proto:?}: the proxy sent a partial frame ({} bytes)",
        replies.len()
    );
}

/// A valid two-way request with `id` in `proto`.
pub fn valid_request(proto: Proto, id: u64) -> Vec<u8> {
    match proto {
        Proto::Dubbo => metaproxy::dubbo::frames::RequestFrame::new(id, "com.example.Echo", "echo")
            .encode()
            .to_vec(),
        Proto::Thrift => {
            let mut b = BytesMut::new();
            metaproxy::thrift::frames::write_call(
                &metaproxy::thrift::frames::FrameSpec::new(
                    metaproxy::thrift::Transport::Framed,
                    metaproxy::thrift::Protocol::Binary,
                    "echo",
                    id as i32,
                ),
                b"",
                &mut b,
            )
            .unwrap();
            b.to_vec()
        }
        Proto::Kv => {
            metaproxy_example_kv::frames::request(id, &[("service", "echo")], b"body").to_vec()
        }
    }
}

type Responder = fn(&meta_protocol::Message, &mut BytesMut);

async fn echo_backend(factory: Arc<dyn CodecFactory>, respond: Responder) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let protocol: Arc<dyn meta_protocol::ConfiguredProtocol> =
        Arc::from(factory.configure(&CodecOptions::new()).unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let protocol = protocol.clone();
            tokio::spawn(async move {
                let Ok(mut codec) = protocol.new_codec(&CodecContext::downstream(1 << 24)) else {
                    return;
                };
                let mut buf = BytesMut::new();
                loop {
                    match stream.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let mut out = BytesMut::new();
                    loop {
                        match codec.decode(&mut buf) {
                            Ok(Some(m)) => respond(&m, &mut out),
                            Ok(None) => break,
                            Err(_) => return,
                        }
                    }
                    if !out.is_empty() && stream.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}
