//! The configs of moira's streams, buckets and shared consumers. Whichever
//! service starts first creates them from these; the others check that
//! what exists has what moira relies on (`moira_client::streams`).

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::kv;
use async_nats::jetstream::stream::{
    Config, DiscardPolicy, Republish, RetentionPolicy, StorageType,
};

use super::*;

/// The largest message the gate stream stores (an open is at most 64 KiB
/// of command plus its signature). The stream has no per-subject or byte
/// limit on purpose: message schedules need `discard: old`, so a limit
/// would silently drop the start of old trails. How many events one gate
/// holds is bounded by the gate rules instead (at most
/// [`moira_protocol::gate::MAX_PUSH_BACKS`] push-backs, one approval per
/// approver and iteration), and the store's size is the server's
/// `max_file_store`, past which writes are refused.
pub const GATE_MAX_MESSAGE: i32 = 256 * 1024;
/// The most messages one run subject or one step's log subject may hold.
/// A step that prints more keeps its first lines; a run's own events stay
/// far below (workflow size, retries and push-backs are all bounded).
pub const RUN_MESSAGES_PER_SUBJECT: i64 = 100_000;
/// Jobs waiting for one run (they are deduplicated by their reason).
pub const JOBS_PER_RUN: i64 = 1_000;

/// Where the stream republishes each stored gate event.
pub const REPUBLISH_DESTINATION: &str = "moira.live.gate.ev.{{wildcard(1)}}";

pub fn gate_stream_config(replicas: usize) -> Config {
    Config {
        name: GATES_STREAM.to_string(),
        description: Some("moira gate lifecycle events and timeout schedules".to_string()),
        subjects: vec![GATE_EVENTS_ALL.to_string(), GATE_SCHEDULES_ALL.to_string()],
        retention: RetentionPolicy::Limits,
        // Required by message schedules; nothing here is ever trimmed
        // because the stream sets no limit that would trim it.
        discard: DiscardPolicy::Old,
        max_message_size: GATE_MAX_MESSAGE,
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

pub fn runs_stream_config(replicas: usize) -> Config {
    Config {
        name: RUNS_STREAM.to_string(),
        description: Some("moira workflow run events and step output".to_string()),
        subjects: vec![RUN_EVENTS_ALL.to_string(), RUN_LOGS_ALL.to_string()],
        discard: DiscardPolicy::New,
        max_messages_per_subject: RUN_MESSAGES_PER_SUBJECT,
        discard_new_per_subject: true,
        storage: StorageType::File,
        num_replicas: replicas,
        duplicate_window: Duration::from_secs(600),
        allow_direct: true,
        deny_delete: true,
        ..Default::default()
    }
}

pub fn jobs_stream_config(replicas: usize) -> Config {
    Config {
        name: JOBS_STREAM.to_string(),
        description: Some("moira runner work queue: advance this run".to_string()),
        subjects: vec![JOBS_ALL.to_string()],
        retention: RetentionPolicy::WorkQueue,
        discard: DiscardPolicy::New,
        max_messages_per_subject: JOBS_PER_RUN,
        discard_new_per_subject: true,
        storage: StorageType::File,
        num_replicas: replicas,
        duplicate_window: Duration::from_secs(600),
        ..Default::default()
    }
}

pub fn notify_stream_config(replicas: usize) -> Config {
    Config {
        num_replicas: replicas,
        name: NOTIFY_STREAM.into(),
        description: Some("moira reminder and escalation schedules, and failed deliveries".into()),
        subjects: vec![
            NOTIFY_SCHEDULES_ALL.into(),
            NOTIFY_FIRED_ALL.into(),
            NOTIFY_FAILED_ALL.into(),
        ],
        storage: StorageType::File,
        allow_message_schedules: true,
        duplicate_window: Duration::from_secs(600),
        ..Default::default()
    }
}

/// The read model's stream: one summary per gate and per run. It keeps
/// one message per subject; a gate or run that changes status moves to
/// another subject, and its projector purges the old one.
pub fn index_stream_config(replicas: usize) -> Config {
    Config {
        name: INDEX_STREAM.into(),
        description: Some(
            "moira read model: the current summary of each gate and run, derived from the events"
                .into(),
        ),
        subjects: vec![INDEX_ALL.into()],
        max_messages_per_subject: 1,
        max_message_size: GATE_MAX_MESSAGE,
        storage: StorageType::File,
        num_replicas: replicas,
        allow_direct: true,
        ..Default::default()
    }
}

/// A projector's shared consumer: like [`shared_consumer_config`], but
/// from the first event, so a new read model starts with the whole
/// history, and with room for many events in flight.
pub fn index_consumer_config(name: &str, filter: &str) -> pull::Config {
    pull::Config {
        deliver_policy: DeliverPolicy::All,
        max_ack_pending: 20_000,
        // A projection takes milliseconds; one a dead projector held is
        // taken up again soon.
        ack_wait: Duration::from_secs(10),
        ..shared_consumer_config(name, filter)
    }
}

/// A durable pull consumer that every copy of a service shares, so each
/// new message on `filter` is handled once, by whichever copy is alive.
pub fn shared_consumer_config(name: &str, filter: &str) -> pull::Config {
    pull::Config {
        durable_name: Some(name.into()),
        filter_subject: filter.into(),
        deliver_policy: DeliverPolicy::New,
        ack_policy: AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_deliver: -1,
        ..Default::default()
    }
}

/// The runners' job queue consumer, with its ack wait (how long a runner
/// that stopped heartbeating keeps a job).
pub fn runners_consumer_config(ack_wait: Duration) -> pull::Config {
    pull::Config {
        durable_name: Some(RUNNERS_CONSUMER.into()),
        filter_subject: JOBS_ALL.into(),
        ack_policy: AckPolicy::Explicit,
        ack_wait,
        max_deliver: -1,
        ..Default::default()
    }
}

/// The approvers registry: each admin-signed version, with history.
pub fn registry_bucket_config(replicas: usize) -> kv::Config {
    kv::Config {
        bucket: REGISTRY_BUCKET.to_string(),
        description: "moira approvers registry, signed by admins".to_string(),
        history: 64,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// moira-web's used link nonces, kept for `keep` (longer than any link lives).
pub fn web_links_bucket_config(replicas: usize, keep: Duration) -> kv::Config {
    kv::Config {
        bucket: WEB_LINKS_BUCKET.to_string(),
        description: "moira-web: nonces of one-click links used".into(),
        history: 1,
        max_age: keep,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Who delivered what, kept for `keep`.
pub fn notify_deliveries_bucket_config(replicas: usize, keep: Duration) -> kv::Config {
    kv::Config {
        bucket: NOTIFY_DELIVERIES_BUCKET.to_string(),
        description: "moira notifier deliveries: who delivered what".to_string(),
        history: 1,
        max_age: keep,
        num_replicas: replicas,
        ..Default::default()
    }
}
