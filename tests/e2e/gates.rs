//! Gate lifecycles through a real gate-keeper process and the client
//! library. Every test runs twice: against a gate-keeper with signatures
//! off, and against one with `--signatures require` where each actor signs
//! with their own SSH key (and, there, each trail must verify in full).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use moira_client::protocol::event::OnTimeout;
use moira_client::signing::Signer;
use moira_client::{
    ApproveGate, CancelGate, Client, DenyGate, ErrorCode, GateId, GateStatus, OpenGate,
    PushBackGate,
};
use moira_testkit::TempDir;

use crate::signatures::{public, ssh_keygen};
use crate::{open, terminal_events, Stack};

const WAIT: Option<Duration> = Some(Duration::from_secs(30));

/// Everyone these tests let act.
const ACTORS: [&str; 6] = ["alice", "bob", "carol", "eve", "mallory", "runner"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Off,
    Require,
}

/// A gate-keeper with a registry naming [`ACTORS`] (and their keys and the
/// gate-keeper's service key in require mode), and a client per actor
/// that signs as them in require mode.
struct Gates {
    s: Stack,
    mode: Mode,
    clients: BTreeMap<&'static str, Client>,
    registry: std::sync::Arc<moira_service::Registry>,
    _dir: TempDir,
}

impl Gates {
    async fn start(mode: Mode, roles: &[(&str, &[&str])]) -> Gates {
        let dir = TempDir::new("moira-gates").expect("tmp");
        let mut toml = String::new();
        let mut keys = BTreeMap::new();
        for actor in ACTORS {
            let r: Vec<String> = roles
                .iter()
                .filter(|(a, _)| *a == actor)
                .flat_map(|(_, r)| r.iter().map(|x| format!("{x:?}")))
                .collect();
            toml.push_str(&format!("[users.{actor}]\nroles = [{}]\n", r.join(", ")));
            if mode == Mode::Require {
                let key = ssh_keygen(dir.path(), actor, "ed25519");
                toml.push_str(&format!("keys = [{:?}]\n", public(&key)));
                keys.insert(actor, key);
            }
        }
        let gk_key = ssh_keygen(dir.path(), "gatekeeper", "ed25519");
        if mode == Mode::Require {
            toml.push_str(&format!(
                "[services.gatekeeper]\nkeys = [{:?}]\n",
                public(&gk_key)
            ));
        }
        let file = dir.path().join("approvers.toml");
        std::fs::write(&file, &toml).expect("write registry");
        let file = file.display().to_string();
        let gk_key = gk_key.display().to_string();
        let mut args = vec!["--approvers", file.as_str()];
        if mode == Mode::Require {
            args.extend(["--signatures", "require", "--key", gk_key.as_str()]);
        }
        let s = Stack::with_gatekeeper_args(&args).await;
        let mut clients = BTreeMap::new();
        for actor in ACTORS {
            let c = Client::connect(&s.url()).await.expect("connect");
            let c = match keys.get(actor) {
                Some(k) => c.with_signer(Signer::from_file(k).expect("key")),
                None => c,
            };
            clients.insert(actor, c);
        }
        let registry = std::sync::Arc::new(moira_service::Registry::parse(&toml).expect("parse"));
        Gates {
            s,
            mode,
            clients,
            registry,
            _dir: dir,
        }
    }

    /// The client that acts as `actor` (signing as them in require mode).
    fn by(&self, actor: &str) -> &Client {
        self.clients
            .get(actor)
            .unwrap_or_else(|| panic!("{actor} is not one of {ACTORS:?}"))
    }

    /// In require mode, the gate's whole trail verifies: every event
    /// signed (the fired timeout by the gate-keeper), the chain whole.
    async fn trail_verifies(&self, id: GateId) {
        if self.mode != Mode::Require {
            return;
        }
        let report = moira_service::verify::verify_gate(
            &self.s.client,
            id,
            &moira_service::verify::Registries::only(self.registry.clone()),
            moira_service::verify::Rules {
                require_signatures: true,
            },
        )
        .await
        .expect("verify");
        assert!(report.ok(), "{:?}", report.findings);
        assert!(
            report.findings.iter().all(|f| f.signer.is_some()),
            "every event is signed: {:?}",
            report.findings
        );
    }
}

