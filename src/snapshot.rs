//! An immutable, compiled view of the configuration: route tables, clusters and their
//! metrics handles. Requests read the current snapshot without a lock (`arc-swap`); a
//! reload builds a new one and swaps it in, while requests in flight keep the old one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use meta_protocol::CodecRegistry;
use metaproxy_router::{
    EndpointSpec, LbPolicy, LoadBalancer, MatchKind, MatcherSpec, MirrorSpec, RouteConfigSpec,
    RouteSpec, RouteTable, TargetSpec,
};

use crate::cluster::{ClusterRt, EndpointRegistry};
use crate::config::{
    self, Config, LbPolicyName, Problem, Provenance, RouteConfig, RouteMatch, Validated,
};
use crate::filter::{FilterChain, FilterRegistry};
use crate::observe::metrics::{Counter, Metrics, ResponseMetrics};

/// A listener's routing state in one snapshot.
pub(crate) struct ListenerRt {
    pub(crate) table: Arc<RouteTable>,
    /// The route table's cluster indices resolved to clusters.
    pub(crate) clusters: Vec<Arc<ClusterRt>>,
    /// `requests_total{listener,route,cluster}` by route, then table cluster index.
    pub(crate) requests: Vec<Vec<Counter>>,
    /// `responses_total` and `request_duration_seconds` by table cluster index.
    pub(crate) responses: Vec<ResponseMetrics>,
    /// Metadata keys the routes look at (logged in access logs).
    pub(crate) log_keys: Vec<Arc<str>>,
    /// The listener's filters, run before routing.
    pub(crate) filters: FilterChain,
}

/// One compiled configuration.
pub(crate) struct Snapshot {
    pub(crate) config: Arc<Config>,
    /// Routing state per running listener, by listener name.
    pub(crate) listeners: HashMap<String, Arc<ListenerRt>>,
    pub(crate) clusters: Vec<Arc<ClusterRt>>,
    /// Where each resource came from (`GET /config`).
    pub(crate) provenance: Provenance,
}

impl Snapshot {
    /// The routing state of listener `name`.
    pub(crate) fn listener(&self, name: &str) -> Option<&Arc<ListenerRt>> {
        self.listeners.get(name)
    }
}

fn lb_policy(name: LbPolicyName) -> LbPolicy {
    match name {
        LbPolicyName::RoundRobin => LbPolicy::RoundRobin,
        LbPolicyName::Random => LbPolicy::Random,
        LbPolicyName::LeastRequest => LbPolicy::LeastRequest,
        LbPolicyName::RingHash => LbPolicy::RingHash,
        LbPolicyName::Maglev => LbPolicy::Maglev,
    }
}

/// Converts a `match:` block into the router's matcher specs.
pub(crate) fn matcher_specs(m: &RouteMatch) -> Vec<MatcherSpec> {
    m.metadata
        .iter()
        .map(|m| {
            let kind = if let Some(v) = &m.exact {
                MatchKind::Exact(v.clone())
            } else if let Some(v) = &m.prefix {
                MatchKind::Prefix(v.clone())
            } else if let Some(v) = &m.suffix {
                MatchKind::Suffix(v.clone())
            } else if let Some(v) = &m.regex {
                MatchKind::Regex(v.clone())
            } else {
                MatchKind::Present
            };
            MatcherSpec {
                key: m.key.clone(),
                kind,
                invert: m.invert,
            }
        })
        .collect()
}

/// Converts a config route table into the router's input.
pub(crate) fn route_spec(rc: &RouteConfig) -> RouteConfigSpec {
    let routes = rc
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let matchers = matcher_specs(&r.match_);
            let action = &r.route;
            let target = match (&action.cluster, &action.weighted_clusters) {
                (Some(c), _) => TargetSpec::Cluster(c.clone()),
                (None, Some(w)) => {
                    TargetSpec::Weighted(w.iter().map(|w| (w.cluster.clone(), w.weight)).collect())
                }
                (None, None) => TargetSpec::Weighted(Vec::new()),
            };
            RouteSpec {
                name: r.name.clone().unwrap_or_else(|| format!("route-{i}")),
                matchers,
                target,
                mirrors: action
                    .mirror
                    .iter()
                    .map(|m| MirrorSpec {
                        cluster: m.cluster.clone(),
                        percent: m.percent,
                    })
                    .collect(),
                hash_policy: action.hash_policy.clone(),
                timeout: action.timeout.get(),
                retries: action.retries.as_ref().map_or(0, |r| r.attempts),
                request_mutation: r
                    .request_mutation
                    .iter()
                    .map(|kv| (kv.key.clone(), kv.value.clone()))
                    .collect(),
                response_mutation: r
                    .response_mutation
                    .iter()
                    .map(|kv| (kv.key.clone(), kv.value.clone()))
                    .collect(),
            }
        })
        .collect();
    RouteConfigSpec {
        name: rc.name.clone(),
        routes,
    }
}

