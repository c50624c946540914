//! Waiting on gates with no polling and no consumer per gate.
//!
//! One process keeps one core subscription on the live feed
//! (`moira.live.gate.ev.>`, which the stream republishes) and a map from gate
//! id to the followed state. Following a gate subscribes first and then reads
//! the gate from the stream to catch up. A republished event carries its
//! sequence and the previous sequence on the same subject; when the previous
//! one is not the last we know, something was missed (core messages are not
//! redelivered), so the gate is read again. After a reconnect every followed
//! gate is read again, since messages sent while disconnected are lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use futures_util::StreamExt;
use tokio::sync::{watch, Semaphore};

use moira_protocol::event::Decoded;
use moira_protocol::gate::apply;
use moira_protocol::wire::{gate_id_from_subject, LIVE_GATE_EVENTS_ALL};
use moira_protocol::{Envelope, GateId, GateState};

use crate::store::live_seqs;
use crate::{nats_err, Client, ClientError, Inner};

/// Gate re-reads in flight at once after a reconnect.
const REREAD_CONCURRENCY: usize = 64;

type Snapshot = Option<Arc<GateState>>;

struct Entry {
    state: Snapshot,
    last_seq: u64,
    tx: watch::Sender<Snapshot>,
    followers: usize,
}

pub(crate) struct Hub {
    /// A client handle without a hub of its own (no reference cycle).
    reader: Client,
    entries: Mutex<HashMap<GateId, Entry>>,
    rereads: Semaphore,
}

