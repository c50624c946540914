//! Every subject, stream name and header name moira uses. Services build
//! subjects only through these functions.

use crate::ids::GateId;

/// The stream holding every gate's events and timeout schedules.
pub const GATES_STREAM: &str = "MOIRA_GATES";
/// Subjects stored in [`GATES_STREAM`].
pub const GATE_EVENTS_ALL: &str = "moira.gate.ev.*";
pub const GATE_SCHEDULES_ALL: &str = "moira.gate.sched.*";
/// Where the stream republishes each stored gate event, for live waiters.
pub const LIVE_GATE_EVENTS_ALL: &str = "moira.live.gate.ev.>";
const LIVE_GATE_EVENTS_PREFIX: &str = "moira.live.gate.ev.";
const GATE_EVENTS_PREFIX: &str = "moira.gate.ev.";
const GATE_SCHEDULE_PREFIX: &str = "moira.gate.sched.";

/// Command requests (core NATS, not stored): `moira.cmd.gate.<verb>`.
pub const GATE_COMMANDS_ALL: &str = "moira.cmd.gate.*";
const GATE_COMMAND_PREFIX: &str = "moira.cmd.gate.";
/// Gate commands from moira's own services (`moira.svc.gate.<verb>`). The
/// locked-down broker lets only runners publish here, so the gate-keeper
/// trusts what arrives on it a little more: a `moira:` service actor, and
/// opens that name a run. People and tools use [`GATE_COMMANDS_ALL`].
pub const SERVICE_GATE_COMMANDS_ALL: &str = "moira.svc.gate.*";
const SERVICE_GATE_COMMAND_PREFIX: &str = "moira.svc.gate.";
/// Queue group shared by all gate-keepers.
pub const GATEKEEPER_QUEUE: &str = "gatekeeper";

/// Run commands (core NATS, answered by runners): `moira.cmd.run.submit`
/// and `moira.cmd.run.cancel`.
pub const RUN_COMMANDS_ALL: &str = "moira.cmd.run.*";
pub const RUN_SUBMIT: &str = "moira.cmd.run.submit";
pub const RUN_CANCEL: &str = "moira.cmd.run.cancel";
/// Queue group shared by all runners for run commands.
pub const RUNNER_QUEUE: &str = "runner";

/// Whether a command arrived on the services' subject.
pub fn is_service_subject(subject: &str) -> bool {
    subject.starts_with(SERVICE_GATE_COMMAND_PREFIX)
}

/// Headers set on every stored event so tools can filter without decoding.
pub const HDR_EVENT: &str = "Moira-Event";
pub const HDR_SCHEMA: &str = "Moira-Schema";

// JetStream headers used by moira.
pub const HDR_MSG_ID: &str = "Nats-Msg-Id";
pub const HDR_EXPECTED_LAST_SUBJECT_SEQ: &str = "Nats-Expected-Last-Subject-Sequence";
pub const HDR_BATCH_ID: &str = "Nats-Batch-Id";
pub const HDR_BATCH_SEQ: &str = "Nats-Batch-Sequence";
pub const HDR_BATCH_COMMIT: &str = "Nats-Batch-Commit";
pub const HDR_SCHEDULE: &str = "Nats-Schedule";
pub const HDR_SCHEDULE_TARGET: &str = "Nats-Schedule-Target";
pub const HDR_SCHEDULER: &str = "Nats-Scheduler";
pub const HDR_SCHEDULE_NEXT: &str = "Nats-Schedule-Next";
pub const SCHEDULE_NEXT_PURGE: &str = "purge";
/// On republished messages: the stream sequence and the previous sequence
/// on the same subject.
pub const HDR_SEQUENCE: &str = "Nats-Sequence";
pub const HDR_LAST_SEQUENCE: &str = "Nats-Last-Sequence";
pub const HDR_CONTENT_TYPE: &str = "Content-Type";
pub const CONTENT_TYPE_JSON: &str = "application/json";
pub const CONTENT_TYPE_MSGPACK: &str = "application/msgpack";

pub fn gate_events(id: &GateId) -> String {
    format!("{GATE_EVENTS_PREFIX}{id}")
}

pub fn gate_schedule(id: &GateId) -> String {
    format!("{GATE_SCHEDULE_PREFIX}{id}")
}

pub fn live_gate_events(id: &GateId) -> String {
    format!("{LIVE_GATE_EVENTS_PREFIX}{id}")
}

/// The gate id in a stored (`moira.gate.ev.<id>`) or live
/// (`moira.live.gate.ev.<id>`) event subject.
pub fn gate_id_from_subject(subject: &str) -> Option<GateId> {
    let token = subject
        .strip_prefix(LIVE_GATE_EVENTS_PREFIX)
        .or_else(|| subject.strip_prefix(GATE_EVENTS_PREFIX))?;
    token.parse().ok()
}

/// The command verbs the gate-keeper answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    Open,
    Approve,
    Deny,
    PushBack,
    Cancel,
}

impl Verb {
    pub const ALL: [Verb; 5] = [
        Verb::Open,
        Verb::Approve,
        Verb::Deny,
        Verb::PushBack,
        Verb::Cancel,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Open => "open",
            Verb::Approve => "approve",
            Verb::Deny => "deny",
            Verb::PushBack => "push-back",
            Verb::Cancel => "cancel",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    pub fn subject(self) -> String {
        format!("{GATE_COMMAND_PREFIX}{}", self.as_str())
    }

    /// The same verb on the services' subject.
    pub fn service_subject(self) -> String {
        format!("{SERVICE_GATE_COMMAND_PREFIX}{}", self.as_str())
    }

    /// The verb named by a command subject (public or services'), if any.
    pub fn from_subject(subject: &str) -> Option<Self> {
        subject
            .strip_prefix(GATE_COMMAND_PREFIX)
            .or_else(|| subject.strip_prefix(SERVICE_GATE_COMMAND_PREFIX))
            .and_then(Self::parse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip() {
        let id = GateId::new();
        assert_eq!(gate_id_from_subject(&gate_events(&id)), Some(id));
        assert_eq!(gate_id_from_subject(&live_gate_events(&id)), Some(id));
        assert_eq!(gate_id_from_subject(&gate_schedule(&id)), None);
        for v in Verb::ALL {
            assert_eq!(Verb::from_subject(&v.subject()), Some(v));
            assert_eq!(Verb::from_subject(&v.service_subject()), Some(v));
            assert!(is_service_subject(&v.service_subject()));
            assert!(!is_service_subject(&v.subject()));
        }
        assert_eq!(Verb::from_subject("moira.cmd.gate.explode"), None);
    }
}
