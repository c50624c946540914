//! moira-runner: executes workflow runs.
//!
//! Runners share one durable pull consumer on the `MOIRA_JOBS` work queue.
//! A job says "advance run X"; whichever runner takes it reads the run's
//! events, decides what is next ([`plan`]), records it, and runs ready steps
//! in parallel. While it works it keeps the job alive with progress acks; if
//! it dies, the job is delivered again to another runner, which finds the
//! steps that were cut off. A run whose remaining work waits on gates is
//! parked: the job is acked. Each runner also shares the `moira-resumer`
//! consumer on gate events: a decision (or push-back, or timeout) on a gate
//! that belongs to a run enqueues a job for that run, deduplicated by the
//! event's sequence.
//!
//! # Layout
//! - [`plan`]: the rules, without I/O;
//! - `job`: advancing one run for one job;
//! - `exec`: running one shell step;
//! - this file: streams, consumers, the job loop and the resumer.

#![forbid(unsafe_code)]

mod act;
mod call;
mod commands;
mod exec;
mod job;
pub mod plan;
mod steps;
pub mod supervise;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::AckKind;
use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use moira_client::Client;
use moira_protocol::event::{Decoded, GateEvent};
use moira_protocol::wire::{
    GATES_STREAM, GATE_EVENTS_ALL, JOBS_STREAM, RESUMER_CONSUMER, RUNNERS_CONSUMER, RUNNER_QUEUE,
    RUN_COMMANDS_ALL,
};
use moira_protocol::Envelope;
use moira_service::feed::DurableFeed;
use moira_service::live::LiveRegistry;

pub use steps::RUNNER_ACTOR;

#[derive(Debug, Clone)]
pub struct Config {
    pub nats_url: String,
    /// Runs advanced at once by this runner.
    pub concurrency: usize,
    /// Where steps run (one folder per run and step).
    pub work_dir: PathBuf,
    /// How long a job may go without a progress ack before another runner
    /// takes it over (set when the shared consumer is first created).
    pub ack_wait: Duration,
    pub replicas: usize,
    /// Names of the runner's environment variables that steps also get
    /// (besides [`exec::BASE_ENV`]).
    pub pass_env: Vec<String>,
    /// Keep each run's folder after the run ends (default: removed).
    pub keep_work_files: bool,
    /// Broker credentials and TLS.
    pub auth: moira_client::Auth,
    /// The approvers registry, for who may cancel a run (roles, admins)
    /// and the keys decisions are checked against.
    pub approvers: Option<PathBuf>,
    /// `Require`: a run moves on a gate decision only if the gate's trail
    /// verifies (chain, signatures, keys, policy).
    pub signatures: moira_service::verify::Signatures,
    /// Follow the registry shared in the `MOIRA_REGISTRY` KV bucket.
    pub approvers_kv: bool,
    /// The SSH key this runner signs its gate commands with (listed under
    /// `[services.<name>]` in the registry).
    pub key: Option<PathBuf>,
    /// Where to serve /metrics, /healthz and /readyz.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nats_url: "nats://127.0.0.1:4222".into(),
            concurrency: 4,
            work_dir: default_work_dir(),
            ack_wait: Duration::from_secs(30),
            replicas: 1,
            pass_env: Vec::new(),
            keep_work_files: false,
            auth: moira_client::Auth::default(),
            approvers: None,
            signatures: moira_service::verify::Signatures::Off,
            approvers_kv: false,
            key: None,
            metrics_listen: None,
        }
    }
}

/// `$STATE_DIRECTORY/work` under systemd, otherwise a folder of this
/// user's own under the temporary folder (`moira-runner-<uid>`).
pub fn default_work_dir() -> PathBuf {
    if let Some(state) = std::env::var_os("STATE_DIRECTORY") {
        return PathBuf::from(state).join("work");
    }
    let uid = current_uid().map(|u| u.to_string()).unwrap_or_default();
    std::env::temp_dir().join(format!("moira-runner-{uid}"))
}

fn current_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// Makes sure the work folder is this user's alone: created 0700 if
/// missing; refused if it is a symlink or someone else's; narrowed to
/// 0700 if it is ours but open to others.
pub async fn check_work_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    exec::private_dir(dir)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the work folder {}: {e}", dir.display()))?;
    let meta = tokio::fs::symlink_metadata(dir).await?;
    if !meta.file_type().is_dir() {
        anyhow::bail!(
            "the work folder {} is not a folder (a symlink?); remove it or choose another with --work-dir",
            dir.display()
        );
    }
    if let Some(uid) = current_uid() {
        if meta.uid() != uid {
            anyhow::bail!(
                "the work folder {} belongs to another user (uid {}); choose another with --work-dir",
                dir.display(),
                meta.uid()
            );
        }
    }
    if meta.mode() & 0o077 != 0 {
        tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).await?;
    }
    Ok(())
}

