//! Workflow runs through real runner and gate-keeper processes.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use moira_client::protocol::run::{RunStatus, StepStatus};
use moira_client::{ApproveGate, Client, DenyGate, GateId, PushBackGate, RunView};
use moira_testkit::TempDir;
use moira_tests::{bin, gatekeeper, moira, NatsServer, Proc, ProcBuilder};

/// A server, a gate-keeper, runners and a client; a folder for files.
pub(crate) struct Runs {
    pub(crate) client: Client,
    pub(crate) runners: Vec<Proc>,
    _gk: Proc,
    pub(crate) server: NatsServer,
    pub(crate) dir: TempDir,
}

pub(crate) fn runner(url: &str, dir: &TempDir, n: usize) -> Proc {
    let p = ProcBuilder::new(bin("moira-runner"), &format!("moira-runner {n}"))
        .args(["--nats-url", url, "--ack-wait", "2s", "--work-dir"])
        .arg(dir.path().join(format!("work{n}")))
        .env("MOIRA_LOG", "info")
        // Steps must never see the runner's own environment.
        .env("MOIRA_TEST_RUNNER_SECRET", "s3cret")
        .spawn()
        .unwrap_or_else(|e| panic!("spawn moira-runner: {e}"));
    p.wait_for_line("moira-runner ready", Duration::from_secs(20));
    p
}

impl Runs {
    pub(crate) async fn start(runners: usize) -> Runs {
        Self::start_with(runners, &[]).await
    }

    pub(crate) async fn start_with(runners: usize, gatekeeper_args: &[&str]) -> Runs {
        let server = NatsServer::start();
        let gk = gatekeeper(&server.url(), gatekeeper_args);
        let dir = TempDir::new("moira-runs").expect("tmp");
        let runners = (0..runners)
            .map(|n| runner(&server.url(), &dir, n))
            .collect();
        let client = Client::connect(&server.url()).await.expect("connect");
        Runs {
            client,
            runners,
            _gk: gk,
            server,
            dir,
        }
    }

    /// Substitutes `{dir}` (this test's folder) and submits.
    pub(crate) async fn submit(&self, yaml: &str, vars: &[(&str, &str)]) -> String {
        let yaml = yaml.replace("{dir}", &self.dir.path().display().to_string());
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.client
            .submit_run(&yaml, &vars, "alice")
            .await
            .expect("submit")
    }

    pub(crate) async fn finished(&self, run: &str) -> RunView {
        tokio::time::timeout(Duration::from_secs(60), self.client.wait_run(run))
            .await
            .expect("the run ends in time")
            .expect("wait")
    }

    /// Waits until `step` of `run` has the status, and returns the run.
    async fn step_is(&self, run: &str, step: &str, status: StepStatus) -> RunView {
        let wait = self.client.wait_run_until(run, |s| {
            s.steps.get(step).is_some_and(|st| st.status == status)
        });
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .unwrap_or_else(|_| panic!("step {step} never became {status:?}"))
            .expect("wait")
    }

    /// Waits until a step has printed a line containing `needle`.
    pub(crate) async fn step_printed(&self, run: &str, step: &str, needle: &str) {
        wait_printed(&self.client, run, step, needle).await
    }

    pub(crate) fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }
}

/// Waits until a step of `run` has printed a line containing `needle`.
pub(crate) async fn wait_printed(client: &Client, run: &str, step: &str, needle: &str) {
    let mut lines = Box::pin(client.run_logs(run, Some(step), true).await.expect("logs"));
    let found = async {
        while let Some(Ok(l)) = lines.next().await {
            if l.line.contains(needle) {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), found)
        .await
        .unwrap_or_else(|_| panic!("{step} never printed {needle:?}"));
}

fn step<'a>(run: &'a RunView, name: &str) -> &'a moira_client::StepView {
    run.steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step {name}"))
}

/// Asserts that the run did not succeed and `name` was aborted with a
/// reason that says `why`.
fn aborted_with(done: &RunView, name: &str, why: &str) {
    assert_ne!(done.status, RunStatus::Succeeded);
    let st = step(done, name);
    assert_eq!(st.status, StepStatus::Aborted, "{done:?}");
    assert!(
        st.reason.as_deref().is_some_and(|r| r.contains(why)),
        "{st:?}"
    );
}

fn gate_of(run: &str, step: &str) -> GateId {
    GateId::for_step(run, step, 1)
}

