//! Errors raised while compiling a route config or building a load balancer.

use std::fmt;

/// What is wrong with one field of a route config or cluster.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RouterErrorKind {
    /// `weighted_clusters` whose weights add up to zero.
    #[error("total weight is 0")]
    ZeroTotalWeight,
    /// A list that must have at least one element is empty.
    #[error("must not be empty")]
    Empty,
    /// A regex condition that does not compile (the message is the regex crate's).
    #[error("{0}")]
    Regex(String),
    /// A mirror percentage outside `0..=100` (or not a number).
    #[error("percent must be between 0 and 100, got {0}")]
    Percent(f64),
    /// An endpoint weight of 0 (like Envoy, endpoint weights are at least 1).
    #[error("weight must be at least 1")]
    ZeroEndpointWeight,
    /// More endpoints than a policy can hold (maglev needs fewer than its table size).
    #[error("{count} endpoints is more than the {max} this lb_policy supports")]
    TooManyEndpoints {
        /// Endpoints given.
        count: usize,
        /// The most the policy supports.
        max: usize,
    },
    /// An unknown `lb_policy` name.
    #[error("unknown lb_policy {0:?} (expected round_robin, random, least_request, ring_hash or maglev)")]
    UnknownPolicy(String),
}

/// A compile error with the path of the offending field, relative to the route config
/// (`routes[2].route.weighted_clusters`) or to the cluster (`endpoints[1].weight`).
///
/// Displays as `path: message`, in the style of the config docs (docs/CONFIG.md). The runtime adds its own prefix
/// with [`RouterError::prefixed`] (`route_configs[0].` or `clusters[3].`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct RouterError {
    path: String,
    kind: RouterErrorKind,
}

impl RouterError {
    /// An error of `kind` at `path`.
    pub fn new(path: impl Into<String>, kind: RouterErrorKind) -> Self {
        RouterError {
            path: path.into(),
            kind,
        }
    }

    /// The field path (`routes[0].match.metadata[1].regex`); empty for a whole-object error.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong.
    pub fn kind(&self) -> &RouterErrorKind {
        &self.kind
    }

    /// The same error with `prefix` put before the path: `prefixed("route_configs[0]")`
    /// turns `routes[2].route.cluster` into `route_configs[0].routes[2].route.cluster`.
    pub fn prefixed(mut self, prefix: &str) -> Self {
        self.path = if self.path.is_empty() {
            prefix.to_owned()
        } else if prefix.is_empty() {
            self.path
        } else {
            format!("{prefix}.{}", self.path)
        };
        self
    }
}

impl fmt::Display for RouterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.kind)
        } else {
            write!(f, "{}: {}", self.path, self.kind)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_path_then_message() {
        let e = RouterError::new(
            "routes[2].route.weighted_clusters",
            RouterErrorKind::ZeroTotalWeight,
        );
        assert_eq!(
            e.to_string(),
            "routes[2].route.weighted_clusters: total weight is 0"
        );
        let e = e.prefixed("route_configs[0]");
        assert_eq!(
            e.to_string(),
            "route_configs[0].routes[2].route.weighted_clusters: total weight is 0"
        );
        assert_eq!(e.kind(), &RouterErrorKind::ZeroTotalWeight);
    }

    #[test]
    fn prefix_of_a_pathless_error_becomes_its_path() {
        let e = RouterError::new("", RouterErrorKind::Empty).prefixed("clusters[1].endpoints");
        assert_eq!(e.path(), "clusters[1].endpoints");
        assert_eq!(e.to_string(), "clusters[1].endpoints: must not be empty");
    }
}
