//! A typed async client for moira gates, over async-nats.
//!
//! ```no_run
//! # async fn demo() -> Result<(), moira_client::ClientError> {
//! use moira_client::{Client, OpenGate};
//! let client = Client::connect("nats://127.0.0.1:4222").await?;
//! let gate = client.open(OpenGate { actor: "ci".into(), message: "Deploy?".into(), ..Default::default() }).await?;
//! let decided = client.wait(gate.id, None).await?;
//! println!("{:?}", decided.status);
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`Client`] (this file): connecting, version check, commands.
//! - `store`: reading gates from the stream (one gate, a listing, a feed).
//! - `waiter`: waiting on any number of gates with one live subscription.

#![forbid(unsafe_code)]

pub mod append;
pub mod index;
mod ordered;
pub use ordered::{OrderedFeed, OrderedMessages};
mod reads;
pub mod runs;
pub mod signing;
mod store;
pub mod streams;
pub mod trace;
mod waiter;

use std::sync::Arc;
use std::time::Duration;

use async_nats::{ConnectOptions, Event};
use bytes::Bytes;
use tokio::sync::{watch, OnceCell};

pub use moira_protocol as protocol;
pub use moira_protocol::command::{
    ApproveGate, CancelGate, DenyGate, Format, OpenGate, PushBackGate,
};
pub use moira_protocol::view::GateSummary;
pub use moira_protocol::{
    Command, CommandError, ErrorCode, GateId, GateState, GateStatus, GateView,
};
pub use runs::{LogLine, RunRecord, RunView, StepView};
pub use store::{fold_stored, GateRecord, ListFilter, StoredEvent};
pub use waiter::{Follower, PER_GATE_MAX};

use moira_protocol::command::Reply;
use moira_protocol::wire::{CONTENT_TYPE_MSGPACK, HDR_CONTENT_TYPE};
use moira_protocol::CommandId;

/// The oldest nats-server moira works with.
pub const MIN_SERVER_VERSION: (u32, u32, u32) = (2, 14, 0);
/// How long a command waits for a gate-keeper's reply before retrying.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
const COMMAND_ATTEMPTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach NATS at {url}: {reason}; start a broker (`moira dev`) or pass --nats-url / MOIRA_NATS_URL")]
    Connect { url: String, reason: String },
    #[error("the NATS server at {url} is version {found}; moira needs nats-server 2.14 or later (`./just tools` installs 2.15.1)")]
    ServerTooOld { url: String, found: String },
    #[error("no gate-keeper answered on {subject}: {reason}; is moira-gatekeeper (or `moira dev`) running?")]
    NoGatekeeper { subject: String, reason: String },
    #[error(
        "no runner answered on {subject}: {reason}; is moira-runner (or `moira dev`) running?"
    )]
    NoRunner { subject: String, reason: String },
    #[error("{0}")]
    Rejected(CommandError),
    #[error("no gate has id {0}")]
    NotFound(GateId),
    #[error("the gate streams are missing; start a gate-keeper once (it creates them), or run `moira dev`")]
    NoStream,
    #[error("timed out after {0:?} waiting for the gate")]
    WaitTimedOut(Duration),
    #[error("NATS error: {0}")]
    Nats(String),
    #[error("no run has id {0}")]
    RunNotFound(String),
    #[error("the run streams are missing; start a runner (moira-runner or `moira dev`) once, it creates them")]
    NoRunStreams,
    #[error("{0}")]
    Invalid(String),
}

impl ClientError {
    /// The error code when a gate-keeper refused the command.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Rejected(e) => Some(e.code),
            _ => None,
        }
    }
}

pub(crate) fn nats_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Nats(e.to_string())
}

/// A connection to moira. Cheap to clone; clones share one connection and
/// one live subscription for waiting.
#[derive(Clone)]
pub struct Client {
    pub(crate) nats: async_nats::Client,
    pub(crate) js: async_nats::jetstream::Context,
    pub(crate) inner: Arc<Inner>,
    /// Signs every command this client sends that is not signed already.
    pub(crate) signer: Option<Arc<signing::Signer>>,
}

