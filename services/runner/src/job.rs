//! Advancing one run for one job: read the run, plan, record, start steps,
//! and keep going until nothing is left that this runner can do now. A run
//! whose remaining work waits on gates is parked: the job is acked and no
//! runner is held; a gate decision enqueues the next job.
//!
//! Every event that depends on the run's state is appended with the run's
//! expected last sequence, so two runners advancing the same run never both
//! act on the same step: the loser reads the run again and plans again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use moira_client::append::AppendError;
use moira_client::{Client, GateView, OpenGate};
use moira_protocol::run::{GateOutcome, RunEnvelope, RunEvent, RunSignature, RunState, StepStatus};
use moira_protocol::statement::{run_statement, RunAbout, RunVerb};
use moira_protocol::time::now_ms;
use moira_protocol::{GateId, GateStatus};
use moira_workflow::{Step, Template, Workflow, GATE_OUTPUTS};

use crate::exec::{self, StepResult, StepRun};
use crate::plan::{lookup, plan, Action};
use crate::Shared;

/// The actor runners use on gates they open and events they write.
pub const RUNNER_ACTOR: &str = "moira:runner";

/// What a finished step task reports.
struct Done {
    step: String,
    attempt: u32,
    result: StepResult,
}

fn env(run_id: &str, event: RunEvent, actor: &str) -> RunEnvelope {
    RunEnvelope {
        schema: 1,
        run_id: run_id.to_string(),
        actor: actor.to_string(),
        at: now_ms(),
        event,
        signed: None,
    }
}

/// The deterministic id of a step's gate (its review gate is another one,
/// reused across push-backs). `n` is 1 unless someone else took that id
/// first (see [`open_own_gate`]).
pub fn gate_id(run_id: &str, step: &str, review: bool, n: u32) -> GateId {
    if review {
        GateId::for_step(run_id, &format!("{step}#review"), n)
    } else {
        GateId::for_step(run_id, step, n)
    }
}

/// How many ids a step tries before it gives up on opening its gate.
const GATE_ID_TRIES: u32 = 4;

