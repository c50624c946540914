//! Answering core-NATS requests (gate commands, run commands): a bounded
//! number at once, each in its own task, and a bounded drain at the end.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{select_all, StreamExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Bound on each NATS call made while stopping: the broker may be down.
const SHUTDOWN_IO: Duration = Duration::from_secs(2);

/// How to serve: at most `max_in_flight` requests at once; on shutdown,
/// stop taking new ones and wait up to `drain` for those in flight.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_in_flight: usize,
    pub drain: Duration,
}

/// Joins `queue` on each subject and flushes, so requests sent from now on
/// reach this process (or another member of the group).
pub async fn subscribe(
    nats: &async_nats::Client,
    subjects: &[&str],
    queue: &str,
) -> anyhow::Result<Vec<async_nats::Subscriber>> {
    let mut subs = Vec::new();
    for subject in subjects {
        subs.push(
            nats.queue_subscribe(subject.to_string(), queue.to_string())
                .await
                .map_err(|e| anyhow::anyhow!("cannot subscribe to {subject}: {e}"))?,
        );
    }
    nats.flush()
        .await
        .map_err(|e| anyhow::anyhow!("flush: {e}"))?;
    Ok(subs)
}

/// Answers the requests arriving on `subs` with what `handle` returns,
/// until `shutdown` is cancelled or every subscription ends. A request
/// without a reply subject is logged and dropped.
pub async fn serve<H, Fut>(
    nats: async_nats::Client,
    subs: Vec<async_nats::Subscriber>,
    limits: Limits,
    shutdown: CancellationToken,
    handle: H,
) where
    H: Fn(async_nats::Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<u8>> + Send + 'static,
{
    let handle = Arc::new(handle);
    let slots = Arc::new(Semaphore::new(limits.max_in_flight));
    let mut incoming = select_all(subs);
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = incoming.next() => match m {
                Some(m) => m,
                None => break,
            },
        };
        let Some(reply_to) = msg.reply.clone() else {
            tracing::warn!(subject = %msg.subject, "ignoring a request with no reply subject (use a request, not a publish)");
            continue;
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let (nats, handle) = (nats.clone(), handle.clone());
        tokio::spawn(async move {
            let body = handle(msg).await;
            if let Err(e) = nats.publish(reply_to, body.into()).await {
                tracing::warn!("could not send a reply: {e}");
            }
            drop(permit);
        });
    }
    // Stop taking requests, then let the ones in flight finish. Every step
    // is bounded: an unbounded flush would wait for a reconnect forever.
    for sub in incoming.iter_mut() {
        let _ = tokio::time::timeout(SHUTDOWN_IO, sub.unsubscribe()).await;
    }
    let all = u32::try_from(limits.max_in_flight).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.drain, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            "stopping with requests still in flight after {:?}",
            limits.drain
        );
    }
    if tokio::time::timeout(SHUTDOWN_IO, nats.flush())
        .await
        .is_err()
    {
        tracing::warn!("could not flush to NATS while stopping (is the broker down?)");
    }
}
