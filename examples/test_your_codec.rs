//! The program a codec author writes to test a codec end to end: the config built in
//! code, the proxy and two backends on ephemeral ports, traffic through the proxy, and
//! every answer checked. Here the codec is the `kv` example protocol; replace
//! `KvCodecFactory`, the request frames and the reply checks with your own.
//!
//! ```sh
//! cargo run --example test_your_codec     # prints what it checked
//! cargo test --example test_your_codec    # the same, as a test
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use metaproxy::config::{
    ClusterConfig, Config, ListenerConfig, MetadataMatch, RouteConfig, RouteEntry, RouteMatch,
};
use metaproxy::meta_protocol::{Codec, CodecOptions, Message, MessageKind};
use metaproxy_cli::backend::{self, Backend, Responder};
use metaproxy_example_kv::{frames, KvCodec, KvCodecFactory};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Requests sent through the proxy.
const REQUESTS: u64 = 200;

/// What the run saw, for `main` to print and the test to check.
#[derive(Debug)]
struct Outcome {
    answered_by_v1: u64,
    answered_by_v2: u64,
    no_route_status: u8,
}

/// A backend of the codec under test that echoes each body and names itself.
async fn kv_backend(name: &'static str) -> std::io::Result<Backend> {
    let responder: Responder = Arc::new(move |req: &Message, out: &mut BytesMut| {
        if req.kind() == MessageKind::Request {
            let reply =
                frames::response(req.request_id(), 0, &[("backend", name)], frames::body(req));
            out.extend_from_slice(&reply);
        }
    });
    backend::spawn(
        "127.0.0.1:0".parse().expect("loopback"),
        Arc::new(KvCodecFactory),
        CodecOptions::new(),
        responder,
    )
    .await
}

/// Every `calc` request goes to v1, except those with a `user` header, which go to v2;
/// anything else matches no route.
fn config(v1: SocketAddr, v2: SocketAddr) -> Config {
    let mut beta = RouteEntry::to_cluster("beta-users", "v2");
    beta.match_ = RouteMatch {
        metadata: vec![
            MetadataMatch::exact("service", "calc"),
            MetadataMatch::present("user"),
        ],
    };
    let mut calc = RouteEntry::to_cluster("calc", "v1");
    calc.match_ = RouteMatch {
        metadata: vec![MetadataMatch::exact("service", "calc")],
    };
    Config {
        listeners: vec![ListenerConfig::new(
            "kv-in",
            "127.0.0.1:0",
            "kv",
            "kv-routes",
        )],
        route_configs: vec![RouteConfig::new("kv-routes", vec![beta, calc])],
        clusters: vec![
            ClusterConfig::new("v1", [v1.to_string()]),
            ClusterConfig::new("v2", [v2.to_string()]),
        ],
        ..Config::default()
    }
}

/// Sends one request and reads its reply with the codec under test.
async fn call(
    stream: &mut TcpStream,
    codec: &mut KvCodec,
    buf: &mut BytesMut,
    id: u64,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Message, Box<dyn std::error::Error>> {
    stream
        .write_all(&frames::request(id, headers, body))
        .await?;
    loop {
        if let Some(reply) = codec.decode(buf)? {
            if reply.request_id() != id {
                return Err(format!("reply {} to request {id}", reply.request_id()).into());
            }
            return Ok(reply);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err("the proxy closed the connection".into());
        }
    }
}

async fn run() -> Result<Outcome, Box<dyn std::error::Error>> {
    let (v1, v2) = (kv_backend("v1").await?, kv_backend("v2").await?);
    let mut codecs = metaproxy::default_registry();
    codecs.register(Arc::new(KvCodecFactory));
    let running = metaproxy::Server::new(config(v1.addr(), v2.addr()), codecs)?
        .bind()
        .await?;
    let proxy = running
        .local_addr("kv-in")
        .ok_or("listener kv-in not bound")?;

    let mut stream = TcpStream::connect(proxy).await?;
    let mut codec = KvCodec::new(1 << 20);
    let mut buf = BytesMut::new();
    let (mut by_v1, mut by_v2) = (0, 0);
    for id in 1..=REQUESTS {
        let body = format!("request {id}");
        let beta = id % 4 == 0;
        let headers: &[(&str, &str)] = if beta {
            &[("service", "calc"), ("user", "alice")]
        } else {
            &[("service", "calc")]
        };
        let reply = call(
            &mut stream,
            &mut codec,
            &mut buf,
            id,
            headers,
            body.as_bytes(),
        )
        .await?;
        if frames::status(&reply) != 0 || frames::body(&reply) != body.as_bytes() {
            return Err(format!("request {id}: wrong reply {reply:?}").into());
        }
        match (reply.metadata().get("backend"), beta) {
            (Some("v1"), false) => by_v1 += 1,
            (Some("v2"), true) => by_v2 += 1,
            (other, _) => return Err(format!("request {id} answered by {other:?}").into()),
        }
    }
    // No route: the codec's own error reply, not silence.
    let reply = call(
        &mut stream,
        &mut codec,
        &mut buf,
        9_999,
        &[("service", "nope")],
        b"",
    )
    .await?;
    let no_route_status = frames::status(&reply);

    // A protocol without a go-away keeps its connections while the proxy drains (closing
    // one between two requests would fail the client's next one): the client closes.
    drop(stream);
    let drained = tokio::time::timeout(Duration::from_secs(5), running.shutdown()).await?;
    if !drained {
        return Err("the proxy did not drain".into());
    }
    if v1.stats().requests() != by_v1 || v2.stats().requests() != by_v2 {
        return Err("backends saw other counts than the client".into());
    }
    Ok(Outcome {
        answered_by_v1: by_v1,
        answered_by_v2: by_v2,
        no_route_status,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let outcome = run().await?;
    println!(
        "{REQUESTS} requests: {} by v1, {} by v2 (user header); no route answered with status {}",
        outcome.answered_by_v1, outcome.answered_by_v2, outcome.no_route_status
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use metaproxy_example_kv::Status;

    #[tokio::test]
    async fn routes_and_answers_every_request() {
        let outcome = run().await.expect("every request answered correctly");
        assert_eq!(outcome.answered_by_v2, REQUESTS / 4);
        assert_eq!(outcome.answered_by_v1, REQUESTS - REQUESTS / 4);
        assert_eq!(outcome.no_route_status, Status::NoRoute as u8);
    }
}