/// Each test, once per mode.
macro_rules! in_both_modes {
    ($($name:ident),* $(,)?) => {
        mod signatures_off {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Mode::Off).await
                }
            )*
        }
        mod signatures_required {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Mode::Require).await
                }
            )*
        }
    };
}

in_both_modes!(
    approve_wakes_the_waiter,
    deny_records_reason_and_refuses_later_commands,
    n_of_m_with_roles_from_the_registry,
    self_approval_and_missing_inputs_are_refused_without_change,
    push_back_then_approve,
    cancel_by_requester,
    idempotent_open_with_an_id,
    timeout_fires_from_the_server_schedule_with_each_action,
    timeout_fires_after_the_server_was_down_across_the_deadline,
    concurrent_opens_of_one_id_store_one_gate,
    open_and_follow_sees_new_and_existing_gates,
);

fn approve(gate_id: GateId, actor: &str) -> ApproveGate {
    ApproveGate {
        gate_id,
        actor: actor.into(),
        ..Default::default()
    }
}

async fn approve_wakes_the_waiter(mode: Mode) {
    let g = Gates::start(mode, &[]).await;
    let gate = g
        .by("alice")
        .open(open("alice", "Deploy v1?"))
        .await
        .expect("open");
    assert_eq!(gate.status, GateStatus::Waiting);
    let waiter = {
        let c = g.s.client.clone();
        tokio::spawn(async move { c.wait(gate.id, WAIT).await })
    };
    let approved = g
        .by("bob")
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
    assert_eq!(g.s.client.show(gate.id).await.expect("show"), woken);
    g.trail_verifies(gate.id).await;
}

async fn deny_records_reason_and_refuses_later_commands(mode: Mode) {
    let g = Gates::start(mode, &[]).await;
    let gate = g
        .by("alice")
        .open(open("alice", "Drop table?"))
        .await
        .expect("open");
    let denied = g
        .by("bob")
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
    let again = g
        .by("carol")
        .approve(approve(gate.id, "carol"))
        .await
        .expect_err("refused");
    assert_eq!(again.code(), Some(ErrorCode::AlreadyDecided));
    assert_eq!(g.s.client.show(gate.id).await.expect("show"), denied);
    assert_eq!(terminal_events(&g.s.client, gate.id).await, 1);
    g.trail_verifies(gate.id).await;
}

async fn n_of_m_with_roles_from_the_registry(mode: Mode) {
    let g = Gates::start(
        mode,
        &[
            ("bob", &["owner"]),
            ("carol", &["owner", "sre"]),
            ("eve", &["dev"]),
        ],
    )
    .await;
    let gate = g
        .by("alice")
        .open(OpenGate {
            roles: vec!["owner".into()],
            approvals: Some(2),
            ..open("alice", "Rotate keys?")
        })
        .await
        .expect("open");

    let e = g
        .by("eve")
        .approve(approve(gate.id, "eve"))
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Some(ErrorCode::NotAllowed), "{e}");
    let one = g
        .by("bob")
        .approve(approve(gate.id, "bob"))
        .await
        .expect("bob approves");
    assert_eq!((one.status, one.approvals.len()), (GateStatus::Waiting, 1));
    let e = g
        .by("bob")
        .approve(approve(gate.id, "bob"))
        .await
        .expect_err("refused");
    assert_eq!(
        e.code(),
        Some(ErrorCode::NotAllowed),
        "a second approval by bob must not count: {e}"
    );
    let two = g
        .by("carol")
        .approve(approve(gate.id, "carol"))
        .await
        .expect("carol approves");
    assert_eq!(two.status, GateStatus::Approved);
    let by: Vec<&str> = two.approvals.iter().map(|a| a.by.as_str()).collect();
    assert_eq!(by, ["bob", "carol"]);
    assert_eq!(two.approved_by.as_deref(), Some("carol"));
    g.trail_verifies(gate.id).await;
}

