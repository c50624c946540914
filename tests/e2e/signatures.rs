//! Signed commands with real SSH keys made by `ssh-keygen`, one held by a
//! real `ssh-agent`, against a gate-keeper with `--signatures require`.
//! Every forgery is refused with its code and stores nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use moira_client::protocol::time::now_ms;
use moira_client::protocol::{Command, CommandId};
use moira_client::signing::Signer;
use moira_client::{ApproveGate, Client, ErrorCode, GateId, GateStatus, OpenGate, PushBackGate};
use moira_testkit::TempDir;
use moira_tests::{moira_env, ProcBuilder};

use crate::Stack;

/// Makes an SSH key with the real ssh-keygen; returns the private key path.
pub(crate) fn ssh_keygen(dir: &Path, name: &str, kind: &str) -> PathBuf {
    // About 1 in 256 ECDSA keys cannot be read by this build's ssh-key
    // library (see SignError::Unreadable): make another.
    for _ in 0..20 {
        let path = keygen_once(dir, name, kind);
        if !matches!(
            moira_client::signing::Signer::from_file(&path),
            Err(moira_client::signing::SignError::Unreadable(..))
        ) {
            return path;
        }
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(format!("{}.pub", path.display()));
    }
    panic!("ssh-keygen kept making keys that cannot be read");
}

fn keygen_once(dir: &Path, name: &str, kind: &str) -> PathBuf {
    let path = dir.join(name);
    let mut args = vec!["-q", "-t", kind, "-N", "", "-C", name, "-f"];
    if kind == "ecdsa" {
        args = vec!["-q", "-t", "ecdsa", "-b", "256", "-N", "", "-C", name, "-f"];
    }
    let out = std::process::Command::new("ssh-keygen")
        .args(&args)
        .arg(&path)
        .output()
        .expect("ssh-keygen is installed (./just tools installs openssh-client)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

pub(crate) fn public(path: &Path) -> String {
    std::fs::read_to_string(path.with_extension("pub"))
        .or_else(|_| std::fs::read_to_string(format!("{}.pub", path.display())))
        .expect("public key")
        .trim()
        .to_string()
}

/// `ssh-keygen -Y verify -n moira` of `statement` (its signature beside it
/// as `.sig`, unless `sig` names one) as `identity`, against `allowed`.
pub(crate) fn ssh_keygen_verify(
    allowed: &Path,
    statement: &Path,
    sig: Option<&Path>,
    identity: &str,
) -> std::process::Output {
    let sig = sig
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(format!("{}.sig", statement.display())));
    std::process::Command::new("ssh-keygen")
        .args(["-Y", "verify", "-n", "moira", "-I", identity, "-f"])
        .arg(allowed)
        .arg("-s")
        .arg(sig)
        .stdin(std::fs::File::open(statement).expect("open the statement"))
        .output()
        .expect("ssh-keygen")
}

/// Starts a real ssh-agent on a socket in `dir` holding `key`, then removes
/// the key file, so only the agent can sign with it. Returns the agent and
/// its socket.
pub(crate) fn agent_holding(dir: &Path, key: &Path) -> (moira_tests::Proc, PathBuf) {
    let sock = dir.join("agent.sock");
    let agent = ProcBuilder::new("ssh-agent", "ssh-agent")
        .args(["-D", "-a"])
        .arg(&sock)
        .spawn()
        .expect("ssh-agent is installed");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never listened: {:?}",
            agent.output()
        );
        agent.try_wait_for(&["never"], 1, Duration::from_millis(20));
    }
    let added = std::process::Command::new("ssh-add")
        .arg(key)
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .expect("ssh-add");
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    std::fs::remove_file(key).expect("remove the key file");
    (agent, sock)
}

pub(crate) struct Signed {
    pub(crate) s: Stack,
    pub(crate) dir: TempDir,
    pub(crate) runner: PathBuf,
    pub(crate) alice: PathBuf,
    pub(crate) bob: PathBuf,
    bob_ecdsa: PathBuf,
    pub(crate) carol: PathBuf,
    pub(crate) mallory: PathBuf,
}

