//! Publishing to JetStream as a request and reading the acknowledgement
//! (and its server error code) directly, so an expected-sequence failure is
//! told apart from everything else on a single node and on a cluster.

use std::time::Duration;

use async_nats::{HeaderMap, Request};
use bytes::Bytes;
use serde::Deserialize;

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
    /// Nothing answered for the subject ("no responders"): no stream holds
    /// it, or its stream has no leader right now.
    #[error("no stream answered for this subject (none holds it, or it has no leader now)")]
    NoStream,
    /// The stream already held a message with this `Nats-Msg-Id` and stored
    /// nothing new: read back what is there before answering.
    #[error("a message with this id was already stored")]
    Duplicate,
}

#[derive(Deserialize)]
struct Ack {
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    duplicate: bool,
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

/// Publishes and waits for the stream's acknowledgement; returns the
/// stored sequence (for a deduplicated message, the sequence of the one
/// stored before).
pub async fn request(
    nats: &async_nats::Client,
    subject: String,
    headers: HeaderMap,
    payload: Vec<u8>,
) -> Result<u64, AppendError> {
    send(nats, subject, headers, payload)
        .await
        .map(|(seq, _)| seq)
}

/// Like [`request`], but a deduplicated message is
/// [`AppendError::Duplicate`]: the caller wanted a new message stored.
pub async fn request_new(
    nats: &async_nats::Client,
    subject: String,
    headers: HeaderMap,
    payload: Vec<u8>,
) -> Result<u64, AppendError> {
    match send(nats, subject, headers, payload).await? {
        (_, true) => Err(AppendError::Duplicate),
        (seq, false) => Ok(seq),
    }
}

/// The stored sequence, and whether the stream called it a duplicate.
async fn send(
    nats: &async_nats::Client,
    subject: String,
    headers: HeaderMap,
    payload: Vec<u8>,
) -> Result<(u64, bool), AppendError> {
    let req = Request::new()
        .headers(headers)
        .payload(Bytes::from(payload))
        .timeout(Some(ACK_TIMEOUT));
    let msg = match nats.send_request(subject, req).await {
        Ok(m) => m,
        Err(e) if e.kind() == async_nats::RequestErrorKind::TimedOut => {
            return Err(AppendError::Unknown)
        }
        Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
            return Err(AppendError::NoStream)
        }
        Err(e) => return Err(AppendError::Unavailable(e.to_string())),
    };
    let ack: Ack = serde_json::from_slice(&msg.payload)
        .map_err(|e| AppendError::Unavailable(format!("unreadable publish ack: {e}")))?;
    match ack.error {
        None => Ok((ack.seq, ack.duplicate)),
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
