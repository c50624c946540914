//! Gate lifecycles through a real gate-keeper process and the client library.

use std::time::{Duration, SystemTime};

use moira_client::protocol::event::OnTimeout;
use moira_client::{
    ApproveGate, CancelGate, Client, DenyGate, ErrorCode, GateStatus, OpenGate, PushBackGate,
};
use moira_testkit::TempDir;

use crate::{open, terminal_events, Stack};

const WAIT: Option<Duration> = Some(Duration::from_secs(30));

fn approve(gate_id: moira_client::GateId, actor: &str) -> ApproveGate {
    ApproveGate {
        gate_id,
        actor: actor.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_wakes_the_waiter() {
    let s = Stack::start().await;
    let gate = s
        .client
        .open(open("alice", "Deploy v1?"))
        .await
        .expect("open");
    assert_eq!(gate.status, GateStatus::Waiting);
    let waiter = {
        let c = s.client.clone();
        tokio::spawn(async move { c.wait(gate.id, WAIT).await })
    };
    let other = Client::connect(&s.url()).await.expect("connect");
    let approved = other
        .approve(ApproveGate {
            comment: Some("ship it".into()),
            ..approve(gate.id, "bob")
        })
        .await
        .expect("approve");
    assert_eq!(approved.status, GateStatus::Approved);
    let woken = waiter.await.expect("join").expect("wait");
    assert_eq!(woken.status, GateStatus::Approved);
    assert_eq!(woken.approved_by.as_deref(), Some("bob"));
    assert_eq!(woken.approvals[0].comment.as_deref(), Some("ship it"));
    assert_eq!(s.client.show(gate.id).await.expect("show"), woken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_records_reason_and_refuses_later_commands() {
    let s = Stack::start().await;
    let gate = s
        .client
        .open(open("alice", "Drop table?"))
        .await
        .expect("open");
    let denied = s
        .client
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
    let again = s
        .client
        .approve(approve(gate.id, "carol"))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Some(ErrorCode::AlreadyDecided));
    assert_eq!(s.client.show(gate.id).await.expect("show"), denied);
    assert_eq!(terminal_events(&s.client, gate.id).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_of_m_with_roles_from_the_registry() {
    let dir = TempDir::new("moira-approvers").expect("tmp");
    let file = dir.path().join("approvers.toml");
    std::fs::write(&file, "[users.bob]\nroles = [\"owner\"]\n[users.carol]\nroles = [\"owner\", \"sre\"]\n[users.eve]\nroles = [\"dev\"]\n")
        .expect("write");
    let s = Stack::with_gatekeeper_args(&["--approvers", &file.display().to_string()]).await;
    let gate = s
        .client
        .open(OpenGate {
            roles: vec!["owner".into()],
            approvals: Some(2),
            ..open("alice", "Rotate keys?")
        })
        .await
        .expect("open");

    let e = s.client.approve(approve(gate.id, "eve")).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotAllowed), "{e}");
    let one = s
        .client
        .approve(approve(gate.id, "bob"))
        .await
        .expect("bob approves");
    assert_eq!((one.status, one.approvals.len()), (GateStatus::Waiting, 1));
    let e = s.client.approve(approve(gate.id, "bob")).await.unwrap_err();
    assert_eq!(
        e.code(),
        Some(ErrorCode::NotAllowed),
        "a second approval by bob must not count: {e}"
    );
    let two = s
        .client
        .approve(approve(gate.id, "carol"))
        .await
        .expect("carol approves");
    assert_eq!(two.status, GateStatus::Approved);
    let by: Vec<&str> = two.approvals.iter().map(|a| a.by.as_str()).collect();
    assert_eq!(by, ["bob", "carol"]);
    assert_eq!(two.approved_by.as_deref(), Some("carol"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_approval_and_missing_inputs_are_refused_without_change() {
    let s = Stack::start().await;
    let gate = s
        .client
        .open(OpenGate {
            allow_self_approval: Some(false),
            inputs: vec!["WINDOW".into(), "NOTE".into()],
            required: vec!["WINDOW".into()],
            ..open("alice", "Deploy?")
        })
        .await
        .expect("open");
    let before = s.client.show(gate.id).await.expect("show");

    let e = s
        .client
        .approve(approve(gate.id, "alice"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotAllowed), "{e}");
    let e = s.client.approve(approve(gate.id, "bob")).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::MissingInput), "{e}");
    assert!(e.to_string().contains("WINDOW"), "{e}");
    assert_eq!(s.client.show(gate.id).await.expect("show"), before);

    let ok = s
        .client
        .approve(ApproveGate {
            inputs: [("WINDOW".into(), "sat".into())].into(),
            ..approve(gate.id, "bob")
        })
        .await
        .expect("approve with input");
    assert_eq!(ok.status, GateStatus::Approved);
    assert_eq!(ok.inputs.get("WINDOW").map(String::as_str), Some("sat"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_back_then_approve() {
    let s = Stack::start().await;
    let gate = s
        .client
        .open(OpenGate {
            inputs: vec!["FEEDBACK".into()],
            ..open("alice", "Review the plan")
        })
        .await
        .expect("open");
    let mut follower = s.client.follow(gate.id).await.expect("follow");
    let pushed = s
        .client
        .push_back(PushBackGate {
            gate_id: gate.id,
            actor: "bob".into(),
            comment: Some("too risky".into()),
            inputs: [("FEEDBACK".into(), "split the migration".into())].into(),
            ..Default::default()
        })
        .await
        .expect("push back");
    assert_eq!((pushed.status, pushed.iteration), (GateStatus::Waiting, 2));
    let seen = follower
        .wait_until(|g| g.iteration == 2)
        .await
        .expect("follower sees push-back");
    assert_eq!(
        seen.inputs.get("FEEDBACK").map(String::as_str),
        Some("split the migration")
    );

    let done = s
        .client
        .approve(approve(gate.id, "bob"))
        .await
        .expect("approve");
    assert_eq!((done.status, done.iteration), (GateStatus::Approved, 2));
    assert_eq!(done.push_backs.len(), 1);
    assert_eq!(done.push_backs[0].comment.as_deref(), Some("too risky"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_by_requester() {
    let s = Stack::start().await;
    let gate = s
        .client
        .open(OpenGate {
            approvers: vec!["bob".into()],
            ..open("alice", "Deploy?")
        })
        .await
        .expect("open");
    let cancel = |actor: &str| CancelGate {
        gate_id: gate.id,
        actor: actor.into(),
        reason: Some("superseded".into()),
        ..Default::default()
    };
    let e = s.client.cancel(cancel("mallory")).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotAllowed));
    let done = s.client.cancel(cancel("alice")).await.expect("cancel");
    assert_eq!(done.status, GateStatus::Cancelled);
    assert_eq!(
        s.client.wait(gate.id, WAIT).await.expect("wait").status,
        GateStatus::Cancelled
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_open_with_an_id() {
    let s = Stack::start().await;
    let id = moira_client::GateId::new();
    let spec = OpenGate {
        gate_id: Some(id),
        timeout_ms: Some(3_600_000),
        ..open("runner", "Deploy?")
    };
    let a = s.client.open(spec.clone()).await.expect("first open");
    let b = s.client.open(spec.clone()).await.expect("second open");
    assert_eq!(a, b);
    let (events, _) = s.client.read_events(id).await.expect("events");
    assert_eq!(events.len(), 1, "opening twice stores one GateOpened");
    let e = s
        .client
        .open(OpenGate {
            message: "Something else".into(),
            ..spec
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Conflict));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_fires_from_the_server_schedule_with_each_action() {
    let s = Stack::start().await;
    let mut gates = Vec::new();
    for (action, status) in [
        (OnTimeout::Fail, GateStatus::TimedOut),
        (OnTimeout::Approve, GateStatus::Approved),
        (OnTimeout::Deny, GateStatus::Denied),
    ] {
        let g = s
            .client
            .open(OpenGate {
                timeout_ms: Some(1000),
                on_timeout: Some(action),
                ..open("alice", "Quick?")
            })
            .await
            .expect("open");
        gates.push((g.id, status));
    }
    // A decided gate's schedule is purged with the decision: it never fires.
    let decided = s
        .client
        .open(OpenGate {
            timeout_ms: Some(1000),
            ..open("alice", "Decided early")
        })
        .await
        .expect("open");
    s.client
        .approve(approve(decided.id, "bob"))
        .await
        .expect("approve");
    for (id, status) in gates {
        let done = s.client.wait(id, WAIT).await.expect("wait");
        assert_eq!(done.status, status);
        assert!(done.timed_out);
        assert_eq!(done.decided_by.as_deref(), Some("moira:timeout"));
    }
    let (events, _) = s.client.read_events(decided.id).await.expect("events");
    assert_eq!(events.len(), 2, "open + approve, no timeout event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_fires_after_the_server_was_down_across_the_deadline() {
    let mut s = Stack::start().await;
    let gate = s
        .client
        .open(OpenGate {
            timeout_ms: Some(1500),
            ..open("alice", "Overnight?")
        })
        .await
        .expect("open");
    let deadline =
        humantime::parse_rfc3339(gate.timeout_at.as_deref().expect("deadline")).expect("rfc3339");
    s.server.stop();
    // The deadline passes while the server is down.
    if let Ok(left) = deadline.duration_since(SystemTime::now()) {
        tokio::time::sleep(left + Duration::from_millis(500)).await;
    }
    s.server.restart();
    let client = Client::connect(&s.url()).await.expect("reconnect");
    let done = client.wait(gate.id, WAIT).await.expect("wait");
    assert_eq!(done.status, GateStatus::TimedOut);
    assert_eq!(terminal_events(&client, gate.id).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_opens_of_one_id_store_one_gate() {
    let s = Stack::start().await;
    let id = moira_client::GateId::new();
    let spec = OpenGate {
        gate_id: Some(id),
        timeout_ms: Some(3_600_000),
        ..open("runner", "Deploy?")
    };
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (c, spec) = (
            Client::connect(&s.url()).await.expect("connect"),
            spec.clone(),
        );
        tasks.push(tokio::spawn(async move { c.open(spec).await }));
    }
    for t in tasks {
        let g = t.await.expect("join").expect("every open succeeds");
        assert_eq!((g.id, g.status), (id, GateStatus::Waiting));
    }
    let (events, _) = s.client.read_events(id).await.expect("events");
    assert_eq!(events.len(), 1, "one GateOpened for ten opens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_and_follow_sees_new_and_existing_gates() {
    let s = Stack::start().await;
    // New gate: every event arrives on the live feed.
    let (g, mut f) = s
        .client
        .open_and_follow(open("alice", "New"))
        .await
        .expect("open");
    assert_eq!(f.current().map(|x| x.status), Some(GateStatus::Waiting));
    s.client
        .approve(approve(g.id, "bob"))
        .await
        .expect("approve");
    let done = f
        .wait_until(|x| x.status.is_terminal())
        .await
        .expect("woken");
    assert_eq!(done.status, GateStatus::Approved);

    // An idempotent re-open of a decided gate stores nothing new, so the
    // follower must learn its state by reading it.
    let other = Client::connect(&s.url()).await.expect("connect");
    let spec = OpenGate {
        gate_id: Some(moira_client::GateId::new()),
        ..open("alice", "Again")
    };
    let first = other.open(spec.clone()).await.expect("open");
    other
        .approve(approve(first.id, "bob"))
        .await
        .expect("approve");
    let (_, f) = s.client.open_and_follow(spec).await.expect("re-open");
    assert_eq!(f.current().map(|x| x.status), Some(GateStatus::Approved));
}
