//! The delivery record every notifier shares: a JetStream KV bucket with one
//! key per (event, channel).
//!
//! A notifier claims a key before it delivers, by creating it (a write
//! that only succeeds when the key is absent), and marks it delivered
//! after. So however many notifiers handle the same event (a redelivery
//! after a crash, two notifiers racing), one of them delivers and the
//! others see the claim:
//! - `delivered` or `failed`: nothing to do;
//! - `claimed`, and renewed within [`Deliveries::ttl`]: someone is on it,
//!   come back later (the event is handed back to the consumer);
//! - `claimed`, and older than that: its notifier died mid-delivery; the
//!   claim is taken over with a compare-and-set on its revision, so only
//!   one notifier takes it.
//!
//! The one window left is a notifier that delivered and died before it
//! could mark the key: its claim goes stale and the channel may be told
//! twice. Records expire after [`RECORD_FOR`], long after an event can be
//! delivered again.

use std::time::Duration;

use async_nats::jetstream::kv::{CreateErrorKind, Store};
use serde::{Deserialize, Serialize};

use moira_protocol::time::now_ms;
use moira_protocol::wire::streams::notify_deliveries_bucket_config;
use moira_protocol::wire::NOTIFY_DELIVERIES_BUCKET;

/// How long a delivery record is kept.
pub const RECORD_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Claimed,
    Delivered,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    state: State,
    /// The notifier that wrote it.
    by: String,
    /// When, in ms since the epoch (a claim's last renewal).
    at: u64,
}

/// What a claim found.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// Ours to deliver; the key's revision, for renewing and finishing.
    Mine(u64),
    /// Delivered (or given up on) already.
    Done,
    /// Another notifier is delivering it now.
    Busy,
}

pub struct Deliveries {
    kv: Store,
    /// This notifier's name in the records.
    me: String,
    /// A claim not renewed for this long is taken to be abandoned.
    pub ttl: Duration,
}

/// A KV key from an event id (`MOIRA_GATES:42`) and a channel name. Bytes
/// a key may not hold are written as `=hh`.
pub fn key(event: &str, channel: &str) -> String {
    let mut out = String::new();
    for (i, part) in [event, channel].into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        for b in part.bytes() {
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                out.push(b as char);
            } else {
                out.push_str(&format!("={b:02x}"));
            }
        }
    }
    out
}

impl Deliveries {
    /// Opens the bucket, creating it when this notifier starts first.
    pub async fn open(
        js: &async_nats::jetstream::Context,
        replicas: usize,
        me: String,
        ttl: Duration,
    ) -> Result<Deliveries, String> {
        // A cluster still forming answers "not yet" for a while.
        let kv = moira_client::streams::patiently("opening the delivery record", || async {
            match js.get_key_value(NOTIFY_DELIVERIES_BUCKET).await {
                Ok(kv) => Ok(kv),
                Err(_) => js
                    .create_key_value(notify_deliveries_bucket_config(replicas, RECORD_FOR))
                    .await
                    .map_err(|e| e.to_string()),
            }
        })
        .await
        .map_err(|e| {
            format!("cannot create the delivery record {NOTIFY_DELIVERIES_BUCKET}: {e}")
        })?;
        Ok(Deliveries { kv, me, ttl })
    }

    fn record(&self, state: State) -> bytes::Bytes {
        let r = Record {
            state,
            by: self.me.clone(),
            at: now_ms(),
        };
        serde_json::to_vec(&r).unwrap_or_default().into()
    }

    /// Claims `key` for delivery.
    pub async fn claim(&self, key: &str) -> Result<Claim, String> {
        match self.kv.create(key, self.record(State::Claimed)).await {
            Ok(rev) => return Ok(Claim::Mine(rev)),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("claiming {key}: {e}")),
        }
        let Some(entry) = self
            .kv
            .entry(key)
            .await
            .map_err(|e| format!("reading {key}: {e}"))?
        else {
            // Expired or removed between the two calls: try once more.
            return match self.kv.create(key, self.record(State::Claimed)).await {
                Ok(rev) => Ok(Claim::Mine(rev)),
                Err(_) => Ok(Claim::Busy),
            };
        };
        let Ok(found) = serde_json::from_slice::<Record>(&entry.value) else {
            // Not ours to judge: leave it alone.
            return Ok(Claim::Done);
        };
        match found.state {
            State::Delivered | State::Failed => Ok(Claim::Done),
            State::Claimed if now_ms().saturating_sub(found.at) < self.ttl.as_millis() as u64 => {
                Ok(Claim::Busy)
            }
            State::Claimed => {
                // Abandoned: take it over, unless another notifier does first.
                match self
                    .kv
                    .update(key, self.record(State::Claimed), entry.revision)
                    .await
                {
                    Ok(rev) => {
                        tracing::warn!(key, from = found.by, "took over an abandoned delivery");
                        Ok(Claim::Mine(rev))
                    }
                    Err(_) => Ok(Claim::Busy),
                }
            }
        }
    }

    /// Renews a claim before another attempt; the new revision.
    pub async fn renew(&self, key: &str, revision: u64) -> Result<u64, String> {
        self.kv
            .update(key, self.record(State::Claimed), revision)
            .await
            .map_err(|e| format!("renewing the claim on {key}: {e}"))
    }

    /// Records the end of a delivery, trying a few times.
    pub async fn finish(&self, key: &str, revision: u64, state: State) -> Result<(), String> {
        let mut last = String::new();
        for attempt in 0..5u32 {
            match self.kv.update(key, self.record(state), revision).await {
                Ok(_) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
            // A lost ack: the write may be there already.
            if let Ok(Some(entry)) = self.kv.entry(key).await {
                if let Ok(r) = serde_json::from_slice::<Record>(&entry.value) {
                    if r.by == self.me && r.state == state {
                        return Ok(());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
        }
        Err(format!("recording the delivery {key}: {last}"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_hold_only_what_a_kv_key_may() {
        assert_eq!(super::key("MOIRA_GATES:42", "ops"), "MOIRA_GATES=3a42.ops");
        assert_eq!(super::key("a.b", "x y"), "a=2eb.x=20y");
    }
}
