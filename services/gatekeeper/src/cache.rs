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

#[derive(Clone)]
pub struct Cached {
    pub state: GateState,
    pub last_seq: u64,
    /// The digest of the gate's last stored message (for the next `prev`).
    pub last_digest: Option<String>,
}

#[derive(Default)]
pub struct Cache {
    entries: Mutex<HashMap<GateId, Cached>>,
}

impl Cache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<GateId, Cached>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: &GateId) -> Option<Cached> {
        self.lock().get(id).cloned()
    }

    pub fn forget(&self, id: &GateId) {
        self.lock().remove(id);
    }

    /// Records a state known to be stored at `last_seq`; never moves an
    /// entry backwards.
    pub fn put(&self, state: GateState, last_seq: u64, last_digest: Option<String>) {
        let mut entries = self.lock();
        if entries
            .get(&state.id)
            .is_some_and(|c| c.last_seq >= last_seq)
        {
            return;
        }
        make_room(&mut entries);
        entries.insert(
            state.id,
            Cached {
                state,
                last_seq,
                last_digest,
            },
        );
    }
}

fn make_room(entries: &mut HashMap<GateId, Cached>) {
    if entries.len() < CAPACITY {
        return;
    }
    entries.retain(|_, c| !c.state.status.is_terminal());
    if entries.len() >= CAPACITY {
        entries.clear();
    }
}
