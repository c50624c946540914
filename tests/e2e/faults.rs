//! Correctness under faults and upgrades: what a writer does with history
//! it does not understand, and reads that drive actions.

use moira_client::protocol::wire::{gate_events, HDR_EVENT};
use moira_client::{ApproveGate, ErrorCode, GateStatus};

use crate::{open, Stack};

/// A gate event of a kind this build does not know, as a newer
/// gate-keeper might write it after a rolling upgrade.
fn future_event(kind: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0xa6];
    b.extend(b"schema");
    b.push(0x01);
    b.push(0xa5);
    b.extend(b"event");
    b.push(0x81);
    b.push(0xa0 | u8::try_from(kind.len()).expect("a short kind"));
    b.extend(kind.as_bytes());
    b.push(0x01);
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gatekeeper_refuses_to_decide_on_history_it_does_not_understand() {
    let s = Stack::start().await;
    let gate = s.client.open(open("alice", "Ship?")).await.expect("open");
    let js = async_nats::jetstream::new(s.client.nats().clone());
    let mut h = async_nats::HeaderMap::new();
    h.insert(HDR_EVENT, "GateEscalated");
    js.publish_with_headers(
        gate_events(&gate.id),
        h,
        future_event("GateEscalated").into(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    let before = s.client.read_events(gate.id).await.expect("read").0.len();
    let e = s
        .client
        .approve(ApproveGate {
            gate_id: gate.id,
            actor: "bob".into(),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Some(ErrorCode::Unavailable), "{e}");
    assert!(e.to_string().contains("GateEscalated"), "{e}");
    assert_eq!(
        s.client.read_events(gate.id).await.expect("read").0.len(),
        before,
        "nothing stored"
    );
    // Readers skip what they do not know; the gate still shows as it was.
    let g = s.client.show(gate.id).await.expect("show");
    assert_eq!(g.status, GateStatus::Waiting);
}

/// The stream's leader and its replicas, once every replica is current.
async fn placement(js: &async_nats::jetstream::Context, stream: &str) -> (String, Vec<String>) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let mut s = js.get_stream(stream).await.expect("stream");
        let info = s.info().await.expect("info");
        if let Some(c) = &info.cluster {
            if let Some(leader) = &c.leader {
                if c.replicas.len() == 2 && c.replicas.iter().all(|r| r.current) {
                    return (
                        leader.clone(),
                        c.replicas.iter().map(|r| r.name.clone()).collect(),
                    );
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no current R3 placement: {:?}",
            info.cluster
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Three nats-servers whose third node reaches the other two only through
/// proxies, so a test can cut it off from the cluster while it keeps
/// serving its own clients: a replica that falls behind and does not know.
struct SplittableCluster {
    _nodes: Vec<moira_tests::Proc>,
    ports: Vec<u16>,
    names: Vec<String>,
    proxies: Vec<moira_tests::Proxy>,
    _stores: Vec<moira_testkit::TempDir>,
}

impl SplittableCluster {
    /// Starts the cluster; a port taken between picking it and binding it
    /// (another test's process) starts it again on new ports.
    async fn start() -> SplittableCluster {
        for _ in 0..3 {
            if let Some(c) = Self::try_start().await {
                return c;
            }
        }
        panic!("the split cluster's ports kept being taken by other processes");
    }

    async fn try_start() -> Option<SplittableCluster> {
        use moira_testkit::free_port;
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let cports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        // n1 and n2 reach n3 through one proxy each; n3 reaches them
        // through two more.
        let to_n3_from_n1 = moira_tests::Proxy::start(cports[2]).await;
        let to_n3_from_n2 = moira_tests::Proxy::start(cports[2]).await;
        let from_n3_to_n1 = moira_tests::Proxy::start(cports[0]).await;
        let from_n3_to_n2 = moira_tests::Proxy::start(cports[1]).await;
        let url = |p: u16| format!("nats://127.0.0.1:{p}");
        let routes = [
            vec![url(cports[1]), url(to_n3_from_n1.port)],
            vec![url(cports[0]), url(to_n3_from_n2.port)],
            vec![url(from_n3_to_n1.port), url(from_n3_to_n2.port)],
        ];
        let server = moira_testkit::find_nats_server().expect("nats-server").path;
        let mut nodes = Vec::new();
        let mut stores = Vec::new();
        let mut names = Vec::new();
        for i in 0..3 {
            let store = moira_testkit::TempDir::new("moira-split").expect("tmp");
            let name = format!("s{}-{}", i + 1, ports[i]);
            let p = moira_tests::ProcBuilder::new(&server, &name)
                .args(["-a", "127.0.0.1", "-p", &ports[i].to_string(), "-js", "-sd"])
                .arg(store.path())
                .args(["--server_name", &name])
                .args(["--cluster_name", &format!("split-{}", ports[0])])
                .args(["--cluster", &url(cports[i])])
                .args(["--routes", &routes[i].join(",")])
                .spawn()
                .expect("spawn nats-server");
            nodes.push(p);
            stores.push(store);
            names.push(name);
        }
        for n in &nodes {
            let line = n.try_wait_for(
                &["Server is ready", "address already in use"],
                1,
                std::time::Duration::from_secs(20),
            );
            match line {
                Some(l) if l.contains("address already in use") => return None,
                Some(_) => {}
                None => panic!("a split cluster node never became ready: {:?}", n.output()),
            }
        }
        // Usable once the nodes elected a JetStream meta leader, as the
        // shared cluster fixture waits; a route port taken after "ready"
        // shows up here instead, and the cluster starts again.
        let leader = [
            "new metadata leader",
            "is new JetStream cluster metadata leader",
        ];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let elected = 'wait: loop {
            for n in &nodes {
                if n.try_wait_for(&leader, 1, std::time::Duration::from_millis(100))
                    .is_some()
                {
                    break 'wait true;
                }
            }
            if std::time::Instant::now() >= deadline {
                break false;
            }
        };
        if !elected {
            eprintln!("the split cluster elected no meta leader; starting it again on new ports");
            return None;
        }
        Some(SplittableCluster {
            _nodes: nodes,
            ports,
            names,
            proxies: vec![to_n3_from_n1, to_n3_from_n2, from_n3_to_n1, from_n3_to_n2],
            _stores: stores,
        })
    }

    fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.ports[i])
    }

    /// Cuts the third node off from the other two (it stays up).
    fn split(&self) {
        self.proxies.iter().for_each(moira_tests::Proxy::cut);
    }

    fn heal(&self) {
        self.proxies.iter().for_each(moira_tests::Proxy::restore);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_read_on_a_cut_off_replica_never_returns_less_than_was_acknowledged() {
    use moira_client::protocol::wire::GATES_STREAM;
    let c = SplittableCluster::start().await;
    let all = (0..3).map(|i| c.url(i)).collect::<Vec<_>>().join(",");
    let admin = moira_client::Client::connect(&all).await.expect("connect");
    let js = async_nats::jetstream::new(admin.nats().clone());
    // Placed on all three nodes; its leader must not be the node we cut.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match moira_client::streams::ensure_gate_stream(&js, 3).await {
            Ok(()) => break,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("stream not yet: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => panic!("R3 stream: {e}"),
        }
    }
    let (mut leader, _) = placement(&js, GATES_STREAM).await;
    while leader == c.names[2] {
        let _ = admin
            .nats()
            .request(
                format!("$JS.API.STREAM.LEADER.STEPDOWN.{GATES_STREAM}"),
                "".into(),
            )
            .await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        leader = placement(&js, GATES_STREAM).await.0;
    }
    let writer =
        async_nats::jetstream::new(async_nats::connect(c.url(0)).await.expect("connect n1"));
    let reader = moira_client::Client::connect(&c.url(2))
        .await
        .expect("connect n3");
    let gate = moira_client::GateId::new();
    let subject = gate_events(&gate);
    let first = writer
        .publish(subject.clone(), "before".into())
        .await
        .expect("publish")
        .await
        .expect("stored")
        .sequence;
    // n3 has it too before the split.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while reader
        .read_subject(GATES_STREAM, &subject)
        .await
        .map(|(m, _)| m.len())
        .unwrap_or(0)
        < 1
    {
        assert!(tokio::time::Instant::now() < deadline, "n3 never had it");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    c.split();
    // Acknowledged by n1 and n2: a quorum without n3.
    let mut last = first;
    for i in 0..5 {
        last = writer
            .publish(subject.clone(), format!("after {i}").into())
            .await
            .expect("publish")
            .await
            .expect("stored by a quorum")
            .sequence;
    }
    // What n3 answers while cut off: a plain read may be short (that is
    // the defect); a fresh one is complete or an error, never short.
    let plain = reader.read_subject(GATES_STREAM, &subject).await;
    let fresh = reader.read_subject_fresh(GATES_STREAM, &subject).await;
    if let Ok((msgs, _)) = &plain {
        eprintln!("cut-off replica, plain read: {} of 6 messages", msgs.len());
    }
    match &fresh {
        Ok((msgs, seen)) => {
            assert_eq!(msgs.len(), 6, "a fresh read that answers is complete");
            assert_eq!(*seen, last);
        }
        Err(e) => eprintln!("cut-off replica, fresh read refused: {e}"),
    }
    c.heal();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match reader.read_subject_fresh(GATES_STREAM, &subject).await {
            Ok((msgs, seen)) => {
                assert_eq!(msgs.len(), 6, "complete after the heal");
                assert_eq!(seen, last);
                break;
            }
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "{e}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notifier_that_starts_first_on_a_cluster_creates_replicated_streams() {
    let cluster = moira_tests::Cluster::start();
    let notifier =
        moira_tests::ProcBuilder::new(moira_tests::bin("moira-notifier"), "moira-notifier")
            .args(["--nats-url", &cluster.urls(), "--replicas", "3"])
            .env("MOIRA_LOG", "info")
            .spawn()
            .expect("spawn notifier");
    notifier.wait_for_line("moira-notifier ready", std::time::Duration::from_secs(30));
    let client = moira_client::Client::connect(&cluster.urls())
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client.nats().clone());
    for stream in ["MOIRA_GATES", "MOIRA_RUNS", "MOIRA_NOTIFY"] {
        let mut s = js.get_stream(stream).await.expect("stream");
        let replicas = s.info().await.expect("info").config.num_replicas;
        assert_eq!(replicas, 3, "{stream}");
    }
}
