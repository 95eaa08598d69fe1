//! Conversion of xDS resources into metaproxy's config model: CDS `Cluster`, EDS
//! `ClusterLoadAssignment` and Aeraki's MetaProtocol `RouteConfiguration`. Each
//! function either returns the converted resource or a reason naming the offending
//! field, which goes back to the control plane in a NACK.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, HealthStatus};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use envoy_types::pb::envoy::config::route::v3::{header_matcher, HeaderMatcher};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use metaproxy::config::{
    ClusterConfig, ConfigDuration, EndpointConfig, KeyValue, LbPolicyName, MetadataMatch,
    OutlierDetectionConfig, RouteAction, RouteConfig, RouteEntry, RouteMatch, WeightedCluster,
    WeightedEndpoint,
};

use crate::aeraki;

/// Defaults a CDS cluster does not override (the config file's defaults).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_MAX_CONNECTIONS: usize = 64;
const DEFAULT_MAX_PENDING_REQUESTS: usize = 1024;
const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// Where a converted cluster's endpoints come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Endpoints {
    /// From EDS, under this service name (the cluster's `eds_cluster_config.service_name`,
    /// or its own name).
    Eds(String),
    /// Given in the cluster's `load_assignment` (STATIC, STRICT_DNS, LOGICAL_DNS).
    Inline(Vec<EndpointConfig>),
}

/// A CDS cluster in the config model, its endpoints still to be filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvertedCluster {
    /// The cluster with no endpoints.
    pub config: ClusterConfig,
    /// Where the endpoints come from.
    pub endpoints: Endpoints,
}

