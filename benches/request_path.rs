//! The proxy's full per-request work in memory, without sockets, per protocol and
//! payload size (128 B and 4 KiB).
//!
//! One iteration measures: copying the client's request bytes into a read buffer (what
//! a socket read does), decoding the request with the downstream codec (metadata
//! extraction), `RouteTable::route` on its metadata (a two-route table: a metadata
//! match with a weighted 90/10 split, then a catch-all), `Route::pick_cluster`, the
//! cluster's `LoadBalancer::pick` (round robin over 3 endpoints), applying the route's
//! request mutations (Dubbo and THeader only), encoding upstream with the request id
//! rewritten, then copying the backend's echo reply into a read buffer, decoding it with
//! the upstream codec, restoring the client's id and encoding it downstream. It excludes
//! syscalls, task scheduling, timers and the pending-request table.

use std::hint::black_box;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use meta_protocol::{Codec, CodecContext, CodecFactory, CodecOptions, Side};
use metaproxy::router::{
    AllAvailable, EndpointSpec, LbPolicy, LoadBalancer, MatchKind, MatcherSpec, RouteConfigSpec,
    RouteSpec, RouteTable, TargetSpec,
};
use metaproxy_cli::backend::{self, Responder};
use metaproxy_dubbo::frames::{Args, RequestFrame};
use metaproxy_thrift::frames::{self, FrameSpec};
use metaproxy_thrift::{Protocol, Transport};
use rand::rngs::SmallRng;
use rand::SeedableRng;

struct Case {
    name: &'static str,
    factory: Arc<dyn CodecFactory>,
    responder: Responder,
    /// The client's request frame.
    request: fn(usize) -> Bytes,
    /// The metadata condition of the canary route.
    matcher: MatcherSpec,
    mutations: bool,
}

fn dubbo_request(payload: usize) -> Bytes {
    RequestFrame {
        attachments: &[("user", "alice")],
        args: Args::Binary(payload),
        ..RequestFrame::new(7, "org.apache.dubbo.bench.EchoService", "echo")
    }
    .encode()
}

fn thrift_request(t: Transport, p: Protocol, payload: usize) -> Bytes {
    let mut b = BytesMut::new();
    let spec = FrameSpec::new(t, p, "echo", 7).with_headers(&[("user", "alice")]);
    frames::write_call(&spec, &vec![b'x'; payload], &mut b).expect("small frame");
    b.freeze()
}

fn table(matcher: &MatcherSpec, mutations: bool) -> RouteTable {
    let mut canary = RouteSpec::new("canary", "v1");
    canary.matchers = vec![matcher.clone()];
    canary.target = TargetSpec::Weighted(vec![("v1".into(), 90), ("v2".into(), 10)]);
    if mutations {
        canary.request_mutation = vec![("x-route".into(), "canary".into())];
    }
    RouteTable::compile(&RouteConfigSpec {
        name: "bench".into(),
        routes: vec![canary, RouteSpec::new("default", "v1")],
    })
    .expect("valid table")
}

fn codec(
    f: &Arc<dyn CodecFactory>,
    side: Side,
    wire: Option<meta_protocol::WireFormat>,
) -> Box<dyn Codec> {
    let ctx = CodecContext {
        side,
        max_frame_size: meta_protocol::DEFAULT_MAX_FRAME_SIZE,
        wire,
    };
    f.configure(&CodecOptions::new())
        .and_then(|protocol| protocol.new_codec(&ctx))
        .expect("codec")
}

