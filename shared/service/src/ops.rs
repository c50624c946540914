//! What operators scrape and probe: Prometheus metrics at `/metrics`,
//! liveness at `/healthz` and readiness at `/readyz`, on the address
//! `--metrics-listen` names (off unless given).
//!
//! Metric names follow Prometheus' conventions: a `moira_` prefix, base
//! units (`_seconds`), `_total` on counters, and labels with few values
//! (verbs, outcomes, statuses, channel names), never user names or ids.
//! The metrics are process-wide ([`metrics`]); each service records the
//! ones that concern it.

use std::net::SocketAddr;
use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// `--metrics-listen`, for every service's command line.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct OpsArgs {
    /// Serve /metrics, /healthz and /readyz on this address (for example
    /// 127.0.0.1:9464); off when absent
    #[arg(long, env = "MOIRA_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub verb: String,
    /// `ok`, or the error code.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    pub verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub channel: String,
    /// `delivered` or `failed`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    pub channel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    pub consumer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub service: String,
    pub version: String,
}

/// Every metric a moira process may record.
pub struct Metrics {
    registry: Registry,
    /// Gate commands answered, by verb and outcome (gate-keeper).
    pub commands: Family<CommandLabels, Counter>,
    /// Time to answer a gate command, by verb (gate-keeper).
    pub command_seconds: Family<VerbLabels, Histogram>,
    /// From a gate's opening to the event that ended it (gate-keeper).
    pub decision_seconds: Histogram,
    /// Gates this process saw open, and saw end (gate-keeper): their
    /// difference summed over gate-keepers is the gates waiting.
    pub gates_opened: Counter,
    pub gates_ended: Counter,
    /// Timeouts that fired, by what they did (notifier).
    pub timeouts: Family<ActionLabels, Counter>,
    /// Runs that ended, by status (runner).
    pub runs: Family<StatusLabels, Counter>,
    /// Steps that ended, by status (runner).
    pub steps: Family<StatusLabels, Counter>,
    /// How long a step's command ran (runner).
    pub step_seconds: Histogram,
    /// From a gate's decision to the runner taking its run up again.
    pub resume_seconds: Histogram,
    /// Notifications by channel and result (notifier).
    pub notifications: Family<DeliveryLabels, Counter>,
    /// Time to deliver one notification, all attempts (notifier).
    pub delivery_seconds: Family<ChannelLabels, Histogram>,
    /// Messages a durable consumer of this process has yet to get.
    pub consumer_pending: Family<ConsumerLabels, Gauge>,
    /// Events this process projected into the read model, by kind.
    pub index_projected: Family<KindLabels, Counter>,
    /// Gates waiting across the cluster, as the read model counts them
    /// (gate-keeper).
    pub gates_waiting: Gauge,
    build: Family<BuildLabels, Gauge>,
}

