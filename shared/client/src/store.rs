//! Reading gates straight from the `MOIRA_GATES` stream. Reads need no
//! gate-keeper: any process can show, list or follow gates.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::HeaderMap;
use futures_util::StreamExt;

use moira_protocol::event::Decoded;
use moira_protocol::gate::{apply, apply_owned};
use moira_protocol::view::GateSummary;
use moira_protocol::wire::{
    direct_get, gate_events, GATES_STREAM, GATE_EVENTS_ALL, HDR_LAST_SEQUENCE, HDR_NUM_PENDING,
    HDR_SEQUENCE, HDR_TIME_STAMP, INDEX_GATE, INDEX_GATES_CONSUMER,
};
use moira_protocol::{Envelope, GateId, GateState, GateStatus};

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

/// Folds stored gate events, skipping kinds this build does not know;
/// `None` if there is no open among them.
pub fn fold_stored<'a>(events: impl IntoIterator<Item = &'a StoredEvent>) -> Option<GateState> {
    let mut state = None;
    for e in events {
        if let Decoded::Event(env) = &e.event {
            apply(&mut state, env);
        }
    }
    state
}

/// Folds a gate's events; `None` if it was never opened.
fn fold_gate((events, last_seq): (Vec<StoredEvent>, u64)) -> Option<GateRecord> {
    fold_stored(&events).map(|state| GateRecord { state, last_seq })
}

fn header_u64(h: Option<&HeaderMap>, name: &str) -> Option<u64> {
    h?.get(name)?.as_str().parse().ok()
}

