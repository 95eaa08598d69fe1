//! Semantic validation: references, ranges, exactly-one-of fields, codec options.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};

use meta_protocol::CodecRegistry;

use super::model::*;

/// One problem, with the path of the offending field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Field path, e.g. `route_configs[0].routes[2].route.weighted_clusters`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The result of a successful validation.
#[derive(Clone, Debug, Default)]
pub struct Validated {
    /// Things that work but are probably not what was meant.
    pub warnings: Vec<Problem>,
}

struct Report {
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl Report {
    fn err(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }
    fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }
}

/// Resolves `host:port` to its first socket address.
pub fn resolve(address: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if !address.contains(':') {
        return Err(format!("{address:?} is not host:port"));
    }
    address
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {address:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address:?} resolves to no address"))
}

fn check_unique<'a>(r: &mut Report, what: &str, names: impl Iterator<Item = &'a str>) {
    let mut seen = HashSet::new();
    for (i, name) in names.enumerate() {
        if name.is_empty() {
            r.err(format!("{what}[{i}].name"), "must not be empty");
        } else if !seen.insert(name) {
            r.err(
                format!("{what}[{i}].name"),
                format!("duplicate name {name:?}"),
            );
        }
    }
}

/// Checks names, references, values and codec options field by field; the route
/// tables, balancers and filter chains are compiled by [`super::validate`], which
/// calls this first.
pub(crate) fn validate_fields(
    config: &Config,
    codecs: &CodecRegistry,
) -> Result<Validated, Vec<Problem>> {
    let mut r = Report {
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    check_unique(
        &mut r,
        "listeners",
        config.listeners.iter().map(|l| l.name.as_str()),
    );
    check_unique(
        &mut r,
        "route_configs",
        config.route_configs.iter().map(|c| c.name.as_str()),
    );
    check_unique(
        &mut r,
        "clusters",
        config.clusters.iter().map(|c| c.name.as_str()),
    );
    let clusters: HashSet<&str> = config.clusters.iter().map(|c| c.name.as_str()).collect();

    if let Some(admin) = &config.admin {
        match resolve(&admin.address) {
            Err(e) => r.err("admin.address", e),
            Ok(addr) if !addr.ip().is_loopback() => r.warn(
                "admin.address",
                format!(
                    "{addr} is reachable beyond this host: anyone who can connect can read the config and reload it{}",
                    if admin.token_file.is_some() { " (with the token)" } else { "; set admin.token_file" }
                ),
            ),
            Ok(_) => {}
        }
        if let Some(path) = &admin.token_file {
            match std::fs::read_to_string(path) {
                Ok(t) if t.trim().is_empty() => {
                    r.err("admin.token_file", format!("{path}: the file is empty"))
                }
                Ok(_) => {}
                Err(e) => r.err("admin.token_file", format!("{path}: cannot read: {e}")),
            }
        }
    }
    if config.limits.max_buffered_bytes < 65536 {
        r.err("limits.max_buffered_bytes", "must be at least 65536 bytes");
    }
    if let Some(xds) = &config.xds {
        validate_xds(&mut r, xds);
    }
    if config.listeners.is_empty() {
        r.err("listeners", "at least one listener is required");
    }
    let mut addresses = HashSet::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let at = format!("listeners[{i}]");
        match resolve(&l.address) {
            Ok(addr) if addr.port() != 0 && !addresses.insert(addr) => r.err(
                format!("{at}.address"),
                format!("{addr} is used by another listener"),
            ),
            Ok(_) => {}
            Err(e) => r.err(format!("{at}.address"), e),
        }
        let mut mutations_supported = true;
        match codecs.get(&l.codec) {
            Err(_) => r.err(
                format!("{at}.codec"),
                format!(
                    "unknown codec {:?} (known: {})",
                    l.codec,
                    codecs.names().collect::<Vec<_>>().join(", ")
                ),
            ),
            Ok(factory) => match factory.configure(&l.options) {
                Ok(protocol) => mutations_supported = protocol.capabilities().mutations,
                Err(e) => r.err(format!("{at}.options"), e.to_string()),
            },
        }
        if l.max_frame_size < 64 {
            r.err(format!("{at}.max_frame_size"), "must be at least 64 bytes");
        }
        if l.max_connections == 0 {
            r.err(format!("{at}.max_connections"), "must be greater than 0");
        }
        for (field, d) in [
            ("idle_timeout", l.idle_timeout),
            ("write_timeout", l.write_timeout),
            ("frame_timeout", l.frame_timeout),
        ] {
            if d.get().is_zero() {
                r.err(format!("{at}.{field}"), "must be greater than 0");
            }
        }
        if l.max_buffered_bytes < 4096 {
            r.err(
                format!("{at}.max_buffered_bytes"),
                "must be at least 4096 bytes",
            );
        }
        if let Some(log) = &l.access_log {
            if log.path.trim().is_empty() {
                r.err(format!("{at}.access_log.path"), "must not be empty");
            }
        }
        match config
            .route_configs
            .iter()
            .position(|c| c.name == l.route_config)
        {
            None if config.xds.is_some() => r.warn(
                format!("{at}.route_config"),
                format!(
                    "no route config named {:?} yet; it is expected from the control plane, and until it arrives requests get the no_route reply",
                    l.route_config
                ),
            ),
            None => r.err(
                format!("{at}.route_config"),
                format!("no route config named {:?}", l.route_config),
            ),
            Some(rc) if !mutations_supported => {
                for (j, route) in config.route_configs[rc].routes.iter().enumerate() {
                    if !route.request_mutation.is_empty() || !route.response_mutation.is_empty() {
                        r.warn(
                            format!("route_configs[{rc}].routes[{j}]"),
                            format!(
                                "mutations cannot be carried by listener {:?} (codec {} with these options); they are ignored",
                                l.name, l.codec
                            ),
                        );
                    }
                }
            }
            Some(_) => {}
        }
    }

    for (i, rc) in config.route_configs.iter().enumerate() {
        for (j, route) in rc.routes.iter().enumerate() {
            let at = format!("route_configs[{i}].routes[{j}]");
            validate_route(&mut r, &at, route, &clusters);
        }
    }

    for (i, c) in config.clusters.iter().enumerate() {
        let at = format!("clusters[{i}]");
        if c.endpoints.is_empty() && config.xds.is_some() {
            r.warn(
                format!("{at}.endpoints"),
                "no endpoints yet; requests to this cluster get the upstream_failure reply until the control plane sends some",
            );
        } else if c.endpoints.is_empty() {
            r.err(
                format!("{at}.endpoints"),
                "at least one endpoint is required",
            );
        }
        for (j, e) in c.endpoints.iter().enumerate() {
            if let Err(msg) = resolve(e.address()) {
                r.err(format!("{at}.endpoints[{j}]"), msg);
            }
            if e.weight() == 0 {
                r.err(
                    format!("{at}.endpoints[{j}].weight"),
                    "must be greater than 0",
                );
            }
        }
        if c.max_connections == 0 {
            r.err(format!("{at}.max_connections"), "must be greater than 0");
        }
        if c.max_pending_requests == 0 {
            r.err(
                format!("{at}.max_pending_requests"),
                "must be greater than 0",
            );
        }
        if c.connect_timeout.get().is_zero() {
            r.err(format!("{at}.connect_timeout"), "must be greater than 0");
        }
        for (field, d) in [
            ("write_timeout", c.write_timeout),
            ("idle_timeout", c.idle_timeout),
            ("heartbeat_interval", c.heartbeat_interval),
        ] {
            if d.get().is_zero() {
                r.err(format!("{at}.{field}"), "must be greater than 0");
            }
        }
        {
            let od = &c.outlier_detection;
            if od.consecutive_failures == 0 {
                r.err(
                    format!("{at}.outlier_detection.consecutive_failures"),
                    "must be greater than 0",
                );
            }
            if od.max_ejection_percent > 100 {
                r.err(
                    format!("{at}.outlier_detection.max_ejection_percent"),
                    "must be within 0..=100",
                );
            }
        }
    }

    if r.problems.is_empty() {
        Ok(Validated {
            warnings: r.warnings,
        })
    } else {
        Err(r.problems)
    }
}

