//! A kv echo backend and a kv client on loopback, shared by the runtime's and the xDS
//! crate's tests (which include this file by path): they need only the kv example codec
//! and tokio.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use meta_protocol::{Codec, Message, MessageKind};
use metaproxy_example_kv::{frames, KvCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Headers of each request a backend received, in arrival order.
pub type Seen = Arc<Mutex<Vec<Vec<(String, String)>>>>;

/// A kv backend that echoes request bodies and records what it received.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub received: Arc<AtomicUsize>,
    pub one_way: Arc<AtomicUsize>,
    pub seen: Seen,
    pub connections: Arc<AtomicUsize>,
    /// The most requests ever awaiting a reply on one connection at once.
    pub max_in_flight_per_connection: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }

    /// Stops accepting and closes the listening socket (existing connections end too).
    pub fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a backend named `name`. Requests with a `sleep-ms` header are answered late;
/// the response carries `backend: <name>` and echoes the body.
pub async fn backend(name: &str) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let one_way = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    let m = max_in_flight.clone();
    let (r, o, s, c, n) = (
        received.clone(),
        one_way.clone(),
        seen.clone(),
        connections.clone(),
        name.to_owned(),
    );
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let (r, o, s, n, m) = (r.clone(), o.clone(), s.clone(), n.clone(), m.clone());
            conns.spawn(serve_backend(stream, n, r, o, s, m));
        }
    });
    Backend {
        addr,
        name: name.to_owned(),
        received,
        one_way,
        seen,
        connections,
        max_in_flight_per_connection: max_in_flight,
        task,
    }
}

async fn serve_backend(
    stream: TcpStream,
    name: String,
    received: Arc<AtomicUsize>,
    one_way: Arc<AtomicUsize>,
    seen: Seen,
    max_in_flight: Arc<AtomicUsize>,
) {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let _ = stream.set_nodelay(true);
    let (mut rd, wr) = stream.into_split();
    let wr = Arc::new(tokio::sync::Mutex::new(wr));
    let mut codec = KvCodec::new(64 << 20);
    let mut buf = BytesMut::with_capacity(8192);
    loop {
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut out = BytesMut::new();
        while let Ok(Some(msg)) = codec.decode(&mut buf) {
            let headers: Vec<(String, String)> = msg
                .metadata()
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            seen.lock().unwrap().push(headers);
            match msg.kind() {
                MessageKind::OneWay => {
                    one_way.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                MessageKind::Request => {}
                _ => continue,
            }
            received.fetch_add(1, Ordering::SeqCst);
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            max_in_flight.fetch_max(now, Ordering::SeqCst);
            let reply = frames::response(
                msg.request_id(),
                0,
                &[("backend", &name)],
                frames::body(&msg),
            );
            match msg
                .metadata()
                .get("sleep-ms")
                .and_then(|v| v.parse::<u64>().ok())
            {
                Some(ms) => {
                    let (wr, in_flight) = (wr.clone(), in_flight.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        let _ = wr.lock().await.write_all(&reply).await;
                    });
                }
                None => {
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    out.extend_from_slice(&reply);
                }
            }
        }
        if !out.is_empty() && wr.lock().await.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// A kv client over one connection.
pub struct Client {
    pub stream: TcpStream,
    codec: KvCodec,
    buf: BytesMut,
    next_id: u64,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            codec: KvCodec::new(64 << 20),
            buf: BytesMut::new(),
            next_id: 1,
        }
    }

    /// Sends a request and returns its id.
    pub async fn send(&mut self, headers: &[(&str, &str)], body: &[u8]) -> u64 {
        self.try_send(headers, body)
            .await
            .expect("the request is written to the proxy")
    }

    /// Like [`Client::send`], or None when the connection is gone.
    pub async fn try_send(&mut self, headers: &[(&str, &str)], body: &[u8]) -> Option<u64> {
        let id = self.next_id;
        self.next_id += 1;
        self.stream
            .write_all(&frames::request(id, headers, body))
            .await
            .ok()?;
        Some(id)
    }

    /// Reads the next message, or None when the connection closes.
    pub async fn recv(&mut self) -> Option<Message> {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(m)) => return Some(m),
                Ok(None) => {}
                Err(e) => panic!("bad frame from proxy: {e}"),
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads with a deadline.
    pub async fn recv_timeout(&mut self, d: Duration) -> Option<Message> {
        tokio::time::timeout(d, self.recv())
            .await
            .expect("timed out waiting for a reply")
    }

    /// One request, one reply.
    pub async fn call(&mut self, headers: &[(&str, &str)], body: &[u8]) -> Message {
        let id = self.send(headers, body).await;
        let m = self
            .recv_timeout(Duration::from_secs(10))
            .await
            .expect("connection closed");
        assert_eq!(m.request_id(), id);
        m
    }
}