impl Signed {
    pub(crate) async fn start() -> Signed {
        let dir = TempDir::new("moira-signed").expect("tmp");
        let alice = ssh_keygen(dir.path(), "alice", "ed25519");
        let bob = ssh_keygen(dir.path(), "bob", "ed25519");
        let bob_ecdsa = ssh_keygen(dir.path(), "bob-ecdsa", "ecdsa");
        let carol = ssh_keygen(dir.path(), "carol", "ed25519");
        let mallory = ssh_keygen(dir.path(), "mallory", "ed25519");
        let runner = ssh_keygen(dir.path(), "runner", "ed25519");
        let gatekeeper = ssh_keygen(dir.path(), "gatekeeper", "ed25519");
        // dave shares carol's key: a mistake that must not let one key
        // count as two approvals.
        let registry = format!(
            "[users.alice]\nkeys = [\"{}\"]\n[users.bob]\nkeys = [\"{}\", \"{}\"]\n\
             [users.carol]\nkeys = [\"{}\"]\n[users.dave]\nkeys = [\"{}\"]\n[users.mallory]\nkeys = [\"{}\"]\n\
             [services.runner]\nkeys = [\"{}\"]\n[services.gatekeeper]\nkeys = [\"{}\"]\n",
            public(&alice),
            public(&bob),
            public(&bob_ecdsa),
            public(&carol),
            public(&carol),
            public(&mallory),
            public(&runner),
            public(&gatekeeper),
        );
        let file = dir.path().join("approvers.toml");
        std::fs::write(&file, registry).expect("write registry");
        let s = Stack::with_gatekeeper_args(&[
            "--signatures",
            "require",
            "--approvers",
            &file.display().to_string(),
            "--key",
            &gatekeeper.display().to_string(),
        ])
        .await;
        Signed {
            s,
            dir,
            runner,
            alice,
            bob,
            bob_ecdsa,
            carol,
            mallory,
        }
    }

    /// The approvers file's path, as the CLI and services take it.
    pub(crate) fn registry(&self) -> String {
        self.dir.path().join("approvers.toml").display().to_string()
    }

    pub(crate) async fn as_key(&self, key: &Path) -> Client {
        Client::connect(&self.s.url())
            .await
            .expect("connect")
            .with_signer(Signer::from_file(key).expect("key"))
    }

    async fn open(&self, approvers: &[&str], approvals: u32) -> GateId {
        let alice = self.as_key(&self.alice).await;
        alice
            .open(OpenGate {
                actor: "alice".into(),
                message: "Ship it?".into(),
                approvers: approvers.iter().map(|a| a.to_string()).collect(),
                approvals: Some(approvals),
                ..Default::default()
            })
            .await
            .expect("a signed open")
            .id
    }

    /// Submits `yaml` as alice, signed with her key; returns the run id.
    pub(crate) async fn submit(&self, yaml: &str) -> String {
        self.as_key(&self.alice)
            .await
            .submit_run(yaml, &Default::default(), "alice")
            .await
            .expect("signed submit")
    }

    /// A gate alice opens with a one-second deadline, once it timed out.
    pub(crate) async fn timed_out_gate(&self) -> GateId {
        let gate = self
            .as_key(&self.alice)
            .await
            .open(OpenGate {
                actor: "alice".into(),
                message: "Quick?".into(),
                approvers: vec!["bob".into()],
                timeout_ms: Some(1_000),
                ..Default::default()
            })
            .await
            .expect("a signed open with a timeout")
            .id;
        let g = self
            .s
            .client
            .wait(gate, Some(Duration::from_secs(30)))
            .await
            .expect("wait");
        assert_eq!(g.status, GateStatus::TimedOut);
        gate
    }

    async fn events(&self, id: GateId) -> usize {
        self.s.client.read_events(id).await.expect("read").0.len()
    }
}

/// A correctly signed command, built by hand so a test can alter it.
async fn signed_by(client: &Client, key: &Path, mut cmd: Command, at: u64) -> Command {
    let id = CommandId::new();
    match &mut cmd {
        Command::Approve(c) => c.id = Some(id),
        Command::PushBack(c) => c.id = Some(id),
        _ => unreachable!("only approvals and push-backs here"),
    }
    let bytes = client.statement(&cmd, id, at).await.expect("statement");
    let sig = Signer::from_file(key)
        .expect("key")
        .sign(&bytes)
        .expect("sign");
    cmd.set_signature(sig, at);
    cmd
}