fn duration(d: &ProtoDuration, field: &str) -> Result<Duration, String> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(format!("{field}: negative or malformed duration"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// Converts a CDS cluster. Honoured: name, discovery type (EDS, STATIC, STRICT_DNS,
/// LOGICAL_DNS), `eds_cluster_config.service_name`, `connect_timeout`, `lb_policy`
/// (ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH, MAGLEV), `load_assignment`, the
/// default-priority circuit breaker's `max_requests` (as `max_pending_requests`) and
/// outlier detection's `consecutive_5xx`, `base_ejection_time`,
/// `max_ejection_percent`. Everything else is ignored (see docs/XDS.md).
pub fn cluster(c: &Cluster) -> Result<ConvertedCluster, String> {
    if c.name.is_empty() {
        return Err("name: must not be empty".to_owned());
    }
    let kind = match &c.cluster_discovery_type {
        None => cluster::DiscoveryType::Static,
        Some(cluster::ClusterDiscoveryType::Type(t)) => cluster::DiscoveryType::try_from(*t)
            .map_err(|_| format!("type: unknown discovery type {t}"))?,
        Some(cluster::ClusterDiscoveryType::ClusterType(custom)) => {
            return Err(format!(
                "cluster_type: custom cluster type {:?} is not supported",
                custom.name
            ))
        }
    };
    let lb_policy = match cluster::LbPolicy::try_from(c.lb_policy) {
        Ok(cluster::LbPolicy::RoundRobin) => LbPolicyName::RoundRobin,
        Ok(cluster::LbPolicy::LeastRequest) => LbPolicyName::LeastRequest,
        Ok(cluster::LbPolicy::Random) => LbPolicyName::Random,
        Ok(cluster::LbPolicy::RingHash) => LbPolicyName::RingHash,
        Ok(cluster::LbPolicy::Maglev) => LbPolicyName::Maglev,
        Ok(other) => {
            return Err(format!(
                "lb_policy: {} is not supported",
                other.as_str_name()
            ))
        }
        Err(_) => return Err(format!("lb_policy: unknown value {}", c.lb_policy)),
    };
    let connect_timeout = match &c.connect_timeout {
        Some(d) => duration(d, "connect_timeout")?,
        None => DEFAULT_CONNECT_TIMEOUT,
    };
    let max_pending_requests = c
        .circuit_breakers
        .as_ref()
        .and_then(|cb| cb.thresholds.iter().find(|t| t.priority == 0))
        .and_then(|t| t.max_requests.as_ref())
        .map_or(DEFAULT_MAX_PENDING_REQUESTS, |v| v.value as usize);
    let outlier_detection = match &c.outlier_detection {
        None => None,
        Some(od) => Some(OutlierDetectionConfig {
            consecutive_failures: od.consecutive_5xx.as_ref().map_or(5, |v| v.value),
            base_ejection_time: ConfigDuration(match &od.base_ejection_time {
                Some(d) => duration(d, "outlier_detection.base_ejection_time")?,
                None => Duration::from_secs(30),
            }),
            max_ejection_percent: od.max_ejection_percent.as_ref().map_or(10, |v| v.value),
        }),
    };
    let endpoints = match kind {
        cluster::DiscoveryType::Eds => {
            let service = c
                .eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or(&c.name);
            Endpoints::Eds(service.to_owned())
        }
        cluster::DiscoveryType::Static
        | cluster::DiscoveryType::StrictDns
        | cluster::DiscoveryType::LogicalDns => Endpoints::Inline(match &c.load_assignment {
            Some(cla) => endpoints(cla).map_err(|e| format!("load_assignment.{e}"))?,
            None => Vec::new(),
        }),
        cluster::DiscoveryType::OriginalDst => {
            return Err("type: ORIGINAL_DST is not supported".to_owned())
        }
    };
    Ok(ConvertedCluster {
        config: ClusterConfig {
            name: c.name.clone(),
            endpoints: Vec::new(),
            lb_policy,
            connect_timeout: ConfigDuration(connect_timeout),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_pending_requests,
            outlier_detection,
        },
        endpoints,
    })
}

/// Converts the endpoints of an EDS `ClusterLoadAssignment` (or a cluster's inline
/// `load_assignment`). Only the lowest priority that has a usable endpoint is used;
/// endpoints whose health status is UNHEALTHY, DRAINING or TIMEOUT are left out; an
/// endpoint's weight is its `load_balancing_weight` (default 1; locality weights are
/// ignored). The same address twice is one endpoint with the weights added.
pub fn endpoints(cla: &ClusterLoadAssignment) -> Result<Vec<EndpointConfig>, String> {
    let mut by_priority: Vec<(u32, Vec<(String, u32)>)> = Vec::new();
    for (i, locality) in cla.endpoints.iter().enumerate() {
        for (j, lb) in locality.lb_endpoints.iter().enumerate() {
            let at = format!("endpoints[{i}].lb_endpoints[{j}]");
            let usable = !matches!(
                HealthStatus::try_from(lb.health_status),
                Ok(HealthStatus::Unhealthy | HealthStatus::Draining | HealthStatus::Timeout)
            );
            let endpoint = match &lb.host_identifier {
                Some(lb_endpoint::HostIdentifier::Endpoint(e)) => e,
                Some(lb_endpoint::HostIdentifier::EndpointName(_)) => {
                    return Err(format!("{at}: named endpoints are not supported"))
                }
                None => return Err(format!("{at}: endpoint is required")),
            };
            let socket = match endpoint.address.as_ref().and_then(|a| a.address.as_ref()) {
                Some(address::Address::SocketAddress(s)) => s,
                Some(_) => {
                    return Err(format!(
                        "{at}.endpoint.address: only socket addresses are supported"
                    ))
                }
                None => return Err(format!("{at}.endpoint.address: required")),
            };
            let port = match &socket.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(p)) if *p > 0 && *p <= 65535 => *p,
                _ => {
                    return Err(format!(
                    "{at}.endpoint.address.socket_address: a port_value in 1..=65535 is required"
                ))
                }
            };
            if socket.address.is_empty() {
                return Err(format!(
                    "{at}.endpoint.address.socket_address.address: must not be empty"
                ));
            }
            let host = if socket.address.contains(':') {
                format!("[{}]", socket.address)
            } else {
                socket.address.clone()
            };
            let weight = lb.load_balancing_weight.as_ref().map_or(1, |w| w.value);
            if weight == 0 {
                return Err(format!("{at}.load_balancing_weight: must be at least 1"));
            }
            if !usable {
                continue;
            }
            let slot = match by_priority
                .iter()
                .position(|(p, _)| *p == locality.priority)
            {
                Some(k) => k,
                None => {
                    by_priority.push((locality.priority, Vec::new()));
                    by_priority.len() - 1
                }
            };
            let list = &mut by_priority[slot].1;
            let address = format!("{host}:{port}");
            match list.iter_mut().find(|(a, _)| *a == address) {
                Some((_, w)) => *w = w.saturating_add(weight),
                None => list.push((address, weight)),
            }
        }
    }
    by_priority.sort_by_key(|(p, _)| *p);
    Ok(by_priority
        .into_iter()
        .next()
        .map(|(_, list)| list)
        .unwrap_or_default()
        .into_iter()
        .map(|(address, weight)| EndpointConfig::Weighted(WeightedEndpoint { address, weight }))
        .collect())
}

/// A regular expression matching exactly `text`, optionally ignoring case.
fn literal_regex(text: &str, anchor_start: bool, anchor_end: bool, ignore_case: bool) -> String {
    format!(
        "{}{}{}{}",
        if ignore_case { "(?i)" } else { "" },
        if anchor_start { "^" } else { "" },
        regex::escape(text),
        if anchor_end { "$" } else { "" }
    )
}

