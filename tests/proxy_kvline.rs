//! A delimiter-framed protocol through the runtime: the `kvline` example codec (one
//! frame per text line, decimal ids of any length) routed, rewritten, mutated and
//! answered locally, with a backend and the proxy in-process on port 0.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use meta_protocol::{Codec, MessageKind};
use metaproxy_example_kv::line::LineCodec;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const CONFIG: &str = r#"
listeners:
  - {name: line-in, address: "127.0.0.1:0", codec: kvline, route_config: r, max_frame_size: 1024}
route_configs:
  - name: r
    routes:
      - name: calc
        match: {metadata: [{key: service, exact: calc}]}
        route: {cluster: b}
        request_mutation: [{key: x-route, value: beta}]
        response_mutation: [{key: x-proxy, value: metaproxy}]
clusters:
  - {name: b, endpoints: ["{b}"]}
"#;

/// Ids and `key=value` pairs of the requests a backend received.
type Seen = Arc<Mutex<Vec<(u64, Vec<(String, String)>)>>>;

/// A kvline backend answering `< <id> ok method=<method>` to every request.
async fn backend() -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Seen::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut codec = LineCodec::new(1 << 20);
                let mut buf = BytesMut::new();
                while matches!(stream.read_buf(&mut buf).await, Ok(n) if n > 0) {
                    let mut out = Vec::new();
                    while let Ok(Some(msg)) = codec.decode(&mut buf) {
                        if msg.kind() != MessageKind::Request {
                            continue;
                        }
                        let pairs = msg
                            .metadata()
                            .iter()
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                            .collect();
                        record.lock().unwrap().push((msg.request_id(), pairs));
                        let method = msg.metadata().get("method").unwrap_or("");
                        let line = format!("< {} ok method={method}\n", msg.request_id());
                        out.extend_from_slice(line.as_bytes());
                    }
                    if stream.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

async fn setup() -> (metaproxy::RunningServer, Seen) {
    let (b, seen) = backend().await;
    (common::proxy(CONFIG, &[("b", b)]).await, seen)
}

async fn read_line(reader: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
        .await
        .expect("a reply in time")
        .unwrap();
    line
}

#[tokio::test]
async fn lines_are_routed_with_rewritten_ids_and_mutations() {
    let (p, seen) = setup().await;
    let stream = TcpStream::connect(p.local_addr("line-in").unwrap())
        .await
        .unwrap();
    let mut reader = BufReader::new(stream);
    // An id far beyond 32 bits, in two writes split inside the line.
    reader
        .get_mut()
        .write_all(b"> 12345678901234 add serv")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    reader.get_mut().write_all(b"ice=calc\n").await.unwrap();
    assert_eq!(
        read_line(&mut reader).await,
        "< 12345678901234 ok method=add x-proxy=metaproxy\n"
    );
    let (upstream_id, pairs) = seen.lock().unwrap()[0].clone();
    assert!(upstream_id < 1 << 31, "the upstream id is rewritten");
    assert!(
        pairs.contains(&("x-route".into(), "beta".into())),
        "{pairs:?}"
    );
    assert!(
        pairs.contains(&("service".into(), "calc".into())),
        "{pairs:?}"
    );

    // Pipelined requests with ids of different lengths come back with their own ids.
    reader
        .get_mut()
        .write_all(b"> 1 a service=calc\n> 22 b service=calc\n> 333 c service=calc\n")
        .await
        .unwrap();
    let mut replies = Vec::new();
    for _ in 0..3 {
        replies.push(read_line(&mut reader).await);
    }
    replies.sort();
    assert_eq!(
        replies,
        [
            "< 1 ok method=a x-proxy=metaproxy\n",
            "< 22 ok method=b x-proxy=metaproxy\n",
            "< 333 ok method=c x-proxy=metaproxy\n",
        ]
    );
}

#[tokio::test]
async fn no_route_is_answered_with_an_escaped_message() {
    let (p, _seen) = setup().await;
    let stream = TcpStream::connect(p.local_addr("line-in").unwrap())
        .await
        .unwrap();
    let mut reader = BufReader::new(stream);
    reader
        .get_mut()
        .write_all(b"> 5 nothing service=none\n")
        .await
        .unwrap();
    let line = read_line(&mut reader).await;
    assert!(
        line.starts_with("< 5 no_route message=metaproxy:%20no%20route%20matched"),
        "{line:?}"
    );
    // Four tokens: the message's spaces are escaped, so the line still parses.
    assert_eq!(line.trim_end().split(' ').count(), 4, "{line:?}");
    // A one-way call to nowhere is not answered: the next reply is the two-way call's.
    reader
        .get_mut()
        .write_all(b"! 6 nothing\n> 7 add service=calc\n")
        .await
        .unwrap();
    assert_eq!(
        read_line(&mut reader).await,
        "< 7 ok method=add x-proxy=metaproxy\n"
    );
}

#[tokio::test]
async fn a_line_longer_than_max_frame_size_closes_the_connection() {
    let (p, _seen) = setup().await;
    let mut stream = TcpStream::connect(p.local_addr("line-in").unwrap())
        .await
        .unwrap();
    // 2 KiB without a newline, over the listener's 1 KiB limit.
    let _ = stream.write_all(&[b'x'; 2048]).await;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the proxy closes the connection");
    assert!(rest.is_empty(), "no reply: the line had no id yet");
    let metrics = p.handle().metrics_text();
    assert!(
        metrics.contains("metaproxy_decode_errors_total{listener=\"line-in\"} 1"),
        "{metrics}"
    );
}
