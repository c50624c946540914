//! Everything from outside is bounded: what a gate holds, what a reply
//! carries, what the streams keep, and what a step's log takes.

use std::time::Duration;

use moira_client::protocol::gate::MAX_PUSH_BACKS;
use moira_client::protocol::wire::{gate_events, GATES_STREAM};
use moira_client::streams::{GATE_MAX_MESSAGE, RUN_MESSAGES_PER_SUBJECT};
use moira_client::{GateId, OpenGate, PushBackGate};

use crate::runs::Runs;
use crate::{hand_made, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_after_many_large_push_backs_still_arrives_and_show_reads_them_all() {
    let s = Stack::start().await;
    let names: Vec<String> = (0..14).map(|i| format!("note{i}")).collect();
    let gate = s
        .client
        .open(OpenGate {
            actor: "alice".into(),
            message: "ship?".into(),
            inputs: names.clone(),
            ..Default::default()
        })
        .await
        .expect("open");
    // About 60 KB per push-back: twenty of them outgrow a 1 MB message.
    let big = "y".repeat(3_900);
    let rounds = 20;
    let mut last = None;
    for _ in 0..rounds {
        let view = s
            .client
            .push_back(PushBackGate {
                gate_id: gate.id,
                actor: "bob".into(),
                comment: Some(big.clone()),
                inputs: names.iter().map(|n| (n.clone(), big.clone())).collect(),
                ..Default::default()
            })
            .await
            .expect("every push-back gets its reply");
        last = Some(view);
    }
    let last = last.expect("replies");
    assert_eq!(last.iteration, rounds + 1);
    assert!(
        last.push_backs_omitted > 0,
        "the last reply had to leave some out"
    );
    assert_eq!(
        last.push_backs.len() + last.push_backs_omitted as usize,
        rounds as usize
    );
    let shown = s.client.show(gate.id).await.expect("show");
    assert_eq!(shown.push_backs.len(), rounds as usize);
    assert_eq!(shown.push_backs_omitted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_pushed_back_to_its_limit_refuses_more_and_can_still_be_approved() {
    let s = Stack::start().await;
    let gate = s
        .client
        .open(crate::open("alice", "again?"))
        .await
        .expect("open");
    let pb = || PushBackGate {
        gate_id: gate.id,
        actor: "bob".into(),
        ..Default::default()
    };
    for _ in 0..MAX_PUSH_BACKS {
        s.client.push_back(pb()).await.expect("push back");
    }
    let err = s.client.push_back(pb()).await.expect_err("one too many");
    assert!(err.to_string().contains("pushed back"), "{err}");
    let shown = s.client.show(gate.id).await.expect("show");
    assert_eq!(shown.push_backs.len(), MAX_PUSH_BACKS);
    let (code, out, errs) = moira_tests::moira(
        &s.url(),
        &["gate", "approve", &gate.id.to_string(), "--as", "bob"],
    );
    assert_eq!(code, 0, "{out}{errs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_stream_itself_refuses_an_oversized_event_written_past_the_gatekeepers() {
    let s = Stack::start().await;
    let js = async_nats::jetstream::new(s.client.nats().clone());
    let mut stream = js.get_stream(GATES_STREAM).await.expect("stream");
    let info = stream.info().await.expect("info").config.clone();
    assert_eq!(info.max_message_size, GATE_MAX_MESSAGE);
    let id = GateId::new();
    let env = hand_made(
        id,
        "mallory",
        moira_client::protocol::GateEvent::GateCancelled {
            reason: Some("z".repeat(GATE_MAX_MESSAGE as usize)),
        },
        None,
    );
    let stored = js
        .publish(gate_events(&id), env.encode().into())
        .await
        .expect("publish")
        .await;
    assert!(stored.is_err(), "an oversized event was stored");
    let (events, _) = s.client.read_events(id).await.expect("read");
    assert!(events.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_subject_past_its_limit_refuses_writes_and_keeps_its_first_messages() {
    let s = Runs::start(1).await;
    let js = async_nats::jetstream::new(s.client.nats().clone());
    let mut stream = js
        .get_stream(moira_client::protocol::wire::RUNS_STREAM)
        .await
        .expect("stream");
    let info = stream.info().await.expect("info").config.clone();
    assert_eq!(info.max_messages_per_subject, RUN_MESSAGES_PER_SUBJECT);
    assert!(info.discard_new_per_subject);
    let subject = moira_client::protocol::wire::run_logs("r1", "s1");
    let mut acks = Vec::new();
    for n in 0..RUN_MESSAGES_PER_SUBJECT {
        acks.push(
            js.publish(subject.clone(), n.to_string().into())
                .await
                .expect("publish"),
        );
        if acks.len() >= 1_000 {
            for a in acks.drain(..) {
                a.await.expect("stored");
            }
        }
    }
    for a in acks {
        a.await.expect("stored");
    }
    let over = js
        .publish(subject.clone(), "late".into())
        .await
        .expect("publish")
        .await;
    assert!(over.is_err(), "a write past the limit was stored");
    let first = stream
        .direct_get_first_for_subject(subject.as_str())
        .await
        .expect("first");
    assert_eq!(&first.payload[..], b"0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_prints_past_its_log_limit_keeps_its_first_lines_and_still_finishes() {
    let s = Runs::start(1).await;
    let lines = RUN_MESSAGES_PER_SUBJECT + 50;
    let yaml = format!(
        "name: chatty\nsteps:\n  - name: talk\n    run: seq 1 {lines}\n  - name: after\n    depends_on: [talk]\n    run: echo next\n"
    );
    let run = s.submit(&yaml, &[]).await;
    let done = tokio::time::timeout(Duration::from_secs(120), s.client.wait_run(&run))
        .await
        .expect("the run ends in time")
        .expect("wait");
    assert_eq!(
        done.status,
        moira_client::protocol::run::RunStatus::Succeeded,
        "{done:?}"
    );
    s.runners[0].wait_for_line(
        "50 lines of the step's output were not stored",
        Duration::from_secs(10),
    );
    let js = async_nats::jetstream::new(s.client.nats().clone());
    let stream = js
        .get_stream(moira_client::protocol::wire::RUNS_STREAM)
        .await
        .expect("stream");
    let first = stream
        .direct_get_first_for_subject(moira_client::protocol::wire::run_logs(&run, "talk").as_str())
        .await
        .expect("first line");
    assert_eq!(&first.payload[..], b"1");
}
