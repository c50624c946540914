//! moira-notifier: delivers notifications about gates and runs.
//!
//! Notifiers share durable consumers (explicit acks), so each event is
//! handled by one notifier, whatever their number:
//! - `moira-notifier-gates` on gate events (opened, decided, pushed back…);
//! - `moira-notifier-runs` on run events (a run finished or failed);
//! - `moira-notifier-fire` on reminders and escalations, which are server
//!   message schedules in `MOIRA_NOTIFY`, so they survive restarts and fire
//!   once however many notifiers run.
//!
//! Each notification is routed ([`route`]) to channels. Before a channel
//! is told, the (event, channel) pair is claimed in the shared
//! `MOIRA_NOTIFY_DELIVERIES` bucket (see `store`), so an event handled by
//! two notifiers, or delivered again after a crash, notifies once. A
//! delivery is tried with exponential backoff and jitter, and published to
//! `moira.notify.failed.<channel>` when it keeps failing, where `moira
//! notify failures` reads it.
//!
//! # Layout
//! - [`config`]: the TOML config and its checks;
//! - [`channels`]: delivering to webhook, Slack, e-mail, exec, log;
//! - `consume`: following the shared consumers, acks and hand-backs;
//! - `route`: building a notification and choosing its channels (pure,
//!   unit-tested);
//! - `schedule`: reminder and escalation schedules;
//! - `deliver`: claims, retries and failed deliveries;
//! - `store`: the shared delivery record;
//! - this file: settings, start-up, reload and the service loop.

#![forbid(unsafe_code)]

pub mod channels;
pub mod config;
mod consume;
mod deliver;
mod route;
mod schedule;
mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::AckKind;
use async_nats::HeaderMap;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use moira_client::{Client, GateView, RunView};
use moira_protocol::event::{Decoded, GateEvent};
use moira_protocol::run::{RunEnvelope, RunEvent, RunStatus};
use moira_protocol::time::{now_ms, rfc3339};
use moira_protocol::wire::streams;
use moira_protocol::wire::*;
use moira_protocol::{Envelope, GateId};
use moira_service::feed::DurableFeed;

pub use config::{Config as NotifyConfig, ConfigError, Resolved};
pub use deliver::failures;
pub use route::route;

use consume::{consume, Handled};
use deliver::deliver_all;
use route::{notification, targets};
use schedule::{fired, schedule, unschedule};

/// Events each consumer handles at once. Each consumer has its own slots,
/// so a burst of gate events never holds up reminders or run events.
const HANDLERS: usize = 8;
/// Progress acks for an event being handled or waiting for a slot.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// An event some channel of which another notifier is delivering now is
/// handed back to the consumer and comes back after this.
const BUSY_RETRY: Duration = Duration::from_secs(5);

/// A notification, as every channel receives it (webhooks get this JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notification {
    /// Unique per source event: `<stream>:<sequence>`.
    pub id: String,
    /// opened, reminder, escalated, approved, denied, timed_out, cancelled,
    /// pushed_back, run_finished, run_failed.
    pub kind: String,
    pub at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<RunSummary>,
    /// A link to the gate or run, when the config has a base_url.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// Set on a message for one approver alone (never serialized: a
    /// webhook's JSON is shared and must not carry anyone's links).
    #[serde(skip)]
    pub personal: Option<Personal>,
}

/// Who a personal message is for, where it goes, and their own links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Personal {
    pub user: String,
    /// Their e-mail address or Slack user id.
    pub address: String,
    /// One-click links (`[links]`), each naming this user, one action and
    /// an expiry.
    pub approve: Option<String>,
    pub deny: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    pub id: String,
    pub workflow: String,
    pub status: RunStatus,
    /// Gates of this run still waiting.
    pub waiting_gates: Vec<GateId>,
}

/// A delivery that kept failing, as published for `moira notify failures`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    pub notification: String,
    pub kind: String,
    pub channel: String,
    pub gate_id: Option<GateId>,
    pub run_id: Option<String>,
    pub attempts: u32,
    pub error: String,
    pub at: String,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub nats_url: String,
    /// None: everything goes to the log channel.
    pub config: Option<PathBuf>,
    /// Broker credentials and TLS.
    pub auth: moira_client::Auth,
    /// Replicas for the streams this notifier creates when it starts
    /// first (3 on a cluster), like the other services' `--replicas`.
    pub replicas: usize,
    /// The approvers registry file: who approves for a role, and each
    /// user's e-mail and Slack id, for messages of their own.
    pub approvers: Option<PathBuf>,
    /// Follow the registry in the `MOIRA_REGISTRY` bucket instead.
    pub approvers_kv: bool,
    /// Where to serve /metrics, /healthz and /readyz.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// The config in force: replaced whole when a reload succeeds.
pub(crate) struct Loaded {
    config: config::Config,
    resolved: Resolved,
}

pub(crate) struct Shared {
    client: Client,
    js: async_nats::jetstream::Context,
    loaded: std::sync::RwLock<Arc<Loaded>>,
    /// The config file, for SIGHUP.
    config_path: Option<PathBuf>,
    deliveries: store::Deliveries,
    registry: moira_service::live::LiveRegistry,
}

