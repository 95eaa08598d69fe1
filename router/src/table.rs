//! The compiled, immutable route table: first-match-wins lookup with an exact-value index.
//!
//! ## How lookup stays fast
//! Each route that has a non-inverted `exact` condition is filed under one of them (its
//! *index condition*) in a hash map `value -> [route indices]` for that condition's key;
//! the other routes go to an *unindexed* list. A lookup reads the request's value of each
//! indexed key (a handful of keys at most), takes the matching bucket, and walks the
//! buckets and the unindexed list merged by route index, testing each candidate's full
//! conditions. Every list is sorted, so candidates are tried in config order and the
//! first that holds is exactly the first route a linear scan would find: a route that
//! is in no list taken cannot match, because its index condition fails.
//!
//! A key with at most [`FEW_VALUES`] values keeps them in a short list compared in turn
//! instead of a hash map (hashing a value costs more than a few comparisons), and every
//! key is looked up as a [`MetadataKey`] prepared when the table is compiled.
//!
//! Which condition indexes a route: the one whose (key, value) pair is shared by the
//! fewest routes (smallest bucket), then the key used by the most routes (fewest keys to
//! probe). At most [`MAX_INDEX_KEYS`] keys are indexed.
//!
//! Routes without a usable exact condition may be filed by a *prefix*: a non-inverted
//! `prefix` condition, or a regex anchored with `^` whose literal prefixes are few (a
//! regex like `^com\.example\.Svc[0-9]+$` is filed under `com.example.Svc`). A lookup
//! probes the request value's own prefixes of each indexed length (at most
//! [`MAX_PREFIX_LENGTHS`] lengths for each of [`MAX_PREFIX_KEYS`] keys). Everything
//! else is unindexed: still correct, just scanned.

use std::collections::HashMap;
use std::sync::Arc;

use meta_protocol::{Metadata, MetadataKey};

use crate::error::{RouterError, RouterErrorKind};
use crate::matcher::{order_by_cost, Condition};
use crate::route::{build_mutations, Mirror, Route, WeightedCluster};
use crate::spec::{RouteConfigSpec, RouteSpec, TargetSpec};

/// The most metadata keys the exact-value index uses (each costs one metadata lookup
/// and one hash per request).
pub const MAX_INDEX_KEYS: usize = 16;
/// The most metadata keys the prefix index uses.
pub const MAX_PREFIX_KEYS: usize = 4;
/// The most distinct prefix lengths indexed per prefix key (each costs one hash probe).
pub const MAX_PREFIX_LENGTHS: usize = 8;
/// Candidate lists one lookup can merge: the unindexed list, one bucket per exact key,
/// one per prefix key and length.
const MAX_LISTS: usize = 1 + MAX_INDEX_KEYS + MAX_PREFIX_KEYS * MAX_PREFIX_LENGTHS;

type FastMap<K, V> = HashMap<K, V, ahash::RandomState>;

/// A route that no exact bucket holds (no route has 2^32 - 1 conditions).
const NONE_HELD: u32 = u32::MAX;

#[derive(Debug)]
struct IndexKey {
    key: MetadataKey,
    /// By the value's bytes: looked up without checking the request's value is UTF-8
    /// (one that is not equals no configured value, which are all UTF-8).
    buckets: Buckets,
}

#[derive(Debug)]
struct PrefixKey {
    key: MetadataKey,
    /// Indexed prefix lengths in bytes, ascending.
    lengths: Box<[usize]>,
    buckets: Buckets,
}

/// Up to this many values per key are compared in turn instead of hashed: a length
/// test and a comparison each, where hashing a value costs about a hundred
/// instructions.
pub const FEW_VALUES: usize = 8;

/// A value and the routes (ascending) it selects.
type Bucket = (Box<[u8]>, Box<[u32]>);

/// Route lists by value: a short list compared in turn, or a hash map.
#[derive(Debug)]
enum Buckets {
    Few(Box<[Bucket]>),
    Many(FastMap<Box<[u8]>, Box<[u32]>>),
}

impl Buckets {
    fn new(buckets: impl IntoIterator<Item = (Box<[u8]>, Vec<u32>)>) -> Self {
        let mut all: Vec<Bucket> = buckets
            .into_iter()
            .map(|(v, l)| (v, l.into_boxed_slice()))
            .collect();
        if all.len() <= FEW_VALUES {
            // A fixed order, whatever order the map built from handed them over in.
            all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            Buckets::Few(all.into_boxed_slice())
        } else {
            Buckets::Many(all.into_iter().collect())
        }
    }

    #[inline]
    fn get(&self, value: &[u8]) -> Option<&[u32]> {
        match self {
            Buckets::Few(few) => few
                .iter()
                .find(|(v, _)| same_bytes(v, value))
                .map(|(_, l)| &**l),
            Buckets::Many(map) => map.get(value).map(|l| &**l),
        }
    }
}

