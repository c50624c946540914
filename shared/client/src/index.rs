//! The read model (`MOIRA_INDEX`): one summary message per gate and per
//! run on `moira.idx.<kind>.<status>.<id>`, so a list by status reads only
//! what is in that status. It is derived from the event streams and never
//! trusted over them:
//!
//! - every entry names the sequence of the last event it reflects, and a
//!   write is checked against all of its gate's (or run's) entries at once
//!   (`Nats-Expected-Last-Subject-Sequence-Subject`), so an older summary
//!   never replaces a newer one, whichever projector writes last;
//! - a list first checks that the projector has taken in every event
//!   stored before the list began, and folds the events instead when no
//!   projector runs or it stays behind;
//! - `moira admin reindex` compares every entry with the fold of the
//!   events and repairs what differs.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::HeaderMap;
use bytes::Bytes;
use serde::Deserialize;

use moira_protocol::wire::{
    direct_get, index_entries_in, index_entries_of, index_entry, index_parts,
    HDR_EXPECTED_LAST_SUBJECT_SEQ, HDR_EXPECTED_LAST_SUBJECT_SEQ_SUBJECT, HDR_NUM_PENDING,
    HDR_SEQUENCE, INDEX_STREAM,
};

use crate::reads::ReadMux;
use crate::{nats_err, Client, ClientError};

/// How long a list waits for the projector to take in the events stored
/// before it began, before it folds the events itself.
pub const CATCH_UP: Duration = Duration::from_secs(3);
/// Direct Get answers at most this many subjects in one multi-last read;
/// a larger status is read through an ordered consumer.
const MULTI_LAST_MAX: usize = 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// One stored index entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its sequence in `MOIRA_INDEX`.
    pub index_seq: u64,
    pub status: String,
    pub id: String,
    /// The event sequence it reflects; 0 in the entries of one status,
    /// which are read without decoding (a status holds one entry per id,
    /// so nothing needs comparing).
    pub last_seq: u64,
    pub body: Bytes,
}

#[derive(Deserialize)]
struct Reflects {
    last_seq: u64,
}

fn reflects(body: &[u8]) -> u64 {
    serde_json::from_slice::<Reflects>(body)
        .map(|r| r.last_seq)
        .unwrap_or(0)
}

fn entry(subject: &str, index_seq: u64, body: Bytes) -> Option<Entry> {
    let mut e = entry_as_stored(subject, index_seq, body)?;
    e.last_seq = reflects(&e.body);
    Some(e)
}

fn entry_as_stored(subject: &str, index_seq: u64, body: Bytes) -> Option<Entry> {
    let (_, status, id) = index_parts(subject)?;
    Some(Entry {
        index_seq,
        status: status.to_string(),
        id: id.to_string(),
        last_seq: 0,
        body,
    })
}

/// What became of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// Stored at index sequence `seq`. `replaced` names the index sequence
    /// of the entry it was checked against (0: there was none), which is
    /// `expected` unless another write came first.
    Stored { seq: u64, replaced: u64 },
    /// An entry reflecting this event or a later one was there already.
    Newer,
}

/// Whether the projector has taken in the events stored before now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    CaughtUp,
    /// No projector consumer exists: nothing maintains the read model.
    NoProjector,
    /// Still this many events behind after [`CATCH_UP`].
    Behind(u64),
}

