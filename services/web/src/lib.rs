//! moira-web: moira's HTTP API.
//!
//! It keeps no state of its own: reads come from the streams the way the
//! CLI reads them, and decisions go to the gate-keepers' command subjects
//! like any client's, so every policy (approvers, roles, N of M,
//! self-approval, required inputs, signatures) is the gate-keeper's. Any
//! number of copies can run behind a load balancer.
//!
//! Every decision it makes for someone says how they were authenticated
//! (`via`), and with `--key` it is signed with moira-web's own key: the
//! gate-keeper then checks the registry lets this service attest for that
//! user that way (see `moira_service::Registry::check_attested`).
//!
//! Who decides is never taken from the request body. For the API,
//! [`AuthMode`] says where it comes from: nowhere (`none`, reads only), a
//! header set by an authenticating reverse proxy whose address is trusted
//! (`proxy`), or a name the caller picks, on loopback only (`dev`). Slack
//! buttons and one-click links carry their own proof (Slack's request
//! signature, the link's HMAC) and work only when their secret is given.
//!
//! # Layout
//! - this file: settings, start-up, identity;
//! - [`api`]: the router, the `/api/v1` handlers, errors as HTTP;
//! - [`slack`]: Slack's interactivity endpoint;
//! - [`links`]: one-click links and their confirmation page;
//! - [`page`]: the web page (server-rendered, with forms to decide);
//! - `openapi`: the API's OpenAPI document, made from the handlers.

#![forbid(unsafe_code)]

pub mod api;
pub mod links;
mod openapi;
pub mod page;
pub mod slack;

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use tokio_util::sync::CancellationToken;

use moira_client::Client;

/// Where the deciding user comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Nobody: reads are served, every decision is refused with 401.
    #[default]
    None,
    /// A header set by an authenticating reverse proxy, believed only from
    /// the trusted proxy addresses.
    Proxy,
    /// The `X-Moira-User` header, whatever it says: for `moira dev` and
    /// tests, and only on a loopback address.
    Dev,
}

/// The header `--auth dev` reads the user from.
pub const DEV_USER_HEADER: &str = "x-moira-user";

#[derive(Debug, Clone)]
pub struct Settings {
    pub nats_url: String,
    pub listen: SocketAddr,
    pub auth: AuthMode,
    /// With [`AuthMode::Proxy`]: the header naming the user.
    pub user_header: String,
    /// With [`AuthMode::Proxy`]: peers whose header is believed.
    pub trusted_proxies: Vec<IpAddr>,
    /// Broker credentials and TLS.
    pub connect: moira_client::Auth,
    /// The approvers registry file (maps Slack users to moira users).
    pub approvers: Option<std::path::PathBuf>,
    /// Follow the registry in the `MOIRA_REGISTRY` bucket instead.
    pub approvers_kv: bool,
    /// Slack's interactivity endpoint, when set up.
    pub slack: Option<slack::SlackSettings>,
    /// The secret one-click links are signed with (shared with the notifier).
    pub link_secret: Option<String>,
    /// moira-web's SSH key, which signs each decision it makes for someone.
    pub key: Option<std::path::PathBuf>,
    /// Where to serve /metrics, /healthz and /readyz.
    pub metrics_listen: Option<SocketAddr>,
}

pub(crate) struct State {
    client: Client,
    auth: AuthMode,
    user_header: String,
    trusted_proxies: Vec<IpAddr>,
    /// Permits for event streams ([`api::MAX_EVENT_STREAMS`]).
    streams: std::sync::Arc<tokio::sync::Semaphore>,
    registry: moira_service::live::LiveRegistry,
    slack: Option<slack::SlackSettings>,
    link_secret: Option<String>,
    /// Compares CSRF tokens in constant time (see [`page`]).
    csrf_key: ring::hmac::Key,
}

/// One decision, from whichever entry path, as the gate-keeper gets it.
#[derive(Debug, Default)]
pub(crate) struct Decision {
    /// approve, deny, push-back or cancel.
    pub verb: &'static str,
    pub gate: moira_client::GateId,
    pub actor: String,
    pub id: Option<moira_protocol::ids::CommandId>,
    pub comment: Option<String>,
    pub reason: Option<String>,
    pub inputs: std::collections::BTreeMap<String, String>,
    /// How the actor was authenticated (`proxy`, `link`, `slack`, `dev`).
    pub via: Option<String>,
    /// The request's W3C `traceparent`, passed on to the gate-keeper.
    pub traceparent: Option<String>,
}

