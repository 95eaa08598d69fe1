//! Aeraki's MetaProtocol route configuration resource, written by hand from its
//! published field list (package `aeraki.meta_protocol_proxy.config.route.v1alpha`),
//! so that no protobuf compiler is needed at build time. Field numbers are the wire
//! contract; the match and weighted-cluster messages are Envoy's
//! (`envoy.config.route.v3.HeaderMatcher`, `envoy.config.route.v3.WeightedCluster`).

use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, WeightedCluster};

/// The type URL of [`RouteConfiguration`] in discovery requests and responses.
pub const ROUTE_CONFIGURATION_TYPE_URL: &str =
    "type.googleapis.com/aeraki.meta_protocol_proxy.config.route.v1alpha.RouteConfiguration";

/// A named, ordered route table (`RouteConfiguration`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RouteConfiguration {
    /// The name a listener's `route_config` refers to.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Routes in order; the first that matches wins.
    #[prost(message, repeated, tag = "2")]
    pub routes: Vec<Route>,
}

/// One route (`Route`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Route {
    /// The route's name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Conditions on the request's metadata.
    #[prost(message, optional, tag = "2")]
    pub r#match: Option<RouteMatch>,
    /// Where matching requests go (required).
    #[prost(message, optional, tag = "3")]
    pub route: Option<RouteAction>,
    /// Key/value pairs set on the forwarded request.
    #[prost(message, repeated, tag = "19")]
    pub request_mutation: Vec<KeyValue>,
    /// Key/value pairs set on the returned response.
    #[prost(message, repeated, tag = "20")]
    pub response_mutation: Vec<KeyValue>,
}

/// A route's conditions (`RouteMatch`): every metadata matcher must hold.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RouteMatch {
    /// Matchers on metadata keys, written as Envoy header matchers.
    #[prost(message, repeated, tag = "1")]
    pub metadata: Vec<HeaderMatcher>,
}

/// A route's target (`RouteAction`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RouteAction {
    /// One cluster or a weighted split (required).
    #[prost(oneof = "ClusterSpecifier", tags = "1, 2")]
    pub cluster_specifier: Option<ClusterSpecifier>,
    /// Metadata keys hashed by consistent-hash load balancers.
    #[prost(string, repeated, tag = "10")]
    pub hash_policy: Vec<String>,
}

/// `RouteAction.cluster_specifier`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ClusterSpecifier {
    /// A single upstream cluster.
    #[prost(string, tag = "1")]
    Cluster(String),
    /// A split by weight (only the clusters' names and weights are used).
    #[prost(message, tag = "2")]
    WeightedClusters(WeightedCluster),
}

/// A key/value pair of a mutation (`KeyValue`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    /// Key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Value.
    #[prost(string, tag = "2")]
    pub value: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// The bytes a protoc-generated encoder writes for a small route configuration,
    /// spelled out by tag and wire type, so that a wrong field number fails here.
    #[test]
    fn field_numbers_match_the_published_resource() {
        let rc = RouteConfiguration {
            name: "r".into(),
            routes: vec![Route {
                name: "a".into(),
                r#match: None,
                route: Some(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster("c".into())),
                    hash_policy: vec!["u".into()],
                }),
                request_mutation: vec![KeyValue {
                    key: "k".into(),
                    value: "v".into(),
                }],
                response_mutation: vec![],
            }],
        };
        let bytes = rc.encode_to_vec();
        let want: Vec<u8> = vec![
            0x0a, 1, b'r', // 1: name
            0x12, 20, // 2: routes, 20 bytes
            0x0a, 1, b'a', // Route.1: name
            0x1a, 6, // Route.3: route
            0x0a, 1, b'c', // RouteAction.1: cluster
            0x52, 1, b'u', // RouteAction.10: hash_policy
            0x9a, 0x01, 6, // Route.19: request_mutation
            0x0a, 1, b'k', 0x12, 1, b'v', // KeyValue.1, KeyValue.2
        ];
        assert_eq!(bytes, want);
        assert_eq!(RouteConfiguration::decode(&*bytes).unwrap(), rc);
    }
}
