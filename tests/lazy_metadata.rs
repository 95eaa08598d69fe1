//! Metadata read on demand. Dubbo codecs decode a request up to its method name and a
//! response up to its type; the rest (arguments, attachments, value) is read only when
//! something needs it. Thrift codecs decode a response up to its status; its name and
//! header-transport headers are read only when something needs them. Routes on an
//! attachment, filters and mutations still see every key; a malformed tail is forwarded
//! as it is when nobody reads it, or answered with an error reply (the connection kept)
//! when something does. Backends and clients are raw sockets on port 0.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use common::hostile::metric_with;
use common::{config, proxy_with_filter};
use metaproxy::filter::*;
use metaproxy::meta_protocol::{
    Codec, Message, MessageKind, MetaStr, ResponseStatus, Side, DEFAULT_MAX_FRAME_SIZE,
};
use metaproxy::thrift::frames::{self as thrift_frames, FrameSpec, Reply};
use metaproxy::thrift::{app_exception, Protocol, ThriftCodec, Transport};
use metaproxy_dubbo::frames::{parse_response, RequestFrame, ResponseFrame};
use metaproxy_dubbo::header::{status, Header, HEADER_LEN};
use metaproxy_dubbo::hessian2::Writer;
use metaproxy_dubbo::DubboCodec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A response with attachments whose map is cut short (the body length still matches).
fn malformed(id: u64) -> Bytes {
    let good = ResponseFrame::string(id, "v")
        .with_attachments(&[("backend", "broken")])
        .encode();
    let mut bad = BytesMut::from(&good[..good.len() - 1]);
    let body_len = (bad.len() - HEADER_LEN) as u32;
    bad[12..16].copy_from_slice(&body_len.to_be_bytes());
    bad.freeze()
}

/// A request whose parameter types are not a descriptor (past the method name).
fn malformed_request(id: u64) -> Bytes {
    let mut b = BytesMut::new();
    Header {
        flags: 0xc2,
        status: 0,
        id,
        body_len: 0,
    }
    .write(&mut b);
    Writer::new(&mut b)
        .write_string("2.0.2")
        .write_string("com.example.Echo")
        .write_string("1.0")
        .write_string("hello")
        .write_string("Lbroken");
    let len = (b.len() - HEADER_LEN) as u32;
    b[12..16].copy_from_slice(&len.to_be_bytes());
    b.freeze()
}

/// A Dubbo backend answering each request with its string attachments and
/// `backend=name`; a request whose method is `broken` gets [`malformed`] instead.
async fn backend(name: &'static str) -> SocketAddr {
    codec_backend(
        || DubboCodec::new(Side::Downstream, DEFAULT_MAX_FRAME_SIZE),
        move |req| {
            if req.metadata().get("method") == Some("broken") {
                malformed(req.request_id())
            } else {
                let mut att: Vec<(&str, &str)> = req.metadata().iter().collect();
                att.push(("backend", name));
                ResponseFrame::string(req.request_id(), "ok")
                    .with_attachments(&att)
                    .encode()
            }
        },
    )
    .await
}

/// A backend that decodes requests with a `codec()` per connection and writes
/// `answer(request)` for each; it closes a connection that sends a frame it cannot
/// decode.
async fn codec_backend<C, A>(codec: fn() -> C, answer: A) -> SocketAddr
where
    C: Codec + Send + 'static,
    A: Fn(&Message) -> Bytes + Clone + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut codec = codec();
                let mut buf = BytesMut::new();
                loop {
                    loop {
                        let req = match codec.decode(&mut buf) {
                            Ok(Some(req)) => req,
                            Ok(None) => break,
                            Err(_) => return,
                        };
                        if s.write_all(&answer(&req)).await.is_err() {
                            return;
                        }
                    }
                    match s.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    addr
}

/// One whole Dubbo frame from `s`, as bytes.
async fn read_frame(s: &mut TcpStream) -> Bytes {
    let mut head = [0u8; HEADER_LEN];
    s.read_exact(&mut head).await.unwrap();
    let len = u32::from_be_bytes(head[12..16].try_into().unwrap()) as usize;
    let mut frame = vec![0u8; HEADER_LEN + len];
    frame[..HEADER_LEN].copy_from_slice(&head);
    s.read_exact(&mut frame[HEADER_LEN..]).await.unwrap();
    Bytes::from(frame)
}

/// A client connection to `listener`.
async fn connect(p: &metaproxy::RunningServer, listener: &str) -> TcpStream {
    TcpStream::connect(p.local_addr(listener).unwrap())
        .await
        .unwrap()
}

