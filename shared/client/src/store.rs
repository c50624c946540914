//! Reading gates straight from the `MOIRA_GATES` stream. Reads need no
//! gate-keeper: any process can show, list or follow gates.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::consumer::{push, DeliverPolicy};
use async_nats::HeaderMap;
use futures_util::StreamExt;

use moira_protocol::event::Decoded;
use moira_protocol::gate::{apply, apply_owned};
use moira_protocol::subjects::{
    gate_events, GATES_STREAM, GATE_EVENTS_ALL, HDR_LAST_SEQUENCE, HDR_SEQUENCE,
};
use moira_protocol::{Envelope, GateId, GateState, GateStatus, GateView};

use crate::reads::ReadMux;
use crate::{nats_err, Client, ClientError};

const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Events fetched per Direct Get request; a gate rarely has more.
const BATCH: usize = 256;

/// One stored event and where it sits in the stream.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub seq: u64,
    pub gate_id: GateId,
    pub event: Decoded,
    /// The hex SHA-256 of the stored bytes (what the next event's `prev`
    /// names); set by `read_events`, not on the listing and live paths.
    pub digest: Option<String>,
}

/// A gate's folded state and the stream sequence of its last event.
#[derive(Debug, Clone)]
pub struct GateRecord {
    pub state: GateState,
    pub last_seq: u64,
}

/// What `list` returns.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// `None` means every status.
    pub status: Option<GateStatus>,
    pub run_id: Option<String>,
}

/// One message as the stream holds it.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub seq: u64,
    /// When the broker stored it (ms), from `Nats-Time-Stamp`.
    pub stored_at: Option<u64>,
    pub payload: bytes::Bytes,
}

/// The header a Direct Get reply carries the storing time in.
const HDR_TIME_STAMP: &str = "Nats-Time-Stamp";

fn header_u64(h: Option<&HeaderMap>, name: &str) -> Option<u64> {
    h?.get(name)?.as_str().parse().ok()
}

/// Decodes a stored or republished message; logs and skips undecodable ones.
pub(crate) fn decode_stored(subject: &str, seq: u64, payload: &[u8]) -> Option<StoredEvent> {
    let gate_id = moira_protocol::subjects::gate_id_from_subject(subject)?;
    match Envelope::decode(payload) {
        Ok(Decoded::Unknown { kind, schema }) => {
            tracing::debug!(%gate_id, seq, kind, schema, "skipping an event kind this build does not know");
            Some(StoredEvent {
                seq,
                gate_id,
                event: Decoded::Unknown { kind, schema },
                digest: None,
            })
        }
        Ok(event) => Some(StoredEvent {
            seq,
            gate_id,
            event,
            digest: None,
        }),
        Err(e) => {
            tracing::warn!(%gate_id, seq, "skipping an undecodable event: {e}");
            None
        }
    }
}

impl Client {
    /// Every event of one gate, in order, and the subject's last sequence
    /// (0 when the gate has no events). One Direct Get batch request.
    pub async fn read_events(&self, id: GateId) -> Result<(Vec<StoredEvent>, u64), ClientError> {
        let subject = gate_events(&id);
        let (raw, last_seq) = self.read_subject(GATES_STREAM, &subject).await?;
        let events = raw
            .iter()
            .filter_map(|(seq, payload)| {
                decode_stored(&subject, *seq, payload).map(|mut e| {
                    e.digest = Some(moira_protocol::statement::sha256_hex(payload));
                    e
                })
            })
            .collect();
        Ok((events, last_seq))
    }

    /// Every message stored on one subject of a stream, in order, with its
    /// sequence, and the subject's last sequence (0 when empty). One Direct
    /// Get batch request per 256 messages.
    pub async fn read_subject(
        &self,
        stream: &str,
        subject: &str,
    ) -> Result<(Vec<(u64, bytes::Bytes)>, u64), ClientError> {
        let (stored, last) = self.read_subject_timed(stream, subject).await?;
        Ok((
            stored.into_iter().map(|m| (m.seq, m.payload)).collect(),
            last,
        ))
    }

