//! Advancing one run for one job: read the run, plan, record, start steps,
//! and keep going until nothing is left that this runner can do now. A run
//! whose remaining work waits on gates is parked: the job is acked and no
//! runner is held; a gate decision enqueues the next job.
//!
//! Every event that depends on the run's state is appended with the run's
//! expected last sequence, so two runners advancing the same run never both
//! act on the same step: the loser reads the run again and plans again.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use moira_client::append::AppendError;
use moira_client::Client;
use moira_protocol::run::{apply_run, RunEnvelope, RunEvent, RunState};
use moira_workflow::Workflow;

use crate::act::act;
use crate::exec::StepResult;
use crate::plan::plan;
use crate::steps::{env, RUNNER_ACTOR};
use crate::Shared;

/// What a finished step task reports.
pub(crate) struct Done {
    pub step: String,
    pub attempt: u32,
    pub result: StepResult,
}

pub async fn advance(
    shared: Arc<Shared>,
    run_id: String,
    job_seq: u64,
    redelivered: bool,
) -> anyhow::Result<()> {
    let client = &shared.client;
    let mut held = Held {
        job_seq,
        tasks: JoinSet::new(),
        cancel: tokio_util::sync::CancellationToken::new(),
    };
    let mut cut_off_handled = !redelivered;
    // Steps started here are killed if the run is cancelled meanwhile.
    let watcher = {
        let (c, id, token) = (client.clone(), run_id.clone(), held.cancel.clone());
        tokio::spawn(async move {
            if let Ok(v) = c
                .wait_run_until(&id, |r| r.cancelled_by.is_some() || r.finished.is_some())
                .await
            {
                if v.status == moira_protocol::run::RunStatus::Cancelled {
                    token.cancel();
                }
            }
        })
    };
    let _stop_watching = AbortOnDrop(watcher);
    let mut submission_checked = false;
    // The run as this job last wrote it, when nothing else can have come in
    // between (see below): planned again without reading it back.
    let mut known: Option<(RunState, u64)> = None;
    loop {
        let (run, last_seq) = match known.take() {
            Some(k) => k,
            None => {
                let Some(rec) = client.read_run_fresh(&run_id).await? else {
                    tracing::warn!(run_id, "a job for an unknown run; dropping it");
                    return Ok(());
                };
                (rec.state, rec.last_seq)
            }
        };
        let mut last = Tail::at(&run_id, last_seq);
        if run.finished.is_some() {
            held.tasks.abort_all();
            // Its end may not have reached its parent yet (a runner that
            // stopped right after recording it): the job repeats it.
            // Failing here fails the job, so it comes back and tries again.
            if crate::call::wake_parent(client, &run).await.is_err() {
                anyhow::bail!("cannot ask for a job on the parent of run {run_id}");
            }
            if !shared.keep_work_files {
                remove_run_files(&shared, &run_id).await;
            }
            return Ok(());
        }
        // A run that did not come through a runner's checks (written
        // straight into the stream) is never acted on in require mode.
        // The submission never changes: check it once per job.
        if let Some(registry) = shared.verify.as_ref().filter(|_| !submission_checked) {
            submission_checked = true;
            let origin =
                moira_service::verify::check_run_origin(client, &run, &registry.current()).await;
            if let Err(why) = origin {
                tracing::error!(
                    run_id,
                    submitter = run.submitted_by,
                    "the run is not acted on: {why}"
                );
                return Ok(());
            }
        }
        let wf = match Workflow::parse(&run.workflow, &run.vars) {
            Ok(wf) => wf,
            Err(e) => {
                tracing::error!(run_id, "the stored workflow no longer parses: {e}");
                let ev = env(
                    &run_id,
                    RunEvent::RunFinished {
                        status: moira_protocol::run::RunStatus::Failed,
                    },
                    RUNNER_ACTOR,
                );
                client.append_run(&ev, Some(last.seq)).await.ok();
                return Ok(());
            }
        };
        let actions = plan(
            &wf,
            &run,
            (!cut_off_handled).then_some(job_seq),
            moira_protocol::time::now_ms(),
        );
        cut_off_handled = true;
        let mut progressed = false;
        let mut conflict = false;
        for action in actions {
            match act(&shared, &wf, &run, action, &mut last, &mut held).await {
                Ok(true) => progressed = true,
                Ok(false) => {}
                Err(ActError::Conflict) => {
                    tracing::debug!(run_id, "another writer moved the run on; reading it again");
                    conflict = true;
                    break;
                }
                Err(ActError::Other(e)) => return Err(e),
                Err(ActError::Refused(m)) => return Err(anyhow::anyhow!(m)),
            }
        }
        if conflict {
            continue;
        }
        if progressed {
            // Each event of this pass was appended with the run's expected
            // last sequence, so none came in between: the run now is what
            // was read plus those events, in order. Anything else (a
            // finished step of ours, a cancel) bumps the sequence, and the
            // next expected-sequence append then conflicts and reads again.
            if let Some(events) = last.appended.take().filter(|e| !e.is_empty()) {
                let mut next = Some(run);
                for ev in &events {
                    apply_run(&mut next, ev);
                }
                known = next.map(|n| (n, last.seq));
            }
            continue;
        }
        // Nothing to do now: wait for a step of ours, or stop (parked, or
        // waiting on steps another runner holds).
        match held.tasks.join_next().await {
            Some(Ok(done)) => record_finish(client, &run_id, &wf, done).await?,
            Some(Err(e)) => tracing::error!(run_id, "a step task failed: {e}"),
            None => return Ok(()),
        }
    }
}