/// Checks everything that can be checked without binding: names, references, values,
/// codec options, the built-in filters' configs ([`FilterRegistry::builtin`]), and the
/// compilation of every route table and load balancer, exactly as start-up and reload
/// compile them (the same code). Returns every problem found, each with the path of
/// the offending field, or the warnings.
///
/// `metaproxy check` runs exactly this.
pub fn validate(config: &Config, codecs: &CodecRegistry) -> Result<Validated, Vec<Problem>> {
    validate_with_filters(config, codecs, &FilterRegistry::builtin())
}

/// [`validate`] with the filters of `filters` (an embedding program's registry).
pub fn validate_with_filters(
    config: &Config,
    codecs: &CodecRegistry,
    filters: &FilterRegistry,
) -> Result<Validated, Vec<Problem>> {
    compile(std::sync::Arc::new(config.clone()), codecs, filters, None).map(|c| Validated {
        warnings: c.warnings,
    })
}

/// A cluster compiled but not yet connected to live endpoints.
struct ClusterPlan {
    index: usize,
    addrs: Vec<SocketAddr>,
    lb: LoadBalancer,
}

/// Everything a config compiles to, built without touching live state: committing it
/// ([`Compiled::commit`]) cannot fail, so a config either compiles whole or changes
/// nothing.
pub(crate) struct Compiled {
    config: Arc<Config>,
    clusters: Vec<ClusterPlan>,
    tables: HashMap<String, Arc<RouteTable>>,
    /// Each listener's filter chain, by listener name; its metric counters are
    /// attached on commit.
    chains: HashMap<String, FilterChain>,
    /// Things that work but are probably not what was meant.
    pub(crate) warnings: Vec<Problem>,
}

