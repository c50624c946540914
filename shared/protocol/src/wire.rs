//! Everything moira puts on the wire besides message bodies: every
//! subject, stream, bucket, consumer and header name, and the configs of
//! the streams, buckets and shared consumers. Services build them only
//! here, so a name changes in one place and a reader finds them all.
//!
//! - gates: `MOIRA_GATES`, commands on `moira.cmd.gate.<verb>` and
//!   `moira.svc.gate.<verb>`, live copies on `moira.live.gate.ev.<id>`;
//! - runs: `MOIRA_RUNS`, `MOIRA_JOBS`, commands on `moira.cmd.run.*`;
//! - notifications: `MOIRA_NOTIFY`, `MOIRA_NOTIFY_DELIVERIES`;
//! - the approvers registry (`MOIRA_REGISTRY`) and moira-web's used
//!   links (`MOIRA_WEB_LINKS`).

use crate::ids::GateId;

pub mod streams;

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
/// Asks whether a gate covers a digest (a read, answered by gate-keepers).
pub const GATE_CHECK: &str = "moira.cmd.gate.check";
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

// Runs.

/// The stream of run events and step output.
pub const RUNS_STREAM: &str = "MOIRA_RUNS";
pub const RUN_EVENTS_ALL: &str = "moira.run.ev.*";
pub const RUN_LOGS_ALL: &str = "moira.run.log.*.*";
pub const JOBS_STREAM: &str = "MOIRA_JOBS";
pub const JOBS_ALL: &str = "moira.job.*";
const JOB_PREFIX: &str = "moira.job.";
const RUN_EVENTS_PREFIX: &str = "moira.run.ev.";
/// The durable consumer all runners share for jobs.
pub const RUNNERS_CONSUMER: &str = "moira-runners";
/// The durable consumer all runners share to turn gate decisions into jobs.
pub const RESUMER_CONSUMER: &str = "moira-resumer";
/// Header on log lines: `stdout` or `stderr`.
pub const HDR_LOG_STREAM: &str = "Moira-Log-Stream";

pub fn run_events(run_id: &str) -> String {
    format!("{RUN_EVENTS_PREFIX}{run_id}")
}
pub fn run_logs(run_id: &str, step: &str) -> String {
    format!("moira.run.log.{run_id}.{step}")
}
pub fn run_logs_all(run_id: &str) -> String {
    format!("moira.run.log.{run_id}.*")
}
pub fn job(run_id: &str) -> String {
    format!("{JOB_PREFIX}{run_id}")
}
/// The run id in a job subject (`moira.job.<run_id>`), unchecked.
pub fn run_id_from_job(subject: &str) -> Option<&str> {
    subject.strip_prefix(JOB_PREFIX)
}
/// The run id in a run event subject (`moira.run.ev.<run_id>`), unchecked.
pub fn run_id_from_event_subject(subject: &str) -> Option<&str> {
    subject.strip_prefix(RUN_EVENTS_PREFIX)
}
/// Whether a subject is a run event's (`moira.run.ev.<run_id>`).
pub fn is_run_event(subject: &str) -> bool {
    subject.starts_with(RUN_EVENTS_PREFIX)
}

// Notifications.

/// The notifier's stream: reminder and escalation schedules, the messages
/// they fire, and failed deliveries.
pub const NOTIFY_STREAM: &str = "MOIRA_NOTIFY";
pub const NOTIFY_SCHEDULES_ALL: &str = "moira.notify.sched.*.*";
pub const NOTIFY_FIRED_ALL: &str = "moira.notify.fire.*.*";
/// Failed deliveries, one subject per channel (`moira notify failures`).
pub const NOTIFY_FAILED_ALL: &str = "moira.notify.failed.*";
const NOTIFY_FIRED_PREFIX: &str = "moira.notify.fire.";
/// On a fired reminder: the schedule was stopped, nothing to send.
pub const HDR_NOTIFY_STOP: &str = "Moira-Stop";
/// Who delivered which notification, shared by the notifiers.
pub const NOTIFY_DELIVERIES_BUCKET: &str = "MOIRA_NOTIFY_DELIVERIES";
/// The notifiers' shared durable consumers: one per stream they follow.
pub const NOTIFIER_GATES_CONSUMER: &str = "moira-notifier-gates";
pub const NOTIFIER_RUNS_CONSUMER: &str = "moira-notifier-runs";
pub const NOTIFIER_FIRED_CONSUMER: &str = "moira-notifier-fire";

