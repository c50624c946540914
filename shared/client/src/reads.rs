//! One long-lived inbox subscription per connection for multi-message
//! replies (Direct Get batches), instead of a subscription per read: a
//! subscribe/unsubscribe pair per read costs the server an update of its
//! subscription index every time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::{nats_err, ClientError};

pub(crate) struct ReadMux {
    prefix: String,
    next: AtomicU64,
    pending: Mutex<HashMap<u64, mpsc::UnboundedSender<async_nats::Message>>>,
}

/// Receives the replies of one read; deregisters on drop.
pub(crate) struct Replies {
    mux: Arc<ReadMux>,
    id: u64,
    pub(crate) rx: mpsc::UnboundedReceiver<async_nats::Message>,
}

impl Drop for Replies {
    fn drop(&mut self) {
        self.mux.lock().remove(&self.id);
    }
}

impl ReadMux {
    pub(crate) async fn start(nats: &async_nats::Client) -> Result<Arc<ReadMux>, ClientError> {
        let prefix = nats.new_inbox();
        let mut sub = nats
            .subscribe(format!("{prefix}.*"))
            .await
            .map_err(nats_err)?;
        let mux = Arc::new(ReadMux {
            prefix,
            next: AtomicU64::new(1),
            pending: Mutex::default(),
        });
        let weak: Weak<ReadMux> = Arc::downgrade(&mux);
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let Some(mux) = weak.upgrade() else { break };
                let id = msg
                    .subject
                    .rsplit('.')
                    .next()
                    .and_then(|t| t.parse::<u64>().ok());
                if let Some(tx) = id.and_then(|id| mux.lock().get(&id).cloned()) {
                    let _ = tx.send(msg);
                }
            }
        });
        Ok(mux)
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::UnboundedSender<async_nats::Message>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh reply subject and the receiver of what arrives on it.
    pub(crate) fn register(self: &Arc<Self>) -> (String, Replies) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().insert(id, tx);
        (
            format!("{}.{id}", self.prefix),
            Replies {
                mux: self.clone(),
                id,
                rx,
            },
        )
    }
}
