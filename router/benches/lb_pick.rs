//! One endpoint pick per policy, with 3 and 100 endpoints (all healthy, idle, weights
//! 1..=3), plus a degraded case with a third of the endpoints unavailable.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use metaproxy_router::{mix64, AllAvailable, EndpointSpec, EndpointView, LbPolicy, LoadBalancer};
use rand::rngs::SmallRng;
use rand::SeedableRng;

struct SomeDown(usize);

impl EndpointView for SomeDown {
    fn len(&self) -> usize {
        self.0
    }
    fn is_available(&self, i: usize) -> bool {
        i % 3 != 1
    }
    fn active_requests(&self, i: usize) -> u32 {
        (i % 5) as u32
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("lb_pick");
    for n in [3usize, 100] {
        let endpoints: Vec<EndpointSpec> = (0..n)
            .map(|i| EndpointSpec::new(format!("10.0.0.{i}:20880"), 1 + (i % 3) as u32))
            .collect();
        for policy in LbPolicy::ALL {
            let lb = LoadBalancer::new(policy, &endpoints).unwrap();
            let mut rng = SmallRng::seed_from_u64(1);
            let mut key = 0u64;
            group.bench_function(BenchmarkId::new(policy.as_str(), n), |b| {
                b.iter(|| {
                    key = key.wrapping_add(1);
                    black_box(lb.pick(Some(mix64(key)), &mut rng, &AllAvailable(n)))
                })
            });
            let state = SomeDown(n);
            group.bench_function(
                BenchmarkId::new(format!("{}/third_down", policy.as_str()), n),
                |b| {
                    b.iter(|| {
                        key = key.wrapping_add(1);
                        black_box(lb.pick(Some(mix64(key)), &mut rng, &state))
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
