//! Workflow runs from the client's side: submit, read, list, follow, logs
//! and cancel. Runners execute runs; this module only reads and appends.

use std::collections::{BTreeMap, HashMap};

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use moira_protocol::run::*;
use moira_protocol::statement::{run_id_for, run_statement, RunAbout, RunVerb};
use moira_protocol::time::rfc3339;
use moira_protocol::wire::{
    job, run_events, run_logs, run_logs_all, CONTENT_TYPE_JSON, HDR_CONTENT_TYPE, HDR_LOG_STREAM,
    INDEX_RUN, INDEX_RUNS_CONSUMER, RUNS_STREAM, RUN_CANCEL, RUN_EVENTS_ALL, RUN_SUBMIT,
};
use moira_protocol::{ErrorCode, GateId};
use moira_workflow::Workflow;

use crate::append::{request, AppendError};
use crate::{nats_err, Client, ClientError};

/// A run's folded state and the sequence of its last event.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub state: RunState,
    pub last_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StepView {
    pub name: String,
    pub status: StepStatus,
    pub gate_id: Option<GateId>,
    pub exit_code: Option<i32>,
    pub outputs: BTreeMap<String, String>,
    pub iteration: u32,
    pub attempt: u32,
    pub reason: Option<String>,
    /// A `call:` step's child run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<String>,
}

/// The JSON shape of `moira run show --json` and of each `run list --json` item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunView {
    pub id: String,
    pub name: String,
    pub status: RunStatus,
    pub submitted_by: String,
    pub submitted_at: String,
    pub vars: BTreeMap<String, String>,
    pub steps: Vec<StepView>,
    /// For a child run: the run and step that called it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRun>,
}

/// A run as the read model holds it: its view and the sequence of the
/// last run event it reflects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEntry {
    pub last_seq: u64,
    #[serde(flatten)]
    pub run: RunView,
}

impl From<&RunState> for RunView {
    fn from(s: &RunState) -> Self {
        // Every step of the workflow, in file order, pending ones included.
        let order: Vec<String> = Workflow::parse(&s.workflow, &s.vars)
            .map(|wf| wf.steps.into_iter().map(|st| st.name).collect())
            .unwrap_or_else(|_| s.steps.keys().cloned().collect());
        let steps = order
            .iter()
            .map(|name| {
                let st = s.steps.get(name).cloned().unwrap_or(StepState {
                    name: name.clone(),
                    iteration: 1,
                    ..Default::default()
                });
                StepView {
                    name: name.clone(),
                    status: st.status,
                    gate_id: st.gate_id,
                    exit_code: st.exit_code,
                    outputs: st.outputs,
                    iteration: st.iteration.max(1),
                    attempt: st.attempt,
                    reason: st.reason,
                    child: st.child,
                }
            })
            .collect();
        RunView {
            id: s.id.clone(),
            name: s.name.clone(),
            status: s.status(),
            submitted_by: s.submitted_by.clone(),
            submitted_at: rfc3339(s.submitted_at),
            vars: s.vars.clone(),
            steps,
            parent: s.parent.clone(),
        }
    }
}

/// How long a run command waits for a runner's answer.
const RUN_COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `moira.cmd.run.submit`: record a run of a workflow file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRun {
    /// Command id: the same id submits the same run once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub actor: String,
    /// The workflow file's text.
    pub workflow: String,
    /// `--var` overrides.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// The workflow file's name, when it calls other files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The files its `call:` steps run, by path relative to its folder.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub includes: BTreeMap<String, String>,
    /// SSHSIG over the submit's [`run_statement`] (every variable as the
    /// run will record it, the run id [`run_id_for`] the command id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// When it was signed (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_at: Option<u64>,
}

/// `moira.cmd.run.cancel`: cancel a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelRun {
    pub run_id: String,
    pub actor: String,
    /// Command id; a signed cancel needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// SSHSIG over the cancel's [`run_statement`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_at: Option<u64>,
}

/// A runner's answer to a run command (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<moira_protocol::CommandError>,
}

impl RunReply {
    pub fn ok(run: RunView) -> Self {
        RunReply {
            ok: true,
            run: Some(run),
            error: None,
        }
    }
    pub fn err(e: moira_protocol::CommandError) -> Self {
        RunReply {
            ok: false,
            run: None,
            error: Some(e),
        }
    }
}

/// One line a step printed.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogLine {
    pub step: String,
    pub stream: String,
    pub line: String,
}

fn run_headers(env: &RunEnvelope) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(moira_protocol::wire::HDR_EVENT, env.kind());
    h.insert(
        moira_protocol::wire::HDR_SCHEMA,
        env.schema.to_string().as_str(),
    );
    h
}

