//! Following the shared consumers: each event is handled in its own task
//! (bounded per consumer), with progress acks while it runs, and acked,
//! or handed back when another notifier is delivering part of it.

use super::*;

/// What became of an event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Handled {
    /// Every channel was told, given up on, or had been told before.
    Done,
    /// Some channel is being told by another notifier: hand it back.
    Later,
}

pub(crate) async fn consume(
    name: &'static str,
    consumer: async_nats::jetstream::consumer::Consumer<pull::Config>,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let mut feed = DurableFeed::new(name, consumer);
    while let Some(msg) = feed.next(&shutdown).await {
        // Waiting for a slot counts as progress: without it, a burst while
        // a channel is slow would be delivered again to someone else.
        let Ok(permit) = with_progress(&msg, slots.clone().acquire_owned()).await else {
            return;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let handled = with_progress(&msg, handle(&shared, &msg)).await;
            let acked = match handled {
                Handled::Done => msg.double_ack().await,
                Handled::Later => msg.ack_with(AckKind::Nak(Some(BUSY_RETRY))).await,
            };
            if let Err(e) = acked {
                tracing::warn!("acking an event failed: {e}");
            }
            drop(permit);
        });
    }
}

/// Runs `work`, sending progress acks for `msg` every [`PROGRESS_EVERY`]
/// meanwhile, so the event stays with this notifier.
pub(crate) async fn with_progress<T>(
    msg: &async_nats::jetstream::Message,
    work: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(work);
    let mut beat = tokio::time::interval(PROGRESS_EVERY);
    beat.tick().await;
    loop {
        tokio::select! {
            r = &mut work => return r,
            _ = beat.tick() => { let _ = msg.ack_with(AckKind::Progress).await; }
        }
    }
}

/// Handles one event of any of the three consumers. Never fails: problems
/// are logged or recorded as failed deliveries, and the event is acked
/// (unless another notifier is delivering part of it right now).
pub(crate) async fn handle(shared: &Shared, msg: &async_nats::jetstream::Message) -> Handled {
    let Ok(info) = msg.info() else {
        return Handled::Done;
    };
    let id = format!("{}:{}", info.stream, info.stream_sequence);
    let subject = msg.subject.to_string();
    if let Some(tp) = moira_client::trace::of(msg.headers.as_ref()) {
        tracing::info!(
            notification = id,
            traceparent = tp.as_str(),
            "an event with a trace context"
        );
    }
    if let Some(rest) = notify_fired_parts(&subject) {
        return fired(shared, &id, rest, msg.headers.as_ref()).await;
    } else if is_run_event(&subject) {
        if let Some(env) = RunEnvelope::decode(&msg.payload) {
            if let RunEvent::RunFinished { status } = env.event {
                let kind = if status == RunStatus::Succeeded {
                    "run_finished"
                } else {
                    "run_failed"
                };
                if let Ok(run) = shared.client.show_run(&env.run_id).await {
                    let n = notification(shared, id, kind, None, Some(&run));
                    return deliver_all(shared, &n, &[]).await;
                }
            }
        }
    } else {
        match Envelope::decode(&msg.payload) {
            Ok(Decoded::Event(env)) => {
                return gate_event(shared, id, info.stream_sequence, env).await
            }
            Ok(Decoded::Unknown { kind, .. }) => {
                tracing::debug!(kind, "skipping an event kind this build does not know")
            }
            Err(e) => tracing::warn!(subject, "skipping an undecodable event: {e}"),
        }
    }
    Handled::Done
}

pub(crate) async fn gate_event(shared: &Shared, id: String, seq: u64, env: Envelope) -> Handled {
    let kind = match &env.event {
        GateEvent::GateOpened { .. } => "opened",
        GateEvent::GateApproved { .. } => "approved",
        GateEvent::GateDenied { .. } => "denied",
        GateEvent::GateTimedOut { .. } => "timed_out",
        GateEvent::GateCancelled { .. } => "cancelled",
        GateEvent::GatePushedBack { .. } => "pushed_back",
        // An approval that completes a stage begins the next one.
        GateEvent::ApprovalRecorded { .. } => "stage_began",
    };
    if let GateEvent::GateTimedOut { on_timeout } = &env.event {
        moira_service::ops::metrics()
            .timeouts
            .get_or_create(&moira_service::ops::ActionLabels {
                action: on_timeout.as_str().to_string(),
            })
            .inc();
    }
    if kind == "opened" {
        schedule(shared, env.gate_id, env.at).await;
    } else if env.event.is_terminal() {
        unschedule(shared, env.gate_id).await;
    }
    let gate = match gate_as_of(shared, env.gate_id, seq).await {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(gate = %env.gate_id, "cannot read the gate to notify about it: {e}");
            return Handled::Done;
        }
    };
    if kind == "stage_began" && !began_a_stage(&gate) {
        return Handled::Done;
    }
    let run = match &gate.run_id {
        Some(r) => shared.client.show_run(r).await.ok(),
        None => None,
    };
    let n = notification(shared, id, kind, Some(gate), run.as_ref());
    deliver_all(shared, &n, &[]).await
}

/// Whether the approval just recorded met a stage, so that the next one
/// now takes approvals (the gate is still waiting, in a later stage, and
/// nobody approved in that stage yet).
fn began_a_stage(g: &GateView) -> bool {
    match g.stage {
        Some(n) if n > 1 => g
            .stages
            .get(n as usize - 1)
            .is_some_and(|s| s.approved_by.is_empty()),
        _ => false,
    }
}

/// The gate as it was right after the event at `seq`: an "opened" message
/// must not already show a decision that came later.
pub(crate) async fn gate_as_of(
    shared: &Shared,
    gate: GateId,
    seq: u64,
) -> Result<GateView, String> {
    let (events, _) = shared
        .client
        .read_events(gate)
        .await
        .map_err(|e| e.to_string())?;
    moira_client::fold_stored(events.iter().filter(|e| e.seq <= seq))
        .map(|s| GateView::from(&s))
        .ok_or_else(|| format!("gate {gate} has no open event"))
}
