//! Delivering to one channel: claimed in the shared record first, tried
//! with backoff and jitter, recorded as failed when it keeps failing.

use super::*;

pub(crate) async fn deliver_all(shared: &Shared, n: &Notification, extra: &[String]) -> Handled {
    let loaded = shared.loaded();
    let mut handled = Handled::Done;
    let all = route(&loaded.config, n, extra).into_iter().flat_map(|c| {
        targets(shared, n, &c)
            .into_iter()
            .map(move |t| (c.clone(), t))
    });
    for (channel, (target, n)) in all {
        let n = &n;
        let key = store::key(&n.id, &target);
        match shared.deliveries.claim(&key).await {
            Ok(store::Claim::Mine(rev)) => deliver(shared, n, &channel, &key, rev).await,
            Ok(store::Claim::Done) => {
                tracing::debug!(notification = n.id, channel, "already delivered")
            }
            Ok(store::Claim::Busy) => {
                tracing::debug!(
                    notification = n.id,
                    channel,
                    "another notifier is delivering it"
                );
                handled = Handled::Later;
            }
            Err(e) => {
                // The record cannot be read: deliver later rather than twice.
                tracing::warn!(notification = n.id, channel, "{e}; trying again later");
                handled = Handled::Later;
            }
        }
    }
    handled
}

/// A pseudo-random fraction in [0, 1) for backoff jitter.
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos % 1000) as f64 / 1000.0
}

async fn deliver(shared: &Shared, n: &Notification, channel: &str, key: &str, mut rev: u64) {
    let loaded = shared.loaded();
    let Some(cfg) = loaded.config.channels.get(channel) else {
        return;
    };
    let r = &loaded.resolved;
    let mut last = String::new();
    let started = std::time::Instant::now();
    let m = moira_service::ops::metrics();
    let count = |result: &str| {
        m.notifications
            .get_or_create(&moira_service::ops::DeliveryLabels {
                channel: channel.to_string(),
                result: result.to_string(),
            })
            .inc();
        m.delivery_seconds
            .get_or_create(&moira_service::ops::ChannelLabels {
                channel: channel.to_string(),
            })
            .observe(started.elapsed().as_secs_f64());
    };
    for attempt in 1..=r.attempts {
        if attempt > 1 {
            match shared.deliveries.renew(key, rev).await {
                Ok(new) => rev = new,
                Err(e) => {
                    // Someone took the claim over (we were too slow): leave it to them.
                    tracing::warn!(
                        notification = n.id,
                        channel,
                        "{e}; leaving it to its new owner"
                    );
                    return;
                }
            }
        }
        match channels::send(cfg, channel, n, r).await {
            Ok(()) => {
                count("delivered");
                // Recorded first, then reported: "delivered" in the log
                // means a redelivered event will not notify this channel again.
                match shared
                    .deliveries
                    .finish(key, rev, store::State::Delivered)
                    .await
                {
                    Ok(()) => tracing::info!(
                        notification = n.id,
                        kind = n.kind,
                        channel,
                        attempt,
                        "delivered"
                    ),
                    Err(e) => tracing::warn!(
                        notification = n.id,
                        channel,
                        "delivered, but not recorded: {e}"
                    ),
                }
                return;
            }
            Err(e) => {
                tracing::warn!(
                    notification = n.id,
                    channel,
                    attempt,
                    "delivery failed: {e}"
                );
                last = e;
            }
        }
        if attempt < r.attempts {
            let base = r.backoff.as_secs_f64() * 2f64.powi(attempt as i32 - 1);
            let pause = Duration::from_secs_f64((base * (0.5 + jitter())).min(60.0));
            tokio::time::sleep(pause).await;
        }
    }
    count("failed");
    let failure = Failure {
        notification: n.id.clone(),
        kind: n.kind.clone(),
        channel: channel.to_string(),
        gate_id: n.gate.as_ref().map(|g| g.id),
        run_id: n
            .gate
            .as_ref()
            .and_then(|g| g.run_id.clone())
            .or_else(|| n.run.as_ref().map(|r| r.id.clone())),
        attempts: r.attempts,
        error: last,
        at: rfc3339(now_ms()),
    };
    if let Err(e) = shared
        .deliveries
        .finish(key, rev, store::State::Failed)
        .await
    {
        tracing::warn!(notification = n.id, channel, "{e}");
    }
    tracing::error!(
        notification = n.id,
        channel,
        "giving up after {} attempts: {}",
        r.attempts,
        failure.error
    );
    let body = serde_json::to_vec(&failure).unwrap_or_default();
    match shared.js.publish(notify_failed(channel), body.into()).await {
        Ok(ack) => {
            if let Err(e) = ack.await {
                tracing::error!("recording a failed delivery failed: {e}");
            }
        }
        Err(e) => tracing::error!("recording a failed delivery failed: {e}"),
    }
}

/// Failed deliveries recorded by any notifier, oldest first.
pub async fn failures(client: &Client, channel: Option<&str>) -> anyhow::Result<Vec<Failure>> {
    let filter = match channel {
        Some(c) => notify_failed(c),
        None => NOTIFY_FAILED_ALL.to_string(),
    };
    let mut out = Vec::new();
    // No stream yet: no notifier ever ran, so nothing failed.
    client
        .read_stored(NOTIFY_STREAM, &filter, |_, msg| {
            if let Ok(f) = serde_json::from_slice::<Failure>(&msg.payload) {
                out.push(f);
            }
        })
        .await?;
    Ok(out)
}
