//! A one-entry memo of a route table's answer, kept by a client connection.
//!
//! A route table's answer is a function of the values of the keys its routes' conditions
//! read, and of nothing else. A pipelined client mostly sends one call after another
//! with the same values (one interface, one method), so a connection remembers the
//! values of its last lookup and the route they found: the next request with the same
//! values gets that route after comparing them, without the index and the conditions
//! (about 200 instructions per request with the bench suite's routes, 30 or so for the
//! comparison). The memo is tied to the table that filled it by the table's identity (a
//! number no other table in the process has), so a reload's new table is never answered
//! from an old table's memo.
//!
//! Only tables whose conditions read at most [`MEMO_KEYS`] distinct keys are memoised,
//! and only values of at most [`MEMO_VALUE_BYTES`] bytes are kept (a longer one leaves
//! the memo empty, and the next lookup goes to the table).

use std::sync::atomic::{AtomicU64, Ordering};

use meta_protocol::{Metadata, MetadataKey};

use crate::route::Route;
use crate::table::{same_bytes, RouteTable};

/// The most distinct condition keys a table may read and still be memoised.
pub const MEMO_KEYS: usize = 2;
/// The longest value a memo keeps.
pub const MEMO_VALUE_BYTES: usize = 64;

/// Numbers tables: 0 is no table.
static NEXT_TABLE_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh table identity (never 0, never reused in this process).
pub(crate) fn next_table_id() -> u64 {
    NEXT_TABLE_ID.fetch_add(1, Ordering::Relaxed)
}

/// One key's value as a memo keeps it: absent, or its bytes.
#[derive(Clone, Copy)]
struct MemoValue {
    /// The value's length, or [`ABSENT`].
    len: u8,
    bytes: [u8; MEMO_VALUE_BYTES],
}

/// [`MemoValue::len`] of a key the request does not carry.
const ABSENT: u8 = u8::MAX;

impl MemoValue {
    const EMPTY: MemoValue = MemoValue {
        len: ABSENT,
        bytes: [0; MEMO_VALUE_BYTES],
    };

    #[inline]
    fn same(&self, value: Option<&[u8]>) -> bool {
        match value {
            None => self.len == ABSENT,
            // Compared a word at a time, without a call to `memcmp`.
            Some(v) => {
                usize::from(self.len) == v.len()
                    && self.bytes.get(..v.len()).is_some_and(|b| same_bytes(b, v))
            }
        }
    }

    /// Keeps `value`; false when it is too long to keep.
    fn set(&mut self, value: Option<&[u8]>) -> bool {
        match value {
            None => self.len = ABSENT,
            Some(v) if v.len() <= MEMO_VALUE_BYTES => {
                self.bytes[..v.len()].copy_from_slice(v);
                self.len = v.len() as u8;
            }
            Some(_) => return false,
        }
        true
    }
}

/// The last lookup of one client connection: the table, the values of the keys it
/// reads, and the route they found ([`RouteTable::route_index_memo`]). Empty at first.
#[derive(Clone)]
pub struct RouteMemo {
    /// The identity of the table that filled it; 0: empty.
    table: u64,
    values: [MemoValue; MEMO_KEYS],
    route: Option<usize>,
}

impl Default for RouteMemo {
    fn default() -> Self {
        RouteMemo {
            table: 0,
            values: [MemoValue::EMPTY; MEMO_KEYS],
            route: None,
        }
    }
}

impl std::fmt::Debug for RouteMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMemo")
            .field("table", &self.table)
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

impl RouteTable {
    /// [`RouteTable::route`], answered from `memo` as [`RouteTable::route_index_memo`]
    /// answers.
    #[inline]
    pub fn route_with_memo(&self, metadata: &Metadata, memo: &mut RouteMemo) -> Option<&Route> {
        self.route_index_memo(metadata, memo)
            .and_then(|i| self.routes().get(i))
    }

    /// [`RouteTable::route_index`], answered from `memo` when it holds this table's
    /// answer for the same values of the keys the routes read, and kept there otherwise.
    /// Returns what `route_index` returns, always.
    #[inline]
    pub fn route_index_memo(&self, metadata: &Metadata, memo: &mut RouteMemo) -> Option<usize> {
        let Some(keys) = self.memo_keys() else {
            return self.route_index(metadata);
        };
        if memo.table == self.id()
            && keys
                .iter()
                .zip(&memo.values)
                .all(|(k, v)| v.same(metadata.get_bytes_by(k)))
        {
            return memo.route;
        }
        let route = self.route_index(metadata);
        remember(keys, metadata, memo, self.id(), route);
        route
    }
}

