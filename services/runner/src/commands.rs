//! Run commands, answered by whichever runner of the `runner` queue group
//! gets them: `moira.cmd.run.submit` and `moira.cmd.run.cancel`.
//!
//! People never write run events or jobs themselves (the locked-down broker
//! refuses them), so everything a run records passes a runner's checks:
//! a valid workflow from a valid submitter, and a cancel only by someone
//! the run's own policy allows.

use std::collections::{BTreeMap, BTreeSet};

use moira_client::runs::{CancelRun, RunReply, SubmitRun};
use moira_client::{Client, ClientError, RunView};
use moira_protocol::command::CancelGate;
use moira_protocol::ids::is_valid_name;
use moira_protocol::run::{RunEnvelope, RunEvent, RunSignature, RunState, StepStatus};
use moira_protocol::statement::{run_id_for, RunAbout, RunVerb};
use moira_protocol::time::now_ms;
use moira_protocol::wire::{RUN_CANCEL, RUN_SUBMIT};
use moira_protocol::{Command, CommandError, ErrorCode};
use moira_service::verify::{check_fresh, check_run_signature, Signatures};
use moira_service::Registry;
use moira_workflow::Workflow;

use crate::steps::RUNNER_ACTOR;

/// The registry role that may cancel any run.
pub const ADMIN_ROLE: &str = "admin";
/// The largest run command accepted (a workflow is at most 256 KiB).
const MAX_BODY: usize = 512 * 1024;

fn err(code: ErrorCode, message: impl Into<String>) -> CommandError {
    CommandError::new(code, message)
}

fn from_client(e: ClientError) -> CommandError {
    match e {
        ClientError::Rejected(e) => e,
        ClientError::RunNotFound(id) => err(ErrorCode::NotFound, format!("no run has id {id}")),
        other => err(ErrorCode::Unavailable, other.to_string()),
    }
}

/// Answers one run command; returns the JSON reply.
pub async fn handle(
    client: &Client,
    registry: &Registry,
    signatures: Signatures,
    subject: &str,
    body: &[u8],
) -> Vec<u8> {
    let reply = match answer(client, registry, signatures, subject, body).await {
        Ok(run) => RunReply::ok(run),
        Err(e) => {
            tracing::debug!(
                subject,
                code = e.code.as_str(),
                "run command refused: {}",
                e.message
            );
            RunReply::err(e)
        }
    };
    serde_json::to_vec(&reply).unwrap_or_default()
}

async fn answer(
    client: &Client,
    registry: &Registry,
    signatures: Signatures,
    subject: &str,
    body: &[u8],
) -> Result<RunView, CommandError> {
    if body.len() > MAX_BODY {
        return Err(err(
            ErrorCode::TooLarge,
            format!("a run command is at most {MAX_BODY} bytes"),
        ));
    }
    let bad = |e: serde_json::Error| {
        err(
            ErrorCode::BadRequest,
            format!("not a valid run command: {e}"),
        )
    };
    match subject {
        RUN_SUBMIT => {
            let cmd = serde_json::from_slice(body).map_err(bad)?;
            submit(client, registry, signatures, cmd).await
        }
        RUN_CANCEL => {
            let cmd = serde_json::from_slice(body).map_err(bad)?;
            cancel(client, registry, signatures, cmd).await
        }
        other => Err(err(
            ErrorCode::BadRequest,
            format!("unknown run command subject {other}; use {RUN_SUBMIT} or {RUN_CANCEL}"),
        )),
    }
}

fn check_actor(actor: &str) -> Result<(), CommandError> {
    if is_valid_name(actor) {
        Ok(())
    } else {
        Err(err(
            ErrorCode::BadRequest,
            moira_protocol::gate::bad_name("actor", actor),
        ))
    }
}

/// The parts of a signed run command: `None` when it is unsigned and may
/// be; refused when it must be signed, or is signed without its id or time,
/// or was signed too long ago.
fn signed_parts<'a>(
    signatures: Signatures,
    signature: &'a Option<String>,
    id: &'a Option<String>,
    signed_at: Option<u64>,
) -> Result<Option<(&'a str, &'a str, u64)>, CommandError> {
    let Some(sig) = signature else {
        return match signatures {
            Signatures::Off => Ok(None),
            Signatures::Require => Err(err(
                ErrorCode::Unsigned,
                "these runners require signed run commands: sign with your SSH key (--key FILE, or --agent)",
            )),
        };
    };
    let (Some(id), Some(at)) = (id, signed_at) else {
        return Err(err(
            ErrorCode::BadSignature,
            "a signed run command carries its command id (id) and signing time (signed_at)",
        ));
    };
    check_fresh(at, now_ms())?;
    Ok(Some((sig, id, at)))
}