/// What every job task of this runner shares.
pub(crate) struct Shared {
    pub client: Client,
    pub name: String,
    pub work_dir: PathBuf,
    pub pass_env: Arc<Vec<String>>,
    pub keep_work_files: bool,
    /// Set when decisions must verify before a run acts on them.
    pub verify: Option<LiveRegistry>,
}

pub struct Runner {
    shared: Arc<Shared>,
    registry: LiveRegistry,
    signatures: moira_service::verify::Signatures,
    commands: async_nats::Subscriber,
    jobs: async_nats::jetstream::consumer::Consumer<pull::Config>,
    resumer: async_nats::jetstream::consumer::Consumer<pull::Config>,
    /// The runners' shared consumer projecting run events into the read model.
    index: async_nats::jetstream::consumer::Consumer<pull::Config>,
    concurrency: usize,
    ack_wait: Duration,
    metrics_listen: Option<std::net::SocketAddr>,
}

/// Connects, creates or checks the streams and the shared consumers.
pub async fn start(config: Config) -> anyhow::Result<Runner> {
    let client = Client::connect_with(&config.nats_url, "moira-runner", &config.auth).await?;
    let client = match &config.key {
        Some(path) => client.with_signer(moira_client::signing::Signer::from_file(path)?),
        None if config.signatures == moira_service::verify::Signatures::Require => {
            anyhow::bail!(
                "with --signatures require the runner signs its gate opens, cancels and \
                 auto-approvals: give it --key FILE, a key the registry lists under \
                 [services.<name>]"
            )
        }
        None => client,
    };
    let js = async_nats::jetstream::new(client.nats().clone());
    moira_client::streams::ensure_gate_stream(&js, config.replicas).await?;
    moira_client::streams::ensure_run_streams(&js, config.replicas).await?;
    let (jobs, ack_wait) = jobs_consumer(&js, config.ack_wait).await?;
    let resumer =
        moira_service::feed::shared_consumer(&js, GATES_STREAM, RESUMER_CONSUMER, GATE_EVENTS_ALL)
            .await?;
    let index =
        moira_service::index::start::<moira_service::index::Runs>(&client, config.replicas).await?;
    check_work_dir(&config.work_dir).await?;
    let registry =
        LiveRegistry::open(&client, config.approvers.as_deref(), config.approvers_kv).await?;
    let commands =
        moira_service::requests::subscribe(client.nats(), &[RUN_COMMANDS_ALL], RUNNER_QUEUE)
            .await?
            .remove(0);
    let name = format!("{}-{}", hostname(), &uuid::Uuid::new_v4().to_string()[..8]);
    tracing::info!(url = %config.nats_url, runner = name, concurrency = config.concurrency, "moira-runner ready");
    Ok(Runner {
        shared: Arc::new(Shared {
            client,
            name,
            work_dir: config.work_dir,
            pass_env: Arc::new(config.pass_env),
            keep_work_files: config.keep_work_files,
            verify: (config.signatures == moira_service::verify::Signatures::Require)
                .then(|| registry.clone()),
        }),
        registry,
        signatures: config.signatures,
        commands,
        jobs,
        resumer,
        index,
        concurrency: config.concurrency.max(1),
        ack_wait,
        metrics_listen: config.metrics_listen,
    })
}

/// The runners' shared job consumer, with the ack wait this runner was
/// started with. The consumer is shared, so its setting wins over any one
/// runner's flag: a longer `--ack-wait` than the consumer's is applied to
/// it (safe for every runner: a longer wait never cuts a healthy step
/// off); a shorter one is refused, since runners still heartbeating at the
/// old pace would see their healthy steps taken away. Returns the consumer
/// and the ack wait in force.
async fn jobs_consumer(
    js: &async_nats::jetstream::Context,
    ack_wait: Duration,
) -> anyhow::Result<(
    async_nats::jetstream::consumer::Consumer<pull::Config>,
    Duration,
)> {
    let want = moira_protocol::wire::streams::runners_consumer_config(ack_wait);
    let (stream, consumer) = moira_client::streams::patiently(
        &format!("creating the consumer {RUNNERS_CONSUMER}"),
        || async {
            let stream = js.get_stream(JOBS_STREAM).await?;
            let consumer = stream
                .get_or_create_consumer(RUNNERS_CONSUMER, want.clone())
                .await?;
            anyhow::Ok((stream, consumer))
        },
    )
    .await?;
    let have = consumer.cached_info().config.ack_wait;
    if have == ack_wait {
        return Ok((consumer, ack_wait));
    }
    if have > ack_wait {
        anyhow::bail!(
            "the shared job consumer {RUNNERS_CONSUMER} has an ack wait of {}, longer than this \
             runner's --ack-wait {}: start every runner with --ack-wait {} (to shorten it, stop \
             every runner and delete the consumer: `nats consumer rm {JOBS_STREAM} {RUNNERS_CONSUMER}`)",
            moira_protocol::time::short_duration(have),
            moira_protocol::time::short_duration(ack_wait),
            moira_protocol::time::short_duration(have),
        );
    }
    tracing::info!(
        from = %moira_protocol::time::short_duration(have),
        to = %moira_protocol::time::short_duration(ack_wait),
        "raising the shared job consumer's ack wait"
    );
    let consumer = moira_client::streams::patiently("raising the job consumer's ack wait", || {
        stream.update_consumer(want.clone())
    })
    .await?;
    Ok((consumer, ack_wait))
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "runner".into())
}