async fn call(s: &mut TcpStream, id: u64, method: &str) -> Bytes {
    let req = RequestFrame::new(id, "com.example.Echo", method).encode();
    send(s, id, &req).await
}

/// Writes the request frame `req` (request id `id`) and reads its answer.
async fn send(s: &mut TcpStream, id: u64, req: &[u8]) -> Bytes {
    s.write_all(req).await.unwrap();
    let frame = read_frame(s).await;
    assert_eq!(
        u64::from_be_bytes(frame[4..12].try_into().unwrap()),
        id,
        "answers in order, with the client's id"
    );
    frame
}

fn attachment(frame: &Bytes, key: &str) -> Option<String> {
    parse_response(frame)
        .unwrap()
        .attachments
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// Copies the response's `backend` attachment into `seen-backend`.
struct Echoer;

impl Filter for Echoer {
    fn on_response(&self, response: &mut FilterResponse<'_>) {
        let seen = response
            .metadata()
            .get("backend")
            .unwrap_or("none")
            .to_owned();
        response.push_mutation("seen-backend".into(), MetaStr::from(seen));
    }
}

struct EchoerFactory;

impl FilterFactory for EchoerFactory {
    fn name(&self) -> &str {
        "echoer"
    }

    fn build(
        &self,
        _config: &serde_json::Value,
        _ctx: &FilterContext<'_>,
    ) -> Result<Arc<dyn Filter>, Vec<FilterConfigError>> {
        Ok(Arc::new(Echoer))
    }
}

const CONFIG: &str = r#"
listeners:
  - {name: plain, address: "127.0.0.1:0", codec: dubbo, route_config: plain}
  - {name: mutating, address: "127.0.0.1:0", codec: dubbo, route_config: mutating}
  - {name: filtered, address: "127.0.0.1:0", codec: dubbo, route_config: plain, filters: [{name: echoer}]}
  - {name: by-user, address: "127.0.0.1:0", codec: dubbo, route_config: by-user}
  - {name: thrift-plain, address: "127.0.0.1:0", codec: thrift, route_config: thrift-plain}
  - {name: thrift-mutating, address: "127.0.0.1:0", codec: thrift, route_config: thrift-mutating}
  - {name: thrift-filtered, address: "127.0.0.1:0", codec: thrift, route_config: thrift-plain, filters: [{name: echoer}]}
route_configs:
  - name: plain
    routes:
      - route: {cluster: v1}
  - name: mutating
    routes:
      - route: {cluster: v1}
        request_mutation: [{key: via-request, value: metaproxy}]
        response_mutation: [{key: via, value: metaproxy}]
  - name: by-user
    routes:
      - match: {metadata: [{key: user, exact: alice}]}
        route: {cluster: v1}
  - name: thrift-plain
    routes:
      - route: {cluster: t1}
  - name: thrift-mutating
    routes:
      - route: {cluster: t1}
        response_mutation: [{key: via, value: metaproxy}]
clusters:
  - {name: v1, endpoints: ["{v1}"]}
  - {name: t1, endpoints: ["{t1}"]}
"#;

async fn start() -> metaproxy::RunningServer {
    let v1 = backend("v1").await;
    let t1 = thrift_backend().await;
    let config = config(CONFIG, &[("v1", v1), ("t1", t1)]);
    proxy_with_filter(config, Arc::new(EchoerFactory)).await
}

#[tokio::test]
async fn filters_and_mutations_see_the_attachments_of_responses_read_on_demand() {
    let p = start().await;
    let mut plain = connect(&p, "plain").await;
    let r = call(&mut plain, 1, "hello").await;
    assert_eq!(attachment(&r, "backend").as_deref(), Some("v1"));
    assert_eq!(attachment(&r, "seen-backend"), None);

    let mut filtered = connect(&p, "filtered").await;
    let r = call(&mut filtered, 2, "hello").await;
    assert_eq!(
        attachment(&r, "seen-backend").as_deref(),
        Some("v1"),
        "the filter read the response's attachments"
    );
    assert_eq!(attachment(&r, "backend").as_deref(), Some("v1"));

    let mut mutating = connect(&p, "mutating").await;
    let r = call(&mut mutating, 3, "hello").await;
    assert_eq!(attachment(&r, "via").as_deref(), Some("metaproxy"));
    assert_eq!(attachment(&r, "backend").as_deref(), Some("v1"));
    assert_eq!(
        attachment(&r, "via-request").as_deref(),
        Some("metaproxy"),
        "the request mutation reached the backend (which echoes attachments)"
    );
}

fn request_as(id: u64, user: &str) -> Bytes {
    RequestFrame {
        attachments: &[("user", user)],
        ..RequestFrame::new(id, "com.example.Echo", "hello")
    }
    .encode()
}

#[tokio::test]
async fn a_route_on_an_attachment_reads_the_attachments() {
    let p = start().await;
    let mut c = connect(&p, "by-user").await;
    let r = send(&mut c, 1, &request_as(1, "alice")).await;
    assert_eq!(r[3], status::OK);
    assert_eq!(attachment(&r, "user").as_deref(), Some("alice"));
    let r = send(&mut c, 2, &request_as(2, "bob")).await;
    assert_eq!(r[3], status::SERVICE_NOT_FOUND, "no route for bob");
}

#[tokio::test]
async fn a_malformed_request_tail_is_forwarded_unless_read_then_answered_with_bad_request() {
    let p = start().await;
    // Routed on the interface alone: forwarded as it is; the backend cannot read it
    // and closes, so the request fails upstream. The client's connection stays.
    let mut plain = connect(&p, "plain").await;
    let r = send(&mut plain, 4, &malformed_request(4)).await;
    assert_eq!(r[3], status::SERVER_ERROR);
    let r = call(&mut plain, 5, "hello").await;
    assert_eq!(attachment(&r, "backend").as_deref(), Some("v1"));

    // Routed on an attachment: the proxy reads the tail itself and answers.
    let mut by_user = connect(&p, "by-user").await;
    let r = send(&mut by_user, 6, &malformed_request(6)).await;
    assert_eq!(r[3], status::BAD_REQUEST);
    let text = parse_response(&r).unwrap().error.unwrap_or_default();
    assert!(text.contains("parameter types"), "{text}");
    let r = send(&mut by_user, 7, &request_as(7, "alice")).await;
    assert_eq!(r[3], status::OK, "the connection goes on");
}

#[tokio::test]
async fn a_malformed_response_body_is_forwarded_unless_read_then_answered_with_an_error() {
    let p = start().await;
    // Nobody reads the body: it goes to the client as the backend wrote it (id aside).
    let mut plain = connect(&p, "plain").await;
    let r = call(&mut plain, 7, "broken").await;
    assert_eq!(&r[12..], &malformed(7)[12..]);
    assert_eq!(r[3], status::OK);

    // A filter reads it: that request gets an error reply, the connection goes on.
    let mut filtered = connect(&p, "filtered").await;
    let r = call(&mut filtered, 8, "broken").await;
    assert_eq!(r[3], status::SERVER_ERROR, "a local reply");
    let text = parse_response(&r).unwrap().error.unwrap_or_default();
    assert!(text.contains("could not be decoded"), "{text}");
    // A failure of the endpoint for outlier detection (the unread one before it was a
    // success, and so is the next good answer).
    let clusters = p.handle().clusters_json();
    let v1 = clusters
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "v1"))
        .expect("cluster v1");
    assert_eq!(v1["endpoints"][0]["consecutive_failures"].as_u64(), Some(1));
    let r = call(&mut filtered, 9, "hello").await;
    assert_eq!(attachment(&r, "seen-backend").as_deref(), Some("v1"));

    // The garbage read is the backend's error, not a success: counted as such (and
    // as a failure for outlier detection); the one nobody read was forwarded as an
    // ordinary answer.
    let responses = |listener: &str, status: &str| {
        let (listener, status) = (
            format!("listener=\"{listener}\""),
            format!("status=\"{status}\""),
        );
        metric_with(
            &p.handle().metrics_text(),
            "metaproxy_responses_total",
            &[&listener, &status],
        )
    };
    assert_eq!(responses("filtered", "error"), 1.0);
    assert_eq!(responses("filtered", "ok"), 1.0, "only the good one");
    assert_eq!(responses("plain", "ok"), 1.0);
}

