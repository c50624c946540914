//! Correctness under faults and upgrades: what a writer does with history
//! it does not understand, and reads that drive actions.

use moira_client::protocol::subjects::{gate_events, HDR_EVENT};
use moira_client::{ApproveGate, ErrorCode, GateStatus};

use crate::{open, Stack};

/// A gate event of a kind this build does not know, as a newer
/// gate-keeper might write it after a rolling upgrade.
fn future_event(kind: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0xa6];
    b.extend(b"schema");
    b.push(0x01);
    b.push(0xa5);
    b.extend(b"event");
    b.push(0x81);
    b.push(0xa0 | u8::try_from(kind.len()).expect("a short kind"));
    b.extend(kind.as_bytes());
    b.push(0x01);
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gatekeeper_refuses_to_decide_on_history_it_does_not_understand() {
    let s = Stack::start().await;
    let gate = s.client.open(open("alice", "Ship?")).await.expect("open");
    let js = async_nats::jetstream::new(s.client.nats().clone());
    let mut h = async_nats::HeaderMap::new();
    h.insert(HDR_EVENT, "GateEscalated");
    js.publish_with_headers(
        gate_events(&gate.id),
        h,
        future_event("GateEscalated").into(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    let before = s.client.read_events(gate.id).await.expect("read").0.len();
    let e = s
        .client
        .approve(ApproveGate {
            gate_id: gate.id,
            actor: "bob".into(),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Some(ErrorCode::Unavailable), "{e}");
    assert!(e.to_string().contains("GateEscalated"), "{e}");
    assert_eq!(
        s.client.read_events(gate.id).await.expect("read").0.len(),
        before,
        "nothing stored"
    );
    // Readers skip what they do not know; the gate still shows as it was.
    let g = s.client.show(gate.id).await.expect("show");
    assert_eq!(g.status, GateStatus::Waiting);
}
