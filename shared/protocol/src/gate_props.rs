//! Property tests of the gate state machine: any sequence of commands from
//! a few actors, with reused command ids and a timeout firing at any point,
//! never ends a gate twice, never panics, and gives each command id at
//! most one effect. Refusals append nothing.

use proptest::prelude::*;

use super::*;
use crate::command::{ApproveGate, CancelGate, DenyGate, OpenGate, PushBackGate};

const ACTORS: [&str; 4] = ["alice", "bob", "carol", "dave"];

#[derive(Debug, Clone)]
enum Step {
    Approve {
        actor: usize,
        id: usize,
        input: bool,
    },
    Deny {
        actor: usize,
        id: usize,
        empty_reason: bool,
    },
    PushBack {
        actor: usize,
        id: usize,
    },
    Cancel {
        actor: usize,
        id: usize,
    },
    /// The broker fires the timeout prepared at open.
    Timeout,
}

fn step() -> impl Strategy<Value = Step> {
    let a = 0..ACTORS.len();
    let id = 0..6usize;
    prop_oneof![
        4 => (a.clone(), id.clone(), any::<bool>()).prop_map(|(actor, id, input)| Step::Approve { actor, id, input }),
        1 => (a.clone(), id.clone(), any::<bool>()).prop_map(|(actor, id, empty_reason)| Step::Deny { actor, id, empty_reason }),
        2 => (a.clone(), id.clone()).prop_map(|(actor, id)| Step::PushBack { actor, id }),
        1 => (a, id).prop_map(|(actor, id)| Step::Cancel { actor, id }),
        1 => Just(Step::Timeout),
    ]
}

#[derive(Debug, Clone)]
struct Spec {
    approvers: Vec<usize>,
    approvals: u32,
    self_approval: Option<bool>,
    required_input: bool,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        proptest::sample::subsequence((0..ACTORS.len()).collect::<Vec<_>>(), 0..=ACTORS.len()),
        1u32..=3,
        proptest::option::of(any::<bool>()),
        any::<bool>(),
    )
        .prop_map(
            |(approvers, approvals, self_approval, required_input)| Spec {
                approvers,
                approvals,
                self_approval,
                required_input,
            },
        )
}

fn ctx(command_id: CommandId, gate: GateId, now: u64) -> Context {
    Context {
        policy: Policy::dev(),
        service: false,
        now,
        command_id,
        new_gate_id: gate,
        actor_roles: Vec::new(),
        signer: None,
        registry: None,
        prev: None,
        deputy: None,
    }
}