pub fn fold_run(events: impl IntoIterator<Item = RunEnvelope>) -> Option<RunState> {
    let mut state = None;
    for e in events {
        apply_run(&mut state, &e);
    }
    state
}

impl Client {
    /// One run's state, or `None` if no run has this id.
    pub async fn read_run(&self, run_id: &str) -> Result<Option<RunRecord>, ClientError> {
        let (raw, last_seq) = self.read_subject(RUNS_STREAM, &run_events(run_id)).await?;
        let events = raw.iter().filter_map(|(_, p)| RunEnvelope::decode(p));
        Ok(fold_run(events).map(|state| RunRecord { state, last_seq }))
    }

    /// [`Client::read_run`], at least as new as the stream leader: what a
    /// runner reads before it acts on a run (a lagging replica could miss a
    /// just-submitted run, or the event that makes the next step due).
    pub async fn read_run_fresh(&self, run_id: &str) -> Result<Option<RunRecord>, ClientError> {
        let (raw, last_seq) = self
            .read_subject_fresh(RUNS_STREAM, &run_events(run_id))
            .await?;
        let events = raw.iter().filter_map(|m| RunEnvelope::decode(&m.payload));
        Ok(fold_run(events).map(|state| RunRecord { state, last_seq }))
    }

    /// Appends a run event; with `expected`, only if the run's last event is
    /// still that sequence.
    pub async fn append_run(
        &self,
        env: &RunEnvelope,
        expected: Option<u64>,
    ) -> Result<u64, AppendError> {
        let mut h = run_headers(env);
        if let Some(seq) = expected {
            h.insert(
                moira_protocol::wire::HDR_EXPECTED_LAST_SUBJECT_SEQ,
                seq.to_string().as_str(),
            );
        }
        request(&self.nats, run_events(&env.run_id), h, env.encode()).await
    }

    /// Asks the runners to advance a run. `dedupe` becomes the
    /// `Nats-Msg-Id`, so the same reason enqueues one job.
    pub async fn enqueue_run(&self, run_id: &str, dedupe: &str) -> Result<(), ClientError> {
        let mut h = HeaderMap::new();
        h.insert(moira_protocol::wire::HDR_MSG_ID, dedupe);
        request(&self.nats, job(run_id), h, Vec::new())
            .await
            .map(|_| ())
            .map_err(|e| match e {
                AppendError::NoStream => ClientError::NoRunStreams,
                other => ClientError::Nats(other.to_string()),
            })
    }

    /// Validates and submits a workflow; returns the run id. The file is
    /// checked here first (for a quick, clear error), then by the runner
    /// that answers `moira.cmd.run.submit` and records the run.
    pub async fn submit_run(
        &self,
        yaml: &str,
        vars: &BTreeMap<String, String>,
        actor: &str,
    ) -> Result<String, ClientError> {
        let bundle = moira_workflow::bundle::Bundle {
            text: yaml.to_string(),
            path: String::new(),
            includes: BTreeMap::new(),
        };
        self.submit_bundle(&bundle, vars, actor).await
    }

    /// [`Client::submit_run`] of a workflow and the files it calls
    /// ([`moira_workflow::bundle::load`]).
    pub async fn submit_bundle(
        &self,
        bundle: &moira_workflow::bundle::Bundle,
        vars: &BTreeMap<String, String>,
        actor: &str,
    ) -> Result<String, ClientError> {
        let yaml = bundle.text.as_str();
        if !moira_protocol::ids::is_valid_name(actor) {
            return Err(ClientError::Invalid(moira_protocol::gate::bad_name(
                "the submitter's",
                actor,
            )));
        }
        let wf = Workflow::parse(yaml, vars).map_err(|e| ClientError::Invalid(e.to_string()))?;
        let calls = !bundle.includes.is_empty() || wf.steps.iter().any(|s| s.is_call());
        if calls {
            moira_workflow::bundle::check(&bundle.path, yaml, vars, &bundle.includes)
                .map_err(|e| ClientError::Invalid(e.to_string()))?;
        }
        let id = uuid::Uuid::now_v7().to_string();
        let mut cmd = SubmitRun {
            id: Some(id.clone()),
            actor: actor.to_string(),
            workflow: yaml.to_string(),
            vars: vars.clone(),
            path: calls.then(|| bundle.path.clone()),
            includes: bundle.includes.clone(),
            signature: None,
            signed_at: None,
        };
        if self.signer.is_some() {
            let all: BTreeMap<String, String> =
                wf.vars.iter().map(|(k, v)| (k.clone(), v.text())).collect();
            let run_id = run_id_for(&id);
            let about = RunAbout {
                includes: Some(&bundle.includes).filter(|i| !i.is_empty()),
                verb: RunVerb::Submit,
                run_id: &run_id,
                actor,
                workflow: yaml,
                vars: &all,
                step: None,
                command_id: &id,
                at: moira_protocol::time::now_ms(),
            };
            let (sig, at) = self.sign_run(&about)?;
            cmd.signature = Some(sig);
            cmd.signed_at = Some(at);
        }
        Ok(self.run_command(RUN_SUBMIT, &cmd).await?.id)
    }