/// Whether `a` and `b` hold the same bytes, compared a word at a time (the last word
/// overlapping), so a value of a few dozen bytes takes no call to `memcmp`.
#[inline]
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    fn word(s: &[u8], at: usize) -> u64 {
        let mut w = [0; 8];
        w.copy_from_slice(&s[at..at + 8]);
        u64::from_ne_bytes(w)
    }
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if n < 8 {
        if n < 4 {
            return a.iter().zip(b).all(|(x, y)| x == y);
        }
        let word4 = |s: &[u8], at: usize| {
            let mut w = [0; 4];
            w.copy_from_slice(&s[at..at + 4]);
            u32::from_ne_bytes(w)
        };
        return word4(a, 0) == word4(b, 0) && word4(a, n - 4) == word4(b, n - 4);
    }
    let mut at = 0;
    while at + 8 < n {
        if word(a, at) != word(b, at) {
            return false;
        }
        at += 8;
    }
    word(a, n - 8) == word(b, n - 8)
}

/// A compiled route config. Immutable, `Send + Sync`; build one per config snapshot
/// and share it.
#[derive(Debug)]
pub struct RouteTable {
    name: Arc<str>,
    routes: Box<[Route]>,
    clusters: Box<[Arc<str>]>,
    unindexed: Box<[u32]>,
    /// Per route, the condition that put it in an exact bucket ([`NONE_HELD`]: none).
    held: Box<[u32]>,
    index_keys: Box<[IndexKey]>,
    prefix_keys: Box<[PrefixKey]>,
    /// A number no other table in this process has ([`crate::RouteMemo`]).
    id: u64,
    /// The distinct keys the routes' conditions read, when few enough to memoise a
    /// lookup ([`crate::memo::MEMO_KEYS`]).
    memo_keys: Option<Box<[MetadataKey]>>,
}

impl RouteTable {
    /// Compiles a route config: validates every field, compiles regexes, interns
    /// cluster names and builds the exact-value index. Errors name the offending field
    /// relative to the route config (`routes[2].route.weighted_clusters: total weight
    /// is 0`); the runtime prefixes `route_configs[i]` with [`RouterError::prefixed`].
    ///
    /// Checked here: regexes compile; keys of conditions, hash_policy and mutations are
    /// not empty; cluster names are not empty; `weighted_clusters` is not empty and its
    /// total weight is > 0; mirror percentages are within `0..=100`. Not checked here
    /// (the runtime knows the clusters): that the clusters exist.
    pub fn compile(spec: &RouteConfigSpec) -> Result<RouteTable, RouterError> {
        let mut interner = Interner::default();
        let mut routes = Vec::with_capacity(spec.routes.len());
        for (i, r) in spec.routes.iter().enumerate() {
            routes.push(compile_route(i, r, &mut interner)?);
        }
        let (unindexed, index_keys, prefix_keys, held) = build_index(&routes);
        let memo_keys = condition_keys(&routes);
        Ok(RouteTable {
            name: spec.name.as_str().into(),
            routes: routes.into_boxed_slice(),
            clusters: interner.names.into_boxed_slice(),
            unindexed,
            held,
            index_keys,
            prefix_keys,
            id: crate::memo::next_table_id(),
            memo_keys,
        })
    }

    /// This table's identity ([`RouteTable::route_index_memo`]).
    #[inline]
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The keys a memo compares ([`RouteTable::route_index_memo`]); `None` when the
    /// routes read too many to memoise.
    #[inline]
    pub(crate) fn memo_keys(&self) -> Option<&[MetadataKey]> {
        self.memo_keys.as_deref()
    }

    /// The route config's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// All routes, in config order (`routes()[i].index() == i`).
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Every distinct cluster name the routes refer to (targets and mirrors), each once,
    /// in order of first mention. [`Route::pick_cluster`], [`WeightedCluster::cluster`]
    /// and [`Mirror::cluster`] are indices into this slice, so the runtime can resolve
    /// clusters and metric handles once per snapshot.
    pub fn clusters(&self) -> &[Arc<str>] {
        &self.clusters
    }

    /// The index of cluster `name` in [`RouteTable::clusters`].
    pub fn cluster_index(&self, name: &str) -> Option<usize> {
        self.clusters.iter().position(|c| &**c == name)
    }

