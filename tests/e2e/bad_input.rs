//! Bad input sent straight to the command subjects, as any NATS client can:
//! each gets a clear error reply, nothing changes, the gate-keeper keeps serving.

use std::time::Duration;

use bytes::Bytes;
use moira_client::protocol::command::{Format, Reply};
use moira_client::{ApproveGate, ErrorCode, GateStatus};
use serde_json::Value;

use crate::{open, Stack};

async fn raw(s: &Stack, subject: &str, body: impl Into<Bytes>) -> async_nats::Message {
    tokio::time::timeout(
        Duration::from_secs(10),
        s.client.nats().request(subject.to_string(), body.into()),
    )
    .await
    .expect("a reply in time")
    .expect("a reply")
}

fn json_error(msg: &async_nats::Message) -> (String, String) {
    let v: Value = serde_json::from_slice(&msg.payload).expect("a JSON reply");
    assert_eq!(v["ok"], false, "{v}");
    (
        v["error"]["code"].as_str().unwrap_or("").to_string(),
        v["error"]["message"].as_str().unwrap_or("").to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_changes_nothing() {
    let s = Stack::start().await;
    let gate = s.client.open(open("alice", "Deploy?")).await.expect("open");
    let before = s.client.show(gate.id).await.expect("show");
    let (events_before, _) = s.client.read_events(gate.id).await.expect("events");

    // Undecodable MessagePack gets a MessagePack error reply.
    let msg = raw(&s, "moira.cmd.gate.approve", vec![0xc1u8, 0xff, 0x00, 0x13]).await;
    let reply: Reply = Format::MsgPack
        .decode(&msg.payload)
        .expect("a MessagePack reply");
    assert_eq!(reply.error.map(|e| e.code), Some(ErrorCode::BadRequest));

    // Broken JSON, a wrong field, a missing field.
    let (code, message) = json_error(&raw(&s, "moira.cmd.gate.approve", "{not json").await);
    assert_eq!(code, "bad_request", "{message}");
    let body = format!(
        r#"{{"gate_id":"{}","actor":"bob","coment":"typo"}}"#,
        gate.id
    );
    let (code, message) = json_error(&raw(&s, "moira.cmd.gate.approve", body).await);
    assert_eq!(code, "bad_request");
    assert!(
        message.contains("coment"),
        "the error names the bad field: {message}"
    );
    let body = format!(r#"{{"gate_id":"{}","actor":"bob"}}"#, gate.id);
    let (code, message) = json_error(&raw(&s, "moira.cmd.gate.deny", body).await);
    assert_eq!(code, "bad_request");
    assert!(message.contains("reason"), "{message}");

    // An unknown gate, and an id that is not an id.
    let body = format!(
        r#"{{"gate_id":"{}","actor":"bob"}}"#,
        moira_client::GateId::new()
    );
    assert_eq!(
        json_error(&raw(&s, "moira.cmd.gate.approve", body).await).0,
        "not_found"
    );
    assert_eq!(
        json_error(
            &raw(
                &s,
                "moira.cmd.gate.approve",
                r#"{"gate_id":"../etc","actor":"bob"}"#
            )
            .await
        )
        .0,
        "bad_request"
    );

    // A verb that does not exist.
    let body = format!(r#"{{"gate_id":"{}","actor":"bob"}}"#, gate.id);
    assert_eq!(
        json_error(&raw(&s, "moira.cmd.gate.explode", body).await).0,
        "bad_request"
    );

    // An oversized payload.
    let big = format!(
        r#"{{"gate_id":"{}","actor":"bob","comment":"{}"}}"#,
        gate.id,
        "x".repeat(200_000)
    );
    assert_eq!(
        json_error(&raw(&s, "moira.cmd.gate.approve", big).await).0,
        "too_large"
    );

    // Nothing changed.
    assert_eq!(s.client.show(gate.id).await.expect("show"), before);
    assert_eq!(
        s.client.read_events(gate.id).await.expect("events").0.len(),
        events_before.len()
    );

    // A well-formed JSON approval from an outside tool works, and replies JSON.
    let body = format!(
        r#"{{"gate_id":"{}","actor":"ci-bot","comment":"checks green"}}"#,
        gate.id
    );
    let v: Value = serde_json::from_slice(
        &raw(&s, "moira.cmd.gate.approve", body.clone())
            .await
            .payload,
    )
    .expect("json");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["gate"]["status"], "approved");
    assert_eq!(v["gate"]["approved_by"], "ci-bot");

    // The wrong command for the state.
    let (code, message) = json_error(&raw(&s, "moira.cmd.gate.approve", body).await);
    assert_eq!(code, "already_decided");
    assert!(message.contains("ci-bot"), "{message}");

    // Still serving.
    let next = s
        .client
        .open(open("alice", "Next"))
        .await
        .expect("open after bad input");
    let done = s
        .client
        .approve(ApproveGate {
            gate_id: next.id,
            actor: "bob".into(),
            ..Default::default()
        })
        .await
        .expect("approve");
    assert_eq!(done.status, GateStatus::Approved);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_tool_opens_a_gate_with_json() {
    let s = Stack::start().await;
    let body = r#"{"id":"0190f5e2-8b1c-7d3a-9f00-1a2b3c4d5e6f","actor":"jenkins","message":"Promote build 42?","approvers":["bob"],"timeout_ms":60000,"on_timeout":"deny"}"#;
    let first: Value =
        serde_json::from_slice(&raw(&s, "moira.cmd.gate.open", body).await.payload).expect("json");
    assert_eq!(first["ok"], true, "{first}");
    assert_eq!(first["gate"]["on_timeout"], "deny");
    // Retrying with the same command id returns the same gate.
    let again: Value =
        serde_json::from_slice(&raw(&s, "moira.cmd.gate.open", body).await.payload).expect("json");
    assert_eq!(again["gate"]["id"], first["gate"]["id"]);
}