fn latency() -> Histogram {
    // 100 µs to about 26 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

fn long() -> Histogram {
    // 10 ms to about 3 days.
    Histogram::new(exponential_buckets(0.01, 3.0, 18))
}

impl Metrics {
    fn new() -> Metrics {
        let mut m = Metrics {
            commands: Family::default(),
            command_seconds: Family::new_with_constructor(latency),
            decision_seconds: long(),
            gates_opened: Counter::default(),
            gates_ended: Counter::default(),
            timeouts: Family::default(),
            runs: Family::default(),
            steps: Family::default(),
            step_seconds: long(),
            resume_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            notifications: Family::default(),
            delivery_seconds: Family::new_with_constructor(latency),
            consumer_pending: Family::default(),
            index_projected: Family::default(),
            gates_waiting: Gauge::default(),
            build: Family::default(),
            registry: Registry::with_prefix("moira"),
        };
        let registry = &mut m.registry;
        registry.register(
            "commands",
            "Gate commands answered, by verb and outcome",
            m.commands.clone(),
        );
        registry.register(
            "command_duration_seconds",
            "Time to answer a gate command, by verb",
            m.command_seconds.clone(),
        );
        registry.register(
            "decision_latency_seconds",
            "From a gate's opening to the event that ended it",
            m.decision_seconds.clone(),
        );
        registry.register(
            "gates_opened",
            "Gates this process opened",
            m.gates_opened.clone(),
        );
        registry.register(
            "gates_ended",
            "Gates this process ended",
            m.gates_ended.clone(),
        );
        registry.register(
            "gate_timeouts",
            "Timeouts that fired, by their action",
            m.timeouts.clone(),
        );
        registry.register(
            "runs_finished",
            "Runs that ended, by status",
            m.runs.clone(),
        );
        registry.register(
            "steps_finished",
            "Steps that ended, by status",
            m.steps.clone(),
        );
        registry.register(
            "step_duration_seconds",
            "How long a step's command ran",
            m.step_seconds.clone(),
        );
        registry.register(
            "resume_latency_seconds",
            "From a gate's decision to its run being taken up again",
            m.resume_seconds.clone(),
        );
        registry.register(
            "notifications",
            "Notifications by channel and result",
            m.notifications.clone(),
        );
        registry.register(
            "notification_delivery_seconds",
            "Time to deliver one notification, all attempts",
            m.delivery_seconds.clone(),
        );
        registry.register(
            "consumer_pending_messages",
            "Messages a durable consumer has yet to deliver to this process",
            m.consumer_pending.clone(),
        );
        registry.register(
            "index_projected_events",
            "Events this process projected into the read model, by kind",
            m.index_projected.clone(),
        );
        registry.register(
            "gates_waiting",
            "Gates waiting across the cluster, as the read model counts them",
            m.gates_waiting.clone(),
        );
        registry.register("build_info", "The running build", m.build.clone());
        m
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// A command answered.
    pub fn command(&self, verb: &str, outcome: &str, took: std::time::Duration) {
        self.commands
            .get_or_create(&CommandLabels {
                verb: verb.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
        self.command_seconds
            .get_or_create(&VerbLabels {
                verb: verb.to_string(),
            })
            .observe(took.as_secs_f64());
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until `shutdown`;
/// returns the address bound. `service` and its version go into
/// `moira_build_info`. Services call it once started (streams checked,
/// consumers bound), so `/readyz` only has to ask whether the broker is
/// connected.
pub async fn serve(
    addr: SocketAddr,
    service: &str,
    nats: async_nats::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    use axum::http::StatusCode;
    use axum::routing::get;
    metrics()
        .build
        .get_or_create(&BuildLabels {
            service: service.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        })
        .set(1);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for metrics: {e}"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics().encode(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let connected = nats.connection_state() == async_nats::connection::State::Connected;
                async move {
                    if connected {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: the broker is not connected\n",
                        )
                    }
                }
            }),
        );
    tracing::info!("metrics and health on http://{bound}/metrics");
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::warn!("the metrics listener stopped: {e}");
        }
    });
    Ok(bound)
}

/// Samples a durable consumer's pending count every few seconds into
/// `moira_consumer_pending_messages{consumer}` until `shutdown`.
pub fn watch_pending<C>(
    name: &str,
    mut consumer: async_nats::jetstream::consumer::Consumer<C>,
    shutdown: CancellationToken,
) where
    C: async_nats::jetstream::consumer::IntoConsumerConfig
        + async_nats::jetstream::consumer::FromConsumer
        + Clone
        + Send
        + Sync
        + 'static,
{
    let gauge = metrics().consumer_pending.get_or_create(&ConsumerLabels {
        consumer: name.to_string(),
    });
    let gauge = gauge.clone();
    tokio::spawn(async move {
        loop {
            if let Ok(info) = consumer.info().await {
                gauge.set(info.num_pending as i64);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn metric_names_follow_the_conventions() {
        let m = super::metrics();
        m.command("approve", "ok", std::time::Duration::from_millis(2));
        let text = m.encode();
        assert!(
            text.contains("moira_commands_total{verb=\"approve\",outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("moira_command_duration_seconds_bucket"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE moira_decision_latency_seconds histogram"),
            "{text}"
        );
    }
}
