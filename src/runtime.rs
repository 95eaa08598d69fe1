//! The threading model, behind one place so it can change.
//!
//! Two models, selected by [`Threading`]:
//!
//! - **Per core** (Envoy's model, the default of `metaproxy run`): one single-threaded
//!   runtime per core. Each worker accepts on its own `SO_REUSEPORT` socket, owns its
//!   client connections from accept to close, and has its own upstream connection pools,
//!   so a request never crosses threads.
//! - **Work stealing**: tokio's multi-threaded runtime, one worker per core. A
//!   connection's task may move between workers, so the direct calls between a client
//!   connection and an upstream connection may cross threads (their state is behind a
//!   mutex that per-core workers never contend). This is what [`crate::Server::bind`]
//!   uses inside an embedding program's own runtime.
//!
//! Chosen by measurement: with the bench suite's quick matrix (`scripts/bench-e2e.sh
//! --quick`, proxy pinned to one core), per core reached 0.90× HAProxy's throughput
//! (geometric mean over 12 cases) at 1.46× its CPU per request, work stealing 0.74× at
//! 1.69× (docs/PERFORMANCE.md).
//!
//! `metaproxy run` reads `METAPROXY_THREADING` (`per-core` or `work-stealing`) and
//! `METAPROXY_WORKERS` (default: the cores this process may run on).

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How the proxy's work is spread over threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threading {
    /// tokio's work-stealing runtime with this many workers.
    WorkStealing {
        /// Worker threads.
        workers: usize,
    },
    /// This many single-threaded runtimes, each owning its connections and pools.
    PerCore {
        /// Worker threads.
        workers: usize,
    },
}

impl Threading {
    /// From `METAPROXY_THREADING` and `METAPROXY_WORKERS`; per core on every core when
    /// unset. An unknown value is an error message.
    pub fn from_env() -> Result<Threading, String> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers =
            match std::env::var("METAPROXY_WORKERS") {
                Ok(v) => v.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    format!("METAPROXY_WORKERS={v:?}: expected a positive integer")
                })?,
                Err(_) => cores,
            };
        match std::env::var("METAPROXY_THREADING").as_deref() {
            Ok("work-stealing") => Ok(Threading::WorkStealing { workers }),
            Err(_) | Ok("per-core") => Ok(Threading::PerCore { workers }),
            Ok(other) => Err(format!(
                "METAPROXY_THREADING={other:?}: expected work-stealing or per-core"
            )),
        }
    }

    /// Builds the runtime `metaproxy run` blocks on. With [`Threading::PerCore`] this is
    /// a small single-threaded runtime for signals and the admin server; the workers
    /// start their own when the server binds.
    pub fn build_runtime(self) -> std::io::Result<tokio::runtime::Runtime> {
        match self {
            Threading::WorkStealing { workers } => {
                proxy_runtime(&mut tokio::runtime::Builder::new_multi_thread())
                    .worker_threads(workers)
                    .thread_name("metaproxy-worker")
                    .build()
            }
            Threading::PerCore { .. } => {
                proxy_runtime(&mut tokio::runtime::Builder::new_current_thread())
                    .thread_name("metaproxy-main")
                    .build()
            }
        }
    }
}

/// Sets what every runtime that runs connections has: tokio's I/O and time drivers, and,
/// when a worker thread is about to park, the writes put off to the end of its turn
/// ([`crate::turn_end::at_park`]) and then a buffer pool its threads empty when they go
/// idle ([`crate::buffer_pool::trim_when_idle`]).
pub(crate) fn proxy_runtime(builder: &mut tokio::runtime::Builder) -> &mut tokio::runtime::Builder {
    builder.enable_all().on_thread_park(|| {
        crate::turn_end::at_park();
        crate::buffer_pool::trim_when_idle();
    })
}

/// Builds the default runtime (work stealing on every core).
pub fn build() -> std::io::Result<tokio::runtime::Runtime> {
    Threading::WorkStealing {
        workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
    .build_runtime()
}

thread_local! {
    static WORKER: Cell<u16> = const { Cell::new(0) };
}

/// The per-core worker this thread is (0 outside per-core workers). Upstream pools are
/// kept per worker so that per-core workers never share connections.
pub(crate) fn worker_id() -> u16 {
    WORKER.with(Cell::get)
}

pub(crate) fn set_worker_id(id: u16) {
    reserve_worker_ids(usize::from(id) + 1);
    WORKER.with(|w| w.set(id));
}

/// One more than the highest worker id any thread has had or a server has announced:
/// 1 while only the main runtime and work-stealing workers (all id 0) run.
static WORKER_IDS: AtomicUsize = AtomicUsize::new(1);

/// Announces that worker ids below `count` will be used (a per-core server does so
/// before it starts its workers), so that per-worker tables made from now on have a
/// place for each.
pub(crate) fn reserve_worker_ids(count: usize) {
    WORKER_IDS.fetch_max(count, Ordering::Relaxed);
}

/// How many worker ids are in use or announced ([`reserve_worker_ids`]).
pub(crate) fn worker_ids() -> usize {
    WORKER_IDS.load(Ordering::Relaxed)
}
