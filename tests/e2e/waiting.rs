//! Waiting: the live feed, and decisions made while a waiter was cut off.

use std::time::Duration;

use moira_client::{ApproveGate, Client, DenyGate, GateStatus};
use moira_tests::{retry_until_served, Proxy};

use crate::{open, Stack};

const WAIT: Option<Duration> = Some(Duration::from_secs(30));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_waiters_in_one_process_share_one_subscription() {
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