impl Hub {
    pub(crate) async fn start(client: Client) -> Result<Arc<Hub>, ClientError> {
        let reader = Client {
            nats: client.nats.clone(),
            js: client.js.clone(),
            inner: Arc::new(Inner {
                hub: Default::default(),
                reads: client.inner.reads.clone(),
                connects: client.inner.connects.clone(),
            }),
            signer: None,
        };
        let mut sub = reader
            .nats
            .subscribe(LIVE_GATE_EVENTS_ALL)
            .await
            .map_err(nats_err)?;
        let hub = Arc::new(Hub {
            reader,
            entries: Mutex::default(),
            rereads: Semaphore::new(REREAD_CONCURRENCY),
        });
        let weak: Weak<Hub> = Arc::downgrade(&hub);
        let mut connects = client.inner.connects.clone();
        connects.borrow_and_update();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    msg = sub.next() => {
                        let (Some(msg), Some(hub)) = (msg, weak.upgrade()) else { break };
                        hub.on_live(&msg);
                    }
                    changed = connects.changed() => {
                        let (Ok(()), Some(hub)) = (changed, weak.upgrade()) else { break };
                        tracing::info!("reconnected or fell behind; re-reading every followed gate");
                        let ids: Vec<GateId> = hub.lock().keys().copied().collect();
                        for id in ids {
                            hub.clone().spawn_reread(id);
                        }
                    }
                }
            }
        });
        Ok(hub)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<GateId, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn on_live(self: &Arc<Self>, msg: &async_nats::Message) {
        let Some(id) = gate_id_from_subject(&msg.subject) else {
            return;
        };
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(&id) else {
            return;
        };
        let (Some(seq), Some(prev)) = live_seqs(msg.headers.as_ref()) else {
            drop(entries);
            self.clone().spawn_reread(id);
            return;
        };
        if seq <= entry.last_seq {
            return;
        }
        if prev != entry.last_seq {
            drop(entries);
            self.clone().spawn_reread(id);
            return;
        }
        entry.last_seq = seq;
        match Envelope::decode(&msg.payload) {
            Ok(Decoded::Event(env)) => {
                let mut state = entry.state.as_deref().cloned();
                apply(&mut state, &env);
                entry.state = state.map(Arc::new);
                entry.tx.send_replace(entry.state.clone());
            }
            Ok(Decoded::Unknown { kind, .. }) => {
                tracing::debug!(%id, kind, "skipping unknown event kind")
            }
            Err(e) => tracing::warn!(%id, seq, "skipping undecodable live event: {e}"),
        }
    }

    fn spawn_reread(self: Arc<Self>, id: GateId) {
        tokio::spawn(async move {
            let _permit = self.rereads.acquire().await;
            if let Err(e) = self.reread(id).await {
                tracing::warn!(%id, "re-reading gate failed: {e}");
            }
        });
    }

    /// Reads the gate from the stream and keeps the result if it is newer
    /// than what the live feed gave us.
    async fn reread(&self, id: GateId) -> Result<(), ClientError> {
        if !self.lock().contains_key(&id) {
            return Ok(());
        }
        let record = self.reader.read_gate_fresh(id).await?;
        let mut entries = self.lock();
        if let (Some(entry), Some(rec)) = (entries.get_mut(&id), record) {
            if rec.last_seq > entry.last_seq || entry.state.is_none() {
                entry.last_seq = rec.last_seq;
                entry.state = Some(Arc::new(rec.state));
                entry.tx.send_replace(entry.state.clone());
            }
        }
        Ok(())
    }

    pub(crate) async fn follow(self: Arc<Self>, id: GateId) -> Result<Follower, ClientError> {
        let follower = self.clone().register(id);
        // Subscribed (the hub's subscription predates this read on the same
        // connection), so nothing stored after this read can be missed.
        self.reread(id).await?;
        if follower.rx.borrow().is_none() {
            return Err(ClientError::NotFound(id));
        }
        Ok(follower)
    }

    /// Starts following a gate without reading it: for a gate this process
    /// is about to open, whose events will all come on the live feed.
    pub(crate) fn register(self: Arc<Self>, id: GateId) -> Follower {
        let rx = {
            let mut entries = self.lock();
            let entry = entries.entry(id).or_insert_with(|| Entry {
                state: None,
                last_seq: 0,
                tx: watch::channel(None).0,
                followers: 0,
            });
            entry.followers += 1;
            entry.tx.subscribe()
        };
        Follower { hub: self, id, rx }
    }

    /// Reads the gate unless the live feed already gave us its state.
    pub(crate) async fn ensure_state(&self, id: GateId) -> Result<(), ClientError> {
        let known = self.lock().get(&id).is_some_and(|e| e.state.is_some());
        if known {
            Ok(())
        } else {
            self.reread(id).await
        }
    }

    fn release(&self, id: GateId) {
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(&id) {
            entry.followers -= 1;
            if entry.followers == 0 {
                entries.remove(&id);
            }
        }
    }
}

/// Follows one gate. Dropping it stops following.
pub struct Follower {
    hub: Arc<Hub>,
    id: GateId,
    rx: watch::Receiver<Snapshot>,
}

impl Follower {
    pub fn id(&self) -> GateId {
        self.id
    }

    /// The state as last seen.
    pub fn current(&self) -> Option<Arc<GateState>> {
        self.rx.borrow().clone()
    }

    /// Waits for the next change and returns the new state.
    pub async fn changed(&mut self) -> Result<Arc<GateState>, ClientError> {
        loop {
            self.rx
                .changed()
                .await
                .map_err(|_| ClientError::Nats("the waiter stopped".into()))?;
            if let Some(s) = self.rx.borrow_and_update().clone() {
                return Ok(s);
            }
        }
    }

    /// Waits until the state satisfies `pred` (checked on the current state
    /// first) and returns it.
    pub async fn wait_until(
        &mut self,
        pred: impl Fn(&GateState) -> bool,
    ) -> Result<Arc<GateState>, ClientError> {
        loop {
            if let Some(s) = self.rx.borrow_and_update().clone() {
                if pred(&s) {
                    return Ok(s);
                }
            }
            self.rx
                .changed()
                .await
                .map_err(|_| ClientError::Nats("the waiter stopped".into()))?;
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.hub.release(self.id);
    }
}
