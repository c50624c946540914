//! Given/when/then tests of the gate state machine, without a server.
use crate::view::GateView;

use super::*;
use crate::command::{ApproveGate, CancelGate, DenyGate, OpenGate, PushBackGate};

const NOW: u64 = 1_000_000;

struct Given {
    state: Option<GateState>,
    gate: GateId,
}

fn ctx(roles: &[&str]) -> Context {
    Context {
        policy: Policy::dev(),
        service: false,
        now: NOW,
        command_id: CommandId::new(),
        new_gate_id: GateId::new(),
        actor_roles: roles.iter().map(|r| r.to_string()).collect(),
        signer: None,
        registry: None,
        prev: None,
        deputy: None,
    }
}

fn open(c: OpenGate) -> Given {
    let cx = ctx(&[]);
    let gate = c.gate_id.unwrap_or(cx.new_gate_id);
    let mut g = Given { state: None, gate };
    g.when_ok(Command::Open(c), &[]);
    g
}

fn basic() -> OpenGate {
    OpenGate {
        actor: "alice".into(),
        message: "Deploy v1?".into(),
        ..Default::default()
    }
}

impl Given {
    fn when(&self, cmd: Command, roles: &[&str]) -> Result<Decision, Rejection> {
        let mut cx = ctx(roles);
        cx.new_gate_id = self.gate;
        decide(self.state.as_ref(), &cmd, &cx)
    }

    fn when_ok(&mut self, cmd: Command, roles: &[&str]) -> Vec<Envelope> {
        match self.when(cmd, roles) {
            Ok(Decision::Append(events)) => {
                for e in &events {
                    apply(&mut self.state, e);
                }
                events
            }
            other => panic!("expected events, got {other:?}"),
        }
    }

    fn refused(&self, cmd: Command, roles: &[&str]) -> ErrorCode {
        match self.when(cmd, roles) {
            Err(e) => e.code,
            Ok(d) => panic!("expected a refusal, got {d:?}"),
        }
    }

    fn state(&self) -> &GateState {
        self.state.as_ref().expect("gate exists")
    }

    fn approve(&self, actor: &str) -> Command {
        Command::Approve(ApproveGate {
            gate_id: self.gate,
            actor: actor.into(),
            ..Default::default()
        })
    }
}

#[test]
fn open_then_approve() {
    let mut g = open(basic());
    assert_eq!(g.state().status, GateStatus::Waiting);
    assert_eq!(g.state().requested_by, "alice");
    let ev = g.when_ok(g.approve("bob"), &[]);
    assert_eq!(ev[0].event.kind(), "GateApproved");
    assert_eq!(g.state().status, GateStatus::Approved);
    assert_eq!(g.state().approved_by.as_deref(), Some("bob"));
}

#[test]
fn deny_needs_reason_and_records_it() {
    let mut g = open(basic());
    let deny = |r: &str| {
        Command::Deny(DenyGate {
            gate_id: g.gate,
            actor: "bob".into(),
            reason: r.into(),
            ..Default::default()
        })
    };
    assert_eq!(g.refused(deny("  "), &[]), ErrorCode::BadRequest);
    let d = deny("error budget spent");
    g.when_ok(d, &[]);
    assert_eq!(g.state().status, GateStatus::Denied);
    assert_eq!(g.state().reason.as_deref(), Some("error budget spent"));
}

#[test]
fn n_of_m_needs_distinct_approvers() {
    let mut g = open(OpenGate {
        approvers: vec!["bob".into(), "carol".into(), "dan".into()],
        approvals: Some(2),
        ..basic()
    });
    let ev = g.when_ok(g.approve("bob"), &[]);
    assert_eq!(ev[0].event.kind(), "ApprovalRecorded");
    assert_eq!(g.state().status, GateStatus::Waiting);
    assert_eq!(g.refused(g.approve("bob"), &[]), ErrorCode::NotAllowed);
    assert_eq!(g.refused(g.approve("eve"), &[]), ErrorCode::NotAllowed);
    g.when_ok(g.approve("carol"), &[]);
    assert_eq!(g.state().status, GateStatus::Approved);
    assert_eq!(g.state().approvals.len(), 2);
    assert_eq!(g.state().approved_by.as_deref(), Some("carol"));
}

