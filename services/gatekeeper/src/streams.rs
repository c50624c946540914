//! Creating the `MOIRA_GATES` stream, or checking that an existing one has
//! what moira relies on.

use std::time::Duration;

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::{
    Config, DiscardPolicy, Republish, RetentionPolicy, StorageType,
};
use async_nats::jetstream::Context;

use moira_protocol::subjects::{GATES_STREAM, GATE_EVENTS_ALL, GATE_SCHEDULES_ALL};

/// Where the stream republishes each stored gate event.
pub const REPUBLISH_DESTINATION: &str = "moira.live.gate.ev.{{wildcard(1)}}";

pub fn gate_stream_config(replicas: usize) -> Config {
    Config {
        name: GATES_STREAM.to_string(),
        description: Some("moira gate lifecycle events and timeout schedules".to_string()),
        subjects: vec![GATE_EVENTS_ALL.to_string(), GATE_SCHEDULES_ALL.to_string()],
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        storage: StorageType::File,
        num_replicas: replicas,
        duplicate_window: Duration::from_secs(600),
        allow_direct: true,
        allow_message_schedules: true,
        allow_atomic_publish: true,
        deny_delete: true,
        republish: Some(Republish {
            source: GATE_EVENTS_ALL.to_string(),
            destination: REPUBLISH_DESTINATION.to_string(),
            headers_only: false,
        }),
        ..Default::default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot create the {GATES_STREAM} stream: {0}")]
    Create(String),
    #[error(
        "the existing {GATES_STREAM} stream is not compatible: {0}. It was made by another tool or an older moira; \
         fix it with `nats stream edit {GATES_STREAM}` or point moira at another server"
    )]
    Incompatible(String),
}

/// Creates the gate stream if missing; otherwise verifies its settings.
pub async fn ensure_gate_stream(js: &Context, replicas: usize) -> Result<(), StreamError> {
    let want = gate_stream_config(replicas);
    match js.get_stream(GATES_STREAM).await {
        Ok(stream) => verify(&stream.cached_info().config, &want),
        Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(ref je) if je.code() == 404) => {
            js.create_stream(want)
                .await
                .map(|_| ())
                .map_err(|e| StreamError::Create(e.to_string()))
        }
        Err(e) => Err(StreamError::Create(e.to_string())),
    }
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
    if have.retention != RetentionPolicy::Limits {
        problems.push("retention is not limits".to_string());
    }
    if have.num_replicas != want.num_replicas {
        tracing::warn!(
            have = have.num_replicas,
            want = want.num_replicas,
            "{GATES_STREAM} has a different replica count; keeping it"
        );
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(StreamError::Incompatible(problems.join("; ")))
    }
}