    /// The metadata keys the exact-value index probes (diagnostics, `check` output).
    pub fn indexed_keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.index_keys.iter().map(|k| &*k.key)
    }

    /// The metadata keys the prefix index probes (diagnostics).
    pub fn prefix_indexed_keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.prefix_keys.iter().map(|k| &*k.key)
    }

    /// How many routes no index covers (each is tested on every lookup).
    pub fn unindexed_routes(&self) -> usize {
        self.unindexed.len()
    }

    /// The first route whose conditions all hold for `metadata`, or `None` (the caller
    /// answers "no route matched"). Allocates nothing.
    #[inline]
    pub fn route(&self, metadata: &Metadata) -> Option<&Route> {
        self.route_index(metadata).and_then(|i| self.routes.get(i))
    }

    /// Like [`RouteTable::route`], returning the route's index.
    pub fn route_index(&self, metadata: &Metadata) -> Option<usize> {
        // Common case: at most two candidate lists, kept in registers; the general
        // merge over a stack array only when a third turns up.
        let mut pair: [&[u32]; 2] = [&[], &[]];
        let mut n = 0usize;
        self.candidate_lists(metadata, |list| {
            if let Some(slot) = pair.get_mut(n) {
                *slot = list;
            }
            n += 1;
            n <= 2
        });
        match n {
            0 => None,
            1 => pair[0]
                .iter()
                .map(|&i| i as usize)
                .find(|&i| self.candidate_matches(i, metadata)),
            2 => self.merged_first(&mut pair, metadata),
            _ => {
                let mut lists: [&[u32]; MAX_LISTS] = [&[]; MAX_LISTS];
                let mut n = 0usize;
                self.candidate_lists(metadata, |list| {
                    if let Some(slot) = lists.get_mut(n) {
                        *slot = list;
                        n += 1;
                    }
                    true
                });
                self.merged_first(lists.get_mut(..n)?, metadata)
            }
        }
    }

    /// Calls `f` with each non-empty candidate list for `metadata` (the unindexed list,
    /// the exact bucket of each indexed key, the bucket of each indexed prefix of the
    /// value) until `f` returns false. At most [`MAX_LISTS`] lists, by construction.
    #[inline]
    fn candidate_lists<'a>(&'a self, metadata: &Metadata, mut f: impl FnMut(&'a [u32]) -> bool) {
        if !self.unindexed.is_empty() && !f(&self.unindexed) {
            return;
        }
        for ik in self.index_keys.iter() {
            if let Some(bucket) = metadata
                .get_bytes_by(&ik.key)
                .and_then(|v| ik.buckets.get(v))
            {
                if !f(bucket) {
                    return;
                }
            }
        }
        for pk in self.prefix_keys.iter() {
            let Some(value) = metadata.get_bytes_by(&pk.key) else {
                continue;
            };
            for &len in pk.lengths.iter() {
                let Some(prefix) = value.get(..len) else {
                    break;
                };
                if let Some(bucket) = pk.buckets.get(prefix) {
                    if !f(bucket) {
                        return;
                    }
                }
            }
        }
    }

    /// Walks several sorted candidate lists in ascending route order.
    fn merged_first(&self, lists: &mut [&[u32]], metadata: &Metadata) -> Option<usize> {
        loop {
            let mut best = u32::MAX;
            let mut best_list = usize::MAX;
            for (j, l) in lists.iter().enumerate() {
                if let Some(&head) = l.first() {
                    if head < best {
                        best = head;
                        best_list = j;
                    }
                }
            }
            let list = lists.get_mut(best_list)?;
            *list = list.get(1..).unwrap_or(&[]);
            let i = best as usize;
            if self.candidate_matches(i, metadata) {
                return Some(i);
            }
        }
    }

    /// Whether candidate route `i` matches: its conditions hold, except the one that put
    /// it in an exact bucket, which holds by construction (the bucket was found by the
    /// request's value of that key).
    #[inline]
    fn candidate_matches(&self, i: usize, metadata: &Metadata) -> bool {
        let (Some(r), Some(&held)) = (self.routes.get(i), self.held.get(i)) else {
            return false;
        };
        r.conditions
            .iter()
            .enumerate()
            .all(|(j, c)| j as u64 == u64::from(held) || c.holds(metadata))
    }

    /// The reference semantics: the first route in order whose conditions hold, by a
    /// linear scan. [`RouteTable::route_index`] always agrees with it (tested).
    pub fn route_index_linear(&self, metadata: &Metadata) -> Option<usize> {
        self.routes.iter().position(|r| r.matches(metadata))
    }
}

/// The distinct keys of every route's conditions, in order of first use, when there are
/// at most [`crate::memo::MEMO_KEYS`]: the only values a lookup's answer depends on.
fn condition_keys(routes: &[Route]) -> Option<Box<[MetadataKey]>> {
    let mut keys: Vec<MetadataKey> = Vec::new();
    for c in routes.iter().flat_map(|r| r.conditions.iter()) {
        if !keys.contains(&c.key) {
            if keys.len() == crate::memo::MEMO_KEYS {
                return None;
            }
            keys.push(c.key.clone());
        }
    }
    Some(keys.into_boxed_slice())
}

#[derive(Default)]
struct Interner {
    names: Vec<Arc<str>>,
    by_name: HashMap<Arc<str>, usize>,
}

