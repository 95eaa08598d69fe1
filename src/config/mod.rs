//! Loading and validating the YAML configuration (reference: docs/CONFIG.md).
//!
//! Loading has two stages: YAML syntax and schema (unknown fields are errors), then
//! [`crate::validate`], which checks every cross-reference and value and reports each problem
//! with the path of the offending field, e.g.
//! `route_configs[0].routes[2].route.weighted_clusters: total weight is 0`.

mod build;
mod duration;
mod model;
mod sources;
mod validate;

use std::path::{Path, PathBuf};

pub use duration::ConfigDuration;
pub use model::*;
pub use sources::{merge, DynamicResources, Merged, Origin, Provenance, Versioned, XDS_SOURCE};
pub(crate) use validate::{check_match, validate_fields};
pub use validate::{resolve as resolve_address, Problem, Validated};

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// YAML syntax or schema error (unknown field, wrong type), with its position.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message with line and column.
        message: String,
    },
    /// Semantic problems, each with a field path.
    #[error("{path}: invalid config:\n{}", problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

/// Parses YAML text into a [`Config`] without semantic validation. `origin` names the
/// source in errors.
pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    serde_saphyr::from_str::<Config>(text).map_err(|e| ConfigError::Syntax {
        path: origin.to_path_buf(),
        message: e.to_string(),
    })
}

/// Reads and parses `path` without semantic validation.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
listeners:
  - name: in
    address: 127.0.0.1:0
    codec: dubbo
    route_config: r
route_configs:
  - name: r
    routes:
      - match: {}
        route: {cluster: c}
clusters:
  - name: c
    endpoints: [127.0.0.1:1, {address: 127.0.0.1:2, weight: 3}]
"#;

    #[test]
    fn parses_defaults() {
        let c = parse(MINIMAL, Path::new("x.yaml")).unwrap();
        let l = &c.listeners[0];
        assert_eq!(l.max_frame_size, 16 * 1024 * 1024);
        assert_eq!(l.idle_timeout.get().as_secs(), 300);
        assert_eq!(l.max_connections, 10_000);
        let r = &c.route_configs[0].routes[0].route;
        assert_eq!(r.timeout.get().as_secs(), 15);
        let cl = &c.clusters[0];
        assert_eq!(cl.endpoints[1].weight(), 3);
        assert_eq!(cl.endpoints[0].weight(), 1);
        assert_eq!(cl.lb_policy, LbPolicyName::RoundRobin);
    }

    #[test]
    fn unknown_field_is_an_error_with_position() {
        let text = MINIMAL.replace("codec: dubbo", "codec: dubbo\n    colour: red");
        let err = parse(&text, Path::new("bad.yaml")).unwrap_err().to_string();
        assert!(err.starts_with("bad.yaml: "), "{err}");
        assert!(err.contains("colour"), "{err}");
        assert!(err.contains("line") || err.contains(':'), "{err}");
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let err = parse("listeners: [\n  - {name: a", Path::new("s.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("s.yaml: "), "{err}");
        assert!(err.contains('2') || err.contains("line"), "{err}");
    }

    #[test]
    fn bad_duration_is_reported() {
        let text = MINIMAL.replace("route: {cluster: c}", "route: {cluster: c, timeout: soon}");
        let err = parse(&text, Path::new("d.yaml")).unwrap_err().to_string();
        assert!(err.contains("invalid duration"), "{err}");
    }
}