async fn self_approval_and_missing_inputs_are_refused_without_change(mode: Mode) {
    let g = Gates::start(mode, &[]).await;
    let gate = g
        .by("alice")
        .open(OpenGate {
            allow_self_approval: Some(false),
            inputs: vec!["WINDOW".into(), "NOTE".into()],
            required: vec!["WINDOW".into()],
            ..open("alice", "Deploy?")
        })
        .await
        .expect("open");
    let before = g.s.client.show(gate.id).await.expect("show");

    let e = g
        .by("alice")
        .approve(approve(gate.id, "alice"))
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Some(ErrorCode::NotAllowed), "{e}");
    let e = g
        .by("bob")
        .approve(approve(gate.id, "bob"))
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Some(ErrorCode::MissingInput), "{e}");
    assert!(e.to_string().contains("WINDOW"), "{e}");
    assert_eq!(g.s.client.show(gate.id).await.expect("show"), before);

    let ok = g
        .by("bob")
        .approve(ApproveGate {
            inputs: [("WINDOW".into(), "sat".into())].into(),
            ..approve(gate.id, "bob")
        })
        .await
        .expect("approve with input");
    assert_eq!(ok.status, GateStatus::Approved);
    assert_eq!(ok.inputs.get("WINDOW").map(String::as_str), Some("sat"));
    g.trail_verifies(gate.id).await;
}

async fn push_back_then_approve(mode: Mode) {
    let g = Gates::start(mode, &[]).await;
    let gate = g
        .by("alice")
        .open(OpenGate {
            inputs: vec!["FEEDBACK".into()],
            ..open("alice", "Review the plan")
        })
        .await
        .expect("open");
    let mut follower = g.s.client.follow(gate.id).await.expect("follow");
    let pushed = g
        .by("bob")
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

    let done = g
        .by("bob")
        .approve(approve(gate.id, "bob"))
        .await
        .expect("approve");
    assert_eq!((done.status, done.iteration), (GateStatus::Approved, 2));
    assert_eq!(done.push_backs.len(), 1);
    assert_eq!(done.push_backs[0].comment.as_deref(), Some("too risky"));
    g.trail_verifies(gate.id).await;
}

async fn cancel_by_requester(mode: Mode) {
    let g = Gates::start(mode, &[]).await;
    let gate = g
        .by("alice")
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
    let e = g
        .by("mallory")
        .cancel(cancel("mallory"))
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Some(ErrorCode::NotAllowed));
    let done = g.by("alice").cancel(cancel("alice")).await.expect("cancel");
    assert_eq!(done.status, GateStatus::Cancelled);
    assert_eq!(
        g.s.client.wait(gate.id, WAIT).await.expect("wait").status,
        GateStatus::Cancelled
    );
    g.trail_verifies(gate.id).await;
}

async fn idempotent_open_with_an_id(mode: Mode) {
    let g = Gates::start(mode, &[]).await;
    let id = GateId::new();
    let spec = OpenGate {
        gate_id: Some(id),
        timeout_ms: Some(3_600_000),
        ..open("runner", "Deploy?")
    };
    let runner = g.by("runner");
    let a = runner.open(spec.clone()).await.expect("first open");
    let b = runner.open(spec.clone()).await.expect("second open");
    assert_eq!(a, b);
    let (events, _) = g.s.client.read_events(id).await.expect("events");
    assert_eq!(events.len(), 1, "opening twice stores one GateOpened");
    let e = runner
        .open(OpenGate {
            message: "Something else".into(),
            ..spec
        })
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Some(ErrorCode::Conflict));
    g.trail_verifies(id).await;
}

