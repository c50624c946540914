//! Runs in require mode: submits and cancels signed by the person, a
//! `when: false` auto-approval signed by the runner, a timeout signed by
//! the gate-keeper, `moira run --local` on such a broker, and a run
//! written straight into the stream that no runner acts on.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use moira_client::protocol::run::{RunEnvelope, RunEvent, RunStatus, StepStatus};
use moira_client::protocol::statement::{run_id_for, run_statement, RunAbout, RunVerb};
use moira_client::protocol::time::now_ms;
use moira_client::protocol::wire::{RUN_CANCEL, RUN_SUBMIT};
use moira_client::runs::{CancelRun, RunReply, SubmitRun};
use moira_client::signing::Signer;
use moira_client::{Client, ClientError, ErrorCode};
use moira_tests::{moira_env, Proc, ProcBuilder};

use crate::signatures::{approve, parked_on, ssh_keygen_verify, Signed};

const GUARDED: &str = "name: guarded\nvars: { ENV: dev }\nsteps:\n  - name: g\n    use: moira.gate\n    with: { message: \"Ship to ${{ vars.ENV }}?\", approvers: { users: [bob] } }\n  - {name: after, run: 'echo shipped', depends_on: [g]}\n";

/// A runner that requires signatures and signs with the `runner` service key.
fn runner(t: &Signed) -> Proc {
    let work = t.dir.path().join("work").display().to_string();
    let p = ProcBuilder::new(moira_tests::bin("moira-runner"), "moira-runner")
        .args(["--nats-url", &t.s.url(), "--work-dir", &work])
        .args(["--signatures", "require", "--approvers", &t.registry()])
        .arg("--key")
        .arg(&t.runner)
        .env("MOIRA_LOG", "info")
        .spawn()
        .expect("spawn runner");
    p.wait_for_line("moira-runner ready", Duration::from_secs(20));
    p
}

/// Sends a run command as an outside tool would: JSON on the subject.
async fn raw(client: &Client, subject: &str, cmd: serde_json::Result<Vec<u8>>) -> RunReply {
    let body = cmd.expect("json");
    let msg = client
        .nats()
        .request(subject.to_string(), Bytes::from(body))
        .await
        .expect("a runner answers");
    serde_json::from_slice(&msg.payload).expect("a run reply")
}

fn code(r: &RunReply) -> Option<ErrorCode> {
    r.error.as_ref().map(|e| e.code)
}

fn rejected(r: Result<impl std::fmt::Debug, ClientError>) -> ErrorCode {
    match r {
        Err(e) => e.code().unwrap_or_else(|| panic!("not a refusal: {e}")),
        Ok(v) => panic!("accepted: {v:?}"),
    }
}

