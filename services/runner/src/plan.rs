//! What a run needs next, decided from its workflow and folded state alone
//! (no I/O), so the rules can be read and tested in one place.

use moira_protocol::run::{RunState, RunStatus, StepState, StepStatus};
use moira_workflow::{Path, Step, Template, Workflow};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run a `run:` step (attempt and iteration to record).
    Start {
        step: String,
        attempt: u32,
        iteration: u32,
    },
    /// Open the gate of a gate step, or the review gate of a step that ran.
    OpenGate {
        step: String,
        review: bool,
    },
    /// A gate step whose condition is false: approved at once.
    AutoApprove {
        step: String,
    },
    /// A gate step whose approval is older than its `valid_for` when the
    /// step after it would start: it goes back to pending (next iteration)
    /// and its gate is opened again.
    Reapprove {
        step: String,
        reason: String,
    },
    /// Look at the gate a step waits on.
    CheckGate {
        step: String,
    },
    /// Start a `call:` step's child run (attempt and iteration to record).
    Call {
        step: String,
        attempt: u32,
        iteration: u32,
    },
    /// Look at the child run a `call:` step waits on.
    CheckChild {
        step: String,
    },
    Skip {
        step: String,
        reason: String,
    },
    Abort {
        step: String,
        reason: String,
    },
    Cancel {
        step: String,
    },
    /// A running step whose runner died (its job came back).
    CutOff {
        step: String,
        attempt: u32,
        retry: bool,
    },
    Finish(RunStatus),
}

fn state<'a>(run: &'a RunState, name: &str) -> Option<&'a StepState> {
    run.steps.get(name)
}

fn status(run: &RunState, name: &str) -> StepStatus {
    state(run, name).map(|s| s.status).unwrap_or_default()
}

/// Looks a template reference up in the run.
pub fn lookup<'a>(wf: &'a Workflow, run: &'a RunState) -> impl Fn(&Path) -> Option<String> + 'a {
    move |p: &Path| match p {
        Path::Var(n) => run.vars.get(n).cloned().or_else(|| wf.var(n)),
        Path::Output { step, key } => state(run, step).and_then(|s| s.outputs.get(key).cloned()),
        Path::Status { step } => Some(status(run, step).as_str().to_string()),
    }
}

/// Whether a finished dependency lets its dependents run.
fn dep_ok(wf: &Workflow, run: &RunState, name: &str) -> bool {
    let st = status(run, name);
    let step = wf.step(name);
    match st {
        StepStatus::Succeeded => true,
        StepStatus::Failed => step.is_some_and(|s| s.continue_on_failure),
        _ => false,
    }
}

/// The next actions. `redelivered_job` is the job being processed when it
/// was delivered before: steps it was running were cut off. `now` (ms)
/// decides whether approvals with a `valid_for` are still good.
pub fn plan(wf: &Workflow, run: &RunState, redelivered_job: Option<u64>, now: u64) -> Vec<Action> {
    let mut out = Vec::new();
    let cancelled = run.cancelled_by.is_some();
    for step in &wf.steps {
        let name = step.name.clone();
        let st = state(run, &name).cloned().unwrap_or_default();
        match st.status {
            StepStatus::Running if redelivered_job.is_some() && st.job == redelivered_job => {
                let retry = !cancelled && st.attempt <= step.retries;
                out.push(Action::CutOff {
                    step: name,
                    attempt: st.attempt,
                    retry,
                });
            }
            StepStatus::Running => {}
            StepStatus::Waiting if cancelled => out.push(Action::Cancel { step: name }),
            StepStatus::Waiting if st.child.is_some() => {
                out.push(Action::CheckChild { step: name })
            }
            StepStatus::Waiting => out.push(Action::CheckGate { step: name }),
            StepStatus::Pending if cancelled => out.push(Action::Cancel { step: name }),
            StepStatus::Pending => {
                if let Some(a) = pending(wf, run, step, &st, now) {
                    if !out.contains(&a) {
                        out.push(a);
                    }
                }
            }
            StepStatus::Succeeded
                if step.approval.is_some() && st.gate_id.is_none() && st.exit_code.is_some() =>
            {
                // Ran; its review has not been opened for this result yet.
                out.push(Action::OpenGate {
                    step: name,
                    review: true,
                });
            }
            _ => {}
        }
    }
    if out.is_empty() {
        if let Some(status) = outcome(wf, run) {
            out.push(Action::Finish(status));
        }
    }
    out
}