pub(crate) struct Inner {
    pub(crate) hub: OnceCell<Arc<waiter::Hub>>,
    /// Shared with the hub's reader handle: one reply inbox per connection.
    pub(crate) reads: Arc<OnceCell<Arc<reads::ReadMux>>>,
    /// Bumped on every (re)connect, so waiters re-check their gates.
    /// Counts the times followed gates must be read again: each
    /// (re)connect, and each time the client dropped messages for a slow
    /// subscription (the live feed's messages are never redelivered).
    pub(crate) connects: watch::Receiver<u64>,
    /// Gates followed with a subscription each before the waiter takes the
    /// whole live feed; read when the first gate is followed.
    pub(crate) per_gate_max: std::sync::atomic::AtomicUsize,
}

fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

/// How to authenticate to the broker and secure the connection. Every
/// field is optional; the default is a plain, anonymous connection (the
/// dev setup).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Auth {
    /// A `.creds` file (user JWT and NKey seed).
    pub creds: Option<std::path::PathBuf>,
    /// A file holding an NKey seed (`SU…`).
    pub nkey_seed: Option<std::path::PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// CA certificate(s) to trust, PEM; implies TLS.
    pub tls_ca: Option<std::path::PathBuf>,
    /// Client certificate and key, PEM, for mutual TLS.
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    /// Refuse a connection that is not TLS.
    pub require_tls: bool,
}

impl Auth {
    /// Applies these settings to connect options.
    async fn apply(&self, mut opts: ConnectOptions) -> Result<ConnectOptions, ClientError> {
        let bad = |what: &str, path: &std::path::Path, e: std::io::Error| {
            ClientError::Invalid(format!("cannot read the {what} {}: {e}", path.display()))
        };
        if let Some(path) = &self.creds {
            opts = opts
                .credentials_file(path)
                .await
                .map_err(|e| bad("credentials file", path, e))?;
        }
        if let Some(path) = &self.nkey_seed {
            let seed = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| bad("NKey seed file", path, e))?;
            opts = opts.nkey(seed.trim().to_string());
        }
        match (&self.user, &self.password) {
            (Some(u), Some(p)) => opts = opts.user_and_password(u.clone(), p.clone()),
            (None, None) => {}
            _ => {
                return Err(ClientError::Invalid(
                    "a NATS user needs a password and a password needs a user".into(),
                ))
            }
        }
        if let Some(t) = &self.token {
            opts = opts.token(t.clone());
        }
        if let Some(ca) = &self.tls_ca {
            opts = opts.add_root_certificates(ca.clone()).require_tls(true);
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => {
                opts = opts
                    .add_client_certificate(c.clone(), k.clone())
                    .require_tls(true)
            }
            (None, None) => {}
            _ => {
                return Err(ClientError::Invalid(
                    "a TLS client certificate needs its key, and a key its certificate".into(),
                ))
            }
        }
        if self.require_tls {
            opts = opts.require_tls(true);
        }
        Ok(opts)
    }
}

/// Messages each subscription buffers (async-nats' default).
const SUBSCRIPTION_CAPACITY: usize = 65_536;

impl Client {
    /// How many times this client has had to read its followed gates again
    /// (reconnects and slow-consumer drops).
    pub fn resyncs(&self) -> u64 {
        *self.inner.connects.borrow()
    }