/// The request's `traceparent` header, if well formed.
pub(crate) fn traceparent(headers: &HeaderMap) -> Option<String> {
    headers
        .get(moira_client::trace::HDR_TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .filter(|t| moira_client::trace::valid(t))
}

impl State {
    /// Sends the decision to the gate-keepers (signed with moira-web's key
    /// when it has one) and returns the gate after it.
    pub(crate) async fn decide(
        &self,
        d: Decision,
    ) -> Result<moira_client::GateView, moira_client::ClientError> {
        use moira_client::{ApproveGate, CancelGate, DenyGate, PushBackGate};
        let id = Some(d.id.unwrap_or_default());
        let (gate_id, actor, via) = (d.gate, d.actor, d.via);
        let send = async {
            match d.verb {
                "approve" => {
                    self.client
                        .approve(ApproveGate {
                            id,
                            gate_id,
                            actor,
                            comment: d.comment,
                            inputs: d.inputs,
                            via,
                            ..Default::default()
                        })
                        .await
                }
                "deny" => {
                    self.client
                        .deny(DenyGate {
                            id,
                            gate_id,
                            actor,
                            reason: d.reason.unwrap_or_default(),
                            via,
                            ..Default::default()
                        })
                        .await
                }
                "push-back" => {
                    self.client
                        .push_back(PushBackGate {
                            id,
                            gate_id,
                            actor,
                            comment: d.comment,
                            inputs: d.inputs,
                            via,
                            ..Default::default()
                        })
                        .await
                }
                _ => {
                    self.client
                        .cancel(CancelGate {
                            id,
                            gate_id,
                            actor,
                            reason: d.reason,
                            via,
                            ..Default::default()
                        })
                        .await
                }
            }
        };
        let result = moira_client::trace::scope(d.traceparent, send).await;
        tracing::info!(gate = %d.gate, verb = d.verb, ok = result.is_ok(), "decision through moira-web");
        result
    }
}

/// Why a request may not decide.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unauthenticated {
    NoAuth,
    UntrustedPeer(IpAddr),
    NoUser(String),
}

impl State {
    /// How the API and the page authenticated the user, as the `via` of the
    /// decisions they make (Slack and links say their own).
    pub(crate) fn via(&self) -> Option<String> {
        match self.auth {
            AuthMode::None => None,
            AuthMode::Proxy => Some("proxy".into()),
            AuthMode::Dev => Some("dev".into()),
        }
    }

    /// The user a decision is made as, from where the mode says.
    pub(crate) fn user(
        &self,
        headers: &HeaderMap,
        peer: SocketAddr,
    ) -> Result<String, Unauthenticated> {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        match self.auth {
            AuthMode::None => Err(Unauthenticated::NoAuth),
            AuthMode::Dev => {
                header(DEV_USER_HEADER).ok_or(Unauthenticated::NoUser(DEV_USER_HEADER.into()))
            }
            AuthMode::Proxy => {
                // A header from anyone else could name anyone.
                if !self.trusted_proxies.contains(&peer.ip()) {
                    return Err(Unauthenticated::UntrustedPeer(peer.ip()));
                }
                header(&self.user_header)
                    .ok_or_else(|| Unauthenticated::NoUser(self.user_header.clone()))
            }
        }
    }
}

/// A started moira-web: connected and listening, not yet serving.
pub struct Web {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    app: axum::Router,
    nats: async_nats::Client,
    metrics_listen: Option<SocketAddr>,
}

/// Connects to the broker and binds the listen address.
pub async fn start(settings: Settings) -> anyhow::Result<Web> {
    if settings.auth == AuthMode::Dev && !settings.listen.ip().is_loopback() {
        anyhow::bail!(
            "--auth dev lets a caller pick any name, so it listens only on loopback; \
             use --listen 127.0.0.1:PORT, or --auth proxy behind an authenticating proxy"
        );
    }
    let mut client =
        Client::connect_with(&settings.nats_url, "moira-web", &settings.connect).await?;
    if let Some(path) = &settings.key {
        client = client.with_signer(moira_client::signing::Signer::from_file(path)?);
    }
    let registry = moira_service::live::LiveRegistry::open(
        &client,
        settings.approvers.as_deref(),
        settings.approvers_kv,
    )
    .await?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.listen))?;
    let addr = listener.local_addr()?;
    let state = State {
        client,
        auth: settings.auth,
        user_header: settings.user_header.to_ascii_lowercase(),
        trusted_proxies: settings.trusted_proxies,
        streams: std::sync::Arc::new(tokio::sync::Semaphore::new(api::MAX_EVENT_STREAMS)),
        registry,
        slack: settings.slack,
        link_secret: settings.link_secret,
        csrf_key: ring::hmac::Key::generate(
            ring::hmac::HMAC_SHA256,
            &ring::rand::SystemRandom::new(),
        )
        .map_err(|_| anyhow::anyhow!("no randomness for the CSRF key"))?,
    };
    let nats = state.client.nats().clone();
    let app = api::router(std::sync::Arc::new(state));
    tracing::info!(url = %settings.nats_url, auth = ?settings.auth, "moira-web ready on http://{addr}");
    Ok(Web {
        listener,
        addr,
        app,
        nats,
        metrics_listen: settings.metrics_listen,
    })
}

impl Web {
    /// Where it listens (the port is known even when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown`; requests in flight are finished.
    pub async fn serve(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        if let Some(addr) = self.metrics_listen {
            moira_service::ops::serve(addr, "moira-web", self.nats.clone(), shutdown.clone())
                .await?;
        }
        axum::serve(
            self.listener,
            self.app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
        tracing::info!("moira-web stopped");
        Ok(())
    }
}

/// Connects, listens and serves until `shutdown`.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    start(settings).await?.serve(shutdown).await
}
