//! The JSON shape of a gate: what `moira gate show --json` prints, each item
//! of `moira gate list --json`, and the `gate` field of every command reply.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::{Approvers, Inputs, OnTimeout};
use crate::gate::{GateState, GateStatus};
use crate::ids::GateId;
use crate::time::rfc3339;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApprovalView {
    pub by: String,
    pub at: String,
    pub comment: Option<String>,
    /// The fingerprint of the key that signed the approval, if signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// How moira-web authenticated the approver when it signed for them
    /// (`key` is then moira-web's key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// The user `by` approved for, as their deputy (`key` is the deputy's
    /// key, carrying that user's certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
}

impl ApprovalView {
    /// "bob", or "bob for alice" for a deputy.
    pub fn who(&self) -> String {
        crate::gate::who_text(&self.by, self.on_behalf_of.as_deref())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PushBackView {
    pub by: String,
    pub at: String,
    pub comment: Option<String>,
    pub inputs: Inputs,
    pub iteration: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GateView {
    pub id: GateId,
    pub status: GateStatus,
    pub message: String,
    pub title: Option<String>,
    pub summary: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub run_id: Option<String>,
    pub step: Option<String>,
    pub requested_by: String,
    pub opened_at: String,
    pub timeout_at: Option<String>,
    pub on_timeout: OnTimeout,
    pub iteration: u32,
    pub approvers: Approvers,
    pub approvals_required: u32,
    pub allow_self_approval: bool,
    /// Names of the inputs this gate collects, and which are required.
    pub input_names: Vec<String>,
    pub required_inputs: Vec<String>,
    pub approvals: Vec<ApprovalView>,
    pub approved_by: Option<String>,
    pub approved_at: Option<String>,
    pub decided_by: Option<String>,
    /// The user `decided_by` decided for, as their deputy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_for: Option<String>,
    pub decided_at: Option<String>,
    pub reason: Option<String>,
    pub timed_out: bool,
    pub inputs: Inputs,
    pub push_backs: Vec<PushBackView>,
    /// How many of the oldest push-backs a command reply left out to fit
    /// the broker's message size (`moira gate show` reads them all).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub push_backs_omitted: u32,
    /// Artifacts the gate approves, by digest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject: Vec<crate::binding::Artifact>,
    /// The action the gate approves (its canonical JSON and digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<crate::binding::Action>,
    /// How long an approval stays good, as set (`2h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_for: Option<String>,
    /// When the approval stops being good (approved gates with `valid_for`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<String>,
    /// Ordered approval stages, each with who approved in it so far.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<crate::stages::StageView>,
    /// The stage taking approvals now (1-based), while one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<u32>,
}

/// One gate as the read model holds it and `moira gate list` prints it:
/// what a list needs, without the approvals' and push-backs' detail
/// (`moira gate show` has those).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GateSummary {
    pub id: GateId,
    pub status: GateStatus,
    pub title: Option<String>,
    pub message: String,
    pub run_id: Option<String>,
    pub step: Option<String>,
    pub requested_by: String,
    pub opened_at: String,
    pub timeout_at: Option<String>,
    pub decided_by: Option<String>,
    pub decided_at: Option<String>,
    /// Approvals of the current iteration, and how many it needs.
    pub approvals: u32,
    pub approvals_required: u32,
    pub iteration: u32,
    /// The stream sequence of the gate's last event this summary reflects.
    pub last_seq: u64,
    /// For a gate of a child run: the run and step that called it
    /// (`RUN/STEP`, from the gate's `parent_run` and `parent_step` metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

/// The `RUN/STEP` of the run that called a child run's gate, from the
/// metadata the runner gives it.
pub fn parent_of(metadata: &BTreeMap<String, String>) -> Option<String> {
    let run = metadata.get(PARENT_RUN_KEY)?;
    let step = metadata.get(PARENT_STEP_KEY).map_or("?", String::as_str);
    Some(format!("{run}/{step}"))
}

/// Metadata keys a runner puts on the gates of a child run.
pub const PARENT_RUN_KEY: &str = "parent_run";
pub const PARENT_STEP_KEY: &str = "parent_step";

impl GateSummary {
    pub fn of(s: &GateState, last_seq: u64) -> Self {
        GateSummary {
            id: s.id,
            status: s.status,
            title: s.spec.title.clone(),
            message: s.spec.message.clone(),
            run_id: s.spec.run_id.clone(),
            step: s.spec.step.clone(),
            requested_by: s.requested_by.clone(),
            opened_at: rfc3339(s.opened_at),
            timeout_at: s.timeout_at.map(rfc3339),
            decided_by: s.decided_by.clone(),
            decided_at: s.decided_at.map(rfc3339),
            approvals: u32::try_from(s.approvals.len()).unwrap_or(u32::MAX),
            approvals_required: s.spec.approvals_required,
            iteration: s.iteration,
            last_seq,
            parent: parent_of(&s.spec.metadata),
        }
    }
}

impl GateSummary {
    /// The summary of a whole gate view (which names no sequence).
    pub fn of_view(v: &GateView, last_seq: u64) -> Self {
        GateSummary {
            id: v.id,
            status: v.status,
            title: v.title.clone(),
            message: v.message.clone(),
            run_id: v.run_id.clone(),
            step: v.step.clone(),
            requested_by: v.requested_by.clone(),
            opened_at: v.opened_at.clone(),
            timeout_at: v.timeout_at.clone(),
            decided_by: v.decided_by.clone(),
            decided_at: v.decided_at.clone(),
            approvals: u32::try_from(v.approvals.len()).unwrap_or(u32::MAX),
            approvals_required: v.approvals_required,
            iteration: v.iteration,
            last_seq,
            parent: parent_of(&v.metadata),
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl GateView {
    /// Drops the oldest push-backs until `fits` holds, counting them in
    /// `push_backs_omitted`. Everything else stays whole.
    pub fn trim_push_backs(&mut self, mut fits: impl FnMut(&GateView) -> bool) {
        while !fits(self) && !self.push_backs.is_empty() {
            // Halve what is kept each time: a handful of encodings at most.
            let drop = self.push_backs.len().div_ceil(2);
            self.push_backs.drain(..drop);
            self.push_backs_omitted += drop as u32;
        }
    }
}

impl PushBackView {
    /// As [`ApprovalView::who`].
    pub fn who(&self) -> String {
        crate::gate::who_text(&self.by, self.on_behalf_of.as_deref())
    }
}

impl GateView {
    /// Who decided the gate ("bob", or "bob for alice"), once decided.
    pub fn decider(&self) -> Option<String> {
        self.decided_by
            .as_deref()
            .map(|by| crate::gate::who_text(by, self.decided_for.as_deref()))
    }
}

impl From<&GateState> for GateView {
    fn from(s: &GateState) -> Self {
        GateView::from(s.clone())
    }
}

impl From<GateState> for GateView {
    fn from(s: GateState) -> Self {
        let valid_until = crate::binding::valid_until(&s).map(rfc3339);
        let stages = crate::stages::views(&s);
        let stage = (s.status == GateStatus::Waiting)
            .then(|| crate::stages::current(&s))
            .flatten()
            .map(|i| i as u32 + 1);
        let spec = s.spec;
        GateView {
            id: s.id,
            status: s.status,
            message: spec.message,
            title: spec.title,
            summary: spec.summary,
            metadata: spec.metadata,
            run_id: spec.run_id,
            step: spec.step,
            requested_by: s.requested_by,
            opened_at: rfc3339(s.opened_at),
            timeout_at: s.timeout_at.map(rfc3339),
            on_timeout: spec.on_timeout,
            iteration: s.iteration,
            approvers: spec.approvers,
            approvals_required: spec.approvals_required,
            allow_self_approval: spec.allow_self_approval,
            input_names: spec.inputs,
            required_inputs: spec.required,
            approvals: s
                .approvals
                .into_iter()
                .map(|a| ApprovalView {
                    by: a.by,
                    at: rfc3339(a.at),
                    comment: a.comment,
                    key: a.key,
                    via: a.via,
                    on_behalf_of: a.on_behalf_of,
                })
                .collect(),
            approved_by: s.approved_by,
            approved_at: s.approved_at.map(rfc3339),
            decided_by: s.decided_by,
            decided_for: s.decided_for,
            decided_at: s.decided_at.map(rfc3339),
            reason: s.reason,
            timed_out: s.timed_out,
            inputs: s.inputs,
            push_backs: s
                .push_backs
                .into_iter()
                .map(|p| PushBackView {
                    by: p.by,
                    at: rfc3339(p.at),
                    comment: p.comment,
                    inputs: p.inputs,
                    iteration: p.iteration,
                    via: p.via,
                    on_behalf_of: p.on_behalf_of,
                })
                .collect(),
            push_backs_omitted: 0,
            subject: spec.subject,
            action: spec.action,
            valid_for: spec
                .valid_for_ms
                .map(|ms| crate::time::short_duration(std::time::Duration::from_millis(ms))),
            valid_until,
            stages,
            stage,
        }
    }
}
