//! Waiting on gates with no polling and no consumer per gate.
//!
//! One process keeps a map from gate id to the followed state, fed by the
//! live copies the stream republishes on `moira.live.gate.ev.<id>`. While
//! it follows up to [`PER_GATE_MAX`] gates it subscribes to each one's
//! subject, so it receives what it follows and nothing else; past that it
//! switches to one subscription on the whole feed (`moira.live.gate.ev.>`),
//! which costs less than that many subscriptions. Following a gate
//! subscribes first and then reads the gate from the stream to catch up.
//! A republished event carries its sequence and the previous sequence on
//! the same subject; when the previous one is not the last we know,
//! something was missed (core messages are not redelivered), so the gate
//! is read again. After a reconnect every followed gate is read again,
//! since messages sent while disconnected are lost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use futures_util::StreamExt;
use tokio::sync::{watch, Semaphore};
use tokio::task::AbortHandle;

use moira_protocol::event::Decoded;
use moira_protocol::gate::apply;
use moira_protocol::wire::{gate_id_from_subject, live_gate_events, LIVE_GATE_EVENTS_ALL};
use moira_protocol::{Envelope, GateId, GateState};

use crate::store::live_seqs;
use crate::{nats_err, Client, ClientError, Inner};

/// Gate re-reads in flight at once after a reconnect.
const REREAD_CONCURRENCY: usize = 64;
/// Gates followed with one subscription each; past this many, the process
/// takes the whole live feed instead.
pub const PER_GATE_MAX: usize = 10_000;

type Snapshot = Option<Arc<GateState>>;

struct Entry {
    state: Snapshot,
    last_seq: u64,
    tx: watch::Sender<Snapshot>,
    followers: usize,
    /// The task reading this gate's own subscription, if it has one.
    listener: Option<AbortHandle>,
    /// A re-read is running; `Again` when another was asked for meanwhile,
    /// so a burst of gaps costs at most two reads, not one task each.
    reread: Reread,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Reread {
    Idle,
    Running,
    Again,
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some(l) = self.listener.take() {
            l.abort();
        }
    }
}

pub(crate) struct Hub {
    /// A client handle without a hub of its own (no reference cycle).
    reader: Client,
    entries: Mutex<HashMap<GateId, Entry>>,
    rereads: Semaphore,
    /// Whether the whole live feed is taken (then no gate has its own
    /// subscription).
    whole_feed: AtomicBool,
    per_gate_max: usize,
    switching: tokio::sync::Mutex<()>,
}

