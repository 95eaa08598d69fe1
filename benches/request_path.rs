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
//!
//! The `filters` group repeats the Dubbo 128 B case with a listener filter chain run
//! where the proxy runs it: `today` is the path without the chain check, `none` an
//! empty chain, then one built-in filter each (limits high enough never to refuse). The
//! `filter_chain` group times the chain alone (request and response hooks) on a decoded
//! Dubbo request: the cost a filter adds per request.

use std::hint::black_box;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use meta_protocol::{Codec, CodecContext, CodecFactory, CodecOptions, Side};
use metaproxy::filter::{ChainStep, FilterChain, FilterRegistry, FilterResponse};
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
        // As the runtime makes them: head first, the rest read below where the runtime
        // reads it.
        lazy_metadata: true,
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
    let mut filter_cases = Vec::new();
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

            group.throughput(Throughput::Bytes((request.len() + reply.len()) as u64));
            let mut path = Path {
                downstream,
                upstream,
                table,
                lbs,
                endpoints: endpoints.len(),
                rng: SmallRng::seed_from_u64(1),
                rbuf: BytesMut::with_capacity(64 * 1024),
                wbuf: BytesMut::with_capacity(64 * 1024),
                request,
                reply,
            };
            group.throughput(Throughput::Bytes(path.bytes()));
            group.bench_function(BenchmarkId::new(case.name, payload), |b| {
                b.iter(|| path.one_request(None))
            });
            if case.name == "dubbo" && payload == 128 {
                filter_cases.push(path);
            }
        }
    }
    group.finish();

    // The same request path with the listener's filter chain run where the proxy runs
    // it (after decode, before routing; and on the response), Dubbo 128 B.
    let Some(mut path) = filter_cases.pop() else {
        return;
    };
    let mut group = c.benchmark_group("filters");
    group.measurement_time(std::time::Duration::from_secs(3));
    group.warm_up_time(std::time::Duration::from_secs(1));
    let chains = [
        ("none", ""),
        (
            "local_rate_limit_by_user",
            "{name: local_rate_limit, config: {rate: 1000000000, burst: 4000000000, by: metadata, key: user}}",
        ),
        (
            "local_rate_limit_listener",
            "{name: local_rate_limit, config: {rate: 1000000000, burst: 4000000000}}",
        ),
        (
            "access_control",
            "{name: access_control, config: {action: deny, rules: [{metadata: [{key: user, exact: mallory}]}]}}",
        ),
    ];
    group.bench_function("today", |b| b.iter(|| path.one_request(None)));
    for (name, filters) in chains {
        let chain = chain(filters);
        group.bench_function(name, |b| b.iter(|| path.one_request(Some(&chain))));
    }
    group.finish();

    // The chain alone on an already decoded request (both hooks): what a filter adds
    // to each request, without the noise of the rest of the path.
    let mut group = c.benchmark_group("filter_chain");
    group.measurement_time(std::time::Duration::from_secs(3));
    group.warm_up_time(std::time::Duration::from_secs(1));
    let mut src = BytesMut::from(&path.request[..]);
    let mut msg = path
        .downstream
        .decode(&mut src)
        .expect("decodes")
        .expect("whole");
    let mut src = BytesMut::from(&path.reply[..]);
    let mut resp = path
        .upstream
        .decode(&mut src)
        .expect("decodes")
        .expect("whole");
    // Read in full, as the runtime reads them for a listener with filters.
    path.downstream.decode_metadata(&mut msg).expect("reads");
    path.downstream.decode_metadata(&mut resp).expect("reads");
    for (name, filters) in chains {
        let chain = chain(filters);
        group.bench_function(name, |b| {
            b.iter(|| {
                if !chain.is_empty() {
                    let step = chain.on_request(0, "in", &mut msg, &path.table);
                    assert!(matches!(step, ChainStep::Continue));
                    chain.on_response(&mut FilterResponse::new(
                        "in",
                        "default",
                        "v1",
                        &mut resp,
                        std::time::Duration::ZERO,
                    ));
                }
                black_box(&msg);
            })
        });
    }
    group.finish();
}

/// The chain the proxy would build for a listener with `filters` (YAML flow list items).
fn chain(filters: &str) -> FilterChain {
    let yaml = format!(
        "listeners: [{{name: in, address: \"127.0.0.1:0\", codec: dubbo, route_config: r, filters: [{filters}]}}]\n\
         route_configs: [{{name: r, routes: [{{route: {{cluster: c}}}}]}}]\n\
         clusters: [{{name: c, endpoints: [\"127.0.0.1:1\"]}}]\n"
    );
    let config = metaproxy::config::parse(&yaml, "bench.yaml".as_ref()).expect("valid yaml");
    FilterChain::build(0, &config.listeners[0], &FilterRegistry::builtin(), None)
        .expect("valid filters")
}

/// One protocol's request path, set up once.
struct Path {
    downstream: Box<dyn Codec>,
    upstream: Box<dyn Codec>,
    table: RouteTable,
    lbs: Vec<LoadBalancer>,
    endpoints: usize,
    rng: SmallRng,
    rbuf: BytesMut,
    wbuf: BytesMut,
    request: Bytes,
    reply: Bytes,
}

impl Path {
    fn bytes(&self) -> u64 {
        (self.request.len() + self.reply.len()) as u64
    }

    /// One request and its reply; with `filters`, the chain runs as in the proxy (an
    /// empty chain costs one branch per direction).
    #[inline(always)]
    fn one_request(&mut self, filters: Option<&FilterChain>) {
        let upstream_id = 1_000_003u64;
        // Downstream read + decode.
        self.rbuf.extend_from_slice(&self.request);
        let mut msg = self
            .downstream
            .decode(&mut self.rbuf)
            .expect("request")
            .expect("whole");
        let client_id = msg.request_id();
        if let Some(chain) = filters {
            if !chain.is_empty() {
                self.downstream.decode_metadata(&mut msg).expect("reads");
                match chain.on_request(0, "in", &mut msg, &self.table) {
                    ChainStep::Continue => {}
                    _ => panic!("the benchmark's filters let every request through"),
                }
            }
        }
        // Route, split, balance.
        let route = self.table.route(msg.metadata()).expect("a route");
        let cluster = route.pick_cluster_for(route.hash_key(msg.metadata()), &mut self.rng);
        let endpoint = self.lbs[cluster]
            .pick(None, &mut self.rng, &AllAvailable(self.endpoints))
            .expect("an endpoint");
        black_box(endpoint);
        msg.add_shared_mutations(route.request_mutations());
        if !msg.mutations().is_empty() {
            self.downstream.decode_metadata(&mut msg).expect("reads");
        }
        // Upstream encode with the id rewritten.
        msg.set_request_id(upstream_id);
        self.wbuf.clear();
        self.upstream.encode(&msg, &mut self.wbuf).expect("encodes");
        black_box(&self.wbuf);
        // Upstream read + decode of the reply.
        self.rbuf.extend_from_slice(&self.reply);
        let mut resp = self
            .upstream
            .decode(&mut self.rbuf)
            .expect("reply")
            .expect("whole");
        // Downstream encode with the client's id.
        resp.set_request_id(client_id);
        if let Some(chain) = filters {
            if !chain.is_empty() {
                self.downstream.decode_metadata(&mut resp).expect("reads");
                chain.on_response(&mut FilterResponse::new(
                    "in",
                    route.name(),
                    "v1",
                    &mut resp,
                    std::time::Duration::ZERO,
                ));
            }
        }
        self.wbuf.clear();
        self.downstream
            .encode(&resp, &mut self.wbuf)
            .expect("encodes");
        black_box(&self.wbuf);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
