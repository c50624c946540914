//! Reading a stream's stored messages once, in order, through an ordered
//! push consumer: the fold behind every listing (gates, runs, failed
//! deliveries) and the start of every live follow.
//!
//! An ordered consumer is ephemeral, but the server keeps one whose reader
//! has gone for its inactivity threshold (30 s, as async-nats sets it),
//! sending it heartbeats all the while. Runners and waiters open one per
//! wait, so without clean-up they piled up by the hundred, and the server
//! refused new ones ("maximum consumers limit reached", 10026). Each
//! [`OrderedFeed`] deletes its consumer when it is dropped.

use std::pin::Pin;
use std::task::{Context, Poll};

use async_nats::jetstream::consumer::{push, DeliverPolicy};
use async_nats::jetstream::Message;
use futures_util::{Stream, StreamExt};

use crate::{nats_err, Client, ClientError};

/// An ordered consumer that is deleted on the server when this is dropped.
pub struct OrderedFeed {
    consumer: async_nats::jetstream::consumer::Consumer<push::OrderedConfig>,
    cleanup: DeleteOnDrop,
}

impl OrderedFeed {
    /// Messages matching at creation, not yet delivered.
    pub fn pending(&self) -> u64 {
        self.consumer.cached_info().num_pending
    }

    /// The messages, in stream order; the consumer lives as long as this.
    pub async fn messages(self) -> Result<OrderedMessages, ClientError> {
        let inner = self.consumer.messages().await.map_err(nats_err)?;
        Ok(OrderedMessages {
            inner: Box::pin(inner),
            _cleanup: self.cleanup,
        })
    }
}

/// The messages of an [`OrderedFeed`].
pub struct OrderedMessages {
    inner: Pin<Box<push::Ordered>>,
    _cleanup: DeleteOnDrop,
}

impl Stream for OrderedMessages {
    type Item = <push::Ordered as Stream>::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

/// Deletes an ephemeral consumer in the background when dropped. (When
/// async-nats replaces an ordered consumer after a gap, it deletes the old
/// one itself; the new one is left to the server's inactivity threshold.)
struct DeleteOnDrop {
    js: async_nats::jetstream::Context,
    stream: String,
    name: String,
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (js, stream, name) = (
            self.js.clone(),
            std::mem::take(&mut self.stream),
            std::mem::take(&mut self.name),
        );
        rt.spawn(async move {
            if let Err(e) = js.delete_consumer_from_stream(&name, &stream).await {
                tracing::debug!(
                    stream,
                    consumer = name,
                    "deleting a finished ordered consumer: {e}"
                );
            }
        });
    }
}

impl Client {
    /// An ordered consumer over `filter` in `stream`, starting at `policy`;
    /// `None` when the stream does not exist.
    pub async fn ordered_consumer(
        &self,
        stream: &str,
        filter: &str,
        policy: DeliverPolicy,
    ) -> Result<Option<OrderedFeed>, ClientError> {
        let Ok(s) = self.js.get_stream_no_info(stream).await else {
            return Ok(None);
        };
        let consumer = match s
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.nats.new_inbox(),
                filter_subject: filter.to_string(),
                deliver_policy: policy,
                ..Default::default()
            })
            .await
        {
            Ok(c) => c,
            Err(e) if is_missing_stream(&e) => return Ok(None),
            Err(e) => return Err(nats_err(e)),
        };
        let cleanup = DeleteOnDrop {
            js: self.js.clone(),
            stream: stream.to_string(),
            name: consumer.cached_info().name.clone(),
        };
        Ok(Some(OrderedFeed { consumer, cleanup }))
    }

    /// Hands every message stored so far under `filter` to `each`, oldest
    /// first, with its stream sequence, and returns once the last one (as
    /// of the start) is read. `Ok(false)` when the stream does not exist.
    pub async fn read_stored(
        &self,
        stream: &str,
        filter: &str,
        each: impl FnMut(u64, Message),
    ) -> Result<bool, ClientError> {
        self.read_stored_from(stream, filter, DeliverPolicy::All, each)
            .await
    }

    /// [`Client::read_stored`] with a delivery policy: `LastPerSubject`
    /// makes the server look up the matching subjects in its subject index
    /// and send only their last messages, instead of scanning every
    /// message of the stream for ones that match.
    pub async fn read_stored_from(
        &self,
        stream: &str,
        filter: &str,
        deliver: DeliverPolicy,
        mut each: impl FnMut(u64, Message),
    ) -> Result<bool, ClientError> {
        let Some(consumer) = self.ordered_consumer(stream, filter, deliver).await? else {
            return Ok(false);
        };
        if consumer.pending() == 0 {
            return Ok(true);
        }
        let mut messages = consumer.messages().await?;
        while let Some(msg) = messages.next().await {
            let msg = msg.map_err(nats_err)?;
            let info = msg.info().map_err(nats_err)?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            each(seq, msg);
            if pending == 0 {
                break;
            }
        }
        Ok(true)
    }
}

fn is_missing_stream(e: &async_nats::jetstream::stream::ConsumerError) -> bool {
    use async_nats::jetstream::stream::ConsumerErrorKind;
    matches!(e.kind(), ConsumerErrorKind::JetStream(j)
        if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND)
}
