//! A listener's compiled filters, in order, and how the request path runs them.

use std::sync::Arc;

use meta_protocol::{LocalReplyKind, Message};
use metaproxy_router::RouteTable;

use super::{
    Decision, Filter, FilterContext, FilterRegistry, FilterRequest, FilterResponse,
    PendingDecision, Verdict,
};
use crate::config::{ListenerConfig, Problem};
use crate::observe::metrics::{Counter, Metrics};

/// One built filter with what identifies it across reloads.
struct ChainEntry {
    name: String,
    config: serde_json::Value,
    label: Arc<str>,
    filter: Arc<dyn Filter>,
    /// `rate_limited_total{listener,filter}`.
    rate_limited: Counter,
}

/// Where running the request filters left a request.
pub enum ChainStep {
    /// Every filter let it through: route it.
    Continue,
    /// Answer it with this local reply.
    Reply(LocalReplyKind, Arc<str>),
    /// Filter `index` waits on `pending`; resume with [`FilterChain::resume`].
    Wait {
        /// The position of the waiting filter in the chain.
        index: usize,
        /// What it waits on.
        pending: PendingDecision,
    },
}

/// A listener's filters in config order, as the proxy runs them. Empty (and free on the
/// request path) when the listener has none. Public so that tests and benchmarks can
/// drive filters exactly as the proxy does.
#[derive(Default)]
pub struct FilterChain {
    entries: Box<[ChainEntry]>,
}

impl FilterChain {
    /// Whether the listener has no filters.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Runs the request hooks from filter `from` on.
    pub fn on_request(
        &self,
        from: usize,
        listener: &str,
        msg: &mut Message,
        table: &RouteTable,
    ) -> ChainStep {
        for (index, entry) in self.entries.iter().enumerate().skip(from) {
            let mut request = FilterRequest::new(listener, msg, table);
            match entry.filter.on_request(&mut request) {
                Verdict::Continue => {}
                Verdict::Reply(kind, text) => {
                    entry.count(kind);
                    return ChainStep::Reply(kind, text);
                }
                Verdict::Wait(pending) => return ChainStep::Wait { index, pending },
            }
        }
        ChainStep::Continue
    }

    /// Acts on the decision of waiting filter `index`: a reply is counted and returned;
    /// `Continue` runs the filters after it.
    pub fn resume(
        &self,
        index: usize,
        decision: Decision,
        listener: &str,
        msg: &mut Message,
        table: &RouteTable,
    ) -> ChainStep {
        match decision {
            Decision::Continue => self.on_request(index + 1, listener, msg, table),
            Decision::Reply(kind, text) => {
                if let Some(entry) = self.entries.get(index) {
                    entry.count(kind);
                }
                ChainStep::Reply(kind, text)
            }
        }
    }

    /// Counts each filter's refusals in `rate_limited_total{listener,filter}` of
    /// `metrics` (registering the series): done when a compiled config is committed.
    pub(crate) fn attach_metrics(&mut self, metrics: &Metrics, listener: &str) {
        for entry in self.entries.iter_mut() {
            entry.rate_limited = metrics.rate_limited(listener, &entry.label);
        }
    }

    /// Runs the response hooks, last filter first.
    pub fn on_response(&self, response: &mut FilterResponse<'_>) {
        for entry in self.entries.iter().rev() {
            entry.filter.on_response(response);
        }
    }

    /// Builds the filters of listener `l` (at `listeners[index]`). A filter whose name,
    /// label and config equal one of `previous` is carried over with its state. Refusals
    /// are counted nowhere until the runtime attaches the metrics (when it commits the
    /// compiled config).
    pub fn build(
        index: usize,
        l: &ListenerConfig,
        registry: &FilterRegistry,
        previous: Option<&FilterChain>,
    ) -> Result<FilterChain, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut entries = Vec::with_capacity(l.filters.len());
        for (j, fc) in l.filters.iter().enumerate() {
            let at = format!("listeners[{index}].filters[{j}]");
            let Some(factory) = registry.get(&fc.name) else {
                problems.push(Problem {
                    field: format!("{at}.name"),
                    message: format!(
                        "unknown filter {:?} (known: {})",
                        fc.name,
                        registry.names().collect::<Vec<_>>().join(", ")
                    ),
                });
                continue;
            };
            let repeated = l.filters.iter().filter(|f| f.name == fc.name).count() > 1;
            let label: Arc<str> = if repeated {
                format!("{}#{j}", fc.name).into()
            } else {
                fc.name.as_str().into()
            };
            let carried = previous.and_then(|p| {
                p.entries
                    .iter()
                    .find(|e| e.name == fc.name && e.label == label && e.config == fc.config)
            });
            let filter = match carried {
                Some(e) => e.filter.clone(),
                None => {
                    let ctx = FilterContext {
                        listener: &l.name,
                        label: &label,
                    };
                    match factory.build(&fc.config, &ctx) {
                        Ok(f) => f,
                        Err(errors) => {
                            problems.extend(errors.into_iter().map(|e| Problem {
                                field: if e.field.is_empty() {
                                    format!("{at}.config")
                                } else {
                                    format!("{at}.config.{}", e.field)
                                },
                                message: e.message,
                            }));
                            continue;
                        }
                    }
                }
            };
            let rate_limited = Counter::detached();
            entries.push(ChainEntry {
                name: fc.name.clone(),
                config: fc.config.clone(),
                label,
                filter,
                rate_limited,
            });
        }
        if problems.is_empty() {
            Ok(FilterChain {
                entries: entries.into_boxed_slice(),
            })
        } else {
            Err(problems)
        }
    }
}

impl ChainEntry {
    #[inline]
    fn count(&self, kind: LocalReplyKind) {
        if kind == LocalReplyKind::RateLimited {
            self.rate_limited.inc();
        }
    }
}