/// Why a gate step's approval is no longer good at `now`, if it is not.
fn expired(wf: &Workflow, run: &RunState, gate_step: &str, now: u64) -> Option<String> {
    let valid_for = wf.step(gate_step)?.gate()?.valid_for.as_deref()?;
    let ms = u64::try_from(
        moira_protocol::time::parse_duration(valid_for)
            .ok()?
            .as_millis(),
    )
    .ok()?;
    let st = state(run, gate_step)?;
    if st.status != StepStatus::Succeeded {
        return None;
    }
    let at_text = st.outputs.get("approved_at")?;
    let at = moira_protocol::time::parse_rfc3339_ms(at_text)?;
    (now > at.saturating_add(ms)).then(|| {
        let by = st.outputs.get("approved_by").map_or("?", String::as_str);
        format!(
            "the approval by {by} at {at_text} is older than the gate's valid_for of {valid_for}: asking again"
        )
    })
}

fn pending(wf: &Workflow, run: &RunState, step: &Step, st: &StepState, now: u64) -> Option<Action> {
    let name = step.name.clone();
    for d in &step.depends_on {
        match status(run, d) {
            StepStatus::Pending | StepStatus::Running | StepStatus::Waiting => return None,
            StepStatus::Skipped => {
                return Some(Action::Skip {
                    step: name,
                    reason: format!("'{d}' was skipped"),
                })
            }
            StepStatus::Cancelled => return Some(Action::Cancel { step: name }),
            _ if dep_ok(wf, run, d) => {}
            other => {
                return Some(Action::Abort {
                    step: name,
                    reason: format!("'{d}' {}", other.as_str()),
                });
            }
        }
        // A dependency with a review counts once its review approved it.
        if wf.step(d).is_some_and(|s| s.approval.is_some())
            && state(run, d).is_some_and(|s| s.gate_id.is_none())
        {
            return None;
        }
    }
    // An approval that has gone stale by now is not used: ask again.
    for d in &step.depends_on {
        if let Some(reason) = expired(wf, run, d, now) {
            return Some(Action::Reapprove {
                step: d.clone(),
                reason,
            });
        }
    }
    let condition = step.condition().and_then(|c| Template::parse(c).ok());
    let go = condition.is_none_or(|c| c.truthy(&lookup(wf, run)));
    if step.is_gate() {
        Some(if go {
            Action::OpenGate {
                step: name,
                review: false,
            }
        } else {
            Action::AutoApprove { step: name }
        })
    } else if go && step.is_call() {
        Some(Action::Call {
            step: name,
            attempt: st.attempt + 1,
            iteration: st.iteration.max(1),
        })
    } else if go {
        Some(Action::Start {
            step: name,
            attempt: st.attempt + 1,
            iteration: st.iteration.max(1),
        })
    } else {
        Some(Action::Skip {
            step: name,
            reason: "its condition (when) is false".into(),
        })
    }
}

