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
//! - `store`: the shared delivery record;
//! - this file: consumers, routing, schedules, retries.

#![forbid(unsafe_code)]

pub mod channels;
pub mod config;
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
    let registry = moira_service::live::LiveRegistry::open(
        &client,
        settings.approvers.as_deref(),
        settings.approvers_kv,
    )
    .await?;
    moira_client::streams::ensure_gate_stream(&js, settings.replicas).await?;
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

/// What became of an event.
#[derive(Debug, PartialEq, Eq)]
enum Handled {
    /// Every channel was told, given up on, or had been told before.
    Done,
    /// Some channel is being told by another notifier: hand it back.
    Later,
}

async fn consume(
    name: &'static str,
    consumer: async_nats::jetstream::consumer::Consumer<pull::Config>,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let mut feed = DurableFeed::new(name, consumer);
    while let Some(msg) = feed.next(&shutdown).await {
        // Waiting for a slot counts as progress: without it, a burst while
        // a channel is slow would be delivered again to someone else.
        let Ok(permit) = with_progress(&msg, slots.clone().acquire_owned()).await else {
            return;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let handled = with_progress(&msg, handle(&shared, &msg)).await;
            let acked = match handled {
                Handled::Done => msg.double_ack().await,
                Handled::Later => msg.ack_with(AckKind::Nak(Some(BUSY_RETRY))).await,
            };
            if let Err(e) = acked {
                tracing::warn!("acking an event failed: {e}");
            }
            drop(permit);
        });
    }
}

/// Runs `work`, sending progress acks for `msg` every [`PROGRESS_EVERY`]
/// meanwhile, so the event stays with this notifier.
async fn with_progress<T>(
    msg: &async_nats::jetstream::Message,
    work: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(work);
    let mut beat = tokio::time::interval(PROGRESS_EVERY);
    beat.tick().await;
    loop {
        tokio::select! {
            r = &mut work => return r,
            _ = beat.tick() => { let _ = msg.ack_with(AckKind::Progress).await; }
        }
    }
}

/// Handles one event of any of the three consumers. Never fails: problems
/// are logged or recorded as failed deliveries, and the event is acked
/// (unless another notifier is delivering part of it right now).
async fn handle(shared: &Shared, msg: &async_nats::jetstream::Message) -> Handled {
    let Ok(info) = msg.info() else {
        return Handled::Done;
    };
    let id = format!("{}:{}", info.stream, info.stream_sequence);
    let subject = msg.subject.to_string();
    if let Some(tp) = moira_client::trace::of(msg.headers.as_ref()) {
        tracing::info!(
            notification = id,
            traceparent = tp.as_str(),
            "an event with a trace context"
        );
    }
    if let Some(rest) = notify_fired_parts(&subject) {
        return fired(shared, &id, rest, msg.headers.as_ref()).await;
    } else if is_run_event(&subject) {
        if let Some(env) = RunEnvelope::decode(&msg.payload) {
            if let RunEvent::RunFinished { status } = env.event {
                let kind = if status == RunStatus::Succeeded {
                    "run_finished"
                } else {
                    "run_failed"
                };
                if let Ok(run) = shared.client.show_run(&env.run_id).await {
                    let n = notification(shared, id, kind, None, Some(&run));
                    return deliver_all(shared, &n, &[]).await;
                }
            }
        }
    } else {
        match Envelope::decode(&msg.payload) {
            Ok(Decoded::Event(env)) => {
                return gate_event(shared, id, info.stream_sequence, env).await
            }
            Ok(Decoded::Unknown { kind, .. }) => {
                tracing::debug!(kind, "skipping an event kind this build does not know")
            }
            Err(e) => tracing::warn!(subject, "skipping an undecodable event: {e}"),
        }
    }
    Handled::Done
}