/// Validates `config` and compiles its route tables and load balancers, touching no
/// live state. This is the only validation: `metaproxy check`, start-up and every
/// reload run it. On failure returns every problem found, each with its field path.
/// Filters whose name and config are unchanged from `previous` are carried over with
/// their state (a rate limiter keeps its buckets); `previous` itself is not changed.
pub(crate) fn compile(
    config: Arc<Config>,
    codecs: &CodecRegistry,
    filters: &FilterRegistry,
    previous: Option<&Snapshot>,
) -> Result<Compiled, Vec<Problem>> {
    let (mut problems, warnings) = match config::validate_fields(&config, codecs) {
        Ok(v) => (Vec::new(), v.warnings),
        Err(problems) => (problems, Vec::new()),
    };
    let mut clusters = Vec::new();
    for (i, c) in config.clusters.iter().enumerate() {
        let addrs: Vec<SocketAddr> = c
            .endpoints
            .iter()
            .filter_map(|e| config::resolve_address(e.address()).ok())
            .collect();
        let specs: Vec<EndpointSpec> = c
            .endpoints
            .iter()
            .map(|e| EndpointSpec {
                address: e.address().to_owned(),
                weight: e.weight(),
            })
            .collect();
        match LoadBalancer::new(lb_policy(c.lb_policy), &specs) {
            Ok(lb) => clusters.push(ClusterPlan {
                index: i,
                addrs,
                lb,
            }),
            Err(e) => problems.push(Problem {
                field: format!("clusters[{i}].endpoints"),
                message: e.to_string(),
            }),
        }
    }
    let mut tables = HashMap::new();
    for (i, rc) in config.route_configs.iter().enumerate() {
        match RouteTable::compile(&route_spec(rc)) {
            Ok(t) => {
                tables.insert(rc.name.clone(), Arc::new(t));
            }
            Err(e) => {
                let e = e.prefixed(&format!("route_configs[{i}]"));
                let problem = Problem {
                    field: e.path().to_owned(),
                    message: e.kind().to_string(),
                };
                // A field the checks above reported already is not reported twice.
                let known = problems.iter().any(|p| {
                    p.field.starts_with(&problem.field) || problem.field.starts_with(&p.field)
                });
                if !known {
                    problems.push(problem);
                }
            }
        }
    }
    let mut chains = HashMap::new();
    for (index, l) in config.listeners.iter().enumerate() {
        let carried = previous
            .and_then(|p| p.listener(&l.name))
            .map(|rt| &rt.filters);
        match FilterChain::build(index, l, filters, carried) {
            Ok(chain) => {
                chains.insert(l.name.clone(), chain);
            }
            Err(found) => problems.extend(found),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Compiled {
        config,
        clusters,
        tables,
        chains,
        warnings,
    })
}

impl Compiled {
    /// Connects the compiled config to live state: reuses (and reconfigures) endpoints
    /// the registry knows, forgets those no cluster lists any more, and registers the
    /// metric series. Nothing here can fail.
    pub(crate) fn commit(mut self, endpoints: &EndpointRegistry, metrics: &Metrics) -> Snapshot {
        let config = self.config;
        let mut cluster_index = HashMap::new();
        let mut clusters = Vec::new();
        let mut keep = Vec::new();
        for plan in self.clusters {
            let c = &config.clusters[plan.index];
            for e in &c.endpoints {
                keep.push((c.name.clone(), e.address().to_owned()));
            }
            let rt = endpoints.build_cluster(c, &plan.addrs, plan.lb, metrics.cluster(&c.name));
            cluster_index.insert(c.name.clone(), clusters.len());
            clusters.push(Arc::new(rt));
        }
        endpoints.retain(&keep);

        let mut listeners = HashMap::new();
        for l in &config.listeners {
            let Some(table) = self.tables.get(&l.route_config) else {
                continue;
            };
            let table = table.clone();
            let resolved: Vec<Arc<ClusterRt>> = table
                .clusters()
                .iter()
                .filter_map(|name| cluster_index.get(&**name).map(|&i| clusters[i].clone()))
                .collect();
            if resolved.len() != table.clusters().len() {
                continue; // compile rejects dangling names
            }
            let requests = table
                .routes()
                .iter()
                .map(|r| {
                    resolved
                        .iter()
                        .map(|c| metrics.request(&l.name, r.name(), &c.name))
                        .collect()
                })
                .collect();
            let responses = resolved
                .iter()
                .map(|c| metrics.upstream(&l.name, &c.name))
                .collect();
            let log_keys = log_keys(&config, &l.route_config);
            let Some(mut filters) = self.chains.remove(&l.name) else {
                continue; // compile builds a chain for every listener
            };
            filters.attach_metrics(metrics, &l.name);
            listeners.insert(
                l.name.clone(),
                Arc::new(ListenerRt {
                    table,
                    clusters: resolved,
                    requests,
                    responses,
                    log_keys,
                    filters,
                }),
            );
        }
        Snapshot {
            config,
            listeners,
            clusters,
            provenance: Provenance::default(),
        }
    }
}

/// Compiles `config` ([`compile`]) and, only when all of it compiled, commits it to
/// live state ([`Compiled::commit`]); returns the snapshot and the warnings.
pub(crate) fn build(
    config: Arc<Config>,
    codecs: &CodecRegistry,
    filters: &FilterRegistry,
    endpoints: &EndpointRegistry,
    metrics: &Metrics,
    previous: Option<&Snapshot>,
) -> Result<(Snapshot, Vec<Problem>), Vec<Problem>> {
    let mut compiled = compile(config, codecs, filters, previous)?;
    let warnings = std::mem::take(&mut compiled.warnings);
    Ok((compiled.commit(endpoints, metrics), warnings))
}

/// Metadata keys the routes of route config `name` look at (logged in access logs).
fn log_keys(config: &Config, name: &str) -> Vec<Arc<str>> {
    let mut log_keys: Vec<Arc<str>> = Vec::new();
    if let Some(rc) = config.route_configs.iter().find(|rc| rc.name == name) {
        for r in &rc.routes {
            let keys = r
                .match_
                .metadata
                .iter()
                .map(|m| &m.key)
                .chain(&r.route.hash_policy);
            for k in keys {
                if !log_keys.iter().any(|have| &**have == k.as_str()) {
                    log_keys.push(k.as_str().into());
                }
            }
        }
    }
    log_keys
}
