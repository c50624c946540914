//! `call:` steps: a step that runs another workflow of the run's bundle as
//! a child run, with its own steps and gates. The parent is parked while
//! the child runs (no runner is held for it); the child's end enqueues a
//! job for the parent, which records what the child gave back.
//!
//! A child run's id is derived from the parent, the step, its iteration
//! and attempt, so every runner that gets there computes the same one:
//! the parent's `StepCalled` is the claim, the child's `RunSubmitted` is
//! written with expected sequence 0, and a runner that stopped between
//! the two finds the child missing and writes it.

use std::collections::BTreeMap;

use moira_client::Client;
use moira_protocol::run::{ParentRun, RunEnvelope, RunEvent, RunState, RunStatus, StepStatus};
use moira_protocol::time::now_ms;
use moira_workflow::{Template, Workflow};

use crate::job::{append, ActError, Tail};
use crate::plan::lookup;
use crate::steps::{env, RUNNER_ACTOR};

/// The child run id of one attempt of a `call:` step.
pub fn child_id(run_id: &str, step: &str, iteration: u32, attempt: u32) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("moira-call:{run_id}/{step}/{iteration}/{attempt}").as_bytes(),
    )
    .to_string()
}

/// The child's `RunSubmitted`: the called file from the run's bundle, its
/// variables from the step's `with:` (rendered against the parent).
fn child_submission(
    wf: &Workflow,
    run: &RunState,
    step: &str,
    child: &str,
) -> Result<RunEnvelope, String> {
    let def = wf
        .step(step)
        .ok_or_else(|| format!("no step {step} in the workflow"))?;
    let target = def.call.as_deref().unwrap_or_default();
    let from = run.path.clone().unwrap_or_default();
    let key = moira_workflow::bundle::resolve(&from, target)?;
    let text = run
        .includes
        .get(&key)
        .ok_or_else(|| format!("{key} is not among the run's submitted files"))?;
    let look = lookup(wf, run);
    let args: BTreeMap<String, String> = def
        .args
        .iter()
        .map(|(k, v)| {
            let t = v.text();
            let value = Template::parse(&t)
                .map(|tpl| tpl.render(&look))
                .unwrap_or(t);
            (k.clone(), value)
        })
        .collect();
    let child_wf = Workflow::parse(text, &args).map_err(|e| format!("{key}: {e}"))?;
    let vars = child_wf
        .vars
        .iter()
        .map(|(k, v)| (k.clone(), v.text()))
        .collect();
    Ok(RunEnvelope {
        schema: 1,
        run_id: child.to_string(),
        // The child acts for the parent's submitter (its gates' requester).
        actor: run.submitted_by.clone(),
        at: now_ms(),
        event: RunEvent::RunSubmitted {
            name: child_wf.name,
            workflow: text.clone(),
            vars,
            path: Some(key),
            includes: run.includes.clone(),
            parent: Some(ParentRun {
                run_id: run.id.clone(),
                step: step.to_string(),
            }),
        },
        signed: None,
    })
}

