//! Reminders and escalations: server message schedules in `MOIRA_NOTIFY`,
//! made when a gate opens, ended when it is decided, and handled when
//! they fire.

use super::*;

/// Reminder and escalation schedules for a newly opened gate.
pub(crate) async fn schedule(shared: &Shared, gate: GateId, opened_at: u64) {
    let loaded = shared.loaded();
    let mut jobs = Vec::new();
    if let Some(every) = loaded.resolved.remind_every {
        jobs.push(("remind", format!("@every {}ms", every.as_millis())));
    }
    if let Some(after) = loaded.resolved.escalate_after {
        jobs.push((
            "escalate",
            format!("@at {}", rfc3339(opened_at + after.as_millis() as u64)),
        ));
    }
    for (what, spec) in jobs {
        let mut h = HeaderMap::new();
        h.insert(HDR_SCHEDULE, spec.as_str());
        h.insert(HDR_SCHEDULE_TARGET, notify_fired(gate, what).as_str());
        h.insert(HDR_MSG_ID, format!("{what}:{gate}").as_str());
        let published = shared
            .js
            .publish_with_headers(
                notify_schedule(gate, what),
                h,
                what.as_bytes().to_vec().into(),
            )
            .await;
        match published {
            Ok(ack) => {
                if let Err(e) = ack.await {
                    tracing::warn!(%gate, "storing the {what} schedule failed: {e}");
                }
            }
            Err(e) => tracing::warn!(%gate, "storing the {what} schedule failed: {e}"),
        }
    }
}

/// Removes a gate's reminder and escalation schedules, both of them
/// whatever the config says now: one made under an older config must not
/// go on firing.
pub(crate) async fn unschedule(shared: &Shared, gate: GateId) {
    for what in ["remind", "escalate"] {
        let mut h = HeaderMap::new();
        h.insert(HDR_SCHEDULER, notify_schedule(gate, what).as_str());
        h.insert(HDR_SCHEDULE_NEXT, SCHEDULE_NEXT_PURGE);
        h.insert(HDR_NOTIFY_STOP, "1");
        if let Ok(ack) = shared
            .js
            .publish_with_headers(notify_fired(gate, "stop"), h, Vec::new().into())
            .await
        {
            let _ = ack.await;
        }
    }
}

/// A reminder or escalation fired: notify if the gate still waits.
pub(crate) async fn fired(
    shared: &Shared,
    id: &str,
    rest: &str,
    headers: Option<&HeaderMap>,
) -> Handled {
    let loaded = shared.loaded();
    if headers.is_some_and(|h| h.get(HDR_NOTIFY_STOP).is_some()) {
        return Handled::Done;
    }
    let Some((gate, what)) = rest.split_once('.') else {
        return Handled::Done;
    };
    let Ok(gate) = gate.parse::<GateId>() else {
        return Handled::Done;
    };
    // A schedule the config no longer asks for (it was made before a
    // reload or restart without `[reminders]` or `[escalation]`) is ended.
    let configured = match what {
        "remind" => loaded.resolved.remind_every.is_some(),
        "escalate" => loaded.resolved.escalate_after.is_some(),
        _ => false,
    };
    if !configured {
        tracing::info!(%gate, what, "ending a schedule the config no longer has");
        unschedule(shared, gate).await;
        return Handled::Done;
    }
    let Ok(view) = shared.client.show(gate).await else {
        return Handled::Done;
    };
    if view.status.is_terminal() {
        // Decided: make sure nothing fires again.
        unschedule(shared, gate).await;
        return Handled::Done;
    }
    let (kind, extra) = match what {
        "remind" => ("reminder", Vec::new()),
        "escalate" => (
            "escalated",
            loaded
                .config
                .escalation
                .as_ref()
                .map(|e| e.channels.clone())
                .unwrap_or_default(),
        ),
        _ => return Handled::Done,
    };
    let run = match &view.run_id {
        Some(r) => shared.client.show_run(r).await.ok(),
        None => None,
    };
    let n = notification(shared, id.to_string(), kind, Some(view), run.as_ref());
    deliver_all(shared, &n, &extra).await
}