async fn gate_event(shared: &Shared, id: String, seq: u64, env: Envelope) -> Handled {
    let kind = match &env.event {
        GateEvent::GateOpened { .. } => "opened",
        GateEvent::GateApproved { .. } => "approved",
        GateEvent::GateDenied { .. } => "denied",
        GateEvent::GateTimedOut { .. } => "timed_out",
        GateEvent::GateCancelled { .. } => "cancelled",
        GateEvent::GatePushedBack { .. } => "pushed_back",
        GateEvent::ApprovalRecorded { .. } => return Handled::Done,
    };
    if let GateEvent::GateTimedOut { on_timeout } = &env.event {
        moira_service::ops::metrics()
            .timeouts
            .get_or_create(&moira_service::ops::ActionLabels {
                action: on_timeout.as_str().to_string(),
            })
            .inc();
    }
    if kind == "opened" {
        schedule(shared, env.gate_id, env.at).await;
    } else if env.event.is_terminal() {
        unschedule(shared, env.gate_id).await;
    }
    let gate = match gate_as_of(shared, env.gate_id, seq).await {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(gate = %env.gate_id, "cannot read the gate to notify about it: {e}");
            return Handled::Done;
        }
    };
    let run = match &gate.run_id {
        Some(r) => shared.client.show_run(r).await.ok(),
        None => None,
    };
    let n = notification(shared, id, kind, Some(gate), run.as_ref());
    deliver_all(shared, &n, &[]).await
}

/// The gate as it was right after the event at `seq`: an "opened" message
/// must not already show a decision that came later.
async fn gate_as_of(shared: &Shared, gate: GateId, seq: u64) -> Result<GateView, String> {
    let (events, _) = shared
        .client
        .read_events(gate)
        .await
        .map_err(|e| e.to_string())?;
    moira_client::fold_stored(events.iter().filter(|e| e.seq <= seq))
        .map(|s| GateView::from(&s))
        .ok_or_else(|| format!("gate {gate} has no open event"))
}

/// Reminder and escalation schedules for a newly opened gate.
async fn schedule(shared: &Shared, gate: GateId, opened_at: u64) {
    let loaded = shared.loaded();
    let mut jobs = Vec::new();
    if let Some(every) = loaded.resolved.remind_every {
        jobs.push(("remind", format!("@every {}ms", every.as_millis())));
    }
    if let Some(after) = loaded.resolved.escalate_after {
        jobs.push((
            "escalate",
            format!("@at {}", rfc3339(opened_at + after.as_millis() as u64)),
        ));
    }
    for (what, spec) in jobs {
        let mut h = HeaderMap::new();
        h.insert(HDR_SCHEDULE, spec.as_str());
        h.insert(HDR_SCHEDULE_TARGET, notify_fired(gate, what).as_str());
        h.insert(HDR_MSG_ID, format!("{what}:{gate}").as_str());
        let published = shared
            .js
            .publish_with_headers(
                notify_schedule(gate, what),
                h,
                what.as_bytes().to_vec().into(),
            )
            .await;
        match published {
            Ok(ack) => {
                if let Err(e) = ack.await {
                    tracing::warn!(%gate, "storing the {what} schedule failed: {e}");
                }
            }
            Err(e) => tracing::warn!(%gate, "storing the {what} schedule failed: {e}"),
        }
    }
}

/// Removes a gate's reminder and escalation schedules, both of them
/// whatever the config says now: one made under an older config must not
/// go on firing.
async fn unschedule(shared: &Shared, gate: GateId) {
    for what in ["remind", "escalate"] {
        let mut h = HeaderMap::new();
        h.insert(HDR_SCHEDULER, notify_schedule(gate, what).as_str());
        h.insert(HDR_SCHEDULE_NEXT, SCHEDULE_NEXT_PURGE);
        h.insert(HDR_NOTIFY_STOP, "1");
        if let Ok(ack) = shared
            .js
            .publish_with_headers(notify_fired(gate, "stop"), h, Vec::new().into())
            .await
        {
            let _ = ack.await;
        }
    }
}

