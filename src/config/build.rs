//! Building a [`Config`] in code: from a YAML string, or from constructors that fill in
//! every default exactly as the YAML loader does.
//!
//! ```
//! use metaproxy::config::{ClusterConfig, Config, ListenerConfig, RouteConfig, RouteEntry};
//!
//! let config = Config {
//!     listeners: vec![ListenerConfig::new("kv-in", "127.0.0.1:0", "kv", "kv-routes")],
//!     route_configs: vec![RouteConfig::new("kv-routes", vec![RouteEntry::to_cluster("all", "kv-backends")])],
//!     clusters: vec![ClusterConfig::new("kv-backends", ["127.0.0.1:7001", "127.0.0.1:7002"])],
//!     ..Config::default()
//! };
//! assert_eq!(config.listeners[0].idle_timeout.get().as_secs(), 300); // the YAML default
//!
//! // The same from YAML text.
//! let from_text = Config::from_yaml_str(r#"
//! listeners: [{name: kv-in, address: "127.0.0.1:0", codec: kv, route_config: kv-routes}]
//! route_configs: [{name: kv-routes, routes: [{name: all, route: {cluster: kv-backends}}]}]
//! clusters: [{name: kv-backends, endpoints: ["127.0.0.1:7001", "127.0.0.1:7002"]}]
//! "#).unwrap();
//! assert_eq!(config, from_text);
//! ```
//!
//! Listener address port `0` binds an ephemeral port; ask the running server which one
//! with [`crate::RunningServer::local_addr`].

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::json;

use super::{
    parse, ClusterConfig, Config, ConfigError, EndpointConfig, ListenerConfig, MetadataMatch,
    RouteConfig, RouteEntry,
};

/// What errors from [`Config::from_yaml_str`] name as their source.
const YAML_STRING_ORIGIN: &str = "<yaml string>";

/// Fills every field the value leaves out with its YAML default, by the same serde
/// attributes the loader uses, so code and files can never disagree on a default.
fn with_defaults<T: DeserializeOwned>(value: serde_json::Value) -> T {
    match serde_json::from_value(value) {
        Ok(v) => v,
        // The values passed in are built by this module's constructors from their
        // typed arguments; a failure is a bug in this file, not a user error.
        Err(e) => unreachable!("config constructor built an invalid value: {e}"),
    }
}

impl Config {
    /// Parses YAML text (the format of the config file) without semantic validation;
    /// errors name the source `<yaml string>`. [`crate::Server::new`] validates.
    pub fn from_yaml_str(text: &str) -> Result<Config, ConfigError> {
        parse(text, Path::new(YAML_STRING_ORIGIN))
    }
}

impl ListenerConfig {
    /// A listener with every optional field at its default (16 MiB frames, 300 s idle
    /// timeout, 10,000 connections, no access log, no codec options, no filters). Port 0 binds an
    /// ephemeral port.
    pub fn new(name: &str, address: &str, codec: &str, route_config: &str) -> ListenerConfig {
        with_defaults(json!({
            "name": name, "address": address, "codec": codec, "route_config": route_config,
        }))
    }
}

impl RouteConfig {
    /// A route table; the first route whose match holds wins.
    pub fn new(name: &str, routes: Vec<RouteEntry>) -> RouteConfig {
        RouteConfig {
            name: name.to_owned(),
            routes,
        }
    }
}

impl RouteEntry {
    /// A route named `name` that matches every request and sends it to `cluster`, with
    /// the default 15 s timeout, no retries, mirrors or mutations. Set `match_` to add
    /// conditions.
    pub fn to_cluster(name: &str, cluster: &str) -> RouteEntry {
        with_defaults(json!({"name": name, "route": {"cluster": cluster}}))
    }
}

impl MetadataMatch {
    /// The condition "metadata `key` equals `value`".
    pub fn exact(key: &str, value: &str) -> MetadataMatch {
        with_defaults(json!({"key": key, "exact": value}))
    }

    /// The condition "metadata `key` is present", whatever its value.
    pub fn present(key: &str) -> MetadataMatch {
        with_defaults(json!({"key": key, "present": true}))
    }
}

impl ClusterConfig {
    /// A cluster of `endpoints` (`host:port`, weight 1) with every optional field at its
    /// default (round robin, 1 s connect timeout, 64 connections per endpoint, 1,024
    /// pending requests).
    pub fn new<I, S>(name: &str, endpoints: I) -> ClusterConfig
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let endpoints: Vec<EndpointConfig> = endpoints
            .into_iter()
            .map(|a| EndpointConfig::Address(a.as_ref().to_owned()))
            .collect();
        with_defaults(json!({"name": name, "endpoints": endpoints}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_match_the_yaml_defaults() {
        let yaml = Config::from_yaml_str(
            "listeners: [{name: l, address: '127.0.0.1:0', codec: kv, route_config: r}]\n\
             route_configs: [{name: r, routes: [{name: a, route: {cluster: c}}]}]\n\
             clusters: [{name: c, endpoints: ['127.0.0.1:1']}]\n",
        )
        .unwrap();
        let code = Config {
            listeners: vec![ListenerConfig::new("l", "127.0.0.1:0", "kv", "r")],
            route_configs: vec![RouteConfig::new(
                "r",
                vec![RouteEntry::to_cluster("a", "c")],
            )],
            clusters: vec![ClusterConfig::new("c", ["127.0.0.1:1"])],
            ..Config::default()
        };
        assert_eq!(yaml, code);
    }

    #[test]
    fn yaml_string_errors_name_their_origin() {
        let err = Config::from_yaml_str("listeners: [")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("<yaml string>: "), "{err}");
    }
}
