//! Shared helpers of the xDS tests: kv echo backends and a kv client (those of the
//! runtime's tests, `tests/common/kv.rs`), a proxy with the kv codec, builders of xDS
//! resources, and a scriptable ADS server.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address, Address, HealthStatus, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher, weighted_cluster::ClusterWeight, HeaderMatcher, WeightedCluster,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use metaproxy::RunningServer;
use metaproxy_example_kv::{frames, KvCodecFactory};
use metaproxy_xds::aeraki;
use metaproxy_xds::state::ResourceType;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

#[path = "../../../tests/common/kv.rs"]
mod kv;
use kv::Client;
#[allow(unused_imports, reason = "not every test binary uses every helper")]
pub use kv::{backend, Backend};

/// A kv client making one call at a time over one connection.
pub struct KvClient(Client);

impl KvClient {
    pub async fn connect(addr: SocketAddr) -> KvClient {
        KvClient(Client::connect(addr).await)
    }

    /// Calls service `service`; returns the reply's status and its `backend` header
    /// (empty for a reply of the proxy itself), or None when the connection failed.
    pub async fn call(&mut self, service: &str) -> Option<(u8, String)> {
        let id = self
            .0
            .try_send(&[("service", service), ("method", "get")], b"x")
            .await?;
        let m = tokio::time::timeout(Duration::from_secs(5), self.0.recv())
            .await
            .ok()??;
        assert_eq!(m.request_id(), id);
        let backend = m.metadata().get("backend").unwrap_or_default().to_owned();
        Some((frames::status(&m), backend))
    }
}

/// Starts a proxy with the kv codec from YAML text.
pub async fn proxy(yaml: &str) -> RunningServer {
    let mut codecs = metaproxy::default_registry();
    codecs.register(Arc::new(KvCodecFactory));
    let config = metaproxy::config::parse(yaml, "xds-test.yaml".as_ref()).unwrap();
    let server = metaproxy::Server::new(config, codecs).unwrap();
    server.bind().await.unwrap()
}

/// The proxy config of the tests: one kv listener whose routes come from xDS.
pub fn proxy_yaml(ads: SocketAddr) -> String {
    format!(
        r#"
xds: {{address: "{ads}", node_id: test-node, node_cluster: test, backoff_base: 50ms, backoff_max: 200ms}}
listeners:
  - {{name: kv-in, address: "127.0.0.1:0", codec: kv, route_config: kv-routes}}
"#
    )
}

fn any<M: Message>(kind: ResourceType, m: &M) -> Any {
    Any {
        type_url: kind.type_url().to_owned(),
        value: m.encode_to_vec(),
    }
}

/// A CDS cluster of type EDS.
pub fn eds_cluster(name: &str) -> Any {
    any(
        ResourceType::Cluster,
        &Cluster {
            name: name.to_owned(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            ..Cluster::default()
        },
    )
}

fn lb_endpoint(addr: SocketAddr, health: HealthStatus) -> LbEndpoint {
    LbEndpoint {
        health_status: health as i32,
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: addr.ip().to_string(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(
                        addr.port() as u32
                    )),
                    ..SocketAddress::default()
                })),
            }),
            ..Endpoint::default()
        })),
        ..LbEndpoint::default()
    }
}

/// An EDS assignment with these healthy endpoints.
pub fn assignment(name: &str, addrs: &[SocketAddr]) -> Any {
    assignment_with_health(
        name,
        &addrs
            .iter()
            .map(|a| (*a, HealthStatus::Healthy))
            .collect::<Vec<_>>(),
    )
}

/// An EDS assignment with endpoints in the given health states.
pub fn assignment_with_health(name: &str, endpoints: &[(SocketAddr, HealthStatus)]) -> Any {
    any(
        ResourceType::Endpoint,
        &ClusterLoadAssignment {
            cluster_name: name.to_owned(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: endpoints.iter().map(|(a, h)| lb_endpoint(*a, *h)).collect(),
                ..LocalityLbEndpoints::default()
            }],
            ..ClusterLoadAssignment::default()
        },
    )
}

/// An Aeraki route configuration: one route on `service: canary` split by `split`.
pub fn route_config(name: &str, split: &[(&str, u32)]) -> Any {
    any(ResourceType::Route, &route_configuration(name, split))
}