/// Converts one Envoy header matcher (Aeraki's metadata matcher) into a metadata
/// condition. Envoy's regular expressions match the whole value, so they are
/// anchored here.
#[allow(deprecated)]
fn metadata_match(h: &HeaderMatcher) -> Result<MetadataMatch, String> {
    use header_matcher::HeaderMatchSpecifier as Spec;
    if h.name.is_empty() {
        return Err("name: must not be empty".to_owned());
    }
    let mut m = MetadataMatch {
        key: h.name.clone(),
        exact: None,
        prefix: None,
        suffix: None,
        regex: None,
        present: None,
        invert: h.invert_match,
    };
    match &h.header_match_specifier {
        None => m.present = Some(true),
        Some(Spec::ExactMatch(v)) => m.exact = Some(v.clone()),
        Some(Spec::PrefixMatch(v)) => m.prefix = Some(v.clone()),
        Some(Spec::SuffixMatch(v)) => m.suffix = Some(v.clone()),
        Some(Spec::ContainsMatch(v)) => m.regex = Some(literal_regex(v, false, false, false)),
        Some(Spec::SafeRegexMatch(r)) => m.regex = Some(format!("^(?:{})$", r.regex)),
        Some(Spec::PresentMatch(present)) => {
            m.present = Some(true);
            if !present {
                m.invert = !m.invert;
            }
        }
        Some(Spec::RangeMatch(_)) => return Err("range_match is not supported".to_owned()),
        Some(Spec::StringMatch(s)) => {
            let ic = s.ignore_case;
            match &s.match_pattern {
                Some(MatchPattern::Exact(v)) if !ic => m.exact = Some(v.clone()),
                Some(MatchPattern::Prefix(v)) if !ic => m.prefix = Some(v.clone()),
                Some(MatchPattern::Suffix(v)) if !ic => m.suffix = Some(v.clone()),
                Some(MatchPattern::Exact(v)) => m.regex = Some(literal_regex(v, true, true, true)),
                Some(MatchPattern::Prefix(v)) => {
                    m.regex = Some(literal_regex(v, true, false, true))
                }
                Some(MatchPattern::Suffix(v)) => {
                    m.regex = Some(literal_regex(v, false, true, true))
                }
                Some(MatchPattern::Contains(v)) => {
                    m.regex = Some(literal_regex(v, false, false, ic))
                }
                Some(MatchPattern::SafeRegex(r)) => {
                    m.regex = Some(format!("{}^(?:{})$", if ic { "(?i)" } else { "" }, r.regex))
                }
                Some(MatchPattern::Custom(_)) => {
                    return Err("string_match: custom matchers are not supported".to_owned())
                }
                None => return Err("string_match: a pattern is required".to_owned()),
            }
        }
    }
    Ok(m)
}

/// Converts an Aeraki MetaProtocol route configuration. Every route's timeout is the
/// config file's default (15s) and it is not retried: the resource carries neither.
pub fn route_config(rc: &aeraki::RouteConfiguration) -> Result<RouteConfig, String> {
    if rc.name.is_empty() {
        return Err("name: must not be empty".to_owned());
    }
    let mut routes = Vec::with_capacity(rc.routes.len());
    for (i, r) in rc.routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        let metadata = match &r.r#match {
            None => Vec::new(),
            Some(m) => m
                .metadata
                .iter()
                .enumerate()
                .map(|(k, h)| {
                    metadata_match(h).map_err(|e| format!("{at}.match.metadata[{k}].{e}"))
                })
                .collect::<Result<_, _>>()?,
        };
        let Some(action) = &r.route else {
            return Err(format!("{at}.route: required"));
        };
        let (cluster, weighted_clusters) = match &action.cluster_specifier {
            Some(aeraki::ClusterSpecifier::Cluster(c)) if !c.is_empty() => (Some(c.clone()), None),
            Some(aeraki::ClusterSpecifier::Cluster(_)) => {
                return Err(format!("{at}.route.cluster: must not be empty"))
            }
            Some(aeraki::ClusterSpecifier::WeightedClusters(w)) => {
                let mut split = Vec::with_capacity(w.clusters.len());
                for (k, c) in w.clusters.iter().enumerate() {
                    if c.name.is_empty() {
                        return Err(format!(
                            "{at}.route.weighted_clusters.clusters[{k}].name: required (cluster_header is not supported)"
                        ));
                    }
                    split.push(WeightedCluster {
                        cluster: c.name.clone(),
                        weight: c.weight.as_ref().map_or(0, |v| v.value),
                    });
                }
                (None, Some(split))
            }
            None => {
                return Err(format!(
                    "{at}.route: a cluster or weighted_clusters is required"
                ))
            }
        };
        let kv = |list: &[aeraki::KeyValue]| {
            list.iter()
                .map(|kv| KeyValue {
                    key: kv.key.clone(),
                    value: kv.value.clone(),
                })
                .collect()
        };
        routes.push(RouteEntry {
            name: (!r.name.is_empty()).then(|| r.name.clone()),
            match_: RouteMatch { metadata },
            route: RouteAction {
                cluster,
                weighted_clusters,
                mirror: Vec::new(),
                hash_policy: action.hash_policy.clone(),
                timeout: ConfigDuration(DEFAULT_ROUTE_TIMEOUT),
                retries: None,
            },
            request_mutation: kv(&r.request_mutation),
            response_mutation: kv(&r.response_mutation),
        });
    }
    Ok(RouteConfig {
        name: rc.name.clone(),
        routes,
    })
}
