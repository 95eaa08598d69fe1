//! The ADS protocol state without I/O: what to request, how to read a response, when
//! to ACK and when to NACK (state of the world variant, one stream for every type).
//!
//! Per resource type it keeps the last accepted `version_info`, the last nonce seen
//! on the current stream and the subscribed names. A response is first decoded and
//! converted ([`AdsState::prepare`]); the resulting [`Pending`] update is applied by
//! the caller and then either [`AdsState::accept`]ed (ACK: version and nonce of the
//! response) or [`AdsState::reject`]ed (NACK: the previous version, the response's
//! nonce and an `error_detail` with the reason). Nothing of a rejected update is kept.

use std::collections::{BTreeMap, HashSet};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{node::UserAgentVersionType, Node};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status;
use metaproxy::config::{ClusterConfig, DynamicResources, EndpointConfig, RouteConfig, Versioned};
use prost::Message;

use crate::aeraki;
use crate::convert::{self, ConvertedCluster, Endpoints};

/// The gRPC status code sent in a NACK's `error_detail` (INVALID_ARGUMENT).
const INVALID_ARGUMENT: i32 = 3;

/// The resource types metaproxy subscribes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResourceType {
    /// CDS: `envoy.config.cluster.v3.Cluster`, wildcard.
    Cluster,
    /// EDS: `envoy.config.endpoint.v3.ClusterLoadAssignment`, by the EDS clusters'
    /// service names.
    Endpoint,
    /// Aeraki MetaProtocol `RouteConfiguration`, by the listeners' `route_config` names.
    Route,
}

impl ResourceType {
    /// Every type, in the order the first requests of a stream are sent.
    pub const ALL: [ResourceType; 3] = [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Route,
    ];

    /// The type URL on the wire.
    pub fn type_url(self) -> &'static str {
        match self {
            ResourceType::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            ResourceType::Endpoint => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            ResourceType::Route => aeraki::ROUTE_CONFIGURATION_TYPE_URL,
        }
    }

    /// The `type` label of `metaproxy_xds_updates_total`.
    pub fn label(self) -> &'static str {
        match self {
            ResourceType::Cluster => "cluster",
            ResourceType::Endpoint => "endpoint",
            ResourceType::Route => "route",
        }
    }

    /// The type with this URL, if metaproxy subscribes to it.
    pub fn from_type_url(url: &str) -> Option<ResourceType> {
        ResourceType::ALL.into_iter().find(|t| t.type_url() == url)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Per-type protocol state.
#[derive(Clone, Debug, Default)]
struct TypeState {
    /// `version_info` of the last accepted response (kept across reconnects).
    version: String,
    /// Nonce of the last response on the current stream.
    nonce: String,
    /// Names subscribed to (CDS: always the wildcard, no names).
    names: Vec<String>,
    /// Whether a request for this type was sent on the current stream.
    requested: bool,
}

/// A converted response, not yet applied.
#[derive(Clone, Debug)]
pub struct Pending {
    /// Its type.
    pub kind: ResourceType,
    version: String,
    nonce: String,
    /// How many resources it carried.
    pub resource_count: usize,
    change: Change,
}

impl Pending {
    /// The response's `version_info`.
    pub fn version(&self) -> &str {
        &self.version
    }
}

#[derive(Clone, Debug)]
enum Change {
    /// The complete set of clusters (CDS is state of the world).
    Clusters(BTreeMap<String, Versioned<ConvertedCluster>>),
    /// Some endpoint assignments, by service name (EDS responses need not carry all).
    Endpoints(BTreeMap<String, Versioned<Vec<EndpointConfig>>>),
    /// Some route configs, by name.
    Routes(BTreeMap<String, Versioned<RouteConfig>>),
}

/// Why a response is refused before it is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// Its type.
    pub kind: ResourceType,
    /// Its nonce, echoed in the NACK.
    pub nonce: String,
    /// Why.
    pub reason: String,
}

/// The ADS client's state: accepted resources and per-type protocol state.
#[derive(Clone, Debug)]
pub struct AdsState {
    node: Node,
    types: [TypeState; 3],
    clusters: BTreeMap<String, Versioned<ConvertedCluster>>,
    assignments: BTreeMap<String, Versioned<Vec<EndpointConfig>>>,
    routes: BTreeMap<String, Versioned<RouteConfig>>,
}