/// Decodes a stored or republished message; logs and skips undecodable ones.
pub(crate) fn decode_stored(subject: &str, seq: u64, payload: &[u8]) -> Option<StoredEvent> {
    let gate_id = moira_protocol::wire::gate_id_from_subject(subject)?;
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
        self.read_events_as(id, false).await
    }

    /// [`Client::read_events`], at least as new as the stream leader (see
    /// [`Client::read_subject_fresh`]): for reads that drive an action.
    pub async fn read_events_fresh(
        &self,
        id: GateId,
    ) -> Result<(Vec<StoredEvent>, u64), ClientError> {
        self.read_events_as(id, true).await
    }

    async fn read_events_as(
        &self,
        id: GateId,
        fresh: bool,
    ) -> Result<(Vec<StoredEvent>, u64), ClientError> {
        let subject = gate_events(&id);
        let (raw, last_seq) = if fresh {
            self.read_subject_fresh(GATES_STREAM, &subject).await?
        } else {
            self.read_subject_timed(GATES_STREAM, &subject).await?
        };
        let events = raw
            .iter()
            .filter_map(|m| {
                decode_stored(&subject, m.seq, &m.payload).map(|mut e| {
                    e.digest = Some(moira_protocol::statement::sha256_hex(&m.payload));
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

    /// [`Client::read_subject_timed`], at least as new as the stream
    /// leader: for reads whose result drives an action. On a replicated
    /// stream any replica may answer a Direct Get, and one that lags can
    /// miss the newest messages; the leader then names the subject's last
    /// sequence (one request), and whatever the replica lacked is read from
    /// the leader.
    pub async fn read_subject_fresh(
        &self,
        stream: &str,
        subject: &str,
    ) -> Result<(Vec<StoredMessage>, u64), ClientError> {
        let (mut out, last) = self.read_subject_timed(stream, subject).await?;
        let leader = self.leader_tail(stream, subject, last, &mut out).await?;
        Ok((out, last.max(leader)))
    }

    /// Asks the stream leader for the subject's last sequence and reads,
    /// from the leader, every message on it after `after` into `out`.
    /// Returns the leader's last sequence (0 for an empty subject).
    async fn leader_tail(
        &self,
        stream: &str,
        subject: &str,
        after: u64,
        out: &mut Vec<StoredMessage>,
    ) -> Result<u64, ClientError> {
        use async_nats::jetstream::stream::{LastRawMessageErrorKind, RawMessageErrorKind};
        let s = self.js.get_stream_no_info(stream).await.map_err(nats_err)?;
        let last = match s.get_last_raw_message_by_subject(subject).await {
            Ok(m) => m.sequence,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => 0,
            Err(e) => return Err(nats_err(e)),
        };
        let mut at = after;
        while at < last {
            let m = match s
                .raw_message_builder()
                .sequence(at + 1)
                .next_by_subject(subject.to_string())
                .send()
                .await
            {
                Ok(m) => m,
                // Removed meanwhile (a purge): nothing more to read.
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => break,
                Err(e) => return Err(nats_err(e)),
            };
            if m.sequence <= at {
                break;
            }
            tracing::debug!(
                stream,
                subject,
                seq = m.sequence,
                "read from the leader: the answering replica lagged"
            );
            at = m.sequence;
            out.push(StoredMessage {
                seq: m.sequence,
                stored_at: u64::try_from(m.time.unix_timestamp_nanos() / 1_000_000).ok(),
                payload: m.payload,
            });
        }
        Ok(last)
    }

    /// [`Client::read_subject`], with the time the broker stored each
    /// message (which no writer can choose).
    pub async fn read_subject_timed(
        &self,
        stream: &str,
        subject: &str,
    ) -> Result<(Vec<StoredMessage>, u64), ClientError> {
        let api = direct_get(stream);
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
                        // End of batch: more may follow past it, even when
                        // the server ended the batch early.
                        204 => {
                            let pending = header_u64(msg.headers.as_ref(), HDR_NUM_PENDING)
                                .unwrap_or(0);
                            if pending > 0 && got == 0 {
                                return Err(ClientError::Nats(format!(
                                    "the stream ended a read of {subject} with {pending} messages left and none sent"
                                )));
                            }
                            more = pending > 0;
                            break;
                        }
                        404 => break,
                        // No responders: no stream, or no replica of it
                        // reachable from this server.
                        503 => {
                            return Err(match self.js.get_stream(stream).await {
                                Ok(_) => ClientError::Nats(format!(
                                    "no replica of {stream} answered; the server may be cut off from the rest of its cluster"
                                )),
                                Err(_) => ClientError::NoStream,
                            })
                        }
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
        Ok(fold_gate(self.read_events(id).await?))
    }

    /// [`Client::read_gate`], at least as new as the stream leader.
    pub async fn read_gate_fresh(&self, id: GateId) -> Result<Option<GateRecord>, ClientError> {
        Ok(fold_gate(self.read_events_fresh(id).await?))
    }

    /// Every gate that matches the filter, oldest first, from the read
    /// model: only the gates in the asked status are read. Folds the
    /// events instead ([`Client::list_from_events`]) when no projector
    /// maintains the model or it is behind by more than [`crate::index::CATCH_UP`].
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<GateSummary>, ClientError> {
        use crate::index::Freshness;
        match self
            .index_freshness(GATES_STREAM, GATE_EVENTS_ALL, INDEX_GATES_CONSUMER)
            .await?
        {
            Freshness::CaughtUp => {
                if let Some(list) = self.list_indexed(filter).await? {
                    return Ok(list);
                }
                tracing::debug!("no read model stream; folding the gate events");
            }
            Freshness::NoProjector => {
                tracing::debug!("no gate-keeper maintains the read model; folding the gate events")
            }
            Freshness::Behind(n) => tracing::warn!(
                behind = n,
                "the read model is behind the gate events (are the gate-keepers running?); folding the events instead"
            ),
        }
        self.list_from_events(filter).await
    }

    /// [`Client::list`] from the read model as it is, without waiting for
    /// it to catch up; `None` when there is no read model stream.
    pub async fn list_indexed(
        &self,
        filter: &ListFilter,
    ) -> Result<Option<Vec<GateSummary>>, ClientError> {
        let status = filter.status.map(|s| s.as_str());
        let Some(entries) = self.index_entries(INDEX_GATE, status).await? else {
            return Ok(None);
        };
        // One status holds one entry per gate; all of them may hold two.
        let entries = match status {
            Some(_) => entries,
            None => crate::index::newest_per_id(entries),
        };
        let mut out: Vec<GateSummary> = entries
            .into_iter()
            .filter_map(|e| match serde_json::from_slice::<GateSummary>(&e.body) {
                Ok(g) => Some(g),
                Err(err) => {
                    tracing::warn!(id = e.id, "skipping an undecodable read model entry: {err}");
                    None
                }
            })
            .filter(|g| filter.status.is_none_or(|s| g.status == s))
            .filter(|g| {
                filter
                    .run_id
                    .as_ref()
                    .is_none_or(|r| g.run_id.as_ref() == Some(r))
            })
            .collect();
        // Times are stored in one rfc3339 form, so they sort as text.
        out.sort_by(|a, b| (&a.opened_at, a.id).cmp(&(&b.opened_at, b.id)));
        Ok(Some(out))
    }

    /// Every gate that matches the filter, oldest first, by folding every
    /// gate event ever stored (the source of truth; `--from-events`).
    pub async fn list_from_events(
        &self,
        filter: &ListFilter,
    ) -> Result<Vec<GateSummary>, ClientError> {
        Ok(self
            .fold_all_gates()
            .await?
            .into_iter()
            .filter(|(g, _)| filter.status.is_none_or(|s| g.status == s))
            .filter(|(g, _)| {
                filter
                    .run_id
                    .as_ref()
                    .is_none_or(|r| g.spec.run_id.as_ref() == Some(r))
            })
            .map(|(g, seq)| GateSummary::of(&g, seq))
            .collect())
    }

    /// Every gate's folded state and the sequence of its last event,
    /// oldest first: one read of all gate events.
    pub async fn fold_all_gates(&self) -> Result<Vec<(GateState, u64)>, ClientError> {
        let mut gates: HashMap<GateId, (Option<GateState>, u64)> = HashMap::new();
        let found = self
            .read_stored(GATES_STREAM, GATE_EVENTS_ALL, |seq, msg| {
                if let Some(ev) = decode_stored(&msg.subject, seq, &msg.payload) {
                    let entry = gates.entry(ev.gate_id).or_default();
                    entry.1 = seq;
                    if let Decoded::Event(env) = ev.event {
                        apply_owned(&mut entry.0, env);
                    }
                }
            })
            .await?;
        if !found {
            return Err(ClientError::NoStream);
        }
        let mut out: Vec<(GateState, u64)> = gates
            .into_values()
            .filter_map(|(g, seq)| g.map(|g| (g, seq)))
            .collect();
        out.sort_by_key(|(g, _)| (g.opened_at, g.id));
        Ok(out)
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
        self.watch_with(policy).await
    }

    /// Gate events stored after sequence `seq` (a reconnecting follower's
    /// last one), then new ones as they come.
    pub async fn watch_after(
        &self,
        seq: u64,
    ) -> Result<impl futures_util::Stream<Item = Result<StoredEvent, ClientError>>, ClientError>
    {
        self.watch_with(DeliverPolicy::ByStartSequence {
            start_sequence: seq.saturating_add(1),
        })
        .await
    }

    async fn watch_with(
        &self,
        policy: DeliverPolicy,
    ) -> Result<impl futures_util::Stream<Item = Result<StoredEvent, ClientError>>, ClientError>
    {
        let consumer = self
            .ordered_consumer(GATES_STREAM, GATE_EVENTS_ALL, policy)
            .await?
            .ok_or(ClientError::NoStream)?;
        let messages = consumer.messages().await?;
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