/// A Thrift reply (header transport, binary protocol) to call `name` with id `seqid`,
/// carrying the header `backend=t1`; for `broken`, a reply whose name is not UTF-8.
fn thrift_reply(name: &str, seqid: i32) -> Bytes {
    let headers = [("backend", "t1")];
    let mut b = BytesMut::new();
    if name == "broken" {
        let spec = FrameSpec::new(Transport::Header, Protocol::Binary, "brok\u{e9}n", seqid)
            .with_headers(&headers);
        thrift_frames::write_reply(&spec, b"ok", &mut b).unwrap();
        let at = b.iter().position(|&x| x == 0xc3).unwrap();
        b[at] = 0xff;
    } else {
        let spec =
            FrameSpec::new(Transport::Header, Protocol::Binary, name, seqid).with_headers(&headers);
        thrift_frames::write_reply(&spec, b"ok", &mut b).unwrap();
    }
    b.freeze()
}

/// A Thrift backend answering each call with [`thrift_reply`].
async fn thrift_backend() -> SocketAddr {
    codec_backend(
        || ThriftCodec::new(None, None, DEFAULT_MAX_FRAME_SIZE),
        |call| thrift_reply(call.name(), call.request_id() as i32),
    )
    .await
}

/// Calls `name` with id `seqid` over the header transport and returns the whole reply
/// frame, as bytes.
async fn thrift_send(s: &mut TcpStream, name: &str, seqid: i32) -> Bytes {
    let mut call = BytesMut::new();
    let spec = FrameSpec::new(Transport::Header, Protocol::Binary, name, seqid)
        .with_headers(&[("tenant", "acme")]);
    thrift_frames::write_call(&spec, b"payload", &mut call).unwrap();
    s.write_all(&call).await.unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.unwrap();
    let mut frame = vec![0u8; 4 + u32::from_be_bytes(len) as usize];
    frame[..4].copy_from_slice(&len);
    s.read_exact(&mut frame[4..]).await.unwrap();
    Bytes::from(frame)
}