impl Interner {
    fn intern(&mut self, name: &str) -> (usize, Arc<str>) {
        if let Some((k, &i)) = self.by_name.get_key_value(name) {
            return (i, k.clone());
        }
        let arc: Arc<str> = name.into();
        let i = self.names.len();
        self.names.push(arc.clone());
        self.by_name.insert(arc.clone(), i);
        (i, arc)
    }
}

fn empty(path: String) -> RouterError {
    RouterError::new(path, RouterErrorKind::Empty)
}

fn compile_route(i: usize, r: &RouteSpec, interner: &mut Interner) -> Result<Route, RouterError> {
    let path = format!("routes[{i}]");
    let mut conditions = r
        .matchers
        .iter()
        .enumerate()
        .map(|(j, m)| Condition::compile(m, &format!("{path}.match.metadata[{j}]")))
        .collect::<Result<Vec<_>, _>>()?;
    order_by_cost(&mut conditions);

    let mut targets = Vec::new();
    let mut total = 0u64;
    match &r.target {
        TargetSpec::Cluster(name) => {
            if name.is_empty() {
                return Err(empty(format!("{path}.route.cluster")));
            }
            let (cluster, name) = interner.intern(name);
            total = 1;
            targets.push(WeightedCluster {
                cluster,
                name,
                weight: 1,
                cumulative: 1,
            });
        }
        TargetSpec::Weighted(list) => {
            if list.is_empty() {
                return Err(empty(format!("{path}.route.weighted_clusters")));
            }
            for (k, (name, weight)) in list.iter().enumerate() {
                if name.is_empty() {
                    return Err(empty(format!(
                        "{path}.route.weighted_clusters[{k}].cluster"
                    )));
                }
                let (cluster, name) = interner.intern(name);
                total += u64::from(*weight);
                targets.push(WeightedCluster {
                    cluster,
                    name,
                    weight: *weight,
                    cumulative: total,
                });
            }
            if total == 0 {
                return Err(RouterError::new(
                    format!("{path}.route.weighted_clusters"),
                    RouterErrorKind::ZeroTotalWeight,
                ));
            }
        }
    }

    let mut mirrors = Vec::with_capacity(r.mirrors.len());
    for (k, m) in r.mirrors.iter().enumerate() {
        if m.cluster.is_empty() {
            return Err(empty(format!("{path}.route.mirror[{k}].cluster")));
        }
        if !(0.0..=100.0).contains(&m.percent) {
            return Err(RouterError::new(
                format!("{path}.route.mirror[{k}].percent"),
                RouterErrorKind::Percent(m.percent),
            ));
        }
        let (cluster, name) = interner.intern(&m.cluster);
        mirrors.push(Mirror::new(cluster, name, m.percent));
    }

    for (k, key) in r.hash_policy.iter().enumerate() {
        if key.is_empty() {
            return Err(empty(format!("{path}.route.hash_policy[{k}]")));
        }
    }
    for (field, pairs) in [
        ("request_mutation", &r.request_mutation),
        ("response_mutation", &r.response_mutation),
    ] {
        if let Some(k) = pairs.iter().position(|(key, _)| key.is_empty()) {
            return Err(empty(format!("{path}.{field}[{k}].key")));
        }
    }

    Ok(Route {
        index: i,
        name: r.name.as_str().into(),
        conditions: conditions.into_boxed_slice(),
        targets: targets.into_boxed_slice(),
        total_weight: total,
        mirrors: mirrors.into_boxed_slice(),
        hash_policy: r.hash_policy.iter().map(|k| k.as_str().into()).collect(),
        timeout: r.timeout,
        retries: r.retries,
        request_mutations: Arc::new(build_mutations(&r.request_mutation)),
        response_mutations: Arc::new(build_mutations(&r.response_mutation)),
    })
}

/// The unindexed route list, the exact-value index and the prefix index.
type Index = (Box<[u32]>, Box<[IndexKey]>, Box<[PrefixKey]>, Box<[u32]>);
/// Routes without an exact index condition, with their prefix-indexable conditions.
type PrefixCandidates<'a> = Vec<(usize, Vec<(&'a str, Vec<Vec<u8>>)>)>;