#[test]
fn more_approvals_than_named_approvers_is_refused() {
    let c = OpenGate {
        approvers: vec!["bob".into()],
        approvals: Some(2),
        ..basic()
    };
    let g = Given {
        state: None,
        gate: GateId::new(),
    };
    assert_eq!(g.refused(Command::Open(c), &[]), ErrorCode::BadRequest);
}

#[test]
fn roles_come_from_the_context() {
    let mut g = open(OpenGate {
        roles: vec!["owner".into()],
        ..basic()
    });
    assert_eq!(g.refused(g.approve("bob"), &["dev"]), ErrorCode::NotAllowed);
    g.when_ok(g.approve("bob"), &["dev", "owner"]);
    assert_eq!(g.state().status, GateStatus::Approved);
}

#[test]
fn self_approval_can_be_forbidden() {
    let mut g = open(OpenGate {
        allow_self_approval: Some(false),
        ..basic()
    });
    assert_eq!(g.refused(g.approve("alice"), &[]), ErrorCode::NotAllowed);
    g.when_ok(g.approve("bob"), &[]);
    assert_eq!(g.state().status, GateStatus::Approved);
    // allowed by default
    let mut g = open(basic());
    g.when_ok(g.approve("alice"), &[]);
    assert_eq!(g.state().status, GateStatus::Approved);
}

#[test]
fn required_inputs_must_be_given() {
    let mut g = open(OpenGate {
        inputs: vec!["WINDOW".into(), "NOTE".into()],
        required: vec!["WINDOW".into()],
        ..basic()
    });
    assert_eq!(g.refused(g.approve("bob"), &[]), ErrorCode::MissingInput);
    let unknown = Command::Approve(ApproveGate {
        gate_id: g.gate,
        actor: "bob".into(),
        inputs: [("WINDOWS".to_string(), "sat".to_string())].into(),
        ..Default::default()
    });
    assert_eq!(g.refused(unknown, &[]), ErrorCode::BadRequest);
    let ok = Command::Approve(ApproveGate {
        gate_id: g.gate,
        actor: "bob".into(),
        inputs: [("WINDOW".to_string(), "sat".to_string())].into(),
        ..Default::default()
    });
    g.when_ok(ok, &[]);
    assert_eq!(
        g.state().inputs.get("WINDOW").map(String::as_str),
        Some("sat")
    );
}

#[test]
fn required_must_be_valid_names() {
    let g = Given {
        state: None,
        gate: GateId::new(),
    };
    let c = OpenGate {
        required: vec!["bad name".into()],
        ..basic()
    };
    assert_eq!(g.refused(Command::Open(c), &[]), ErrorCode::BadRequest);
}

#[test]
fn push_back_returns_to_waiting_with_next_iteration() {
    let mut g = open(OpenGate {
        inputs: vec!["FEEDBACK".into()],
        approvals: Some(1),
        ..basic()
    });
    let pb = Command::PushBack(PushBackGate {
        gate_id: g.gate,
        actor: "bob".into(),
        comment: Some("fix the plan".into()),
        inputs: [("FEEDBACK".to_string(), "too risky".to_string())].into(),
        ..Default::default()
    });
    g.when_ok(pb, &[]);
    let s = g.state();
    assert_eq!((s.status, s.iteration), (GateStatus::Waiting, 2));
    assert_eq!(
        s.push_backs[0].inputs.get("FEEDBACK").map(String::as_str),
        Some("too risky")
    );
    assert_eq!(
        s.inputs.get("FEEDBACK").map(String::as_str),
        Some("too risky")
    );
    g.when_ok(g.approve("bob"), &[]);
    assert_eq!(
        (g.state().status, g.state().iteration),
        (GateStatus::Approved, 2)
    );
}

#[test]
fn cancel_by_requester_only_or_approver() {
    let mut g = open(OpenGate {
        approvers: vec!["bob".into()],
        ..basic()
    });
    let cancel = |who: &str| {
        Command::Cancel(CancelGate {
            gate_id: g.gate,
            actor: who.into(),
            reason: None,
            ..Default::default()
        })
    };
    assert_eq!(g.refused(cancel("eve"), &[]), ErrorCode::NotAllowed);
    let c = cancel("alice");
    g.when_ok(c, &[]);
    assert_eq!(g.state().status, GateStatus::Cancelled);
}