/// A reminder or escalation fired: notify if the gate still waits.
async fn fired(shared: &Shared, id: &str, rest: &str, headers: Option<&HeaderMap>) -> Handled {
    let loaded = shared.loaded();
    if headers.is_some_and(|h| h.get(HDR_NOTIFY_STOP).is_some()) {
        return Handled::Done;
    }
    let Some((gate, what)) = rest.split_once('.') else {
        return Handled::Done;
    };
    let Ok(gate) = gate.parse::<GateId>() else {
        return Handled::Done;
    };
    // A schedule the config no longer asks for (it was made before a
    // reload or restart without `[reminders]` or `[escalation]`) is ended.
    let configured = match what {
        "remind" => loaded.resolved.remind_every.is_some(),
        "escalate" => loaded.resolved.escalate_after.is_some(),
        _ => false,
    };
    if !configured {
        tracing::info!(%gate, what, "ending a schedule the config no longer has");
        unschedule(shared, gate).await;
        return Handled::Done;
    }
    let Ok(view) = shared.client.show(gate).await else {
        return Handled::Done;
    };
    if view.status.is_terminal() {
        // Decided: make sure nothing fires again.
        unschedule(shared, gate).await;
        return Handled::Done;
    }
    let (kind, extra) = match what {
        "remind" => ("reminder", Vec::new()),
        "escalate" => (
            "escalated",
            loaded
                .config
                .escalation
                .as_ref()
                .map(|e| e.channels.clone())
                .unwrap_or_default(),
        ),
        _ => return Handled::Done,
    };
    let run = match &view.run_id {
        Some(r) => shared.client.show_run(r).await.ok(),
        None => None,
    };
    let n = notification(shared, id.to_string(), kind, Some(view), run.as_ref());
    deliver_all(shared, &n, &extra).await
}

fn notification(
    shared: &Shared,
    id: String,
    kind: &str,
    gate: Option<GateView>,
    run: Option<&RunView>,
) -> Notification {
    let loaded = shared.loaded();
    let base = loaded
        .config
        .base_url
        .as_deref()
        .map(|b| b.trim_end_matches('/').to_string());
    let link = match (&base, &gate, run) {
        (Some(b), Some(g), _) => Some(format!("{b}/gates/{}", g.id)),
        (Some(b), None, Some(r)) => Some(format!("{b}/runs/{}", r.id)),
        _ => None,
    };
    let run = run.map(|r| RunSummary {
        id: r.id.clone(),
        workflow: r.name.clone(),
        status: r.status,
        waiting_gates: r
            .steps
            .iter()
            .filter(|s| s.status == moira_protocol::run::StepStatus::Waiting)
            .filter_map(|s| s.gate_id)
            .collect(),
    });
    Notification {
        id,
        kind: kind.to_string(),
        at: rfc3339(now_ms()),
        gate,
        run,
        link,
        personal: None,
    }
}

/// Where one channel's copies of a notification go: the shared message
/// (unless the channel has no shared recipient), and, for a waiting gate on
/// a channel that writes to approvers, one message for each approver the
/// registry can reach, with their own links. Each is delivered, and
/// claimed, on its own: `(delivery name, message)`.
fn targets(shared: &Shared, n: &Notification, channel: &str) -> Vec<(String, Notification)> {
    let loaded = shared.loaded();
    use config::ChannelConfig;
    #[derive(Clone, Copy)]
    enum Reach {
        Email,
        Slack,
    }
    let (common, reach) = match loaded.config.channels.get(channel) {
        Some(ChannelConfig::Email { to, approvers, .. }) => {
            (!to.is_empty(), approvers.then_some(Reach::Email))
        }
        Some(ChannelConfig::SlackBot {
            channel: c, direct, ..
        }) => (c.is_some(), direct.then_some(Reach::Slack)),
        _ => (true, None),
    };
    let mut out = Vec::new();
    if common {
        out.push((channel.to_string(), n.clone()));
    }
    let asks = matches!(n.kind.as_str(), "opened" | "reminder" | "escalated");
    let waiting = n
        .gate
        .as_ref()
        .filter(|g| asks && g.status == moira_protocol::GateStatus::Waiting);
    let (Some(reach), Some(g)) = (reach, waiting) else {
        return out;
    };
    let registry = shared.registry.current();
    let base = loaded
        .config
        .base_url
        .as_deref()
        .map(|b| b.trim_end_matches('/'));
    let now = now_ms() / 1000;
    for user in registry.approvers_of(&g.approvers.users, &g.approvers.roles) {
        let done = g.approvals.iter().any(|a| a.by == user);
        if done || (!g.allow_self_approval && user == g.requested_by) {
            continue;
        }
        let address = match reach {
            Reach::Email => registry.email_of(&user),
            Reach::Slack => registry.slack_of(&user),
        };
        let Some(address) = address else {
            continue;
        };
        let link = |action: &str| {
            let ((secret, ttl), base) = (loaded.resolved.links.as_ref()?, base?);
            let token = moira_service::links::Link::new(g.id, &user, action, now, ttl.as_secs())
                .token(secret);
            Some(format!("{base}/links/{token}"))
        };
        let mut mine = n.clone();
        mine.personal = Some(Personal {
            user: user.clone(),
            address: address.to_string(),
            approve: link("approve"),
            deny: link("deny"),
        });
        out.push((format!("{channel}/{user}"), mine));
    }
    out
}

