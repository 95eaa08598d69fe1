//! Compiled match conditions.

use meta_protocol::{Metadata, MetadataKey};
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
    pub(crate) key: MetadataKey,
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
            key: MetadataKey::new(&spec.key),
            test,
            invert: spec.invert,
        })
    }

    /// Whether the condition holds for `metadata`. A missing key fails every test
    /// (including `present`), and `invert` negates the result.
    #[inline]
    pub(crate) fn holds(&self, metadata: &Metadata) -> bool {
        // Byte comparisons need no UTF-8 check of the value (codecs store checked
        // values; equal bytes to a `str` are UTF-8 anyway); only a regex reads `&str`.
        let hit = match &self.test {
            Test::Regex(re) => metadata.get_by(&self.key).is_some_and(|v| re.is_match(v)),
            test => match metadata.get_bytes_by(&self.key) {
                None => false,
                Some(v) => match test {
                    Test::Exact(x) => v == x.as_bytes(),
                    Test::Prefix(x) => v.starts_with(x.as_bytes()),
                    Test::Suffix(x) => v.ends_with(x.as_bytes()),
                    Test::Regex(_) | Test::Present => true,
                },
            },
        };
        hit != self.invert
    }

    /// Byte strings one of which every matching value starts with, when the condition
    /// can serve as a prefix-index key: a non-inverted non-empty `prefix`, or a
    /// non-inverted regex anchored at the start (`^...`) whose prefix literals are few
    /// (at most [`MAX_PREFIX_LITERALS`]) and non-empty. Sorted and deduplicated.
    pub(crate) fn prefix_literals(&self) -> Option<Vec<Vec<u8>>> {
        if self.invert {
            return None;
        }
        match &self.test {
            Test::Prefix(p) if !p.is_empty() => Some(vec![p.as_bytes().to_vec()]),
            Test::Regex(re) => regex_prefix_literals(re.as_str()),
            _ => None,
        }
    }

    /// The exact value this condition requires, when it can serve as an index key.
    pub(crate) fn index_value(&self) -> Option<&str> {
        match (&self.test, self.invert) {
            (Test::Exact(v), false) => Some(v),
            _ => None,
        }
    }
}

/// The most prefix literals a regex may have and still be prefix-indexed.
pub(crate) const MAX_PREFIX_LITERALS: usize = 8;

/// Prefix literals of a regex anchored at the start of the value, if few and non-empty.
fn regex_prefix_literals(pattern: &str) -> Option<Vec<Vec<u8>>> {
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    use regex_syntax::hir::Look;
    let hir = regex_syntax::Parser::new().parse(pattern).ok()?;
    if !hir.properties().look_set_prefix().contains(Look::Start) {
        return None;
    }
    let seq = Extractor::new().kind(ExtractKind::Prefix).extract(&hir);
    let lits = seq.literals()?;
    if lits.is_empty() || lits.iter().any(|l| l.as_bytes().is_empty()) {
        return None;
    }
    let mut out: Vec<Vec<u8>> = lits.iter().map(|l| l.as_bytes().to_vec()).collect();
    out.sort();
    out.dedup();
    // Too many (`v[0-9]` gives ten): shorten them all until few enough remain; a
    // prefix of a prefix is still one.
    let mut len = out.iter().map(Vec::len).max().unwrap_or(0);
    while out.len() > MAX_PREFIX_LITERALS {
        len -= 1;
        if len == 0 {
            return None;
        }
        for l in out.iter_mut() {
            l.truncate(len);
        }
        out.sort();
        out.dedup();
    }
    Some(out)
}

/// Sorts conditions cheapest first (all must hold, so order does not change the result).
pub(crate) fn order_by_cost(conditions: &mut [Condition]) {
    conditions.sort_by_key(|c| c.test.cost());
}

/// A compiled `match:` block: metadata conditions that must all hold, tested exactly as
/// a route's (case-sensitive keys, a missing key fails every test, `invert` negates).
/// Used by other components that select requests the way routes do (access rules).
#[derive(Debug, Clone)]
pub struct MatchConditions {
    conditions: Box<[Condition]>,
}

impl MatchConditions {
    /// Compiles `matchers`; `path` is the field path of the `match:` block, so an error
    /// names `{path}.metadata[i].regex` and the like.
    pub fn compile(matchers: &[MatcherSpec], path: &str) -> Result<Self, RouterError> {
        let mut conditions = matchers
            .iter()
            .enumerate()
            .map(|(i, m)| Condition::compile(m, &format!("{path}.metadata[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        order_by_cost(&mut conditions);
        Ok(MatchConditions {
            conditions: conditions.into_boxed_slice(),
        })
    }

    /// Whether every condition holds for `metadata` (no conditions: true). Allocates
    /// nothing.
    #[inline]
    pub fn holds(&self, metadata: &Metadata) -> bool {
        self.conditions.iter().all(|c| c.holds(metadata))
    }
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
    fn prefix_literals_only_for_anchored_or_prefix_conditions() {
        let lits = |kind: MatchKind, invert: bool| cond("k", kind, invert).prefix_literals();
        assert_eq!(
            lits(MatchKind::Prefix("ab".into()), false),
            Some(vec![b"ab".to_vec()])
        );
        assert_eq!(lits(MatchKind::Prefix("ab".into()), true), None);
        assert_eq!(lits(MatchKind::Prefix(String::new()), false), None);
        assert_eq!(
            lits(MatchKind::Regex("^(list|get)".into()), false),
            Some(vec![b"get".to_vec(), b"list".to_vec()])
        );
        assert_eq!(
            lits(MatchKind::Regex("get".into()), false),
            None,
            "unanchored"
        );
        assert_eq!(
            lits(MatchKind::Regex("^a|b".into()), false),
            None,
            "one branch unanchored"
        );
        let star = lits(MatchKind::Regex("^a*b".into()), false).unwrap();
        for value in ["b", "ab", "aab", "aaaaaaaaaaaaaaaab"] {
            assert!(
                star.iter().any(|l| value.as_bytes().starts_with(l)),
                "{value} vs {star:?}"
            );
        }
        assert_eq!(lits(MatchKind::Regex("^.*".into()), false), None);
        assert_eq!(lits(MatchKind::Exact("a".into()), false), None);
        // Ten digit alternatives are cut back to their common prefix.
        assert_eq!(
            lits(MatchKind::Regex(r"^svc\.v[0-9]+$".into()), false),
            Some(vec![b"svc.v".to_vec()])
        );
    }

    #[test]
    fn match_conditions_hold_only_when_all_do() {
        let specs = [
            MatcherSpec::new("user", MatchKind::Present),
            MatcherSpec::new("method", MatchKind::Regex("^get".into())).inverted(),
        ];
        let all = MatchConditions::compile(&specs, "rules[0]").unwrap();
        assert!(all.holds(&md(&[("user", "u"), ("method", "setX")])));
        assert!(!all.holds(&md(&[("user", "u"), ("method", "getX")])));
        assert!(!all.holds(&md(&[("method", "setX")])));
        assert!(MatchConditions::compile(&[], "m").unwrap().holds(&md(&[])));
        let bad = [MatcherSpec::new("m", MatchKind::Regex("(".into()))];
        let e = MatchConditions::compile(&bad, "filters[0].config.rules[2]").unwrap_err();
        assert_eq!(e.path(), "filters[0].config.rules[2].metadata[0].regex");
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
