//! moira-gatekeeper: answers gate commands and appends gate events.
//!
//! Any number of gate-keepers can run; they share nothing but the stream.
//! Each subscribes to `moira.cmd.gate.*` in the queue group `gatekeeper`,
//! so each command is answered by one of them, and concurrent writes to one
//! gate are settled by the stream's per-subject sequence check.
//!
//! # Layout
//! - [`registry`]: the approvers registry (users and their roles).
//! - `append`: optimistic appends, atomic open-with-timeout batches.
//! - `handler`: read, decide, append, reply.

#![forbid(unsafe_code)]

mod append;
mod cache;
pub mod handler;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use moira_client::Client;
use moira_protocol::wire::{GATEKEEPER_QUEUE, GATE_COMMANDS_ALL, SERVICE_GATE_COMMANDS_ALL};

pub use moira_service::registry::{self, Registry};

/// Commands handled at once by one gate-keeper.
const MAX_IN_FLIGHT: usize = 1024;
/// How long a stopping gate-keeper waits for commands in flight.
const DRAIN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Config {
    pub nats_url: String,
    pub approvers: Option<PathBuf>,
    /// Replicas for a newly created stream (1 for one node, 3 on a cluster).
    pub replicas: usize,
    /// The house rules for opening gates (dev or strict).
    pub policy: moira_protocol::gate::Policy,
    /// Broker credentials and TLS.
    pub auth: moira_client::Auth,
    /// Whether commands must be signed.
    pub signatures: handler::Signatures,
    /// Follow the registry shared in the `MOIRA_REGISTRY` KV bucket
    /// instead of a file.
    pub approvers_kv: bool,
    /// The service key that signs prepared timeouts.
    pub key: Option<PathBuf>,
    /// Where to serve /metrics, /healthz and /readyz.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nats_url: "nats://127.0.0.1:4222".into(),
            approvers: None,
            replicas: 1,
            policy: moira_protocol::gate::Policy::dev(),
            auth: moira_client::Auth::default(),
            signatures: handler::Signatures::Off,
            approvers_kv: false,
            key: None,
            metrics_listen: None,
        }
    }
}

/// Runs until `shutdown` is cancelled, then finishes the commands in flight.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    start(config).await?.serve(shutdown).await
}

/// A gate-keeper that is connected and subscribed: commands sent from now
/// on are queued for it.
pub struct Gatekeeper {
    client: Client,
    signatures: handler::Signatures,
    policy: moira_protocol::gate::Policy,
    registry: moira_service::live::LiveRegistry,
    signer: Option<Arc<moira_client::signing::Signer>>,
    sub: async_nats::Subscriber,
    /// Commands from moira's services (`moira.svc.gate.*`).
    svc_sub: async_nats::Subscriber,
    /// The gate-keepers' shared consumer projecting gate events into the
    /// read model.
    index: async_nats::jetstream::consumer::Consumer<async_nats::jetstream::consumer::pull::Config>,
    metrics_listen: Option<std::net::SocketAddr>,
}

/// Connects, creates or verifies the streams, and subscribes.
pub async fn start(config: Config) -> anyhow::Result<Gatekeeper> {
    let signer = match &config.key {
        Some(path) => Some(Arc::new(moira_client::signing::Signer::from_file(path)?)),
        None if config.signatures == handler::Signatures::Require => anyhow::bail!(
            "with --signatures require the gate-keeper signs the timeouts it prepares: \
             give it --key FILE, a key the registry lists under [services.<name>]"
        ),
        None => None,
    };
    let client = Client::connect_with(&config.nats_url, "moira-gatekeeper", &config.auth).await?;
    // The stream first: a registry bucket this gate-keeper creates takes
    // the stream's replicas.
    moira_client::streams::ensure_gate_stream(&jetstream(&client), config.replicas).await?;
    let registry = moira_service::live::LiveRegistry::open(
        &client,
        config.approvers.as_deref(),
        config.approvers_kv,
    )
    .await?;
    let index =
        moira_service::index::start::<moira_service::index::Gates>(&client, config.replicas)
            .await?;
    let mut subs = moira_service::requests::subscribe(
        client.nats(),
        &[GATE_COMMANDS_ALL, SERVICE_GATE_COMMANDS_ALL],
        GATEKEEPER_QUEUE,
    )
    .await?;
    let svc_sub = subs.remove(1);
    let sub = subs.remove(0);
    let strict = config.policy.require_approvers;
    let info = client.nats().server_info();
    if strict && !(info.auth_required && info.tls_required) {
        tracing::warn!(
            auth_required = info.auth_required,
            tls_required = info.tls_required,
            "--strict on a broker that does not require both authentication and TLS: anyone who \
             can reach it may write events directly; use the locked-down configs in deploy/nats/locked"
        );
    }
    tracing::info!(url = %config.nats_url, approvers = registry.current().len(), strict, "moira-gatekeeper ready");
    Ok(Gatekeeper {
        client,
        signatures: config.signatures,
        policy: config.policy,
        registry,
        signer,
        sub,
        svc_sub,
        index,
        metrics_listen: config.metrics_listen,
    })
}

impl Gatekeeper {
    /// Answers commands until `shutdown` is cancelled, then drains.
    pub async fn serve(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Gatekeeper {
            client,
            signatures,
            policy,
            registry,
            signer,
            sub,
            svc_sub,
            index,
            metrics_listen,
        } = self;
        if let Some(addr) = metrics_listen {
            moira_service::ops::serve(
                addr,
                "moira-gatekeeper",
                client.nats().clone(),
                shutdown.clone(),
            )
            .await?;
            // Started means streams checked and subscribed.
            moira_service::index::watch_waiting(client.clone(), shutdown.clone());
        }
        let projector = tokio::spawn(
            moira_service::index::project::<moira_service::index::Gates>(
                client.clone(),
                index,
                shutdown.clone(),
            ),
        );
        let cache = Arc::new(cache::Cache::default());
        let handler = Arc::new(handler::Handler {
            client: client.clone(),
            policy,
            signatures,
            registry,
            signer,
            cache,
        });
        let limits = moira_service::requests::Limits {
            max_in_flight: MAX_IN_FLIGHT,
            drain: DRAIN,
        };
        moira_service::requests::serve(
            client.nats().clone(),
            vec![sub, svc_sub],
            limits,
            shutdown,
            move |msg| {
                let handler = handler.clone();
                async move {
                    handler
                        .handle(&msg.subject, msg.headers.as_ref(), &msg.payload)
                        .await
                }
            },
        )
        .await;
        let _ = projector.await;
        tracing::info!("moira-gatekeeper stopped");
        Ok(())
    }
}

fn jetstream(client: &Client) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(client.nats().clone())
}
