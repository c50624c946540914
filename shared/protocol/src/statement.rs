//! What a person or tool signs: a small, deterministic statement of one
//! command, in the shape of an in-toto Statement v1.
//!
//! The bytes are compact JSON with keys in a fixed (sorted) order, no
//! spaces, UTF-8, and no trailing newline, so anyone can rebuild them and
//! check a signature with `ssh-keygen -Y verify -n moira`. They name the
//! verb, the gate, a digest of the gate as it was opened (the text and
//! policy the signer was shown), the iteration, the actor, everything the
//! command carries, its command id and when it was signed, so a signature
//! cannot be moved to another gate, iteration or request.
//!
//! ```text
//! {"_type":"https://in-toto.io/Statement/v1",
//!  "predicate":{"actor":"bob","at":"2026-12-02T10:00:00.000Z","command_id":"…",
//!               "comment":"lgtm","gate_id":"…","inputs":{"WINDOW":"sat"},
//!               "iteration":1,"reason":null,"verb":"approve"},
//!  "predicateType":"https://moira.dev/decision/v1",
//!  "subject":[{"digest":{"sha256":"<gate digest>"},"name":"moira-gate:<gate id>"}]}
//! ```
//! (shown wrapped; the real bytes are one line). For an `open`, the subject
//! digest is the digest of the gate's definition ([`open_digest`] of the
//! `GateSpec` the open makes; a signed open states `allow_self_approval`,
//! so the definition does not depend on the gate-keeper's defaults) and
//! the iteration is 0; for every other verb it is
//! [`GateState::opened_digest`].

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::command::{Command, OpenGate};
use crate::event::GateSpec;
use crate::event::{Envelope, GateEvent};
use crate::gate::GateState;
use crate::ids::{CommandId, GateId};
use crate::time::rfc3339;

/// The SSH signature namespace of moira statements (`ssh-keygen -n moira`).
pub const NAMESPACE: &str = "moira";
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const PREDICATE_TYPE: &str = "https://moira.dev/decision/v1";

// Field order below is the byte order of the statement: keep it sorted.
#[derive(Serialize)]
struct Statement<'a> {
    #[serde(rename = "_type")]
    type_: &'static str,
    predicate: Predicate<'a>,
    #[serde(rename = "predicateType")]
    predicate_type: &'static str,
    subject: Vec<Subject>,
}

#[derive(Serialize)]
struct Subject {
    digest: Sha256Digest,
    name: String,
}

#[derive(Serialize)]
struct Sha256Digest {
    sha256: String,
}

#[derive(Serialize)]
struct Predicate<'a> {
    actor: &'a str,
    at: String,
    command_id: String,
    comment: Option<&'a str>,
    gate_id: String,
    inputs: &'a BTreeMap<String, String>,
    iteration: u32,
    /// Only in a deputy's statement: the user they decide for.
    #[serde(skip_serializing_if = "Option::is_none")]
    on_behalf_of: Option<&'a str>,
    reason: Option<&'a str>,
    verb: &'static str,
    /// Only in a statement a service signs for the actor (moira-web): how
    /// it authenticated them. Absent otherwise, so a person's statement is
    /// the same bytes as before it existed.
    #[serde(skip_serializing_if = "Option::is_none")]
    via: Option<&'a str>,
}

/// The hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    crate::hex::encode(&Sha256::digest(bytes))
}

/// The subject digest of an `open`: the SHA-256 of the gate's definition
/// as MessagePack with named fields.
pub fn open_digest(spec: &GateSpec) -> String {
    sha256_hex(&rmp_serde::to_vec_named(spec).unwrap_or_default())
}

/// The definition a signed open makes (`None` if the open is invalid).
fn signed_spec(c: &OpenGate) -> Option<GateSpec> {
    crate::gate::spec_from(c, &crate::gate::Policy::dev()).ok()
}

/// The gate as it was opened, as the bytes whose digest a decision signs.
#[derive(Serialize)]
struct Opened<'a> {
    gate_id: GateId,
    spec: &'a GateSpec,
    requested_by: &'a str,
    opened_at: u64,
    timeout_at: Option<u64>,
}

impl GateState {
    /// MessagePack (named fields) of the gate's id, definition, requester,
    /// opening time and deadline: what the approver was shown.
    pub fn opened_bytes(&self) -> Vec<u8> {
        let o = Opened {
            gate_id: self.id,
            spec: &self.spec,
            requested_by: &self.requested_by,
            opened_at: self.opened_at,
            timeout_at: self.timeout_at,
        };
        rmp_serde::to_vec_named(&o).unwrap_or_default()
    }