/// [`thrift_send`], the reply decoded by a client's codec.
async fn thrift_call(s: &mut TcpStream, name: &str, seqid: i32) -> Message {
    let frame = thrift_send(s, name, seqid).await;
    let mut client = ThriftCodec::new(Some(Transport::Header), Some(Protocol::Binary), 1 << 20);
    let reply = client
        .decode(&mut BytesMut::from(&frame[..]))
        .unwrap()
        .unwrap();
    assert_eq!(reply.kind(), MessageKind::Response);
    assert_eq!(reply.request_id(), seqid as u64, "the client's id");
    reply
}

#[tokio::test]
async fn filters_and_mutations_see_the_headers_of_thrift_responses_read_on_demand() {
    let p = start().await;
    let mut plain = connect(&p, "thrift-plain").await;
    let r = thrift_call(&mut plain, "Echo:ping", 1).await;
    assert_eq!(&**r.name(), "Echo:ping");
    assert_eq!(r.metadata().get("backend"), Some("t1"));
    assert_eq!(r.metadata().get("seen-backend"), None);

    let mut filtered = connect(&p, "thrift-filtered").await;
    let r = thrift_call(&mut filtered, "Echo:ping", 2).await;
    assert_eq!(
        r.metadata().get("seen-backend"),
        Some("t1"),
        "the filter read the response's headers"
    );
    assert_eq!(r.metadata().get("backend"), Some("t1"));
    assert_eq!(&**r.name(), "Echo:ping");

    let mut mutating = connect(&p, "thrift-mutating").await;
    let r = thrift_call(&mut mutating, "Echo:ping", 3).await;
    assert_eq!(r.metadata().get("via"), Some("metaproxy"));
    assert_eq!(r.metadata().get("backend"), Some("t1"));
    assert_eq!(r.metadata().get("method"), Some("ping"));
    assert_eq!(r.status(), ResponseStatus::Ok);
}

#[tokio::test]
async fn a_thrift_response_with_a_bad_name_is_forwarded_unless_read_then_answered_with_an_error() {
    let p = start().await;
    // Nobody reads the name: the reply goes to the client as the backend wrote it (with
    // the client's id, which is the one it was built with here).
    let mut plain = connect(&p, "thrift-plain").await;
    let r = thrift_send(&mut plain, "broken", 7).await;
    assert_eq!(r, thrift_reply("broken", 7));

    // A mutation or a filter reads it: that call gets an application exception, and the
    // connection goes on.
    for listener in ["thrift-mutating", "thrift-filtered"] {
        let mut c = connect(&p, listener).await;
        let r = thrift_call(&mut c, "broken", 8).await;
        assert_eq!(
            r.status(),
            ResponseStatus::Error,
            "{listener}: a local reply"
        );
        match thrift_frames::read_reply(&r).unwrap() {
            Reply::AppException { kind, message } => {
                assert_eq!(kind, app_exception::INTERNAL_ERROR, "{listener}");
                assert!(message.contains("could not be decoded"), "{message}");
            }
            other => panic!("{listener}: {other:?}"),
        }
        assert_eq!(&**r.name(), "broken", "answers the call by its name");
        let r = thrift_call(&mut c, "Echo:ping", 9).await;
        assert_eq!(r.metadata().get("backend"), Some("t1"), "{listener}");
    }
}