/// Fills `memo` with the values of `keys` and `route`, or leaves it empty when a value is
/// too long to keep.
#[cold]
fn remember(
    keys: &[MetadataKey],
    metadata: &Metadata,
    memo: &mut RouteMemo,
    table: u64,
    route: Option<usize>,
) {
    memo.table = 0;
    for (k, v) in keys.iter().zip(memo.values.iter_mut()) {
        if !v.set(metadata.get_bytes_by(k)) {
            return;
        }
    }
    memo.route = route;
    memo.table = table;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{MatchKind, MatcherSpec, RouteConfigSpec, RouteSpec};
    use proptest::prelude::*;

    fn table(routes: Vec<(&str, Vec<MatcherSpec>)>) -> RouteTable {
        let spec = RouteConfigSpec {
            name: "t".into(),
            routes: routes
                .into_iter()
                .map(|(name, matchers)| {
                    let mut r = RouteSpec::new(name, "c");
                    r.matchers = matchers;
                    r
                })
                .collect(),
        };
        RouteTable::compile(&spec).unwrap()
    }

    fn exact(key: &str, v: &str) -> MatcherSpec {
        MatcherSpec::new(key, MatchKind::Exact(v.into()))
    }

    /// Two keys, every kind of condition: exact (indexed), prefix, regex, present,
    /// inverted, and a catch-all.
    fn two_key_table() -> RouteTable {
        table(vec![
            (
                "get",
                vec![
                    exact("svc", "a"),
                    MatcherSpec::new("m", MatchKind::Regex("^get".into())),
                ],
            ),
            (
                "a-other",
                vec![
                    exact("svc", "a"),
                    MatcherSpec::new("m", MatchKind::Present).inverted(),
                ],
            ),
            ("a", vec![exact("svc", "a")]),
            (
                "b",
                vec![MatcherSpec::new("svc", MatchKind::Prefix("b".into()))],
            ),
            (
                "not-put",
                vec![MatcherSpec::new("m", MatchKind::Exact("put".into())).inverted()],
            ),
            ("rest", vec![]),
        ])
    }

    fn md(svc: Option<&str>, m: Option<&str>, other: &str) -> Metadata {
        let mut pairs = vec![("x", other)];
        pairs.extend(svc.map(|v| ("svc", v)));
        pairs.extend(m.map(|v| ("m", v)));
        pairs.into_iter().collect()
    }

    #[test]
    fn a_repeated_lookup_is_answered_from_the_memo_and_a_changed_value_is_not() {
        let t = two_key_table();
        let mut memo = RouteMemo::default();
        let get = md(Some("a"), Some("getX"), "1");
        assert_eq!(t.route_index_memo(&get, &mut memo), Some(0));
        assert_eq!(memo.table, t.id(), "kept");
        // Other keys than the routes' do not matter.
        assert_eq!(
            t.route_index_memo(&md(Some("a"), Some("getX"), "2"), &mut memo),
            Some(0)
        );
        // Any change of a value the routes read does.
        assert_eq!(
            t.route_index_memo(&md(Some("a"), Some("putX"), "1"), &mut memo),
            Some(2)
        );
        assert_eq!(
            t.route_index_memo(&md(Some("a"), None, "1"), &mut memo),
            Some(1)
        );
        assert_eq!(
            t.route_index_memo(&md(Some("bb"), None, "1"), &mut memo),
            Some(3)
        );
        assert_eq!(
            t.route_index_memo(&md(None, Some("put"), "1"), &mut memo),
            Some(5)
        );
        assert_eq!(
            t.route_index_memo(&md(None, Some("get"), "1"), &mut memo),
            Some(4)
        );
        assert_eq!(
            t.route_index_memo(&md(Some("a"), Some("getX"), "1"), &mut memo),
            Some(0)
        );
    }

    #[test]
    fn another_table_is_never_answered_from_the_memo() {
        let old = table(vec![("a", vec![exact("svc", "a")]), ("rest", vec![])]);
        let new = table(vec![("rest", vec![]), ("a", vec![exact("svc", "a")])]);
        assert_ne!(old.id(), new.id());
        let mut memo = RouteMemo::default();
        let a = md(Some("a"), None, "1");
        assert_eq!(old.route_index_memo(&a, &mut memo), Some(0));
        assert_eq!(new.route_index_memo(&a, &mut memo), Some(0));
        assert_eq!(memo.route, Some(0));
        assert_eq!(memo.table, new.id());
        // A lookup by an equal table compiled again is not answered from the memo either.
        let again = table(vec![("a", vec![exact("svc", "a")]), ("rest", vec![])]);
        assert_ne!(again.id(), old.id());
    }

    #[test]
    fn long_values_and_tables_reading_many_keys_are_not_memoised() {
        let t = two_key_table();
        let mut memo = RouteMemo::default();
        let long = "g".repeat(MEMO_VALUE_BYTES + 1);
        assert_eq!(
            t.route_index_memo(&md(Some("a"), Some(&long), "1"), &mut memo),
            Some(2)
        );
        assert_eq!(memo.table, 0, "too long to keep: left empty");
        let fits = "get".to_string() + &"x".repeat(MEMO_VALUE_BYTES - 3);
        assert_eq!(
            t.route_index_memo(&md(Some("a"), Some(&fits), "1"), &mut memo),
            Some(0)
        );
        assert_eq!(memo.table, t.id());

        let three = table(vec![
            (
                "a",
                vec![exact("svc", "a"), exact("m", "b"), exact("v", "c")],
            ),
            ("rest", vec![]),
        ]);
        assert!(three.memo_keys().is_none());
        let mut memo = RouteMemo::default();
        assert_eq!(
            three.route_index_memo(&md(Some("a"), None, "1"), &mut memo),
            Some(1)
        );
        assert_eq!(memo.table, 0);
    }

    proptest! {
        /// Any sequence of lookups through one memo answers what the table answers.
        #[test]
        fn the_memo_answers_what_the_table_answers(
            lookups in proptest::collection::vec(
                (proptest::option::of(0usize..5), proptest::option::of(0usize..6)),
                1..64,
            )
        ) {
            let svcs = ["a", "b", "bx", "c", ""];
            let long = "get".to_string() + &"y".repeat(MEMO_VALUE_BYTES);
            let ms = ["get", "getAll", "put", "", "x", long.as_str()];
            let t = two_key_table();
            let mut memo = RouteMemo::default();
            for (s, m) in lookups {
                let metadata = md(s.map(|i| svcs[i]), m.map(|i| ms[i]), "1");
                prop_assert_eq!(t.route_index_memo(&metadata, &mut memo), t.route_index(&metadata));
            }
        }
    }
}