    /// The subject digest of every decision on this gate.
    pub fn opened_digest(&self) -> String {
        sha256_hex(&self.opened_bytes())
    }
}

/// What a statement is about, besides the command itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct About {
    pub gate_id: GateId,
    /// [`open_digest`] for an open, [`GateState::opened_digest`] otherwise.
    pub digest: String,
    /// 0 for an open; the gate's iteration otherwise.
    pub iteration: u32,
    /// What the gate approves (artifacts, or an action): names and hex
    /// SHA-256 digests, listed after the gate in the statement's subject.
    pub approves: Vec<(String, String)>,
}

impl About {
    /// What `cmd` is about, given the gate as it stands (`None` for an open
    /// of a new gate). `None` when a decision names a gate that is missing.
    pub fn of(cmd: &Command, gate_id: GateId, state: Option<&GateState>) -> Option<About> {
        match cmd {
            Command::Open(c) => signed_spec(c).map(|spec| About {
                gate_id,
                digest: open_digest(&spec),
                iteration: 0,
                approves: crate::binding::subjects(&spec),
            }),
            _ => state.map(|s| About {
                gate_id: s.id,
                digest: s.opened_digest(),
                iteration: s.iteration,
                approves: crate::binding::subjects(&s.spec),
            }),
        }
    }
}

/// The command a stored event records, and what it was about, so its
/// statement can be rebuilt from the stream alone. `state` is the gate as
/// it stood before the event. `None` for events no person signs (a fired
/// timeout) and for an event with nothing before it but an open.
pub fn recorded(state: Option<&GateState>, env: &Envelope) -> Option<(Command, About)> {
    let actor = env.actor.clone();
    let gate_id = env.gate_id;
    let via = env.via.clone();
    let on_behalf_of = env.on_behalf_of.clone();
    let cmd = match &env.event {
        GateEvent::GateOpened { spec, .. } => {
            let about = About {
                gate_id,
                digest: open_digest(spec),
                iteration: 0,
                approves: crate::binding::subjects(spec),
            };
            let c = OpenGate {
                gate_id: Some(gate_id),
                actor,
                message: spec.message.clone(),
                title: spec.title.clone(),
                summary: spec.summary.clone(),
                metadata: spec.metadata.clone(),
                run_id: spec.run_id.clone(),
                step: spec.step.clone(),
                approvers: spec.approvers.users.clone(),
                roles: spec.approvers.roles.clone(),
                approvals: Some(spec.approvals_required),
                allow_self_approval: Some(spec.allow_self_approval),
                inputs: spec.inputs.clone(),
                required: spec.required.clone(),
                timeout_ms: spec.timeout_ms,
                on_timeout: Some(spec.on_timeout),
                subject: spec.subject.clone(),
                action: spec.action.as_ref().and_then(|a| {
                    let call: serde_json::Value = serde_json::from_str(&a.canonical).ok()?;
                    Some(crate::binding::ActionCall {
                        tool: a.tool.clone(),
                        arguments: call.get("arguments").cloned().unwrap_or_default(),
                    })
                }),
                valid_for_ms: spec.valid_for_ms,
                ..Default::default()
            };
            // A staged gate was opened with its stages, not a flat list.
            let c = if spec.stages.is_empty() {
                c
            } else {
                OpenGate {
                    approvers: Vec::new(),
                    roles: Vec::new(),
                    approvals: None,
                    stages: spec.stages.clone(),
                    ..c
                }
            };
            return Some((Command::Open(c), about));
        }
        GateEvent::ApprovalRecorded { comment, inputs }
        | GateEvent::GateApproved { comment, inputs } => {
            Command::Approve(crate::command::ApproveGate {
                gate_id,
                actor,
                comment: comment.clone(),
                inputs: inputs.clone(),
                via: via.clone(),
                on_behalf_of: on_behalf_of.clone(),
                ..Default::default()
            })
        }
        GateEvent::GateDenied { reason } => Command::Deny(crate::command::DenyGate {
            gate_id,
            actor,
            reason: reason.clone(),
            via: via.clone(),
            on_behalf_of: on_behalf_of.clone(),
            ..Default::default()
        }),
        GateEvent::GatePushedBack { comment, inputs } => {
            Command::PushBack(crate::command::PushBackGate {
                gate_id,
                actor,
                comment: comment.clone(),
                inputs: inputs.clone(),
                via: via.clone(),
                on_behalf_of: on_behalf_of.clone(),
                ..Default::default()
            })
        }
        GateEvent::GateCancelled { reason } => Command::Cancel(crate::command::CancelGate {
            gate_id,
            actor,
            reason: reason.clone(),
            via: via.clone(),
            on_behalf_of: on_behalf_of.clone(),
            ..Default::default()
        }),
        GateEvent::GateTimedOut { .. } => return None,
    };
    let about = About::of(&cmd, gate_id, state)?;
    Some((cmd, about))
}

