//! Following a durable pull consumer that several processes share: the
//! message stream is reopened after an error, and the feed ends when the
//! process is asked to stop.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, Consumer};
use async_nats::jetstream::Message;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

pub struct DurableFeed {
    name: String,
    consumer: Consumer<pull::Config>,
    messages: Option<pull::Stream>,
}

impl DurableFeed {
    pub fn new(name: impl Into<String>, consumer: Consumer<pull::Config>) -> Self {
        Self {
            name: name.into(),
            consumer,
            messages: None,
        }
    }

    /// The next message, or `None` once `shutdown` is cancelled.
    pub async fn next(&mut self, shutdown: &CancellationToken) -> Option<Message> {
        loop {
            let messages = match &mut self.messages {
                Some(m) => m,
                None => match self.consumer.messages().await {
                    Ok(m) => self.messages.insert(m),
                    Err(e) => {
                        tracing::warn!(
                            consumer = self.name,
                            "cannot read messages: {e}; trying again"
                        );
                        tokio::select! {
                            _ = shutdown.cancelled() => return None,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        }
                    }
                },
            };
            let next = tokio::select! {
                _ = shutdown.cancelled() => return None,
                m = messages.next() => m,
            };
            match next {
                Some(Ok(msg)) => return Some(msg),
                // An error or an ended stream: open a new one.
                _ => self.messages = None,
            }
        }
    }
}