impl Client {
    /// The newest entry of `kind` `id`, read from the index stream's
    /// leader; `None` when it has none (or there is no index stream).
    pub async fn index_current(&self, kind: &str, id: &str) -> Result<Option<Entry>, ClientError> {
        let s = self
            .js
            .get_stream_no_info(INDEX_STREAM)
            .await
            .map_err(nats_err)?;
        match s
            .get_last_raw_message_by_subject(&index_entries_of(kind, id))
            .await
        {
            Ok(m) => Ok(entry(&m.subject, m.sequence, m.payload)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(nats_err(e)),
        }
    }

    /// Stores `body`, the summary of `kind` `id` in `status` as of event
    /// `last_seq`, if the newest entry of that id is still `expected` (its
    /// index sequence, 0 for none). When another write came first, the
    /// newest entry is read: a newer one is kept, an older one replaced.
    /// The caller then tidies other statuses' entries of the id away
    /// ([`Client::index_tidy`]) if the status may have changed.
    pub async fn index_put(
        &self,
        kind: &str,
        id: &str,
        status: &str,
        body: Bytes,
        last_seq: u64,
        mut expected: u64,
    ) -> Result<Put, ClientError> {
        let subject = index_entry(kind, status, id);
        let all = index_entries_of(kind, id);
        // Each retry follows another writer's success, so this ends.
        for _ in 0..16 {
            let mut h = HeaderMap::new();
            h.insert(HDR_EXPECTED_LAST_SUBJECT_SEQ, expected.to_string().as_str());
            h.insert(HDR_EXPECTED_LAST_SUBJECT_SEQ_SUBJECT, all.as_str());
            let sent = self
                .js
                .publish_with_headers(subject.clone(), h, body.clone())
                .await
                .map_err(nats_err)?
                .await;
            match sent {
                Ok(ack) => {
                    return Ok(Put::Stored {
                        seq: ack.sequence,
                        replaced: expected,
                    })
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    match self.index_current(kind, id).await? {
                        Some(cur) if cur.last_seq >= last_seq => return Ok(Put::Newer),
                        Some(cur) => expected = cur.index_seq,
                        None => expected = 0,
                    }
                }
                Err(e) => return Err(nats_err(e)),
            }
        }
        Err(ClientError::Nats(format!(
            "the index entry of {kind} {id} kept changing under this write"
        )))
    }

    /// Removes every entry of `kind` `id` but the newest (a status it has
    /// left).
    pub async fn index_tidy(&self, kind: &str, id: &str) -> Result<(), ClientError> {
        let s = self
            .js
            .get_stream_no_info(INDEX_STREAM)
            .await
            .map_err(nats_err)?;
        s.purge()
            .filter(index_entries_of(kind, id))
            .keep(1)
            .await
            .map_err(nats_err)?;
        Ok(())
    }

    /// Removes every entry of `kind` `id` (it has no events).
    pub async fn index_remove(&self, kind: &str, id: &str) -> Result<(), ClientError> {
        let s = self
            .js
            .get_stream_no_info(INDEX_STREAM)
            .await
            .map_err(nats_err)?;
        s.purge()
            .filter(index_entries_of(kind, id))
            .await
            .map_err(nats_err)?;
        Ok(())
    }

    /// Waits (up to [`CATCH_UP`]) until the projector consumer `consumer`
    /// on `events_stream` has acknowledged every event on `events` stored
    /// before this call.
    pub async fn index_freshness(
        &self,
        events_stream: &str,
        events: &str,
        consumer: &str,
    ) -> Result<Freshness, ClientError> {
        use async_nats::jetstream::context::ConsumerInfoErrorKind;
        let s = self
            .js
            .get_stream_no_info(events_stream)
            .await
            .map_err(nats_err)?;
        let mut info = match s.consumer_info(consumer).await {
            Ok(i) => i,
            Err(e)
                if matches!(
                    e.kind(),
                    ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound
                ) =>
            {
                return Ok(Freshness::NoProjector)
            }
            Err(e) => return Err(nats_err(e)),
        };
        let last = match s.get_last_raw_message_by_subject(events).await {
            Ok(m) => m.sequence,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => 0,
            Err(e) => return Err(nats_err(e)),
        };
        let deadline = tokio::time::Instant::now() + CATCH_UP;
        let mut pause = Duration::from_millis(2);
        loop {
            let done = info.ack_floor.stream_sequence >= last
                || (info.num_pending == 0 && info.num_ack_pending == 0);
            if done {
                return Ok(Freshness::CaughtUp);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Freshness::Behind(
                    info.num_pending + info.num_ack_pending as u64,
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(10));
            info = s.consumer_info(consumer).await.map_err(nats_err)?;
        }
    }

    /// Every entry of `kind` in `status` (every status with `None`);
    /// `None` when there is no index stream. A status of at most 1,024
    /// entries is one Direct Get request that reads only those; a larger
    /// one is read through an ordered consumer.
    pub async fn index_entries(
        &self,
        kind: &str,
        status: Option<&str>,
    ) -> Result<Option<Vec<Entry>>, ClientError> {
        let filter = index_entries_in(kind, status);
        if status.is_some() {
            match self.multi_last(&filter).await? {
                MultiLast::Got(e) => return Ok(Some(e)),
                MultiLast::NoStream => return Ok(None),
                MultiLast::TooMany => {}
            }
        }
        let mut out = Vec::new();
        let make = if status.is_some() {
            entry_as_stored
        } else {
            entry
        };
        // Each subject holds one message, so its last is all of it.
        let last = async_nats::jetstream::consumer::DeliverPolicy::LastPerSubject;
        let found = self
            .read_stored_from(INDEX_STREAM, &filter, last, |seq, msg| {
                if let Some(e) = make(&msg.subject, seq, msg.payload.clone()) {
                    out.push(e);
                }
            })
            .await?;
        Ok(found.then_some(out))
    }

    /// The newest message of each subject matching `filter` in the index.
    async fn multi_last(&self, filter: &str) -> Result<MultiLast, ClientError> {
        let mux = self
            .inner
            .reads
            .get_or_try_init(|| ReadMux::start(&self.nats))
            .await?;
        let (inbox, mut replies) = mux.register();
        let req = serde_json::json!({ "multi_last": [filter], "batch": MULTI_LAST_MAX });
        self.nats
            .publish_with_reply(direct_get(INDEX_STREAM), inbox, req.to_string().into())
            .await
            .map_err(nats_err)?;
        let mut out = Vec::new();
        loop {
            let msg = tokio::time::timeout(READ_TIMEOUT, replies.rx.recv())
                .await
                .map_err(|_| {
                    ClientError::Nats(format!(
                        "no answer from {INDEX_STREAM} within {READ_TIMEOUT:?}"
                    ))
                })?
                .ok_or_else(|| ClientError::Nats("the read subscription closed".into()))?;
            if let Some(status) = msg.status {
                return Ok(match status.as_u16() {
                    204 => {
                        let more = msg
                            .headers
                            .as_ref()
                            .and_then(|h| h.get(HDR_NUM_PENDING))
                            .and_then(|v| v.as_str().parse::<u64>().ok())
                            .unwrap_or(0);
                        if more > 0 {
                            MultiLast::TooMany
                        } else {
                            MultiLast::Got(out)
                        }
                    }
                    404 => MultiLast::Got(out),
                    413 => MultiLast::TooMany,
                    503 => MultiLast::NoStream,
                    other => {
                        return Err(ClientError::Nats(format!(
                            "reading {INDEX_STREAM} failed: {other} {}",
                            msg.description.unwrap_or_default()
                        )))
                    }
                });
            }
            let h = msg.headers.as_ref();
            let seq = h
                .and_then(|h| h.get(HDR_SEQUENCE))
                .and_then(|v| v.as_str().parse().ok())
                .unwrap_or(0);
            let subject = h
                .and_then(|h| h.get("Nats-Subject"))
                .map(|v| v.as_str().to_string())
                .unwrap_or_default();
            if let Some(e) = entry_as_stored(&subject, seq, msg.payload) {
                out.push(e);
            }
        }
    }
}

enum MultiLast {
    Got(Vec<Entry>),
    TooMany,
    NoStream,
}

/// Keeps one entry per id, the one reflecting the latest event. Needed for
/// entries of every status (`index_entries(kind, None)`): two can coexist
/// for a moment while a projector moves an id between statuses.
pub fn newest_per_id(entries: Vec<Entry>) -> Vec<Entry> {
    let mut by_id: HashMap<String, Entry> = HashMap::with_capacity(entries.len());
    for e in entries {
        match by_id.get(&e.id) {
            Some(old) if (old.last_seq, old.index_seq) >= (e.last_seq, e.index_seq) => {}
            _ => {
                by_id.insert(e.id.clone(), e);
            }
        }
    }
    by_id.into_values().collect()
}
