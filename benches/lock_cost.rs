//! What one uncontended lock and one atomic read-modify-write cost on this machine,
//! against an ordinary add: the figures behind the per-request count of atomic
//! instructions (`ATOMICS=1 scripts/callgrind-diff.sh`, docs/PERFORMANCE.md) and behind
//! the spin lock around a connection's state (`src/short_lock.rs`, which is
//! `spinning_top`'s lock taken with one compare-and-swap and released with a store).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use criterion::{criterion_group, criterion_main, Criterion};

fn lock_cost(c: &mut Criterion) {
    let mut g = c.benchmark_group("lock_cost");
    let mut plain = 0u64;
    g.bench_function("add", |b| {
        b.iter(|| {
            plain = black_box(plain).wrapping_add(1);
        })
    });
    let atomic = AtomicU64::new(0);
    g.bench_function("atomic_fetch_add", |b| {
        b.iter(|| black_box(&atomic).fetch_add(1, Ordering::Relaxed))
    });
    let mutex = Mutex::new(0u64);
    g.bench_function("std_mutex_lock_unlock", |b| {
        b.iter(|| *black_box(&mutex).lock().unwrap() += 1)
    });
    let spin = spinning_top::Spinlock::new(0u64);
    g.bench_function("spin_lock_unlock", |b| {
        b.iter(|| *black_box(&spin).lock() += 1)
    });
    g.finish();
}

criterion_group!(benches, lock_cost);
criterion_main!(benches);
