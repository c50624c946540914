//! Workflow runs: events and the fold of a run's state.
//!
//! Each run's events are on `moira.run.ev.<run_id>`, step output lines on
//! `moira.run.log.<run_id>.<step>`, and "advance this run" jobs on
//! `moira.job.<run_id>` (a work queue); [`crate::wire`] builds them. What
//! to do next is the runner's business; this module only records what
//! happened and folds it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::Inputs;
use crate::ids::GateId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Waiting,
    Succeeded,
    Failed,
    Rejected,
    Cancelled,
}

impl RunStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Rejected | Self::Cancelled
        )
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Waiting => "waiting",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::Running,
            Self::Waiting,
            Self::Succeeded,
            Self::Failed,
            Self::Rejected,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    #[default]
    Pending,
    Running,
    Waiting,
    Succeeded,
    Failed,
    Skipped,
    Rejected,
    Aborted,
    Cancelled,
}

impl StepStatus {
    pub fn is_done(self) -> bool {
        !matches!(self, Self::Pending | Self::Running | Self::Waiting)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Waiting => "waiting",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Rejected => "rejected",
            Self::Aborted => "aborted",
            Self::Cancelled => "cancelled",
        }
    }
}

/// How a gate a step waited on was decided, as the runner saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateOutcome {
    Approved,
    Denied,
    TimedOut,
    Cancelled,
    PushedBack,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunEvent {
    RunSubmitted {
        name: String,
        /// The workflow file as submitted, and the variables after --var.
        workflow: String,
        vars: BTreeMap<String, String>,
        /// The file's name in call chains (the root's file name, or a
        /// called file's path relative to the root's folder).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        /// The files its steps may call, by path (see `moira_workflow::bundle`).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        includes: BTreeMap<String, String>,
        /// For a child run: the run and step that called it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent: Option<ParentRun>,
    },
    /// A `call:` step started its child run and waits for it.
    StepCalled {
        step: String,
        attempt: u32,
        iteration: u32,
        child: String,
    },
    /// The child run of a `call:` step ended: what it means for the step.
    CallReturned {
        step: String,
        child: String,
        /// How the child ended.
        outcome: RunStatus,
        /// The step's status (`Pending` with `retry`).
        status: StepStatus,
        #[serde(default)]
        retry: bool,
        #[serde(default)]
        outputs: BTreeMap<String, String>,
        #[serde(default)]
        reason: Option<String>,
    },
    StepStarted {
        step: String,
        attempt: u32,
        iteration: u32,
        /// The job (stream sequence) whose runner runs it; if that job is
        /// delivered again, the runner died and the step was cut off.
        job: u64,
        runner: String,
    },
    StepFinished {
        step: String,
        attempt: u32,
        ok: bool,
        exit_code: Option<i32>,
        #[serde(default)]
        outputs: BTreeMap<String, String>,
        #[serde(default)]
        reason: Option<String>,
        /// Failed, and will run again (attempt + 1).
        #[serde(default)]
        retry: bool,
    },
    /// A gate step, or a step's review, waits on a gate.
    StepWaiting {
        step: String,
        gate_id: GateId,
        /// The gate's iteration when the wait began (a review that was
        /// pushed back waits on the same gate at the next iteration).
        gate_iteration: u32,
    },
    GateResolved {
        step: String,
        gate_id: GateId,
        outcome: GateOutcome,
        /// What the outcome means for the step (from its `on_deny`);
        /// ignored for a push-back, which sends the step back to pending.
        status: StepStatus,
        #[serde(default)]
        outputs: BTreeMap<String, String>,
        /// Inputs of a push-back, for the re-run.
        #[serde(default)]
        inputs: Inputs,
    },
    StepSkipped {
        step: String,
        reason: String,
    },
    StepAborted {
        step: String,
        reason: String,
    },
    StepCancelled {
        step: String,
    },
    /// A dependent of a pushed-back step goes back to pending; or a gate
    /// step whose approval expired before the step after it could start
    /// (its gate is opened again, as the next iteration).
    StepReset {
        step: String,
        /// Why, when it is not a push-back.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    RunFinished {
        status: RunStatus,
    },
    RunCancelled {
        by: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEnvelope {
    pub schema: u16,
    pub run_id: String,
    pub actor: String,
    pub at: u64,
    pub event: RunEvent,
    /// The signature of the command behind a submit or a cancel (by the
    /// person), or of an auto-approval (by the runner's service key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<RunSignature>,
}

/// A run event's SSH signature over its [`crate::statement::run_statement`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSignature {
    pub command_id: String,
    /// When the statement was signed (ms).
    pub signed_at: u64,
    /// The armored SSHSIG.
    pub signature: String,
    /// The key's SHA-256 fingerprint, as the runner checked it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
}

impl RunEnvelope {
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).unwrap_or_default()
    }
    /// `None` for an event this build cannot read (logged and skipped by callers).
    pub fn decode(bytes: &[u8]) -> Option<RunEnvelope> {
        crate::codec::from_msgpack(bytes).ok()
    }
    pub fn kind(&self) -> &'static str {
        match &self.event {
            RunEvent::RunSubmitted { .. } => "RunSubmitted",
            RunEvent::StepStarted { .. } => "StepStarted",
            RunEvent::StepCalled { .. } => "StepCalled",
            RunEvent::CallReturned { .. } => "CallReturned",
            RunEvent::StepFinished { .. } => "StepFinished",
            RunEvent::StepWaiting { .. } => "StepWaiting",
            RunEvent::GateResolved { .. } => "GateResolved",
            RunEvent::StepSkipped { .. } => "StepSkipped",
            RunEvent::StepAborted { .. } => "StepAborted",
            RunEvent::StepCancelled { .. } => "StepCancelled",
            RunEvent::StepReset { .. } => "StepReset",
            RunEvent::RunFinished { .. } => "RunFinished",
            RunEvent::RunCancelled { .. } => "RunCancelled",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepState {
    pub name: String,
    pub status: StepStatus,
    /// Runs of this iteration (1 on the first).
    pub attempt: u32,
    /// 1, plus one per push-back of its review.
    pub iteration: u32,
    pub gate_id: Option<GateId>,
    pub gate_iteration: u32,
    pub exit_code: Option<i32>,
    pub outputs: BTreeMap<String, String>,
    pub reason: Option<String>,
    /// The job whose runner is running it (while running).
    pub job: Option<u64>,
    /// Inputs from the last push-back, given to the re-run.
    pub push_back_inputs: Inputs,
    /// The step ran and now waits on its review (not a gate step).
    pub in_review: bool,
    /// A `call:` step's child run (the current attempt's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<String>,
}

/// The run and step that started a child run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ParentRun {
    pub run_id: String,
    pub step: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunState {
    pub id: String,
    pub name: String,
    pub workflow: String,
    pub vars: BTreeMap<String, String>,
    pub submitted_by: String,
    pub submitted_at: u64,
    pub finished: Option<RunStatus>,
    pub cancelled_by: Option<String>,
    pub steps: BTreeMap<String, StepState>,
    /// The submitter's signature, as the `RunSubmitted` event carries it.
    pub submitted_signature: Option<RunSignature>,
    /// The file's name in call chains.
    pub path: Option<String>,
    /// The files its `call:` steps may run.
    pub includes: BTreeMap<String, String>,
    /// For a child run, who called it.
    pub parent: Option<ParentRun>,
}

impl RunState {
    pub fn step(&mut self, name: &str) -> &mut StepState {
        self.steps
            .entry(name.to_string())
            .or_insert_with(|| StepState {
                name: name.to_string(),
                attempt: 0,
                iteration: 1,
                ..Default::default()
            })
    }

    /// Finished, or derived from the steps.
    pub fn status(&self) -> RunStatus {
        if let Some(s) = self.finished {
            return s;
        }
        if self.cancelled_by.is_some() {
            return RunStatus::Cancelled;
        }
        let any = |st: StepStatus| self.steps.values().any(|s| s.status == st);
        if any(StepStatus::Running) {
            RunStatus::Running
        } else if any(StepStatus::Waiting) {
            RunStatus::Waiting
        } else if self.steps.values().any(|s| s.status != StepStatus::Pending) {
            RunStatus::Running
        } else {
            RunStatus::Queued
        }
    }
}

/// Folds one run event. Like the gate fold, it holds no rules beyond
/// ignoring what cannot apply (a finish for an attempt that is not current).
pub fn apply_run(state: &mut Option<RunState>, env: &RunEnvelope) {
    let Some(s) = state else {
        if let RunEvent::RunSubmitted {
            name,
            workflow,
            vars,
            path,
            includes,
            parent,
        } = &env.event
        {
            *state = Some(RunState {
                id: env.run_id.clone(),
                name: name.clone(),
                workflow: workflow.clone(),
                vars: vars.clone(),
                submitted_by: env.actor.clone(),
                submitted_at: env.at,
                finished: None,
                cancelled_by: None,
                steps: BTreeMap::new(),
                submitted_signature: env.signed.clone(),
                path: path.clone(),
                includes: includes.clone(),
                parent: parent.clone(),
            });
        }
        return;
    };
    if s.finished.is_some() {
        return;
    }
    match &env.event {
        RunEvent::RunSubmitted { .. } => {}
        RunEvent::StepStarted {
            step,
            attempt,
            iteration,
            job,
            ..
        } => {
            let st = s.step(step);
            st.status = StepStatus::Running;
            st.attempt = *attempt;
            st.iteration = *iteration;
            st.job = Some(*job);
            st.in_review = false;
            // A new result needs a new review.
            st.gate_id = None;
        }
        RunEvent::StepCalled {
            step,
            attempt,
            iteration,
            child,
        } => {
            let st = s.step(step);
            st.status = StepStatus::Waiting;
            st.attempt = *attempt;
            st.iteration = *iteration;
            st.child = Some(child.clone());
            st.reason = None;
        }
        RunEvent::CallReturned {
            step,
            child,
            status,
            retry,
            outputs,
            reason,
            ..
        } => {
            let st = s.step(step);
            if st.child.as_deref() != Some(child) || st.status != StepStatus::Waiting {
                return;
            }
            st.outputs = outputs.clone();
            st.reason = reason.clone();
            st.status = if *retry { StepStatus::Pending } else { *status };
        }
        RunEvent::StepFinished {
            step,
            attempt,
            ok,
            exit_code,
            outputs,
            reason,
            retry,
        } => {
            let st = s.step(step);
            if st.attempt != *attempt || st.status != StepStatus::Running {
                return;
            }
            st.job = None;
            st.exit_code = *exit_code;
            st.outputs = outputs.clone();
            st.reason = reason.clone();
            st.status = match (ok, retry) {
                (true, _) => StepStatus::Succeeded,
                (false, true) => StepStatus::Pending,
                (false, false) => StepStatus::Failed,
            };
        }
        RunEvent::StepWaiting {
            step,
            gate_id,
            gate_iteration,
        } => {
            let st = s.step(step);
            st.in_review = st.status == StepStatus::Succeeded;
            st.status = StepStatus::Waiting;
            st.gate_id = Some(*gate_id);
            st.gate_iteration = *gate_iteration;
        }
        RunEvent::GateResolved {
            step,
            outcome,
            status,
            outputs,
            inputs,
            ..
        } => {
            let st = s.step(step);
            if st.status != StepStatus::Waiting {
                return;
            }
            st.outputs.extend(outputs.clone());
            match outcome {
                GateOutcome::PushedBack => {
                    st.status = StepStatus::Pending;
                    st.iteration += 1;
                    st.attempt = 0;
                    st.push_back_inputs = inputs.clone();
                }
                _ => st.status = *status,
            }
            st.in_review = false;
        }
        RunEvent::StepSkipped { step, reason } => {
            let st = s.step(step);
            st.status = StepStatus::Skipped;
            st.reason = Some(reason.clone());
        }
        RunEvent::StepAborted { step, reason } => {
            let st = s.step(step);
            st.status = StepStatus::Aborted;
            st.reason = Some(reason.clone());
            st.job = None;
        }
        RunEvent::StepCancelled { step } => {
            let st = s.step(step);
            st.status = StepStatus::Cancelled;
            st.job = None;
        }
        RunEvent::StepReset { step, reason } => {
            let st = s.step(step);
            *st = StepState {
                name: step.clone(),
                iteration: st.iteration + 1,
                reason: reason.clone(),
                ..Default::default()
            };
        }
        RunEvent::RunFinished { status } => s.finished = Some(*status),
        RunEvent::RunCancelled { by } => s.cancelled_by = Some(by.clone()),
    }
}
