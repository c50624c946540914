//! Waiting: the live feed, and decisions made while a waiter was cut off.

use std::time::Duration;

use moira_client::{ApproveGate, Client, DenyGate, GateStatus};
use moira_tests::{retry_until_served, Proxy};

use crate::{open, Stack};

const WAIT: Option<Duration> = Some(Duration::from_secs(30));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_waiters_in_one_process_each_see_their_own_decision() {
    let s = Stack::start().await;
    let waiter = Client::connect(&s.url()).await.expect("connect");
    let mut ids = Vec::new();
    for i in 0..200 {
        ids.push(
            s.client
                .open(open("alice", &format!("gate {i}")))
                .await
                .expect("open")
                .id,
        );
    }
    let mut tasks = Vec::new();
    for id in &ids {
        let (w, id) = (waiter.clone(), *id);
        tasks.push(tokio::spawn(async move { w.wait(id, WAIT).await }));
    }
    for (i, id) in ids.iter().enumerate() {
        if i % 2 == 0 {
            s.client
                .approve(ApproveGate {
                    gate_id: *id,
                    actor: "bob".into(),
                    ..Default::default()
                })
                .await
                .expect("approve");
        } else {
            s.client
                .deny(DenyGate {
                    gate_id: *id,
                    actor: "bob".into(),
                    reason: "odd".into(),
                    ..Default::default()
                })
                .await
                .expect("deny");
        }
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let v = t.await.expect("join").expect("wait");
        let want = if i % 2 == 0 {
            GateStatus::Approved
        } else {
            GateStatus::Denied
        };
        assert_eq!(v.status, want, "gate {i}");
    }
}

