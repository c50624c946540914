//! The read model: `gate list` and `run list` read one summary per gate
//! from `MOIRA_INDEX`, which must always converge to the fold of the
//! events, whatever happens to its projectors or to the entries.

use std::time::Duration;

use moira_client::protocol::wire::{
    index_entry, GATES_STREAM, INDEX_GATE, INDEX_GATES_CONSUMER, INDEX_STREAM,
};
use moira_client::{ApproveGate, Client, DenyGate, GateStatus, ListFilter};
use moira_tests::{gatekeeper, moira, NatsServer};
use serde_json::Value;

use crate::{open, Stack};

const SERVED: Duration = Duration::from_secs(30);

fn all() -> ListFilter {
    ListFilter {
        status: None,
        run_id: None,
    }
}

/// Waits until the projector consumer has nothing pending or unacked.
async fn projected(client: &Client, within: Duration) {
    let js = async_nats::jetstream::new(client.nats().clone());
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let stream = js.get_stream(GATES_STREAM).await.expect("stream");
        let info = stream
            .consumer_info(INDEX_GATES_CONSUMER)
            .await
            .expect("consumer");
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the projector did not catch up: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn json(out: (i32, String, String)) -> Value {
    assert_eq!(out.0, 0, "{}", out.2);
    serde_json::from_str(&out.1).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_list_reads_the_read_model_and_admin_reindex_repairs_stale_missing_and_orphan_entries()
{
    let s = Stack::start().await;
    let url = s.url();
    let mut ids = Vec::new();
    for i in 0..6 {
        let g = s
            .client
            .open(open("alice", &format!("gate {i}")))
            .await
            .expect("open");
        ids.push(g.id);
    }
    for id in &ids[..2] {
        s.client
            .approve(ApproveGate {
                gate_id: *id,
                actor: "bob".into(),
                ..Default::default()
            })
            .await
            .expect("approve");
    }
    s.client
        .deny(DenyGate {
            gate_id: ids[2],
            actor: "bob".into(),
            reason: "no".into(),
            ..Default::default()
        })
        .await
        .expect("deny");

    // The list waits for the projector, so it is right straight away.
    let waiting = json(moira(&url, &["--json", "gate", "list"]));
    assert_eq!(waiting.as_array().map(Vec::len), Some(3), "{waiting}");
    let from_index = json(moira(&url, &["--json", "gate", "list", "--status", "all"]));
    let from_events = json(moira(
        &url,
        &["--json", "gate", "list", "--status", "all", "--from-events"],
    ));
    assert_eq!(from_index, from_events);
    // And it did read the model: every gate has its entry.
    projected(&s.client, Duration::from_secs(20)).await;
    let indexed = s
        .client
        .list_indexed(&all())
        .await
        .expect("list")
        .expect("index");
    assert_eq!(indexed.len(), 6);
    assert_eq!(
        s.client.list_from_events(&all()).await.expect("fold"),
        indexed
    );
    let (code, out, err) = moira(&url, &["admin", "reindex", "--check"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("gates: 6 checked, 0 differ, 0 orphans"),
        "{out}"
    );

    // Damage the model: a stale "waiting" entry for an approved gate, one
    // gate's entry gone, and an entry for a gate that never existed.
    let js = async_nats::jetstream::new(s.client.nats().clone());
    let approved = ids[0].to_string();
    let stale = serde_json::to_vec(&waiting[0]).expect("json");
    js.publish(
        index_entry(INDEX_GATE, "waiting", &approved),
        stale.clone().into(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    let index = js.get_stream(INDEX_STREAM).await.expect("index");
    index
        .purge()
        .filter(index_entry(INDEX_GATE, "waiting", &ids[5].to_string()))
        .await
        .expect("purge");
    let orphan = moira_client::GateId::new().to_string();
    js.publish(index_entry(INDEX_GATE, "denied", &orphan), stale.into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let damaged = s
        .client
        .list_indexed(&all())
        .await
        .expect("list")
        .expect("index");
    assert_ne!(
        damaged,
        s.client.list_from_events(&all()).await.expect("fold")
    );

    let (code, out, _) = moira(&url, &["admin", "reindex", "--check"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("gates: 6 checked, 2 differ, 1 orphans"),
        "{out}"
    );
    let (code, out, err) = moira(&url, &["admin", "reindex"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("gates: 6 checked, 2 repaired, 1 removed"),
        "{out}"
    );
    let (code, out, _) = moira(&url, &["admin", "reindex", "--check"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        s.client
            .list_indexed(&all())
            .await
            .expect("list")
            .expect("index"),
        s.client.list_from_events(&all()).await.expect("fold")
    );
    let waiting_now = s
        .client
        .list_indexed(&ListFilter {
            status: Some(GateStatus::Waiting),
            run_id: None,
        })
        .await
        .expect("list")
        .expect("index");
    assert_eq!(waiting_now.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_killed_mid_way_leaves_a_read_model_that_converges_to_the_fold_of_the_events() {
    let server = NatsServer::start();
    let url = server.url();
    let mut first = gatekeeper(&url, &[]);
    let second = gatekeeper(&url, &[]);
    let client = Client::connect(&url).await.expect("connect");

    // Load from many tasks; one gate-keeper (and its projector) is killed
    // while gates open and end.
    let opened = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let c = client.clone();
        let opened = opened.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..40 {
                // Resent with the same command id, so a retry after a lost
                // reply has no second effect.
                let cmd = open("alice", &format!("load {t}/{i}"));
                let g = moira_tests::retry_until_served(SERVED, || c.open(cmd.clone()))
                    .await
                    .expect("open");
                opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i % 3 != 0 {
                    let cmd = ApproveGate {
                        gate_id: g.id,
                        actor: "bob".into(),
                        ..Default::default()
                    };
                    moira_tests::retry_until_served(SERVED, || c.approve(cmd.clone()))
                        .await
                        .expect("approve");
                }
            }
        }));
    }
    // A third of the way in.
    while opened.load(std::sync::atomic::Ordering::Relaxed) < 100 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.kill();
    for t in tasks {
        t.await.expect("load");
    }
    drop(first);

    // What the dead projector held unacknowledged comes to the survivor
    // after the consumer's ack wait.
    projected(&client, Duration::from_secs(60)).await;
    let folded = client.list_from_events(&all()).await.expect("fold");
    assert_eq!(folded.len(), 320);
    assert_eq!(
        client
            .list_indexed(&all())
            .await
            .expect("list")
            .expect("index"),
        folded
    );
    let waiting = client
        .list_indexed(&ListFilter {
            status: Some(GateStatus::Waiting),
            run_id: None,
        })
        .await
        .expect("list")
        .expect("index");
    assert_eq!(waiting.len(), 8 * 14);
    let (code, out, _) = moira(&url, &["admin", "reindex", "--check"]);
    assert_eq!(code, 0, "{out}");
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_read_model_is_projected_from_the_whole_history_when_a_gatekeeper_starts() {
    let s = Stack::start().await;
    for i in 0..5 {
        s.client
            .open(open("alice", &format!("old {i}")))
            .await
            .expect("open");
    }
    projected(&s.client, Duration::from_secs(20)).await;
    let before = s.client.list_from_events(&all()).await.expect("fold");
    // Drop the read model entirely; a gate-keeper started now rebuilds it.
    let js = async_nats::jetstream::new(s.client.nats().clone());
    js.delete_stream(INDEX_STREAM).await.expect("delete");
    let _again = gatekeeper(&s.url(), &[]);
    projected(&s.client, Duration::from_secs(20)).await;
    assert_eq!(
        s.client
            .list_indexed(&all())
            .await
            .expect("list")
            .expect("index"),
        before
    );
}