fn validate_xds(r: &mut Report, xds: &XdsConfig) {
    if let Err(e) = resolve(&xds.address) {
        r.err("xds.address", e);
    }
    if xds.node_id.trim().is_empty() {
        r.err("xds.node_id", "must not be empty");
    }
    for (field, value) in [
        ("connect_timeout", xds.connect_timeout),
        ("backoff_base", xds.backoff_base),
        ("backoff_max", xds.backoff_max),
    ] {
        if value.get().is_zero() {
            r.err(format!("xds.{field}"), "must be greater than 0");
        }
    }
    if xds.backoff_base > xds.backoff_max {
        r.err("xds.backoff_base", "must not exceed backoff_max");
    }
    if xds.max_message_size < 1024 {
        r.err("xds.max_message_size", "must be at least 1024 bytes");
    }
}

/// Checks one `match:` block at field path `at` (a route's `...match`, an access rule):
/// exactly one test per condition, non-empty keys, valid regexes.
pub(crate) fn check_match(at: &str, m: &RouteMatch) -> Vec<Problem> {
    let mut r = Report {
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    for (k, m) in m.metadata.iter().enumerate() {
        let mat = format!("{at}.metadata[{k}]");
        if m.key.is_empty() {
            r.err(format!("{mat}.key"), "must not be empty");
        }
        let set = [
            m.exact.is_some(),
            m.prefix.is_some(),
            m.suffix.is_some(),
            m.regex.is_some(),
            m.present.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set != 1 {
            r.err(
                mat.clone(),
                "exactly one of exact, prefix, suffix, regex, present must be set",
            );
        }
        if m.present == Some(false) {
            r.err(
                format!("{mat}.present"),
                "only `present: true` is allowed; use `invert: true` to require absence",
            );
        }
        if let Some(re) = &m.regex {
            if let Err(e) = regex::Regex::new(re) {
                r.err(format!("{mat}.regex"), e.to_string().replace('\n', " "));
            }
        }
    }
    r.problems
}

fn validate_route(r: &mut Report, at: &str, route: &RouteEntry, clusters: &HashSet<&str>) {
    r.problems
        .extend(check_match(&format!("{at}.match"), &route.match_));
    let action = &route.route;
    let ra = format!("{at}.route");
    match (&action.cluster, &action.weighted_clusters) {
        (Some(_), Some(_)) | (None, None) => r.err(
            ra.clone(),
            "exactly one of cluster, weighted_clusters must be set",
        ),
        (Some(c), None) => {
            if !clusters.contains(c.as_str()) {
                r.err(format!("{ra}.cluster"), format!("no cluster named {c:?}"));
            }
        }
        (None, Some(wc)) => {
            if wc.is_empty() {
                r.err(format!("{ra}.weighted_clusters"), "must not be empty");
            }
            let total: u64 = wc.iter().map(|w| u64::from(w.weight)).sum();
            if !wc.is_empty() && total == 0 {
                r.err(format!("{ra}.weighted_clusters"), "total weight is 0");
            }
            for (k, w) in wc.iter().enumerate() {
                if !clusters.contains(w.cluster.as_str()) {
                    r.err(
                        format!("{ra}.weighted_clusters[{k}].cluster"),
                        format!("no cluster named {:?}", w.cluster),
                    );
                }
            }
        }
    }
    for (k, m) in action.mirror.iter().enumerate() {
        if !clusters.contains(m.cluster.as_str()) {
            r.err(
                format!("{ra}.mirror[{k}].cluster"),
                format!("no cluster named {:?}", m.cluster),
            );
        }
        if !(0.0..=100.0).contains(&m.percent) {
            r.err(
                format!("{ra}.mirror[{k}].percent"),
                "must be within 0..=100",
            );
        }
    }
    if action.timeout.get().is_zero() {
        r.err(format!("{ra}.timeout"), "must be greater than 0");
    }
    if let Some(retries) = &action.retries {
        if retries.attempts > 10 {
            r.err(format!("{ra}.retries.attempts"), "at most 10");
        }
    }
    for (field, list) in [
        ("request_mutation", &route.request_mutation),
        ("response_mutation", &route.response_mutation),
    ] {
        for (k, kv) in list.iter().enumerate() {
            if kv.key.is_empty() {
                r.err(format!("{at}.{field}[{k}].key"), "must not be empty");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn registry() -> CodecRegistry {
        crate::codecs::default_registry()
    }

    fn problems(yaml: &str) -> Vec<String> {
        let c = crate::config::parse(yaml, Path::new("t.yaml")).unwrap();
        match crate::validate(&c, &registry()) {
            Ok(_) => vec![],
            Err(p) => p.iter().map(|p| p.to_string()).collect(),
        }
    }

    const BASE: &str = r#"
listeners:
  - {name: in, address: "127.0.0.1:0", codec: dubbo, route_config: r}
route_configs:
  - name: r
    routes:
      - name: a
        match: {metadata: [{key: interface, exact: x}]}
        route: {cluster: c}
      - name: b
        route: {weighted_clusters: [{cluster: c, weight: 1}]}
clusters:
  - {name: c, endpoints: ["127.0.0.1:1"]}
"#;

    #[test]
    fn with_xds_a_missing_route_config_and_empty_endpoints_are_warnings() {
        let y = BASE
            .replace("route_config: r}", "route_config: from-xds}")
            .replace("endpoints: [\"127.0.0.1:1\"]", "endpoints: []");
        let without = problems(&y);
        assert_eq!(without.len(), 2, "{without:?}");
        let with = format!("xds: {{address: \"127.0.0.1:15010\", node_id: n1}}\n{y}");
        assert!(problems(&with).is_empty(), "{:?}", problems(&with));
        let c = crate::config::parse(&with, Path::new("t.yaml")).unwrap();
        let warnings = crate::validate(&c, &registry()).unwrap().warnings;
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert_eq!(warnings[0].field, "listeners[0].route_config");
        assert_eq!(warnings[1].field, "clusters[0].endpoints");
    }

    #[test]
    fn xds_fields_are_checked() {
        let y = format!(
            "xds: {{address: nowhere, node_id: \" \", backoff_base: 2s, backoff_max: 1s, max_message_size: 10}}\n{BASE}"
        );
        let p = problems(&y);
        assert_eq!(
            p,
            vec![
                "xds.address: \"nowhere\" is not host:port",
                "xds.node_id: must not be empty",
                "xds.backoff_base: must not exceed backoff_max",
                "xds.max_message_size: must be at least 1024 bytes",
            ]
        );
    }

    #[test]
    fn valid_config_passes() {
        assert!(problems(BASE).is_empty(), "{:?}", problems(BASE));
    }

    #[test]
    fn zero_total_weight_names_the_field() {
        let p = problems(&BASE.replace("weight: 1", "weight: 0"));
        assert_eq!(
            p,
            vec!["route_configs[0].routes[1].route.weighted_clusters: total weight is 0"]
        );
    }

    #[test]
    fn every_dangling_reference_is_reported() {
        let y = BASE
            .replace(
                "route: {cluster: c}",
                "route: {cluster: nope, mirror: [{cluster: ghost}]}",
            )
            .replace("route_config: r}", "route_config: missing}");
        let p = problems(&y);
        assert!(
            p.contains(&"listeners[0].route_config: no route config named \"missing\"".to_string()),
            "{p:?}"
        );
        assert!(
            p.contains(
                &"route_configs[0].routes[0].route.cluster: no cluster named \"nope\"".to_string()
            ),
            "{p:?}"
        );
        assert!(
            p.contains(
                &"route_configs[0].routes[0].route.mirror[0].cluster: no cluster named \"ghost\""
                    .to_string()
            ),
            "{p:?}"
        );
    }

    #[test]
    fn matcher_needs_exactly_one_kind_and_valid_regex() {
        let y = BASE.replace(
            "{key: interface, exact: x}",
            "{key: interface, exact: x, prefix: y}",
        );
        assert_eq!(
            problems(&y),
            vec!["route_configs[0].routes[0].match.metadata[0]: exactly one of exact, prefix, suffix, regex, present must be set"]
        );
        let y = BASE.replace(
            "{key: interface, exact: x}",
            "{key: interface, regex: \"(\"}",
        );
        let p = problems(&y);
        assert_eq!(p.len(), 1);
        assert!(
            p[0].starts_with("route_configs[0].routes[0].match.metadata[0].regex: "),
            "{p:?}"
        );
    }

    #[test]
    fn unknown_codec_and_bad_endpoint() {
        let y = BASE
            .replace("codec: dubbo", "codec: grpc")
            .replace("127.0.0.1:1", "nohostport");
        let p = problems(&y);
        assert!(
            p.iter()
                .any(|p| p.starts_with("listeners[0].codec: unknown codec \"grpc\"")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|p| p.starts_with("clusters[0].endpoints[0]: ")),
            "{p:?}"
        );
    }

    #[test]
    fn filter_problems_name_their_fields() {
        let y = BASE.replace(
            "route_config: r}",
            "route_config: r, filters: [{name: local_rate_limit, config: {rate: 0}}, {name: nope}, {name: access_control, config: {action: deny, rules: [{metadata: [{key: u}]}]}}]}",
        );
        assert_eq!(
            problems(&y),
            vec![
                "listeners[0].filters[0].config.rate: must be greater than 0",
                "listeners[0].filters[1].name: unknown filter \"nope\" (known: access_control, local_rate_limit)",
                "listeners[0].filters[2].config.rules[0].metadata[0]: exactly one of exact, prefix, suffix, regex, present must be set",
            ]
        );
        let ok = BASE.replace(
            "route_config: r}",
            "route_config: r, filters: [{name: local_rate_limit, config: {rate: 5, by: metadata, key: user}}]}",
        );
        assert!(problems(&ok).is_empty(), "{:?}", problems(&ok));
    }

    #[test]
    fn duplicate_names() {
        let y = BASE.replace(
            "clusters:\n  - {name: c, endpoints: [\"127.0.0.1:1\"]}",
            "clusters:\n  - {name: c, endpoints: [\"127.0.0.1:1\"]}\n  - {name: c, endpoints: [\"127.0.0.1:2\"]}",
        );
        assert_eq!(problems(&y), vec!["clusters[1].name: duplicate name \"c\""]);
    }
}