/// Where a gate's reminder or escalation (`what`) is scheduled.
pub fn notify_schedule(gate: GateId, what: &str) -> String {
    format!("moira.notify.sched.{gate}.{what}")
}
/// Where that schedule fires.
pub fn notify_fired(gate: GateId, what: &str) -> String {
    format!("{NOTIFY_FIRED_PREFIX}{gate}.{what}")
}
/// The `<gate>.<what>` of a fired schedule's subject.
pub fn notify_fired_parts(subject: &str) -> Option<&str> {
    subject.strip_prefix(NOTIFY_FIRED_PREFIX)
}
pub fn notify_failed(channel: &str) -> String {
    format!("moira.notify.failed.{channel}")
}

// The read model.

/// The read model: one message per gate and per run, the summary of its
/// current state, on `moira.idx.<kind>.<status>.<id>`. Derived from the
/// event streams and never the source of truth: it can be dropped and
/// rebuilt (`moira admin reindex`).
pub const INDEX_STREAM: &str = "MOIRA_INDEX";
pub const INDEX_ALL: &str = "moira.idx.>";
/// Gate and run summaries.
pub const INDEX_GATE: &str = "gate";
pub const INDEX_RUN: &str = "run";
/// The gate-keepers' shared consumer that projects gate events, and the
/// runners' one that projects run events.
pub const INDEX_GATES_CONSUMER: &str = "moira-index-gates";
pub const INDEX_RUNS_CONSUMER: &str = "moira-index-runs";
/// Scopes the last-subject-sequence check to a filter: an index write is
/// checked against every status's entry of its gate or run at once.
pub const HDR_EXPECTED_LAST_SUBJECT_SEQ_SUBJECT: &str =
    "Nats-Expected-Last-Subject-Sequence-Subject";

/// Where the summary of `kind` `id` in `status` is stored.
pub fn index_entry(kind: &str, status: &str, id: &str) -> String {
    format!("moira.idx.{kind}.{status}.{id}")
}
/// Every status's entry of one gate or run (at most one is kept).
pub fn index_entries_of(kind: &str, id: &str) -> String {
    format!("moira.idx.{kind}.*.{id}")
}
/// Every entry of `kind` in `status`, or in any status with `None`.
pub fn index_entries_in(kind: &str, status: Option<&str>) -> String {
    format!("moira.idx.{kind}.{}.*", status.unwrap_or("*"))
}
/// The status and id of an index subject.
pub fn index_parts(subject: &str) -> Option<(&str, &str, &str)> {
    let mut t = subject.strip_prefix("moira.idx.")?.splitn(3, '.');
    Some((t.next()?, t.next()?, t.next()?))
}

// Buckets.

/// The approvers registry, signed by admins.
pub const REGISTRY_BUCKET: &str = "MOIRA_REGISTRY";
/// moira-web: nonces of the one-click links already used.
pub const WEB_LINKS_BUCKET: &str = "MOIRA_WEB_LINKS";

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
/// On Direct Get replies: when the broker stored the message, and how
/// many more match after this batch.
pub const HDR_TIME_STAMP: &str = "Nats-Time-Stamp";
pub const HDR_NUM_PENDING: &str = "Nats-Num-Pending";
pub const HDR_CONTENT_TYPE: &str = "Content-Type";
pub const CONTENT_TYPE_JSON: &str = "application/json";
pub const CONTENT_TYPE_MSGPACK: &str = "application/msgpack";

/// The JetStream API subject for Direct Gets (batched reads) on `stream`.
pub fn direct_get(stream: &str) -> String {
    format!("$JS.API.DIRECT.GET.{stream}")
}

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
        let e = index_entry(INDEX_GATE, "waiting", &id.to_string());
        assert_eq!(
            index_parts(&e),
            Some((INDEX_GATE, "waiting", id.to_string().as_str()))
        );
        assert_eq!(index_parts("moira.gate.ev.x"), None);
    }
}