    /// Signs a run statement with this client's key; `(signature, at)`.
    fn sign_run(&self, about: &RunAbout<'_>) -> Result<(String, u64), ClientError> {
        let signer = self
            .signer
            .as_ref()
            .ok_or_else(|| ClientError::Invalid("no key to sign with".into()))?;
        let sig = signer
            .sign(&run_statement(about))
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        Ok((sig, about.at))
    }

    /// Sends a run command and waits for the runner's answer.
    async fn run_command<T: Serialize>(
        &self,
        subject: &str,
        cmd: &T,
    ) -> Result<RunView, ClientError> {
        let body = serde_json::to_vec(cmd).map_err(|e| ClientError::Invalid(e.to_string()))?;
        let mut headers = HeaderMap::new();
        headers.insert(HDR_CONTENT_TYPE, CONTENT_TYPE_JSON);
        crate::trace::add(&mut headers);
        let body = Bytes::from(body);
        let send = || {
            let req = async_nats::Request::new()
                .payload(body.clone())
                .headers(headers.clone())
                .timeout(Some(RUN_COMMAND_TIMEOUT));
            self.nats.send_request(subject.to_string(), req)
        };
        // No runner answering may be a moment's gap (one restarting, or
        // reconnecting): ask again for a little while. A run command
        // carries its id, so a repeat does not act twice.
        let mut result = send().await;
        for pause_ms in [50, 100, 200, 400, 800] {
            match &result {
                Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                    tokio::time::sleep(std::time::Duration::from_millis(pause_ms)).await;
                    result = send().await;
                }
                _ => break,
            }
        }
        let msg = match result {
            Ok(m) => m,
            Err(e) => {
                let reason = match e.kind() {
                    async_nats::RequestErrorKind::NoResponders => "no responders".to_string(),
                    async_nats::RequestErrorKind::TimedOut => {
                        format!("no reply within {RUN_COMMAND_TIMEOUT:?}")
                    }
                    _ => return Err(nats_err(e)),
                };
                return Err(ClientError::NoRunner {
                    subject: subject.to_string(),
                    reason,
                });
            }
        };
        let reply: RunReply = serde_json::from_slice(&msg.payload)
            .map_err(|e| ClientError::Nats(format!("undecodable reply from a runner: {e}")))?;
        match (reply.ok, reply.run, reply.error) {
            (true, Some(run), _) => Ok(run),
            (_, _, Some(e)) if e.code == ErrorCode::NotFound => {
                Err(ClientError::RunNotFound(e.message))
            }
            (_, _, Some(e)) => Err(ClientError::Rejected(e)),
            _ => Err(ClientError::Nats("a runner sent an empty reply".into())),
        }
    }

    pub async fn show_run(&self, run_id: &str) -> Result<RunView, ClientError> {
        match self.read_run(run_id).await? {
            Some(r) => Ok(RunView::from(&r.state)),
            None => Err(ClientError::RunNotFound(run_id.to_string())),
        }
    }

    /// Every run, oldest first, optionally of one status, from the read
    /// model; folds the run events instead when no runner maintains it or
    /// it is behind (see [`Client::list`]).
    pub async fn list_runs(&self, status: Option<RunStatus>) -> Result<Vec<RunView>, ClientError> {
        use crate::index::Freshness;
        match self
            .index_freshness(RUNS_STREAM, RUN_EVENTS_ALL, INDEX_RUNS_CONSUMER)
            .await
        {
            Ok(Freshness::CaughtUp) => {
                if let Some(list) = self.list_runs_indexed(status).await? {
                    return Ok(list);
                }
            }
            Ok(Freshness::NoProjector) => {
                tracing::debug!("no runner maintains the read model; folding the run events")
            }
            Ok(Freshness::Behind(n)) => tracing::warn!(
                behind = n,
                "the read model is behind the run events (are the runners running?); folding the events instead"
            ),
            // No run stream yet: the fold says so in its own words.
            Err(e) => tracing::debug!("cannot check the read model: {e}"),
        }
        self.list_runs_from_events(status).await
    }

    /// [`Client::list_runs`] from the read model as it is; `None` when
    /// there is no read model stream.
    pub async fn list_runs_indexed(
        &self,
        status: Option<RunStatus>,
    ) -> Result<Option<Vec<RunView>>, ClientError> {
        let Some(entries) = self
            .index_entries(INDEX_RUN, status.map(|s| s.as_str()))
            .await?
        else {
            return Ok(None);
        };
        // One status holds one entry per run; all of them may hold two.
        let entries = match status {
            Some(_) => entries,
            None => crate::index::newest_per_id(entries),
        };
        let mut out: Vec<RunView> = entries
            .into_iter()
            .filter_map(|e| match serde_json::from_slice::<RunEntry>(&e.body) {
                Ok(r) => Some(r.run),
                Err(err) => {
                    tracing::warn!(id = e.id, "skipping an undecodable read model entry: {err}");
                    None
                }
            })
            .filter(|r| status.is_none_or(|s| r.status == s))
            .collect();
        out.sort_by(|a, b| (&a.submitted_at, &a.id).cmp(&(&b.submitted_at, &b.id)));
        Ok(Some(out))
    }

    /// Every run, oldest first, by folding every run event stored.
    pub async fn list_runs_from_events(
        &self,
        status: Option<RunStatus>,
    ) -> Result<Vec<RunView>, ClientError> {
        let mut out: Vec<RunView> = self
            .fold_all_runs()
            .await?
            .into_iter()
            .map(|r| RunView::from(&r.state))
            .collect();
        out.retain(|r| status.is_none_or(|s| r.status == s));
        Ok(out)
    }

    /// Every run's folded state and last event sequence, oldest first.
    pub async fn fold_all_runs(&self) -> Result<Vec<RunRecord>, ClientError> {
        let mut runs: HashMap<String, (Option<RunState>, u64)> = HashMap::new();
        let found = self
            .read_stored(RUNS_STREAM, RUN_EVENTS_ALL, |seq, msg| {
                if let Some(env) = RunEnvelope::decode(&msg.payload) {
                    let entry = runs.entry(env.run_id.clone()).or_default();
                    entry.1 = seq;
                    apply_run(&mut entry.0, &env);
                }
            })
            .await?;
        if !found {
            return Err(ClientError::NoRunStreams);
        }
        let mut out: Vec<RunRecord> = runs
            .into_values()
            .filter_map(|(s, last_seq)| s.map(|state| RunRecord { state, last_seq }))
            .collect();
        out.sort_by(|a, b| {
            (a.state.submitted_at, &a.state.id).cmp(&(b.state.submitted_at, &b.state.id))
        });
        Ok(out)
    }

    /// Waits until the run has finished and returns it.
    pub async fn wait_run(&self, run_id: &str) -> Result<RunView, ClientError> {
        self.wait_run_until(run_id, |s| s.finished.is_some()).await
    }

    /// Follows the run's events until its state satisfies `pred`.
    pub async fn wait_run_until(
        &self,
        run_id: &str,
        pred: impl Fn(&RunState) -> bool,
    ) -> Result<RunView, ClientError> {
        let mut state = None;
        let mut feed = self
            .ordered(&run_events(run_id), DeliverPolicy::All)
            .await?
            .ok_or_else(|| ClientError::RunNotFound(run_id.to_string()))?;
        while let Some(msg) = feed.next().await {
            let msg = msg.map_err(nats_err)?;
            if let Some(env) = RunEnvelope::decode(&msg.payload) {
                apply_run(&mut state, &env);
            }
            if let Some(s) = &state {
                if pred(s) {
                    return Ok(RunView::from(s));
                }
            }
        }
        Err(ClientError::Nats("the run feed ended".into()))
    }

    /// Asks a runner to cancel a run. The runner checks that `actor` may
    /// (the submitter, an approver of one of its gates, or an admin),
    /// records it, cancels the gates the run waits on and stops its steps.
    pub async fn cancel_run(&self, run_id: &str, actor: &str) -> Result<RunView, ClientError> {
        let mut cmd = CancelRun {
            run_id: run_id.to_string(),
            actor: actor.to_string(),
            id: Some(uuid::Uuid::now_v7().to_string()),
            signature: None,
            signed_at: None,
        };
        if self.signer.is_some() {
            // The statement names the run's workflow: read it.
            let run = self
                .read_run(run_id)
                .await?
                .ok_or_else(|| ClientError::RunNotFound(run_id.to_string()))?;
            let id = cmd.id.clone().unwrap_or_default();
            let none = BTreeMap::new();
            let about = RunAbout {
                includes: None,
                verb: RunVerb::Cancel,
                run_id,
                actor,
                workflow: &run.state.workflow,
                vars: &none,
                step: None,
                command_id: &id,
                at: moira_protocol::time::now_ms(),
            };
            let (sig, at) = self.sign_run(&about)?;
            cmd.signature = Some(sig);
            cmd.signed_at = Some(at);
        }
        self.run_command(RUN_CANCEL, &cmd).await
    }

    /// Step output lines of a run (one step, or all), as stored so far; with
    /// `follow`, new lines as they come, until the caller stops reading.
    pub async fn run_logs(
        &self,
        run_id: &str,
        step: Option<&str>,
        follow: bool,
    ) -> Result<impl futures_util::Stream<Item = Result<LogLine, ClientError>>, ClientError> {
        let subject = match step {
            Some(s) => run_logs(run_id, s),
            None => run_logs_all(run_id),
        };
        // One consumer from the first stored line on: a second consumer for
        // "new lines" would lose whatever is stored between the two.
        let consumer = self.runs_consumer(&subject, DeliverPolicy::All).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        if follow || consumer.pending() > 0 {
            let mut feed = consumer.messages().await?;
            tokio::spawn(async move {
                loop {
                    // A follower that stops reading ends this task (and
                    // with it the consumer), even while no lines come.
                    let msg = tokio::select! {
                        m = feed.next() => m,
                        _ = tx.closed() => return,
                    };
                    let Some(msg) = msg else { return };
                    let msg = match msg {
                        Ok(m) => m,
                        Err(e) => {
                            let _ = tx.send(Err(nats_err(e))).await;
                            return;
                        }
                    };
                    let pending = msg.info().map(|i| i.pending).unwrap_or(0);
                    let step = msg.subject.rsplit('.').next().unwrap_or("").to_string();
                    let stream = msg
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(HDR_LOG_STREAM))
                        .map(|v| v.as_str().to_string())
                        .unwrap_or_else(|| "stdout".into());
                    let line = String::from_utf8_lossy(&msg.payload).into_owned();
                    if tx.send(Ok(LogLine { step, stream, line })).await.is_err()
                        || (!follow && pending == 0)
                    {
                        return;
                    }
                }
            });
        }
        Ok(tokio_stream_from(rx))
    }

    /// Run events stored after sequence `after` (new ones only when
    /// `None`), as they come: each with its stream sequence.
    pub async fn watch_runs(
        &self,
        after: Option<u64>,
    ) -> Result<
        impl futures_util::Stream<Item = Result<(u64, RunEnvelope), ClientError>>,
        ClientError,
    > {
        let policy = match after {
            Some(seq) => DeliverPolicy::ByStartSequence {
                start_sequence: seq.saturating_add(1),
            },
            None => DeliverPolicy::New,
        };
        let consumer = self.runs_consumer(RUN_EVENTS_ALL, policy).await?;
        let messages = consumer.messages().await?;
        Ok(messages.filter_map(|msg| async move {
            let msg = match msg {
                Ok(m) => m,
                Err(e) => return Some(Err(nats_err(e))),
            };
            let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
            RunEnvelope::decode(&msg.payload).map(|env| Ok((seq, env)))
        }))
    }

    /// An ordered consumer over `subject` in the runs stream; `None` when
    /// nothing matches yet.
    async fn ordered(
        &self,
        subject: &str,
        policy: DeliverPolicy,
    ) -> Result<Option<crate::ordered::OrderedMessages>, ClientError> {
        let consumer = self.runs_consumer(subject, policy).await?;
        if consumer.pending() == 0 {
            return Ok(None);
        }
        Ok(Some(consumer.messages().await?))
    }

    async fn runs_consumer(
        &self,
        subject: &str,
        deliver_policy: DeliverPolicy,
    ) -> Result<crate::ordered::OrderedFeed, ClientError> {
        self.ordered_consumer(RUNS_STREAM, subject, deliver_policy)
            .await?
            .ok_or(ClientError::NoRunStreams)
    }

    /// Publishes one log line of a step (acknowledged later by the caller).
    pub async fn publish_log(
        &self,
        run_id: &str,
        step: &str,
        stream: &str,
        line: Bytes,
    ) -> Result<async_nats::jetstream::context::PublishAckFuture, ClientError> {
        let mut h = HeaderMap::new();
        h.insert(HDR_LOG_STREAM, stream);
        self.js
            .publish_with_headers(run_logs(run_id, step), h, line)
            .await
            .map_err(nats_err)
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
