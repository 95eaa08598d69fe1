//! Resources from more than one source, merged by name: the config file (or the config
//! an embedding program passed in) and a control plane (xDS). Also records where each
//! resource in force came from, for `GET /config`.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use super::model::{ClusterConfig, Config, RouteConfig};

/// The source name of resources delivered by a control plane.
pub const XDS_SOURCE: &str = "xds";

/// Where one resource in force came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Origin {
    /// `file` (the config file), `static` (a config passed in by an embedding
    /// program) or `xds`.
    pub source: String,
    /// The control plane's version of the resource; absent for file resources.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// True for a cluster that an xDS route config refers to but no source has
    /// defined yet: it has no endpoints until the control plane sends it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
}

impl Origin {
    fn of(source: &str) -> Origin {
        Origin {
            source: source.to_owned(),
            version: None,
            pending: false,
        }
    }
}

/// One resource delivered by a control plane, with the version it came in.
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned<T> {
    /// The resource, in the config file's model.
    pub resource: T,
    /// The control plane's `version_info` of the response that carried it.
    pub version: String,
}

/// The clusters and route configs a control plane currently provides.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DynamicResources {
    /// Clusters (with their endpoints).
    pub clusters: Vec<Versioned<ClusterConfig>>,
    /// Route configs.
    pub route_configs: Vec<Versioned<RouteConfig>>,
}

/// Where each listener, route config and cluster in force came from, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Provenance {
    /// Listeners by name.
    pub listeners: BTreeMap<String, Origin>,
    /// Route configs by name.
    pub route_configs: BTreeMap<String, Origin>,
    /// Clusters by name.
    pub clusters: BTreeMap<String, Origin>,
}

/// The result of [`merge`].
#[derive(Clone, Debug, PartialEq)]
pub struct Merged {
    /// The config to validate and apply.
    pub config: Config,
    /// Where each resource came from.
    pub provenance: Provenance,
    /// Dynamic resources left out because the base config defines the same name.
    pub shadowed: Vec<String>,
}

/// Merges `dynamic` into `base` by name. Resources of `base` (named `base_source` in the
/// provenance) win: a dynamic resource with a name `base` already uses is left out and
/// reported in [`Merged::shadowed`]. A cluster that a dynamic route config refers to
/// and nobody defines is added with no endpoints (its requests get the
/// `upstream_failure` reply) and marked pending, so that routes and clusters may
/// arrive in any order.
pub fn merge(base: &Config, base_source: &str, dynamic: &DynamicResources) -> Merged {
    let mut config = base.clone();
    let mut provenance = Provenance::default();
    let mut shadowed = Vec::new();
    for l in &config.listeners {
        provenance
            .listeners
            .insert(l.name.clone(), Origin::of(base_source));
    }
    for rc in &config.route_configs {
        provenance
            .route_configs
            .insert(rc.name.clone(), Origin::of(base_source));
    }
    for c in &config.clusters {
        provenance
            .clusters
            .insert(c.name.clone(), Origin::of(base_source));
    }
    add_dynamic(
        &dynamic.route_configs,
        |rc| &rc.name,
        "route config",
        base_source,
        &mut provenance.route_configs,
        &mut config.route_configs,
        &mut shadowed,
    );
    add_dynamic(
        &dynamic.clusters,
        |c| &c.name,
        "cluster",
        base_source,
        &mut provenance.clusters,
        &mut config.clusters,
        &mut shadowed,
    );
    let dynamic_routes: HashSet<&str> = dynamic
        .route_configs
        .iter()
        .map(|rc| rc.resource.name.as_str())
        .collect();
    let mut missing = Vec::new();
    for rc in &config.route_configs {
        if !dynamic_routes.contains(rc.name.as_str()) {
            continue;
        }
        for route in &rc.routes {
            let action = &route.route;
            let names = action
                .cluster
                .iter()
                .chain(
                    action
                        .weighted_clusters
                        .iter()
                        .flatten()
                        .map(|w| &w.cluster),
                )
                .chain(action.mirror.iter().map(|m| &m.cluster));
            for name in names {
                if !provenance.clusters.contains_key(name) && !missing.contains(name) {
                    missing.push(name.clone());
                }
            }
        }
    }
    for name in missing {
        provenance.clusters.insert(
            name.clone(),
            Origin {
                source: XDS_SOURCE.to_owned(),
                version: None,
                pending: true,
            },
        );
        config.clusters.push(empty_cluster(name));
    }
    Merged {
        config,
        provenance,
        shadowed,
    }
}