/// The run's result once every step is done.
fn outcome(wf: &Workflow, run: &RunState) -> Option<RunStatus> {
    if wf.steps.iter().any(|s| !status(run, &s.name).is_done()) {
        return None;
    }
    if run.cancelled_by.is_some() {
        return Some(RunStatus::Cancelled);
    }
    let any = |st: StepStatus| wf.steps.iter().any(|s| status(run, &s.name) == st);
    Some(if any(StepStatus::Rejected) {
        RunStatus::Rejected
    } else if wf
        .steps
        .iter()
        .any(|s| status(run, &s.name) == StepStatus::Failed && !s.continue_on_failure)
        || any(StepStatus::Aborted)
    {
        RunStatus::Failed
    } else if any(StepStatus::Cancelled) {
        RunStatus::Cancelled
    } else {
        RunStatus::Succeeded
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn wf(yaml: &str) -> Workflow {
        Workflow::parse(yaml, &BTreeMap::new()).expect("valid")
    }

    fn run() -> RunState {
        RunState {
            id: "r".into(),
            name: "t".into(),
            workflow: String::new(),
            vars: BTreeMap::new(),
            submitted_by: "a".into(),
            submitted_at: 0,
            finished: None,
            cancelled_by: None,
            steps: BTreeMap::new(),
            submitted_signature: None,
            ..Default::default()
        }
    }

    fn set(r: &mut RunState, name: &str, status: StepStatus) {
        r.step(name).status = status;
    }

    const TWO: &str = "name: t\nsteps:\n  - {name: a, run: 'true'}\n  - {name: b, run: 'true', depends_on: [a]}\n  - {name: c, run: 'true'}\n";

    #[test]
    fn independent_steps_start_together() {
        let w = wf(TWO);
        let a = plan(&w, &run(), None, 0);
        assert_eq!(
            a,
            vec![
                Action::Start {
                    step: "a".into(),
                    attempt: 1,
                    iteration: 1
                },
                Action::Start {
                    step: "c".into(),
                    attempt: 1,
                    iteration: 1
                }
            ]
        );
    }

    #[test]
    fn failures_abort_dependents_and_fail_the_run() {
        let w = wf(TWO);
        let mut r = run();
        set(&mut r, "a", StepStatus::Failed);
        set(&mut r, "c", StepStatus::Succeeded);
        assert_eq!(
            plan(&w, &r, None, 0),
            vec![Action::Abort {
                step: "b".into(),
                reason: "'a' failed".into()
            }]
        );
        set(&mut r, "b", StepStatus::Aborted);
        assert_eq!(
            plan(&w, &r, None, 0),
            vec![Action::Finish(RunStatus::Failed)]
        );
    }

    #[test]
    fn false_conditions_skip_or_auto_approve() {
        let w = wf("name: t\nvars: {env: dev}\nsteps:\n  - name: g\n    use: moira.gate\n    with: {message: m, when: \"${{ vars.env == 'prod' }}\"}\n  - {name: s, run: 'true', when: 'false'}\n");
        assert_eq!(
            plan(&w, &run(), None, 0),
            vec![
                Action::AutoApprove { step: "g".into() },
                Action::Skip {
                    step: "s".into(),
                    reason: "its condition (when) is false".into()
                }
            ]
        );
    }

    #[test]
    fn cut_off_steps_retry_when_allowed() {
        let w = wf(
            "name: t\nsteps:\n  - {name: a, run: 'true', retries: 1}\n  - {name: b, run: 'true'}\n",
        );
        let mut r = run();
        for (n, attempt) in [("a", 1), ("b", 1)] {
            let s = r.step(n);
            s.status = StepStatus::Running;
            s.job = Some(7);
            s.attempt = attempt;
        }
        assert_eq!(
            plan(&w, &r, Some(7), 0),
            vec![
                Action::CutOff {
                    step: "a".into(),
                    attempt: 1,
                    retry: true
                },
                Action::CutOff {
                    step: "b".into(),
                    attempt: 1,
                    retry: false
                }
            ]
        );
        assert_eq!(
            plan(&w, &r, Some(8), 0),
            vec![],
            "another job's running steps are left alone"
        );
    }

    #[test]
    fn skipped_gates_skip_their_dependents_only() {
        let w = wf(TWO);
        let mut r = run();
        set(&mut r, "a", StepStatus::Skipped);
        set(&mut r, "c", StepStatus::Succeeded);
        assert_eq!(
            plan(&w, &r, None, 0),
            vec![Action::Skip {
                step: "b".into(),
                reason: "'a' was skipped".into()
            }]
        );
        set(&mut r, "b", StepStatus::Skipped);
        assert_eq!(
            plan(&w, &r, None, 0),
            vec![Action::Finish(RunStatus::Succeeded)]
        );
    }

    #[test]
    fn reviews_open_after_the_step_ran_and_hold_dependents() {
        let w = wf("name: t\nsteps:\n  - name: plan\n    run: 'true'\n    approval: {prompt: ok?, input: [FEEDBACK]}\n  - {name: apply, run: 'true', depends_on: [plan]}\n");
        let mut r = run();
        let s = r.step("plan");
        s.status = StepStatus::Succeeded;
        s.exit_code = Some(0);
        assert_eq!(
            plan(&w, &r, None, 0),
            vec![Action::OpenGate {
                step: "plan".into(),
                review: true
            }]
        );
    }
}
