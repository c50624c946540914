//! End-to-end tests: real nats-servers, real moira processes.

mod auth;
mod bad_input;
mod cli;
mod concurrency;
mod gates;
mod hostile;
mod locked;
mod notify;
mod runs;
mod signatures;
mod waiting;

use moira_client::{Client, OpenGate};
use moira_tests::{gatekeeper, NatsServer, Proc};

/// One nats-server, one gate-keeper process and a connected client.
/// Fields drop in order: the client and gate-keeper stop before the server.
pub struct Stack {
    pub client: Client,
    pub gk: Proc,
    pub server: NatsServer,
}

impl Stack {
    pub async fn start() -> Stack {
        Self::with_gatekeeper_args(&[]).await
    }

    pub async fn with_gatekeeper_args(args: &[&str]) -> Stack {
        let server = NatsServer::start();
        let gk = gatekeeper(&server.url(), args);
        let client = Client::connect(&server.url()).await.expect("connect");
        Stack { server, gk, client }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }
}

pub fn open(actor: &str, msg: &str) -> OpenGate {
    OpenGate {
        actor: actor.into(),
        message: msg.into(),
        ..Default::default()
    }
}

/// Counts the stored events of a gate that can end it.
pub async fn terminal_events(client: &Client, id: moira_client::GateId) -> usize {
    let (events, _) = client.read_events(id).await.expect("read events");
    events
        .iter()
        .filter(|e| matches!(&e.event, moira_client::protocol::event::Decoded::Event(env) if env.event.is_terminal()))
        .count()
}