fn bench(c: &mut Criterion) {
    let cases = [
        Case {
            name: "dubbo",
            factory: backend::dubbo_factory(),
            responder: backend::dubbo_echo("v1"),
            request: dubbo_request,
            matcher: MatcherSpec::new(
                "interface",
                MatchKind::Exact("org.apache.dubbo.bench.EchoService".into()),
            ),
            mutations: true,
        },
        Case {
            name: "thrift_framed_binary",
            factory: backend::thrift_factory(),
            responder: backend::thrift_echo(),
            request: |n| thrift_request(Transport::Framed, Protocol::Binary, n),
            matcher: MatcherSpec::new("method", MatchKind::Exact("echo".into())),
            mutations: false,
        },
        Case {
            name: "thrift_header_compact",
            factory: backend::thrift_factory(),
            responder: backend::thrift_echo(),
            request: |n| thrift_request(Transport::Header, Protocol::Compact, n),
            matcher: MatcherSpec::new("user", MatchKind::Present),
            mutations: true,
        },
    ];
    let mut group = c.benchmark_group("request_path");
    group.measurement_time(std::time::Duration::from_secs(3));
    group.warm_up_time(std::time::Duration::from_secs(1));
    for case in &cases {
        for payload in [128usize, 4096] {
            let request = (case.request)(payload);
            let table = table(&case.matcher, case.mutations);
            let endpoints: Vec<EndpointSpec> = (0..3)
                .map(|i| EndpointSpec::new(format!("127.0.0.1:{}", 20880 + i), 1))
                .collect();
            let lbs: Vec<LoadBalancer> = table
                .clusters()
                .iter()
                .map(|_| LoadBalancer::new(LbPolicy::RoundRobin, &endpoints).expect("lb"))
                .collect();
            let mut downstream = codec(&case.factory, Side::Downstream, None);
            // The backend's reply to the forwarded request, built once by the echo
            // backend's own code.
            let upstream_id = 1_000_003u64;
            let mut src = BytesMut::from(&request[..]);
            let mut first = downstream
                .decode(&mut src)
                .expect("decodes")
                .expect("whole");
            let wire = first.wire();
            let mut upstream = codec(&case.factory, Side::Upstream, Some(wire));
            first.set_request_id(upstream_id);
            let mut fwd = BytesMut::new();
            upstream.encode(&first, &mut fwd).expect("encodes");
            let mut backend_codec = codec(&case.factory, Side::Downstream, None);
            let at_backend = backend_codec
                .decode(&mut fwd)
                .expect("decodes")
                .expect("whole");
            let mut reply = BytesMut::new();
            (case.responder)(&at_backend, &mut reply);
            let reply = reply.freeze();
            assert!(!reply.is_empty(), "{}: the echo backend answers", case.name);

            let mut rng = SmallRng::seed_from_u64(1);
            let mut rbuf = BytesMut::with_capacity(64 * 1024);
            let mut wbuf = BytesMut::with_capacity(64 * 1024);
            group.throughput(Throughput::Bytes((request.len() + reply.len()) as u64));
            group.bench_function(BenchmarkId::new(case.name, payload), |b| {
                b.iter(|| {
                    // Downstream read + decode.
                    rbuf.extend_from_slice(&request);
                    let mut msg = downstream
                        .decode(&mut rbuf)
                        .expect("request")
                        .expect("whole");
                    let client_id = msg.request_id();
                    // Route, split, balance.
                    let route = table.route(msg.metadata()).expect("a route");
                    let cluster = route.pick_cluster_for(route.hash_key(msg.metadata()), &mut rng);
                    let endpoint = lbs[cluster]
                        .pick(None, &mut rng, &AllAvailable(endpoints.len()))
                        .expect("an endpoint");
                    black_box(endpoint);
                    msg.add_shared_mutations(route.request_mutations());
                    // Upstream encode with the id rewritten.
                    msg.set_request_id(upstream_id);
                    wbuf.clear();
                    upstream.encode(&msg, &mut wbuf).expect("encodes");
                    black_box(&wbuf);
                    // Upstream read + decode of the reply.
                    rbuf.extend_from_slice(&reply);
                    let mut resp = upstream.decode(&mut rbuf).expect("reply").expect("whole");
                    // Downstream encode with the client's id.
                    resp.set_request_id(client_id);
                    wbuf.clear();
                    downstream.encode(&resp, &mut wbuf).expect("encodes");
                    black_box(&wbuf);
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
