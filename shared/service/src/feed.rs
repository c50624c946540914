//! Durable pull consumers that every copy of a service shares (each new
//! message is handled once, by whichever copy is alive), and following
//! one: the message stream is reopened after an error, and the feed ends
//! when the process is asked to stop.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, Consumer};
use async_nats::jetstream::Message;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

/// The shared consumer `name` on `stream` for `filter`, created if missing
/// with [`moira_protocol::wire::streams::shared_consumer_config`].
pub async fn shared_consumer(
    js: &async_nats::jetstream::Context,
    stream: &str,
    name: &str,
    filter: &str,
) -> anyhow::Result<Consumer<pull::Config>> {
    let config = moira_protocol::wire::streams::shared_consumer_config(name, filter);
    moira_client::streams::patiently(&format!("creating the consumer {name}"), || async {
        js.get_stream(stream)
            .await
            .map_err(anyhow::Error::from)?
            .get_or_create_consumer(name, config.clone())
            .await
            .map_err(anyhow::Error::from)
    })
    .await
}

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
                // An error or an ended stream: open a new one, after a
                // pause (a stream without a leader errs at once, and
                // asking again straight away would spin).
                other => {
                    if let Some(Err(e)) = other {
                        tracing::warn!(
                            consumer = self.name,
                            "reading messages failed: {e}; trying again in 1s"
                        );
                    }
                    self.messages = None;
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }
}