/// The channels a notification goes to: matching rules, channels the gate
/// names itself (`notify` metadata, only those in `gate_channels`), and
/// `extra`. Rules on `workflow` and `metadata` trust only gates a runner
/// opened for a run: anyone else who opens a gate could write any metadata.
pub fn route(config: &config::Config, n: &Notification, extra: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let gate = n.gate.as_ref();
    let trusted = gate.filter(|g| g.run_id.is_some());
    let workflow = match gate {
        Some(_) => trusted.and_then(|g| g.metadata.get("workflow").cloned()),
        None => n.run.as_ref().map(|r| r.workflow.clone()),
    };
    let run_id = gate
        .and_then(|g| g.run_id.clone())
        .or_else(|| n.run.as_ref().map(|r| r.id.clone()));
    for rule in &config.rules {
        let kind_ok = rule.kinds.is_empty() || rule.kinds.iter().any(|k| k == &n.kind);
        let run_ok = rule.run.as_ref().is_none_or(|r| run_id.as_ref() == Some(r));
        let step_ok = rule
            .step
            .as_ref()
            .is_none_or(|s| gate.and_then(|g| g.step.as_ref()) == Some(s));
        let wf_ok = rule
            .workflow
            .as_ref()
            .is_none_or(|w| workflow.as_ref() == Some(w));
        let meta_ok = rule
            .metadata
            .iter()
            .all(|(k, v)| trusted.and_then(|g| g.metadata.get(k)) == Some(v));
        if kind_ok && run_ok && step_ok && wf_ok && meta_ok {
            out.extend(rule.channels.iter().cloned());
        }
    }
    if let Some(named) = gate.and_then(|g| g.metadata.get("notify")) {
        for c in named.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if config.gate_channels.iter().any(|g| g == c) {
                out.push(c.to_string());
            } else {
                tracing::warn!(
                    channel = c.chars().take(64).collect::<String>(),
                    "a gate names a channel that is not in gate_channels; ignored"
                );
            }
        }
    }
    out.extend(extra.iter().cloned());
    out.sort();
    out.dedup();
    out
}

async fn deliver_all(shared: &Shared, n: &Notification, extra: &[String]) -> Handled {
    let loaded = shared.loaded();
    let mut handled = Handled::Done;
    let all = route(&loaded.config, n, extra).into_iter().flat_map(|c| {
        targets(shared, n, &c)
            .into_iter()
            .map(move |t| (c.clone(), t))
    });
    for (channel, (target, n)) in all {
        let n = &n;
        let key = store::key(&n.id, &target);
        match shared.deliveries.claim(&key).await {
            Ok(store::Claim::Mine(rev)) => deliver(shared, n, &channel, &key, rev).await,
            Ok(store::Claim::Done) => {
                tracing::debug!(notification = n.id, channel, "already delivered")
            }
            Ok(store::Claim::Busy) => {
                tracing::debug!(
                    notification = n.id,
                    channel,
                    "another notifier is delivering it"
                );
                handled = Handled::Later;
            }
            Err(e) => {
                // The record cannot be read: deliver later rather than twice.
                tracing::warn!(notification = n.id, channel, "{e}; trying again later");
                handled = Handled::Later;
            }
        }
    }
    handled
}

/// A pseudo-random fraction in [0, 1) for backoff jitter.
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos % 1000) as f64 / 1000.0
}

