//! Route matching, splits, mirrors and hashing through the public API.

use std::collections::HashMap;
use std::time::Duration;

use meta_protocol::Metadata;
use metaproxy_router::{
    MatchKind, MatcherSpec, MirrorSpec, RouteConfigSpec, RouteSpec, RouteTable, TargetSpec,
};
use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::SeedableRng;

fn md(pairs: &[(&str, &str)]) -> Metadata {
    pairs
        .iter()
        .map(|&(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn config(routes: Vec<RouteSpec>) -> RouteConfigSpec {
    RouteConfigSpec {
        name: "rc".into(),
        routes,
    }
}

fn weighted(pairs: &[(&str, u32)]) -> TargetSpec {
    TargetSpec::Weighted(pairs.iter().map(|&(c, w)| (c.to_owned(), w)).collect())
}

/// Reference semantics written straight from the route rules of docs/CONFIG.md, independent of the crate: a
/// condition tests the value of its key (absent fails every kind), `invert` negates,
/// all conditions must hold, first route in order wins.
fn naive_route(spec: &RouteConfigSpec, m: &Metadata) -> Option<usize> {
    thread_local! {
        static REGEXES: std::cell::RefCell<HashMap<String, regex::Regex>> = Default::default();
    }
    let regex_match = |re: &str, v: &str| {
        REGEXES.with(|c| {
            c.borrow_mut()
                .entry(re.to_owned())
                .or_insert_with(|| regex::Regex::new(re).unwrap())
                .is_match(v)
        })
    };
    spec.routes.iter().position(|r| {
        r.matchers.iter().all(|c| {
            let hit = match m.get(&c.key) {
                None => false,
                Some(v) => match &c.kind {
                    MatchKind::Exact(x) => v == x,
                    MatchKind::Prefix(x) => v.starts_with(x.as_str()),
                    MatchKind::Suffix(x) => v.ends_with(x.as_str()),
                    MatchKind::Regex(x) => regex_match(x, v),
                    MatchKind::Present => true,
                },
            };
            hit != c.invert
        })
    })
}

const KEYS: [&str; 5] = ["interface", "method", "version", "group", "user"];
const VALUES: [&str; 9] = ["a", "b", "ab", "ba", "", "abc", "é", "éa", "aé"];
const REGEXES: [&str; 14] = [
    "^a",
    "b$",
    "a|c",
    "^$",
    "^(ab|ba)$",
    "^a+b",
    "^(a|b)c?",
    "^[ab]b",
    "^(?i)A",
    "^ab|^ba",
    "^a*",
    "^é",
    "^(abc|ab|a)$",
    "^a|b",
];

fn matcher() -> impl Strategy<Value = MatcherSpec> {
    let kind = prop_oneof![
        4 => (0..VALUES.len()).prop_map(|v| MatchKind::Exact(VALUES[v].into())),
        2 => (0..VALUES.len()).prop_map(|v| MatchKind::Prefix(VALUES[v].into())),
        1 => (0..VALUES.len()).prop_map(|v| MatchKind::Suffix(VALUES[v].into())),
        2 => (0..REGEXES.len()).prop_map(|v| MatchKind::Regex(REGEXES[v].into())),
        1 => Just(MatchKind::Present),
    ];
    (0..KEYS.len(), kind, prop::bool::weighted(0.2)).prop_map(|(k, kind, invert)| MatcherSpec {
        key: KEYS[k].into(),
        kind,
        invert,
    })
}

fn route_set() -> impl Strategy<Value = RouteConfigSpec> {
    prop::collection::vec(prop::collection::vec(matcher(), 0..4), 0..40).prop_map(|routes| {
        config(
            routes
                .into_iter()
                .enumerate()
                .map(|(i, matchers)| RouteSpec {
                    matchers,
                    ..RouteSpec::new(format!("r{i}"), "c")
                })
                .collect(),
        )
    })
}

fn metadata() -> impl Strategy<Value = Metadata> {
    prop::collection::vec((0..KEYS.len(), 0..VALUES.len()), 0..6).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v)| (KEYS[k], VALUES[v]))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// The indexed table finds exactly the route a naive linear scan finds.
    #[test]
    fn indexed_lookup_equals_linear_scan(spec in route_set(), requests in prop::collection::vec(metadata(), 1..20)) {
        let table = RouteTable::compile(&spec).unwrap();
        for m in &requests {
            let want = naive_route(&spec, m);
            prop_assert_eq!(table.route_index(m), want, "metadata {:?}", m);
            prop_assert_eq!(table.route(m).map(|r| r.index()), want);
            prop_assert_eq!(table.route_index_linear(m), want);
        }
    }
}

#[test]
fn many_exact_routes_interleaved_with_scanned_ones() {
    // 1,000 routes: exact interface routes, with prefix / regex / inverted / catch-all
    // routes interleaved, checked against the naive scan for every interface.
    let mut routes = Vec::new();
    for i in 0..1_000 {
        let m = match i % 10 {
            3 => vec![MatcherSpec::new(
                "method",
                MatchKind::Prefix(format!("m{i}")),
            )],
            6 => vec![
                MatcherSpec::new("interface", MatchKind::Regex(format!("^svc{}$", i + 1))),
                MatcherSpec::new("version", MatchKind::Present),
            ],
            9 => vec![
                MatcherSpec::new("interface", MatchKind::Exact(format!("svc{}", i - 2))).inverted(),
                MatcherSpec::new("group", MatchKind::Exact("g".into())),
            ],
            _ => vec![
                MatcherSpec::new("interface", MatchKind::Exact(format!("svc{i}"))),
                MatcherSpec::new(
                    "method",
                    MatchKind::Exact(if i % 2 == 0 {
                        "get".into()
                    } else {
                        format!("op{i}")
                    }),
                ),
            ],
        };
        routes.push(RouteSpec {
            matchers: m,
            ..RouteSpec::new(format!("r{i}"), "c")
        });
    }
    routes.push(RouteSpec::new("default", "fallback"));
    let spec = config(routes);
    let table = RouteTable::compile(&spec).unwrap();
    let mut checked = 0;
    for i in 0..1_002 {
        for method in ["get", "op7", "m33x", "none"] {
            for extra in [&[][..], &[("version", "1")][..], &[("group", "g")][..]] {
                let iface = format!("svc{i}");
                let method = if method == "op7" {
                    format!("op{i}")
                } else {
                    method.to_owned()
                };
                let mut pairs = vec![("interface", iface.as_str()), ("method", method.as_str())];
                pairs.extend_from_slice(extra);
                let m = md(&pairs);
                assert_eq!(table.route_index(&m), naive_route(&spec, &m), "{m:?}");
                checked += 1;
            }
        }
    }
    assert!(checked > 10_000);
    // No metadata at all: the catch-all at the end (the inverted routes need `group`).
    assert_eq!(
        table.route(&Metadata::new()).map(|r| r.name()),
        Some("default")
    );
}

#[test]
fn spec_example_route_holds_as_documented() {
    // The example conditions of docs/CONFIG.md: interface exact, user present, method NOT ^(get|list).
    let route = RouteSpec {
        matchers: vec![
            MatcherSpec::new(
                "interface",
                MatchKind::Exact("com.example.DemoService".into()),
            ),
            MatcherSpec::new("user", MatchKind::Present),
            MatcherSpec::new("method", MatchKind::Regex("^(get|list)".into())).inverted(),
        ],
        ..RouteSpec::new("beta-users", "demo-v2")
    };
    let table = RouteTable::compile(&config(vec![route])).unwrap();
    let base = [("interface", "com.example.DemoService"), ("user", "u1")];
    let with = |method: &str| {
        let mut p = base.to_vec();
        p.push(("method", method));
        md(&p)
    };
    assert!(table.route(&with("update")).is_some());
    assert!(table.route(&with("getUser")).is_none());
    assert!(table.route(&with("listAll")).is_none());
    assert!(
        table.route(&md(&base)).is_some(),
        "no method: the inverted regex holds"
    );
    assert!(
        table
            .route(&md(&[("interface", "com.example.DemoService")]))
            .is_none(),
        "user missing"
    );
}

fn split_counts(table: &RouteTable, picks: usize, seed: u64) -> Vec<u64> {
    let route = &table.routes()[0];
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut counts = vec![0u64; table.clusters().len()];
    for _ in 0..picks {
        counts[route.pick_cluster(&mut rng)] += 1;
    }
    counts
}

#[test]
fn weighted_split_is_within_tight_bounds() {
    let spec = config(vec![RouteSpec {
        target: weighted(&[("v1", 90), ("v2", 10)]),
        ..RouteSpec::new("canary", "x")
    }]);
    let table = RouteTable::compile(&spec).unwrap();
    let counts = split_counts(&table, 100_000, 1);
    // Binomial sd = sqrt(1e5 * 0.9 * 0.1) ~ 95; 4 sd = 380.
    assert!((counts[0] as i64 - 90_000).abs() < 380, "{counts:?}");
    assert_eq!(counts[0] + counts[1], 100_000);

    // Several clusters and a weight of 0: chi-square at p = 0.001 (df 2: 13.816).
    let spec = config(vec![RouteSpec {
        target: weighted(&[("a", 50), ("zero", 0), ("b", 30), ("c", 20)]),
        ..RouteSpec::new("split", "x")
    }]);
    let table = RouteTable::compile(&spec).unwrap();
    let counts = split_counts(&table, 100_000, 2);
    let zero = table.cluster_index("zero").unwrap();
    assert_eq!(counts[zero], 0, "weight 0 sends nothing");
    let mut x2 = 0.0;
    for (name, p) in [("a", 0.5), ("b", 0.3), ("c", 0.2)] {
        let e = 100_000.0 * p;
        x2 += (counts[table.cluster_index(name).unwrap()] as f64 - e).powi(2) / e;
    }
    assert!(x2 < 13.816, "chi-square {x2}: {counts:?}");
}

#[test]
fn single_cluster_routes_make_no_draw() {
    let table = RouteTable::compile(&config(vec![RouteSpec::new("r", "only")])).unwrap();
    let mut rng = SmallRng::seed_from_u64(3);
    let before = rng.clone();
    assert_eq!(table.routes()[0].pick_cluster(&mut rng), 0);
    assert_eq!(format!("{rng:?}"), format!("{before:?}"));
}

#[test]
fn sticky_canary_with_hash_policy() {
    let spec = config(vec![RouteSpec {
        target: weighted(&[("v1", 90), ("v2", 10)]),
        hash_policy: vec!["user".into()],
        ..RouteSpec::new("sticky", "x")
    }]);
    let table = RouteTable::compile(&spec).unwrap();
    let route = &table.routes()[0];
    let mut rng = SmallRng::seed_from_u64(4);
    let mut v2 = 0u32;
    for u in 0..100_000 {
        let user = format!("user-{u}");
        let h = route.hash_key(&md(&[("user", &user)]));
        assert!(h.is_some());
        let first = route.pick_cluster_for(h, &mut rng);
        for _ in 0..3 {
            assert_eq!(
                route.pick_cluster_for(h, &mut rng),
                first,
                "same user, same cluster"
            );
        }
        v2 += u32::from(first == 1);
    }
    // Users spread 90/10: sd ~ 95.
    assert!((i64::from(v2) - 10_000).abs() < 400, "v2 got {v2}");
    // Without the key: random, still 90/10.
    let h = route.hash_key(&md(&[("other", "x")]));
    assert_eq!(h, None);
    let v2 = (0..100_000)
        .filter(|_| route.pick_cluster_for(h, &mut rng) == 1)
        .count();
    assert!((v2 as i64 - 10_000).abs() < 400, "v2 got {v2}");
}

#[test]
fn hash_key_uses_the_policy_keys_in_order() {
    let spec = config(vec![
        RouteSpec {
            hash_policy: vec!["user".into(), "tenant".into()],
            ..RouteSpec::new("h", "c")
        },
        RouteSpec::new("none", "c"),
    ]);
    let table = RouteTable::compile(&spec).unwrap();
    let r = &table.routes()[0];
    let h = |p: &[(&str, &str)]| r.hash_key(&md(p));
    assert_eq!(h(&[]), None);
    assert_eq!(h(&[("method", "x")]), None);
    assert!(h(&[("user", "u1")]).is_some());
    assert_eq!(
        h(&[("user", "u1"), ("method", "a")]),
        h(&[("method", "b"), ("user", "u1")])
    );
    assert_ne!(h(&[("user", "u1")]), h(&[("user", "u2")]));
    assert_ne!(
        h(&[("user", "u1")]),
        h(&[("tenant", "u1")]),
        "the key's position counts"
    );
    assert_ne!(h(&[("user", "u1"), ("tenant", "t")]), h(&[("user", "u1")]));
    assert_eq!(table.routes()[1].hash_key(&md(&[("user", "u1")])), None);
}

#[test]
fn mirrors_fire_at_their_percentages() {
    let spec = config(vec![RouteSpec {
        mirrors: vec![
            MirrorSpec {
                cluster: "all".into(),
                percent: 100.0,
            },
            MirrorSpec {
                cluster: "none".into(),
                percent: 0.0,
            },
            MirrorSpec {
                cluster: "eighth".into(),
                percent: 12.5,
            },
            MirrorSpec {
                cluster: "tiny".into(),
                percent: 0.01,
            },
        ],
        ..RouteSpec::new("m", "primary")
    }]);
    let table = RouteTable::compile(&spec).unwrap();
    let route = &table.routes()[0];
    let mut rng = SmallRng::seed_from_u64(5);
    let mut counts = vec![0u32; table.clusters().len()];
    let n = 1_000_000;
    for _ in 0..n {
        for m in route.firing_mirrors(&mut rng) {
            counts[m.cluster()] += 1;
        }
    }
    let c = |name: &str| counts[table.cluster_index(name).unwrap()];
    assert_eq!(c("all"), n);
    assert_eq!(c("none"), 0);
    // 125,000 expected, sd ~ 331.
    assert!(
        (i64::from(c("eighth")) - 125_000).abs() < 1_400,
        "{}",
        c("eighth")
    );
    // 100 expected, sd ~ 10.
    assert!((60..140).contains(&c("tiny")), "{}", c("tiny"));
    assert_eq!(route.mirrors()[2].percent(), 12.5);
    assert_eq!(&**route.mirrors()[0].name(), "all");
}

#[test]
fn route_settings_and_mutations_are_carried() {
    let spec = config(vec![RouteSpec {
        timeout: Duration::from_millis(2_000),
        retries: 2,
        request_mutation: vec![
            ("x-route".into(), "beta".into()),
            ("x-env".into(), "canary".into()),
        ],
        response_mutation: vec![("x-served-by".into(), "proxy".into())],
        ..RouteSpec::new("settings", "c")
    }]);
    let table = RouteTable::compile(&spec).unwrap();
    let r = table.route(&Metadata::new()).unwrap();
    assert_eq!(r.name(), "settings");
    assert_eq!(r.index(), 0);
    assert_eq!(r.timeout(), Duration::from_secs(2));
    assert_eq!(r.retries(), 2);
    let req: Vec<(&str, &str)> = r
        .request_mutations()
        .iter()
        .map(|(k, v)| (&**k, &**v))
        .collect();
    assert_eq!(req, [("x-route", "beta"), ("x-env", "canary")]);
    assert_eq!(&*r.response_mutations()[0].1, "proxy");
    assert_eq!(table.name(), "rc");
}

#[test]
fn compile_error_paths_through_the_public_api() {
    let spec = config(vec![
        RouteSpec::new("ok", "c"),
        RouteSpec {
            matchers: vec![
                MatcherSpec::new("a", MatchKind::Present),
                MatcherSpec::new("m", MatchKind::Regex("[unclosed".into())),
            ],
            ..RouteSpec::new("bad", "c")
        },
    ]);
    let e = RouteTable::compile(&spec)
        .unwrap_err()
        .prefixed("route_configs[3]");
    assert_eq!(
        e.path(),
        "route_configs[3].routes[1].match.metadata[1].regex"
    );
    assert!(e
        .to_string()
        .starts_with("route_configs[3].routes[1].match.metadata[1].regex: "));

    let spec = config(vec![
        RouteSpec::new("a", "c"),
        RouteSpec::new("b", "c"),
        RouteSpec {
            target: weighted(&[("v1", 0), ("v2", 0)]),
            ..RouteSpec::new("z", "c")
        },
    ]);
    assert_eq!(
        RouteTable::compile(&spec).unwrap_err().to_string(),
        "routes[2].route.weighted_clusters: total weight is 0"
    );
}