    /// Connects and checks the server version.
    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        Self::connect_named(url, "moira").await
    }

    /// Connects with a connection name shown in the server's monitoring.
    pub async fn connect_named(url: &str, name: &str) -> Result<Client, ClientError> {
        Self::connect_with(url, name, &Auth::default()).await
    }

    /// Connects with credentials and TLS settings.
    pub async fn connect_with(url: &str, name: &str, auth: &Auth) -> Result<Client, ClientError> {
        Self::connect_buffered(url, name, auth, SUBSCRIPTION_CAPACITY).await
    }

    /// [`Client::connect_with`], buffering at most `capacity` messages per
    /// subscription before the client drops what the server sends (a slow
    /// consumer, after which followed gates are read again).
    pub async fn connect_buffered(
        url: &str,
        name: &str,
        auth: &Auth,
        capacity: usize,
    ) -> Result<Client, ClientError> {
        let (tx, rx) = watch::channel(0u64);
        let opts = ConnectOptions::new()
            .name(name)
            .subscription_capacity(capacity.max(1))
            .connection_timeout(Duration::from_secs(3))
            .max_reconnects(None)
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    match event {
                        Event::Connected => {
                            tx.send_modify(|n| *n += 1);
                        }
                        Event::Disconnected => {
                            tracing::warn!("disconnected from NATS; reconnecting")
                        }
                        // Messages were dropped: whatever was followed may
                        // have missed its decision.
                        Event::SlowConsumer(sid) => {
                            tracing::warn!(sid, "a subscription fell behind and lost messages; re-reading every followed gate");
                            tx.send_modify(|n| *n += 1);
                        }
                        other => tracing::debug!("nats: {other}"),
                    }
                }
            });
        let opts = auth.apply(opts).await?;
        // Accept "url1,url2,…" as well as one URL.
        let servers: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        let nats = opts
            .connect(servers)
            .await
            .map_err(|e| ClientError::Connect {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        let version = nats.server_info().version;
        if parse_version(&version).is_none_or(|v| v < MIN_SERVER_VERSION) {
            return Err(ClientError::ServerTooOld {
                url: url.to_string(),
                found: version,
            });
        }
        let js = async_nats::jetstream::new(nats.clone());
        Ok(Client {
            nats,
            js,
            inner: Arc::new(Inner {
                hub: OnceCell::new(),
                reads: Arc::default(),
                connects: rx,
                per_gate_max: waiter::PER_GATE_MAX.into(),
            }),
            signer: None,
        })
    }

    /// The key this client signs with, if any.
    pub fn signer(&self) -> Option<&signing::Signer> {
        self.signer.as_deref()
    }

    /// This client, signing every command it sends with `signer`.
    pub fn with_signer(mut self, signer: signing::Signer) -> Client {
        self.signer = Some(Arc::new(signer));
        self
    }

    /// The exact statement bytes `cmd` signs when sent with command id `id`
    /// at `at` (ms): what an outside tool passes to `ssh-keygen -Y sign -n
    /// moira`. A decision reads the gate for its digest and iteration.
    pub async fn statement(
        &self,
        cmd: &Command,
        id: CommandId,
        at: u64,
    ) -> Result<Vec<u8>, ClientError> {
        let gate_id = cmd
            .gate_id()
            .ok_or_else(|| ClientError::Invalid("a signed open names its gate id (--id)".into()))?;
        let state = match cmd {
            Command::Open(_) => None,
            _ => Some(
                self.read_gate(gate_id)
                    .await?
                    .ok_or(ClientError::NotFound(gate_id))?
                    .state,
            ),
        };
        let about = moira_protocol::statement::About::of(cmd, gate_id, state.as_ref())
            .ok_or(ClientError::NotFound(gate_id))?;
        Ok(moira_protocol::statement::statement(cmd, &about, id, at))
    }

    /// The underlying NATS connection.
    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    /// Sends a command and returns the gate as stored after it.
    ///
    /// The command gets an id if it has none; on a timeout it is sent again
    /// with the same id, which the gate-keeper applies at most once.
    pub async fn send(&self, cmd: Command) -> Result<GateView, ClientError> {
        let subject = cmd.verb().subject();
        self.send_on(cmd, subject).await
    }

    /// Sends a command on the services' subject (`moira.svc.gate.<verb>`),
    /// which the locked-down broker opens only to runners. The gate-keeper
    /// then lets it open gates for runs and cancel them.
    pub async fn send_as_service(&self, cmd: Command) -> Result<GateView, ClientError> {
        let subject = cmd.verb().service_subject();
        self.send_on(cmd, subject).await
    }

    async fn send_on(&self, mut cmd: Command, subject: String) -> Result<GateView, ClientError> {
        let id = cmd.id().unwrap_or_default();
        set_id(&mut cmd, id);
        if let (Some(signer), None) = (&self.signer, cmd.signature()) {
            // A signed open states its whole policy, so what is signed does
            // not depend on the gate-keeper's defaults.
            if let Command::Open(c) = &mut cmd {
                c.allow_self_approval.get_or_insert(false);
            }
            let at = moira_protocol::time::now_ms();
            let bytes = self.statement(&cmd, id, at).await?;
            let signature = signer
                .sign(&bytes)
                .map_err(|e| ClientError::Invalid(e.to_string()))?;
            cmd.set_signature(signature, at);
        }
        let body = Bytes::from(cmd.encode(Format::MsgPack));
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(HDR_CONTENT_TYPE, CONTENT_TYPE_MSGPACK);
        trace::add(&mut headers);
        let mut last = String::new();
        // No responders can be a moment's gap rather than no gate-keeper: one
        // restarting, or one that just started on another node of a cluster,
        // whose interest has not reached this node yet. Nothing was
        // delivered, so asking again is safe.
        let mut gaps = [50u64, 100, 200, 400, 800].into_iter();
        let mut attempts = 0;
        while attempts < COMMAND_ATTEMPTS {
            attempts += 1;
            let req = async_nats::Request::new()
                .payload(body.clone())
                .headers(headers.clone())
                .timeout(Some(COMMAND_TIMEOUT));
            match self.nats.send_request(subject.clone(), req).await {
                Ok(msg) => {
                    let reply: Reply = Format::MsgPack.decode(&msg.payload).map_err(|e| {
                        ClientError::Nats(format!("undecodable reply: {}", e.message))
                    })?;
                    return reply
                        .into_result()
                        .map_err(|e| match (e.code, cmd.gate_id()) {
                            (ErrorCode::NotFound, Some(g)) => ClientError::NotFound(g),
                            _ => ClientError::Rejected(e),
                        });
                }
                Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                    let Some(pause) = gaps.next() else {
                        return Err(ClientError::NoGatekeeper {
                            subject,
                            reason: "no responders".into(),
                        });
                    };
                    attempts -= 1;
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                }
                Err(e) if e.kind() == async_nats::RequestErrorKind::TimedOut => {
                    last = format!("no reply within {COMMAND_TIMEOUT:?}");
                }
                Err(e) => return Err(nats_err(e)),
            }
        }
        Err(ClientError::NoGatekeeper {
            subject,
            reason: last,
        })
    }

    /// Opens a gate. A gate that names a run is a runner's business, so it
    /// goes on the services' subject: on the locked-down broker only
    /// runner credentials may publish there.
    pub async fn open(&self, c: OpenGate) -> Result<GateView, ClientError> {
        if c.run_id.is_some() {
            self.send_as_service(Command::Open(c)).await
        } else {
            self.send(Command::Open(c)).await
        }
    }
    pub async fn approve(&self, c: ApproveGate) -> Result<GateView, ClientError> {
        self.send(Command::Approve(c)).await
    }
    pub async fn deny(&self, c: DenyGate) -> Result<GateView, ClientError> {
        self.send(Command::Deny(c)).await
    }
    pub async fn push_back(&self, c: PushBackGate) -> Result<GateView, ClientError> {
        self.send(Command::PushBack(c)).await
    }
    pub async fn cancel(&self, c: CancelGate) -> Result<GateView, ClientError> {
        self.send(Command::Cancel(c)).await
    }

    /// The gate as stored now.
    pub async fn show(&self, id: GateId) -> Result<GateView, ClientError> {
        match self.read_gate(id).await? {
            Some(rec) => Ok(GateView::from(&rec.state)),
            None => Err(ClientError::NotFound(id)),
        }
    }

    /// [`Client::show`], at least as new as the stream leader: for a read
    /// whose result drives an action (a runner checking a gate).
    pub async fn show_fresh(&self, id: GateId) -> Result<GateView, ClientError> {
        match self.read_gate_fresh(id).await? {
            Some(rec) => Ok(GateView::from(&rec.state)),
            None => Err(ClientError::NotFound(id)),
        }
    }

    /// Whether gate `id`, as the stream leader holds it now, is approved,
    /// in force and covers `digest` (`moira gate check`). The outer error
    /// is a failed read or an unknown gate; the inner one says why the gate
    /// does not cover the digest.
    pub async fn check_gate(
        &self,
        id: GateId,
        digest: &str,
    ) -> Result<Result<GateView, moira_protocol::binding::NotCovered>, ClientError> {
        let rec = self
            .read_gate_fresh(id)
            .await?
            .ok_or(ClientError::NotFound(id))?;
        let now = moira_protocol::time::now_ms();
        Ok(moira_protocol::binding::check(&rec.state, digest, now)
            .map(|()| GateView::from(&rec.state)))
    }

    /// Waits until the gate is decided (approved, denied, timed out or
    /// cancelled) and returns it. A push-back keeps waiting.
    pub async fn wait(
        &self,
        id: GateId,
        timeout: Option<Duration>,
    ) -> Result<GateView, ClientError> {
        let mut f = self.follow(id).await?;
        let fut = f.wait_until(|s| s.status.is_terminal());
        let state = match timeout {
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .map_err(|_| ClientError::WaitTimedOut(t))??,
            None => fut.await?,
        };
        Ok(GateView::from(&*state))
    }

    /// Sets how many gates this client follows with a subscription each
    /// before it takes the whole live feed instead (default
    /// [`PER_GATE_MAX`]). Takes effect if set before the first
    /// gate is followed.
    pub fn set_per_gate_limit(&self, max: usize) {
        self.inner
            .per_gate_max
            .store(max, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether this client's waiter has taken the whole live feed (it
    /// follows more gates than the per-gate limit).
    pub fn takes_whole_live_feed(&self) -> bool {
        self.inner.hub.get().is_some_and(|h| h.takes_whole_feed())
    }

    /// Follows one gate's state as it changes, with no polling.
    pub async fn follow(&self, id: GateId) -> Result<Follower, ClientError> {
        self.hub().await?.follow(id).await
    }

    /// Opens a gate and follows it. The follower is registered before the
    /// open is sent, so the gate's events all arrive on the live feed and
    /// no catch-up read is needed (unless the gate already existed).
    pub async fn open_and_follow(
        &self,
        mut c: OpenGate,
    ) -> Result<(GateView, Follower), ClientError> {
        let id = *c.gate_id.get_or_insert_with(GateId::new);
        let hub = self.hub().await?;
        let follower = hub.clone().register(id).await?;
        let view = self.open(c).await?;
        hub.ensure_state(id).await?;
        Ok((view, follower))
    }

    async fn hub(&self) -> Result<Arc<waiter::Hub>, ClientError> {
        Ok(self
            .inner
            .hub
            .get_or_try_init(|| waiter::Hub::start(self.clone()))
            .await?
            .clone())
    }
}

fn set_id(cmd: &mut Command, id: CommandId) {
    match cmd {
        Command::Open(c) => {
            c.id = Some(id);
            // New gates get time-ordered (v7) ids; a retry keeps this one.
            c.gate_id.get_or_insert_with(GateId::new);
        }
        Command::Approve(c) => c.id = Some(id),
        Command::Deny(c) => c.id = Some(id),
        Command::PushBack(c) => c.id = Some(id),
        Command::Cancel(c) => c.id = Some(id),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions() {
        assert_eq!(super::parse_version("2.15.1"), Some((2, 15, 1)));
        assert_eq!(super::parse_version("2.12.0-RC.1"), Some((2, 12, 0)));
        assert_eq!(super::parse_version("junk"), None);
    }
}