async fn deliver(shared: &Shared, n: &Notification, channel: &str, key: &str, mut rev: u64) {
    let loaded = shared.loaded();
    let Some(cfg) = loaded.config.channels.get(channel) else {
        return;
    };
    let r = &loaded.resolved;
    let mut last = String::new();
    let started = std::time::Instant::now();
    let m = moira_service::ops::metrics();
    let count = |result: &str| {
        m.notifications
            .get_or_create(&moira_service::ops::DeliveryLabels {
                channel: channel.to_string(),
                result: result.to_string(),
            })
            .inc();
        m.delivery_seconds
            .get_or_create(&moira_service::ops::ChannelLabels {
                channel: channel.to_string(),
            })
            .observe(started.elapsed().as_secs_f64());
    };
    for attempt in 1..=r.attempts {
        if attempt > 1 {
            match shared.deliveries.renew(key, rev).await {
                Ok(new) => rev = new,
                Err(e) => {
                    // Someone took the claim over (we were too slow): leave it to them.
                    tracing::warn!(
                        notification = n.id,
                        channel,
                        "{e}; leaving it to its new owner"
                    );
                    return;
                }
            }
        }
        match channels::send(cfg, channel, n, r).await {
            Ok(()) => {
                count("delivered");
                // Recorded first, then reported: "delivered" in the log
                // means a redelivered event will not notify this channel again.
                match shared
                    .deliveries
                    .finish(key, rev, store::State::Delivered)
                    .await
                {
                    Ok(()) => tracing::info!(
                        notification = n.id,
                        kind = n.kind,
                        channel,
                        attempt,
                        "delivered"
                    ),
                    Err(e) => tracing::warn!(
                        notification = n.id,
                        channel,
                        "delivered, but not recorded: {e}"
                    ),
                }
                return;
            }
            Err(e) => {
                tracing::warn!(
                    notification = n.id,
                    channel,
                    attempt,
                    "delivery failed: {e}"
                );
                last = e;
            }
        }
        if attempt < r.attempts {
            let base = r.backoff.as_secs_f64() * 2f64.powi(attempt as i32 - 1);
            let pause = Duration::from_secs_f64((base * (0.5 + jitter())).min(60.0));
            tokio::time::sleep(pause).await;
        }
    }
    count("failed");
    let failure = Failure {
        notification: n.id.clone(),
        kind: n.kind.clone(),
        channel: channel.to_string(),
        gate_id: n.gate.as_ref().map(|g| g.id),
        run_id: n
            .gate
            .as_ref()
            .and_then(|g| g.run_id.clone())
            .or_else(|| n.run.as_ref().map(|r| r.id.clone())),
        attempts: r.attempts,
        error: last,
        at: rfc3339(now_ms()),
    };
    if let Err(e) = shared
        .deliveries
        .finish(key, rev, store::State::Failed)
        .await
    {
        tracing::warn!(notification = n.id, channel, "{e}");
    }
    tracing::error!(
        notification = n.id,
        channel,
        "giving up after {} attempts: {}",
        r.attempts,
        failure.error
    );
    let body = serde_json::to_vec(&failure).unwrap_or_default();
    match shared.js.publish(notify_failed(channel), body.into()).await {
        Ok(ack) => {
            if let Err(e) = ack.await {
                tracing::error!("recording a failed delivery failed: {e}");
            }
        }
        Err(e) => tracing::error!("recording a failed delivery failed: {e}"),
    }
}

/// Failed deliveries recorded by any notifier, oldest first.
pub async fn failures(client: &Client, channel: Option<&str>) -> anyhow::Result<Vec<Failure>> {
    let filter = match channel {
        Some(c) => notify_failed(c),
        None => NOTIFY_FAILED_ALL.to_string(),
    };
    let mut out = Vec::new();
    // No stream yet: no notifier ever ran, so nothing failed.
    client
        .read_stored(NOTIFY_STREAM, &filter, |_, msg| {
            if let Ok(f) = serde_json::from_slice::<Failure>(&msg.payload) {
                out.push(f);
            }
        })
        .await?;
    Ok(out)
}
