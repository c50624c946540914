//! Runs through a runner process, against spawning the same shell steps.

use super::*;

pub(crate) const THREE_STEPS: &str = "name: bench\nsteps:\n  - {name: a, run: 'true'}\n  - {name: b, run: 'true', depends_on: [a]}\n  - {name: c, run: 'true', depends_on: [b]}\n";

/// The floor for runs: the same shell processes, spawned directly.
pub(crate) async fn spawn_floor(runs: usize, concurrency: usize) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let mut inflight = FuturesUnordered::new();
    for _ in 0..runs * 3 {
        inflight.push(
            tokio::process::Command::new("sh")
                .args(["-c", "true"])
                .status(),
        );
        if inflight.len() >= concurrency {
            inflight.next().await.context("spawn")??;
        }
    }
    while let Some(r) = inflight.next().await {
        r?;
    }
    Ok(runs as f64 / t0.elapsed().as_secs_f64())
}

/// Runs per second through one runner (4 runs at once, its default).
pub(crate) async fn runs_throughput(url: &str, n: usize) -> anyhow::Result<f64> {
    let client = Client::connect(url).await?;
    let t0 = Instant::now();
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(
            client
                .submit_run(THREE_STEPS, &Default::default(), "bench")
                .await?,
        );
    }
    for id in &ids {
        let done = client.wait_run(id).await?;
        anyhow::ensure!(
            done.status == moira_protocol::run::RunStatus::Succeeded,
            "run {id} did not succeed"
        );
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// From an approve call to the next step of the parked run being started.
pub(crate) async fn resume_latency(url: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
    use moira_protocol::run::{RunEnvelope, RunEvent, StepStatus};
    use moira_protocol::wire::RUNS_STREAM;
    let yaml = "name: resume\nsteps:\n  - {name: g, use: moira.gate, with: {message: go}}\n  - {name: after, run: 'true', depends_on: [g]}\n";
    let client = Client::connect(url).await?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let id = client
            .submit_run(yaml, &Default::default(), "bench")
            .await?;
        client
            .wait_run_until(&id, |r| {
                r.steps
                    .get("g")
                    .is_some_and(|s| s.status == StepStatus::Waiting)
            })
            .await?;
        // A decision comes after the run is parked, not within the same
        // millisecond: let the job that parked it end, so the figure is the
        // path a real decision takes (the resumer, a new job, a runner).
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let t0 = now_ms();
        client
            .approve(ApproveGate {
                gate_id: GateId::for_step(&id, "g", 1),
                actor: "bob".into(),
                ..Default::default()
            })
            .await?;
        client.wait_run(&id).await?;
        let (raw, _) = client
            .read_subject(RUNS_STREAM, &moira_protocol::wire::run_events(&id))
            .await?;
        let started = raw
            .iter()
            .filter_map(|(_, p)| RunEnvelope::decode(p))
            .find_map(|e| match e.event {
                RunEvent::StepStarted { ref step, .. } if step == "after" => Some(e.at),
                _ => None,
            })
            .context("the step after the gate never started")?;
        out.push(Duration::from_millis(started.saturating_sub(t0)));
    }
    out.sort();
    Ok(out)
}