/// Checks a signed run command against its statement; what the run event
/// records of it.
fn signed_by_actor(
    registry: &Registry,
    about: &RunAbout<'_>,
    signature: &str,
) -> Result<RunSignature, CommandError> {
    let fp = check_run_signature(registry, about, signature, false)?;
    Ok(RunSignature {
        command_id: about.command_id.to_string(),
        signed_at: about.at,
        signature: signature.to_string(),
        signer: Some(fp),
    })
}

async fn submit(
    client: &Client,
    registry: &Registry,
    signatures: Signatures,
    cmd: SubmitRun,
) -> Result<RunView, CommandError> {
    check_actor(&cmd.actor)?;
    let wf = Workflow::parse(&cmd.workflow, &cmd.vars)
        .map_err(|e| err(ErrorCode::BadRequest, e.to_string()))?;
    // A workflow that calls others comes with them, and is checked whole:
    // every call resolves inside the bundle, no cycle, no chain too deep.
    let calls = !cmd.includes.is_empty() || wf.steps.iter().any(|s| s.is_call());
    let path = cmd.path.clone().unwrap_or_else(|| "workflow.yml".into());
    if calls {
        moira_workflow::bundle::check(&path, &cmd.workflow, &cmd.vars, &cmd.includes)
            .map_err(|e| err(ErrorCode::BadRequest, e.to_string()))?;
    }
    // The same command id gives the same run, so a retried submit runs once.
    let run_id = match &cmd.id {
        Some(id) => run_id_for(id),
        None => uuid::Uuid::now_v7().to_string(),
    };
    let vars: BTreeMap<String, String> =
        wf.vars.iter().map(|(k, v)| (k.clone(), v.text())).collect();
    let signed = match signed_parts(signatures, &cmd.signature, &cmd.id, cmd.signed_at)? {
        None => None,
        Some((sig, id, at)) => {
            let about = RunAbout {
                includes: Some(&cmd.includes).filter(|i| !i.is_empty()),
                verb: RunVerb::Submit,
                run_id: &run_id,
                actor: &cmd.actor,
                workflow: &cmd.workflow,
                vars: &vars,
                step: None,
                command_id: id,
                at,
            };
            Some(signed_by_actor(registry, &about, sig)?)
        }
    };
    let env = RunEnvelope {
        schema: 1,
        run_id: run_id.clone(),
        actor: cmd.actor.clone(),
        at: now_ms(),
        event: RunEvent::RunSubmitted {
            name: wf.name.clone(),
            workflow: cmd.workflow.clone(),
            vars,
            path: calls.then_some(path),
            includes: cmd.includes.clone(),
            parent: None,
        },
        signed,
    };
    match client.append_run(&env, Some(0)).await {
        Ok(_) => {}
        // Already there: a retry of the same submit is answered with it.
        Err(moira_client::append::AppendError::Conflict) => {
            let rec = client.read_run_fresh(&run_id).await.map_err(from_client)?;
            let same = rec.as_ref().is_some_and(|r| {
                r.state.submitted_by == cmd.actor && r.state.workflow == cmd.workflow
            });
            if !same {
                return Err(err(
                    ErrorCode::Conflict,
                    format!(
                        "command id {:?} was already used for another run; send a new id",
                        cmd.id
                    ),
                ));
            }
        }
        Err(e) => return Err(err(ErrorCode::Unavailable, e.to_string())),
    }
    client
        .enqueue_run(&run_id, &format!("submit:{run_id}"))
        .await
        .map_err(from_client)?;
    tracing::info!(run_id, by = cmd.actor, workflow = wf.name, "run submitted");
    // The run as just recorded, without reading it back.
    moira_client::runs::fold_run([env])
        .map(|state| RunView::from(&state))
        .ok_or_else(|| err(ErrorCode::Internal, "the submitted run does not fold"))
}

