//! Proves that the per-request paths allocate nothing: a counting global allocator
//! counts this thread's allocations around route(), pick() and friends.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use meta_protocol::Metadata;
use metaproxy_router::{
    stable_hash, AllAvailable, EndpointSpec, EndpointView, LbPolicy, LoadBalancer, MatchKind,
    MatcherSpec, MirrorSpec, RouteConfigSpec, RouteSpec, RouteTable, TargetSpec,
};
use rand::rngs::SmallRng;
use rand::SeedableRng;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by this thread while running `f`.
fn allocations(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn the_counter_sees_allocations() {
    assert!(allocations(|| drop(std::hint::black_box(vec![1u8; 10]))) >= 1);
}

fn big_table() -> RouteTable {
    let mut routes = Vec::new();
    for i in 0..1_000 {
        let matchers = match i % 4 {
            0 => vec![MatcherSpec::new(
                "method",
                MatchKind::Prefix(format!("op{i}_")),
            )],
            1 => vec![MatcherSpec::new(
                "interface",
                MatchKind::Regex(format!("^svc{i}\\.v[0-9]+$")),
            )],
            _ => vec![
                MatcherSpec::new("interface", MatchKind::Exact(format!("svc{i}"))),
                MatcherSpec::new("version", MatchKind::Suffix(".0".into())).inverted(),
            ],
        };
        routes.push(RouteSpec {
            matchers,
            target: TargetSpec::Weighted(vec![("v1".into(), 90), ("v2".into(), 10)]),
            mirrors: vec![MirrorSpec {
                cluster: "shadow".into(),
                percent: 50.0,
            }],
            hash_policy: vec!["user".into()],
            request_mutation: vec![
                ("x-route".into(), format!("r{i}")),
                ("x-k".into(), "v".into()),
            ],
            ..RouteSpec::new(format!("r{i}"), "unused")
        });
    }
    RouteTable::compile(&RouteConfigSpec {
        name: "big".into(),
        routes,
    })
    .unwrap()
}

#[test]
fn routing_a_request_allocates_nothing() {
    let table = big_table();
    let requests: Vec<Metadata> = [
        vec![("interface", "svc998"), ("method", "x"), ("user", "u1")],
        vec![("interface", "svc997.v2"), ("method", "x")],
        vec![("interface", "nope"), ("method", "op996_get")],
        vec![("interface", "nope"), ("method", "none"), ("user", "u2")],
        vec![],
    ]
    .into_iter()
    .map(|p| p.into_iter().collect())
    .collect();
    let mut rng = SmallRng::seed_from_u64(1);
    // Warm up: the regex engine fills its per-thread cache on first use.
    for m in &requests {
        std::hint::black_box(table.route(m));
    }
    let mut found = 0;
    let n = allocations(|| {
        for _ in 0..100 {
            for m in &requests {
                if let Some(r) = table.route(m) {
                    found += 1;
                    let h = r.hash_key(m);
                    std::hint::black_box(r.pick_cluster_for(h, &mut rng));
                    std::hint::black_box(r.pick_cluster(&mut rng));
                    for mirror in r.firing_mirrors(&mut rng) {
                        std::hint::black_box(mirror.cluster());
                    }
                    // What the runtime does: copy the route's mutations into the message.
                    std::hint::black_box(r.request_mutations().clone());
                    std::hint::black_box(r.response_mutations().clone());
                }
            }
        }
    });
    assert_eq!(found, 300, "three of the five requests match");
    assert_eq!(n, 0, "route() and per-route decisions allocated {n} times");
}

struct Mixed {
    up: Vec<bool>,
}

impl EndpointView for Mixed {
    fn len(&self) -> usize {
        self.up.len()
    }
    fn is_available(&self, i: usize) -> bool {
        self.up[i]
    }
    fn active_requests(&self, i: usize) -> u32 {
        i as u32 % 7
    }
}

#[test]
fn picking_an_endpoint_allocates_nothing() {
    let endpoints: Vec<EndpointSpec> = (0..100)
        .map(|i| EndpointSpec::new(format!("10.1.0.{i}:9090"), 1 + i % 3))
        .collect();
    let healthy = AllAvailable(100);
    let some_down = Mixed {
        up: (0..100).map(|i| i % 3 != 0).collect(),
    };
    let one_up = Mixed {
        up: (0..100).map(|i| i == 57).collect(),
    };
    let none_up = Mixed {
        up: vec![false; 100],
    };
    let mut rng = SmallRng::seed_from_u64(2);
    for policy in LbPolicy::ALL {
        let lb = LoadBalancer::new(policy, &endpoints).unwrap();
        let n = allocations(|| {
            for k in 0..2_000u64 {
                let h = Some(stable_hash(0, &k.to_le_bytes()));
                std::hint::black_box(lb.pick(h, &mut rng, &healthy));
                std::hint::black_box(lb.pick(None, &mut rng, &some_down));
                std::hint::black_box(lb.pick(h, &mut rng, &one_up));
                std::hint::black_box(lb.pick(h, &mut rng, &none_up));
            }
        });
        assert_eq!(n, 0, "{policy}: pick allocated {n} times");
    }
}
