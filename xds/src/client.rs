//! The ADS client task: connects, keeps one stream open, applies every update through
//! the runtime's atomic swap, and reconnects with jittered exponential backoff while
//! the last good config keeps serving.

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use metaproxy::config::XdsConfig;
use metaproxy::ServerHandle;
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::state::{AdsState, ResourceType};
use crate::XdsError;

/// Requests queued for the stream at most. Each response produces at most two
/// requests, and responses are handled one at a time, so the queue never fills.
pub const REQUEST_QUEUE: usize = 16;

/// How often the listeners' `route_config` names are compared with the subscription
/// (they change when the config file is reloaded).
const ROUTE_NAMES_CHECK: Duration = Duration::from_secs(1);

/// A running xDS client; dropping it does not stop it, [`XdsClient::shutdown`] does.
pub struct XdsClient {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl XdsClient {
    /// Starts the client for `handle`'s server with the settings of `config`. Must be
    /// called inside a tokio runtime.
    pub fn spawn(handle: ServerHandle, config: XdsConfig) -> XdsClient {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(handle, config, stopped));
        XdsClient { stop, task }
    }

    /// Closes the stream and waits for the task to end. The config in force stays.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// The nominal delay before reconnect attempt `attempt` (0-based): `base * 2^attempt`,
/// at most `max`.
fn nominal_backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1u32 << attempt.min(16)).min(max)
}

/// A delay drawn uniformly from half to all of the nominal delay, so that a fleet
/// does not reconnect in lockstep.
fn jittered(nominal: Duration) -> Duration {
    let half = nominal / 2;
    half + half.mul_f64(rand::rng().random_range(0.0..=1.0))
}

async fn run(handle: ServerHandle, config: XdsConfig, mut stopped: watch::Receiver<bool>) {
    let mut state = AdsState::new(&config.node_id, &config.node_cluster);
    let mut attempt: u32 = 0;
    loop {
        let outcome = tokio::select! {
            r = stream_once(&handle, &config, &mut state) => r,
            _ = stopped.wait_for(|s| *s) => return,
        };
        match outcome {
            Ok(StreamEnd { responses }) => {
                if responses > 0 {
                    attempt = 0;
                }
                tracing::warn!(address = %config.address, "xds: stream closed by the control plane; the last good config keeps serving");
            }
            Err((error, responses)) => {
                if responses > 0 {
                    attempt = 0;
                }
                tracing::warn!(address = %config.address, %error, "xds: stream failed; the last good config keeps serving");
            }
        }
        let delay = jittered(nominal_backoff(
            config.backoff_base.get(),
            config.backoff_max.get(),
            attempt,
        ));
        attempt = attempt.saturating_add(1);
        tracing::info!(?delay, "xds: reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

struct StreamEnd {
    responses: u64,
}

fn route_names(handle: &ServerHandle) -> Vec<String> {
    handle
        .config()
        .listeners
        .iter()
        .map(|l| l.route_config.clone())
        .collect()
}

/// Runs one stream until it ends. Returns how many responses it carried.
async fn stream_once(
    handle: &ServerHandle,
    config: &XdsConfig,
    state: &mut AdsState,
) -> Result<StreamEnd, (XdsError, u64)> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", config.address))
        .map_err(|e| (XdsError::Address(e.to_string()), 0))?
        .connect_timeout(config.connect_timeout.get())
        .tcp_nodelay(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| (XdsError::Connect(e.to_string()), 0))?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(config.max_message_size);
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(REQUEST_QUEUE);
    for request in state.start_stream(&route_names(handle)) {
        tx.try_send(request)
            .map_err(|e| (XdsError::Stream(e.to_string()), 0))?;
    }
    let mut responses = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .map_err(|e| (XdsError::Stream(e.to_string()), 0))?
        .into_inner();
    tracing::info!(address = %config.address, node = %config.node_id, "xds: stream open");
    let mut count = 0u64;
    let mut check = tokio::time::interval(ROUTE_NAMES_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = responses.message() => match message {
                Ok(Some(response)) => {
                    count += 1;
                    for request in handle_response(handle, state, &response).await {
                        tx.send(request)
                            .await
                            .map_err(|e| (XdsError::Stream(e.to_string()), count))?;
                    }
                }
                Ok(None) => return Ok(StreamEnd { responses: count }),
                Err(status) => return Err((XdsError::Stream(status.to_string()), count)),
            },
            _ = check.tick() => {
                if let Some(request) = state.set_route_names(&route_names(handle)) {
                    tx.send(request)
                        .await
                        .map_err(|e| (XdsError::Stream(e.to_string()), count))?;
                }
            }
        }
    }
}

/// Handles one response: converts it, applies it through the runtime's swap, and
/// returns the ACK or NACK (and any new subscription) to send.
async fn handle_response(
    handle: &ServerHandle,
    state: &mut AdsState,
    response: &DiscoveryResponse,
) -> Vec<DiscoveryRequest> {
    let started = Instant::now();
    let pending = match state.prepare(response) {
        Ok(Some(p)) => p,
        Ok(None) => {
            tracing::debug!(type_url = %response.type_url, "xds: ignoring a response of a type not subscribed to");
            return Vec::new();
        }
        Err(refused) => {
            handle.count_xds_update(refused.kind.label(), false);
            tracing::warn!(r#type = refused.kind.label(), version = %response.version_info, reason = %refused.reason, "xds: update rejected (NACK); the previous version keeps serving");
            return vec![state.nack(refused.kind, &refused.nonce, &refused.reason)];
        }
    };
    let kind: ResourceType = pending.kind;
    let resources = state.resources(Some(&pending));
    match handle.apply_dynamic(resources).await {
        Ok(outcome) => {
            handle.count_xds_update(kind.label(), true);
            for w in &outcome.warnings {
                tracing::warn!("xds: {w}");
            }
            tracing::info!(
                r#type = kind.label(),
                version = %pending.version(),
                resources = pending.resource_count,
                elapsed_us = started.elapsed().as_micros() as u64,
                "xds: update applied (ACK)"
            );
            state.accept(pending)
        }
        Err(problems) => {
            handle.count_xds_update(kind.label(), false);
            let reason = problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            tracing::warn!(r#type = kind.label(), version = %pending.version(), %reason, "xds: update rejected (NACK); the previous version keeps serving");
            vec![state.reject(pending, &reason)]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitter_stays_within_half_to_full() {
        let base = Duration::from_millis(500);
        let max = Duration::from_secs(30);
        let nominal: Vec<u64> = (0..9)
            .map(|a| nominal_backoff(base, max, a).as_millis() as u64)
            .collect();
        assert_eq!(
            nominal,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(nominal_backoff(base, max, u32::MAX), max);
        let mut distinct = std::collections::HashSet::new();
        for _ in 0..200 {
            let d = jittered(Duration::from_secs(8));
            assert!(
                d >= Duration::from_secs(4) && d <= Duration::from_secs(8),
                "{d:?}"
            );
            distinct.insert(d);
        }
        assert!(distinct.len() > 100, "jitter draws should differ");
    }
}