/// Writes the child run if it is not there yet (a runner that gets here
/// second finds the same run, with the same id and files).
async fn write_child(client: &Client, child: &RunEnvelope) -> Result<(), ActError> {
    match client.append_run(child, Some(0)).await {
        Ok(_) | Err(moira_client::append::AppendError::Conflict) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Asks for a job on the child run.
async fn start_child(client: &Client, child: &str) -> Result<(), ActError> {
    client.enqueue_run(child, &format!("call:{child}")).await?;
    Ok(())
}

/// Starts one attempt of a `call:` step.
pub(crate) async fn call(
    client: &Client,
    wf: &Workflow,
    run: &RunState,
    step: String,
    attempt: u32,
    iteration: u32,
    last: &mut Tail,
) -> Result<bool, ActError> {
    let child = child_id(&run.id, &step, iteration, attempt);
    let submission = match child_submission(wf, run, &step, &child) {
        Ok(s) => s,
        Err(reason) => {
            let reason = format!("cannot start the called workflow: {reason}");
            tracing::warn!(run_id = run.id, step, "{reason}");
            let ev = RunEvent::StepAborted { step, reason };
            append(client, last, env(&run.id, ev, RUNNER_ACTOR)).await?;
            return Ok(true);
        }
    };
    // The child exists before the parent names it (so whoever reads the
    // parent finds it), the parent's record is the claim, and only then
    // does the child get a job (so its runner finds it named by the parent).
    write_child(client, &submission).await?;
    let ev = RunEvent::StepCalled {
        step: step.clone(),
        attempt,
        iteration,
        child: child.clone(),
    };
    append(client, last, env(&run.id, ev, RUNNER_ACTOR)).await?;
    start_child(client, &child).await?;
    tracing::info!(run_id = run.id, step, child, attempt, "called a workflow");
    Ok(true)
}

/// Looks at the child run a `call:` step waits on; records its end. A
/// child that has not ended is asked for a job again (deduplicated): a
/// runner may have stopped after the parent's claim and before the child's
/// first job.
pub(crate) async fn check_child(
    client: &Client,
    wf: &Workflow,
    run: &RunState,
    step: String,
    last: &mut Tail,
) -> Result<bool, ActError> {
    let Some(st) = run.steps.get(&step) else {
        return Ok(false);
    };
    let Some(child) = st.child.clone() else {
        return Ok(false);
    };
    let Some(def) = wf.step(&step) else {
        return Ok(false);
    };
    let Some(rec) = client.read_run_fresh(&child).await? else {
        // The runner that recorded the call stopped before writing it.
        match child_submission(wf, run, &step, &child) {
            Ok(s) => {
                write_child(client, &s).await?;
                start_child(client, &child).await?;
            }
            Err(e) => tracing::error!(run_id = run.id, step, "cannot write the child run: {e}"),
        }
        return Ok(false);
    };
    let Some(outcome) = rec.state.finished else {
        if rec.state.steps.is_empty() {
            start_child(client, &child).await?;
        }
        return Ok(false);
    };
    let mut outputs = BTreeMap::new();
    if outcome == RunStatus::Succeeded {
        outputs = child_outputs(&rec.state);
    }
    outputs
        .entry("run_id".to_string())
        .or_insert_with(|| child.clone());
    let mut retry = false;
    let status = match outcome {
        RunStatus::Succeeded => StepStatus::Succeeded,
        // A denial inside the child is the call's denial: its on_deny applies.
        RunStatus::Rejected => match def.on_deny {
            moira_workflow::OnDeny::Fail => StepStatus::Rejected,
            moira_workflow::OnDeny::Continue => StepStatus::Succeeded,
            moira_workflow::OnDeny::Skip => StepStatus::Skipped,
        },
        RunStatus::Cancelled if run.cancelled_by.is_some() => StepStatus::Cancelled,
        _ => {
            retry = st.attempt <= def.retries;
            StepStatus::Failed
        }
    };
    let reason = (outcome != RunStatus::Succeeded).then(|| {
        format!(
            "the called workflow ended {}{}",
            outcome.as_str(),
            if retry { "; calling it again" } else { "" }
        )
    });
    let ev = RunEvent::CallReturned {
        step: step.clone(),
        child: child.clone(),
        outcome,
        status,
        retry,
        outputs,
        reason,
    };
    append(client, last, env(&run.id, ev, RUNNER_ACTOR)).await?;
    tracing::info!(
        run_id = run.id,
        step,
        child,
        outcome = outcome.as_str(),
        "the called workflow ended"
    );
    Ok(true)
}

/// The outputs a finished child gives back: its `outputs:` rendered over
/// its own steps.
fn child_outputs(child: &RunState) -> BTreeMap<String, String> {
    let Ok(wf) = Workflow::parse(&child.workflow, &child.vars) else {
        return BTreeMap::new();
    };
    let look = lookup(&wf, child);
    wf.outputs
        .iter()
        .map(|(k, t)| {
            let v = Template::parse(t)
                .map(|tpl| tpl.render(&look))
                .unwrap_or_default();
            (k.clone(), v)
        })
        .collect()
}

/// Cancels a call step's child with its parent: records the cancel on the
/// child (by whoever cancelled the parent), cancels the gates it waits on,
/// and asks for a job on it, which cancels its steps and its own children.
pub(crate) async fn cancel_child(
    client: &Client,
    run: &RunState,
    child: &str,
) -> Result<(), ActError> {
    let Some(rec) = client.read_run_fresh(child).await? else {
        return Ok(());
    };
    let c = rec.state;
    if c.finished.is_some() {
        return Ok(());
    }
    let by = run
        .cancelled_by
        .clone()
        .unwrap_or_else(|| RUNNER_ACTOR.to_string());
    if c.cancelled_by.is_none() {
        let ev = env(child, RunEvent::RunCancelled { by: by.clone() }, &by);
        client.append_run(&ev, None).await?;
    }
    crate::commands::cancel_gates(client, &c, &by).await?;
    client
        .enqueue_run(child, &format!("cancel:{child}"))
        .await?;
    tracing::info!(
        run_id = run.id,
        child,
        "cancelled the called workflow with its parent"
    );
    Ok(())
}

/// Asks for a job on a finished child's parent, so it records the end.
pub(crate) async fn wake_parent(client: &Client, run: &RunState) -> Result<(), ActError> {
    let Some(up) = &run.parent else {
        return Ok(());
    };
    client
        .enqueue_run(&up.run_id, &format!("return:{}", run.id))
        .await?;
    Ok(())
}