/// Appends the dynamic resources whose names `origins` does not know yet to `into`,
/// recording their origin; reports the others in `shadowed`.
fn add_dynamic<T: Clone>(
    resources: &[Versioned<T>],
    name: impl Fn(&T) -> &String,
    what: &str,
    base_source: &str,
    origins: &mut BTreeMap<String, Origin>,
    into: &mut Vec<T>,
    shadowed: &mut Vec<String>,
) {
    for r in resources {
        let name = name(&r.resource);
        if origins.contains_key(name) {
            shadowed.push(format!(
                "{what} {name:?} from xds is ignored: the {base_source} config defines it"
            ));
            continue;
        }
        origins.insert(
            name.clone(),
            Origin {
                source: XDS_SOURCE.to_owned(),
                version: Some(r.version.clone()),
                pending: false,
            },
        );
        into.push(r.resource.clone());
    }
}

/// A cluster with no endpoints and default settings.
fn empty_cluster(name: String) -> ClusterConfig {
    ClusterConfig::new(&name, std::iter::empty::<&str>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = r#"
xds: {address: "127.0.0.1:15010", node_id: n1}
listeners:
  - {name: in, address: "127.0.0.1:0", codec: dubbo, route_config: dyn}
route_configs:
  - name: file-routes
    routes: [{route: {cluster: c}}]
clusters:
  - {name: c, endpoints: ["127.0.0.1:1"]}
"#;

    fn route_config(name: &str, clusters: &[&str]) -> RouteConfig {
        let yaml = format!(
            "name: {name}\nroutes: [{{route: {{weighted_clusters: [{}]}}}}]",
            clusters
                .iter()
                .map(|c| format!("{{cluster: {c}, weight: 1}}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        serde_saphyr::from_str(&yaml).unwrap()
    }

    #[test]
    fn dynamic_resources_join_the_file_and_the_file_wins_on_a_name_clash() {
        let base = crate::config::parse(BASE, Path::new("t.yaml")).unwrap();
        let mut clash = empty_cluster("c".to_owned());
        clash.endpoints = vec![crate::config::EndpointConfig::Address("127.0.0.1:9".into())];
        let dynamic = DynamicResources {
            clusters: vec![
                Versioned {
                    resource: clash,
                    version: "7".into(),
                },
                Versioned {
                    resource: empty_cluster("d".to_owned()),
                    version: "7".into(),
                },
            ],
            route_configs: vec![Versioned {
                resource: route_config("dyn", &["c", "d", "later"]),
                version: "3".into(),
            }],
        };
        let merged = merge(&base, "file", &dynamic);
        let names: Vec<&str> = merged
            .config
            .clusters
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["c", "d", "later"]);
        assert_eq!(
            merged.config.clusters[0].endpoints[0].address(),
            "127.0.0.1:1"
        );
        assert_eq!(merged.shadowed.len(), 1, "{:?}", merged.shadowed);
        let p = &merged.provenance;
        assert_eq!(p.clusters["c"].source, "file");
        assert_eq!(p.clusters["d"].version.as_deref(), Some("7"));
        assert!(p.clusters["later"].pending);
        assert_eq!(p.route_configs["dyn"].version.as_deref(), Some("3"));
        assert_eq!(p.route_configs["file-routes"].source, "file");
        assert_eq!(p.listeners["in"].source, "file");
        let codecs = crate::codecs::default_registry();
        crate::validate(&merged.config, &codecs).unwrap();
    }
}
