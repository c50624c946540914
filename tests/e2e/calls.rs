//! Sub-workflows: a `call:` step runs another file of the submitted bundle
//! as a child run, with its own steps and gate, through real runner and
//! gate-keeper processes.

use std::time::Duration;

use moira_client::protocol::run::{RunStatus, StepStatus};
use moira_client::{ApproveGate, Client, DenyGate, GateId, GateStatus};
use moira_tests::moira_env;

use crate::runs::{runner, Runs};

/// Each step appends a line to `{dir}/ran-<step>`, so a test can count runs.
const PARENT: &str = "name: release
vars: { tag: v1.0.0 }
steps:
  - name: build
    run: |
      echo build >> {dir}/ran-build
      echo \"version=${{ vars.tag }}\" >> \"$MOIRA_OUTPUT\"
  - name: staging
    call: flows/sign-off.yml
    depends_on: [build]
    with: { env: staging, version: \"${{ steps.build.outputs.version }}\" }
  - name: deploy
    depends_on: [staging]
    run: |
      echo deploy >> {dir}/ran-deploy
      echo \"deploying ${{ vars.tag }}, signed off by ${{ steps.staging.outputs.signed_off_by }}\"
";

const CHILD: &str = "name: sign-off
vars: { env: dev, version: \"0\" }
steps:
  - name: smoke
    run: |
      echo smoke >> {dir}/ran-smoke
      echo \"smoke of ${{ vars.version }} on ${{ vars.env }} passes\"
  - name: approve
    use: moira.gate
    depends_on: [smoke]
    with:
      message: \"Sign off ${{ vars.version }} on ${{ vars.env }}?\"
      approvers: { users: [bob] }
outputs:
  signed_off_by: \"${{ steps.approve.outputs.approved_by }}\"
  env: \"${{ vars.env }}\"
";

impl Runs {
    /// Writes the two files into this test's folder; returns the parent's path.
    fn write_release(&self) -> std::path::PathBuf {
        let d = self.dir.path();
        let dir = d.display().to_string();
        std::fs::create_dir_all(d.join("flows")).expect("mkdir");
        std::fs::write(d.join("flows/sign-off.yml"), CHILD.replace("{dir}", &dir)).expect("write");
        let parent = d.join("release.yml");
        std::fs::write(&parent, PARENT.replace("{dir}", &dir)).expect("write");
        parent
    }

    /// Submits the release with `moira run submit` (which reads the called
    /// file beside it); returns the run id.
    fn submit_release(&self) -> String {
        let file = self.write_release();
        let (code, out, err) = moira_env(
            &self.server.url(),
            &[
                "--as",
                "alice",
                "run",
                "submit",
                &file.display().to_string(),
                "--var",
                "tag=v1.4.0",
            ],
            &[],
        );
        assert_eq!(code, 0, "{err}");
        out.trim().to_string()
    }

    fn ran(&self, step: &str) -> usize {
        self.file(&format!("ran-{step}")).lines().count()
    }
}

async fn approve_as(client: &Client, gate: GateId, who: &str) {
    client
        .send(moira_client::Command::Approve(ApproveGate {
            gate_id: gate,
            actor: who.into(),
            ..Default::default()
        }))
        .await
        .unwrap_or_else(|e| panic!("{who} approves: {e}"));
}

/// The child run a parent's `staging` step started, once it has.
async fn child_of(client: &Client, parent: &str) -> String {
    let view = tokio::time::timeout(
        Duration::from_secs(30),
        client.wait_run_until(parent, |r| {
            r.steps.get("staging").is_some_and(|s| s.child.is_some())
        }),
    )
    .await
    .expect("the call starts in time")
    .expect("wait");
    view.steps
        .iter()
        .find(|s| s.name == "staging")
        .and_then(|s| s.child.clone())
        .expect("a child run")
}

/// The gate the child's `approve` step waits on.
async fn child_gate(client: &Client, child: &str) -> GateId {
    let view = tokio::time::timeout(
        Duration::from_secs(30),
        client.wait_run_until(child, |r| {
            r.steps
                .get("approve")
                .is_some_and(|s| s.status == StepStatus::Waiting)
        }),
    )
    .await
    .expect("the child parks on its gate in time")
    .expect("wait");
    view.steps
        .iter()
        .find(|s| s.name == "approve")
        .and_then(|s| s.gate_id)
        .expect("the gate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approving_the_childs_gate_finishes_child_and_parent_and_the_child_gives_back_its_outputs()
{
    let s = Runs::start(1).await;
    let parent = s.submit_release();
    let child = child_of(&s.client, &parent).await;
    let gate = child_gate(&s.client, &child).await;
    let url = s.server.url();

    // The child's gate says which run and step called it: in the list, in
    // show, and the child run says so too.
    let (_, list, _) = moira_env(&url, &["gate", "list"], &[]);
    assert!(
        list.contains(&format!("(called by {parent}/staging)")),
        "{list}"
    );
    let (_, json, _) = moira_env(&url, &["--json", "gate", "list"], &[]);
    let items: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(items[0]["parent"], format!("{parent}/staging"));
    let (_, shown, _) = moira_env(&url, &["gate", "show", &gate.to_string()], &[]);
    assert!(
        shown.contains(&format!("called by:   run/step {parent}/staging")),
        "{shown}"
    );
    assert!(shown.contains("Sign off v1.4.0 on staging?"), "{shown}");
    // The parent waits: no runner holds it, and deploy has not run.
    let p = s.client.show_run(&parent).await.expect("parent");
    assert_eq!(p.status, RunStatus::Waiting, "{p:?}");

    approve_as(&s.client, gate, "bob").await;
    let done = s.finished(&parent).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{done:?}");
    let c = s.finished(&child).await;
    assert_eq!(c.status, RunStatus::Succeeded, "{c:?}");
    let staging = done
        .steps
        .iter()
        .find(|st| st.name == "staging")
        .expect("staging");
    assert_eq!(
        staging.outputs.get("signed_off_by").map(String::as_str),
        Some("bob")
    );
    assert_eq!(
        staging.outputs.get("env").map(String::as_str),
        Some("staging")
    );
    assert_eq!(staging.outputs.get("run_id"), Some(&child));
    s.step_printed(&parent, "deploy", "deploying v1.4.0, signed off by bob")
        .await;

    // `run show` shows the tree; `run logs` of the call step shows the child's steps.
    let (_, tree, _) = moira_env(&url, &["run", "show", &parent], &[]);
    assert!(
        tree.contains(&format!("staging                  succeeded  run {child}")),
        "{tree}"
    );
    assert!(
        tree.contains(&format!("    run {child}  SUCCEEDED  (sign-off)")),
        "{tree}"
    );
    assert!(
        tree.contains(&format!("called by run {parent}, step staging")),
        "{tree}"
    );
    let (_, logs, _) = moira_env(&url, &["run", "logs", &parent, "--step", "staging"], &[]);
    assert!(
        logs.contains("[staging/smoke] smoke of v1.4.0 on staging passes"),
        "{logs}"
    );
    for step in ["build", "smoke", "deploy"] {
        assert_eq!(s.ran(step), 1, "{step} ran once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denying_the_childs_gate_fails_the_call_step_and_its_dependents_do_not_run() {
    let s = Runs::start(1).await;
    let parent = s.submit_release();
    let child = child_of(&s.client, &parent).await;
    let gate = child_gate(&s.client, &child).await;
    s.client
        .send(moira_client::Command::Deny(DenyGate {
            gate_id: gate,
            actor: "bob".into(),
            reason: "smoke is flaky".into(),
            ..Default::default()
        }))
        .await
        .expect("bob denies");
    let done = s.finished(&parent).await;
    assert_eq!(done.status, RunStatus::Rejected, "{done:?}");
    let staging = done
        .steps
        .iter()
        .find(|st| st.name == "staging")
        .expect("staging");
    assert_eq!(staging.status, StepStatus::Rejected);
    assert!(
        staging
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("rejected")),
        "{staging:?}"
    );
    let deploy = done
        .steps
        .iter()
        .find(|st| st.name == "deploy")
        .expect("deploy");
    assert_eq!(deploy.status, StepStatus::Aborted);
    assert_eq!(s.ran("deploy"), 0);
    assert_eq!(s.finished(&child).await.status, RunStatus::Rejected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_parent_cancels_the_child_and_the_gate_it_waits_on() {
    let s = Runs::start(1).await;
    let parent = s.submit_release();
    let child = child_of(&s.client, &parent).await;
    let gate = child_gate(&s.client, &child).await;
    s.client.cancel_run(&parent, "alice").await.expect("cancel");
    assert_eq!(s.finished(&parent).await.status, RunStatus::Cancelled);
    assert_eq!(s.finished(&child).await.status, RunStatus::Cancelled);
    let g = tokio::time::timeout(
        Duration::from_secs(30),
        s.client.wait(gate, Some(Duration::from_secs(30))),
    )
    .await
    .expect("in time")
    .expect("wait");
    assert_eq!(g.status, GateStatus::Cancelled);
    assert_eq!(s.ran("deploy"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cycle_a_missing_file_and_a_path_out_of_the_folder_are_refused_at_submit() {
    let s = Runs::start(1).await;
    let d = s.dir.path();
    std::fs::create_dir_all(d.join("sub")).expect("mkdir");
    let write = |name: &str, text: &str| std::fs::write(d.join(name), text).expect("write");
    write("a.yml", "name: a\nsteps:\n  - {name: x, call: b.yml}\n");
    write("b.yml", "name: b\nsteps:\n  - {name: y, call: sub/c.yml}\n");
    write(
        "sub/c.yml",
        "name: c\nsteps:\n  - {name: z, call: ../a.yml}\n",
    );
    write(
        "lost.yml",
        "name: lost\nsteps:\n  - {name: x, call: nowhere.yml}\n",
    );
    write(
        "out.yml",
        "name: out\nsteps:\n  - {name: x, call: ../../secret.yml}\n",
    );
    let submit = |file: &str| {
        moira_env(
            &s.server.url(),
            &["run", "submit", &d.join(file).display().to_string()],
            &[],
        )
    };
    let (code, _, err) = submit("a.yml");
    assert_ne!(code, 0);
    assert!(
        err.contains("the calls form a cycle: a.yml -> b.yml -> sub/c.yml -> a.yml"),
        "{err}"
    );
    let (code, _, err) = submit("lost.yml");
    assert_ne!(code, 0);
    assert!(err.contains("nowhere.yml"), "{err}");
    let (code, _, err) = submit("out.yml");
    assert_ne!(code, 0);
    assert!(err.contains("leaves the root workflow's folder"), "{err}");

    // An outside tool that sends a cycle straight to the runners is refused
    // by them too, and no run is recorded.
    let cmd = serde_json::json!({
        "id": "cycle-1", "actor": "alice", "path": "a.yml",
        "workflow": "name: a\nsteps:\n  - {name: x, call: b.yml}\n",
        "includes": {"b.yml": "name: b\nsteps:\n  - {name: y, call: a.yml}\n"},
    });
    let reply = s
        .client
        .nats()
        .request(
            moira_client::protocol::wire::RUN_SUBMIT.to_string(),
            serde_json::to_vec(&cmd).expect("json").into(),
        )
        .await
        .expect("a runner answers");
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload).expect("reply");
    assert_eq!(reply["error"]["code"], "bad_request", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("cycle: a.yml -> b.yml -> a.yml")),
        "{reply}"
    );
    let (_, runs, _) = moira_env(
        &s.server.url(),
        &["--json", "run", "list", "--status", "all"],
        &[],
    );
    assert_eq!(runs.trim(), "[]", "{runs}");

    // Too deep: five calls in a chain.
    for n in 0..6 {
        let next = if n < 5 {
            format!("  - {{name: s, call: d{}.yml}}\n", n + 1)
        } else {
            "  - {name: s, run: 'true'}\n".into()
        };
        write(&format!("d{n}.yml"), &format!("name: d{n}\nsteps:\n{next}"));
    }
    let (code, _, err) = submit("d0.yml");
    assert_ne!(code, 0);
    assert!(err.contains("calls nest more than 4 deep"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_killed_while_the_child_waits_runs_no_finished_step_again() {
    let mut s = Runs::start(1).await;
    let parent = s.submit_release();
    let child = child_of(&s.client, &parent).await;
    let gate = child_gate(&s.client, &child).await;
    s.runners[0].kill();
    s.runners.push(runner(&s.server.url(), &s.dir, 1));
    approve_as(&s.client, gate, "bob").await;
    let done = s.finished(&parent).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{done:?}");
    for step in ["build", "smoke", "deploy"] {
        assert_eq!(s.ran(step), 1, "{step} ran once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_back_inside_the_child_works_as_in_any_run_and_the_parent_goes_on_after() {
    let s = Runs::start(1).await;
    let parent = s.submit_release();
    let child = child_of(&s.client, &parent).await;
    let gate = child_gate(&s.client, &child).await;
    s.client
        .send(moira_client::Command::PushBack(
            moira_client::PushBackGate {
                gate_id: gate,
                actor: "bob".into(),
                comment: Some("run the smoke tests on the new data".into()),
                ..Default::default()
            },
        ))
        .await
        .expect("bob pushes back");
    let g = s.client.show(gate).await.expect("gate");
    assert_eq!((g.status, g.iteration), (GateStatus::Waiting, 2));
    assert_eq!(
        s.client.show_run(&parent).await.expect("parent").status,
        RunStatus::Waiting
    );
    approve_as(&s.client, gate, "bob").await;
    assert_eq!(s.finished(&parent).await.status, RunStatus::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_child_is_called_again_while_the_call_step_has_retries() {
    let s = Runs::start(1).await;
    let d = s.dir.path();
    let dir = d.display().to_string();
    std::fs::write(
        d.join("flaky.yml"),
        format!(
            "name: flaky\nsteps:\n  - name: once\n    run: |\n      echo try >> {dir}/ran-once\n      test -f {dir}/second || {{ touch {dir}/second; exit 1; }}\n"
        ),
    )
    .expect("write");
    let root = d.join("root.yml");
    std::fs::write(
        &root,
        "name: root\nsteps:\n  - {name: c, call: flaky.yml, retries: 1}\n",
    )
    .expect("write");
    let (code, out, err) = moira_env(
        &s.server.url(),
        &["run", "submit", &root.display().to_string()],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let run = out.trim().to_string();
    let done = s.finished(&run).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{done:?}");
    assert_eq!(
        s.ran("once"),
        2,
        "the first child failed, the second passed"
    );
    let c = done.steps.iter().find(|st| st.name == "c").expect("c");
    assert_eq!(c.attempt, 2, "{c:?}");
}

#[test]
fn the_subflow_example_ships_after_the_childs_sign_off_and_stops_when_it_is_denied() {
    let (stdout, _) = crate::bound::run_example("subflow/run.sh");
    assert!(
        stdout.contains("deploying v1.2.0; staging signed off by bob"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[staging/smoke] smoke tests of v1.2.0 on staging pass"),
        "{stdout}"
    );
    assert!(
        stdout.contains("(the called workflow ended rejected)"),
        "{stdout}"
    );
    assert!(stdout.contains("Done: v1.2.0 shipped"), "{stdout}");
}

#[test]
fn run_local_asks_for_the_gates_of_a_called_workflow_too() {
    let dir = moira_testkit::TempDir::new("moira-local-call").expect("tmp");
    let d = dir.path();
    std::fs::write(
        d.join("child.yml"),
        "name: child\nvars: {who: x}\nsteps:\n  - name: ask\n    use: moira.gate\n    with: {message: \"Go for ${{ vars.who }}?\"}\n  - {name: hi, run: 'echo hi ${{ vars.who }}', depends_on: [ask]}\noutputs:\n  answer: \"${{ steps.ask.outputs.approved_by }}\"\n",
    )
    .expect("write");
    let root = d.join("root.yml");
    std::fs::write(
        &root,
        "name: root\nsteps:\n  - {name: c, call: child.yml, with: {who: me}}\n  - {name: after, run: 'echo after ${{ steps.c.outputs.answer }}', depends_on: [c]}\n",
    )
    .expect("write");
    let mut p = moira_tests::ProcBuilder::new(moira_tests::bin("moira"), "moira run --local")
        .args(["--as", "alice", "run"])
        .arg(&root)
        .args([
            "--local",
            "--port",
            &moira_testkit::free_port().to_string(),
            "--data",
        ])
        .arg(d.join("stack"))
        .env("MOIRA_LOG", "warn")
        .stdin_piped()
        .spawn()
        .expect("spawn");
    p.wait_for_line("Go for me?", Duration::from_secs(60));
    p.wait_for_line("Approve?", Duration::from_secs(60));
    p.write_stdin("y\n");
    p.wait_for_line("[c/hi] hi me", Duration::from_secs(60));
    p.wait_for_line("[after] after alice", Duration::from_secs(60));
    assert_eq!(
        p.wait(Duration::from_secs(60)).and_then(|s| s.code()),
        Some(0)
    );
}