#[test]
fn decided_gates_refuse_more_commands() {
    let mut g = open(basic());
    g.when_ok(g.approve("bob"), &[]);
    assert_eq!(
        g.refused(g.approve("carol"), &[]),
        ErrorCode::AlreadyDecided
    );
    let deny = Command::Deny(DenyGate {
        gate_id: g.gate,
        actor: "carol".into(),
        reason: "late".into(),
        ..Default::default()
    });
    assert_eq!(g.refused(deny, &[]), ErrorCode::AlreadyDecided);
}

#[test]
fn unknown_gate_is_not_found() {
    let g = Given {
        state: None,
        gate: GateId::new(),
    };
    assert_eq!(g.refused(g.approve("bob"), &[]), ErrorCode::NotFound);
}

#[test]
fn idempotent_open_same_spec_is_a_no_op_and_different_spec_conflicts() {
    let id = GateId::new();
    let g = open(OpenGate {
        gate_id: Some(id),
        ..basic()
    });
    assert_eq!(
        g.when(
            Command::Open(OpenGate {
                gate_id: Some(id),
                ..basic()
            }),
            &[]
        ),
        Ok(Decision::AlreadyDone)
    );
    let other = OpenGate {
        gate_id: Some(id),
        message: "something else".into(),
        ..basic()
    };
    assert_eq!(g.refused(Command::Open(other), &[]), ErrorCode::Conflict);
}

#[test]
fn a_retried_command_has_no_second_effect() {
    let mut g = open(OpenGate {
        approvers: vec!["bob".into(), "carol".into()],
        approvals: Some(2),
        ..basic()
    });
    let mut cx = ctx(&[]);
    let cmd = g.approve("bob");
    let Ok(Decision::Append(events)) = decide(g.state.as_ref(), &cmd, &cx) else {
        panic!("approve")
    };
    apply(&mut g.state, &events[0]);
    cx.now += 1;
    assert_eq!(
        decide(g.state.as_ref(), &cmd, &cx),
        Ok(Decision::AlreadyDone)
    );
}

#[test]
fn a_reused_command_id_for_another_command_is_refused() {
    let mut g = open(OpenGate {
        approvers: vec!["bob".into(), "carol".into()],
        approvals: Some(2),
        ..basic()
    });
    let cx = ctx(&[]);
    let Ok(Decision::Append(events)) = decide(g.state.as_ref(), &g.approve("bob"), &cx) else {
        panic!("approve")
    };
    apply(&mut g.state, &events[0]);
    let deny = Command::Deny(DenyGate {
        gate_id: g.gate,
        actor: "bob".into(),
        reason: "no".into(),
        ..Default::default()
    });
    let e = decide(g.state.as_ref(), &deny, &cx).expect_err("reused id");
    assert_eq!(e.code, ErrorCode::Conflict);
    // The same verb by someone else, or with another comment, is another command too.
    let carol = g.approve("carol");
    assert_eq!(
        decide(g.state.as_ref(), &carol, &cx).map_err(|e| e.code),
        Err(ErrorCode::Conflict)
    );
    assert_eq!(g.state().approvals.len(), 1);
}

#[test]
fn reopening_an_id_as_someone_else_conflicts() {
    let id = GateId::new();
    let g = open(OpenGate {
        gate_id: Some(id),
        ..basic()
    });
    let squat = OpenGate {
        gate_id: Some(id),
        actor: "mallory".into(),
        ..basic()
    };
    assert_eq!(g.refused(Command::Open(squat), &[]), ErrorCode::Conflict);
}

#[test]
fn approver_and_role_names_are_checked() {
    for bad in ["x$(id)", "a b", "\u{1b}]52;c;x\u{7}"] {
        let c = OpenGate {
            approvers: vec![bad.into()],
            ..basic()
        };
        let cx = ctx(&[]);
        assert!(decide(None, &Command::Open(c), &cx).is_err(), "{bad}");
    }
}