/// Removes a finished run's folder (steps' files and outputs).
async fn remove_run_files(shared: &Shared, run_id: &str) {
    let dir = shared.work_dir.join(run_id);
    match tokio::fs::remove_dir_all(&dir).await {
        Ok(()) => tracing::debug!(run_id, "removed the run's folder"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(run_id, "cannot remove {}: {e}", dir.display()),
    }
}

/// What one job holds while it advances its run.
pub(crate) struct Held {
    /// The job's stream sequence, recorded on the steps it starts.
    pub job_seq: u64,
    /// The steps it runs.
    pub tasks: JoinSet<Done>,
    /// Cancelled when the run is cancelled; kills those steps.
    pub cancel: tokio_util::sync::CancellationToken,
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) enum ActError {
    Conflict,
    /// The gate-keeper refused a gate this step asked for: retrying cannot
    /// help, so the step ends with the reason.
    Refused(String),
    Other(anyhow::Error),
}

impl From<AppendError> for ActError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Conflict => ActError::Conflict,
            other => ActError::Other(anyhow::anyhow!("appending a run event: {other}")),
        }
    }
}

impl From<moira_client::ClientError> for ActError {
    fn from(e: moira_client::ClientError) -> Self {
        ActError::Other(e.into())
    }
}

/// Where a job's appends to its run stand: the run's last sequence, and
/// the events this job appended after the read (`None` once an append is
/// about another run, so the next pass reads again).
pub(crate) struct Tail {
    run_id: String,
    pub seq: u64,
    appended: Option<Vec<RunEnvelope>>,
}

impl Tail {
    fn at(run_id: &str, seq: u64) -> Tail {
        Tail {
            run_id: run_id.to_string(),
            seq,
            appended: Some(Vec::new()),
        }
    }
}

/// Appends a run event with the run's expected last sequence.
pub(crate) async fn append(
    client: &Client,
    last: &mut Tail,
    ev: RunEnvelope,
) -> Result<(), ActError> {
    last.seq = client.append_run(&ev, Some(last.seq)).await?;
    if ev.run_id == last.run_id {
        if let Some(list) = last.appended.as_mut() {
            list.push(ev);
        }
    } else {
        last.appended = None;
    }
    Ok(())
}

/// Records a finished step (no expected sequence: nobody else writes about
/// a step this runner holds; a stale attempt is ignored by the fold).
async fn record_finish(
    client: &Client,
    run_id: &str,
    wf: &Workflow,
    done: Done,
) -> anyhow::Result<()> {
    let retries = wf.step(&done.step).map(|s| s.retries).unwrap_or(0);
    let r = done.result;
    if r.cancelled {
        tracing::info!(
            run_id,
            step = done.step,
            "step killed: its run was cancelled"
        );
        let ev = env(
            run_id,
            RunEvent::StepCancelled { step: done.step },
            RUNNER_ACTOR,
        );
        return keep_recording(client, ev, "a cancelled step").await;
    }
    let retry = !r.ok && done.attempt <= retries;
    tracing::info!(run_id, step = done.step, ok = r.ok, exit_code = ?r.exit_code, retry, "step finished");
    let status = match (r.ok, retry) {
        (true, _) => "succeeded",
        (false, true) => "retried",
        (false, false) => "failed",
    };
    moira_service::ops::metrics()
        .steps
        .get_or_create(&moira_service::ops::StatusLabels {
            status: status.into(),
        })
        .inc();
    let ev = RunEvent::StepFinished {
        step: done.step,
        attempt: done.attempt,
        ok: r.ok,
        exit_code: r.exit_code,
        outputs: r.outputs,
        reason: r.reason,
        retry,
    };
    keep_recording(client, env(run_id, ev, RUNNER_ACTOR), "a finished step").await
}

/// How long a runner keeps trying to record a step's end before it gives
/// up on it (and says so).
const RECORD_FOR: Duration = Duration::from_secs(3600);

/// Records the end of a step that ran here, trying again through a leader
/// election, an outage or a lost connection. The step has run: giving up
/// early would make it look cut off and run it again.
///
/// The appending is a task of its own, so it goes on when the job is
/// dropped (a runner cut off from the broker stops holding its jobs): once
/// the broker answers again, the finish lands, and either it comes first
/// or another runner has already recorded the step as cut off, in which
/// case the fold ignores it (its attempt is over). A lost ack may have
/// stored it already: appending again is then a no-op for the same reason.
async fn keep_recording(
    client: &Client,
    ev: RunEnvelope,
    what: &'static str,
) -> anyhow::Result<()> {
    let client = client.clone();
    let task = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let mut failures: u32 = 0;
        loop {
            match client.append_run(&ev, None).await {
                Ok(_) => {
                    if failures > 0 {
                        tracing::info!(
                            run_id = ev.run_id,
                            "recorded {what} after {failures} failed tries"
                        );
                    }
                    return Ok(());
                }
                Err(e) if started.elapsed() < RECORD_FOR => {
                    if failures % 10 == 0 {
                        tracing::warn!(
                            run_id = ev.run_id,
                            "recording {what} failed ({e}); trying again"
                        );
                    }
                    failures += 1;
                    let pause = Duration::from_millis(200u64 << failures.min(5))
                        .min(Duration::from_secs(5));
                    tokio::time::sleep(pause).await;
                }
                Err(e) => {
                    tracing::error!(
                        run_id = ev.run_id,
                        "gave up recording {what} after {:?}: {e}",
                        started.elapsed()
                    );
                    return Err(anyhow::anyhow!("recording {what}: {e}"));
                }
            }
        }
    });
    task.await
        .map_err(|e| anyhow::anyhow!("recording {what}: the task failed: {e}"))?
}