pub fn route_configuration(name: &str, split: &[(&str, u32)]) -> aeraki::RouteConfiguration {
    aeraki::RouteConfiguration {
        name: name.to_owned(),
        routes: vec![aeraki::Route {
            name: "canary".to_owned(),
            r#match: Some(aeraki::RouteMatch {
                metadata: vec![HeaderMatcher {
                    name: "service".to_owned(),
                    #[allow(deprecated)]
                    header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::ExactMatch(
                        "canary".to_owned(),
                    )),
                    ..HeaderMatcher::default()
                }],
            }),
            route: Some(aeraki::RouteAction {
                cluster_specifier: Some(aeraki::ClusterSpecifier::WeightedClusters(
                    WeightedCluster {
                        clusters: split
                            .iter()
                            .map(|(c, w)| ClusterWeight {
                                name: (*c).to_owned(),
                                weight: Some(UInt32Value { value: *w }),
                                ..ClusterWeight::default()
                            })
                            .collect(),
                        ..WeightedCluster::default()
                    },
                )),
                hash_policy: Vec::new(),
            }),
            request_mutation: Vec::new(),
            response_mutation: Vec::new(),
        }],
    }
}

/// One ADS stream as the test server sees it.
pub struct AdsStream {
    requests: mpsc::UnboundedReceiver<DiscoveryRequest>,
    responses: mpsc::UnboundedSender<Result<DiscoveryResponse, Status>>,
    next_nonce: u64,
}

impl AdsStream {
    /// The next request from the client (fails the test after 5 s).
    pub async fn request(&mut self) -> DiscoveryRequest {
        tokio::time::timeout(Duration::from_secs(5), self.requests.recv())
            .await
            .expect("no request from the client within 5 s")
            .expect("the client closed the stream")
    }

    /// The next request, expected to be of type `kind`.
    pub async fn request_of(&mut self, kind: ResourceType) -> DiscoveryRequest {
        let r = self.request().await;
        assert_eq!(r.type_url, kind.type_url(), "{r:?}");
        r
    }

    /// Whether a request arrives within `wait`.
    pub async fn quiet_for(&mut self, wait: Duration) -> Option<DiscoveryRequest> {
        tokio::time::timeout(wait, self.requests.recv())
            .await
            .ok()
            .flatten()
    }

    /// Sends a response; returns its nonce.
    pub fn respond(&mut self, kind: ResourceType, version: &str, resources: Vec<Any>) -> String {
        self.respond_url(kind.type_url(), version, resources)
    }

    pub fn respond_url(&mut self, type_url: &str, version: &str, resources: Vec<Any>) -> String {
        self.next_nonce += 1;
        let nonce = format!("nonce-{}", self.next_nonce);
        let _ = self.responses.send(Ok(DiscoveryResponse {
            version_info: version.to_owned(),
            resources,
            type_url: type_url.to_owned(),
            nonce: nonce.clone(),
            ..DiscoveryResponse::default()
        }));
        nonce
    }
}

struct Service {
    streams: mpsc::UnboundedSender<AdsStream>,
}

type ResponseStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Service {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut inbound = request.into_inner();
        let (req_tx, req_rx) = mpsc::unbounded_channel();
        let (resp_tx, resp_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(r)) = inbound.message().await {
                if req_tx.send(r).is_err() {
                    break;
                }
            }
        });
        let _ = self.streams.send(AdsStream {
            requests: req_rx,
            responses: resp_tx,
            next_nonce: 0,
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(
            resp_rx,
        ))))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("only state-of-the-world ADS"))
    }
}

/// An ADS server on loopback whose streams the test drives one by one.
pub struct AdsServer {
    pub addr: SocketAddr,
    streams: mpsc::UnboundedReceiver<AdsStream>,
    task: tokio::task::JoinHandle<()>,
}

impl AdsServer {
    pub async fn start() -> AdsServer {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap()).await
    }

    pub async fn start_on(listener: TcpListener) -> AdsServer {
        let addr = listener.local_addr().unwrap();
        let (tx, streams) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(AggregatedDiscoveryServiceServer::new(Service {
                    streams: tx,
                }))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        AdsServer {
            addr,
            streams,
            task,
        }
    }

    /// The next stream a client opens (fails the test after 5 s).
    pub async fn stream(&mut self) -> AdsStream {
        tokio::time::timeout(Duration::from_secs(5), self.streams.recv())
            .await
            .expect("no stream within 5 s")
            .expect("server stopped")
    }
}

impl Drop for AdsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Asserts that `r` answers the response with `nonce` and carries `version` (the new
/// one for an ACK, the previous one for a NACK).
pub fn assert_answer(r: &DiscoveryRequest, version: &str, nonce: &str) {
    assert_eq!(
        (r.version_info.as_str(), r.response_nonce.as_str()),
        (version, nonce),
        "{r:?}"
    );
}

/// Calls `service` until `want` holds for a reply, for up to 5 s.
pub async fn eventually(
    client: &mut KvClient,
    service: &str,
    want: impl Fn(&(u8, String)) -> bool,
) -> (u8, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = client.call(service).await.expect("connection failed");
        if want(&r) || tokio::time::Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
