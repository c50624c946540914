//! Gate lifecycles through a real gate-keeper process and the client library.

use std::time::Duration;

use moira_client::{ApproveGate, Client, DenyGate, ErrorCode, GateStatus, OpenGate};
use moira_tests::{gatekeeper, NatsServer};

fn open(actor: &str, msg: &str) -> OpenGate {
    OpenGate {
        actor: actor.into(),
        message: msg.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_wakes_the_waiter() {
    let server = NatsServer::start();
    let _gk = gatekeeper(&server.url(), &[]);
    let client = Client::connect(&server.url()).await.expect("connect");
    let gate = client
        .open(open("alice", "Deploy v1?"))
        .await
        .expect("open");
    assert_eq!(gate.status, GateStatus::Waiting);

    let waiter = {
        let c = client.clone();
        tokio::spawn(async move { c.wait(gate.id, Some(Duration::from_secs(20))).await })
    };
    let other = Client::connect(&server.url()).await.expect("connect");
    let approved = other
        .approve(ApproveGate {
            gate_id: gate.id,
            actor: "bob".into(),
            comment: Some("ship it".into()),
            ..Default::default()
        })
        .await
        .expect("approve");
    assert_eq!(approved.status, GateStatus::Approved);
    let woken = waiter.await.expect("join").expect("wait");
    assert_eq!(woken.status, GateStatus::Approved);
    assert_eq!(woken.approved_by.as_deref(), Some("bob"));
    assert_eq!(woken.approvals[0].comment.as_deref(), Some("ship it"));
    assert_eq!(client.show(gate.id).await.expect("show"), woken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_records_reason_and_refuses_later_commands() {
    let server = NatsServer::start();
    let _gk = gatekeeper(&server.url(), &[]);
    let client = Client::connect(&server.url()).await.expect("connect");
    let gate = client
        .open(open("alice", "Drop table?"))
        .await
        .expect("open");
    let denied = client
        .deny(DenyGate {
            gate_id: gate.id,
            actor: "bob".into(),
            reason: "error budget spent".into(),
            ..Default::default()
        })
        .await
        .expect("deny");
    assert_eq!(denied.status, GateStatus::Denied);
    assert_eq!(denied.reason.as_deref(), Some("error budget spent"));
    let again = client
        .approve(ApproveGate {
            gate_id: gate.id,
            actor: "carol".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Some(ErrorCode::AlreadyDecided));
    assert_eq!(
        client.show(gate.id).await.expect("show").status,
        GateStatus::Denied
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_fires_from_the_server_schedule() {
    let server = NatsServer::start();
    let _gk = gatekeeper(&server.url(), &[]);
    let client = Client::connect(&server.url()).await.expect("connect");
    let gate = client
        .open(OpenGate {
            timeout_ms: Some(1500),
            ..open("alice", "Quick?")
        })
        .await
        .expect("open");
    assert!(gate.timeout_at.is_some());
    let done = client
        .wait(gate.id, Some(Duration::from_secs(20)))
        .await
        .expect("wait");
    assert_eq!(done.status, GateStatus::TimedOut);
    assert!(done.timed_out);
}
