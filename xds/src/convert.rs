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

/// The longest duration taken from a control plane (one day); longer ones are refused
/// so that no timer arithmetic on them can overflow.
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

fn duration(d: &ProtoDuration, field: &str) -> Result<Duration, String> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(format!("{field}: negative or malformed duration"));
    }
    let value = Duration::new(d.seconds as u64, d.nanos as u32);
    if value > MAX_DURATION {
        return Err(format!("{field}: longer than one day"));
    }
    Ok(value)
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
    // As in Envoy, a cluster without an outlier_detection block has none (the file's
    // clusters have it on by default).
    let outlier_detection = match &c.outlier_detection {
        None => OutlierDetectionConfig {
            enabled: false,
            ..OutlierDetectionConfig::default()
        },
        Some(od) => OutlierDetectionConfig {
            enabled: true,
            consecutive_failures: od.consecutive_5xx.as_ref().map_or(5, |v| v.value),
            base_ejection_time: ConfigDuration(match &od.base_ejection_time {
                Some(d) => duration(d, "outlier_detection.base_ejection_time")?,
                None => Duration::from_secs(30),
            }),
            max_ejection_percent: od.max_ejection_percent.as_ref().map_or(10, |v| v.value),
        },
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
            ..ClusterConfig::new(&c.name, std::iter::empty::<&str>())
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

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::{circuit_breakers, CircuitBreakers};
    use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
    use envoy_types::pb::envoy::config::endpoint::v3::{Endpoint, LbEndpoint, LocalityLbEndpoints};
    use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher};
    use envoy_types::pb::envoy::r#type::v3::Int64Range;
    use envoy_types::pb::google::protobuf::UInt32Value;
    use header_matcher::HeaderMatchSpecifier as Spec;

    fn lb(ip: &str, port: u32, health: HealthStatus, weight: Option<u32>) -> LbEndpoint {
        LbEndpoint {
            health_status: health as i32,
            load_balancing_weight: weight.map(|value| UInt32Value { value }),
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: ip.to_owned(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                        ..SocketAddress::default()
                    })),
                }),
                ..Endpoint::default()
            })),
            ..LbEndpoint::default()
        }
    }

    fn addresses(list: &[EndpointConfig]) -> Vec<(String, u32)> {
        list.iter()
            .map(|e| (e.address().to_owned(), e.weight()))
            .collect()
    }

    #[test]
    fn endpoints_keep_the_lowest_usable_priority_skip_unhealthy_and_merge_duplicates() {
        let cla = ClusterLoadAssignment {
            cluster_name: "c".into(),
            endpoints: vec![
                LocalityLbEndpoints {
                    priority: 1,
                    lb_endpoints: vec![lb("10.0.0.9", 9, HealthStatus::Healthy, None)],
                    ..LocalityLbEndpoints::default()
                },
                LocalityLbEndpoints {
                    priority: 0,
                    lb_endpoints: vec![
                        lb("10.0.0.1", 80, HealthStatus::Healthy, Some(3)),
                        lb("10.0.0.2", 80, HealthStatus::Draining, None),
                        lb("::1", 81, HealthStatus::Unknown, None),
                        lb("10.0.0.1", 80, HealthStatus::Degraded, Some(2)),
                    ],
                    ..LocalityLbEndpoints::default()
                },
            ],
            ..ClusterLoadAssignment::default()
        };
        assert_eq!(
            addresses(&endpoints(&cla).unwrap()),
            [("10.0.0.1:80".to_owned(), 5), ("[::1]:81".to_owned(), 1)]
        );
        // With priority 0 all unhealthy, priority 1 serves.
        let mut only_unhealthy = cla.clone();
        for e in &mut only_unhealthy.endpoints[1].lb_endpoints {
            e.health_status = HealthStatus::Unhealthy as i32;
        }
        assert_eq!(
            addresses(&endpoints(&only_unhealthy).unwrap()),
            [("10.0.0.9:9".to_owned(), 1)]
        );
        let mut zero = cla.clone();
        zero.endpoints[1].lb_endpoints[0].load_balancing_weight = Some(UInt32Value { value: 0 });
        assert_eq!(
            endpoints(&zero).unwrap_err(),
            "endpoints[1].lb_endpoints[0].load_balancing_weight: must be at least 1"
        );
    }

    #[test]
    fn clusters_map_discovery_type_policy_timeouts_and_limits() {
        let c = Cluster {
            name: "outbound|20880||demo.svc".into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            eds_cluster_config: Some(cluster::EdsClusterConfig {
                service_name: "demo-eds".into(),
                ..Default::default()
            }),
            lb_policy: cluster::LbPolicy::Maglev as i32,
            connect_timeout: Some(ProtoDuration {
                seconds: 0,
                nanos: 250_000_000,
            }),
            circuit_breakers: Some(CircuitBreakers {
                thresholds: vec![circuit_breakers::Thresholds {
                    max_requests: Some(UInt32Value { value: 77 }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Cluster::default()
        };
        let converted = cluster(&c).unwrap();
        assert_eq!(converted.endpoints, Endpoints::Eds("demo-eds".into()));
        assert_eq!(converted.config.lb_policy, LbPolicyName::Maglev);
        assert_eq!(
            converted.config.connect_timeout.get(),
            Duration::from_millis(250)
        );
        assert_eq!(converted.config.max_pending_requests, 77);

        let mut original_dst = c.clone();
        original_dst.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::OriginalDst as i32,
        ));
        assert_eq!(
            cluster(&original_dst).unwrap_err(),
            "type: ORIGINAL_DST is not supported"
        );
        let mut forever = c.clone();
        forever.connect_timeout = Some(ProtoDuration {
            seconds: i64::MAX,
            nanos: 0,
        });
        assert_eq!(
            cluster(&forever).unwrap_err(),
            "connect_timeout: longer than one day"
        );
        let mut provided = c.clone();
        provided.lb_policy = cluster::LbPolicy::ClusterProvided as i32;
        assert!(cluster(&provided).unwrap_err().contains("CLUSTER_PROVIDED"));
    }

    fn header(spec: Option<Spec>, invert: bool) -> HeaderMatcher {
        HeaderMatcher {
            name: "method".into(),
            invert_match: invert,
            header_match_specifier: spec,
            ..HeaderMatcher::default()
        }
    }

    fn string_match(pattern: MatchPattern, ignore_case: bool) -> Option<Spec> {
        Some(Spec::StringMatch(StringMatcher {
            ignore_case,
            match_pattern: Some(pattern),
        }))
    }

    /// (exact, prefix, suffix, regex, present, invert) of a converted matcher.
    type Fields = (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<bool>,
        bool,
    );

    fn fields(h: HeaderMatcher) -> Fields {
        let m = metadata_match(&h).unwrap();
        (m.exact, m.prefix, m.suffix, m.regex, m.present, m.invert)
    }

    #[test]
    #[allow(deprecated)]
    fn header_matchers_become_metadata_conditions() {
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(
            fields(header(None, false)),
            (None, None, None, None, Some(true), false)
        );
        assert_eq!(
            fields(header(Some(Spec::ExactMatch("get".into())), true)),
            (s("get"), None, None, None, None, true)
        );
        assert_eq!(
            fields(header(Some(Spec::PresentMatch(false)), false)),
            (None, None, None, None, Some(true), true)
        );
        assert_eq!(
            fields(header(
                Some(Spec::SafeRegexMatch(RegexMatcher {
                    regex: "get|list".into(),
                    ..Default::default()
                })),
                false
            )),
            (None, None, None, s("^(?:get|list)$"), None, false)
        );
        assert_eq!(
            fields(header(
                string_match(MatchPattern::Prefix("li".into()), false),
                false
            )),
            (None, s("li"), None, None, None, false)
        );
        assert_eq!(
            fields(header(
                string_match(MatchPattern::Exact("a.b".into()), true),
                false
            )),
            (None, None, None, s("(?i)^a\\.b$"), None, false)
        );
        assert_eq!(
            fields(header(
                string_match(MatchPattern::Contains("x+".into()), false),
                false
            )),
            (None, None, None, s("x\\+"), None, false)
        );
        let range = header(
            Some(Spec::RangeMatch(Int64Range { start: 0, end: 1 })),
            false,
        );
        assert_eq!(
            metadata_match(&range).unwrap_err(),
            "range_match is not supported"
        );
    }

    #[test]
    fn route_configs_convert_and_errors_name_the_field() {
        let rc = aeraki::RouteConfiguration {
            name: "r".into(),
            routes: vec![aeraki::Route {
                name: String::new(),
                r#match: None,
                route: Some(aeraki::RouteAction {
                    cluster_specifier: Some(aeraki::ClusterSpecifier::Cluster("c".into())),
                    hash_policy: vec!["user".into()],
                }),
                request_mutation: vec![aeraki::KeyValue {
                    key: "x-route".into(),
                    value: "xds".into(),
                }],
                response_mutation: Vec::new(),
            }],
        };
        let converted = route_config(&rc).unwrap();
        let route = &converted.routes[0];
        assert_eq!(route.name, None);
        assert_eq!(route.route.cluster.as_deref(), Some("c"));
        assert_eq!(route.route.hash_policy, ["user"]);
        assert_eq!(route.route.timeout.get(), DEFAULT_ROUTE_TIMEOUT);
        assert_eq!(route.request_mutation[0].value, "xds");

        let mut no_target = rc.clone();
        no_target.routes[0].route = None;
        assert_eq!(
            route_config(&no_target).unwrap_err(),
            "routes[0].route: required"
        );
        let mut bad_match = rc.clone();
        bad_match.routes[0].r#match = Some(aeraki::RouteMatch {
            metadata: vec![header(
                Some(Spec::RangeMatch(Int64Range { start: 0, end: 1 })),
                false,
            )],
        });
        assert_eq!(
            route_config(&bad_match).unwrap_err(),
            "routes[0].match.metadata[0].range_match is not supported"
        );
    }
}