async fn timeout_fires_from_the_server_schedule_with_each_action(mode: Mode) {
    let g = Gates::start(mode, &[]).await;
    let alice = g.by("alice");
    let mut gates = Vec::new();
    for (action, status) in [
        (OnTimeout::Fail, GateStatus::TimedOut),
        (OnTimeout::Approve, GateStatus::Approved),
        (OnTimeout::Deny, GateStatus::Denied),
    ] {
        let gate = alice
            .open(OpenGate {
                timeout_ms: Some(1000),
                on_timeout: Some(action),
                ..open("alice", "Quick?")
            })
            .await
            .expect("open");
        gates.push((gate.id, status));
    }
    // A decided gate's schedule is purged with the decision: it never fires.
    let decided = alice
        .open(OpenGate {
            timeout_ms: Some(1000),
            ..open("alice", "Decided early")
        })
        .await
        .expect("open");
    g.by("bob")
        .approve(approve(decided.id, "bob"))
        .await
        .expect("approve");
    for (id, status) in gates {
        let done = g.s.client.wait(id, WAIT).await.expect("wait");
        assert_eq!(done.status, status);
        assert!(done.timed_out);
        assert_eq!(done.decided_by.as_deref(), Some("moira:timeout"));
        g.trail_verifies(id).await;
    }
    let (events, _) = g.s.client.read_events(decided.id).await.expect("events");
    assert_eq!(events.len(), 2, "open + approve, no timeout event");
    g.trail_verifies(decided.id).await;
}

async fn timeout_fires_after_the_server_was_down_across_the_deadline(mode: Mode) {
    let mut g = Gates::start(mode, &[]).await;
    let gate = g
        .by("alice")
        .open(OpenGate {
            timeout_ms: Some(1500),
            ..open("alice", "Overnight?")
        })
        .await
        .expect("open");
    let deadline =
        humantime::parse_rfc3339(gate.timeout_at.as_deref().expect("deadline")).expect("rfc3339");
    g.s.server.stop();
    // The deadline passes while the server is down.
    if let Ok(left) = deadline.duration_since(SystemTime::now()) {
        tokio::time::sleep(left + Duration::from_millis(500)).await;
    }
    g.s.server.restart();
    let client = Client::connect(&g.s.url()).await.expect("reconnect");
    let done = client.wait(gate.id, WAIT).await.expect("wait");
    assert_eq!(done.status, GateStatus::TimedOut);
    assert_eq!(terminal_events(&client, gate.id).await, 1);
    g.s.client = client;
    g.trail_verifies(gate.id).await;
}

async fn concurrent_opens_of_one_id_store_one_gate(mode: Mode) {
    let g = Gates::start(mode, &[]).await;
    let id = GateId::new();
    let spec = OpenGate {
        gate_id: Some(id),
        timeout_ms: Some(3_600_000),
        ..open("runner", "Deploy?")
    };
    let mut tasks = Vec::new();
    for _ in 0..10 {
        // The same signing client, shared: each open is signed on its own.
        let (c, spec) = (g.by("runner").clone(), spec.clone());
        tasks.push(tokio::spawn(async move { c.open(spec).await }));
    }
    for t in tasks {
        let gate = t.await.expect("join").expect("every open succeeds");
        assert_eq!((gate.id, gate.status), (id, GateStatus::Waiting));
    }
    let (events, _) = g.s.client.read_events(id).await.expect("events");
    assert_eq!(events.len(), 1, "one GateOpened for ten opens");
    g.trail_verifies(id).await;
}

async fn open_and_follow_sees_new_and_existing_gates(mode: Mode) {
    let g = Gates::start(mode, &[]).await;
    let alice = g.by("alice");
    // New gate: every event arrives on the live feed.
    let (gate, mut f) = alice
        .open_and_follow(open("alice", "New"))
        .await
        .expect("open");
    assert_eq!(f.current().map(|x| x.status), Some(GateStatus::Waiting));
    g.by("bob")
        .approve(approve(gate.id, "bob"))
        .await
        .expect("approve");
    let done = f
        .wait_until(|x| x.status.is_terminal())
        .await
        .expect("woken");
    assert_eq!(done.status, GateStatus::Approved);

    // An idempotent re-open of a decided gate stores nothing new, so the
    // follower must learn its state by reading it.
    let spec = OpenGate {
        gate_id: Some(GateId::new()),
        ..open("alice", "Again")
    };
    let first = alice.open(spec.clone()).await.expect("open");
    g.by("bob")
        .approve(approve(first.id, "bob"))
        .await
        .expect("approve");
    let (_, f) = alice.open_and_follow(spec).await.expect("re-open");
    assert_eq!(f.current().map(|x| x.status), Some(GateStatus::Approved));
    g.trail_verifies(gate.id).await;
    g.trail_verifies(first.id).await;
}