pub struct Notifier {
    shared: Arc<Shared>,
    metrics_listen: Option<std::net::SocketAddr>,
    consumers: Vec<(
        &'static str,
        async_nats::jetstream::consumer::Consumer<pull::Config>,
    )>,
}

/// Loads the config, connects, and creates the consumers.
pub async fn start(settings: Settings) -> anyhow::Result<Notifier> {
    let (config, resolved) = match &settings.config {
        Some(path) => config::Config::load(path)?,
        None => config::Config::log_only(),
    };
    let client = Client::connect_with(&settings.nats_url, "moira-notifier", &settings.auth).await?;
    let js = async_nats::jetstream::new(client.nats().clone());
    moira_client::streams::ensure_gate_stream(&js, settings.replicas).await?;
    let registry = moira_service::live::LiveRegistry::open(
        &client,
        settings.approvers.as_deref(),
        settings.approvers_kv,
    )
    .await?;
    moira_client::streams::ensure_runs_stream(&js, settings.replicas).await?;
    moira_client::streams::ensure(&js, streams::notify_stream_config(settings.replicas)).await?;
    // A claim is renewed before each attempt and outlives one attempt (an
    // e-mail may take two timeouts: connecting, then sending). A notifier
    // that died mid-delivery leaves a claim that others take over after it.
    let ttl = resolved.timeout * 2 + Duration::from_secs(5);
    let me = format!("notifier-{}", uuid::Uuid::new_v4().simple());
    let deliveries = store::Deliveries::open(&js, settings.replicas, me, ttl)
        .await
        .map_err(anyhow::Error::msg)?;
    let mut consumers = Vec::new();
    for (name, stream, filter) in [
        (NOTIFIER_GATES_CONSUMER, GATES_STREAM, GATE_EVENTS_ALL),
        (NOTIFIER_RUNS_CONSUMER, RUNS_STREAM, RUN_EVENTS_ALL),
        (NOTIFIER_FIRED_CONSUMER, NOTIFY_STREAM, NOTIFY_FIRED_ALL),
    ] {
        let c = moira_service::feed::shared_consumer(&js, stream, name, filter).await?;
        consumers.push((name, c));
    }
    tracing::info!(url = %settings.nats_url, channels = config.channels.len(), rules = config.rules.len(), "moira-notifier ready");

    Ok(Notifier {
        shared: Arc::new(Shared {
            client,
            js,
            loaded: std::sync::RwLock::new(Arc::new(Loaded { config, resolved })),
            config_path: settings.config.clone(),
            deliveries,
            registry,
        }),
        consumers,
        metrics_listen: settings.metrics_listen,
    })
}

pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    start(settings).await?.serve(shutdown).await
}

impl Shared {
    fn loaded(&self) -> Arc<Loaded> {
        self.loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the config file again; a bad one is refused with its
    /// problems and the one in force stays.
    fn reload(&self) {
        let Some(path) = &self.config_path else {
            tracing::info!("SIGHUP: no --config file to reload (everything goes to the log)");
            return;
        };
        match config::Config::load(path) {
            Ok((config, resolved)) => {
                tracing::info!(
                    file = %path.display(),
                    channels = config.channels.len(),
                    rules = config.rules.len(),
                    "notifier config reloaded"
                );
                *self.loaded.write().unwrap_or_else(|p| p.into_inner()) =
                    Arc::new(Loaded { config, resolved });
            }
            Err(e) => tracing::error!(
                file = %path.display(),
                "the new notifier config is refused, the one in force stays: {e}"
            ),
        }
    }
}

impl Notifier {
    pub async fn serve(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        if let Some(addr) = self.metrics_listen {
            let nats = self.shared.client.nats().clone();
            moira_service::ops::serve(addr, "moira-notifier", nats, shutdown.clone()).await?;
            for (name, consumer) in &self.consumers {
                moira_service::ops::watch_pending(name, consumer.clone(), shutdown.clone());
            }
        }
        let _reloader = {
            let (shared, shutdown) = (self.shared.clone(), shutdown.clone());
            moira_service::signals::on_hangup(shutdown, move || shared.reload())
        };
        let mut loops = Vec::new();
        let mut all_slots = Vec::new();
        for (name, consumer) in self.consumers {
            let slots = Arc::new(Semaphore::new(HANDLERS));
            all_slots.push(slots.clone());
            let (shared, shutdown) = (self.shared.clone(), shutdown.clone());
            loops.push(tokio::spawn(consume(
                name, consumer, shared, slots, shutdown,
            )));
        }
        shutdown.cancelled().await;
        for l in loops {
            let _ = l.await;
        }
        // Let handlers in flight finish (bounded): they ack what they did.
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            for slots in &all_slots {
                let _ = slots.acquire_many(HANDLERS as u32).await;
            }
        })
        .await;
        tracing::info!("moira-notifier stopped");
        Ok(())
    }
}
