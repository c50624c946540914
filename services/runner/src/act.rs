//! Carrying out one planned action on a run: one function per action.
//! Each appends what it did with the run's expected last sequence
//! (`last`), so a runner that loses a race reads the run again.

use std::collections::BTreeMap;
use std::sync::Arc;

use moira_client::{Client, GateView, OpenGate};
use moira_protocol::run::{GateOutcome, RunEvent, RunSignature, RunState, RunStatus, StepStatus};
use moira_protocol::statement::{run_statement, RunAbout, RunVerb};
use moira_protocol::time::now_ms;
use moira_protocol::GateId;
use moira_workflow::Workflow;

use crate::exec::{self, StepRun};
use crate::job::{append, ActError, Done, Held, Tail};
use crate::plan::Action;
use crate::steps::{
    env, gate_id_of_iteration, open_spec, ours, resolution, step_command, RUNNER_ACTOR,
};
use crate::Shared;

/// Carries out one action; `Ok(true)` when it changed the run.
pub(crate) async fn act(
    shared: &Arc<Shared>,
    wf: &Workflow,
    run: &RunState,
    action: Action,
    last: &mut Tail,
    held: &mut Held,
) -> Result<bool, ActError> {
    let client = &shared.client;
    let id = &run.id;
    let record = |ev| env(id, ev, RUNNER_ACTOR);
    match action {
        Action::Finish(status) => finish(client, run, status, last).await?,
        Action::Skip { step, reason } => {
            append(client, last, record(RunEvent::StepSkipped { step, reason })).await?
        }
        Action::Abort { step, reason } => {
            append(client, last, record(RunEvent::StepAborted { step, reason })).await?
        }
        Action::Cancel { step } => {
            if let Some(child) = run.steps.get(&step).and_then(|s| s.child.as_deref()) {
                crate::call::cancel_child(client, run, child).await?;
            }
            append(client, last, record(RunEvent::StepCancelled { step })).await?
        }
        Action::Call {
            step,
            attempt,
            iteration,
        } => return crate::call::call(client, wf, run, step, attempt, iteration, last).await,
        Action::CheckChild { step } => {
            return crate::call::check_child(client, wf, run, step, last).await
        }
        Action::CutOff {
            step,
            attempt,
            retry,
        } => cut_off(client, id, step, attempt, retry, last).await?,
        Action::Start {
            step,
            attempt,
            iteration,
        } => return start(shared, wf, run, step, attempt, iteration, last, held).await,
        Action::AutoApprove { step } => return auto_approve(client, wf, run, step, last).await,
        Action::Reapprove { step, reason } => {
            tracing::info!(run_id = id, step, "{reason}");
            let ev = RunEvent::StepReset {
                step,
                reason: Some(reason),
            };
            append(client, last, record(ev)).await?
        }
        Action::OpenGate { step, review } => {
            return open_gate(client, wf, run, step, review, last).await
        }
        Action::CheckGate { step } => return check_gate(shared, wf, run, step, last).await,
    }
    Ok(true)
}

async fn finish(
    client: &Client,
    run: &RunState,
    status: RunStatus,
    last: &mut Tail,
) -> Result<(), ActError> {
    let id = &run.id;
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
    // A child run's end moves its parent on.
    crate::call::wake_parent(client, run).await?;
    Ok(())
}

/// A step whose runner stopped while it ran: failed, and retried if it may be.
async fn cut_off(
    client: &Client,
    id: &str,
    step: String,
    attempt: u32,
    retry: bool,
    last: &mut Tail,
) -> Result<(), ActError> {
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
    append(client, last, env(id, ev, RUNNER_ACTOR)).await
}

/// Claims a `run:` step (the append is the claim) and starts it in a task
/// this job holds.
#[allow(clippy::too_many_arguments)]
async fn start(
    shared: &Arc<Shared>,
    wf: &Workflow,
    run: &RunState,
    step: String,
    attempt: u32,
    iteration: u32,
    last: &mut Tail,
    held: &mut Held,
) -> Result<bool, ActError> {
    let (client, id) = (&shared.client, &run.id);
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
    let (command, vars) = step_command(wf, run, def, &st);
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
    Ok(true)
}

/// A gate step whose condition is false: waiting and approved at once, by
/// the runner, which signs the approval with its service key.
async fn auto_approve(
    client: &Client,
    wf: &Workflow,
    run: &RunState,
    step: String,
    last: &mut Tail,
) -> Result<bool, ActError> {
    let id = &run.id;
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
    let iteration = run.steps.get(&step).map_or(1, |s| s.iteration.max(1));
    let g = gate_id_of_iteration(id, &step, false, iteration, 1);
    // Nobody looked at what the gate names: it approves no digest.
    outputs.insert("gate_id".into(), g.to_string());
    outputs.insert("digests".into(), String::new());
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
            includes: None,
            verb: RunVerb::AutoApprove,
            run_id: id,
            actor: RUNNER_ACTOR,
            workflow: &run.workflow,
            vars: &none,
            step: Some(&step),
            command_id: &command_id,
            at: resolved.at,
        };
        let signature = signer
            .sign(&run_statement(&about))
            .map_err(|e| ActError::Other(anyhow::anyhow!("signing an auto-approval: {e}")))?;
        resolved.signed = Some(RunSignature {
            command_id,
            signed_at: resolved.at,
            signature,
            signer: Some(moira_client::signing::fingerprint(&signer.public_key())),
        });
    }
    append(client, last, resolved).await?;
    Ok(true)
}

/// Opens the step's gate (or its review gate) and records that it waits.
async fn open_gate(
    client: &Client,
    wf: &Workflow,
    run: &RunState,
    step: String,
    review: bool,
    last: &mut Tail,
) -> Result<bool, ActError> {
    let id = &run.id;
    let Some(def) = wf.step(&step) else {
        return Ok(false);
    };
    let mut spec = open_spec(wf, run, def, review);
    let st = run.steps.get(&step).cloned().unwrap_or_default();
    let iteration = if review { 1 } else { st.iteration.max(1) };
    if iteration > 1 {
        // Opened again after its approval expired: the approver is told.
        spec.summary = st.reason.clone();
    }
    let (g, view) = match open_own_gate(client, run, &step, review, iteration, spec).await {
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
    Ok(true)
}

/// Looks at the gate a step waits on and records its decision, if any
/// (in require mode only once the gate's trail verifies).
async fn check_gate(
    shared: &Shared,
    wf: &Workflow,
    run: &RunState,
    step: String,
    last: &mut Tail,
) -> Result<bool, ActError> {
    let (client, id) = (&shared.client, &run.id);
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
                    env(
                        id,
                        RunEvent::StepReset {
                            step: d,
                            reason: None,
                        },
                        RUNNER_ACTOR,
                    ),
                )
                .await?;
            }
        }
    }
    Ok(true)
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
    iteration: u32,
    spec: OpenGate,
) -> Result<(GateId, GateView), ActError> {
    // What the gate-keeper would refuse, it will refuse every time.
    let wanted = moira_protocol::gate::spec_from(&spec, &moira_protocol::gate::Policy::dev())
        .map_err(|e| ActError::Refused(format!("{}: {}", e.code.as_str(), e.message)))?;
    for n in 1..=GATE_ID_TRIES {
        let g = gate_id_of_iteration(&run.id, step, review, iteration, n);
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