    /// [`Client::read_subject`], with the time the broker stored each
    /// message (which no writer can choose).
    pub async fn read_subject_timed(
        &self,
        stream: &str,
        subject: &str,
    ) -> Result<(Vec<StoredMessage>, u64), ClientError> {
        let api = format!("$JS.API.DIRECT.GET.{stream}");
        let mut out = Vec::new();
        let mut last_seq = 0;
        let mut from = 1u64;
        loop {
            let mux = self
                .inner
                .reads
                .get_or_try_init(|| ReadMux::start(&self.nats))
                .await?;
            let (inbox, mut replies) = mux.register();
            let req = serde_json::json!({ "seq": from, "next_by_subj": subject, "batch": BATCH });
            self.nats
                .publish_with_reply(api.clone(), inbox, req.to_string().into())
                .await
                .map_err(nats_err)?;
            let mut got = 0;
            let mut more = false;
            loop {
                let msg = tokio::time::timeout(READ_TIMEOUT, replies.rx.recv())
                    .await
                    .map_err(|_| {
                        ClientError::Nats(format!(
                            "no answer from the stream within {READ_TIMEOUT:?}"
                        ))
                    })?
                    .ok_or_else(|| ClientError::Nats("the read subscription closed".into()))?;
                if let Some(status) = msg.status {
                    match status.as_u16() {
                        // End of batch: more may follow past it.
                        204 => {
                            more = header_u64(msg.headers.as_ref(), "Nats-Num-Pending")
                                .is_some_and(|n| n > 0)
                                && got == BATCH;
                            break;
                        }
                        404 => break,
                        503 => return Err(ClientError::NoStream),
                        other => {
                            return Err(ClientError::Nats(format!(
                                "direct get failed: {other} {}",
                                msg.description.unwrap_or_default()
                            )))
                        }
                    }
                }
                got += 1;
                let seq = header_u64(msg.headers.as_ref(), HDR_SEQUENCE).unwrap_or(0);
                last_seq = last_seq.max(seq);
                from = seq + 1;
                let stored_at = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(HDR_TIME_STAMP))
                    .and_then(|v| moira_protocol::time::parse_rfc3339_ms(v.as_str()));
                out.push(StoredMessage {
                    seq,
                    stored_at,
                    payload: msg.payload,
                });
            }
            if !more {
                return Ok((out, last_seq));
            }
        }
    }

    /// One gate's folded state, or `None` if it was never opened.
    pub async fn read_gate(&self, id: GateId) -> Result<Option<GateRecord>, ClientError> {
        let (events, last_seq) = self.read_events(id).await?;
        let mut state = None;
        for e in &events {
            if let Decoded::Event(env) = &e.event {
                apply(&mut state, env);
            }
        }
        Ok(state.map(|state| GateRecord { state, last_seq }))
    }

    /// Every gate that matches the filter, oldest first. Reads all gate
    /// events once through an ordered consumer.
    /// An ordered consumer over every gate event subject.
    async fn gate_events_consumer(
        &self,
        deliver_policy: DeliverPolicy,
    ) -> Result<async_nats::jetstream::consumer::Consumer<push::OrderedConfig>, ClientError> {
        let stream = self
            .js
            .get_stream(GATES_STREAM)
            .await
            .map_err(|_| ClientError::NoStream)?;
        stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.nats.new_inbox(),
                filter_subject: GATE_EVENTS_ALL.to_string(),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(nats_err)
    }

    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<GateView>, ClientError> {
        let consumer = self.gate_events_consumer(DeliverPolicy::All).await?;
        let mut gates: HashMap<GateId, Option<GateState>> = HashMap::new();
        if consumer.cached_info().num_pending > 0 {
            let mut messages = consumer.messages().await.map_err(nats_err)?;
            while let Some(msg) = messages.next().await {
                let msg = msg.map_err(nats_err)?;
                let info = msg.info().map_err(nats_err)?;
                let (seq, pending) = (info.stream_sequence, info.pending);
                if let Some(ev) = decode_stored(&msg.subject, seq, &msg.payload) {
                    if let Decoded::Event(env) = ev.event {
                        apply_owned(gates.entry(ev.gate_id).or_default(), env);
                    }
                }
                if pending == 0 {
                    break;
                }
            }
        }
        let mut out: Vec<GateState> = gates
            .into_values()
            .flatten()
            .filter(|g| filter.status.is_none_or(|s| g.status == s))
            .filter(|g| {
                filter
                    .run_id
                    .as_ref()
                    .is_none_or(|r| g.spec.run_id.as_ref() == Some(r))
            })
            .collect();
        out.sort_by_key(|g| (g.opened_at, g.id));
        Ok(out.into_iter().map(GateView::from).collect())
    }

    /// A feed of gate events stored from now on (or from the start with
    /// `from_start`). Survives reconnects: it reads the stream, not the
    /// core live feed.
    pub async fn watch(
        &self,
        from_start: bool,
    ) -> Result<impl futures_util::Stream<Item = Result<StoredEvent, ClientError>>, ClientError>
    {
        let policy = if from_start {
            DeliverPolicy::All
        } else {
            DeliverPolicy::New
        };
        let consumer = self.gate_events_consumer(policy).await?;
        let messages = consumer.messages().await.map_err(nats_err)?;
        Ok(messages.filter_map(|msg| async move {
            let msg = match msg {
                Ok(m) => m,
                Err(e) => return Some(Err(nats_err(e))),
            };
            let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
            decode_stored(&msg.subject, seq, &msg.payload).map(Ok)
        }))
    }
}

pub(crate) fn live_seqs(headers: Option<&HeaderMap>) -> (Option<u64>, Option<u64>) {
    (
        header_u64(headers, HDR_SEQUENCE),
        header_u64(headers, HDR_LAST_SEQUENCE),
    )
}
