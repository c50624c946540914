//! Appending gate events with optimistic concurrency.
//!
//! Appends are plain JetStream publishes sent as requests, so the publish
//! acknowledgement (and its server error code) is read directly:
//! - `Nats-Expected-Last-Subject-Sequence` makes a write fail if anything
//!   was stored on the gate's subject since we read it;
//! - `Nats-Msg-Id` is the command id, so a retried command is stored once;
//! - an open with a timeout is an atomic batch: the `GateOpened` event and
//!   the `@at` schedule that will write `GateTimedOut` at the deadline;
//! - a decision on a gate with a timeout purges that schedule in the same
//!   write (`Nats-Scheduler` + `Nats-Schedule-Next: purge`).

use std::time::Duration;

use async_nats::{HeaderMap, Request};
use bytes::Bytes;
use serde::Deserialize;

use moira_protocol::gate::timed_out_event;
use moira_protocol::subjects::*;
use moira_protocol::time::rfc3339;
use moira_protocol::{Envelope, GateEvent};

const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Server error codes for a failed expected-sequence check (the second is
/// what a clustered stream can answer).
const WRONG_LAST_SEQUENCE: u64 = 10071;
const CLUSTER_WRONG_LAST_SEQUENCE: u64 = 10164;

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Someone else wrote to the gate first: read again and decide again.
    #[error("the gate changed while deciding")]
    Conflict,
    /// The write may or may not be stored (ack lost): read again.
    #[error("no acknowledgement from JetStream within {ACK_TIMEOUT:?}")]
    Unknown,
    #[error("JetStream refused the write: {0}")]
    Refused(String),
    #[error("JetStream is unavailable: {0}")]
    Unavailable(String),
}

#[derive(Deserialize)]
struct Ack {
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    error: Option<AckError>,
}

#[derive(Deserialize)]
struct AckError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

fn event_headers(env: &Envelope) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(HDR_EVENT, env.event.kind());
    h.insert(HDR_SCHEMA, env.schema.to_string().as_str());
    h
}

async fn request(
    nats: &async_nats::Client,
    subject: String,
    headers: HeaderMap,
    payload: Vec<u8>,
) -> Result<u64, AppendError> {
    let req = Request::new()
        .headers(headers)
        .payload(Bytes::from(payload))
        .timeout(Some(ACK_TIMEOUT));
    let msg = match nats.send_request(subject, req).await {
        Ok(m) => m,
        Err(e) if e.kind() == async_nats::RequestErrorKind::TimedOut => {
            return Err(AppendError::Unknown)
        }
        Err(e) => return Err(AppendError::Unavailable(e.to_string())),
    };
    let ack: Ack = serde_json::from_slice(&msg.payload)
        .map_err(|e| AppendError::Unavailable(format!("unreadable publish ack: {e}")))?;
    match ack.error {
        None => Ok(ack.seq),
        Some(err)
            if err.err_code == WRONG_LAST_SEQUENCE
                || err.err_code == CLUSTER_WRONG_LAST_SEQUENCE =>
        {
            Err(AppendError::Conflict)
        }
        Some(err) => Err(AppendError::Refused(format!(
            "{} (code {})",
            err.description, err.err_code
        ))),
    }
}

/// Appends one event to its gate, if the gate's last sequence is still
/// `expected_last_seq`. `purge_schedule` cancels the gate's timeout.
pub async fn append(
    nats: &async_nats::Client,
    env: &Envelope,
    expected_last_seq: u64,
    purge_schedule: bool,
) -> Result<u64, AppendError> {
    let mut h = event_headers(env);
    h.insert(HDR_MSG_ID, env.id.to_string().as_str());
    h.insert(
        HDR_EXPECTED_LAST_SUBJECT_SEQ,
        expected_last_seq.to_string().as_str(),
    );
    if purge_schedule {
        h.insert(HDR_SCHEDULER, gate_schedule(&env.gate_id).as_str());
        h.insert(HDR_SCHEDULE_NEXT, SCHEDULE_NEXT_PURGE);
    }
    request(nats, gate_events(&env.gate_id), h, env.encode()).await
}

/// Opens a gate that has a deadline: the `GateOpened` event and its timeout
/// schedule are stored together or not at all. Returns the sequence of the
/// `GateOpened` event (a batch is stored contiguously, and the ack names
/// its last message, the schedule).
pub async fn append_open_with_timeout(
    nats: &async_nats::Client,
    env: &Envelope,
) -> Result<u64, AppendError> {
    let GateEvent::GateOpened {
        spec,
        timeout_at: Some(deadline),
    } = &env.event
    else {
        return append(nats, env, 0, false).await;
    };
    let batch_id = uuid::Uuid::new_v4().to_string();
    let mut first = event_headers(env);
    first.insert(HDR_BATCH_ID, batch_id.as_str());
    first.insert(HDR_BATCH_SEQ, "1");
    first.insert(HDR_EXPECTED_LAST_SUBJECT_SEQ, "0");
    nats.publish_with_headers(gate_events(&env.gate_id), first, Bytes::from(env.encode()))
        .await
        .map_err(|e| AppendError::Unavailable(e.to_string()))?;

    let fired = timed_out_event(env.gate_id, *deadline, spec.on_timeout);
    let mut second = event_headers(&fired);
    second.insert(HDR_BATCH_ID, batch_id.as_str());
    second.insert(HDR_BATCH_SEQ, "2");
    second.insert(HDR_BATCH_COMMIT, "1");
    second.insert(HDR_SCHEDULE, format!("@at {}", rfc3339(*deadline)).as_str());
    second.insert(HDR_SCHEDULE_TARGET, gate_events(&env.gate_id).as_str());
    let last = request(nats, gate_schedule(&env.gate_id), second, fired.encode()).await?;
    Ok(last.saturating_sub(1))
}