/// `moira audit verify --run ID --require-signatures` against the registry.
fn audit_run(t: &Signed, run: &str) -> (i32, String, String) {
    moira_env(
        &t.s.url(),
        &[
            "audit",
            "verify",
            "--run",
            run,
            "--approvers",
            &t.registry(),
            "--require-signatures",
        ],
        &[],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_commands_in_require_mode_must_be_signed_by_their_submitter_and_canceller() {
    let t = Signed::start().await;
    let _runner = runner(&t);
    let alice = t.as_key(&t.alice).await;
    let none = BTreeMap::new();
    // Unsigned, and signed with another user's key: refused, nothing stored.
    assert_eq!(
        rejected(t.s.client.submit_run(GUARDED, &none, "alice").await),
        ErrorCode::Unsigned
    );
    let mallory = t.as_key(&t.mallory).await;
    assert_eq!(
        rejected(mallory.submit_run(GUARDED, &none, "alice").await),
        ErrorCode::WrongKey
    );
    // An outside tool signs the statement itself. Signed for ENV=dev but
    // sent with ENV=prod: the signature does not hold. Signed ten minutes
    // ago: stale.
    let key = Signer::from_file(&t.alice).expect("key");
    let signed_submit = |vars: &BTreeMap<String, String>, sent: &str, at: u64| {
        let id = uuid::Uuid::now_v7().to_string();
        let run_id = run_id_for(&id);
        let statement = run_statement(&RunAbout {
            includes: None,
            verb: RunVerb::Submit,
            run_id: &run_id,
            actor: "alice",
            workflow: GUARDED,
            vars,
            step: None,
            command_id: &id,
            at,
        });
        SubmitRun {
            id: Some(id),
            actor: "alice".into(),
            workflow: GUARDED.into(),
            vars: [("ENV".to_string(), sent.to_string())].into(),
            path: None,
            includes: BTreeMap::new(),
            signature: Some(key.sign(&statement).expect("sign")),
            signed_at: Some(at),
        }
    };
    let dev: BTreeMap<String, String> = [("ENV".to_string(), "dev".to_string())].into();
    let prod: BTreeMap<String, String> = [("ENV".to_string(), "prod".to_string())].into();
    let tampered = signed_submit(&dev, "prod", now_ms());
    assert_eq!(
        code(&raw(&t.s.client, RUN_SUBMIT, serde_json::to_vec(&tampered)).await),
        Some(ErrorCode::BadSignature)
    );
    let stale = signed_submit(&prod, "prod", now_ms() - 10 * 60 * 1000);
    assert_eq!(
        code(&raw(&t.s.client, RUN_SUBMIT, serde_json::to_vec(&stale)).await),
        Some(ErrorCode::Stale)
    );
    let good = signed_submit(&prod, "prod", now_ms());
    let reply = raw(&t.s.client, RUN_SUBMIT, serde_json::to_vec(&good)).await;
    assert!(reply.ok, "{:?}", reply.error);
    let tool_run = reply.run.expect("the run").id;
    assert_eq!(tool_run, run_id_for(good.id.as_deref().expect("id")));
    let runs = t.s.client.list_runs(None).await.expect("runs");
    assert_eq!(runs.len(), 1, "only the good submit stored a run: {runs:?}");

    // Through the client library, signed by alice: it parks on its gate.
    let run = alice
        .submit_run(GUARDED, &none, "alice")
        .await
        .expect("signed submit");
    parked_on(&t.s.client, &run).await;
    // Cancels: unsigned, by mallory (signed, but no part of the run), and
    // a signature made for another run are refused; alice's own works.
    assert_eq!(
        rejected(t.s.client.cancel_run(&run, "alice").await),
        ErrorCode::Unsigned
    );
    assert_eq!(
        rejected(mallory.cancel_run(&run, "mallory").await),
        ErrorCode::NotAllowed
    );
    let at = now_ms();
    let id = uuid::Uuid::now_v7().to_string();
    let none_vars = BTreeMap::new();
    let for_other_run = run_statement(&RunAbout {
        includes: None,
        verb: RunVerb::Cancel,
        run_id: &tool_run,
        actor: "alice",
        workflow: GUARDED,
        vars: &none_vars,
        step: None,
        command_id: &id,
        at,
    });
    let moved = CancelRun {
        run_id: run.clone(),
        actor: "alice".into(),
        id: Some(id),
        signature: Some(key.sign(&for_other_run).expect("sign")),
        signed_at: Some(at),
    };
    assert_eq!(
        code(&raw(&t.s.client, RUN_CANCEL, serde_json::to_vec(&moved)).await),
        Some(ErrorCode::BadSignature)
    );
    let still = t.s.client.show_run(&run).await.expect("run");
    assert_eq!(still.status, RunStatus::Waiting, "{still:?}");
    let done = alice
        .cancel_run(&run, "alice")
        .await
        .expect("signed cancel");
    assert_eq!(done.status, RunStatus::Cancelled);
    // The run's signed events verify, each by its signer.
    let (c, out, err) = audit_run(&t, &run);
    assert_eq!(c, 0, "{out}{err}");
    assert!(
        out.contains("RunSubmitted by alice, signed SHA256:")
            && out.contains("RunCancelled by alice, signed SHA256:")
            && out.contains("every signed event verifies"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_written_straight_into_the_stream_is_never_acted_on_in_require_mode() {
    let t = Signed::start().await;
    let runner = runner(&t);
    // Someone with broker admin rights records a run and enqueues it,
    // past every runner's checks.
    let run_id = uuid::Uuid::now_v7().to_string();
    let forged = RunEnvelope {
        schema: 1,
        run_id: run_id.clone(),
        actor: "alice".into(),
        at: now_ms(),
        event: RunEvent::RunSubmitted {
            name: "sneaky".into(),
            workflow: "name: sneaky\nsteps:\n  - {name: s, run: 'echo pwned'}\n".into(),
            vars: BTreeMap::new(),
            path: None,
            includes: BTreeMap::new(),
            parent: None,
        },
        signed: None,
    };
    t.s.client
        .append_run(&forged, Some(0))
        .await
        .expect("stored by hand");
    t.s.client
        .enqueue_run(&run_id, "forged")
        .await
        .expect("enqueued by hand");
    let line = runner.wait_for_line("the run is not acted on", Duration::from_secs(30));
    assert!(line.contains("not signed"), "{line}");
    let run = t.s.client.show_run(&run_id).await.expect("run");
    assert_eq!(run.status, RunStatus::Queued);
    assert_eq!(run.steps[0].status, StepStatus::Pending, "{run:?}");
    let (c, out, _) = audit_run(&t, &run_id);
    assert_eq!(c, 1, "{out}");
    assert!(
        out.contains("FAIL  #") && out.contains("not signed"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_when_false_gate_is_auto_approved_with_the_runners_signature() {
    let t = Signed::start().await;
    let _runner = runner(&t);
    let yaml = "name: skip-in-dev\nvars: { ENV: dev }\nsteps:\n  - name: g\n    use: moira.gate\n    with: { message: \"Ship?\", approvers: { users: [bob] }, when: \"${{ vars.ENV == 'prod' }}\" }\n  - {name: after, run: 'echo by=${{ steps.g.outputs.approved_by }}', depends_on: [g]}\n";
    let run = t.submit(yaml).await;
    let done = tokio::time::timeout(Duration::from_secs(30), t.s.client.wait_run(&run))
        .await
        .expect("in time")
        .expect("wait");
    assert_eq!(done.status, RunStatus::Succeeded, "{done:?}");
    let (c, out, err) = audit_run(&t, &run);
    assert_eq!(c, 0, "{out}{err}");
    assert!(
        out.contains("GateResolved by moira:runner, signed SHA256:"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fired_timeout_is_signed_by_the_gatekeeper_and_checks_with_ssh_keygen() {
    let t = Signed::start().await;
    let gate = t.timed_out_gate().await;
    let dir = t.dir.path().join("export");
    let (c, out, err) = moira_env(
        &t.s.url(),
        &[
            "audit",
            "export",
            &gate.to_string(),
            "--dir",
            &dir.display().to_string(),
            "--approvers",
            &t.registry(),
        ],
        &[],
    );
    assert_eq!(c, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.contains("GateTimedOut"))
        .unwrap_or_else(|| panic!("the timeout is exported: {out}"));
    let (file, identity) = line.split_once("  (-I ").expect("an identity");
    let identity = identity.trim_end_matches(')');
    assert_eq!(identity, "moira-service:gatekeeper");
    let check =
        |who: &str| ssh_keygen_verify(&dir.join("allowed_signers"), Path::new(file), None, who);
    let v = check(identity);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    assert!(!check("moira-service:runner").status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_local_on_a_require_mode_broker_signs_and_keeps_the_gate_policy() {
    let t = Signed::start().await;
    let _runner = runner(&t);
    let file = t.dir.path().join("guarded.yml");
    std::fs::write(&file, GUARDED).expect("write");
    let local = |key: Option<&Path>| {
        let mut b = ProcBuilder::new(moira_tests::bin("moira"), "moira run --local").args([
            "--nats-url",
            &t.s.url(),
            "--as",
            "alice",
        ]);
        if let Some(k) = key {
            b = b.arg("--key").arg(k);
        }
        b.arg("run")
            .arg(&file)
            .arg("--local")
            .env("MOIRA_LOG", "warn")
            .stdin_piped()
            .spawn()
            .expect("spawn")
    };
    // Without a key the runners refuse the submit.
    let mut unsigned = local(None);
    unsigned.wait_for_line("unsigned", Duration::from_secs(30));
    let status = unsigned.wait(Duration::from_secs(30)).expect("exits");
    assert!(!status.success());
    // With alice's key: the run starts on the broker's own runner, and
    // alice, who asked for the gate, may not approve it herself.
    let mut p = local(Some(&t.alice));
    p.wait_for_line("Approve?", Duration::from_secs(60));
    p.write_stdin("y\n");
    let refused = p.wait_for_line("refused:", Duration::from_secs(30));
    assert!(refused.contains("alice"), "{refused}");
    // bob decides from another terminal, with his key.
    let runs = t.s.client.list_runs(None).await.expect("runs");
    let gate = parked_on(&t.s.client, &runs[0].id).await;
    t.as_key(&t.bob)
        .await
        .send(approve(gate, "bob", "from my laptop"))
        .await
        .expect("bob approves");
    p.wait_for_line("[after] shipped", Duration::from_secs(60));
    assert_eq!(
        p.wait(Duration::from_secs(60)).and_then(|s| s.code()),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_copied_from_its_schedule_and_stored_early_moves_no_run_and_is_reported() {
    let t = Signed::start().await;
    let runner = runner(&t);
    let yaml = "name: overnight\nsteps:\n  - name: g\n    use: moira.gate\n    with: { message: \"Ship?\", approvers: { users: [bob] }, timeout: 1h, on_timeout: approve }\n  - {name: after, run: 'echo shipped', depends_on: [g]}\n";
    let run = t.submit(yaml).await;
    let gate = parked_on(&t.s.client, &run).await;
    // Someone with broker admin rights copies the gate-keeper's signed,
    // prepared timeout from its schedule and stores it on the gate now,
    // an hour early.
    let (schedule, _) =
        t.s.client
            .read_subject(
                moira_client::protocol::wire::GATES_STREAM,
                &moira_client::protocol::wire::gate_schedule(&gate),
            )
            .await
            .expect("read the schedule");
    let (_, prepared) = schedule.first().expect("the gate has a schedule");
    let js = async_nats::jetstream::new(t.s.client.nats().clone());
    js.publish(
        moira_client::protocol::wire::gate_events(&gate),
        prepared.clone(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    runner.wait_for_line("does not verify", Duration::from_secs(30));
    let still = t.s.client.show_run(&run).await.expect("run");
    assert_eq!(still.steps[0].status, StepStatus::Waiting, "{still:?}");
    assert_eq!(still.steps[1].status, StepStatus::Pending, "{still:?}");
    let (c, out, _) = crate::signatures::verify_cli(&t.s.url(), gate, &t.registry());
    assert_eq!(c, 1, "{out}");
    assert!(out.contains("before its deadline"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deputys_certificate_approval_moves_a_signed_run_and_its_trail_verifies() {
    let t = Signed::start().await;
    let _runner = runner(&t);
    // bob is away: he certifies carol's key to act for him for a day.
    let cert = crate::delegation::certify(
        t.dir.path(),
        &t.bob,
        &t.carol,
        "carol-for-bob",
        &["-I", "carol-for-bob", "-n", "moira:bob", "-V", "-5m:+1d"],
    );
    let run = t.submit(GUARDED).await;
    let gate = parked_on(&t.s.client, &run).await;
    let deputy = Client::connect(&t.s.url())
        .await
        .expect("connect")
        .with_signer(Signer::from_file(&cert).expect("certificate"));
    let mut cmd = approve(gate, "carol", "covering for bob");
    if let moira_client::protocol::Command::Approve(a) = &mut cmd {
        a.on_behalf_of = Some("bob".into());
    }
    deputy.send(cmd).await.expect("carol for bob");
    let done = tokio::time::timeout(Duration::from_secs(30), t.s.client.wait_run(&run))
        .await
        .expect("in time")
        .expect("wait");
    assert_eq!(done.status, RunStatus::Succeeded, "{done:?}");
    let (c, out, err) = audit_run(&t, &run);
    assert_eq!(c, 0, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_called_workflow_runs_under_its_parents_signed_submission_and_a_forged_child_does_not() {
    let t = Signed::start().await;
    let runner = runner(&t);
    let d = t.dir.path();
    std::fs::write(
        d.join("child.yml"),
        "name: child\nsteps:\n  - name: g\n    use: moira.gate\n    with: { message: \"Ship?\", approvers: { users: [bob] } }\n",
    )
    .expect("write");
    std::fs::write(
        d.join("parent.yml"),
        "name: parent\nsteps:\n  - {name: c, call: child.yml}\n  - {name: after, run: 'echo shipped', depends_on: [c]}\n",
    )
    .expect("write");
    let bundle = moira_workflow::bundle::load(&d.join("parent.yml")).expect("bundle");
    let run = t
        .as_key(&t.alice)
        .await
        .submit_bundle(&bundle, &Default::default(), "alice")
        .await
        .expect("a signed submit covers both files");
    let parked = tokio::time::timeout(
        Duration::from_secs(30),
        t.s.client.wait_run_until(&run, |r| {
            r.steps.get("c").is_some_and(|s| s.child.is_some())
        }),
    )
    .await
    .expect("in time")
    .expect("wait");
    let child = parked.steps[0].child.clone().expect("child");
    let gate = parked_on(&t.s.client, &child).await;
    t.as_key(&t.bob)
        .await
        .send(approve(gate, "bob", "ok"))
        .await
        .expect("bob");
    let done = tokio::time::timeout(Duration::from_secs(30), t.s.client.wait_run(&run))
        .await
        .expect("in time")
        .expect("wait");
    assert_eq!(done.status, RunStatus::Succeeded, "{done:?}");
    for id in [&run, &child] {
        let (c, out, err) = audit_run(&t, id);
        assert_eq!(c, 0, "{id}: {out}{err}");
    }

    // A child written by hand that claims this parent but holds another
    // workflow is never acted on.
    let forged_id = uuid::Uuid::new_v4().to_string();
    let forged = RunEnvelope {
        schema: 1,
        run_id: forged_id.clone(),
        actor: "alice".into(),
        at: now_ms(),
        event: RunEvent::RunSubmitted {
            name: "child".into(),
            workflow: "name: child\nsteps:\n  - {name: s, run: 'echo pwned'}\n".into(),
            vars: BTreeMap::new(),
            path: Some("child.yml".into()),
            includes: bundle.includes.clone(),
            parent: Some(moira_client::protocol::run::ParentRun {
                run_id: run.clone(),
                step: "c".into(),
            }),
        },
        signed: None,
    };
    t.s.client
        .append_run(&forged, Some(0))
        .await
        .expect("stored by hand");
    t.s.client
        .enqueue_run(&forged_id, "forged")
        .await
        .expect("enqueue");
    let line = runner.wait_for_line("the run is not acted on", Duration::from_secs(30));
    assert!(line.contains("started it"), "{line}");
    let f = t.s.client.show_run(&forged_id).await.expect("run");
    assert_eq!(f.steps[0].status, StepStatus::Pending, "{f:?}");
    let (c, out, _) = audit_run(&t, &forged_id);
    assert_eq!(c, 1, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_submit_covers_every_called_file_and_one_changed_byte_is_refused() {
    let t = Signed::start().await;
    let _runner = runner(&t);
    let parent = "name: parent\nsteps:\n  - {name: c, call: child.yml}\n";
    let child = "name: child\nsteps:\n  - {name: s, run: 'echo ok'}\n";
    let includes: BTreeMap<String, String> = [("child.yml".to_string(), child.to_string())].into();
    let key = Signer::from_file(&t.alice).expect("key");
    let submit = |sent: &BTreeMap<String, String>| {
        let id = uuid::Uuid::now_v7().to_string();
        let run_id = run_id_for(&id);
        let at = now_ms();
        let statement = run_statement(&RunAbout {
            includes: Some(&includes),
            verb: RunVerb::Submit,
            run_id: &run_id,
            actor: "alice",
            workflow: parent,
            vars: &BTreeMap::new(),
            step: None,
            command_id: &id,
            at,
        });
        let text = String::from_utf8(statement.clone()).expect("utf-8");
        assert!(
            text.contains("\"name\":\"moira-workflow:child.yml\""),
            "{text}"
        );
        SubmitRun {
            id: Some(id),
            actor: "alice".into(),
            workflow: parent.into(),
            vars: BTreeMap::new(),
            path: Some("parent.yml".into()),
            includes: sent.clone(),
            signature: Some(key.sign(&statement).expect("sign")),
            signed_at: Some(at),
        }
    };
    // The called file is changed after signing: refused, nothing stored.
    let changed: BTreeMap<String, String> = [(
        "child.yml".to_string(),
        child.replace("echo ok", "echo pwned"),
    )]
    .into();
    let reply = raw(
        &t.s.client,
        RUN_SUBMIT,
        serde_json::to_vec(&submit(&changed)),
    )
    .await;
    assert_eq!(code(&reply), Some(ErrorCode::BadSignature), "{reply:?}");
    // As signed: it runs.
    let reply = raw(
        &t.s.client,
        RUN_SUBMIT,
        serde_json::to_vec(&submit(&includes)),
    )
    .await;
    assert_eq!(code(&reply), None, "{reply:?}");
    let run = reply.run.expect("the run").id;
    let done = tokio::time::timeout(Duration::from_secs(30), t.s.client.wait_run(&run))
        .await
        .expect("in time")
        .expect("wait");
    assert_eq!(done.status, RunStatus::Succeeded, "{done:?}");
}