/// Cancels the gates a cancelled run's steps wait on (the runner may
/// cancel the gates of runs); a gate already decided is left as it is.
pub(crate) async fn cancel_gates(
    client: &Client,
    run: &RunState,
    by: &str,
) -> Result<(), moira_client::ClientError> {
    for st in run
        .steps
        .values()
        .filter(|s| s.status == StepStatus::Waiting)
    {
        let Some(gate_id) = st.gate_id else { continue };
        let c = CancelGate {
            gate_id,
            actor: RUNNER_ACTOR.to_string(),
            reason: Some(format!("run {} cancelled by {by}", run.id)),
            ..Default::default()
        };
        match client.send_as_service(Command::Cancel(c)).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(ErrorCode::AlreadyDecided) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Who may cancel a run: its submitter, the users its gates name as
/// approvers, holders of the roles they name, and admins.
pub fn may_cancel(run: &RunState, actor: &str, roles: &[String]) -> bool {
    if actor == run.submitted_by || roles.iter().any(|r| r == ADMIN_ROLE) {
        return true;
    }
    let Ok(wf) = Workflow::parse(&run.workflow, &run.vars) else {
        return false;
    };
    let mut users = BTreeSet::new();
    let mut gate_roles = BTreeSet::new();
    for s in &wf.steps {
        let approvers = s
            .gate()
            .map(|g| &g.approvers)
            .into_iter()
            .chain(s.approval.as_ref().map(|r| &r.approvers));
        for a in approvers {
            users.extend(a.users.iter().map(String::as_str));
            gate_roles.extend(a.roles.iter().map(String::as_str));
        }
    }
    users.contains(actor) || roles.iter().any(|r| gate_roles.contains(r.as_str()))
}

async fn cancel(
    client: &Client,
    registry: &Registry,
    signatures: Signatures,
    cmd: CancelRun,
) -> Result<RunView, CommandError> {
    check_actor(&cmd.actor)?;
    if !moira_protocol::ids::is_subject_token(&cmd.run_id) {
        return Err(err(
            ErrorCode::BadRequest,
            "a run id holds only letters, digits, '-' and '_'",
        ));
    }
    let rec = client
        .read_run_fresh(&cmd.run_id)
        .await
        .map_err(from_client)?
        .ok_or_else(|| err(ErrorCode::NotFound, format!("no run has id {}", cmd.run_id)))?;
    let run = rec.state;
    if run.status().is_terminal() {
        return Err(err(
            ErrorCode::AlreadyDecided,
            format!("run {} already ended: {}", run.id, run.status().as_str()),
        ));
    }
    if !may_cancel(&run, &cmd.actor, &registry.roles_of(&cmd.actor)) {
        return Err(err(
            ErrorCode::NotAllowed,
            format!(
                "{} may not cancel run {}: only its submitter ({}), an approver of one of its gates or an admin may",
                cmd.actor, run.id, run.submitted_by
            ),
        ));
    }
    let signed = match signed_parts(signatures, &cmd.signature, &cmd.id, cmd.signed_at)? {
        None => None,
        Some((sig, id, at)) => {
            let none = BTreeMap::new();
            let about = RunAbout {
                includes: None,
                verb: RunVerb::Cancel,
                run_id: &run.id,
                actor: &cmd.actor,
                workflow: &run.workflow,
                vars: &none,
                step: None,
                command_id: id,
                at,
            };
            Some(signed_by_actor(registry, &about, sig)?)
        }
    };
    let env = RunEnvelope {
        schema: 1,
        run_id: run.id.clone(),
        actor: cmd.actor.clone(),
        at: now_ms(),
        event: RunEvent::RunCancelled {
            by: cmd.actor.clone(),
        },
        signed,
    };
    client
        .append_run(&env, None)
        .await
        .map_err(|e| err(ErrorCode::Unavailable, e.to_string()))?;
    cancel_gates(client, &run, &cmd.actor)
        .await
        .map_err(from_client)?;
    client
        .enqueue_run(&run.id, &format!("cancel:{}", run.id))
        .await
        .map_err(from_client)?;
    tracing::info!(run_id = run.id, by = cmd.actor, "run cancelled");
    client.show_run(&run.id).await.map_err(from_client)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn run(yaml: &str) -> RunState {
        RunState {
            id: "r1".into(),
            submitted_by: "alice".into(),
            workflow: yaml.into(),
            vars: BTreeMap::new(),
            ..Default::default()
        }
    }

    #[test]
    fn who_may_cancel_a_run() {
        let r = run("name: x\nsteps:\n  - name: g\n    use: moira.gate\n    with: {message: m, approvers: {users: [bob], roles: [owner]}}\n  - name: b\n    run: 'true'\n    approval: {prompt: p, approvers: {users: [carol]}}\n");
        let none: Vec<String> = vec![];
        assert!(may_cancel(&r, "alice", &none), "the submitter");
        assert!(may_cancel(&r, "bob", &none), "a gate's approver");
        assert!(may_cancel(&r, "carol", &none), "a review's approver");
        assert!(
            may_cancel(&r, "dave", &["owner".to_string()]),
            "a role a gate names"
        );
        assert!(
            may_cancel(&r, "erin", &[ADMIN_ROLE.to_string()]),
            "an admin"
        );
        assert!(!may_cancel(&r, "mallory", &none));
        assert!(!may_cancel(&r, "mallory", &["release".to_string()]));
    }
}
