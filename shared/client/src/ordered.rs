//! Reading a stream's stored messages once, in order, through an ordered
//! push consumer: the fold behind every listing (gates, runs, failed
//! deliveries) and the start of every live follow.

use async_nats::jetstream::consumer::{push, Consumer, DeliverPolicy};
use async_nats::jetstream::Message;
use futures_util::StreamExt;

use crate::{nats_err, Client, ClientError};

impl Client {
    /// An ordered consumer over `filter` in `stream`, starting at `policy`;
    /// `None` when the stream does not exist.
    pub async fn ordered_consumer(
        &self,
        stream: &str,
        filter: &str,
        policy: DeliverPolicy,
    ) -> Result<Option<Consumer<push::OrderedConfig>>, ClientError> {
        let Ok(stream) = self.js.get_stream(stream).await else {
            return Ok(None);
        };
        stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.nats.new_inbox(),
                filter_subject: filter.to_string(),
                deliver_policy: policy,
                ..Default::default()
            })
            .await
            .map(Some)
            .map_err(nats_err)
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
        if consumer.cached_info().num_pending == 0 {
            return Ok(true);
        }
        let mut messages = consumer.messages().await.map_err(nats_err)?;
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
