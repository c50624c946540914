//! moira's streams, created by whichever service starts first, or checked
//! to have what moira relies on: `MOIRA_GATES` (gate events and timeout
//! schedules), `MOIRA_RUNS` (run events and step logs) and `MOIRA_JOBS`
//! (the runners' work queue).

use std::time::Duration;

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::Config;
use async_nats::jetstream::Context;

pub use moira_protocol::wire::streams::*;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot create the {0} stream: {1}")]
    Create(String, String),
    #[error(
        "the existing {0} stream is not compatible: {1}. It was made by another tool or an older moira; \
         fix it with `nats stream edit {0}` or point moira at another server"
    )]
    Incompatible(String, String),
}

/// How many replicas moira's data has on this broker: the gate stream's
/// (1 when there is none yet). Buckets that any process may create first,
/// the CLI included, take this so they are as safe as the gates they serve.
pub async fn replicas_in_use(js: &Context) -> usize {
    match js.get_stream(moira_protocol::wire::GATES_STREAM).await {
        Ok(s) => s.cached_info().config.num_replicas.max(1),
        Err(_) => 1,
    }
}

/// Creates the gate stream if missing; otherwise verifies its settings.
pub async fn ensure_gate_stream(js: &Context, replicas: usize) -> Result<(), StreamError> {
    ensure(js, gate_stream_config(replicas)).await
}

/// Creates the run stream if missing; otherwise verifies it (for readers
/// of runs that have no business with the runners' work queue).
pub async fn ensure_runs_stream(js: &Context, replicas: usize) -> Result<(), StreamError> {
    ensure(js, runs_stream_config(replicas)).await
}

/// Creates the run and job streams if missing; otherwise verifies them.
pub async fn ensure_run_streams(js: &Context, replicas: usize) -> Result<(), StreamError> {
    ensure(js, runs_stream_config(replicas)).await?;
    ensure(js, jobs_stream_config(replicas)).await
}

/// Creates the read model's stream if missing; otherwise verifies it.
/// Returns whether it was created now (a projector then starts over).
pub async fn ensure_index_stream(js: &Context, replicas: usize) -> Result<bool, StreamError> {
    let existed = js
        .get_stream(moira_protocol::wire::INDEX_STREAM)
        .await
        .is_ok();
    ensure(js, index_stream_config(replicas)).await?;
    Ok(!existed)
}

/// How long start-up keeps trying while JetStream is not answering yet (a
/// cluster that is still forming, a leader being elected).
pub const ENSURE_PATIENCE: Duration = Duration::from_secs(30);

/// Creates the stream `want` describes if it is missing; otherwise checks
/// that the stored one is compatible. Every moira service creates and
/// checks its streams through this one function.
pub async fn ensure(js: &Context, want: Config) -> Result<(), StreamError> {
    let deadline = tokio::time::Instant::now() + ENSURE_PATIENCE;
    loop {
        match ensure_once(js, want.clone()).await {
            Err(StreamError::Create(name, e))
                if is_transient(&e) && tokio::time::Instant::now() < deadline =>
            {
                tracing::warn!(
                    stream = name,
                    "JetStream is not answering yet ({e}); trying again"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}

/// Runs `attempt` until it succeeds, fails for good, or
/// [`ENSURE_PATIENCE`] has passed while it kept failing with errors that
/// mean "not yet" ([`is_transient`]): what a service does at start-up
/// with each JetStream call, since a cluster that is electing a leader
/// answers for a few seconds with "temporarily unavailable".
pub async fn patiently<T, E, F, Fut>(what: &str, mut attempt: F) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + ENSURE_PATIENCE;
    loop {
        match attempt().await {
            Err(e) if is_transient(&e.to_string()) && tokio::time::Instant::now() < deadline => {
                tracing::warn!("{what}: JetStream is not answering yet ({e}); trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}

/// Errors that mean "not yet" rather than "no": no answer, or JetStream
/// (or its leader) temporarily unavailable. A create that timed out may
/// have been stored; the next try finds the stream and checks it.
/// A cluster that is still forming, or has a node just restarting, also
/// answers a replicated create with "no suitable peers" until every peer is
/// known to be online.
pub fn is_transient(e: &str) -> bool {
    let e = e.to_lowercase();
    e.contains("timed out")
        || e.contains("temporarily unavailable")
        || e.contains("no suitable peers")
}

async fn ensure_once(js: &Context, want: Config) -> Result<(), StreamError> {
    let name = want.name.clone();
    match js.get_stream(&name).await {
        Ok(stream) => verify(&stream.cached_info().config, &want),
        Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(ref je) if je.code() == 404) => {
            let replicated = want.num_replicas > 1;
            js.create_stream(want)
                .await
                .map_err(|e| StreamError::Create(name.clone(), e.to_string()))?;
            if replicated {
                await_leader(js, &name).await;
            }
            Ok(())
        }
        Err(e) => Err(StreamError::Create(name, e.to_string())),
    }
}

/// Waits (a few seconds at most) until a new replicated stream has elected
/// its leader, so a service that says it is ready can write at once: a
/// write in between finds no one to answer it.
async fn await_leader(js: &Context, name: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if let Ok(mut s) = js.get_stream(name).await {
            let led = s
                .info()
                .await
                .ok()
                .and_then(|i| i.cluster.as_ref().and_then(|c| c.leader.clone()))
                .is_some();
            if led {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::warn!(
        stream = name,
        "the new stream has no leader yet; writes may wait for one"
    );
}

fn verify(have: &Config, want: &Config) -> Result<(), StreamError> {
    let mut problems = Vec::new();
    let mut subjects = have.subjects.clone();
    subjects.sort();
    let mut wanted = want.subjects.clone();
    wanted.sort();
    if subjects != wanted {
        problems.push(format!("subjects are {subjects:?}, expected {wanted:?}"));
    }
    for (name, h, w) in [
        ("allow_direct", have.allow_direct, want.allow_direct),
        (
            "allow_msg_schedules",
            have.allow_message_schedules,
            want.allow_message_schedules,
        ),
        (
            "allow_atomic",
            have.allow_atomic_publish,
            want.allow_atomic_publish,
        ),
    ] {
        if h != w {
            problems.push(format!("{name} is {h}, expected {w}"));
        }
    }
    let republish = have
        .republish
        .as_ref()
        .map(|r| (&r.source, &r.destination, r.headers_only));
    let wanted_rp = want
        .republish
        .as_ref()
        .map(|r| (&r.source, &r.destination, r.headers_only));
    if republish != wanted_rp {
        problems.push(format!(
            "republish is {republish:?}, expected {wanted_rp:?}"
        ));
    }
    if have.retention != want.retention {
        problems.push(format!(
            "retention is {:?}, expected {:?}",
            have.retention, want.retention
        ));
    }
    if have.max_messages_per_subject <= 0 && want.max_messages_per_subject > 0 {
        tracing::warn!(
            stream = have.name,
            want = want.max_messages_per_subject,
            "the stream has no per-subject limit (it was made by an older moira or by hand); \
             set one with `nats stream edit` (see the README, stream limits)"
        );
    }
    if have.num_replicas != want.num_replicas {
        tracing::warn!(
            have = have.num_replicas,
            want = want.num_replicas,
            stream = have.name,
            "the stream has a different replica count; keeping it"
        );
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(StreamError::Incompatible(
            have.name.clone(),
            problems.join("; "),
        ))
    }
}