/// Runs until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    start(config).await?.serve(shutdown).await
}

impl Runner {
    pub async fn serve(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        if let Some(addr) = self.metrics_listen {
            let nats = self.shared.client.nats().clone();
            moira_service::ops::serve(addr, "moira-runner", nats, shutdown.clone()).await?;
            moira_service::ops::watch_pending(
                RUNNERS_CONSUMER,
                self.jobs.clone(),
                shutdown.clone(),
            );
            moira_service::ops::watch_pending(
                RESUMER_CONSUMER,
                self.resumer.clone(),
                shutdown.clone(),
            );
        }
        let index = tokio::spawn(moira_service::index::project::<moira_service::index::Runs>(
            self.shared.client.clone(),
            self.index,
            shutdown.clone(),
        ));
        let resumer = tokio::spawn(resume_loop(
            self.shared.client.clone(),
            self.resumer,
            shutdown.clone(),
        ));
        let commands = tokio::spawn(command_loop(
            self.shared.client.clone(),
            self.registry.clone(),
            self.signatures,
            self.commands,
            shutdown.clone(),
        ));
        let slots = Arc::new(Semaphore::new(self.concurrency));
        // Progress acks four times per ack wait; a runner that has not heard
        // the server for half of it stops the job's steps, before the job
        // can be delivered to another runner.
        let heartbeat = (self.ack_wait / 4).max(Duration::from_millis(200));
        let cut_off_after = self.ack_wait / 2;
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = slots.clone().acquire_owned() => p?,
            };
            let asked = tokio::time::Instant::now();
            let batch = tokio::select! {
                _ = shutdown.cancelled() => break,
                b = self.jobs.fetch().max_messages(1).expires(Duration::from_secs(5)).messages() => b,
            };
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("fetching jobs failed: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // The fetch is a long poll: stop waiting on it when asked to.
            let msg = tokio::select! {
                _ = shutdown.cancelled() => break,
                m = batch.next() => m,
            };
            let Some(msg) = msg else {
                // A long poll that ended at once returned no job for a
                // reason of its own: do not ask again straight away.
                if asked.elapsed() < Duration::from_millis(100) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                continue;
            };
            let msg = match msg {
                Ok(m) => m,
                // The stream has no leader (a cluster without quorum answers
                // every fetch at once with 503): wait before asking again,
                // or this loop spins and floods the log.
                Err(e) => {
                    tracing::warn!("receiving a job failed: {e}; trying again in 1s");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    continue;
                }
            };
            // The run id names a folder on this machine: only a plain token.
            let Some(run_id) = moira_protocol::wire::run_id_from_job(&msg.subject)
                .filter(|r| moira_protocol::ids::is_subject_token(r))
                .map(str::to_string)
            else {
                let _ = msg.ack().await;
                continue;
            };
            let (job_seq, delivered) = msg
                .info()
                .map(|i| (i.stream_sequence, i.delivered))
                .unwrap_or((0, 1));
            let shared = self.shared.clone();
            tokio::spawn(async move {
                let nats = shared.client.nats().clone();
                let work = job::advance(shared, run_id.clone(), job_seq, delivered > 1);
                tokio::pin!(work);
                let mut beat = tokio::time::interval(heartbeat);
                beat.tick().await;
                let mut last_heard = tokio::time::Instant::now();
                let result = loop {
                    tokio::select! {
                        r = &mut work => break Some(r),
                        _ = beat.tick() => {
                            if let Err(e) = msg.ack_with(AckKind::Progress).await {
                                tracing::warn!(run_id, "progress ack failed: {e}");
                            }
                            // A flush is answered by the server: proof that
                            // it got the progress ack.
                            match tokio::time::timeout(heartbeat / 2, nats.flush()).await {
                                Ok(Ok(())) => last_heard = tokio::time::Instant::now(),
                                _ if last_heard.elapsed() >= cut_off_after => {
                                    tracing::error!(
                                        run_id,
                                        silent = ?last_heard.elapsed(),
                                        "cut off from the broker: stopping this run's steps before \
                                         another runner may take the job"
                                    );
                                    break None;
                                }
                                _ => {}
                            }
                        }
                    }
                };
                // Cut off: dropping the work killed its steps; the job is
                // delivered again once its ack wait passes.
                let Some(result) = result else {
                    drop(permit);
                    return;
                };
                match result {
                    Ok(()) => {
                        if let Err(e) = msg.double_ack().await {
                            tracing::warn!(run_id, "acking the job failed: {e}");
                        }
                    }
                    Err(e) => {
                        // Leave it to be delivered again after a pause.
                        tracing::error!(run_id, "advancing the run failed: {e:#}");
                        let _ = msg
                            .ack_with(AckKind::Nak(Some(Duration::from_secs(2))))
                            .await;
                    }
                }
                drop(permit);
            });
        }
        resumer.abort();
        commands.abort();
        let _ = index.await;
        // Jobs in flight are not drained: their steps would be cut off by a
        // long wait anyway; another runner takes them over after ack_wait.
        tracing::info!("moira-runner stopped");
        Ok(())
    }
}