#[test]
fn first_terminal_event_wins() {
    let mut g = open(OpenGate {
        timeout_ms: Some(1000),
        ..basic()
    });
    assert_eq!(g.state().timeout_at, Some(NOW + 1000));
    g.when_ok(g.approve("bob"), &[]);
    let spec = g.state().spec.clone();
    apply(&mut g.state, &timed_out_event(g.gate, NOW + 1000, &spec));
    assert_eq!(g.state().status, GateStatus::Approved);
    assert!(!g.state().timed_out);
}

#[test]
fn timeout_actions() {
    for (action, status) in [
        (OnTimeout::Fail, GateStatus::TimedOut),
        (OnTimeout::Approve, GateStatus::Approved),
        (OnTimeout::Deny, GateStatus::Denied),
    ] {
        let mut g = open(OpenGate {
            timeout_ms: Some(5_000),
            on_timeout: Some(action),
            ..basic()
        });
        let ev = timed_out_event(g.gate, NOW + 5_000, &g.state().spec.clone());
        apply(&mut g.state, &ev);
        assert_eq!(g.state().status, status);
        assert!(g.state().timed_out);
    }
}

#[test]
fn on_timeout_without_timeout_is_refused() {
    let g = Given {
        state: None,
        gate: GateId::new(),
    };
    let c = OpenGate {
        on_timeout: Some(OnTimeout::Approve),
        ..basic()
    };
    assert_eq!(g.refused(Command::Open(c), &[]), ErrorCode::BadRequest);
}

#[test]
fn reserved_and_empty_actors_are_refused() {
    let g = open(basic());
    assert_eq!(g.refused(g.approve(""), &[]), ErrorCode::BadRequest);
    assert_eq!(
        g.refused(g.approve("moira:timeout"), &[]),
        ErrorCode::BadRequest
    );
}