/// Chooses each route's index condition and builds the buckets (see the module docs).
fn build_index(routes: &[Route]) -> Index {
    // How many routes could be indexed by each key, and share each (key, value) pair.
    let mut key_routes: HashMap<&str, usize> = HashMap::new();
    let mut pair_routes: HashMap<(&str, &str), usize> = HashMap::new();
    for r in routes {
        let mut seen_keys: Vec<&str> = Vec::new();
        let mut seen_pairs: Vec<(&str, &str)> = Vec::new();
        for c in r.conditions.iter() {
            if let Some(v) = c.index_value() {
                if !seen_keys.contains(&&*c.key) {
                    seen_keys.push(&c.key);
                }
                if !seen_pairs.contains(&(&*c.key, v)) {
                    seen_pairs.push((&c.key, v));
                }
            }
        }
        for k in seen_keys {
            *key_routes.entry(k).or_default() += 1;
        }
        for p in seen_pairs {
            *pair_routes.entry(p).or_default() += 1;
        }
    }
    let mut keys: Vec<(&str, usize)> = key_routes.iter().map(|(&k, &n)| (k, n)).collect();
    keys.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    keys.truncate(MAX_INDEX_KEYS);

    let mut unindexed = Vec::new();
    let mut no_exact = Vec::new();
    let mut buckets: Vec<FastMap<Box<[u8]>, Vec<u32>>> =
        keys.iter().map(|_| FastMap::default()).collect();
    let mut held = vec![NONE_HELD; routes.len()];
    for (i, r) in routes.iter().enumerate() {
        let best = r
            .conditions
            .iter()
            .enumerate()
            .filter_map(|(j, c)| {
                let v = c.index_value()?;
                let slot = keys.iter().position(|(k, _)| *k == &*c.key)?;
                let pair_n = pair_routes.get(&(&*c.key, v)).copied().unwrap_or(0);
                let key_n = keys[slot].1;
                Some(((pair_n, std::cmp::Reverse(key_n), &*c.key), slot, v, j))
            })
            .min_by(|a, b| a.0.cmp(&b.0));
        match best {
            Some((_, slot, v, j)) => {
                buckets[slot]
                    .entry(v.as_bytes().into())
                    .or_default()
                    .push(i as u32);
                held[i] = u32::try_from(j).unwrap_or(NONE_HELD);
            }
            None => no_exact.push(i),
        }
    }
    let index_keys = keys
        .iter()
        .zip(buckets)
        .filter(|(_, b)| !b.is_empty())
        .map(|((k, _), b)| IndexKey {
            key: MetadataKey::new(k),
            buckets: Buckets::new(b),
        })
        .collect();

    // Prefix index for the routes left: candidates are (key, literal set) per condition.
    let candidates: PrefixCandidates<'_> = no_exact
        .iter()
        .map(|&i| {
            let lits = routes[i]
                .conditions
                .iter()
                .filter_map(|c| Some((&*c.key, c.prefix_literals()?)))
                .collect();
            (i, lits)
        })
        .collect();
    // Keys by how many routes could use them; lengths per key by how many routes use them.
    let mut prefix_key_routes: HashMap<&str, usize> = HashMap::new();
    let mut length_routes: HashMap<(&str, usize), usize> = HashMap::new();
    for (_, conds) in &candidates {
        let mut seen: Vec<&str> = Vec::new();
        for (k, lits) in conds {
            if !seen.contains(k) {
                seen.push(k);
                *prefix_key_routes.entry(k).or_default() += 1;
            }
            let mut lens: Vec<usize> = lits.iter().map(Vec::len).collect();
            lens.sort_unstable();
            lens.dedup();
            for l in lens {
                *length_routes.entry((k, l)).or_default() += 1;
            }
        }
    }
    let mut pkeys: Vec<(&str, usize)> = prefix_key_routes.into_iter().collect();
    pkeys.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    pkeys.truncate(MAX_PREFIX_KEYS);
    let kept_lengths: Vec<Vec<usize>> = pkeys
        .iter()
        .map(|(k, _)| {
            let mut lens: Vec<(usize, usize)> = length_routes
                .iter()
                .filter(|((key, _), _)| key == k)
                .map(|(&(_, l), &n)| (l, n))
                .collect();
            lens.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            lens.truncate(MAX_PREFIX_LENGTHS);
            let mut lens: Vec<usize> = lens.into_iter().map(|(l, _)| l).collect();
            lens.sort_unstable();
            lens
        })
        .collect();
    let mut pbuckets: Vec<FastMap<Box<[u8]>, Vec<u32>>> =
        pkeys.iter().map(|_| FastMap::default()).collect();
    for (i, conds) in candidates {
        // Usable: key indexed and every literal length kept. Prefer fewer literals, then
        // longer ones (fewer false candidates).
        let best = conds
            .iter()
            .filter_map(|(k, lits)| {
                let slot = pkeys.iter().position(|(pk, _)| pk == k)?;
                lits.iter()
                    .all(|l| kept_lengths[slot].contains(&l.len()))
                    .then_some(())?;
                let shortest = lits.iter().map(Vec::len).min().unwrap_or(0);
                Some(((lits.len(), std::cmp::Reverse(shortest)), slot, lits))
            })
            .min_by(|a, b| a.0.cmp(&b.0));
        match best {
            Some((_, slot, lits)) => {
                for l in lits {
                    pbuckets[slot]
                        .entry(l.as_slice().into())
                        .or_default()
                        .push(i as u32);
                }
            }
            None => unindexed.push(i as u32),
        }
    }
    unindexed.sort_unstable();
    let prefix_keys = pkeys
        .iter()
        .zip(kept_lengths)
        .zip(pbuckets)
        .filter(|(_, b)| !b.is_empty())
        .map(|(((k, _), lengths), b)| PrefixKey {
            key: MetadataKey::new(k),
            lengths: lengths.into_boxed_slice(),
            buckets: Buckets::new(b),
        })
        .collect();
    (
        unindexed.into_boxed_slice(),
        index_keys,
        prefix_keys,
        held.into_boxed_slice(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{MatchKind, MatcherSpec, MirrorSpec};

    #[test]
    fn byte_comparison_sees_a_difference_anywhere() {
        for len in 0..40 {
            let a: Vec<u8> = (0..len).map(|i| i as u8).collect();
            assert!(same_bytes(&a, &a.clone()));
            for i in 0..len {
                let mut b = a.clone();
                b[i] ^= 0x40;
                assert!(!same_bytes(&a, &b), "len {len}, differs at {i}");
            }
            let longer = [&a[..], &[0][..]].concat();
            assert!(!same_bytes(&a, &longer), "len {len}: lengths differ");
        }
    }

    fn md(pairs: &[(&str, &str)]) -> Metadata {
        pairs
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn exact(k: &str, v: &str) -> MatcherSpec {
        MatcherSpec::new(k, MatchKind::Exact(v.into()))
    }

    fn route(name: &str, cluster: &str, matchers: Vec<MatcherSpec>) -> RouteSpec {
        RouteSpec {
            matchers,
            ..RouteSpec::new(name, cluster)
        }
    }

    fn table(routes: Vec<RouteSpec>) -> RouteTable {
        RouteTable::compile(&RouteConfigSpec {
            name: "rc".into(),
            routes,
        })
        .unwrap()
    }

    #[test]
    fn empty_match_matches_everything_and_no_routes_match_nothing() {
        let t = table(vec![route("all", "c", vec![])]);
        assert_eq!(t.route(&Metadata::new()).map(Route::name), Some("all"));
        assert_eq!(t.route(&md(&[("a", "b")])).map(Route::name), Some("all"));
        let t = table(vec![]);
        assert!(t.route(&md(&[("a", "b")])).is_none());
    }

    #[test]
    fn first_match_wins_across_index_and_scan() {
        let t = table(vec![
            route(
                "r0",
                "a",
                vec![exact("interface", "A"), exact("method", "m1")],
            ),
            route(
                "r1",
                "b",
                vec![MatcherSpec::new("method", MatchKind::Prefix("m".into()))],
            ),
            route("r2", "c", vec![exact("interface", "A")]),
            route("r3", "d", vec![exact("interface", "B")]),
            route("r4", "e", vec![]),
        ]);
        let cases = [
            (md(&[("interface", "A"), ("method", "m1")]), Some(0)),
            (md(&[("interface", "A"), ("method", "m2")]), Some(1)),
            (md(&[("interface", "A"), ("method", "x")]), Some(2)),
            (md(&[("interface", "B"), ("method", "x")]), Some(3)),
            (md(&[("interface", "B"), ("method", "m")]), Some(1)),
            (md(&[("interface", "C")]), Some(4)),
        ];
        for (m, want) in cases {
            assert_eq!(t.route_index(&m), want, "{m:?}");
            assert_eq!(t.route_index_linear(&m), want, "{m:?}");
        }
        assert!(t.indexed_keys().any(|k| k == "interface"));
    }

    #[test]
    fn inverted_exact_is_not_indexed_but_still_matches() {
        let t = table(vec![
            route("not-a", "x", vec![exact("interface", "A").inverted()]),
            route("a", "y", vec![exact("interface", "A")]),
        ]);
        assert_eq!(t.route_index(&md(&[("interface", "B")])), Some(0));
        assert_eq!(t.route_index(&Metadata::new()), Some(0));
        assert_eq!(t.route_index(&md(&[("interface", "A")])), Some(1));
    }

    #[test]
    fn clusters_are_interned_in_order_of_first_mention() {
        let mut r0 = route("r0", "v1", vec![]);
        r0.target = TargetSpec::Weighted(vec![("v1".into(), 90), ("v2".into(), 10)]);
        r0.mirrors = vec![MirrorSpec {
            cluster: "shadow".into(),
            percent: 100.0,
        }];
        let r1 = route("r1", "v2", vec![]);
        let t = table(vec![r0, r1]);
        let names: Vec<&str> = t.clusters().iter().map(|c| &**c).collect();
        assert_eq!(names, ["v1", "v2", "shadow"]);
        assert_eq!(t.routes()[1].targets()[0].cluster(), 1);
        assert_eq!(t.routes()[0].mirrors()[0].cluster(), 2);
        assert_eq!(t.cluster_index("shadow"), Some(2));
        assert_eq!(t.cluster_index("nope"), None);
    }

    #[test]
    fn compile_errors_name_their_field() {
        let check = |r: RouteSpec, idx: usize, want: &str| {
            let mut routes = vec![RouteSpec::new("ok", "c"); idx];
            routes.push(r);
            let e = RouteTable::compile(&RouteConfigSpec {
                name: "rc".into(),
                routes,
            })
            .unwrap_err();
            assert_eq!(e.to_string(), want);
        };
        let mut r = RouteSpec::new("w", "c");
        r.target = TargetSpec::Weighted(vec![("a".into(), 0), ("b".into(), 0)]);
        check(r, 2, "routes[2].route.weighted_clusters: total weight is 0");
        let mut r = RouteSpec::new("w", "c");
        r.target = TargetSpec::Weighted(vec![]);
        check(r, 0, "routes[0].route.weighted_clusters: must not be empty");
        let mut r = RouteSpec::new("w", "c");
        r.target = TargetSpec::Weighted(vec![("a".into(), 1), (String::new(), 1)]);
        check(
            r,
            0,
            "routes[0].route.weighted_clusters[1].cluster: must not be empty",
        );
        check(
            RouteSpec::new("w", ""),
            1,
            "routes[1].route.cluster: must not be empty",
        );
        let r = route(
            "re",
            "c",
            vec![
                exact("a", "b"),
                MatcherSpec::new("m", MatchKind::Regex("(".into())),
            ],
        );
        let e = {
            let routes = vec![r];
            RouteTable::compile(&RouteConfigSpec {
                name: "rc".into(),
                routes,
            })
            .unwrap_err()
        };
        assert_eq!(e.path(), "routes[0].match.metadata[1].regex");
        assert!(e
            .to_string()
            .starts_with("routes[0].match.metadata[1].regex: regex parse error"));
        for bad in [-1.0, 100.5, f64::NAN] {
            let mut r = RouteSpec::new("m", "c");
            r.mirrors = vec![
                MirrorSpec {
                    cluster: "s".into(),
                    percent: 1.0,
                },
                MirrorSpec {
                    cluster: "s".into(),
                    percent: bad,
                },
            ];
            let routes = vec![r];
            let e = RouteTable::compile(&RouteConfigSpec {
                name: "rc".into(),
                routes,
            })
            .unwrap_err();
            assert_eq!(e.path(), "routes[0].route.mirror[1].percent");
        }
        let mut r = RouteSpec::new("m", "c");
        r.mirrors = vec![MirrorSpec {
            cluster: String::new(),
            percent: 1.0,
        }];
        check(r, 0, "routes[0].route.mirror[0].cluster: must not be empty");
        let mut r = RouteSpec::new("h", "c");
        r.hash_policy = vec!["user".into(), String::new()];
        check(r, 0, "routes[0].route.hash_policy[1]: must not be empty");
        let mut r = RouteSpec::new("h", "c");
        r.response_mutation = vec![("k".into(), "v".into()), (String::new(), "v".into())];
        check(
            r,
            0,
            "routes[0].response_mutation[1].key: must not be empty",
        );
    }

    #[test]
    fn error_can_be_prefixed_by_the_runtime() {
        let mut r = RouteSpec::new("w", "c");
        r.target = TargetSpec::Weighted(vec![("a".into(), 0)]);
        let routes = vec![r];
        let e = RouteTable::compile(&RouteConfigSpec {
            name: "rc".into(),
            routes,
        })
        .unwrap_err();
        assert_eq!(
            e.prefixed("route_configs[0]").to_string(),
            "route_configs[0].routes[0].route.weighted_clusters: total weight is 0"
        );
    }

    #[test]
    fn prefix_and_anchored_regex_routes_are_indexed() {
        let mut routes: Vec<RouteSpec> = (0..50)
            .map(|i| {
                route(
                    &format!("p{i}"),
                    "c",
                    vec![MatcherSpec::new(
                        "interface",
                        MatchKind::Prefix(format!("svc{i}.")),
                    )],
                )
            })
            .collect();
        routes.extend((50..100).map(|i| {
            route(
                &format!("r{i}"),
                "c",
                vec![MatcherSpec::new(
                    "interface",
                    MatchKind::Regex(format!("^svc{i}\\.v[0-9]+$")),
                )],
            )
        }));
        routes.push(route(
            "unanchored",
            "c",
            vec![MatcherSpec::new(
                "interface",
                MatchKind::Regex("v9$".into()),
            )],
        ));
        let t = table(routes);
        assert_eq!(t.prefix_indexed_keys().collect::<Vec<_>>(), ["interface"]);
        assert_eq!(
            t.unindexed_routes(),
            1,
            "only the unanchored regex is scanned"
        );
        assert_eq!(t.route_index(&md(&[("interface", "svc7.Impl")])), Some(7));
        assert_eq!(t.route_index(&md(&[("interface", "svc77.v3")])), Some(77));
        assert_eq!(t.route_index(&md(&[("interface", "svc77.vx")])), None);
        assert_eq!(t.route_index(&md(&[("interface", "svc77.v9")])), Some(77));
        assert_eq!(t.route_index(&md(&[("interface", "other.v9")])), Some(100));
    }

    #[test]
    fn more_prefix_lengths_than_the_index_holds_still_match() {
        // Prefixes "x", "xx", ... of 12 lengths on one key, longest first so that a
        // shorter one never shadows a longer one.
        let routes: Vec<RouteSpec> = (1..=12)
            .rev()
            .map(|n| {
                route(
                    &format!("x{n}"),
                    "c",
                    vec![MatcherSpec::new("k", MatchKind::Prefix("x".repeat(n)))],
                )
            })
            .collect();
        let t = table(routes);
        assert_eq!(t.unindexed_routes(), 12 - MAX_PREFIX_LENGTHS);
        for n in 1..=12 {
            let v = "x".repeat(n);
            assert_eq!(
                t.route_index(&md(&[("k", v.as_str())])),
                Some(12 - n),
                "{v}"
            );
        }
    }

    #[test]
    fn more_exact_keys_than_the_index_holds_still_match() {
        let routes: Vec<RouteSpec> = (0..MAX_INDEX_KEYS + 4)
            .map(|i| route(&format!("r{i}"), "c", vec![exact(&format!("k{i}"), "v")]))
            .collect();
        let t = table(routes);
        assert!(t.indexed_keys().count() <= MAX_INDEX_KEYS);
        for i in 0..MAX_INDEX_KEYS + 4 {
            let key = format!("k{i}");
            assert_eq!(t.route_index(&md(&[(key.as_str(), "v")])), Some(i));
        }
    }

    #[test]
    fn an_indexed_value_is_looked_up_by_its_bytes() {
        let t = table(vec![
            route("exact", "a", vec![exact("interface", "caf\u{e9}")]),
            route("rest", "b", vec![]),
        ]);
        // The value as UTF-8 bytes in a frame matches; bytes that are not UTF-8 (the
        // Latin-1 spelling of the same word) match nothing but the catch-all.
        for (frame, expected) in [
            (&b"interfacecaf\xc3\xa9"[..], "exact"),
            (&b"interfacecaf\xe9"[..], "rest"),
        ] {
            let mut m = Metadata::over_frame(meta_protocol::bytes::Bytes::copy_from_slice(frame));
            m.set_in_frame(0..9, 9..frame.len());
            let i = t.route_index(&m).unwrap();
            assert_eq!(t.routes()[i].name(), expected);
            assert_eq!(Some(i), t.route_index_linear(&m));
        }
    }

    #[test]
    fn a_few_values_or_many_find_well_known_keys_a_codec_stored_by_number() {
        use meta_protocol::{bytes::Bytes, Message, MessageKind, WellKnownKey};
        for values in [3, FEW_VALUES, FEW_VALUES + 1, 40] {
            let mut routes: Vec<RouteSpec> = (0..values)
                .map(|i| {
                    route(
                        &format!("r{i}"),
                        "a",
                        vec![exact("interface", &format!("svc.S{i}"))],
                    )
                })
                .collect();
            routes.push(route("rest", "b", vec![]));
            let t = table(routes);
            assert_eq!(
                matches!(t.index_keys[0].buckets, Buckets::Few(_)),
                values <= FEW_VALUES
            );
            for (i, want) in [
                (0, "r0"),
                (values - 1, &*format!("r{}", values - 1)),
                (values, "rest"),
            ] {
                let frame = Bytes::from(format!("svc.S{i}"));
                let len = frame.len();
                // As a codec stores it: the key by number, the value by its place.
                let mut msg = Message::new(MessageKind::Request, 1, frame);
                msg.metadata_mut()
                    .set_known_in_frame(WellKnownKey::Interface, 0..len);
                let m = msg.metadata();
                let found = t.route_index(m).map(|r| t.routes()[r].name());
                assert_eq!(found, Some(want), "{values} values, svc.S{i}");
                assert_eq!(t.route_index(m), t.route_index_linear(m));
            }
        }
    }

    #[test]
    fn a_route_indexed_by_a_late_condition_still_checks_the_others() {
        // 300 presence conditions, then the exact one the index uses (condition 300):
        // every other condition is still checked, whatever its position.
        let mut matchers: Vec<MatcherSpec> = (0..300)
            .map(|i| MatcherSpec::new(format!("k{i}"), MatchKind::Present))
            .collect();
        matchers.push(exact("interface", "x"));
        let t = table(vec![
            route("long", "a", matchers),
            route("rest", "b", vec![]),
        ]);
        let mut pairs: Vec<(String, String)> = (0..300)
            .filter(|&i| i != 255)
            .map(|i| (format!("k{i}"), "1".to_owned()))
            .collect();
        pairs.push(("interface".into(), "x".into()));
        let owned: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (&**k, &**v)).collect();
        let m = md(&owned);
        assert_eq!(t.route_index_linear(&m), Some(1), "k255 is missing");
        assert_eq!(t.route_index(&m), Some(1));
    }
}
