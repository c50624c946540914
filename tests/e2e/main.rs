//! End-to-end tests: real nats-servers, real moira processes.

mod attested;
mod auth;
mod bad_input;
mod bound;
mod bounds;
mod browser;
mod calls;
mod chaos;
mod cli;
mod concurrency;
mod delegation;
mod deploy;
mod faults;
mod gates;
mod hostile;
mod index;
mod locked;
mod notify;
mod ops;
mod runner_faults;
mod runs;
mod signatures;
mod signed_runs;
mod stages;
mod waiting;
mod web;

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

/// An event as someone with broker admin rights would write it by hand:
/// unsigned, outside any hash chain.
pub fn hand_made(
    gate_id: moira_client::GateId,
    actor: &str,
    event: moira_client::protocol::GateEvent,
    run_id: Option<String>,
) -> moira_client::protocol::Envelope {
    moira_client::protocol::Envelope {
        schema: moira_client::protocol::event::SCHEMA,
        id: moira_client::protocol::CommandId::new(),
        gate_id,
        actor: actor.into(),
        at: moira_client::protocol::time::now_ms(),
        event,
        run_id,
        signature: None,
        signed_at: None,
        signer: None,
        registry: None,
        prev: None,
        via: None,
        on_behalf_of: None,
    }
}

/// Stores an event on its gate's subject directly, past every gate-keeper.
pub async fn store_by_hand(client: &Client, env: &moira_client::protocol::Envelope) {
    let js = async_nats::jetstream::new(client.nats().clone());
    js.publish(
        moira_client::protocol::wire::gate_events(&env.gate_id),
        env.encode().into(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
}

/// Counts the stored events of a gate that can end it.
pub async fn terminal_events(client: &Client, id: moira_client::GateId) -> usize {
    let (events, _) = client.read_events(id).await.expect("read events");
    events
        .iter()
        .filter(|e| matches!(&e.event, moira_client::protocol::event::Decoded::Event(env) if env.event.is_terminal()))
        .count()
}
