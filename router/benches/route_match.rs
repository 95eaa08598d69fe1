//! Route matching with 1, 100 and 1,000 routes: exact, prefix, regex and mixed tables,
//! for a request matching the last route and one matching none.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use meta_protocol::Metadata;
use metaproxy_router::{MatchKind, MatcherSpec, RouteConfigSpec, RouteSpec, RouteTable};

#[derive(Clone, Copy)]
enum Mix {
    Exact,
    Prefix,
    Regex,
    Mixed,
}

impl Mix {
    fn name(self) -> &'static str {
        match self {
            Mix::Exact => "exact",
            Mix::Prefix => "prefix",
            Mix::Regex => "regex",
            Mix::Mixed => "mixed",
        }
    }

    /// Conditions of route `i`, and metadata that matches exactly that route.
    fn route(self, i: usize) -> (Vec<MatcherSpec>, Vec<(String, String)>) {
        let kind = match self {
            Mix::Mixed => [Mix::Exact, Mix::Prefix, Mix::Regex][i % 3],
            k => k,
        };
        match kind {
            Mix::Exact | Mix::Mixed => (
                vec![
                    MatcherSpec::new(
                        "interface",
                        MatchKind::Exact(format!("com.example.Service{i}")),
                    ),
                    MatcherSpec::new("method", MatchKind::Exact("sayHello".into())),
                ],
                vec![
                    ("interface".into(), format!("com.example.Service{i}")),
                    ("method".into(), "sayHello".into()),
                ],
            ),
            Mix::Prefix => (
                vec![MatcherSpec::new(
                    "interface",
                    MatchKind::Prefix(format!("com.example.Service{i}.")),
                )],
                vec![
                    ("interface".into(), format!("com.example.Service{i}.Impl")),
                    ("method".into(), "sayHello".into()),
                ],
            ),
            Mix::Regex => (
                vec![MatcherSpec::new(
                    "interface",
                    MatchKind::Regex(format!(r"^com\.example\.Service{i}\.v[0-9]+$")),
                )],
                vec![
                    ("interface".into(), format!("com.example.Service{i}.v2")),
                    ("method".into(), "sayHello".into()),
                ],
            ),
        }
    }
}

fn metadata(pairs: &[(String, String)]) -> Metadata {
    let mut m: Metadata = pairs.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    // A realistic request carries a few more keys.
    m.set("version".into(), "1.0.0".into());
    m.set("group".into(), "default".into());
    m.set("user".into(), "u-12345".into());
    m
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_match");
    for mix in [Mix::Exact, Mix::Prefix, Mix::Regex, Mix::Mixed] {
        for n in [1usize, 100, 1_000] {
            let routes = (0..n)
                .map(|i| RouteSpec {
                    matchers: mix.route(i).0,
                    ..RouteSpec::new(format!("r{i}"), "c")
                })
                .collect();
            let table = RouteTable::compile(&RouteConfigSpec {
                name: "b".into(),
                routes,
            })
            .unwrap();
            let last = metadata(&mix.route(n - 1).1);
            assert_eq!(table.route(&last).map(|r| r.index()), Some(n - 1));
            let miss = metadata(&[
                ("interface".into(), "org.other.Nothing".into()),
                ("method".into(), "x".into()),
            ]);
            assert!(table.route(&miss).is_none());
            group.bench_with_input(
                BenchmarkId::new(format!("{}/last", mix.name()), n),
                &last,
                |b, m| b.iter(|| black_box(table.route(black_box(m))).is_some()),
            );
            group.bench_with_input(
                BenchmarkId::new(format!("{}/miss", mix.name()), n),
                &miss,
                |b, m| b.iter(|| black_box(table.route(black_box(m))).is_some()),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