/// The exact statement bytes for `cmd` (signed at `at`, ms since the epoch,
/// with command id `command_id`).
pub fn statement(cmd: &Command, about: &About, command_id: CommandId, at: u64) -> Vec<u8> {
    let empty = BTreeMap::new();
    let (comment, inputs, reason) = match cmd {
        Command::Open(_) => (None, &empty, None),
        Command::Approve(c) => (c.comment.as_deref(), &c.inputs, None),
        Command::Deny(c) => (None, &empty, Some(c.reason.as_str())),
        Command::PushBack(c) => (c.comment.as_deref(), &c.inputs, None),
        Command::Cancel(c) => (None, &empty, c.reason.as_deref()),
    };
    let s = Statement {
        type_: STATEMENT_TYPE,
        predicate: Predicate {
            actor: cmd.actor(),
            at: rfc3339(at),
            command_id: command_id.to_string(),
            comment,
            gate_id: about.gate_id.to_string(),
            inputs,
            iteration: about.iteration,
            on_behalf_of: cmd.on_behalf_of(),
            reason,
            verb: cmd.verb().as_str(),
            via: cmd.via(),
        },
        predicate_type: PREDICATE_TYPE,
        subject: std::iter::once(Subject {
            digest: Sha256Digest {
                sha256: about.digest.clone(),
            },
            name: format!("moira-gate:{}", about.gate_id),
        })
        .chain(about.approves.iter().map(|(name, hex)| Subject {
            digest: Sha256Digest {
                sha256: hex.clone(),
            },
            name: name.clone(),
        }))
        .collect(),
    };
    serde_json::to_vec(&s).unwrap_or_default()
}

/// The statement a gate-keeper signs for the `GateTimedOut` it prepares
/// when it opens a gate with a deadline: the same shape as a decision's,
/// verb `timeout`, actor `moira:timeout`, signed "at" the deadline, about
/// the gate as opened. Its iteration is 0: the deadline holds whatever
/// iteration the gate has reached when it passes.
pub fn timeout_statement(fired: &Envelope, opened_digest: &str) -> Vec<u8> {
    let empty = BTreeMap::new();
    let s = Statement {
        type_: STATEMENT_TYPE,
        predicate: Predicate {
            actor: &fired.actor,
            at: rfc3339(fired.at),
            command_id: fired.id.to_string(),
            comment: None,
            gate_id: fired.gate_id.to_string(),
            inputs: &empty,
            iteration: 0,
            on_behalf_of: None,
            reason: None,
            verb: "timeout",
            via: None,
        },
        predicate_type: PREDICATE_TYPE,
        subject: vec![Subject {
            digest: Sha256Digest {
                sha256: opened_digest.to_string(),
            },
            name: format!("moira-gate:{}", fired.gate_id),
        }],
    };
    serde_json::to_vec(&s).unwrap_or_default()
}

/// The predicate type of run statements (submit, cancel, auto-approve).
pub const RUN_PREDICATE_TYPE: &str = "https://moira.dev/run/v1";

/// What a run statement is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunVerb {
    /// A person submits a workflow file with its variables.
    Submit,
    /// A person cancels a run.
    Cancel,
    /// A runner approves a gate step whose `when:` is false.
    AutoApprove,
}

impl RunVerb {
    pub fn as_str(self) -> &'static str {
        match self {
            RunVerb::Submit => "submit",
            RunVerb::Cancel => "cancel",
            RunVerb::AutoApprove => "auto-approve",
        }
    }
}

#[derive(Serialize)]
struct RunStatementBytes<'a> {
    #[serde(rename = "_type")]
    type_: &'static str,
    predicate: RunPredicate<'a>,
    #[serde(rename = "predicateType")]
    predicate_type: &'static str,
    subject: Vec<Subject>,
}

// Sorted, like the decision predicate.
#[derive(Serialize)]
struct RunPredicate<'a> {
    actor: &'a str,
    at: String,
    command_id: &'a str,
    run_id: &'a str,
    step: Option<&'a str>,
    vars: &'a BTreeMap<String, String>,
    verb: &'static str,
}