/// Hands every message of `sub` to the hub until either goes away.
fn forward(hub: Weak<Hub>, mut sub: async_nats::Subscriber) -> AbortHandle {
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let Some(hub) = hub.upgrade() else { break };
            hub.on_live(&msg);
        }
    })
    .abort_handle()
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
                per_gate_max: 0.into(),
            }),
            signer: None,
        };
        let hub = Arc::new(Hub {
            reader,
            entries: Mutex::default(),
            rereads: Semaphore::new(REREAD_CONCURRENCY),
            whole_feed: AtomicBool::new(false),
            per_gate_max: client.inner.per_gate_max.load(Ordering::Relaxed),
            switching: tokio::sync::Mutex::new(()),
        });
        let weak: Weak<Hub> = Arc::downgrade(&hub);
        let mut connects = client.inner.connects.clone();
        connects.borrow_and_update();
        tokio::spawn(async move {
            while connects.changed().await.is_ok() {
                let Some(hub) = weak.upgrade() else { break };
                tracing::info!("reconnected or fell behind; re-reading every followed gate");
                let ids: Vec<GateId> = hub.lock().keys().copied().collect();
                for id in ids {
                    hub.clone().spawn_reread(id);
                }
            }
        });
        Ok(hub)
    }

    /// Makes sure events of `id` reach this hub from now on: its own
    /// subscription, or the whole feed. Returns once the subscription is
    /// registered, so a read sent after it on this connection cannot miss
    /// an event.
    async fn listen(self: &Arc<Self>, id: GateId) -> Result<(), ClientError> {
        if self.whole_feed.load(Ordering::Acquire) {
            return Ok(());
        }
        let followed = self.lock().len();
        if followed > self.per_gate_max {
            return self.take_whole_feed().await;
        }
        if self.lock().get(&id).is_some_and(|e| e.listener.is_some()) {
            return Ok(());
        }
        let sub = self
            .reader
            .nats
            .subscribe(live_gate_events(&id))
            .await
            .map_err(nats_err)?;
        let handle = forward(Arc::downgrade(self), sub);
        let mut entries = self.lock();
        match entries.get_mut(&id) {
            Some(e) if e.listener.is_none() && !self.whole_feed.load(Ordering::Acquire) => {
                e.listener = Some(handle)
            }
            // Another follower subscribed first, the whole feed is taken,
            // or the gate is followed no more.
            _ => handle.abort(),
        }
        Ok(())
    }

    /// Switches to one subscription on the whole live feed and drops the
    /// per-gate ones (after the new one is registered, so nothing falls in
    /// between; an event heard twice is ignored by its sequence).
    async fn take_whole_feed(self: &Arc<Self>) -> Result<(), ClientError> {
        let _one = self.switching.lock().await;
        if self.whole_feed.load(Ordering::Acquire) {
            return Ok(());
        }
        let sub = self
            .reader
            .nats
            .subscribe(LIVE_GATE_EVENTS_ALL)
            .await
            .map_err(nats_err)?;
        // Lives as long as the hub: the task ends when the hub is dropped.
        let _ = forward(Arc::downgrade(self), sub);
        self.whole_feed.store(true, Ordering::Release);
        let mut entries = self.lock();
        tracing::info!(
            followed = entries.len(),
            "following many gates: taking the whole live feed"
        );
        for e in entries.values_mut() {
            if let Some(l) = e.listener.take() {
                l.abort();
            }
        }
        Ok(())
    }

    pub(crate) fn takes_whole_feed(&self) -> bool {
        self.whole_feed.load(Ordering::Acquire)
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
        {
            let mut entries = self.lock();
            let Some(entry) = entries.get_mut(&id) else {
                return;
            };
            match entry.reread {
                Reread::Idle => entry.reread = Reread::Running,
                Reread::Running | Reread::Again => {
                    entry.reread = Reread::Again;
                    return;
                }
            }
        }
        tokio::spawn(async move {
            let _permit = self.rereads.acquire().await;
            loop {
                if let Err(e) = self.reread(id).await {
                    tracing::warn!(%id, "re-reading gate failed: {e}");
                }
                let mut entries = self.lock();
                let Some(entry) = entries.get_mut(&id) else {
                    return;
                };
                if entry.reread == Reread::Again {
                    entry.reread = Reread::Running;
                } else {
                    entry.reread = Reread::Idle;
                    return;
                }
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
        let follower = self.clone().register(id).await?;
        // Subscribed (registering returns once the subscription is sent,
        // before this read on the same connection), so nothing stored after
        // this read can be missed.
        self.reread(id).await?;
        if follower.rx.borrow().is_none() {
            return Err(ClientError::NotFound(id));
        }
        Ok(follower)
    }

    /// Starts following a gate without reading it: for a gate this process
    /// is about to open, whose events will all come on the live feed.
    pub(crate) async fn register(self: Arc<Self>, id: GateId) -> Result<Follower, ClientError> {
        let rx = {
            let mut entries = self.lock();
            let entry = entries.entry(id).or_insert_with(|| Entry {
                state: None,
                last_seq: 0,
                tx: watch::channel(None).0,
                followers: 0,
                listener: None,
                reread: Reread::Idle,
            });
            entry.followers += 1;
            entry.tx.subscribe()
        };
        // Made now, so a failed subscription lets the gate go again.
        let follower = Follower {
            hub: self.clone(),
            id,
            rx,
        };
        self.listen(id).await?;
        Ok(follower)
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
