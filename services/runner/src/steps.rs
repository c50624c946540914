//! The pure pieces of acting on a run (no I/O), beside the planner: step
//! gate ids, the gate a step opens, the environment a step runs with, and
//! what a decided gate means for the step waiting on it.

use std::collections::BTreeMap;

use moira_client::{GateView, OpenGate};
use moira_protocol::run::{GateOutcome, RunEnvelope, RunEvent, RunState, StepState, StepStatus};
use moira_protocol::time::now_ms;
use moira_protocol::{GateId, GateStatus};
use moira_workflow::{Step, Template, Workflow, GATE_OUTPUTS};

use crate::plan::lookup;

/// The actor runners use on gates they open and events they write.
pub const RUNNER_ACTOR: &str = "moira:runner";

/// A run event written by this runner now.
pub(crate) fn env(run_id: &str, event: RunEvent, actor: &str) -> RunEnvelope {
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
    gate_id_of_iteration(run_id, step, review, 1, n)
}

/// [`gate_id`] for a gate step opened again (iteration 2 on, after its
/// approval expired): a new gate, since the old one stays approved.
pub fn gate_id_of_iteration(
    run_id: &str,
    step: &str,
    review: bool,
    iteration: u32,
    n: u32,
) -> GateId {
    match (review, iteration) {
        (true, _) => GateId::for_step(run_id, &format!("{step}#review"), n),
        (false, 0 | 1) => GateId::for_step(run_id, step, n),
        (false, i) => GateId::for_step(run_id, &format!("{step}#{i}"), n),
    }
}

/// Whether an existing gate is the one this run opened for `step`.
pub(crate) fn ours(
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
        // What it approves, exactly: a gate squatted with other digests
        // must never stand in for this run's.
        && view.stages.len() == wanted.stages.len()
        && view
            .stages
            .iter()
            .zip(&wanted.stages)
            .all(|(v, w)| v.users == w.users && v.roles == w.roles && v.count == w.count)
        && view.subject == wanted.subject
        && view.action == wanted.action
        && view.valid_for
            == wanted
                .valid_for_ms
                .map(|ms| moira_protocol::time::short_duration(std::time::Duration::from_millis(ms)))
}

/// The command line of a `run:` step and its environment. Template values
/// reach the command only as environment variables, never as shell text;
/// names an approver could choose never override PATH, LD_PRELOAD and
/// the like.
pub(crate) fn step_command(
    wf: &Workflow,
    run: &RunState,
    def: &Step,
    st: &StepState,
) -> (String, BTreeMap<String, String>) {
    let look = lookup(wf, run);
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
    vars.retain(|k, _| !moira_workflow::is_reserved_env(k));
    vars.extend(values);
    let digests = approved_digests(wf, run, def);
    if !digests.is_empty() {
        vars.insert(APPROVED_DIGESTS_ENV.to_string(), digests.join(" "));
    }
    (command, vars)
}

/// The variable that carries, to every step after approved gates, the
/// digests those gates approved (space-separated `sha256:…`).
pub const APPROVED_DIGESTS_ENV: &str = "MOIRA_APPROVED_DIGESTS";

/// The digests approved by the gate steps a step depends on (directly or
/// not), in step order, each once.
fn approved_digests(wf: &Workflow, run: &RunState, step: &Step) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for a in wf.ancestors(&step.name) {
        let Some(def) = wf.step(&a) else { continue };
        // A gate step, or a step whose review names what it approves (its
        // own `digests` output is then the review's).
        let approves =
            def.gate().is_some() || def.approval.as_ref().is_some_and(|r| !r.subject.is_empty());
        if !approves {
            continue;
        }
        let Some(d) = run.steps.get(&a).and_then(|s| s.outputs.get("digests")) else {
            continue;
        };
        for d in d.split_whitespace() {
            if !out.iter().any(|o| o == d) {
                out.push(d.to_string());
            }
        }
    }
    out
}