/// How many run commands one runner answers at once.
const MAX_COMMANDS_IN_FLIGHT: usize = 64;

/// Answers run commands (submit, cancel) until `shutdown`.
async fn command_loop(
    client: Client,
    registry: LiveRegistry,
    signatures: moira_service::verify::Signatures,
    sub: async_nats::Subscriber,
    shutdown: CancellationToken,
) {
    let limits = moira_service::requests::Limits {
        max_in_flight: MAX_COMMANDS_IN_FLIGHT,
        drain: Duration::from_secs(5),
    };
    let nats = client.nats().clone();
    moira_service::requests::serve(nats, vec![sub], limits, shutdown, move |msg| {
        let (client, registry) = (client.clone(), registry.clone());
        async move {
            let registry = registry.current();
            commands::handle(&client, &registry, signatures, &msg.subject, &msg.payload).await
        }
    })
    .await;
}

/// Turns decisions on runs' gates into jobs for those runs.
async fn resume_loop(
    client: Client,
    consumer: async_nats::jetstream::consumer::Consumer<pull::Config>,
    shutdown: CancellationToken,
) {
    let mut feed = DurableFeed::new(RESUMER_CONSUMER, consumer);
    while let Some(msg) = feed.next(&shutdown).await {
        let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
        if let Ok(Decoded::Event(env)) = Envelope::decode(&msg.payload) {
            if let Some(run_id) = relevant(&env) {
                if let Some(tp) = moira_client::trace::of(msg.headers.as_ref()) {
                    tracing::info!(run_id, gate = %env.gate_id, traceparent = tp.as_str(), "resuming on an event with a trace context");
                }
                match opened_by_run(&client, &run_id, &env).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(
                            run_id = run_id.chars().take(128).collect::<String>(),
                            gate = %env.gate_id,
                            "a gate event names a run that did not open the gate; ignored"
                        );
                        let _ = msg.ack().await;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(run_id, "reading the run failed ({e}); will retry");
                        let _ = msg
                            .ack_with(AckKind::Nak(Some(Duration::from_millis(500))))
                            .await;
                        continue;
                    }
                }
                let dedupe = format!("gate:{}:{seq}", env.gate_id);
                if let Err(e) = client.enqueue_run(&run_id, &dedupe).await {
                    tracing::warn!(run_id, "enqueueing a resume job failed ({e}); will retry");
                    let _ = msg
                        .ack_with(AckKind::Nak(Some(Duration::from_millis(500))))
                        .await;
                    continue;
                }
                tracing::debug!(run_id, gate = %env.gate_id, "resume job enqueued");
                let since = moira_protocol::time::now_ms().saturating_sub(env.at);
                moira_service::ops::metrics()
                    .resume_seconds
                    .observe(since as f64 / 1000.0);
            }
        }
        let _ = msg.ack().await;
    }
}

/// Whether the run records the gate as one of its steps' gates. Anyone
/// who may open gates can name a run in one; only the run's own gates may
/// wake it. (A gate decided before its step recorded it is picked up by
/// the job that opened it, which checks the gate right after recording.)
async fn opened_by_run(
    client: &Client,
    run_id: &str,
    env: &Envelope,
) -> Result<bool, moira_client::ClientError> {
    if !moira_protocol::ids::is_subject_token(run_id) {
        return Ok(false);
    }
    Ok(client.read_run_fresh(run_id).await?.is_some_and(|rec| {
        rec.state
            .steps
            .values()
            .any(|s| s.gate_id == Some(env.gate_id))
    }))
}

fn relevant(env: &Envelope) -> Option<String> {
    let matters = env.event.is_terminal() || matches!(env.event, GateEvent::GatePushedBack { .. });
    env.run_id.clone().filter(|_| matters)
}