fn command(s: &Step, gate: GateId, ids: &[CommandId]) -> Option<(Command, CommandId)> {
    let text = |t: &str| Some(t.to_string());
    Some(match *s {
        Step::Approve { actor, id, input } => (
            Command::Approve(ApproveGate {
                id: Some(ids[id]),
                gate_id: gate,
                actor: ACTORS[actor].into(),
                comment: text("ok"),
                inputs: if input {
                    [("ticket".to_string(), "T-1".to_string())].into()
                } else {
                    Default::default()
                },
                ..Default::default()
            }),
            ids[id],
        ),
        Step::Deny {
            actor,
            id,
            empty_reason,
        } => (
            Command::Deny(DenyGate {
                id: Some(ids[id]),
                gate_id: gate,
                actor: ACTORS[actor].into(),
                reason: if empty_reason {
                    String::new()
                } else {
                    "no".into()
                },
                ..Default::default()
            }),
            ids[id],
        ),
        Step::PushBack { actor, id } => (
            Command::PushBack(PushBackGate {
                id: Some(ids[id]),
                gate_id: gate,
                actor: ACTORS[actor].into(),
                comment: text("again"),
                ..Default::default()
            }),
            ids[id],
        ),
        Step::Cancel { actor, id } => (
            Command::Cancel(CancelGate {
                id: Some(ids[id]),
                gate_id: gate,
                actor: ACTORS[actor].into(),
                reason: text("stop"),
                ..Default::default()
            }),
            ids[id],
        ),
        Step::Timeout => return None,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_command_sequence_ends_a_gate_at_most_once_and_each_command_id_acts_once(
        spec in spec(),
        steps in proptest::collection::vec(step(), 0..40),
    ) {
        let gate = GateId::new();
        let ids: Vec<CommandId> = (0..6).map(|_| CommandId::new()).collect();
        let open_id = CommandId::new();
        let open = Command::Open(OpenGate {
            id: Some(open_id),
            gate_id: Some(gate),
            actor: "alice".into(),
            message: "ship?".into(),
            approvers: spec.approvers.iter().map(|&i| ACTORS[i].to_string()).collect(),
            approvals: Some(spec.approvals),
            allow_self_approval: spec.self_approval,
            inputs: vec!["ticket".into()],
            required: if spec.required_input { vec!["ticket".into()] } else { Vec::new() },
            timeout_ms: Some(60_000),
            ..Default::default()
        });
        let mut state = None;
        let mut log: Vec<Envelope> = Vec::new();
        let timeout = match decide(None, &open, &ctx(open_id, gate, 1_000)) {
            // An open the rules refuse (more approvals than approvers): nothing exists.
            Err(_) => return Ok(()),
            Ok(Decision::Append(events)) => {
                for e in &events {
                    apply(&mut state, e);
                }
                log.extend(events);
                let s: &GateState = state.as_ref().expect("opened");
                timed_out_event(gate, s.timeout_at.expect("deadline"), &s.spec)
            }
            Ok(other) => panic!("a first open must append: {other:?}"),
        };
        // Which command id did what, to check a reused id acts once.
        let mut acted: Vec<CommandId> = vec![open_id];
        for (n, st) in steps.iter().enumerate() {
            let now = 2_000 + n as u64;
            let Some((cmd, cid)) = command(st, gate, &ids) else {
                apply(&mut state, &timeout);
                log.push(timeout.clone());
                continue;
            };
            let before = state.clone();
            let was_terminal = state.as_ref().is_some_and(|s: &GateState| s.status.is_terminal());
            match decide(state.as_ref(), &cmd, &ctx(cid, gate, now)) {
                Ok(Decision::Append(events)) => {
                    prop_assert!(!was_terminal, "a decided gate took more events: {events:?}");
                    prop_assert!(!acted.contains(&cid), "command id acted twice");
                    acted.push(cid);
                    for e in &events {
                        apply(&mut state, e);
                    }
                    log.extend(events);
                }
                Ok(Decision::AlreadyDone) => {
                    prop_assert!(acted.contains(&cid), "a repeat of a command that never acted");
                    prop_assert_eq!(&state, &before);
                }
                Err(_) => prop_assert_eq!(&state, &before),
            }
        }
        // At most one stored event ends the gate, counting only the ones
        // the fold accepted (a fired timeout after a decision is ignored).
        let mut replay = None;
        let mut ends = 0;
        for e in &log {
            let was = replay.as_ref().is_some_and(|s: &GateState| s.status.is_terminal());
            apply(&mut replay, e);
            let is = replay.as_ref().is_some_and(|s: &GateState| s.status.is_terminal());
            if !was && is {
                ends += 1;
            }
        }
        prop_assert!(ends <= 1);
        // Folding the log again gives the same state.
        prop_assert_eq!(replay, state.clone());
        // An approved gate had enough distinct approvers.
        if let Some(s) = state.as_ref().filter(|s| s.status == GateStatus::Approved && !s.timed_out) {
            let last_push = log.iter().rposition(|e| matches!(e.event, GateEvent::GatePushedBack { .. }));
            let since = &log[last_push.map_or(0, |i| i + 1)..];
            let mut by: Vec<&str> = since
                .iter()
                .filter(|e| matches!(e.event, GateEvent::ApprovalRecorded { .. } | GateEvent::GateApproved { .. }))
                .map(|e| e.actor.as_str())
                .collect();
            by.sort();
            by.dedup();
            prop_assert!(by.len() as u32 >= s.spec.approvals_required, "{by:?} for {}", s.spec.approvals_required);
        }
    }
}