/// Inputs of the gates a step depends on (directly or not), as env vars.
pub(crate) fn gate_inputs(wf: &Workflow, run: &RunState, step: &Step) -> BTreeMap<String, String> {
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

pub(crate) fn open_spec(wf: &Workflow, run: &RunState, def: &Step, review: bool) -> OpenGate {
    let look = lookup(wf, run);
    let render = |t: &str| {
        Template::parse(t)
            .map(|t| t.render(&look))
            .unwrap_or_else(|_| t.to_string())
    };
    let mut req = wf.gate_request(def, review, render);
    // A child run's gates say which run and step called it.
    if let Some(p) = &run.parent {
        use moira_protocol::view::{PARENT_RUN_KEY, PARENT_STEP_KEY};
        req.metadata.insert(PARENT_RUN_KEY.into(), p.run_id.clone());
        req.metadata.insert(PARENT_STEP_KEY.into(), p.step.clone());
    }
    OpenGate {
        gate_id: Some(gate_id(&run.id, &def.name, review, 1)),
        actor: run.submitted_by.clone(),
        run_id: Some(run.id.clone()),
        ..req
    }
}

/// What a gate's state means for the step waiting on it, if it is decided.
pub(crate) fn resolution(def: &Step, waited_iteration: u32, g: &GateView) -> Option<RunEvent> {
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
    // Inputs first: an approver's input can never stand in for what the
    // gate itself says (validation also refuses inputs named like these).
    outputs.extend(g.inputs.clone());
    outputs.insert(
        "approved_by".into(),
        g.approved_by.clone().unwrap_or_default(),
    );
    outputs.insert(
        "approved_at".into(),
        g.approved_at.clone().unwrap_or_default(),
    );
    outputs.insert("reason".into(), g.reason.clone().unwrap_or_default());
    outputs.insert("gate_id".into(), g.id.to_string());
    if g.status == GateStatus::Approved {
        let digests: Vec<&str> = g
            .subject
            .iter()
            .map(|a| a.digest.as_str())
            .chain(g.action.as_ref().map(|a| a.digest.as_str()))
            .collect();
        outputs.insert("digests".into(), digests.join(" "));
    }
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
    // A review's outputs are the step's own; it only adds the reviewer's,
    // and what it approved when it names a subject.
    if review {
        let names_subject = !g.subject.is_empty();
        outputs.retain(|k, _| {
            k == "approved_by"
                || k == "approved_at"
                || k == "reason"
                || (k == "digests" && names_subject)
                || g.inputs.contains_key(k)
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

#[cfg(test)]
mod tests {
    use super::*;

    const FLOW: &str = "name: t
steps:
  - name: build
    run: echo built
  - name: approve
    use: moira.gate
    with:
      message: ship?
      inputs: [version, notes]
    depends_on: [build]
  - name: ship
    run: echo shipping ${{ steps.approve.outputs.version }}
    env:
      NOTES: ${{ steps.approve.outputs.notes }}
    depends_on: [approve]
    approval: { prompt: looks right? }
";

    fn wf() -> Workflow {
        Workflow::parse(FLOW, &BTreeMap::new()).expect("valid")
    }

    fn run() -> RunState {
        RunState {
            id: "r1".into(),
            submitted_by: "alice".into(),
            ..Default::default()
        }
    }

    /// A gate in `status` at `iteration`, with a view as the gate-keeper
    /// would give it.
    fn view(status: &str, iteration: u32, inputs: &[(&str, &str)]) -> GateView {
        let inputs: BTreeMap<String, String> = inputs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let decided = status != "waiting";
        serde_json::from_value(serde_json::json!({
            "id": GateId::new(), "status": status, "message": "ship?", "title": null,
            "summary": null, "metadata": {}, "run_id": "r1", "step": "approve",
            "requested_by": "alice", "opened_at": "2026-01-01T00:00:00Z", "timeout_at": null,
            "on_timeout": "fail", "iteration": iteration,
            "approvers": {"users": [], "roles": []}, "approvals_required": 1,
            "allow_self_approval": true, "input_names": ["version", "notes"],
            "required_inputs": [], "approvals": [],
            "approved_by": if status == "approved" { Some("bob") } else { None },
            "approved_at": if status == "approved" { Some("2026-01-01T00:01:00Z") } else { None },
            "decided_by": if decided { Some("bob") } else { None },
            "decided_at": null, "reason": if status == "denied" { Some("no") } else { None },
            "timed_out": status == "timed_out", "inputs": inputs,
            "push_backs": if iteration > 1 {
                serde_json::json!([{ "by": "bob", "at": "2026-01-01T00:01:00Z",
                    "comment": "again", "inputs": { "notes": "shorter" }, "iteration": 1 }])
            } else { serde_json::json!([]) }
        }))
        .expect("gate view")
    }

    #[test]
    fn a_step_and_its_review_have_different_gate_ids_and_each_is_stable() {
        let (gate, review) = (
            gate_id("r1", "ship", false, 1),
            gate_id("r1", "ship", true, 1),
        );
        assert_ne!(gate, review);
        assert_eq!(gate, gate_id("r1", "ship", false, 1));
        assert_ne!(gate, gate_id("r1", "ship", false, 2));
        assert_ne!(gate, gate_id("r2", "ship", false, 1));
    }

    #[test]
    fn an_approved_gate_gives_its_step_every_output_it_declares() {
        let w = wf();
        let def = w.step("approve").expect("step");
        let g = view("approved", 1, &[("version", "1.2")]);
        let Some(RunEvent::GateResolved {
            outcome,
            status,
            outputs,
            ..
        }) = resolution(def, 1, &g)
        else {
            panic!("an approval resolves the step")
        };
        assert_eq!(
            (outcome, status),
            (GateOutcome::Approved, StepStatus::Succeeded)
        );
        assert_eq!(outputs["approved_by"], "bob");
        assert_eq!(outputs["version"], "1.2");
        // Declared but not given: present and empty, so templates resolve.
        assert_eq!(outputs["notes"], "");
        assert_eq!(outputs["reason"], "");
    }

    #[test]
    fn a_waiting_gate_resolves_nothing_and_a_denial_follows_on_deny() {
        let w = wf();
        let def = w.step("approve").expect("step");
        assert_eq!(resolution(def, 1, &view("waiting", 1, &[])), None);
        let denied = resolution(def, 1, &view("denied", 1, &[]));
        assert!(matches!(
            denied,
            Some(RunEvent::GateResolved { outcome: GateOutcome::Denied, status: StepStatus::Rejected, ref outputs, .. })
                if outputs["reason"] == "no"
        ));
        let timed = resolution(def, 1, &view("timed_out", 1, &[]));
        assert!(matches!(
            timed,
            Some(RunEvent::GateResolved {
                outcome: GateOutcome::TimedOut,
                status: StepStatus::Failed,
                ..
            })
        ));
        let on_deny_skip = Workflow::parse(
            &FLOW.replace(
                "    depends_on: [build]\n",
                "    depends_on: [build]\n    on_deny: skip\n",
            ),
            &BTreeMap::new(),
        )
        .expect("valid");
        let def = on_deny_skip.step("approve").expect("step");
        assert!(matches!(
            resolution(def, 1, &view("denied", 1, &[])),
            Some(RunEvent::GateResolved {
                status: StepStatus::Skipped,
                ..
            })
        ));
    }

    #[test]
    fn a_review_pushed_back_resets_the_step_with_the_push_backs_inputs() {
        let w = wf();
        let def = w.step("ship").expect("step");
        // The step waited on iteration 1; the gate is now at 2: pushed back.
        let Some(RunEvent::GateResolved {
            outcome,
            status,
            inputs,
            ..
        }) = resolution(def, 1, &view("waiting", 2, &[]))
        else {
            panic!("a push-back resolves the review")
        };
        assert_eq!(
            (outcome, status),
            (GateOutcome::PushedBack, StepStatus::Pending)
        );
        assert_eq!(inputs["notes"], "shorter");
        // Waiting on the iteration it already knows: nothing new.
        assert_eq!(resolution(def, 2, &view("waiting", 2, &[])), None);
        // An approved review adds only the reviewer's outputs, not gate
        // outputs the step did not declare.
        let Some(RunEvent::GateResolved { outputs, .. }) =
            resolution(def, 2, &view("approved", 2, &[]))
        else {
            panic!("an approval resolves the review")
        };
        assert_eq!(
            outputs.keys().collect::<Vec<_>>(),
            ["approved_at", "approved_by", "reason"]
        );
    }

    #[test]
    fn approver_inputs_reach_a_step_only_as_environment_values() {
        let w = wf();
        let mut r = run();
        let hostile = "1; rm -rf / #$(id)`id`";
        r.step("approve")
            .outputs
            .insert("version".into(), hostile.into());
        r.step("approve").outputs.insert("notes".into(), "n".into());
        let def = w.step("ship").expect("step");
        let mut st = StepState::default();
        // A push-back may carry inputs; none may set PATH and the like.
        st.push_back_inputs.insert("PATH".into(), "/evil".into());
        st.push_back_inputs
            .insert("LD_PRELOAD".into(), "/evil.so".into());
        let (command, vars) = step_command(&w, &r, def, &st);
        assert!(!command.contains(hostile), "{command}");
        assert!(command.contains("${MOIRA_EXPR_"), "{command}");
        assert!(vars.values().any(|v| v == hostile));
        assert_eq!(vars["NOTES"], "n");
        // The gate's inputs, by name, for steps downstream of it.
        assert_eq!(vars["version"], hostile);
        assert!(!vars.contains_key("PATH") && !vars.contains_key("LD_PRELOAD"));
    }

    #[test]
    fn an_existing_gate_is_ours_only_if_run_step_requester_and_policy_match() {
        let w = wf();
        let r = run();
        let def = w.step("approve").expect("step");
        let spec = open_spec(&w, &r, def, false);
        let wanted = moira_protocol::gate::spec_from(&spec, &moira_protocol::gate::Policy::dev())
            .expect("spec");
        let mine = view("waiting", 1, &[]);
        let check = |v: &GateView| {
            ours(
                v,
                &r,
                "approve",
                &spec.actor,
                spec.allow_self_approval,
                &wanted,
            )
        };
        assert!(check(&mine));
        let mut other = mine.clone();
        other.requested_by = "mallory".into();
        assert!(!check(&other));
        let mut other = mine.clone();
        other.run_id = Some("r2".into());
        assert!(!check(&other));
        let mut other = mine.clone();
        other.approvers.users = vec!["mallory".into()];
        assert!(!check(&other));
        let mut other = mine;
        other.input_names = vec!["version".into()];
        assert!(!check(&other));
    }
}
