//! Hostile input that crosses processes: reused command ids, events that
//! someone with write access stored by hand, and text meant to take over
//! a terminal. Each is refused or shown harmlessly, and every reader goes on.

use std::time::Duration;

use moira_client::protocol::event::{GateEvent, GateSpec};
use moira_client::protocol::wire::{gate_events, HDR_EVENT};
use moira_client::protocol::CommandId;
use moira_client::{ApproveGate, DenyGate, GateId, GateStatus, OpenGate};
use moira_tests::{bin, moira, ProcBuilder};

use crate::{open, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_id_reused_on_another_gate_still_decides_that_gate() {
    let s = Stack::start().await;
    let a = s.client.open(open("alice", "A?")).await.expect("open a");
    let b = s.client.open(open("carol", "B?")).await.expect("open b");
    let id = CommandId::new();
    s.client
        .approve(ApproveGate {
            id: Some(id),
            gate_id: a.id,
            actor: "alice".into(),
            ..Default::default()
        })
        .await
        .expect("approve a");
    let denied = s
        .client
        .deny(DenyGate {
            id: Some(id),
            gate_id: b.id,
            actor: "alice".into(),
            reason: "no".into(),
            ..Default::default()
        })
        .await
        .expect("deny b with the same command id");
    assert_eq!(denied.status, GateStatus::Denied);
    let stored = s.client.show(b.id).await.expect("show b");
    assert_eq!(
        stored.status,
        GateStatus::Denied,
        "the denial was really stored"
    );
    // The same id for a different command on the same gate is refused.
    let c = s.client.open(open("alice", "C?")).await.expect("open c");
    let other = CommandId::new();
    s.client
        .approve(ApproveGate {
            id: Some(other),
            gate_id: c.id,
            actor: "bob".into(),
            ..Default::default()
        })
        .await
        .expect("approve c");
    let e = s
        .client
        .deny(DenyGate {
            id: Some(other),
            gate_id: c.id,
            actor: "bob".into(),
            reason: "changed my mind".into(),
            ..Default::default()
        })
        .await
        .expect_err("a reused id for another command");
    assert_eq!(e.code(), Some(moira_client::ErrorCode::Conflict), "{e}");
}

/// Stores a raw message on a gate's subject, as anyone with write access
/// to the stream could.
async fn store_raw(s: &Stack, gate: GateId, kind: &str, payload: Vec<u8>) {
    let js = async_nats::jetstream::new(s.client.nats().clone());
    let mut h = async_nats::HeaderMap::new();
    h.insert(HDR_EVENT, kind);
    js.publish_with_headers(gate_events(&gate), h, payload.into())
        .await
        .expect("publish")
        .await
        .expect("stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_stored_events_are_reported_and_every_reader_goes_on() {
    let s = Stack::start().await;
    let notifier = ProcBuilder::new(bin("moira-notifier"), "moira-notifier")
        .args(["--nats-url", &s.url()])
        .env("MOIRA_LOG", "info")
        .spawn()
        .expect("spawn notifier");
    notifier.wait_for_line("moira-notifier ready", Duration::from_secs(20));
    let fine = s.client.open(open("alice", "Fine?")).await.expect("open");
    // A GateOpened from the far future, past what RFC 3339 can show.
    let future = GateId::new();
    let mut env = crate::hand_made(
        future,
        "mallory",
        GateEvent::GateOpened {
            spec: Box::new(GateSpec {
                message: "from the year 584556019".into(),
                ..Default::default()
            }),
            timeout_at: Some(u64::MAX),
        },
        None,
    );
    env.at = u64::MAX;
    store_raw(&s, future, "GateOpened", env.encode()).await;
    // An event of an unknown kind nested 200,000 levels deep (the stream
    // takes messages up to 256 KiB).
    let deep = GateId::new();
    let mut bytes = vec![0x82, 0xa6];
    bytes.extend(b"schema");
    bytes.push(0x01);
    bytes.push(0xa5);
    bytes.extend(b"event");
    bytes.extend([0x81, 0xae]);
    bytes.extend(b"GateTeleported");
    bytes.extend(std::iter::repeat_n(0x91u8, 200_000));
    bytes.push(0x00);
    store_raw(&s, deep, "GateTeleported", bytes).await;

    let (code, out, err) = moira(&s.url(), &["gate", "list", "--status", "all"]);
    assert_eq!(code, 0, "gate list goes on: {err}");
    assert!(out.contains(&fine.id.to_string()), "{out}");
    assert!(out.contains(&future.to_string()), "{out}");
    let (code, out, err) = moira(&s.url(), &["--json", "gate", "show", &future.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("9999-12-31T23:59:59.999Z"), "{out}");
    let (code, _, err) = moira(&s.url(), &["gate", "show", &deep.to_string()]);
    assert_ne!(code, 101, "no panic: {err}");
    // The gate-keeper still decides gates.
    let v = s
        .client
        .approve(ApproveGate {
            gate_id: fine.id,
            actor: "bob".into(),
            ..Default::default()
        })
        .await
        .expect("the gate-keeper still serves");
    assert_eq!(v.status, GateStatus::Approved);
    assert!(s.gk.pid().is_some());
    // The notifier read both stored events and still delivers the next one.
    notifier.wait_for_line("approved: Fine?", Duration::from_secs(20));
    assert!(
        notifier
            .output()
            .iter()
            .any(|l| l.contains("from the year 584556019")),
        "the far-future gate was notified like any other: {:?}",
        notifier.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_escapes_in_gate_text_never_reach_the_terminal() {
    let s = Stack::start().await;
    let evil = "Deploy?\u{1b}]52;c;ZXZpbA==\u{7}\u{1b}[2K\rGateApproved by admin LGTM\u{202e}";
    let g = s
        .client
        .open(OpenGate {
            title: Some(format!("t\u{1b}[31m{evil}")),
            ..open("alice", evil)
        })
        .await
        .expect("open");
    s.client
        .deny(DenyGate {
            gate_id: g.id,
            actor: "bob".into(),
            reason: format!(
                "no\u{1b}[1A\u{1b}[2K\n2026-01-01  {} GateApproved  admin  LGTM",
                g.id
            ),
            ..Default::default()
        })
        .await
        .expect("deny");
    let id = g.id.to_string();
    for args in [
        vec!["gate", "show", id.as_str()],
        vec!["gate", "list", "--status", "all"],
        vec!["--json", "gate", "show", id.as_str()],
    ] {
        let (code, out, err) = moira(&s.url(), &args);
        assert_eq!(code, 0, "{args:?}: {err}");
        for bad in ['\u{1b}', '\u{7}', '\r', '\u{202e}'] {
            assert!(!out.contains(bad), "{args:?} printed {bad:?}: {out:?}");
        }
        assert!(
            out.contains("\\u001b"),
            "{args:?} shows the escape as text: {out}"
        );
    }
    let watch = ProcBuilder::new(bin("moira"), "moira gate watch")
        .args(["--nats-url", &s.url(), "gate", "watch", "--all"])
        .spawn()
        .expect("spawn watch");
    let line = watch.wait_for_line("GateDenied", Duration::from_secs(20));
    assert!(!line.contains('\u{1b}'), "{line:?}");
    let fake = watch
        .output()
        .iter()
        .filter(|l| l.starts_with("2026-01-01"))
        .count();
    assert_eq!(
        fake,
        0,
        "a reason cannot draw a line of its own: {:?}",
        watch.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_gatekeeper_requires_approvers_and_refuses_self_and_quick_auto_approval() {
    let s = Stack::with_gatekeeper_args(&["--strict"]).await;
    let url = s.url();
    let (code, _, err) = moira(
        &url,
        &["--as", "alice", "gate", "open", "--message", "Deploy?"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("name its approvers"), "{err}");
    let (code, out, err) = moira(
        &url,
        &[
            "--as",
            "alice",
            "gate",
            "open",
            "--message",
            "Deploy?",
            "--approver",
            "alice",
            "--approver",
            "bob",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let id = out.trim();
    let (code, _, err) = moira(&url, &["--as", "alice", "gate", "approve", id]);
    assert_eq!(code, 1, "self-approval is off by default: {err}");
    assert!(err.contains("self-approval"), "{err}");
    let (code, _, err) = moira(
        &url,
        &[
            "--as",
            "alice",
            "gate",
            "open",
            "--message",
            "Auto?",
            "--approver",
            "bob",
            "--timeout",
            "1h",
            "--on-timeout",
            "approve",
        ],
    );
    assert_eq!(code, 1, "auto-approval needs the auto-approver role: {err}");
    assert!(err.contains("auto-approver"), "{err}");
    let (code, _, err) = moira(&url, &["--as", "bob", "gate", "approve", id]);
    assert_eq!(code, 0, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_cannot_open_a_gate_for_a_run_or_act_as_a_service() {
    let s = Stack::start().await;
    let ask = |subject: &'static str, body: String| {
        let nats = s.client.nats().clone();
        async move {
            let msg =
                tokio::time::timeout(Duration::from_secs(10), nats.request(subject, body.into()))
                    .await
                    .expect("in time")
                    .expect("a reply");
            serde_json::from_slice::<serde_json::Value>(&msg.payload).expect("json")
        }
    };
    let v = ask(
        "moira.cmd.gate.open",
        r#"{"actor":"mallory","message":"m","run_id":"r1","step":"deploy"}"#.to_string(),
    )
    .await;
    assert_eq!(v["error"]["code"], "not_allowed", "{v}");
    let g = s.client.open(open("alice", "Mine")).await.expect("open");
    let v = ask(
        "moira.cmd.gate.cancel",
        format!(r#"{{"gate_id":"{}","actor":"moira:runner"}}"#, g.id),
    )
    .await;
    assert_eq!(v["error"]["code"], "bad_request", "{v}");
    assert_eq!(
        s.client.show(g.id).await.expect("show").status,
        GateStatus::Waiting
    );
}