/// Opens a step's gate, or re-attaches to it (a restarted runner, a
/// review after a push-back). Gate ids can be computed by anyone, so an
/// existing gate is accepted only if this run opened it: same run, step,
/// requester and policy. A gate someone else put there is never adopted
/// (its opener would have chosen its approvers); the step moves to the
/// next id instead.
async fn open_own_gate(
    client: &Client,
    run: &RunState,
    step: &str,
    review: bool,
    spec: OpenGate,
) -> Result<(GateId, GateView), ActError> {
    // What the gate-keeper would refuse, it will refuse every time.
    let wanted = moira_protocol::gate::spec_from(&spec, &moira_protocol::gate::Policy::dev())
        .map_err(|e| ActError::Refused(format!("{}: {}", e.code.as_str(), e.message)))?;
    for n in 1..=GATE_ID_TRIES {
        let g = gate_id(&run.id, step, review, n);
        let attempt = OpenGate {
            gate_id: Some(g),
            ..spec.clone()
        };
        match client
            .send_as_service(moira_protocol::Command::Open(attempt))
            .await
        {
            Ok(v) => return Ok((g, v)),
            Err(e) if e.code() == Some(moira_protocol::ErrorCode::Conflict) => {
                let view = client.show_fresh(g).await?;
                if ours(
                    &view,
                    run,
                    step,
                    &spec.actor,
                    spec.allow_self_approval,
                    &wanted,
                ) {
                    return Ok((g, view));
                }
                tracing::warn!(
                    run_id = run.id,
                    step,
                    gate = %g,
                    by = view.requested_by,
                    "a gate this run did not open holds the step's gate id; using another id"
                );
            }
            Err(moira_client::ClientError::Rejected(e))
                if matches!(
                    e.code,
                    moira_protocol::ErrorCode::NotAllowed
                        | moira_protocol::ErrorCode::BadRequest
                        | moira_protocol::ErrorCode::TooLarge
                        | moira_protocol::ErrorCode::Unsigned
                        | moira_protocol::ErrorCode::BadSignature
                        | moira_protocol::ErrorCode::WrongKey
                ) =>
            {
                return Err(ActError::Refused(e.to_string()));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ActError::Refused(format!(
        "every gate id step {step} may use is taken by a gate this run did not open"
    )))
}

/// Whether an existing gate is the one this run opened for `step`.
fn ours(
    view: &GateView,
    run: &RunState,
    step: &str,
    requester: &str,
    spec_self_approval: Option<bool>,
    wanted: &moira_protocol::event::GateSpec,
) -> bool {
    view.run_id.as_deref() == Some(run.id.as_str())
        && view.step.as_deref() == Some(step)
        && view.requested_by == requester
        && view.approvers == wanted.approvers
        && view.approvals_required == wanted.approvals_required
        // Left unset, the gate-keeper's policy picks it.
        && spec_self_approval.is_none_or(|a| a == view.allow_self_approval)
        && view.input_names == wanted.inputs
        && view.required_inputs == wanted.required
        && view.on_timeout == wanted.on_timeout
}

pub async fn advance(
    shared: Arc<Shared>,
    run_id: String,
    job_seq: u64,
    redelivered: bool,
) -> anyhow::Result<()> {
    let client = &shared.client;
    let mut held = Held {
        job_seq,
        tasks: JoinSet::new(),
        cancel: tokio_util::sync::CancellationToken::new(),
    };
    let mut cut_off_handled = !redelivered;
    // Steps started here are killed if the run is cancelled meanwhile.
    let watcher = {
        let (c, id, token) = (client.clone(), run_id.clone(), held.cancel.clone());
        tokio::spawn(async move {
            if let Ok(v) = c
                .wait_run_until(&id, |r| r.cancelled_by.is_some() || r.finished.is_some())
                .await
            {
                if v.status == moira_protocol::run::RunStatus::Cancelled {
                    token.cancel();
                }
            }
        })
    };
    let _stop_watching = AbortOnDrop(watcher);
    let mut submission_checked = false;
    loop {
        let Some(rec) = client.read_run_fresh(&run_id).await? else {
            tracing::warn!(run_id, "a job for an unknown run; dropping it");
            return Ok(());
        };
        let run = rec.state;
        let mut last = rec.last_seq;
        if run.finished.is_some() {
            held.tasks.abort_all();
            if !shared.keep_work_files {
                remove_run_files(&shared, &run_id).await;
            }
            return Ok(());
        }
        // A run that did not come through a runner's checks (written
        // straight into the stream) is never acted on in require mode.
        // The submission never changes: check it once per job.
        if let Some(registry) = shared.verify.as_ref().filter(|_| !submission_checked) {
            submission_checked = true;
            if let Err(why) = moira_service::verify::check_submission(&run, &registry.current()) {
                tracing::error!(
                    run_id,
                    submitter = run.submitted_by,
                    "the run is not acted on: {why}"
                );
                return Ok(());
            }
        }
        let wf = match Workflow::parse(&run.workflow, &run.vars) {
            Ok(wf) => wf,
            Err(e) => {
                tracing::error!(run_id, "the stored workflow no longer parses: {e}");
                let ev = env(
                    &run_id,
                    RunEvent::RunFinished {
                        status: moira_protocol::run::RunStatus::Failed,
                    },
                    RUNNER_ACTOR,
                );
                client.append_run(&ev, Some(last)).await.ok();
                return Ok(());
            }
        };
        let actions = plan(&wf, &run, (!cut_off_handled).then_some(job_seq));
        cut_off_handled = true;
        let mut progressed = false;
        let mut conflict = false;
        for action in actions {
            match act(&shared, &wf, &run, action, &mut last, &mut held).await {
                Ok(true) => progressed = true,
                Ok(false) => {}
                Err(ActError::Conflict) => {
                    conflict = true;
                    break;
                }
                Err(ActError::Other(e)) => return Err(e),
                Err(ActError::Refused(m)) => return Err(anyhow::anyhow!(m)),
            }
        }
        if conflict || progressed {
            continue;
        }
        // Nothing to do now: wait for a step of ours, or stop (parked, or
        // waiting on steps another runner holds).
        match held.tasks.join_next().await {
            Some(Ok(done)) => record_finish(client, &run_id, &wf, done).await?,
            Some(Err(e)) => tracing::error!(run_id, "a step task failed: {e}"),
            None => return Ok(()),
        }
    }
}

/// Removes a finished run's folder (steps' files and outputs).
async fn remove_run_files(shared: &Shared, run_id: &str) {
    let dir = shared.work_dir.join(run_id);
    match tokio::fs::remove_dir_all(&dir).await {
        Ok(()) => tracing::debug!(run_id, "removed the run's folder"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(run_id, "cannot remove {}: {e}", dir.display()),
    }
}

/// What one job holds while it advances its run.
struct Held {
    /// The job's stream sequence, recorded on the steps it starts.
    job_seq: u64,
    /// The steps it runs.
    tasks: JoinSet<Done>,
    /// Cancelled when the run is cancelled; kills those steps.
    cancel: tokio_util::sync::CancellationToken,
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum ActError {
    Conflict,
    /// The gate-keeper refused a gate this step asked for: retrying cannot
    /// help, so the step ends with the reason.
    Refused(String),
    Other(anyhow::Error),
}

impl From<AppendError> for ActError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Conflict => ActError::Conflict,
            other => ActError::Other(anyhow::anyhow!("appending a run event: {other}")),
        }
    }
}

impl From<moira_client::ClientError> for ActError {
    fn from(e: moira_client::ClientError) -> Self {
        ActError::Other(e.into())
    }
}

async fn append(client: &Client, last: &mut u64, ev: RunEnvelope) -> Result<(), ActError> {
    *last = client.append_run(&ev, Some(*last)).await?;
    Ok(())
}

/// Carries out one action; `Ok(true)` when it changed the run.
async fn act(
    shared: &Arc<Shared>,
    wf: &Workflow,
    run: &RunState,
    action: Action,
    last: &mut u64,
    held: &mut Held,
) -> Result<bool, ActError> {
    let client = &shared.client;
    let id = &run.id;
    match action {
        Action::Finish(status) => {
            append(
                client,
                last,
                env(id, RunEvent::RunFinished { status }, RUNNER_ACTOR),
            )
            .await?;
            moira_service::ops::metrics()
                .runs
                .get_or_create(&moira_service::ops::StatusLabels {
                    status: status.as_str().to_string(),
                })
                .inc();
            tracing::info!(run_id = id, status = status.as_str(), "run finished");
        }
        Action::Skip { step, reason } => {
            append(
                client,
                last,
                env(id, RunEvent::StepSkipped { step, reason }, RUNNER_ACTOR),
            )
            .await?
        }
        Action::Abort { step, reason } => {
            append(
                client,
                last,
                env(id, RunEvent::StepAborted { step, reason }, RUNNER_ACTOR),
            )
            .await?
        }
        Action::Cancel { step } => {
            append(
                client,
                last,
                env(id, RunEvent::StepCancelled { step }, RUNNER_ACTOR),
            )
            .await?
        }
        Action::CutOff {
            step,
            attempt,
            retry,
        } => {
            let reason = if retry {
                "cut off: its runner stopped; retrying".to_string()
            } else {
                "cut off: its runner stopped while it ran (no retries left)".to_string()
            };
            tracing::warn!(run_id = id, step, "{reason}");
            let ev = RunEvent::StepFinished {
                step,
                attempt,
                ok: false,
                exit_code: None,
                outputs: BTreeMap::new(),
                reason: Some(reason),
                retry,
            };
            append(client, last, env(id, ev, RUNNER_ACTOR)).await?;
        }
        Action::Start {
            step,
            attempt,
            iteration,
        } => {
            let Some(def) = wf.step(&step) else {
                return Ok(false);
            };
            let ev = RunEvent::StepStarted {
                step: step.clone(),
                attempt,
                iteration,
                job: held.job_seq,
                runner: shared.name.clone(),
            };
            // The append is the claim: only one runner gets to start it.
            append(client, last, env(id, ev, RUNNER_ACTOR)).await?;
            let st = run.steps.get(&step).cloned().unwrap_or_default();
            let look = lookup(wf, run);
            // Template values reach the command only as environment
            // variables, never as shell text.
            let (command, values) = Template::parse(def.run.as_deref().unwrap_or(""))
                .map(|t| t.render_shell(&look))
                .unwrap_or_default();
            let mut vars = gate_inputs(wf, run, def);
            for (k, v) in &def.env {
                let v = Template::parse(&v.text())
                    .map(|t| t.render(&look))
                    .unwrap_or_default();
                vars.insert(k.clone(), v);
            }
            vars.extend(st.push_back_inputs.clone());
            // Approvers choose these values: never let them set PATH,
            // LD_PRELOAD and the like (validation refuses such names too).
            vars.retain(|k, _| !moira_workflow::is_reserved_env(k));
            vars.extend(values);
            let job = StepRun {
                run_id: id.clone(),
                step: step.clone(),
                command,
                env: vars,
                pass_env: shared.pass_env.clone(),
                dir: shared.work_dir.join(id).join(&step),
                timeout: def.timeout(),
                previous_outputs: (iteration > 1).then(|| st.outputs.clone()),
                iteration,
                attempt,
                cancel: held.cancel.child_token(),
            };
            let client = client.clone();
            tracing::info!(run_id = id, step, attempt, iteration, "step started");
            held.tasks.spawn(async move {
                let started = std::time::Instant::now();
                let result = exec::run(&client, job).await;
                moira_service::ops::metrics()
                    .step_seconds
                    .observe(started.elapsed().as_secs_f64());
                Done {
                    step,
                    attempt,
                    result,
                }
            });
        }
        Action::AutoApprove { step } => {
            let Some(def) = wf.step(&step) else {
                return Ok(false);
            };
            let mut outputs: BTreeMap<String, String> = [
                ("approved_by", moira_service::verify::AUTO_APPROVER),
                ("approved_at", &moira_protocol::time::rfc3339(now_ms())),
                ("reason", ""),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            for i in def.gate().map(|g| g.inputs.clone()).unwrap_or_default() {
                outputs.entry(i).or_default();
            }
            let g = gate_id(id, &step, false, 1);
            append(
                client,
                last,
                env(
                    id,
                    RunEvent::StepWaiting {
                        step: step.clone(),
                        gate_id: g,
                        gate_iteration: 1,
                    },
                    RUNNER_ACTOR,
                ),
            )
            .await?;
            let mut resolved = env(
                id,
                RunEvent::GateResolved {
                    step: step.clone(),
                    gate_id: g,
                    outcome: GateOutcome::Approved,
                    status: StepStatus::Succeeded,
                    outputs,
                    inputs: BTreeMap::new(),
                },
                RUNNER_ACTOR,
            );
            // The runner decided this one: it signs it with its service key.
            if let Some(signer) = client.signer() {
                let command_id = g.to_string();
                let none = BTreeMap::new();
                let about = RunAbout {
                    verb: RunVerb::AutoApprove,
                    run_id: id,
                    actor: RUNNER_ACTOR,
                    workflow: &run.workflow,
                    vars: &none,
                    step: Some(&step),
                    command_id: &command_id,
                    at: resolved.at,
                };
                let signature = signer.sign(&run_statement(&about)).map_err(|e| {
                    ActError::Other(anyhow::anyhow!("signing an auto-approval: {e}"))
                })?;
                resolved.signed = Some(RunSignature {
                    command_id,
                    signed_at: resolved.at,
                    signature,
                    signer: Some(moira_client::signing::fingerprint(&signer.public_key())),
                });
            }
            append(client, last, resolved).await?;
        }
        Action::OpenGate { step, review } => {
            let Some(def) = wf.step(&step) else {
                return Ok(false);
            };
            let spec = open_spec(wf, run, def, review);
            let (g, view) = match open_own_gate(client, run, &step, review, spec).await {
                Err(ActError::Refused(why)) => {
                    let reason = format!("the gate-keeper refused its gate: {why}");
                    tracing::warn!(run_id = id, step, "{reason}");
                    let ev = RunEvent::StepAborted { step, reason };
                    append(client, last, env(id, ev, RUNNER_ACTOR)).await?;
                    return Ok(true);
                }
                other => other?,
            };
            let ev = RunEvent::StepWaiting {
                step: step.clone(),
                gate_id: g,
                gate_iteration: view.iteration,
            };
            append(client, last, env(id, ev, RUNNER_ACTOR)).await?;
            tracing::info!(run_id = id, step, gate = %g, review, "waiting on a gate");
        }
        Action::CheckGate { step } => {
            let Some(def) = wf.step(&step) else {
                return Ok(false);
            };
            let Some(st) = run.steps.get(&step) else {
                return Ok(false);
            };
            let Some(g) = st.gate_id else {
                return Ok(false);
            };
            let view = match client.show_fresh(g).await {
                Ok(v) => v,
                Err(moira_client::ClientError::NotFound(_)) => return Ok(false),
                Err(e) => return Err(e.into()),
            };
            let Some(ev) = resolution(def, st.gate_iteration, &view) else {
                return Ok(false);
            };
            if let Some(registry) = &shared.verify {
                let rules = moira_service::verify::Rules {
                    require_signatures: true,
                };
                let registry = registry.current();
                let report = moira_service::verify::verify_gate(
                    client,
                    g,
                    &moira_service::verify::Registries::only(registry),
                    rules,
                )
                .await?;
                if !report.ok() {
                    let problems: Vec<String> = report
                        .findings
                        .iter()
                        .filter(|f| !f.ok())
                        .map(|f| {
                            format!(
                                "#{} {} by {}: {}",
                                f.seq,
                                f.kind,
                                f.actor,
                                f.problems.join("; ")
                            )
                        })
                        .collect();
                    tracing::error!(
                        run_id = id,
                        step,
                        gate = %g,
                        "the gate's trail does not verify; the run does not act on it: {}",
                        problems.join(" | ")
                    );
                    return Ok(false);
                }
            }
            let pushed_back = matches!(
                ev,
                RunEvent::GateResolved {
                    outcome: GateOutcome::PushedBack,
                    ..
                }
            );
            append(client, last, env(id, ev, RUNNER_ACTOR)).await?;
            if pushed_back {
                // Everything downstream of the reviewed step runs again.
                for d in wf.dependents(&step) {
                    if run
                        .steps
                        .get(&d)
                        .is_some_and(|s| s.status != StepStatus::Pending)
                    {
                        append(
                            client,
                            last,
                            env(id, RunEvent::StepReset { step: d }, RUNNER_ACTOR),
                        )
                        .await?;
                    }
                }
            }
        }
    }
    Ok(true)
}

/// Records a finished step (no expected sequence: nobody else writes about
/// a step this runner holds; a stale attempt is ignored by the fold).
async fn record_finish(
    client: &Client,
    run_id: &str,
    wf: &Workflow,
    done: Done,
) -> anyhow::Result<()> {
    let retries = wf.step(&done.step).map(|s| s.retries).unwrap_or(0);
    let r = done.result;
    if r.cancelled {
        tracing::info!(
            run_id,
            step = done.step,
            "step killed: its run was cancelled"
        );
        let ev = env(
            run_id,
            RunEvent::StepCancelled { step: done.step },
            RUNNER_ACTOR,
        );
        return keep_recording(client, ev, "a cancelled step").await;
    }
    let retry = !r.ok && done.attempt <= retries;
    tracing::info!(run_id, step = done.step, ok = r.ok, exit_code = ?r.exit_code, retry, "step finished");
    let status = match (r.ok, retry) {
        (true, _) => "succeeded",
        (false, true) => "retried",
        (false, false) => "failed",
    };
    moira_service::ops::metrics()
        .steps
        .get_or_create(&moira_service::ops::StatusLabels {
            status: status.into(),
        })
        .inc();
    let ev = RunEvent::StepFinished {
        step: done.step,
        attempt: done.attempt,
        ok: r.ok,
        exit_code: r.exit_code,
        outputs: r.outputs,
        reason: r.reason,
        retry,
    };
    keep_recording(client, env(run_id, ev, RUNNER_ACTOR), "a finished step").await
}

/// How long a runner keeps trying to record a step's end before it gives
/// up on it (and says so).
const RECORD_FOR: Duration = Duration::from_secs(3600);

/// Records the end of a step that ran here, trying again through a leader
/// election, an outage or a lost connection. The step has run: giving up
/// early would make it look cut off and run it again.
///
/// The appending is a task of its own, so it goes on when the job is
/// dropped (a runner cut off from the broker stops holding its jobs): once
/// the broker answers again, the finish lands, and either it comes first
/// or another runner has already recorded the step as cut off, in which
/// case the fold ignores it (its attempt is over). A lost ack may have
/// stored it already: appending again is then a no-op for the same reason.
async fn keep_recording(
    client: &Client,
    ev: RunEnvelope,
    what: &'static str,
) -> anyhow::Result<()> {
    let client = client.clone();
    let task = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let mut failures: u32 = 0;
        loop {
            match client.append_run(&ev, None).await {
                Ok(_) => {
                    if failures > 0 {
                        tracing::info!(
                            run_id = ev.run_id,
                            "recorded {what} after {failures} failed tries"
                        );
                    }
                    return Ok(());
                }
                Err(e) if started.elapsed() < RECORD_FOR => {
                    if failures % 10 == 0 {
                        tracing::warn!(
                            run_id = ev.run_id,
                            "recording {what} failed ({e}); trying again"
                        );
                    }
                    failures += 1;
                    let pause = Duration::from_millis(200u64 << failures.min(5))
                        .min(Duration::from_secs(5));
                    tokio::time::sleep(pause).await;
                }
                Err(e) => {
                    tracing::error!(
                        run_id = ev.run_id,
                        "gave up recording {what} after {:?}: {e}",
                        started.elapsed()
                    );
                    return Err(anyhow::anyhow!("recording {what}: {e}"));
                }
            }
        }
    });
    task.await
        .map_err(|e| anyhow::anyhow!("recording {what}: the task failed: {e}"))?
}

