//! Gate states this gate-keeper has recently seen, so most commands need no
//! read before their write.
//!
//! The cache is never trusted on its own:
//! - every write still carries the expected last subject sequence, so a
//!   stale entry only costs a conflict and a fresh read;
//! - a refusal decided from a cached state is confirmed on a fresh read
//!   before it is sent (see the handler).
//!
//! Entries come only from this gate-keeper's own writes. Following the live
//! feed as well would make every gate-keeper receive every event, a cost
//! that grows with events × gate-keepers; measured on 2 cores it lowered
//! throughput by about 12% with one gate-keeper and gained nothing with two
//! (see docs/performance.md).

use std::collections::HashMap;
use std::sync::Mutex;

use moira_protocol::{GateId, GateState};

/// The most gates kept. Decided gates are dropped first when it is full.
const CAPACITY: usize = 20_000;
/// The most memory the entries may take, by [`GateState::approx_bytes`]:
/// a few gates with long histories must not hold more than many small ones.
const CAPACITY_BYTES: usize = 64 * 1024 * 1024;

#[derive(Clone)]
pub struct Cached {
    pub state: GateState,
    pub last_seq: u64,
    /// The digest of the gate's last stored message (for the next `prev`).
    pub last_digest: Option<String>,
}

struct Entry {
    cached: Cached,
    bytes: usize,
}

pub struct Cache {
    inner: Mutex<Inner>,
}

struct Inner {
    entries: HashMap<GateId, Entry>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl Default for Cache {
    fn default() -> Self {
        Self::with_limits(CAPACITY, CAPACITY_BYTES)
    }
}

impl Cache {
    pub fn with_limits(max_entries: usize, max_bytes: usize) -> Self {
        Cache {
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                bytes: 0,
                max_entries,
                max_bytes,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: &GateId) -> Option<Cached> {
        self.lock().entries.get(id).map(|e| e.cached.clone())
    }

    pub fn forget(&self, id: &GateId) {
        let mut inner = self.lock();
        if let Some(e) = inner.entries.remove(id) {
            inner.bytes -= e.bytes;
        }
    }

    /// Records a state known to be stored at `last_seq`; never moves an
    /// entry backwards. A state bigger than the whole budget is not kept.
    pub fn put(&self, state: GateState, last_seq: u64, last_digest: Option<String>) {
        let mut inner = self.lock();
        if inner
            .entries
            .get(&state.id)
            .is_some_and(|e| e.cached.last_seq >= last_seq)
        {
            return;
        }
        let bytes = state.approx_bytes();
        if let Some(old) = inner.entries.remove(&state.id) {
            inner.bytes -= old.bytes;
        }
        if bytes > inner.max_bytes {
            return;
        }
        inner.make_room(bytes);
        inner.bytes += bytes;
        inner.entries.insert(
            state.id,
            Entry {
                cached: Cached {
                    state,
                    last_seq,
                    last_digest,
                },
                bytes,
            },
        );
    }

    /// How many gates and about how many bytes are held.
    #[cfg(test)]
    fn size(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.entries.len(), inner.bytes)
    }
}

impl Inner {
    /// Makes room for one more entry of `bytes`: decided gates go first,
    /// then everything (the cache is only a shortcut; a miss is a read).
    fn make_room(&mut self, bytes: usize) {
        let full = |i: &Inner| i.entries.len() >= i.max_entries || i.bytes + bytes > i.max_bytes;
        if !full(self) {
            return;
        }
        self.entries
            .retain(|_, e| !e.cached.state.status.is_terminal());
        self.bytes = self.entries.values().map(|e| e.bytes).sum();
        if full(self) {
            self.entries.clear();
            self.bytes = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moira_protocol::event::GateSpec;
    use moira_protocol::GateStatus;

    fn gate(message_bytes: usize, status: GateStatus) -> GateState {
        let spec = GateSpec {
            message: "x".repeat(message_bytes),
            ..Default::default()
        };
        GateState {
            id: GateId::new(),
            spec,
            requested_by: "alice".into(),
            opened_at: 0,
            timeout_at: None,
            status,
            iteration: 1,
            approvals: Vec::new(),
            inputs: Default::default(),
            push_backs: Vec::new(),
            approved_by: None,
            approved_at: None,
            decided_by: None,
            decided_for: None,
            decided_at: None,
            reason: None,
            timed_out: false,
            applied: Vec::new(),
        }
    }

    #[test]
    fn the_cache_stays_within_its_byte_budget_whatever_the_gates_weigh() {
        let cache = Cache::with_limits(1_000, 100_000);
        for _ in 0..50 {
            cache.put(gate(10_000, GateStatus::Waiting), 1, None);
            let (_, bytes) = cache.size();
            assert!(bytes <= 100_000, "{bytes} bytes held");
        }
        // A gate bigger than the whole budget is simply not kept.
        let huge = gate(200_000, GateStatus::Waiting);
        let id = huge.id;
        cache.put(huge, 1, None);
        assert!(cache.get(&id).is_none());
    }

    #[test]
    fn decided_gates_leave_the_cache_before_waiting_ones() {
        let cache = Cache::with_limits(3, usize::MAX);
        let waiting = gate(10, GateStatus::Waiting);
        let wid = waiting.id;
        cache.put(waiting, 1, None);
        cache.put(gate(10, GateStatus::Approved), 1, None);
        cache.put(gate(10, GateStatus::Denied), 1, None);
        cache.put(gate(10, GateStatus::Waiting), 1, None);
        assert!(cache.get(&wid).is_some());
        assert_eq!(cache.size().0, 2);
    }

    #[test]
    fn replacing_an_entry_counts_its_bytes_once() {
        let cache = Cache::with_limits(10, usize::MAX);
        let g = gate(1_000, GateStatus::Waiting);
        let id = g.id;
        cache.put(g.clone(), 1, None);
        let (_, once) = cache.size();
        cache.put(g, 2, None);
        assert_eq!(cache.size(), (1, once));
        cache.forget(&id);
        assert_eq!(cache.size(), (0, 0));
    }
}
