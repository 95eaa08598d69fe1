//! Compiled match conditions.

use meta_protocol::Metadata;
use regex::Regex;

use crate::error::{RouterError, RouterErrorKind};
use crate::spec::{MatchKind, MatcherSpec};

/// How a compiled condition tests a value.
#[derive(Debug, Clone)]
pub(crate) enum Test {
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    Regex(Regex),
    Present,
}

impl Test {
    /// Relative cost, to evaluate cheap conditions first.
    fn cost(&self) -> u8 {
        match self {
            Test::Present => 0,
            Test::Exact(_) => 1,
            Test::Prefix(_) | Test::Suffix(_) => 2,
            Test::Regex(_) => 3,
        }
    }
}

/// One compiled `match.metadata[]` condition.
#[derive(Debug, Clone)]
pub(crate) struct Condition {
    pub(crate) key: Box<str>,
    pub(crate) test: Test,
    pub(crate) invert: bool,
}

impl Condition {
    /// Compiles `spec`; `path` is the condition's field path for errors.
    pub(crate) fn compile(spec: &MatcherSpec, path: &str) -> Result<Self, RouterError> {
        if spec.key.is_empty() {
            return Err(RouterError::new(
                format!("{path}.key"),
                RouterErrorKind::Empty,
            ));
        }
        let test = match &spec.kind {
            MatchKind::Exact(v) => Test::Exact(v.as_str().into()),
            MatchKind::Prefix(v) => Test::Prefix(v.as_str().into()),
            MatchKind::Suffix(v) => Test::Suffix(v.as_str().into()),
            MatchKind::Regex(r) => Test::Regex(Regex::new(r).map_err(|e| {
                RouterError::new(
                    format!("{path}.regex"),
                    RouterErrorKind::Regex(e.to_string()),
                )
            })?),
            MatchKind::Present => Test::Present,
        };
        Ok(Condition {
            key: spec.key.as_str().into(),
            test,
            invert: spec.invert,
        })
    }

    /// Whether the condition holds for `metadata`. A missing key fails every test
    /// (including `present`), and `invert` negates the result.
    #[inline]
    pub(crate) fn holds(&self, metadata: &Metadata) -> bool {
        let hit = match metadata.get(&self.key) {
            None => false,
            Some(v) => match &self.test {
                Test::Exact(x) => v == &**x,
                Test::Prefix(x) => v.starts_with(&**x),
                Test::Suffix(x) => v.ends_with(&**x),
                Test::Regex(re) => re.is_match(v),
                Test::Present => true,
            },
        };
        hit != self.invert
    }

    /// The exact value this condition requires, when it can serve as an index key.
    pub(crate) fn index_value(&self) -> Option<&str> {
        match (&self.test, self.invert) {
            (Test::Exact(v), false) => Some(v),
            _ => None,
        }
    }
}

/// Sorts conditions cheapest first (all must hold, so order does not change the result).
pub(crate) fn order_by_cost(conditions: &mut [Condition]) {
    conditions.sort_by_key(|c| c.test.cost());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: &[(&str, &str)]) -> Metadata {
        pairs
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn cond(key: &str, kind: MatchKind, invert: bool) -> Condition {
        let spec = MatcherSpec {
            key: key.into(),
            kind,
            invert,
        };
        Condition::compile(&spec, "c").unwrap()
    }

    #[test]
    fn each_kind_with_and_without_invert() {
        let m = md(&[("method", "getUser"), ("empty", "")]);
        let cases = [
            (MatchKind::Exact("getUser".into()), true),
            (MatchKind::Exact("get".into()), false),
            (MatchKind::Prefix("get".into()), true),
            (MatchKind::Prefix("set".into()), false),
            (MatchKind::Suffix("User".into()), true),
            (MatchKind::Suffix("get".into()), false),
            (MatchKind::Regex("^(get|list)".into()), true),
            (MatchKind::Regex("^list".into()), false),
            (MatchKind::Present, true),
        ];
        for (kind, expected) in cases {
            assert_eq!(
                cond("method", kind.clone(), false).holds(&m),
                expected,
                "{kind:?}"
            );
            assert_eq!(
                cond("method", kind.clone(), true).holds(&m),
                !expected,
                "{kind:?} inverted"
            );
            // Absent key: every kind fails, every inverted kind holds.
            assert!(
                !cond("nope", kind.clone(), false).holds(&m),
                "{kind:?} absent"
            );
            assert!(
                cond("nope", kind.clone(), true).holds(&m),
                "{kind:?} absent inverted"
            );
        }
        assert!(cond("empty", MatchKind::Exact(String::new()), false).holds(&m));
        assert!(cond("empty", MatchKind::Present, false).holds(&m));
    }

    #[test]
    fn regex_is_an_unanchored_search() {
        let m = md(&[("method", "listUsers")]);
        assert!(cond("method", MatchKind::Regex("User".into()), false).holds(&m));
        assert!(!cond("method", MatchKind::Regex("^User".into()), false).holds(&m));
    }

    #[test]
    fn keys_are_case_sensitive() {
        let m = md(&[("Method", "x")]);
        assert!(!cond("method", MatchKind::Present, false).holds(&m));
    }

    #[test]
    fn bad_regex_and_empty_key_name_their_field() {
        let spec = MatcherSpec::new("m", MatchKind::Regex("(".into()));
        let e = Condition::compile(&spec, "routes[0].match.metadata[1]").unwrap_err();
        assert_eq!(e.path(), "routes[0].match.metadata[1].regex");
        assert!(matches!(e.kind(), RouterErrorKind::Regex(_)));
        let spec = MatcherSpec::new("", MatchKind::Present);
        let e = Condition::compile(&spec, "routes[3].match.metadata[0]").unwrap_err();
        assert_eq!(
            e.to_string(),
            "routes[3].match.metadata[0].key: must not be empty"
        );
    }
}
