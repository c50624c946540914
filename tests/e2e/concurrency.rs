//! Many deciders, several gate-keepers, and a 3-node cluster.

use moira_client::{ApproveGate, Client, DenyGate, ErrorCode, GateStatus};
use moira_tests::{gatekeeper, Cluster};

use crate::{open, terminal_events, Stack};

/// 50 clients approve or deny one gate at once: exactly one wins, every
/// other one is told it was already decided, and one terminal event is stored.
async fn fifty_deciders(urls: &[String], opener: &Client) {
    let gate = opener.open(open("alice", "Race?")).await.expect("open");
    let mut clients = Vec::new();
    for i in 0..50 {
        clients.push(
            Client::connect(&urls[i % urls.len()])
                .await
                .expect("connect"),
        );
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(50));
    let mut tasks = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let actor = format!("user{i}");
            if i % 2 == 0 {
                c.approve(ApproveGate {
                    gate_id: gate.id,
                    actor,
                    ..Default::default()
                })
                .await
            } else {
                c.deny(DenyGate {
                    gate_id: gate.id,
                    actor,
                    reason: "no".into(),
                    ..Default::default()
                })
                .await
            }
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.expect("join") {
            Ok(view) => winners.push(view),
            Err(e) => assert_eq!(
                e.code(),
                Some(ErrorCode::AlreadyDecided),
                "unexpected error: {e}"
            ),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one decider wins");
    let stored = opener.show(gate.id).await.expect("show");
    assert_eq!(stored.status, winners[0].status);
    assert_eq!(stored.decided_by, winners[0].decided_by);
    assert_eq!(terminal_events(opener, gate.id).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_deciders_single_node() {
    let s = Stack::start().await;
    fifty_deciders(&[s.url()], &s.client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_deciders_on_a_three_node_cluster() {
    let cluster = Cluster::start();
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();
    // One gate-keeper per node, the stream replicated on all three.
    let _gks: Vec<_> = urls
        .iter()
        .map(|u| gatekeeper(u, &["--replicas", "3"]))
        .collect();
    let opener = Client::connect(&cluster.urls()).await.expect("connect");
    fifty_deciders(&urls, &opener).await;
    fifty_deciders(&urls, &opener).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_answered_while_one_of_two_gatekeepers_is_killed() {
    let mut s = Stack::start().await;
    let _second = gatekeeper(&s.url(), &[]);
    let mut gates = Vec::new();
    for i in 0..20 {
        gates.push(
            s.client
                .open(open("alice", &format!("gate {i}")))
                .await
                .expect("open")
                .id,
        );
    }
    s.gk.kill();
    for (i, id) in gates.iter().enumerate() {
        let done = s
            .client
            .approve(ApproveGate {
                gate_id: *id,
                actor: "bob".into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("command {i} after the kill: {e}"));
        assert_eq!(done.status, GateStatus::Approved);
    }
    let gate = s
        .client
        .open(open("alice", "after the kill"))
        .await
        .expect("open after kill");
    assert_eq!(
        s.client.show(gate.id).await.expect("show").status,
        GateStatus::Waiting
    );
}

/// Commands land on either of two gate-keepers, each with its own cache of
/// gate states. An approval that is valid again after a push-back must
/// never be refused on a stale "you already approved".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gatekeepers_never_refuse_on_stale_state() {
    let s = Stack::start().await;
    let _second = gatekeeper(&s.url(), &[]);
    let others: Vec<Client> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(Client::connect(&s.url()).await.expect("connect"));
        }
        v
    };
    let gate = s
        .client
        .open(moira_client::OpenGate {
            approvers: vec!["bob".into(), "carol".into()],
            approvals: Some(2),
            ..open("alice", "Rounds")
        })
        .await
        .expect("open");
    for round in 0..20 {
        let c = &others[round % others.len()];
        let v = c
            .approve(ApproveGate {
                gate_id: gate.id,
                actor: "bob".into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("round {round}: bob's approval refused: {e}"));
        assert_eq!((v.status, v.approvals.len()), (GateStatus::Waiting, 1));
        let v = others[(round + 1) % others.len()]
            .push_back(moira_client::PushBackGate {
                gate_id: gate.id,
                actor: "carol".into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("round {round}: push-back refused: {e}"));
        assert_eq!(v.iteration as usize, round + 2);
    }
    let done = s
        .client
        .approve(ApproveGate {
            gate_id: gate.id,
            actor: "bob".into(),
            ..Default::default()
        })
        .await
        .expect("bob");
    let done = s
        .client
        .approve(ApproveGate {
            gate_id: done.id,
            actor: "carol".into(),
            ..Default::default()
        })
        .await
        .expect("carol");
    assert_eq!((done.status, done.iteration), (GateStatus::Approved, 21));
}