impl AdsState {
    /// A fresh state for node `id` of service cluster `cluster`.
    pub fn new(id: &str, cluster: &str) -> AdsState {
        AdsState {
            node: Node {
                id: id.to_owned(),
                cluster: cluster.to_owned(),
                user_agent_name: "metaproxy".to_owned(),
                user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
                    env!("CARGO_PKG_VERSION").to_owned(),
                )),
                ..Node::default()
            },
            types: Default::default(),
            clusters: BTreeMap::new(),
            assignments: BTreeMap::new(),
            routes: BTreeMap::new(),
        }
    }

    fn request(&self, kind: ResourceType, error: Option<String>) -> DiscoveryRequest {
        let t = &self.types[kind.index()];
        DiscoveryRequest {
            version_info: t.version.clone(),
            node: Some(self.node.clone()),
            resource_names: t.names.clone(),
            type_url: kind.type_url().to_owned(),
            response_nonce: t.nonce.clone(),
            error_detail: error.map(|message| Status {
                code: INVALID_ARGUMENT,
                message,
                details: Vec::new(),
            }),
            ..DiscoveryRequest::default()
        }
    }

    /// The `version_info` last accepted for `kind` (empty before the first).
    pub fn version(&self, kind: ResourceType) -> &str {
        &self.types[kind.index()].version
    }

    /// The EDS service names of the accepted EDS clusters, sorted.
    fn eds_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .clusters
            .values()
            .filter_map(|c| match &c.resource.endpoints {
                Endpoints::Eds(service) => Some(service.clone()),
                Endpoints::Inline(_) => None,
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Starts a new stream: forgets the nonces and returns the first requests, each
    /// with the last accepted version: CDS (wildcard), EDS for the known EDS clusters,
    /// and route configs for `route_names` (the listeners' `route_config` names).
    pub fn start_stream(&mut self, route_names: &[String]) -> Vec<DiscoveryRequest> {
        for t in &mut self.types {
            t.nonce.clear();
            t.requested = false;
        }
        self.types[ResourceType::Endpoint.index()].names = self.eds_names();
        self.types[ResourceType::Route.index()].names = sorted(route_names);
        let mut out = Vec::new();
        for kind in ResourceType::ALL {
            let t = &self.types[kind.index()];
            if kind == ResourceType::Cluster || !t.names.is_empty() {
                out.push(self.request(kind, None));
                self.types[kind.index()].requested = true;
            }
        }
        out
    }

    /// Subscribes to `route_names` if they differ from the current subscription;
    /// returns the request to send, if any.
    pub fn set_route_names(&mut self, route_names: &[String]) -> Option<DiscoveryRequest> {
        self.resubscribe(ResourceType::Route, sorted(route_names))
    }

    fn resubscribe(&mut self, kind: ResourceType, names: Vec<String>) -> Option<DiscoveryRequest> {
        let t = &mut self.types[kind.index()];
        if t.names == names {
            return None;
        }
        if names.is_empty() && !t.requested {
            // An empty first request would be a wildcard subscription.
            t.names = names;
            return None;
        }
        t.names = names;
        t.requested = true;
        Some(self.request(kind, None))
    }

    /// Decodes and converts `response`. Returns the update to apply, or why it is
    /// refused (then answer with [`AdsState::nack`]). Returns `Ok(None)` for a type
    /// metaproxy does not subscribe to (nothing to answer).
    pub fn prepare(&mut self, response: &DiscoveryResponse) -> Result<Option<Pending>, Refused> {
        let Some(kind) = ResourceType::from_type_url(&response.type_url) else {
            return Ok(None);
        };
        self.types[kind.index()].nonce = response.nonce.clone();
        let refuse = |reason: String| Refused {
            kind,
            nonce: response.nonce.clone(),
            reason,
        };
        let version = response.version_info.clone();
        // CDS is a wildcard subscription; EDS and route responses may carry names the
        // client did not ask for (a subscription change in flight): those are skipped.
        let wanted: Option<HashSet<&String>> = (kind != ResourceType::Cluster)
            .then(|| self.types[kind.index()].names.iter().collect());
        let keep = |name: &String| wanted.as_ref().is_none_or(|w| w.contains(name));
        let change = match kind {
            ResourceType::Cluster => Change::Clusters(
                decode_all(
                    kind,
                    response,
                    "cluster",
                    |c: &Cluster| &c.name,
                    convert::cluster,
                    keep,
                )
                .map_err(refuse)?,
            ),
            ResourceType::Endpoint => Change::Endpoints(
                decode_all(
                    kind,
                    response,
                    "cluster load assignment",
                    |c: &ClusterLoadAssignment| &c.cluster_name,
                    convert::endpoints,
                    keep,
                )
                .map_err(refuse)?,
            ),
            ResourceType::Route => Change::Routes(
                decode_all(
                    kind,
                    response,
                    "route config",
                    |r: &aeraki::RouteConfiguration| &r.name,
                    convert::route_config,
                    keep,
                )
                .map_err(refuse)?,
            ),
        };
        Ok(Some(Pending {
            kind,
            version,
            nonce: response.nonce.clone(),
            resource_count: response.resources.len(),
            change,
        }))
    }

    /// The resources metaproxy would serve with `pending` accepted (or the accepted
    /// ones alone with `None`), in the config model.
    pub fn resources(&self, pending: Option<&Pending>) -> DynamicResources {
        let mut clusters = &self.clusters;
        let mut assignments = self.assignments.clone();
        let mut routes = self.routes.clone();
        match pending.map(|p| &p.change) {
            Some(Change::Clusters(c)) => clusters = c,
            Some(Change::Endpoints(e)) => assignments.extend(e.clone()),
            Some(Change::Routes(r)) => routes.extend(r.clone()),
            None => {}
        }
        let clusters = clusters
            .values()
            .map(|c| {
                let mut config: ClusterConfig = c.resource.config.clone();
                config.endpoints = match &c.resource.endpoints {
                    Endpoints::Inline(list) => list.clone(),
                    Endpoints::Eds(service) => assignments
                        .get(service)
                        .map(|a| a.resource.clone())
                        .unwrap_or_default(),
                };
                Versioned {
                    resource: config,
                    version: c.version.clone(),
                }
            })
            .collect();
        DynamicResources {
            clusters,
            route_configs: routes.into_values().collect(),
        }
    }

    /// Records `pending` as applied. Returns the ACK and, when the set of EDS clusters
    /// changed, the EDS request with the new names.
    pub fn accept(&mut self, pending: Pending) -> Vec<DiscoveryRequest> {
        let kind = pending.kind;
        {
            let t = &mut self.types[kind.index()];
            t.version = pending.version;
            t.nonce = pending.nonce;
        }
        match pending.change {
            Change::Clusters(c) => self.clusters = c,
            Change::Endpoints(e) => self.assignments.extend(e),
            Change::Routes(r) => self.routes.extend(r),
        }
        let mut out = vec![self.request(kind, None)];
        if kind == ResourceType::Cluster {
            let names = self.eds_names();
            let keep: HashSet<&String> = names.iter().collect();
            self.assignments.retain(|name, _| keep.contains(name));
            if let Some(r) = self.resubscribe(ResourceType::Endpoint, names) {
                out.push(r);
            }
        }
        out
    }

    /// The NACK for a refused or failed update: the previous version, the response's
    /// nonce, and `reason` in `error_detail`.
    pub fn nack(&mut self, kind: ResourceType, nonce: &str, reason: &str) -> DiscoveryRequest {
        self.types[kind.index()].nonce = nonce.to_owned();
        self.request(kind, Some(reason.to_owned()))
    }

    /// Answers `pending` with a NACK because applying it failed with `reason`.
    pub fn reject(&mut self, pending: Pending, reason: &str) -> DiscoveryRequest {
        self.nack(pending.kind, &pending.nonce, reason)
    }
}

fn sorted(names: &[String]) -> Vec<String> {
    let mut names = names.to_vec();
    names.sort();
    names.dedup();
    names
}

/// Decodes and converts every resource of `response`, refusing a name listed twice,
/// and keeps those whose name `keep` accepts, each with the response's version.
fn decode_all<M: Message + Default, T>(
    kind: ResourceType,
    response: &DiscoveryResponse,
    what: &str,
    name: impl Fn(&M) -> &String,
    convert: impl Fn(&M) -> Result<T, String>,
    keep: impl Fn(&String) -> bool,
) -> Result<BTreeMap<String, Versioned<T>>, String> {
    let mut seen = HashSet::new();
    let mut out = BTreeMap::new();
    for any in &response.resources {
        let message: M = decode(kind, any)?;
        let name = name(&message);
        let resource = convert(&message).map_err(|e| format!("{what} {name:?}: {e}"))?;
        if !seen.insert(name.clone()) {
            return Err(format!("{what} {name:?} is listed twice"));
        }
        if keep(name) {
            out.insert(
                name.clone(),
                Versioned {
                    resource,
                    version: response.version_info.clone(),
                },
            );
        }
    }
    Ok(out)
}

fn decode<M: Message + Default>(
    kind: ResourceType,
    any: &envoy_types::pb::google::protobuf::Any,
) -> Result<M, String> {
    if any.type_url != kind.type_url() {
        return Err(format!(
            "resource of type {:?} in a response of type {:?}",
            any.type_url,
            kind.type_url()
        ));
    }
    M::decode(&*any.value).map_err(|e| format!("cannot decode {}: {e}", kind.type_url()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::cluster;
    use envoy_types::pb::google::protobuf::Any;

    fn cds(version: &str, nonce: &str, eds_clusters: &[&str]) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: version.into(),
            nonce: nonce.into(),
            type_url: ResourceType::Cluster.type_url().into(),
            resources: eds_clusters
                .iter()
                .map(|name| Any {
                    type_url: ResourceType::Cluster.type_url().into(),
                    value: Cluster {
                        name: (*name).into(),
                        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                            cluster::DiscoveryType::Eds as i32,
                        )),
                        ..Cluster::default()
                    }
                    .encode_to_vec(),
                })
                .collect(),
            ..DiscoveryResponse::default()
        }
    }

    /// `Type version nonce [names]`, plus ` NACK` with an error_detail.
    fn summary(r: &DiscoveryRequest) -> String {
        format!(
            "{} {:?} {:?} {:?}{}",
            r.type_url.rsplit('.').next().unwrap_or_default(),
            r.version_info,
            r.response_nonce,
            r.resource_names,
            if r.error_detail.is_some() {
                " NACK"
            } else {
                ""
            }
        )
    }

    fn summaries(requests: Vec<DiscoveryRequest>) -> Vec<String> {
        requests.iter().map(summary).collect()
    }

    #[test]
    fn eds_follows_the_accepted_clusters_and_is_never_an_accidental_wildcard() {
        let mut state = AdsState::new("n", "c");
        let first = summaries(state.start_stream(&[]));
        assert_eq!(
            first,
            [r#"Cluster "" "" []"#],
            "no empty EDS or route request"
        );

        let pending = state.prepare(&cds("1", "a", &["x", "y"])).unwrap().unwrap();
        let out = summaries(state.accept(pending));
        assert_eq!(
            out,
            [
                r#"Cluster "1" "a" []"#,
                r#"ClusterLoadAssignment "" "" ["x", "y"]"#,
            ]
        );
        // All EDS clusters removed: an explicit empty subscription is sent.
        let pending = state.prepare(&cds("2", "b", &[])).unwrap().unwrap();
        let out = summaries(state.accept(pending));
        assert_eq!(
            out,
            [r#"Cluster "2" "b" []"#, r#"ClusterLoadAssignment "" "" []"#,]
        );
    }

    #[test]
    fn a_rejected_update_keeps_the_previous_version_and_resources() {
        let mut state = AdsState::new("n", "c");
        state.start_stream(&["r".to_owned()]);
        let pending = state.prepare(&cds("1", "a", &["x"])).unwrap().unwrap();
        state.accept(pending);
        let pending = state.prepare(&cds("2", "b", &["x", "z"])).unwrap().unwrap();
        assert_eq!(state.resources(Some(&pending)).clusters.len(), 2);
        let nack = state.reject(pending, "no");
        assert_eq!(
            summary(&nack),
            r#"Cluster "1" "b" [] NACK"#,
            "NACK: old version, new nonce"
        );
        assert_eq!(nack.error_detail.unwrap().message, "no");
        assert_eq!(state.version(ResourceType::Cluster), "1");
        let kept = state.resources(None);
        assert_eq!(kept.clusters.len(), 1);
        assert_eq!(kept.clusters[0].version, "1");
        // A reconnect asks again with the accepted versions and no nonce.
        let again = summaries(state.start_stream(&["r".to_owned()]));
        assert_eq!(
            again,
            [
                r#"Cluster "1" "" []"#,
                r#"ClusterLoadAssignment "" "" ["x"]"#,
                r#"RouteConfiguration "" "" ["r"]"#,
            ]
        );
    }

    #[test]
    fn duplicate_names_and_foreign_types_are_refused() {
        let mut state = AdsState::new("n", "c");
        state.start_stream(&[]);
        let refused = state.prepare(&cds("1", "a", &["x", "x"])).unwrap_err();
        assert_eq!(refused.reason, "cluster \"x\" is listed twice");
        let mut foreign = cds("1", "b", &["x"]);
        foreign.resources[0].type_url = ResourceType::Route.type_url().into();
        let refused = state.prepare(&foreign).unwrap_err();
        assert!(
            refused.reason.contains("RouteConfiguration"),
            "{}",
            refused.reason
        );
        assert_eq!(refused.nonce, "b");
        let unknown = DiscoveryResponse {
            type_url: "type.googleapis.com/envoy.config.listener.v3.Listener".into(),
            ..DiscoveryResponse::default()
        };
        assert!(state.prepare(&unknown).unwrap().is_none());
    }
}