/// One signed run command, as its statement names it.
#[derive(Debug, Clone, Copy)]
pub struct RunAbout<'a> {
    pub verb: RunVerb,
    pub run_id: &'a str,
    pub actor: &'a str,
    /// The workflow file's text; the subject is its SHA-256.
    pub workflow: &'a str,
    /// For a submit, every variable as the run records it (defaults and
    /// `--var` overrides together); empty otherwise.
    pub vars: &'a BTreeMap<String, String>,
    /// The step an auto-approval is for.
    pub step: Option<&'a str>,
    pub command_id: &'a str,
    /// When it was signed, ms since the epoch.
    pub at: u64,
    /// For a submit of a workflow that calls others: those files, each
    /// listed after the run in the subject as `moira-workflow:<path>`, so
    /// the signature covers every file the run may start.
    pub includes: Option<&'a BTreeMap<String, String>>,
}

/// The exact bytes of a run statement: compact JSON, keys sorted, the
/// subject the workflow file's SHA-256 under the name `moira-run:<run id>`.
///
/// ```text
/// {"_type":"https://in-toto.io/Statement/v1",
///  "predicate":{"actor":"alice","at":"…","command_id":"…","run_id":"…",
///               "step":null,"vars":{"ENV":"prod"},"verb":"submit"},
///  "predicateType":"https://moira.dev/run/v1",
///  "subject":[{"digest":{"sha256":"<workflow digest>"},"name":"moira-run:<run id>"}]}
/// ```
pub fn run_statement(a: &RunAbout<'_>) -> Vec<u8> {
    let s = RunStatementBytes {
        type_: STATEMENT_TYPE,
        predicate: RunPredicate {
            actor: a.actor,
            at: rfc3339(a.at),
            command_id: a.command_id,
            run_id: a.run_id,
            step: a.step,
            vars: a.vars,
            verb: a.verb.as_str(),
        },
        predicate_type: RUN_PREDICATE_TYPE,
        subject: std::iter::once(Subject {
            digest: Sha256Digest {
                sha256: sha256_hex(a.workflow.as_bytes()),
            },
            name: format!("moira-run:{}", a.run_id),
        })
        .chain(
            a.includes
                .into_iter()
                .flatten()
                .map(|(path, text)| Subject {
                    digest: Sha256Digest {
                        sha256: sha256_hex(text.as_bytes()),
                    },
                    name: format!("moira-workflow:{path}"),
                }),
        )
        .collect(),
    };
    serde_json::to_vec(&s).unwrap_or_default()
}

/// The run id a submit with command id `command_id` gets: a retried submit
/// names the same run, and a signer knows the run id before sending.
pub fn run_id_for(command_id: &str) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("moira-run:{command_id}").as_bytes(),
    )
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::ApproveGate;

    #[test]
    fn statements_are_deterministic_and_bind_gate_iteration_and_content() {
        let gate = GateId::new();
        let cmd = Command::Approve(ApproveGate {
            gate_id: gate,
            actor: "bob".into(),
            comment: Some("lgtm".into()),
            inputs: [("WINDOW".to_string(), "sat".to_string())].into(),
            ..Default::default()
        });
        let about = About {
            gate_id: gate,
            digest: sha256_hex(b"x"),
            iteration: 1,
            approves: Vec::new(),
        };
        let id = CommandId::new();
        let a = statement(&cmd, &about, id, 1_000);
        assert_eq!(a, statement(&cmd, &about, id, 1_000));
        let text = String::from_utf8(a.clone()).expect("utf-8");
        assert!(text.starts_with("{\"_type\":\"https://in-toto.io/Statement/v1\",\"predicate\":{\"actor\":\"bob\",\"at\":\"1970-01-01T00:00:01.000Z\""), "{text}");
        assert!(text.contains("\"inputs\":{\"WINDOW\":\"sat\"},\"iteration\":1,\"reason\":null,\"verb\":\"approve\"}"), "{text}");
        assert!(
            !text.contains(' ') && !text.ends_with('\n'),
            "compact, one line: {text}"
        );
        let next = About {
            iteration: 2,
            ..about.clone()
        };
        assert_ne!(a, statement(&cmd, &next, id, 1_000), "another iteration");
        let other = About {
            gate_id: GateId::new(),
            ..about.clone()
        };
        assert_ne!(a, statement(&cmd, &other, id, 1_000), "another gate");
        assert_ne!(
            a,
            statement(&cmd, &about, CommandId::new(), 1_000),
            "another request"
        );
        assert_ne!(a, statement(&cmd, &about, id, 1_001), "another time");
    }
}