const GATED: &str = r#"
name: gated
steps:
  - name: build
    run: echo built >> {dir}/log
  - name: approve
    use: moira.gate
    with:
      message: "Ship it?"
      approvers: { users: [bob] }
      inputs: [WINDOW]
      timeout: ${{ vars.timeout }}
    on_deny: ${{ vars.on_deny }}
    depends_on: [build]
  - name: deploy
    run: |
      echo "window=$WINDOW by=${{ steps.approve.outputs.approved_by }} reason=${{ steps.approve.outputs.reason }}" >> {dir}/log
    depends_on: [approve]
  - name: other
    run: echo other >> {dir}/log
"#;

fn gated(on_deny: &str, timeout: &str) -> String {
    GATED
        .replace("${{ vars.on_deny }}", on_deny)
        .replace("${{ vars.timeout }}", timeout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_step_parks_the_run_and_approval_finishes_it() {
    let s = Runs::start(1).await;
    let run = s.submit(&gated("fail", "1h"), &[]).await;
    // The independent branch finishes while the gate waits: a state where
    // both hold at once, with the gate's dependent still pending.
    let both = s.client.wait_run_until(&run, |r| {
        let is = |n: &str, st: StepStatus| r.steps.get(n).is_some_and(|x| x.status == st);
        is("approve", StepStatus::Waiting) && is("other", StepStatus::Succeeded)
    });
    let parked = tokio::time::timeout(Duration::from_secs(60), both)
        .await
        .expect("in time")
        .expect("wait");
    assert_eq!(step(&parked, "deploy").status, StepStatus::Pending);
    assert_eq!(parked.status, RunStatus::Waiting);
    s.client
        .approve(ApproveGate {
            gate_id: gate_of(&run, "approve"),
            actor: "bob".into(),
            inputs: [("WINDOW".into(), "sat".into())].into(),
            ..Default::default()
        })
        .await
        .expect("approve");
    let done = s.finished(&run).await;
    assert_eq!(done.status, RunStatus::Succeeded);
    assert_eq!(
        step(&done, "approve")
            .outputs
            .get("approved_by")
            .map(String::as_str),
        Some("bob")
    );
    assert!(
        s.file("log").contains("window=sat by=bob"),
        "{}",
        s.file("log")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_with_each_on_deny_mode() {
    let s = Runs::start(1).await;
    let mut runs = Vec::new();
    for mode in ["fail", "continue", "skip"] {
        let run = s.submit(&gated(mode, "1h"), &[]).await;
        s.step_is(&run, "approve", StepStatus::Waiting).await;
        s.client
            .deny(DenyGate {
                gate_id: gate_of(&run, "approve"),
                actor: "bob".into(),
                reason: format!("no-{mode}"),
                ..Default::default()
            })
            .await
            .expect("deny");
        runs.push((mode, run));
    }
    for (mode, run) in runs {
        let done = s.finished(&run).await;
        let (approve, deploy) = (step(&done, "approve").status, step(&done, "deploy").status);
        match mode {
            "fail" => {
                assert_eq!(done.status, RunStatus::Rejected);
                assert_eq!(
                    (approve, deploy),
                    (StepStatus::Rejected, StepStatus::Aborted)
                );
            }
            "continue" => {
                assert_eq!(done.status, RunStatus::Succeeded);
                assert_eq!(deploy, StepStatus::Succeeded);
                assert!(
                    s.file("log").contains("reason=no-continue"),
                    "the dependent read the denial: {}",
                    s.file("log")
                );
            }
            _ => {
                assert_eq!(done.status, RunStatus::Succeeded);
                assert_eq!(
                    (approve, deploy),
                    (StepStatus::Skipped, StepStatus::Skipped)
                );
                assert_eq!(step(&done, "other").status, StepStatus::Succeeded);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_timeout_fails_the_run() {
    let s = Runs::start(1).await;
    let run = s.submit(&gated("fail", "1s"), &[]).await;
    let done = s.finished(&run).await;
    assert_eq!(done.status, RunStatus::Failed);
    assert_eq!(step(&done, "approve").status, StepStatus::Failed);
    assert_eq!(step(&done, "deploy").status, StepStatus::Aborted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_false_condition_approves_at_once_with_the_same_outputs() {
    let s = Runs::start(1).await;
    let yaml = r#"
name: cond
vars: { env: dev }
steps:
  - name: approve
    use: moira.gate
    with: { message: "prod?", inputs: [WINDOW], when: "${{ vars.env == 'prod' }}" }
  - name: after
    run: echo "by=${{ steps.approve.outputs.approved_by }} window=[$WINDOW]" >> {dir}/log
    depends_on: [approve]
"#;
    let run = s.submit(yaml, &[]).await;
    let done = s.finished(&run).await;
    assert_eq!(done.status, RunStatus::Succeeded);
    let outputs = &step(&done, "approve").outputs;
    for key in ["approved_by", "approved_at", "reason", "WINDOW"] {
        assert!(
            outputs.contains_key(key),
            "missing output {key}: {outputs:?}"
        );
    }
    assert!(
        s.file("log").contains("by=moira:when window=[]"),
        "{}",
        s.file("log")
    );
    assert!(
        s.client.show(gate_of(&run, "approve")).await.is_err(),
        "no gate was opened"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_push_back_reruns_the_step_with_the_inputs() {
    let s = Runs::start(1).await;
    let yaml = r#"
name: review
steps:
  - name: plan
    run: |
      echo "iteration=$MOIRA_ITERATION feedback=$FEEDBACK previous=$(cat "$MOIRA_PREVIOUS_OUTPUT" 2>/dev/null)" >> {dir}/log
      echo "plan=v$MOIRA_ITERATION" >> "$MOIRA_OUTPUT"
    approval: { prompt: "Review the plan", input: [FEEDBACK] }
  - name: apply
    run: echo "applying ${{ steps.plan.outputs.plan }}" >> {dir}/log
    depends_on: [plan]
"#;
    let run = s.submit(yaml, &[]).await;
    let review = GateId::for_step(&run, "plan#review", 1);
    s.step_is(&run, "plan", StepStatus::Waiting).await;
    s.client
        .push_back(PushBackGate {
            gate_id: review,
            actor: "bob".into(),
            inputs: [("FEEDBACK".into(), "smaller".into())].into(),
            ..Default::default()
        })
        .await
        .expect("push back");
    let again = s.client.wait_run_until(&run, |r| {
        r.steps
            .get("plan")
            .is_some_and(|p| p.iteration == 2 && p.status == StepStatus::Waiting)
    });
    tokio::time::timeout(Duration::from_secs(60), again)
        .await
        .expect("re-ran")
        .expect("wait");
    s.client
        .approve(ApproveGate {
            gate_id: review,
            actor: "bob".into(),
            ..Default::default()
        })
        .await
        .expect("approve");
    let done = s.finished(&run).await;
    assert_eq!(done.status, RunStatus::Succeeded);
    assert_eq!(step(&done, "plan").iteration, 2);
    let log = s.file("log");
    assert!(log.contains("iteration=1 feedback= previous="), "{log}");
    assert!(
        log.contains("iteration=2 feedback=smaller previous=plan=v1"),
        "{log}"
    );
    assert!(log.contains("applying v2"), "{log}");
    assert_eq!(log.matches("applying").count(), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_and_env_reach_dependents_and_logs_are_stored() {
    let s = Runs::start(1).await;
    let yaml = r#"
name: outputs
vars: { greeting: hello }
steps:
  - name: a
    run: |
      echo "x=42" >> "$MOIRA_OUTPUT"
      echo "to stdout"
      echo "to stderr" >&2
  - name: b
    run: echo "${{ vars.greeting }} ${{ steps.a.outputs.x }} $EXTRA" >> {dir}/log
    env: { EXTRA: "${{ steps.a.outputs.x }}-env" }
    depends_on: [a]
"#;
    let run = s.submit(yaml, &[("greeting", "hi")]).await;
    let done = s.finished(&run).await;
    assert_eq!(done.status, RunStatus::Succeeded);
    assert_eq!(
        step(&done, "a").outputs.get("x").map(String::as_str),
        Some("42")
    );
    assert_eq!(s.file("log").trim(), "hi 42 42-env");
    let (code, out, err) = moira(&s.server.url(), &["run", "logs", &run, "--step", "a"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("to stdout") && out.contains("to stderr"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_retries_and_continue_on_failure() {
    let s = Runs::start(1).await;
    let yaml = r#"
name: failing
steps:
  - name: flaky
    run: |
      echo try >> {dir}/tries
      [ "$(wc -l < {dir}/tries)" -ge 2 ]
    retries: 2
  - name: broken
    run: exit 7
    continue_on_failure: true
  - name: after
    run: echo after >> {dir}/log
    depends_on: [flaky, broken]
  - name: hard
    run: exit 3
  - name: never
    run: echo never >> {dir}/log
    depends_on: [hard]
"#;
    let run = s.submit(yaml, &[]).await;
    let done = s.finished(&run).await;
    assert_eq!(done.status, RunStatus::Failed);
    assert_eq!(
        (step(&done, "flaky").status, step(&done, "flaky").attempt),
        (StepStatus::Succeeded, 2)
    );
    assert_eq!(
        (
            step(&done, "broken").status,
            step(&done, "broken").exit_code
        ),
        (StepStatus::Failed, Some(7))
    );
    assert_eq!(step(&done, "after").status, StepStatus::Succeeded);
    assert_eq!(step(&done, "never").status, StepStatus::Aborted);
    assert_eq!(s.file("log").trim(), "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_share_the_work() {
    let s = Runs::start(2).await;
    let yaml =
        "name: shared\nsteps:\n  - {name: a, run: 'sleep 0.3; echo $MOIRA_RUN_ID >> {dir}/log'}\n";
    let mut runs = Vec::new();
    for _ in 0..8 {
        runs.push(s.submit(yaml, &[]).await);
    }
    for r in &runs {
        assert_eq!(s.finished(r).await.status, RunStatus::Succeeded);
    }
    assert_eq!(s.file("log").lines().count(), 8);
    for (n, p) in s.runners.iter().enumerate() {
        assert!(
            p.output().iter().any(|l| l.contains("step started")),
            "runner {n} ran nothing"
        );
    }
}

/// Consumers on the runs stream, durable and ephemeral.
async fn run_stream_consumers(client: &Client) -> usize {
    let js = async_nats::jetstream::new(client.nats().clone());
    let mut stream = js.get_stream("MOIRA_RUNS").await.expect("runs stream");
    stream
        .info()
        .await
        .expect("stream info")
        .state
        .consumer_count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_reads_and_runner_jobs_leave_no_consumers_behind() {
    // Every wait, log read and job follows the run through an ephemeral
    // consumer. The server keeps an abandoned one for 30 s and refuses new
    // ones past its limit, so each must be deleted when it is done.
    let s = Runs::start(1).await;
    let before = run_stream_consumers(&s.client).await;
    let yaml = "name: tidy\nsteps:\n  - {name: a, run: 'echo one'}\n  - {name: b, run: 'echo two', depends_on: [a]}\n";
    for _ in 0..20 {
        let run = s.submit(yaml, &[]).await;
        assert_eq!(s.finished(&run).await.status, RunStatus::Succeeded);
        s.step_printed(&run, "b", "two").await;
        let logs: Vec<_> = s
            .client
            .run_logs(&run, None, false)
            .await
            .expect("logs")
            .collect()
            .await;
        assert_eq!(logs.len(), 2, "{logs:?}");
    }
    // Well inside the server's 30 s inactivity threshold.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = run_stream_consumers(&s.client).await;
        if now <= before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{now} consumers on the runs stream, {before} before 20 runs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_killed_mid_step_and_one_killed_while_parked() {
    let mut s = Runs::start(1).await;
    let yaml = r#"
name: crash
steps:
  - name: effect
    run: echo once >> {dir}/effects
  - name: slow
    run: |
      echo started >> {dir}/slow
      echo started
      sleep 3
    retries: 1
    depends_on: [effect]
  - name: approve
    use: moira.gate
    with: { message: "go on?" }
    depends_on: [slow]
  - name: last
    run: echo last >> {dir}/log
    depends_on: [approve]
"#;
    let run = s.submit(yaml, &[]).await;
    s.step_is(&run, "slow", StepStatus::Running).await;
    s.step_printed(&run, "slow", "started").await;
    // Killed mid-step: another runner takes the job over after ack_wait.
    s.runners[0].kill();
    s.runners.push(runner(&s.server.url(), &s.dir, 1));
    s.step_is(&run, "approve", StepStatus::Waiting).await;
    // Killed while the run is parked: nothing is lost.
    s.runners[1].kill();
    s.runners.push(runner(&s.server.url(), &s.dir, 2));
    s.client
        .approve(ApproveGate {
            gate_id: gate_of(&run, "approve"),
            actor: "bob".into(),
            ..Default::default()
        })
        .await
        .expect("approve");
    let done = s.finished(&run).await;
    assert_eq!(done.status, RunStatus::Succeeded);
    assert_eq!(
        s.file("effects").lines().count(),
        1,
        "a finished step's side effect happened once"
    );
    assert_eq!(
        s.file("slow").lines().count(),
        2,
        "the cut-off step ran again (retries: 1)"
    );
    assert_eq!(step(&done, "slow").attempt, 2);
    assert_eq!(s.file("log").trim(), "last");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_step_without_retries_fails_with_a_reason() {
    let mut s = Runs::start(1).await;
    let run = s
        .submit("name: c\nsteps:\n  - {name: slow, run: 'sleep 3'}\n", &[])
        .await;
    s.step_is(&run, "slow", StepStatus::Running).await;
    s.runners[0].kill();
    s.runners.push(runner(&s.server.url(), &s.dir, 1));
    let done = s.finished(&run).await;
    assert_eq!(done.status, RunStatus::Failed);
    let reason = step(&done, "slow").reason.clone().unwrap_or_default();
    assert!(reason.contains("cut off"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_run_and_its_gates() {
    let s = Runs::start(1).await;
    let run = s.submit(&gated("fail", "1h"), &[]).await;
    s.step_is(&run, "approve", StepStatus::Waiting).await;
    // Someone who is neither the submitter, an approver nor an admin.
    let (code, _, err) = moira(&s.server.url(), &["--as", "mallory", "run", "cancel", &run]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("may not cancel"), "{err}");
    let still = s.client.show_run(&run).await.expect("run");
    assert_eq!(
        still.status,
        RunStatus::Waiting,
        "a refused cancel changes nothing"
    );
    assert_eq!(
        s.client
            .show(gate_of(&run, "approve"))
            .await
            .expect("gate")
            .status,
        moira_client::GateStatus::Waiting
    );
    // bob is the gate's approver: he may.
    let (code, _, err) = moira(&s.server.url(), &["--as", "bob", "run", "cancel", &run]);
    assert_eq!(code, 0, "{err}");
    let done = s.finished(&run).await;
    assert_eq!(done.status, RunStatus::Cancelled);
    assert_eq!(step(&done, "deploy").status, StepStatus::Cancelled);
    let gate = s.client.show(gate_of(&run, "approve")).await.expect("gate");
    assert_eq!(gate.status, moira_client::GateStatus::Cancelled);
    assert_eq!(gate.decided_by.as_deref(), Some("moira:runner"));
    assert!(
        gate.reason
            .as_deref()
            .is_some_and(|r| r.contains("cancelled by bob")),
        "{gate:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_submits_waits_and_shows_runs() {
    let s = Runs::start(1).await;
    let file = s.dir.path().join("ok.yml");
    std::fs::write(
        &file,
        "name: ok\nvars: {who: x}\nsteps:\n  - {name: hi, run: 'echo hi ${{ vars.who }}'}\n",
    )
    .expect("write");
    let url = s.server.url();
    let (code, out, err) = moira(
        &url,
        &[
            "run",
            "submit",
            &file.display().to_string(),
            "--var",
            "who=you",
            "--wait",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let id = out.lines().next().expect("run id").trim().to_string();
    let (code, json, _) = moira(&url, &["--json", "run", "show", &id]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["status"], "succeeded");
    for key in [
        "name",
        "status",
        "gate_id",
        "exit_code",
        "outputs",
        "iteration",
    ] {
        assert!(
            v["steps"][0].get(key).is_some(),
            "step JSON lacks {key}: {v}"
        );
    }
    let (_, logs, _) = moira(&url, &["run", "logs", &id]);
    assert!(logs.contains("hi you"), "{logs}");
    let (_, list, _) = moira(&url, &["run", "list", "--status", "succeeded"]);
    assert!(list.contains(&id), "{list}");
    // A failing run exits non-zero with --wait.
    std::fs::write(&file, "name: bad\nsteps:\n  - {name: no, run: 'exit 1'}\n").expect("write");
    assert_eq!(
        moira(
            &url,
            &["run", "submit", &file.display().to_string(), "--wait"]
        )
        .0,
        1
    );
}

const INJECT: &str = r#"
name: inject
vars: { evil: "" }
steps:
  - name: g
    use: moira.gate
    with: { message: "Ship?", inputs: [NOTE] }
  - name: emit
    run: |
      printf 'out=%s\n' "$EVIL" > "$MOIRA_OUTPUT"
      printf 'log \033]52;c;ZXZpbA==\007 \033[2K\rfake\n'
    env: { EVIL: "${{ vars.evil }}" }
  - name: use
    depends_on: [g, emit]
    run: |
      printf '%s\n' ${{ steps.g.outputs.NOTE }} > {dir}/note-bare.txt
      printf '%s\n' "${{ steps.g.outputs.NOTE }}" > {dir}/note.txt
      printf '%s\n' '${{ steps.emit.outputs.out }}' > {dir}/out.txt
      printf '%s\n' "by ${{ steps.g.outputs.approved_by }}" > {dir}/by.txt
      printf '%s\n' "${MOIRA_TEST_RUNNER_SECRET:-none}" > {dir}/env.txt
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_values_never_run_as_shell_and_steps_get_a_clean_environment() {
    let s = Runs::start(1).await;
    let d = s.dir.path().display().to_string();
    let evil = |tag: &str| {
        format!(
            "$(touch {d}/pwned-{tag}-1) `touch {d}/pwned-{tag}-2`; touch {d}/pwned-{tag}-3; \"'"
        )
    };
    let run = s.submit(INJECT, &[("evil", &evil("output"))]).await;
    s.step_is(&run, "g", StepStatus::Waiting).await;
    // An actor name that is shell syntax is refused by the gate-keeper.
    for actor in [
        format!("x$(touch {d}/pwned-actor)"),
        "`id`".to_string(),
        "a;b".to_string(),
        "a\"b'".to_string(),
    ] {
        let e = s
            .client
            .approve(ApproveGate {
                gate_id: gate_of(&run, "g"),
                actor: actor.clone(),
                ..Default::default()
            })
            .await
            .expect_err("a shell-syntax actor is refused");
        assert_eq!(
            e.code(),
            Some(moira_client::ErrorCode::BadRequest),
            "{actor}: {e}"
        );
    }
    s.client
        .approve(ApproveGate {
            gate_id: gate_of(&run, "g"),
            actor: "bob".into(),
            inputs: [("NOTE".into(), evil("input"))].into(),
            ..Default::default()
        })
        .await
        .expect("approve");
    let done = s.finished(&run).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{done:?}");
    let pwned: Vec<String> = std::fs::read_dir(s.dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("pwned"))
        .collect();
    assert!(pwned.is_empty(), "injected commands ran: {pwned:?}");
    assert_eq!(s.file("note.txt").trim_end(), evil("input"));
    assert_eq!(
        s.file("note-bare.txt").trim_end(),
        evil("input"),
        "one literal word, unquoted too"
    );
    assert_eq!(
        s.file("out.txt").trim_end(),
        evil("output"),
        "inside single quotes too"
    );
    assert_eq!(s.file("by.txt").trim_end(), "by bob");
    assert_eq!(
        s.file("env.txt").trim_end(),
        "none",
        "the runner's environment stays out of steps"
    );
    // A step's output cannot drive the terminal of whoever reads the logs.
    let (code, out, err) = moira(&s.server.url(), &["run", "logs", &run, "--step", "emit"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\\u001b]52"), "{out:?}");
    assert!(!out.contains('\u{1b}') && !out.contains('\r'), "{out:?}");
}

const SQUAT: &str = r#"
name: squat
steps:
  - name: wait
    run: while [ ! -f {dir}/go ]; do sleep 0.05; done
  - name: approve
    use: moira.gate
    with: { message: "Ship?", approvers: { users: [bob] } }
    depends_on: [wait]
  - name: after
    run: echo "by ${{ steps.approve.outputs.approved_by }}" > {dir}/after.txt
    depends_on: [approve]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_squatted_gate_id_is_not_adopted_and_a_forged_gate_does_not_wake_the_run() {
    let s = Runs::start(1).await;
    let run = s.submit(SQUAT, &[]).await;
    // Mallory opens the step's predictable gate id first, naming the run,
    // with herself as approver.
    let squatted = gate_of(&run, "approve");
    s.client
        .open(moira_client::OpenGate {
            gate_id: Some(squatted),
            actor: "mallory".into(),
            message: "Ship?".into(),
            approvers: vec!["mallory".into()],
            run_id: Some(run.clone()),
            step: Some("approve".into()),
            ..Default::default()
        })
        .await
        .expect("squat");
    std::fs::write(s.dir.path().join("go"), "").expect("go");
    let parked = s.step_is(&run, "approve", StepStatus::Waiting).await;
    let real = step(&parked, "approve").gate_id.expect("a gate");
    assert_ne!(
        real, squatted,
        "the runner must not adopt a gate it did not open"
    );
    assert_eq!(real, GateId::for_step(&run, "approve", 2));
    let view = s.client.show(real).await.expect("show");
    assert_eq!(view.approvers.users, vec!["bob".to_string()]);
    // Mallory approves her own gate: the run is not woken by it.
    s.client
        .approve(ApproveGate {
            gate_id: squatted,
            actor: "mallory".into(),
            ..Default::default()
        })
        .await
        .expect("mallory approves her gate");
    s.runners[0].wait_for_line("did not open the gate; ignored", Duration::from_secs(30));
    let still = s.client.show_run(&run).await.expect("run");
    assert_eq!(step(&still, "approve").status, StepStatus::Waiting);
    s.client
        .approve(ApproveGate {
            gate_id: real,
            actor: "bob".into(),
            ..Default::default()
        })
        .await
        .expect("bob approves");
    let done = s.finished(&run).await;
    assert_eq!(done.status, RunStatus::Succeeded);
    assert_eq!(s.file("after.txt").trim_end(), "by bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_the_gatekeeper_refuses_ends_its_step_with_the_reason() {
    let s = Runs::start_with(1, &["--strict"]).await;
    let run = s
        .submit(
            "name: open\nsteps:\n  - name: g\n    use: moira.gate\n    with: { message: \"Anyone?\" }\n  - {name: after, run: 'true', depends_on: [g]}\n",
            &[],
        )
        .await;
    aborted_with(&s.finished(&run).await, "g", "name its approvers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_message_that_renders_too_long_ends_its_step_instead_of_retrying_for_ever() {
    let s = Runs::start(1).await;
    let big = "x".repeat(5_000);
    let run = s
        .submit(
            "name: big\nvars: { BIG: small }\nsteps:\n  - name: g\n    use: moira.gate\n    with: { message: \"${{ vars.BIG }}\" }\n  - {name: after, run: 'true', depends_on: [g]}\n",
            &[("BIG", &big)],
        )
        .await;
    aborted_with(&s.finished(&run).await, "g", "longer than");
}

#[test]
fn hostile_workflows_are_refused_at_submit() {
    let server = NatsServer::start();
    let dir = TempDir::new("moira-hostile").expect("tmp");
    let cases = [
        (
            format!("name: deep\nsteps:\n  - {{name: a, run: 'true', when: '${{{{ {}true }}}}'}}\n", "!".repeat(5_000)),
            "nest",
        ),
        (
            "name: big\nsteps:\n  - name: g\n    use: moira.gate\n    with: {message: m, timeout: 18446744073709552s, on_timeout: approve}\n".to_string(),
            "with.timeout",
        ),
        (
            "name: env\nsteps:\n  - {name: a, run: 'true', env: {LD_PRELOAD: /tmp/x.so}}\n".to_string(),
            "reserved",
        ),
    ];
    for (i, (yaml, needle)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("w{i}.yml"));
        std::fs::write(&file, yaml).expect("write");
        let (code, _, err) = moira(
            &server.url(),
            &["run", "submit", &file.display().to_string()],
        );
        assert_ne!(code, 0, "{err}");
        assert!(err.contains(needle), "missing {needle:?} in: {err}");
    }
}

#[test]
fn invalid_workflows_get_clear_errors_before_anything_runs() {
    let server = NatsServer::start();
    let dir = TempDir::new("moira-invalid").expect("tmp");
    let file = dir.path().join("bad.yml");
    std::fs::write(
        &file,
        "name: bad\nsteps:\n  - {name: a, run: 'echo ${{ vars.nope }}', depends_on: [ghost]}\n  - {name: a, run: 'true', timeout: soon}\n",
    )
    .expect("write");
    let (code, _, err) = moira(
        &server.url(),
        &["run", "submit", &file.display().to_string()],
    );
    assert_ne!(code, 0);
    for needle in [
        "unknown step 'ghost'",
        "vars.nope",
        "two steps are named 'a'",
        "timeout",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in: {err}");
    }
    let (code, _, err) = moira(&server.url(), &["run", "submit", "/nonexistent.yml"]);
    assert_eq!(code, 2, "{err}");
}

const LOCAL: &str = r#"
name: local
steps:
  - name: approve
    use: moira.gate
    with: { message: "Deploy?", inputs: [WINDOW], required: [WINDOW] }
  - name: deploy
    run: echo "window=$WINDOW by=${{ steps.approve.outputs.approved_by }}"
    depends_on: [approve]
"#;

fn local_run(dir: &TempDir, port: u16) -> Proc {
    let file = dir.path().join("local.yml");
    std::fs::write(&file, LOCAL).expect("write");
    ProcBuilder::new(bin("moira"), "moira run --local")
        .args(["--as", "alice", "run"])
        .arg(&file)
        .args(["--local", "--port", &port.to_string(), "--data"])
        .arg(dir.path().join("stack"))
        .env("MOIRA_LOG", "warn")
        .stdin_piped()
        .spawn()
        .expect("spawn")
}

#[test]
fn run_local_asks_at_the_terminal() {
    let dir = TempDir::new("moira-local").expect("tmp");
    let mut p = local_run(&dir, moira_testkit::free_port());
    p.wait_for_line("Approve?", Duration::from_secs(60));
    p.write_stdin("y\nsat\n");
    p.wait_for_line("[deploy] window=sat by=alice", Duration::from_secs(60));
    assert_eq!(
        p.wait(Duration::from_secs(60)).and_then(|s| s.code()),
        Some(0)
    );
}

#[test]
fn run_local_lets_another_terminal_decide() {
    let dir = TempDir::new("moira-local").expect("tmp");
    let port = moira_testkit::free_port();
    let mut p = local_run(&dir, port);
    p.wait_for_line("Approve?", Duration::from_secs(60));
    let url = format!("nats://127.0.0.1:{port}");
    let (_, list, _) = moira(&url, &["--json", "gate", "list"]);
    let gates: serde_json::Value = serde_json::from_str(&list).expect("json");
    let id = gates[0]["id"].as_str().expect("a waiting gate").to_string();
    let (code, _, err) = moira(
        &url,
        &[
            "--as",
            "bob",
            "gate",
            "approve",
            &id,
            "--input",
            "WINDOW=sun",
        ],
    );
    assert_eq!(code, 0, "{err}");
    p.wait_for_line("[deploy] window=sun by=bob", Duration::from_secs(60));
    assert_eq!(
        p.wait(Duration::from_secs(60)).and_then(|s| s.code()),
        Some(0)
    );
}

/// Whether a process runs (a zombie, waiting to be reaped, does not count).
pub(crate) fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
        .ok()
        .and_then(|st| {
            st.rsplit(')')
                .next()
                .map(|rest| rest.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_a_running_step_and_what_it_started() {
    let s = Runs::start(1).await;
    let yaml = "name: long\nsteps:\n  - name: deploy\n    run: |\n      sleep 60 &\n      echo $! > {dir}/pid\n      echo started\n      wait\n";
    let run = s.submit(yaml, &[]).await;
    s.step_printed(&run, "deploy", "started").await;
    let pid = s.file("pid");
    assert!(alive(&pid), "the step's child runs");
    s.client.cancel_run(&run, "alice").await.expect("cancel");
    let done = s.finished(&run).await;
    assert_eq!(done.status, RunStatus::Cancelled);
    assert_eq!(step(&done, "deploy").status, StepStatus::Cancelled);
    assert!(
        !alive(&pid),
        "the step's background child was killed with it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_timeout_kills_its_processes() {
    let s = Runs::start(1).await;
    let yaml = "name: slow\nsteps:\n  - name: hang\n    timeout: 1s\n    run: |\n      sleep 60 &\n      echo $! > {dir}/pid\n      wait\n";
    let run = s.submit(yaml, &[]).await;
    let done = s.finished(&run).await;
    assert_eq!(done.status, RunStatus::Failed);
    let reason = step(&done, "hang").reason.clone().unwrap_or_default();
    assert!(reason.contains("timed out"), "{reason}");
    assert!(
        !alive(&s.file("pid")),
        "the step's background child was killed"
    );
}