pub(crate) fn approve(gate: GateId, actor: &str, comment: &str) -> Command {
    Command::Approve(ApproveGate {
        gate_id: gate,
        actor: actor.into(),
        comment: Some(comment.into()),
        ..Default::default()
    })
}

fn refused(r: Result<moira_client::GateView, moira_client::ClientError>) -> ErrorCode {
    match r {
        Err(e) => e.code().unwrap_or_else(|| panic!("not a refusal: {e}")),
        Ok(g) => panic!("accepted: {g:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_commands_succeed_and_every_forgery_is_refused_with_its_code() {
    let t = Signed::start().await;
    let plain = &t.s.client;
    // Unsigned: refused, whatever it is.
    let e = refused(
        plain
            .open(OpenGate {
                actor: "alice".into(),
                message: "m".into(),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(e, ErrorCode::Unsigned);
    let gate = t.open(&["bob", "carol"], 1).await;
    let before = t.events(gate).await;
    assert_eq!(
        refused(plain.send(approve(gate, "bob", "ok")).await),
        ErrorCode::Unsigned
    );

    let now = now_ms();
    // bob's name, mallory's key; bob's name, alice's key.
    for key in [&t.mallory, &t.alice] {
        let c = signed_by(plain, key, approve(gate, "bob", "ok"), now).await;
        assert_eq!(refused(plain.send(c).await), ErrorCode::WrongKey);
    }
    // A tampered comment.
    let mut c = signed_by(plain, &t.bob, approve(gate, "bob", "ok"), now).await;
    if let Command::Approve(a) = &mut c {
        a.comment = Some("ok, and ship the other build too".into());
    }
    assert_eq!(refused(plain.send(c).await), ErrorCode::BadSignature);
    // Moved to another gate.
    let other = t.open(&["bob"], 1).await;
    let mut c = signed_by(plain, &t.bob, approve(gate, "bob", "ok"), now).await;
    if let Command::Approve(a) = &mut c {
        a.gate_id = other;
    }
    assert_eq!(refused(plain.send(c).await), ErrorCode::BadSignature);
    // Signed 10 minutes ago.
    let c = signed_by(plain, &t.bob, approve(gate, "bob", "ok"), now - 600_000).await;
    assert_eq!(refused(plain.send(c).await), ErrorCode::Stale);
    // Garbage where the signature goes.
    let mut c = approve(gate, "bob", "ok");
    if let Command::Approve(a) = &mut c {
        a.id = Some(CommandId::new());
    }
    c.set_signature(
        "-----BEGIN SSH SIGNATURE-----\nnope\n-----END SSH SIGNATURE-----\n".into(),
        now,
    );
    assert_eq!(refused(plain.send(c).await), ErrorCode::BadSignature);
    assert_eq!(
        t.events(gate).await,
        before,
        "no refused command stored anything"
    );

    // A signature from iteration 1, replayed after a push-back.
    let early = signed_by(plain, &t.bob, approve(gate, "bob", "ok"), now_ms()).await;
    let pb = signed_by(
        plain,
        &t.carol,
        Command::PushBack(PushBackGate {
            gate_id: gate,
            actor: "carol".into(),
            comment: Some("redo".into()),
            ..Default::default()
        }),
        now_ms(),
    )
    .await;
    let pushed = plain.send(pb.clone()).await.expect("carol pushes back");
    assert_eq!(pushed.iteration, 2);
    // The same signed push-back sent again (a lost reply) is a no-op, not a
    // bad signature although the iteration moved.
    let again = plain.send(pb).await.expect("a retry is answered");
    assert_eq!(again.iteration, 2);
    assert_eq!(refused(plain.send(early).await), ErrorCode::BadSignature);

    // bob's ECDSA key signs for him too.
    let bob = t.as_key(&t.bob_ecdsa).await;
    let done = bob.send(approve(gate, "bob", "ok")).await.expect("approve");
    assert_eq!(done.status, GateStatus::Approved);
    let key = done.approvals[0]
        .key
        .clone()
        .expect("the approval records its key");
    assert!(key.starts_with("SHA256:"), "{key}");
    let (events, _) = t.s.client.read_events(gate).await.expect("events");
    let last = match &events.last().expect("events").event {
        moira_client::protocol::event::Decoded::Event(e) => e.clone(),
        other => panic!("{other:?}"),
    };
    assert!(last
        .signature
        .as_deref()
        .is_some_and(|s| s.contains("BEGIN SSH SIGNATURE")));
    assert!(
        last.registry.is_some(),
        "the decision records the registry revision"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_of_m_counts_distinct_signers_not_names() {
    let t = Signed::start().await;
    let gate = t.open(&["carol", "dave", "bob"], 2).await;
    let carol = t.as_key(&t.carol).await;
    carol
        .send(approve(gate, "carol", "1"))
        .await
        .expect("carol");
    // dave's registry entry holds carol's key: the same signer again.
    let e = refused(carol.send(approve(gate, "dave", "2")).await);
    assert_eq!(e, ErrorCode::NotAllowed);
    let bob = t.as_key(&t.bob).await;
    let done = bob.send(approve(gate, "bob", "2")).await.expect("bob");
    assert_eq!(done.status, GateStatus::Approved);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_in_a_real_ssh_agent_signs_from_the_cli() {
    let t = Signed::start().await;
    let gate = t.open(&["bob"], 1).await;
    // The private key file is gone: only the agent can sign now.
    let (_agent, sock) = agent_holding(t.dir.path(), &t.bob);
    let sock_s = sock.display().to_string();
    let env = [("SSH_AUTH_SOCK", sock_s.as_str())];
    let (code, _, err) = moira_env(
        &t.s.url(),
        &[
            "--as",
            "bob",
            "--agent",
            "gate",
            "approve",
            &gate.to_string(),
            "--comment",
            "from the agent",
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let g = t.s.client.show(gate).await.expect("show");
    assert_eq!(g.status, GateStatus::Approved);
    assert_eq!(g.approvals[0].comment.as_deref(), Some("from the agent"));
    // Unsigned from the CLI: a clear refusal.
    let other = t.open(&["bob"], 1).await;
    let (code, _, err) = moira_env(
        &t.s.url(),
        &["--as", "bob", "gate", "approve", &other.to_string()],
        &[],
    );
    assert_eq!(code, 1);
    assert!(err.contains("unsigned") && err.contains("--key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_tool_signs_the_statement_with_ssh_keygen() {
    let t = Signed::start().await;
    let gate = t.open(&["bob"], 1).await.to_string();
    let url = t.s.url();
    let id = CommandId::new().to_string();
    let at = now_ms().to_string();
    let d = t.dir.path();
    // The README's shell example, step by step.
    let (code, statement, err) = moira_env(
        &url,
        &[
            "--as",
            "bob",
            "gate",
            "statement",
            &gate,
            "--verb",
            "approve",
            "--comment",
            "checks green",
            "--command-id",
            &id,
            "--signed-at",
            &at,
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    std::fs::write(d.join("st.json"), &statement).expect("write");
    let signed = std::process::Command::new("ssh-keygen")
        .args(["-Y", "sign", "-n", "moira", "-f"])
        .arg(&t.bob)
        .arg(d.join("st.json"))
        .output()
        .expect("ssh-keygen");
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    let sig = d.join("st.json.sig");
    let (code, _, err) = moira_env(
        &url,
        &[
            "--as",
            "bob",
            "gate",
            "approve",
            &gate,
            "--comment",
            "checks green",
            "--command-id",
            &id,
            "--signed-at",
            &at,
            "--signature",
            &sig.display().to_string(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    // And anyone checks it with stock ssh-keygen.
    std::fs::write(
        d.join("allowed_signers"),
        format!("bob {}\n", public(&t.bob)),
    )
    .expect("write");
    let verify =
        |file: &Path| ssh_keygen_verify(&d.join("allowed_signers"), file, Some(&sig), "bob");
    assert!(verify(&d.join("st.json")).status.success());
    let mut flipped = statement.clone().into_bytes();
    flipped[40] ^= 1;
    std::fs::write(d.join("flipped.json"), flipped).expect("write");
    assert!(
        !verify(&d.join("flipped.json")).status.success(),
        "one flipped byte fails"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trail_verifies_and_a_forged_event_is_reported() {
    let t = Signed::start().await;
    let url = t.s.url();
    let registry = t.registry();
    let gate = t.open(&["bob"], 1).await;
    let bob = t.as_key(&t.bob).await;
    bob.send(approve(gate, "bob", "ok")).await.expect("approve");
    let (code, out, err) = verify_cli(&url, gate, &registry);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("ok    #") && out.contains("every event verifies"),
        "{out}"
    );
    assert!(out.contains("GateApproved by bob, signed SHA256:"), "{out}");

    // Someone with broker admin rights appends a GateApproved by hand.
    let victim = t.open(&["bob"], 1).await;
    let forged = crate::hand_made(
        victim,
        "bob",
        moira_client::protocol::GateEvent::GateApproved {
            comment: Some("trust me".into()),
            inputs: Default::default(),
        },
        None,
    );
    crate::store_by_hand(&t.s.client, &forged).await;
    let (code, out, _) = verify_cli(&url, victim, &registry);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL") && out.contains("hash chain") && out.contains("not signed"),
        "{out}"
    );
    let (code, _, err) = moira_env(
        &url,
        &[
            "audit",
            "verify",
            "--approvers",
            &registry,
            "--require-signatures",
        ],
        &[],
    );
    assert_eq!(code, 1, "one gate of the lot is forged: {err}");
    assert!(err.contains("1 not verified"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_decisions_verify_with_plain_ssh_keygen() {
    let t = Signed::start().await;
    let url = t.s.url();
    let registry = t.registry();
    let gate = t.open(&["bob", "carol"], 2).await;
    t.as_key(&t.bob)
        .await
        .send(approve(gate, "bob", "1"))
        .await
        .expect("bob");
    t.as_key(&t.carol)
        .await
        .send(approve(gate, "carol", "2"))
        .await
        .expect("carol");
    let dir = t.dir.path().join("export");
    let d = dir.display().to_string();
    let (code, out, err) = moira_env(
        &url,
        &[
            "audit",
            "export",
            &gate.to_string(),
            "--dir",
            &d,
            "--approvers",
            &registry,
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    // Each line: the statement file, and the identity to verify it as.
    let files: Vec<&str> = out
        .lines()
        .map(|l| l.split("  (-I ").next().unwrap_or(l))
        .collect();
    assert_eq!(files.len(), 3, "the open and two approvals: {out}");
    let verify = |statement: &Path, actor: &str| {
        ssh_keygen_verify(&dir.join("allowed_signers"), statement, None, actor)
    };
    for (file, actor) in files.iter().zip(["alice", "bob", "carol"]) {
        let v = verify(Path::new(file), actor);
        assert!(
            v.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&v.stderr)
        );
        // Another signer's name does not verify.
        assert!(!verify(Path::new(file), "mallory").status.success());
    }
    // One flipped byte fails.
    let text = std::fs::read(files[1]).expect("read");
    let mut flipped = text.clone();
    flipped[60] ^= 1;
    std::fs::write(files[1], &flipped).expect("write");
    assert!(!verify(Path::new(files[1]), "bob").status.success());
    // The decisions name the gate as it was opened: sha256sum of the
    // exported definition is the statement's subject digest.
    let sum = std::process::Command::new("sha256sum")
        .arg(dir.join("opened.msgpack"))
        .output()
        .expect("sha256sum");
    let sum = String::from_utf8_lossy(&sum.stdout);
    let digest = sum.split_whitespace().next().expect("a digest");
    let st: serde_json::Value = serde_json::from_slice(&text).expect("json statement");
    assert_eq!(st["subject"][0]["digest"]["sha256"], digest);
    assert_eq!(st["predicate"]["verb"], "approve");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_decision_written_into_the_stream_never_moves_a_parked_run() {
    let t = Signed::start().await;
    let registry = t.registry();
    let work = t.dir.path().join("work").display().to_string();
    let runner = ProcBuilder::new(moira_tests::bin("moira-runner"), "moira-runner")
        .args([
            "--nats-url",
            &t.s.url(),
            "--work-dir",
            &work,
            "--signatures",
            "require",
        ])
        .args(["--approvers", &registry, "--key"])
        .arg(&t.runner)
        .env("MOIRA_LOG", "info")
        .spawn()
        .expect("spawn runner");
    runner.wait_for_line("moira-runner ready", Duration::from_secs(20));
    let yaml = "name: guarded\nsteps:\n  - name: g\n    use: moira.gate\n    with: { message: \"Ship?\", approvers: { users: [bob] } }\n  - {name: after, run: 'true', depends_on: [g]}\n";
    let run = t.submit(yaml).await;
    let gate = parked_on(&t.s.client, &run).await;
    // An approval that never went through a gate-keeper, written with
    // broker admin rights, naming the run so the resumer sees it.
    let forged = crate::hand_made(
        gate,
        "bob",
        moira_client::protocol::GateEvent::GateApproved {
            comment: None,
            inputs: Default::default(),
        },
        Some(run.clone()),
    );
    crate::store_by_hand(&t.s.client, &forged).await;
    runner.wait_for_line("does not verify", Duration::from_secs(30));
    let still = t.s.client.show_run(&run).await.expect("run");
    let g = still.steps.iter().find(|s| s.name == "g").expect("g");
    assert_eq!(g.status, moira_client::protocol::run::StepStatus::Waiting);
    assert_eq!(
        still.steps[1].status,
        moira_client::protocol::run::StepStatus::Pending
    );
    // A signed decision through the gate-keeper does move a run.
    let run2 = t.submit(yaml).await;
    let gate2 = parked_on(&t.s.client, &run2).await;
    t.as_key(&t.bob)
        .await
        .send(approve(gate2, "bob", "signed"))
        .await
        .expect("bob approves");
    let done = tokio::time::timeout(Duration::from_secs(30), t.s.client.wait_run(&run2))
        .await
        .expect("in time")
        .expect("wait");
    assert_eq!(
        done.status,
        moira_client::protocol::run::RunStatus::Succeeded
    );
    // The runner signed its open with its service key: the trail verifies.
    let (code, out, err) = verify_cli(&t.s.url(), gate2, &registry);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("GateOpened by alice, signed SHA256:"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_without_a_service_key_cannot_open_gates_in_require_mode() {
    let t = Signed::start().await;
    let registry = t.registry();
    let work = t.dir.path().join("work").display().to_string();
    let runner = |key: Option<&Path>| {
        let mut b = ProcBuilder::new(moira_tests::bin("moira-runner"), "moira-runner")
            .args([
                "--nats-url",
                &t.s.url(),
                "--work-dir",
                &work,
                "--signatures",
                "require",
            ])
            .args(["--approvers", &registry])
            .env("MOIRA_LOG", "info");
        if let Some(k) = key {
            b = b.arg("--key").arg(k);
        }
        b.spawn().expect("spawn runner")
    };
    // No key at all: the runner says what it needs and does not start.
    let mut keyless = runner(None);
    let line = keyless.wait_for_line("[services.", Duration::from_secs(30));
    assert!(line.contains("--key"), "{line}");
    let status = keyless.wait(Duration::from_secs(30)).expect("exits");
    assert!(!status.success());
    // mallory's key is a user's, not a service's: its gate opens are
    // refused and the step ends with the code.
    let mut wrong = runner(Some(&t.mallory));
    wrong.wait_for_line("moira-runner ready", Duration::from_secs(20));
    let yaml = "name: keyless\nsteps:\n  - name: g\n    use: moira.gate\n    with: { message: \"Ship?\", approvers: { users: [bob] } }\n";
    let run = t.submit(yaml).await;
    let done = tokio::time::timeout(Duration::from_secs(30), t.s.client.wait_run(&run))
        .await
        .unwrap_or_else(|_| panic!("the run ends in time: {:?}", wrong.output()))
        .expect("wait");
    let g = &done.steps[0];
    assert_eq!(
        g.status,
        moira_client::protocol::run::StepStatus::Aborted,
        "{done:?}"
    );
    assert!(
        g.reason.as_deref().is_some_and(|r| r.contains("wrong_key")),
        "{g:?}"
    );
    wrong.stop(Duration::from_secs(10));
}

/// Waits until step `g` of the run waits on its gate; returns the gate.
pub(crate) async fn parked_on(client: &Client, run: &str) -> GateId {
    let parked = tokio::time::timeout(
        Duration::from_secs(30),
        client.wait_run_until(run, |r| {
            r.steps
                .get("g")
                .is_some_and(|s| s.status == moira_client::protocol::run::StepStatus::Waiting)
        }),
    )
    .await
    .expect("parks in time")
    .expect("wait");
    parked
        .steps
        .iter()
        .find(|s| s.name == "g")
        .and_then(|s| s.gate_id)
        .expect("the gate")
}

/// The replicas of a KV bucket, from its stream's config.
async fn bucket_replicas(url: &str, bucket: &str) -> usize {
    let js = async_nats::jetstream::new(async_nats::connect(url).await.expect("connect"));
    let mut stream = js
        .get_stream(format!("KV_{bucket}"))
        .await
        .unwrap_or_else(|e| panic!("no {bucket} bucket: {e}"));
    stream.info().await.expect("info").config.num_replicas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_the_registry_bucket_takes_the_gate_streams_replicas_whoever_creates_it() {
    let dir = TempDir::new("moira-registry-r3").expect("tmp");
    let d = dir.path();
    let alice = ssh_keygen(d, "alice", "ed25519");
    std::fs::write(
        d.join("reg.toml"),
        format!(
            "[users.alice]\nroles = [\"admin\"]\nkeys = [\"{}\"]\n",
            public(&alice)
        ),
    )
    .expect("write");
    // Through the CLI: the bucket does not exist yet, the R3 gate stream does.
    let cluster = moira_tests::Cluster::start();
    let url = cluster.urls();
    let gk = moira_tests::gatekeeper(&url, &["--replicas", "3"]);
    let (code, _, err) = moira_env(
        &url,
        &[
            "--as",
            "alice",
            "--key",
            &alice.display().to_string(),
            "approvers",
            "apply",
            &d.join("reg.toml").display().to_string(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        bucket_replicas(&cluster.nodes[0].url(), "MOIRA_REGISTRY").await,
        3
    );
    drop(gk);
    drop(cluster);
    // Through a gate-keeper following the bucket on a fresh cluster: it
    // makes the stream first, then the bucket.
    let cluster = moira_tests::Cluster::start();
    let url = cluster.urls();
    let _gk = moira_tests::gatekeeper(&url, &["--replicas", "3", "--approvers-kv"]);
    assert_eq!(
        bucket_replicas(&cluster.nodes[0].url(), "MOIRA_REGISTRY").await,
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_registry_changes_live_on_two_gatekeepers_and_only_an_admin_can_change_it() {
    let dir = TempDir::new("moira-registry").expect("tmp");
    let d = dir.path();
    let (alice, bob, carol, mallory) = (
        ssh_keygen(d, "alice", "ed25519"),
        ssh_keygen(d, "bob", "ed25519"),
        ssh_keygen(d, "carol", "ed25519"),
        ssh_keygen(d, "mallory", "ed25519"),
    );
    let server = moira_tests::NatsServer::start();
    let url = server.url();
    let gk_key = ssh_keygen(d, "gatekeeper", "ed25519");
    let gk_key = gk_key.display().to_string();
    let args = [
        "--approvers-kv",
        "--signatures",
        "require",
        "--key",
        gk_key.as_str(),
    ];
    let gk1 = moira_tests::gatekeeper(&url, &args);
    let gk2 = moira_tests::gatekeeper(&url, &args);
    let v1 = format!(
        "[users.alice]\nroles = [\"admin\"]\nkeys = [\"{}\"]\n[users.bob]\nkeys = [\"{}\"]\n",
        public(&alice),
        public(&bob)
    );
    let v2 = format!("{v1}[users.carol]\nkeys = [\"{}\"]\n", public(&carol));
    let v3 = format!("{v2}[users.mallory]\nkeys = [\"{}\"]\n", public(&mallory));
    for (name, text) in [("v1", &v1), ("v2", &v2), ("v3", &v3)] {
        std::fs::write(d.join(format!("{name}.toml")), text).expect("write");
    }
    let apply = |who: &str, key: &Path, file: &str| {
        moira_env(
            &url,
            &[
                "--as",
                who,
                "--key",
                &key.display().to_string(),
                "approvers",
                "apply",
                &d.join(file).display().to_string(),
            ],
            &[],
        )
    };
    let (code, _, err) = apply("alice", &alice, "v1.toml");
    assert_eq!(code, 0, "{err}");
    for gk in [&gk1, &gk2] {
        gk.wait_for_nth_line("approvers registry in force", 1, Duration::from_secs(20));
    }
    let as_key = |key: &Path| {
        let url = url.clone();
        let key = key.to_path_buf();
        async move {
            Client::connect(&url)
                .await
                .expect("connect")
                .with_signer(Signer::from_file(&key).expect("key"))
        }
    };
    let open = |approvers: Vec<String>| OpenGate {
        actor: "alice".into(),
        message: "Ship?".into(),
        approvers,
        ..Default::default()
    };
    let a = as_key(&alice).await;
    let g = a.open(open(vec!["carol".into()])).await.expect("open").id;
    let c = as_key(&carol).await;
    assert_eq!(
        refused(c.send(approve(g, "carol", "1")).await),
        ErrorCode::WrongKey
    );
    // v2 adds carol; both gate-keepers take it without a restart.
    let (code, _, err) = apply("alice", &alice, "v2.toml");
    assert_eq!(code, 0, "{err}");
    for gk in [&gk1, &gk2] {
        gk.wait_for_nth_line("approvers registry in force", 2, Duration::from_secs(20));
    }
    for _ in 0..4 {
        // Several gates, so both gate-keepers of the queue group answer.
        let g = a.open(open(vec!["carol".into()])).await.expect("open").id;
        let done = c
            .send(approve(g, "carol", "ok"))
            .await
            .expect("carol approves");
        assert_eq!(done.status, GateStatus::Approved);
    }
    // bob is no admin: the CLI refuses before writing ...
    let (code, _, err) = apply("bob", &bob, "v3.toml");
    assert_eq!(code, 1);
    assert!(err.contains("admin"), "{err}");
    // ... and a value written straight into the bucket is refused by every
    // gate-keeper, which keeps v2.
    let forged = moira_service::live::SignedRegistry::sign(
        &v3,
        "bob",
        &Signer::from_file(&bob).expect("key"),
    )
    .expect("sign");
    let kv = moira_service::live::bucket(&Client::connect(&url).await.expect("connect"))
        .await
        .expect("bucket");
    kv.put(
        moira_service::live::KEY,
        serde_json::to_vec(&forged).expect("json").into(),
    )
    .await
    .expect("put");
    for gk in [&gk1, &gk2] {
        gk.wait_for_line("approvers registry update refused", Duration::from_secs(20));
    }
    let m = as_key(&mallory).await;
    let g = a.open(open(vec!["mallory".into()])).await.expect("open").id;
    assert_eq!(
        refused(m.send(approve(g, "mallory", "x")).await),
        ErrorCode::WrongKey
    );
    let (code, out, err) = moira_env(&url, &["approvers", "show"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("signed by alice")
            && out.contains("[users.carol]")
            && !out.contains("mallory"),
        "{out}{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_deny_cancel_and_a_timeout_work_in_require_mode_and_verify() {
    let t = Signed::start().await;
    let url = t.s.url();
    let registry = t.registry();
    let bob = t.as_key(&t.bob).await;
    let alice = t.as_key(&t.alice).await;
    // Deny, signed by an approver.
    let denied = t.open(&["bob"], 1).await;
    let g = bob
        .send(Command::Deny(moira_client::DenyGate {
            gate_id: denied,
            actor: "bob".into(),
            reason: "not today".into(),
            ..Default::default()
        }))
        .await
        .expect("signed deny");
    assert_eq!(g.status, GateStatus::Denied);
    // Cancel, signed by the requester.
    let cancelled = t.open(&["bob"], 1).await;
    let g = alice
        .send(Command::Cancel(moira_client::CancelGate {
            gate_id: cancelled,
            actor: "alice".into(),
            reason: Some("superseded".into()),
            ..Default::default()
        }))
        .await
        .expect("signed cancel");
    assert_eq!(g.status, GateStatus::Cancelled);
    // A deadline: the server's scheduler writes the prepared timeout.
    let timed = t.timed_out_gate().await;
    for id in [denied, cancelled, timed] {
        let (code, out, err) = verify_cli(&url, id, &registry);
        assert_eq!(code, 0, "{out}{err}");
    }
}

/// `moira gate verify ID --approvers FILE --require-signatures`.
pub(crate) fn verify_cli(url: &str, gate: GateId, registry: &str) -> (i32, String, String) {
    moira_env(
        url,
        &[
            "gate",
            "verify",
            &gate.to_string(),
            "--approvers",
            registry,
            "--require-signatures",
        ],
        &[],
    )
}
