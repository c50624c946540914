//! Appending gate events with optimistic concurrency.
//!
//! Appends are plain JetStream publishes sent as requests, so the publish
//! acknowledgement (and its server error code) is read directly:
//! - `Nats-Expected-Last-Subject-Sequence` makes a write fail if anything
//!   was stored on the gate's subject since we read it;
//! - `Nats-Msg-Id` is the gate id and the command id together (JetStream
//!   deduplicates ids across the whole stream, so a bare command id reused
//!   on another gate would be swallowed); a duplicate stores nothing, and
//!   the caller reads the gate back to see what the id did there;
//! - an open with a timeout is an atomic batch: the `GateOpened` event and
//!   the `@at` schedule that will write `GateTimedOut` at the deadline;
//! - a decision on a gate with a timeout purges that schedule in the same
//!   write (`Nats-Scheduler` + `Nats-Schedule-Next: purge`).

use async_nats::HeaderMap;
use bytes::Bytes;

use moira_protocol::gate::timed_out_event;
use moira_protocol::time::rfc3339;
use moira_protocol::wire::*;
use moira_protocol::{Envelope, GateEvent};

pub use moira_client::append::AppendError;
use moira_client::append::{request, request_new};

fn event_headers(env: &Envelope) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(HDR_EVENT, env.event.kind());
    h.insert(HDR_SCHEMA, env.schema.to_string().as_str());
    // The caller's trace context, so the event can be followed.
    moira_client::trace::add(&mut h);
    h
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
    h.insert(HDR_MSG_ID, msg_id(env).as_str());
    h.insert(
        HDR_EXPECTED_LAST_SUBJECT_SEQ,
        expected_last_seq.to_string().as_str(),
    );
    if purge_schedule {
        h.insert(HDR_SCHEDULER, gate_schedule(&env.gate_id).as_str());
        h.insert(HDR_SCHEDULE_NEXT, SCHEDULE_NEXT_PURGE);
    }
    request_new(nats, gate_events(&env.gate_id), h, env.encode()).await
}

/// The message id of an event: scoped to its gate.
pub fn msg_id(env: &Envelope) -> String {
    format!("{}:{}", env.gate_id, env.id)
}

/// Opens a gate that has a deadline: the `GateOpened` event and its timeout
/// schedule are stored together or not at all. Returns the sequence of the
/// `GateOpened` event (a batch is stored contiguously, and the ack names
/// its last message, the schedule).
pub async fn append_open_with_timeout(
    nats: &async_nats::Client,
    env: &Envelope,
    signer: Option<&moira_client::signing::Signer>,
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

    let mut fired = timed_out_event(env.gate_id, *deadline, spec);
    if let Some(signer) = signer {
        sign_timeout(&mut fired, env, signer)?;
    }
    let mut second = event_headers(&fired);
    second.insert(HDR_BATCH_ID, batch_id.as_str());
    second.insert(HDR_BATCH_SEQ, "2");
    second.insert(HDR_BATCH_COMMIT, "1");
    second.insert(HDR_SCHEDULE, format!("@at {}", rfc3339(*deadline)).as_str());
    second.insert(HDR_SCHEDULE_TARGET, gate_events(&env.gate_id).as_str());
    let last = request(nats, gate_schedule(&env.gate_id), second, fired.encode()).await?;
    Ok(last.saturating_sub(1))
}

/// Signs a prepared timeout with the gate-keeper's service key: the
/// statement names the gate as `opened` opens it, and the deadline.
fn sign_timeout(
    fired: &mut Envelope,
    opened: &Envelope,
    signer: &moira_client::signing::Signer,
) -> Result<(), AppendError> {
    let mut state = None;
    moira_protocol::gate::apply(&mut state, opened);
    let digest = state
        .map(|s| s.opened_digest())
        .ok_or_else(|| AppendError::Refused("a timeout for a gate that does not open".into()))?;
    let bytes = moira_protocol::statement::timeout_statement(fired, &digest);
    let signature = signer
        .sign(&bytes)
        .map_err(|e| AppendError::Refused(format!("signing the timeout: {e}")))?;
    fired.signature = Some(signature);
    fired.signed_at = Some(fired.at);
    fired.signer = Some(moira_client::signing::fingerprint(&signer.public_key()));
    Ok(())
}