/// Inputs of the gates a step depends on (directly or not), as env vars.
fn gate_inputs(wf: &Workflow, run: &RunState, step: &Step) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for a in wf.ancestors(&step.name) {
        let Some(g) = wf.step(&a).and_then(Step::gate) else {
            continue;
        };
        if let Some(st) = run.steps.get(&a) {
            for i in &g.inputs {
                if let Some(v) = st.outputs.get(i) {
                    out.insert(i.clone(), v.clone());
                }
            }
        }
    }
    out
}

fn open_spec(wf: &Workflow, run: &RunState, def: &Step, review: bool) -> OpenGate {
    let look = lookup(wf, run);
    let render = |t: &str| {
        Template::parse(t)
            .map(|t| t.render(&look))
            .unwrap_or_else(|_| t.to_string())
    };
    OpenGate {
        gate_id: Some(gate_id(&run.id, &def.name, review, 1)),
        actor: run.submitted_by.clone(),
        run_id: Some(run.id.clone()),
        ..wf.gate_request(def, review, render)
    }
}

/// What a gate's state means for the step waiting on it, if it is decided.
fn resolution(def: &Step, waited_iteration: u32, g: &GateView) -> Option<RunEvent> {
    let review = !def.is_gate();
    let mut outputs = BTreeMap::new();
    for k in GATE_OUTPUTS {
        outputs.insert(k.to_string(), String::new());
    }
    if let Some(gate) = def.gate() {
        for i in &gate.inputs {
            outputs.insert(i.clone(), String::new());
        }
    }
    outputs.insert(
        "approved_by".into(),
        g.approved_by.clone().unwrap_or_default(),
    );
    outputs.insert(
        "approved_at".into(),
        g.approved_at.clone().unwrap_or_default(),
    );
    outputs.insert("reason".into(), g.reason.clone().unwrap_or_default());
    outputs.extend(g.inputs.clone());
    let (outcome, status) = match g.status {
        GateStatus::Waiting if review && g.iteration > waited_iteration => {
            let inputs = g
                .push_backs
                .last()
                .map(|p| p.inputs.clone())
                .unwrap_or_default();
            return Some(RunEvent::GateResolved {
                step: def.name.clone(),
                gate_id: g.id,
                outcome: GateOutcome::PushedBack,
                status: StepStatus::Pending,
                outputs: BTreeMap::new(),
                inputs,
            });
        }
        GateStatus::Waiting => return None,
        GateStatus::Approved => (GateOutcome::Approved, StepStatus::Succeeded),
        GateStatus::Denied => (GateOutcome::Denied, denied_status(def, review)),
        GateStatus::TimedOut => (GateOutcome::TimedOut, StepStatus::Failed),
        GateStatus::Cancelled => (GateOutcome::Cancelled, StepStatus::Cancelled),
    };
    // A review's outputs are the step's own; it only adds the reviewer's.
    if review {
        outputs.retain(|k, _| {
            k == "approved_by" || k == "approved_at" || k == "reason" || g.inputs.contains_key(k)
        });
    }
    Some(RunEvent::GateResolved {
        step: def.name.clone(),
        gate_id: g.id,
        outcome,
        status,
        outputs,
        inputs: BTreeMap::new(),
    })
}

fn denied_status(def: &Step, review: bool) -> StepStatus {
    if review {
        return StepStatus::Rejected;
    }
    match def.on_deny {
        moira_workflow::OnDeny::Fail => StepStatus::Rejected,
        moira_workflow::OnDeny::Continue => StepStatus::Succeeded,
        moira_workflow::OnDeny::Skip => StepStatus::Skipped,
    }
}
