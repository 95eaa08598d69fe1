//! `access_control`: allow or deny requests by metadata conditions written exactly like
//! a route's `match:`.

use std::sync::Arc;

use meta_protocol::LocalReplyKind;
use metaproxy_router::MatchConditions;
use serde::Deserialize;

use super::{
    parse_config, Filter, FilterConfigError, FilterContext, FilterFactory, FilterRequest, Verdict,
};
use crate::config::{check_match, RouteMatch};
use crate::snapshot::matcher_specs;

/// The registered name of the built-in access filter.
pub const ACCESS_CONTROL: &str = "access_control";

/// What a matching rule does.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Action {
    /// Only requests that match a rule pass; the rest are refused.
    Allow,
    /// Requests that match a rule are refused; the rest pass.
    Deny,
}

/// `config:` of `access_control`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessControlConfig {
    action: Action,
    /// Each rule is a route-style `match:`; a request matches when any rule holds.
    rules: Vec<RouteMatch>,
}

/// Builds [`AccessControl`] filters; registered as [`ACCESS_CONTROL`].
#[derive(Clone, Copy, Debug, Default)]
pub struct AccessControlFactory;

impl FilterFactory for AccessControlFactory {
    fn name(&self) -> &str {
        ACCESS_CONTROL
    }

    fn build(
        &self,
        config: &serde_json::Value,
        ctx: &FilterContext<'_>,
    ) -> Result<Arc<dyn Filter>, Vec<FilterConfigError>> {
        let c: AccessControlConfig = parse_config(config)?;
        let mut problems: Vec<FilterConfigError> = Vec::new();
        if c.rules.is_empty() {
            problems.push(FilterConfigError::new(
                "rules",
                "at least one rule is required",
            ));
        }
        let mut rules = Vec::with_capacity(c.rules.len());
        for (i, rule) in c.rules.iter().enumerate() {
            let at = format!("rules[{i}]");
            let found = check_match(&at, rule);
            if !found.is_empty() {
                problems.extend(
                    found
                        .into_iter()
                        .map(|p| FilterConfigError::new(p.field, p.message)),
                );
                continue;
            }
            match MatchConditions::compile(&matcher_specs(rule), &at) {
                Ok(m) => rules.push(m),
                Err(e) => problems.push(FilterConfigError::new(e.path(), e.kind().to_string())),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Arc::new(AccessControl {
            action: c.action,
            rules: rules.into_boxed_slice(),
            text: format!(
                "metaproxy: forbidden by {} on listener {}",
                ctx.label, ctx.listener
            )
            .into(),
        }))
    }
}

/// The built-in access filter: a refused request gets a local reply `forbidden`.
pub struct AccessControl {
    action: Action,
    rules: Box<[MatchConditions]>,
    text: Arc<str>,
}

impl Filter for AccessControl {
    fn on_request(&self, request: &mut FilterRequest<'_>) -> Verdict {
        let matched = self.rules.iter().any(|r| r.holds(request.metadata()));
        let allowed = match self.action {
            Action::Allow => matched,
            Action::Deny => !matched,
        };
        if allowed {
            Verdict::Continue
        } else {
            Verdict::Reply(LocalReplyKind::Forbidden, self.text.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use meta_protocol::{Message, MessageKind};
    use metaproxy_router::{RouteConfigSpec, RouteTable};

    fn build(config: serde_json::Value) -> Result<Arc<dyn Filter>, Vec<FilterConfigError>> {
        let ctx = FilterContext {
            listener: "in",
            label: "access_control",
        };
        AccessControlFactory.build(&config, &ctx)
    }

    fn passes(filter: &dyn Filter, pairs: &[(&str, &str)]) -> bool {
        let table = RouteTable::compile(&RouteConfigSpec {
            name: "r".into(),
            routes: vec![],
        })
        .unwrap();
        let mut msg = Message::new(MessageKind::Request, 1, Bytes::new());
        for (k, v) in pairs {
            msg.metadata_mut().set((*k).into(), (*v).into());
        }
        match filter.on_request(&mut FilterRequest::new("in", &mut msg, &table)) {
            Verdict::Continue => true,
            Verdict::Reply(kind, text) => {
                assert_eq!(kind, LocalReplyKind::Forbidden);
                assert!(text.contains("forbidden"), "{text}");
                false
            }
            Verdict::Wait(_) => panic!("never waits"),
        }
    }

    #[test]
    fn deny_refuses_only_matching_requests() {
        let f = build(serde_json::json!({"action": "deny", "rules": [
            {"metadata": [{"key": "user", "exact": "mallory"}]},
            {"metadata": [{"key": "method", "prefix": "drop"}, {"key": "user", "present": true, "invert": true}]}
        ]}))
        .unwrap();
        assert!(!passes(&*f, &[("user", "mallory")]));
        assert!(passes(&*f, &[("user", "alice"), ("method", "dropAll")]));
        assert!(
            !passes(&*f, &[("method", "dropAll")]),
            "second rule: no user"
        );
        assert!(passes(&*f, &[]));
    }

    #[test]
    fn allow_passes_only_matching_requests() {
        let f = build(serde_json::json!({"action": "allow", "rules": [
            {"metadata": [{"key": "interface", "regex": "^com\\.example\\."}]}
        ]}))
        .unwrap();
        assert!(passes(&*f, &[("interface", "com.example.Demo")]));
        assert!(!passes(&*f, &[("interface", "org.other.Demo")]));
        assert!(!passes(&*f, &[]));
    }

    #[test]
    fn rules_are_checked_like_route_matches() {
        let fields = |v: serde_json::Value| -> Vec<String> {
            build(v)
                .err()
                .unwrap_or_default()
                .into_iter()
                .map(|e| e.to_string())
                .collect()
        };
        assert_eq!(
            fields(serde_json::json!({"action": "deny", "rules": [
                {"metadata": [{"key": "user", "exact": "a", "prefix": "b"}]},
                {"metadata": [{"key": "user", "regex": "("}]}
            ]}))[0],
            "rules[0].metadata[0]: exactly one of exact, prefix, suffix, regex, present must be set"
        );
        let p = fields(
            serde_json::json!({"action": "deny", "rules": [{"metadata": [{"key": "user", "regex": "("}]}]}),
        );
        assert!(p[0].starts_with("rules[0].metadata[0].regex: "), "{p:?}");
        assert_eq!(
            fields(serde_json::json!({"action": "deny", "rules": []})),
            ["rules: at least one rule is required"]
        );
        let p = fields(serde_json::json!({"action": "maybe", "rules": []}));
        assert!(p[0].contains("maybe"), "{p:?}");
    }
}