#[test]
fn view_has_the_documented_fields() {
    let mut g = open(OpenGate {
        title: Some("Release".into()),
        ..basic()
    });
    g.when_ok(g.approve("bob"), &[]);
    let v = serde_json::to_value(GateView::from(g.state())).expect("json");
    for key in [
        "id",
        "status",
        "message",
        "title",
        "run_id",
        "step",
        "requested_by",
        "opened_at",
        "timeout_at",
        "iteration",
        "approvals_required",
        "approvals",
        "approved_by",
        "approved_at",
        "reason",
        "inputs",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    assert_eq!(v["status"], "approved");
    assert_eq!(v["approvals"][0]["by"], "bob");
}

#[test]
fn strict_policy_requires_approvers_and_forbids_self_approval_by_default() {
    let mut cx = ctx(&[]);
    cx.policy = Policy::strict();
    let e = decide(None, &Command::Open(basic()), &cx).expect_err("no approvers");
    assert_eq!(e.code, ErrorCode::NotAllowed);
    let named = OpenGate {
        approvers: vec!["alice".into(), "bob".into()],
        ..basic()
    };
    let Ok(Decision::Append(events)) = decide(None, &Command::Open(named), &cx) else {
        panic!("open")
    };
    let mut state = None;
    apply(&mut state, &events[0]);
    let s = state.expect("opened");
    assert!(!s.spec.allow_self_approval);
    let self_approve = Command::Approve(ApproveGate {
        gate_id: s.id,
        actor: "alice".into(),
        ..Default::default()
    });
    let mut later = ctx(&[]);
    later.policy = Policy::strict();
    assert_eq!(
        decide(Some(&s), &self_approve, &later).map_err(|e| e.code),
        Err(ErrorCode::NotAllowed)
    );
}

#[test]
fn auto_approval_on_timeout_has_a_floor_and_under_strict_a_role() {
    let quick = OpenGate {
        timeout_ms: Some(1),
        on_timeout: Some(OnTimeout::Approve),
        ..basic()
    };
    let cx = ctx(&[]);
    assert_eq!(
        decide(None, &Command::Open(quick.clone()), &cx).map_err(|e| e.code),
        Err(ErrorCode::NotAllowed)
    );
    let mut strict = ctx(&[]);
    strict.policy = Policy::strict();
    let slow = OpenGate {
        timeout_ms: Some(3_600_000),
        approvers: vec!["bob".into()],
        ..quick
    };
    assert_eq!(
        decide(None, &Command::Open(slow.clone()), &strict).map_err(|e| e.code),
        Err(ErrorCode::NotAllowed),
        "without the role"
    );
    let mut with_role = ctx(&[AUTO_APPROVE_ROLE]);
    with_role.policy = Policy::strict();
    assert!(decide(None, &Command::Open(slow), &with_role).is_ok());
}

#[test]
fn only_services_open_gates_for_runs_and_cancel_them() {
    let for_run = OpenGate {
        run_id: Some("r1".into()),
        step: Some("deploy".into()),
        approvers: vec!["bob".into()],
        ..basic()
    };
    let public = ctx(&[]);
    assert_eq!(
        decide(None, &Command::Open(for_run.clone()), &public).map_err(|e| e.code),
        Err(ErrorCode::NotAllowed)
    );
    let mut service = ctx(&[]);
    service.service = true;
    let Ok(Decision::Append(events)) = decide(None, &Command::Open(for_run), &service) else {
        panic!("a runner opens it")
    };
    let mut state = None;
    apply(&mut state, &events[0]);
    let s = state.expect("opened");
    let cancel = Command::Cancel(CancelGate {
        gate_id: s.id,
        actor: "moira:runner".into(),
        reason: Some("run r1 cancelled by bob".into()),
        ..Default::default()
    });
    assert_eq!(
        decide(Some(&s), &cancel, &ctx(&[])).map_err(|e| e.code),
        Err(ErrorCode::BadRequest),
        "a person cannot act as a service"
    );
    let mut later = ctx(&[]);
    later.service = true;
    assert!(matches!(
        decide(Some(&s), &cancel, &later),
        Ok(Decision::Append(_))
    ));
    let mallory = Command::Cancel(CancelGate {
        gate_id: s.id,
        actor: "mallory".into(),
        ..Default::default()
    });
    assert_eq!(
        decide(Some(&s), &mallory, &ctx(&[])).map_err(|e| e.code),
        Err(ErrorCode::NotAllowed)
    );
}

#[test]
fn a_gate_takes_a_bounded_number_of_push_backs_and_refusing_the_next_changes_nothing() {
    let mut g = open(basic());
    let pb = |g: &Given| {
        Command::PushBack(PushBackGate {
            gate_id: g.gate,
            actor: "bob".into(),
            comment: Some("again".into()),
            ..Default::default()
        })
    };
    for _ in 0..MAX_PUSH_BACKS {
        g.when_ok(pb(&g), &[]);
    }
    let before = g.state().clone();
    assert_eq!(g.refused(pb(&g), &[]), ErrorCode::TooLarge);
    assert_eq!(g.state(), &before);
    // It can still be decided.
    g.when_ok(g.approve("bob"), &[]);
    assert_eq!(g.state().status, GateStatus::Approved);
}

#[test]
fn stages_approve_in_order_and_a_push_back_starts_them_again() {
    use crate::stages::Stage;
    let mut g = open(OpenGate {
        stages: vec![
            Stage {
                roles: vec!["qa".into()],
                count: 1,
                ..Default::default()
            },
            Stage {
                users: vec!["olga".into(), "oscar".into()],
                count: 2,
                ..Default::default()
            },
        ],
        ..basic()
    });
    assert_eq!(g.state().spec.approvals_required, 3);
    let view = GateView::from(g.state());
    assert_eq!(view.stage, Some(1));
    // An owner before QA: refused with its own code, and nothing stored.
    assert_eq!(g.refused(g.approve("olga"), &[]), ErrorCode::OutOfOrder);
    // Someone in no stage at all.
    assert_eq!(g.refused(g.approve("mallory"), &[]), ErrorCode::NotAllowed);
    g.when_ok(g.approve("quinn"), &["qa"]);
    assert_eq!(GateView::from(g.state()).stage, Some(2));
    // QA again does not count for the owners' stage.
    assert_eq!(
        g.refused(g.approve("quinn"), &["qa"]),
        ErrorCode::NotAllowed
    );
    g.when_ok(g.approve("olga"), &[]);
    assert_eq!(g.state().status, GateStatus::Waiting);
    let pushed = Command::PushBack(PushBackGate {
        gate_id: g.gate,
        actor: "oscar".into(),
        ..Default::default()
    });
    g.when_ok(pushed, &[]);
    let view = GateView::from(g.state());
    assert_eq!(view.stage, Some(1), "every stage starts again");
    assert!(view.stages.iter().all(|s| s.approved_by.is_empty()));
    assert_eq!(g.refused(g.approve("olga"), &[]), ErrorCode::OutOfOrder);
    g.when_ok(g.approve("quinn"), &["qa"]);
    g.when_ok(g.approve("olga"), &[]);
    g.when_ok(g.approve("oscar"), &[]);
    assert_eq!(g.state().status, GateStatus::Approved);
    let view = GateView::from(g.state());
    assert_eq!(view.stage, None);
    assert_eq!(view.stages[1].approved_by, ["olga", "oscar"]);
    // A denial by any stage's approver denies a staged gate.
    let g = open(OpenGate {
        stages: vec![
            Stage {
                users: vec!["quinn".into()],
                count: 1,
                ..Default::default()
            },
            Stage {
                users: vec!["olga".into()],
                count: 1,
                ..Default::default()
            },
        ],
        ..basic()
    });
    let deny = Command::Deny(DenyGate {
        gate_id: g.gate,
        actor: "olga".into(),
        reason: "no".into(),
        ..Default::default()
    });
    assert!(matches!(g.when(deny, &[]), Ok(Decision::Append(_))));
    // Stages and a flat list at once are refused.
    let both = OpenGate {
        approvers: vec!["bob".into()],
        stages: vec![Stage::default()],
        ..basic()
    };
    let e = crate::gate::spec_from(&both, &Policy::dev()).expect_err("both");
    assert!(e.message.contains("not both"), "{}", e.message);
}

impl Given {
    /// `actor` approving as `user`'s deputy, with the certificate checked.
    fn as_deputy(
        &self,
        actor: &str,
        user: &str,
        deputy: Option<Deputy>,
    ) -> Result<Decision, Rejection> {
        let mut cx = ctx(&[]);
        cx.new_gate_id = self.gate;
        cx.deputy = deputy;
        let cmd = Command::Approve(ApproveGate {
            gate_id: self.gate,
            actor: actor.into(),
            on_behalf_of: Some(user.into()),
            ..Default::default()
        });
        decide(self.state.as_ref(), &cmd, &cx)
    }

    fn deputy_ok(&mut self, actor: &str, user: &str, deputy: Deputy) {
        match self.as_deputy(actor, user, Some(deputy)) {
            Ok(Decision::Append(events)) => {
                for e in &events {
                    apply(&mut self.state, e);
                }
            }
            other => panic!("expected events, got {other:?}"),
        }
    }
}

fn covers(user: &str, as_user: bool, roles: &[&str]) -> Deputy {
    Deputy {
        user: user.into(),
        as_user,
        roles: roles.iter().map(|r| r.to_string()).collect(),
    }
}

fn code(r: Result<Decision, Rejection>) -> ErrorCode {
    match r {
        Err(e) => e.code,
        Ok(d) => panic!("expected a refusal, got {d:?}"),
    }
}

#[test]
fn a_deputy_counts_where_the_gate_names_the_user_they_cover_and_is_recorded_as_such() {
    let mut g = open(OpenGate {
        approvers: vec!["alice".into()],
        actor: "carol".into(),
        ..basic()
    });
    // bob alone is no approver of this gate.
    assert_eq!(g.refused(g.approve("bob"), &[]), ErrorCode::NotAllowed);
    g.deputy_ok("bob", "alice", covers("alice", true, &[]));
    let s = g.state();
    assert_eq!(s.status, GateStatus::Approved);
    assert_eq!(s.approvals[0].by, "bob");
    assert_eq!(s.approvals[0].on_behalf_of.as_deref(), Some("alice"));
    assert_eq!(s.approvals[0].who(), "bob for alice");
    assert_eq!(s.decided_for.as_deref(), Some("alice"));
}

#[test]
fn a_deputy_without_a_checked_certificate_or_for_another_user_is_refused() {
    let g = open(OpenGate {
        approvers: vec!["alice".into()],
        actor: "carol".into(),
        ..basic()
    });
    assert_eq!(
        code(g.as_deputy("bob", "alice", None)),
        ErrorCode::NotAllowed
    );
    // The certificate checked was dan's, not alice's.
    assert_eq!(
        code(g.as_deputy("bob", "alice", Some(covers("dan", true, &[])))),
        ErrorCode::NotAllowed
    );
    // Acting for oneself is not delegation.
    assert_eq!(
        code(g.as_deputy("alice", "alice", Some(covers("alice", true, &[])))),
        ErrorCode::BadRequest
    );
}

#[test]
fn a_deputy_limited_to_a_role_does_not_count_where_the_gate_names_the_user() {
    let mut g = open(OpenGate {
        approvers: vec!["alice".into()],
        actor: "carol".into(),
        ..basic()
    });
    assert_eq!(
        code(g.as_deputy("bob", "alice", Some(covers("alice", false, &["owner"])))),
        ErrorCode::NotAllowed
    );
    let mut by_role = open(OpenGate {
        roles: vec!["owner".into()],
        actor: "carol".into(),
        ..basic()
    });
    by_role.deputy_ok("bob", "alice", covers("alice", false, &["owner"]));
    assert_eq!(by_role.state().status, GateStatus::Approved);
    g.deputy_ok("bob", "alice", covers("alice", true, &["owner"]));
}

#[test]
fn a_deputy_cannot_approve_their_own_gate_nor_the_covered_users_gate() {
    // bob opened it: bob covering alice is still bob approving his own gate.
    let g = open(OpenGate {
        approvers: vec!["alice".into()],
        actor: "bob".into(),
        allow_self_approval: Some(false),
        ..basic()
    });
    assert_eq!(
        code(g.as_deputy("bob", "alice", Some(covers("alice", true, &[])))),
        ErrorCode::NotAllowed
    );
    // alice opened it: her deputy cannot approve it for her either.
    let g = open(OpenGate {
        approvers: vec!["alice".into(), "dan".into()],
        actor: "alice".into(),
        allow_self_approval: Some(false),
        ..basic()
    });
    assert_eq!(
        code(g.as_deputy("bob", "alice", Some(covers("alice", true, &[])))),
        ErrorCode::NotAllowed
    );
}

#[test]
fn a_deputy_and_the_user_they_cover_count_once_between_them() {
    let two = || OpenGate {
        approvers: vec!["alice".into(), "bob".into(), "dan".into()],
        approvals: Some(2),
        actor: "carol".into(),
        ..basic()
    };
    // bob as himself, then bob for alice: bob would count twice.
    let mut g = open(two());
    g.when_ok(g.approve("bob"), &[]);
    assert_eq!(
        code(g.as_deputy("bob", "alice", Some(covers("alice", true, &[])))),
        ErrorCode::NotAllowed
    );
    // alice herself, then bob for alice: alice would count twice.
    let mut g = open(two());
    g.when_ok(g.approve("alice"), &[]);
    assert_eq!(
        code(g.as_deputy("bob", "alice", Some(covers("alice", true, &[])))),
        ErrorCode::NotAllowed
    );
    // bob for alice, then alice or bob: refused; dan completes it.
    let mut g = open(two());
    g.deputy_ok("bob", "alice", covers("alice", true, &[]));
    assert_eq!(g.refused(g.approve("alice"), &[]), ErrorCode::NotAllowed);
    assert_eq!(g.refused(g.approve("bob"), &[]), ErrorCode::NotAllowed);
    g.when_ok(g.approve("dan"), &[]);
    assert_eq!(g.state().status, GateStatus::Approved);
}

#[test]
fn a_deputy_cannot_cancel_for_the_user_they_cover() {
    let g = open(OpenGate {
        approvers: vec!["alice".into()],
        actor: "carol".into(),
        ..basic()
    });
    let mut cx = ctx(&[]);
    cx.deputy = Some(covers("alice", true, &[]));
    let cmd = Command::Cancel(CancelGate {
        gate_id: g.gate,
        actor: "bob".into(),
        on_behalf_of: Some("alice".into()),
        ..Default::default()
    });
    assert_eq!(
        code(decide(g.state.as_ref(), &cmd, &cx)),
        ErrorCode::NotAllowed
    );
}