fn received(c: &Client) -> u64 {
    c.nats()
        .statistics()
        .in_messages
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// Follows `ids` on `c`, decides every gate in `all`, and returns how many
/// messages `c` received while the decisions were made.
async fn decide_all_while_following(
    s: &Stack,
    c: &Client,
    ids: &[moira_client::GateId],
    all: &[moira_client::GateId],
) -> u64 {
    let mut followers = Vec::new();
    for id in ids {
        followers.push(c.follow(*id).await.expect("follow"));
    }
    let before = received(c);
    for id in all {
        s.client
            .approve(ApproveGate {
                gate_id: *id,
                actor: "bob".into(),
                ..Default::default()
            })
            .await
            .expect("approve");
    }
    for mut f in followers {
        let seen = tokio::time::timeout(
            Duration::from_secs(30),
            f.wait_until(|g| g.status.is_terminal()),
        )
        .await
        .expect("in time")
        .expect("follow");
        assert_eq!(seen.status, GateStatus::Approved);
    }
    received(c) - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_receives_only_the_gates_it_follows_until_past_its_limit_it_takes_the_whole_feed()
{
    let s = Stack::start().await;
    let mut all = Vec::new();
    for i in 0..200 {
        all.push(
            s.client
                .open(open("alice", &format!("gate {i}")))
                .await
                .expect("open")
                .id,
        );
    }
    let (first, second) = all.split_at(100);

    // Ten gates followed, a hundred decided: one decision each arrives,
    // not the other ninety.
    let few = Client::connect(&s.url()).await.expect("connect");
    let got = decide_all_while_following(&s, &few, &first[..10], first).await;
    assert!(!few.takes_whole_live_feed());
    assert!(
        (10..=20).contains(&got),
        "following 10 of 100 decided gates received {got} messages"
    );

    // Past a limit of five the client takes the whole feed (cheaper than
    // thousands of subscriptions) and still sees every decision it follows.
    let many = Client::connect(&s.url()).await.expect("connect");
    many.set_per_gate_limit(5);
    let got = decide_all_while_following(&s, &many, &second[..10], second).await;
    assert!(many.takes_whole_live_feed());
    assert!(
        got >= 100,
        "the whole feed gave {got} messages for 100 decisions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_learns_a_decision_made_while_it_was_disconnected() {
    let s = Stack::start().await;
    let proxy = Proxy::start(s.server.port).await;
    let waiter = Client::connect(&proxy.url())
        .await
        .expect("connect through proxy");
    let gate = s.client.open(open("alice", "Deploy?")).await.expect("open");
    let mut follower = waiter.follow(gate.id).await.expect("follow");
    assert_eq!(
        follower.current().map(|g| g.status),
        Some(GateStatus::Waiting)
    );

    proxy.cut();
    s.client
        .approve(ApproveGate {
            gate_id: gate.id,
            actor: "bob".into(),
            ..Default::default()
        })
        .await
        .expect("approve");
    // The approval's live message went nowhere: the waiter still has the old state.
    assert_eq!(
        follower.current().map(|g| g.status),
        Some(GateStatus::Waiting)
    );
    proxy.restore();
    let seen = tokio::time::timeout(
        Duration::from_secs(30),
        follower.wait_until(|g| g.status.is_terminal()),
    )
    .await
    .expect("the waiter re-read the gate after reconnecting")
    .expect("follow");
    assert_eq!(seen.status, GateStatus::Approved);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_survives_a_broker_restart() {
    let mut s = Stack::start().await;
    let proxy = Proxy::start(s.server.port).await;
    let waiter = Client::connect(&proxy.url())
        .await
        .expect("connect through proxy");
    let gate = s.client.open(open("alice", "Deploy?")).await.expect("open");
    // The waiter has read the gate and follows it before the restart (a
    // wait whose first read were cut off would rightly fail instead).
    let mut follower = waiter.follow(gate.id).await.expect("follow");
    let wait = tokio::spawn(async move {
        tokio::time::timeout(
            WAIT.expect("a bound"),
            follower.wait_until(|g| g.status.is_terminal()),
        )
        .await
        .map(|r| r.map(|g| g.status))
    });

    proxy.cut();
    s.server.stop();
    s.server.restart();
    // The gate-keeper reconnects by itself; decide while the waiter is still cut off.
    let decider = Client::connect(&s.url()).await.expect("connect");
    let decided = retry_until_served(Duration::from_secs(30), || {
        decider.approve(ApproveGate {
            gate_id: gate.id,
            actor: "bob".into(),
            ..Default::default()
        })
    })
    .await
    .expect("approve after restart");
    assert_eq!(decided.status, GateStatus::Approved);
    proxy.restore();
    let woken = wait.await.expect("join").expect("in time").expect("wait");
    assert_eq!(woken, GateStatus::Approved);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_live_feed_drops_the_decision_as_a_slow_consumer_still_sees_it() {
    let s = Stack::start().await;
    // A small buffer, so a burst on the live feed overflows it and the
    // client drops messages (async-nats reports a slow consumer).
    let slow = Client::connect_buffered(&s.url(), "slow", &moira_client::Auth::default(), 64)
        .await
        .expect("connect");
    let gate = s.client.open(open("alice", "ship?")).await.expect("open");
    let waiter = {
        let slow = slow.clone();
        tokio::spawn(async move { slow.wait(gate.id, Some(Duration::from_secs(60))).await })
    };
    // Wait until the waiter follows the gate (its read is done).
    let follower = slow.follow(gate.id).await.expect("follow");
    drop(follower);
    let before = slow.resyncs();
    let flood = Client::connect(&s.url()).await.expect("connect");
    // Noise on the followed gate's own live subject (the waiter subscribes
    // to just that), with sequence headers that say "already seen", so only
    // the slow-consumer resync can bring the decision back once dropped.
    let noise = moira_client::protocol::wire::live_gate_events(&gate.id);
    let mut stale = async_nats::HeaderMap::new();
    stale.insert(moira_client::protocol::wire::HDR_SEQUENCE, "0");
    stale.insert(moira_client::protocol::wire::HDR_LAST_SEQUENCE, "0");
    // The decision lands in the middle of a burst of live messages.
    for round in 0..40 {
        for _ in 0..5_000 {
            flood
                .nats()
                .publish_with_headers(
                    noise.clone(),
                    stale.clone(),
                    bytes::Bytes::from_static(b"noise"),
                )
                .await
                .expect("publish");
        }
        if round == 20 {
            s.client
                .approve(ApproveGate {
                    gate_id: gate.id,
                    actor: "bob".into(),
                    ..Default::default()
                })
                .await
                .expect("approve");
        }
    }
    flood.nats().flush().await.expect("flush");
    let seen = waiter
        .await
        .expect("join")
        .expect("the waiter sees the decision");
    assert_eq!(seen.status, GateStatus::Approved);
    assert!(
        slow.resyncs() > before,
        "the burst never overflowed the buffer"
    );
}
