//! Fault injection on a 3-node cluster: two gate-keepers, two runners and a
//! notifier under a mixed load, while a node is killed and restarted,
//! another is frozen, and a gate-keeper, a runner and the notifier are
//! killed. Afterwards every promise is checked: no lost or double
//! decision, every timeout fired, every waiter saw the final state, every
//! run finished and no finished step ran again, every decided gate was
//! notified (and how often twice is printed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use moira_client::protocol::event::OnTimeout;
use moira_client::protocol::run::RunStatus;
use moira_client::protocol::CommandId;
use moira_client::{
    ApproveGate, Client, ClientError, DenyGate, ErrorCode, GateId, GateStatus, GateView, OpenGate,
};
use moira_testkit::TempDir;
use moira_tests::{bin, Cluster, Proc, ProcBuilder};

use crate::notify::{webhook, Receiver};

/// How long any one part of the load may take, faults included.
const PATIENCE: Duration = Duration::from_secs(120);
/// Commands sent again after a transient failure: how hard the faults hit.
static RETRIES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn service(name: &str, args: &[&str]) -> Proc {
    let p = ProcBuilder::new(bin(name), name)
        .args(args)
        .env("MOIRA_LOG", "info")
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    p.wait_for_line(&format!("{name} ready"), Duration::from_secs(60));
    p
}

struct Services {
    urls: String,
    dir: PathBuf,
    notify_config: PathBuf,
}

impl Services {
    fn gatekeeper(&self) -> Proc {
        service(
            "moira-gatekeeper",
            &["--nats-url", &self.urls, "--replicas", "3"],
        )
    }

    fn runner(&self, n: usize) -> Proc {
        let work = self.dir.join(format!("work{n}"));
        service(
            "moira-runner",
            &[
                "--nats-url",
                &self.urls,
                "--replicas",
                "3",
                "--ack-wait",
                "4s",
                "--work-dir",
                &work.display().to_string(),
            ],
        )
    }

    fn notifier(&self) -> Proc {
        service(
            "moira-notifier",
            &[
                "--nats-url",
                &self.urls,
                "--replicas",
                "3",
                "--config",
                &self.notify_config.display().to_string(),
            ],
        )
    }
}

/// A transient failure: the broker or a gate-keeper did not answer, or
/// writes kept racing. The command is sent again with the same id.
fn transient(e: &ClientError) -> bool {
    match e.code() {
        None => !matches!(e, ClientError::NotFound(_)),
        Some(c) => matches!(
            c,
            ErrorCode::Unavailable | ErrorCode::Internal | ErrorCode::Conflict
        ),
    }
}

/// Sends one decision until it gets a final answer, always with the same
/// command id, as a careful tool would.
async fn decide(
    client: &Client,
    gate: GateId,
    approve: bool,
    actor: &str,
) -> Result<GateView, ErrorCode> {
    let id = Some(CommandId::new());
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let r = if approve {
            client
                .approve(ApproveGate {
                    id,
                    gate_id: gate,
                    actor: actor.into(),
                    ..Default::default()
                })
                .await
        } else {
            client
                .deny(DenyGate {
                    id,
                    gate_id: gate,
                    actor: actor.into(),
                    reason: "no".into(),
                    ..Default::default()
                })
                .await
        };
        match r {
            Ok(v) => return Ok(v),
            // A run's gate that its runner has not opened yet.
            Err(e)
                if e.code() == Some(ErrorCode::NotFound)
                    || matches!(e, ClientError::NotFound(_)) => {}
            Err(e) if transient(&e) => {
                RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => return Err(e.code().unwrap_or(ErrorCode::Internal)),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a decision on {gate} never got an answer"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn open_gate(client: &Client, spec: OpenGate) -> GateView {
    let spec = OpenGate {
        id: Some(CommandId::new()),
        gate_id: Some(GateId::new()),
        ..spec
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match client.open(spec.clone()).await {
            Ok(v) => return v,
            Err(e) if transient(&e) && tokio::time::Instant::now() < deadline => {
                RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("opening a gate: {e}"),
        }
    }
}

async fn submit(client: &Client, yaml: &str) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match client.submit_run(yaml, &BTreeMap::new(), "alice").await {
            Ok(id) => return id,
            // No runner answered (one is being restarted) or no quorum yet.
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(300)).await
            }
            Err(e) => panic!("submitting a run: {e}"),
        }
    }
}

/// Reads until the broker answers (a node may still be electing).
async fn settled<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

const WORKFLOW: &str = "name: chaos
steps:
  - name: a
    retries: 5
    run: |
      sleep 0.3
      echo x >> {dir}/$MOIRA_RUN_ID.a.$MOIRA_ATTEMPT
  - name: approve
    use: moira.gate
    with:
      message: go on?
    depends_on: [a]
  - name: b
    retries: 5
    depends_on: [approve]
    run: |
      sleep 0.3
      echo x >> {dir}/$MOIRA_RUN_ID.b.$MOIRA_ATTEMPT
";

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_losing_nodes_and_services_under_load_keeps_every_promise() {
    let mut cluster = Cluster::start();
    let dir = TempDir::new("moira-chaos").expect("tmp");
    let (rx, port) = Receiver::start().await;
    let notify_config = dir.path().join("notify.toml");
    std::fs::write(
        &notify_config,
        format!(
            "{}[[rules]]\nkinds = [\"approved\", \"denied\", \"timed_out\"]\nchannels = [\"hook\"]\n",
            webhook("hook", port, "/hook")
        ),
    )
    .expect("write config");
    let svc = Services {
        urls: cluster.urls(),
        dir: dir.path().to_path_buf(),
        notify_config,
    };
    let mut gks = vec![svc.gatekeeper(), svc.gatekeeper()];
    let mut runners = vec![svc.runner(0), svc.runner(1)];
    let mut notifier = svc.notifier();
    let client = Client::connect(&svc.urls).await.expect("connect");
    let waiter = Client::connect(&svc.urls).await.expect("connect");

    // The load runs in tasks while the faults happen below.
    let load = {
        let (client, waiter) = (client.clone(), waiter.clone());
        let workflow = WORKFLOW.replace("{dir}", &dir.path().display().to_string());
        let url = svc.urls.clone();
        tokio::spawn(async move {
            let mut raced = Vec::new();
            let mut timed = Vec::new();
            let mut runs = Vec::new();
            let mut waiters = Vec::new();
            let mut cli_waiters = Vec::new();
            // About 15 s of load, over which the faults below are spread.
            for wave in 0..30 {
                // Two gates with racing deciders, one that times out.
                for _ in 0..2 {
                    let g = open_gate(&client, crate::open("alice", "raced")).await;
                    let deciders: Vec<_> = [(true, "bob"), (true, "carol"), (false, "dave")]
                        .into_iter()
                        .enumerate()
                        .map(|(i, (approve, who))| {
                            let c = client.clone();
                            tokio::spawn(async move {
                                // Staggered, so deciders meet the faults at different points.
                                tokio::time::sleep(Duration::from_millis(150 * i as u64)).await;
                                decide(&c, g.id, approve, who).await
                            })
                        })
                        .collect();
                    raced.push((g.id, deciders));
                    let w = waiter.clone();
                    waiters.push((
                        g.id,
                        tokio::spawn(async move { w.wait(g.id, Some(PATIENCE)).await }),
                    ));
                }
                let t = open_gate(
                    &client,
                    OpenGate {
                        timeout_ms: Some(2_000),
                        on_timeout: Some(OnTimeout::Fail),
                        ..crate::open("alice", "timed")
                    },
                )
                .await;
                timed.push(t.id);
                let w = waiter.clone();
                waiters.push((
                    t.id,
                    tokio::spawn(async move { w.wait(t.id, Some(PATIENCE)).await }),
                ));
                if wave % 6 == 0 {
                    // A waiter in its own process, through the CLI.
                    let p = ProcBuilder::new(bin("moira"), "moira gate wait")
                        .args([
                            "--nats-url",
                            &url,
                            "gate",
                            "wait",
                            &t.id.to_string(),
                            "--timeout",
                            "120s",
                        ])
                        .spawn()
                        .expect("spawn moira gate wait");
                    cli_waiters.push((t.id, p));
                }
                if wave % 3 == 0 {
                    let run = submit(&client, &workflow).await;
                    let c = client.clone();
                    let gate = GateId::for_step(&run, "approve", 1);
                    let approver = tokio::spawn(async move { decide(&c, gate, true, "bob").await });
                    runs.push((run, gate, approver));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            (raced, timed, runs, waiters, cli_waiters)
        })
    };

    // The faults, one after another, while the load runs.
    let pause = |secs: u64| tokio::time::sleep(Duration::from_secs(secs));
    pause(1).await;
    tokio::task::block_in_place(|| cluster.nodes[1].kill());
    pause(2).await;
    tokio::task::block_in_place(|| cluster.nodes[1].restart());
    pause(1).await;
    cluster.nodes[2].pause();
    pause(3).await;
    cluster.nodes[2].resume();
    pause(1).await;
    gks[0].kill();
    gks[0] = tokio::task::block_in_place(|| svc.gatekeeper());
    pause(1).await;
    // Steps run most of the time: this cuts one off mid-step.
    runners[0].kill();
    runners[0] = tokio::task::block_in_place(|| svc.runner(0));
    pause(1).await;
    notifier.kill();
    notifier = tokio::task::block_in_place(|| svc.notifier());

    let (raced, timed, runs, waiters, mut cli_waiters) = load.await.expect("the load ran");

    // Waiters first: each returns once its gate has ended (the last timed
    // gates may still be waiting for their deadline).
    let mut seen: BTreeMap<GateId, GateStatus> = BTreeMap::new();
    for (gate, w) in waiters {
        let v = w
            .await
            .expect("waiter")
            .unwrap_or_else(|e| panic!("waiting on {gate}: {e}"));
        seen.insert(gate, v.status);
    }
    // Every acknowledged decision is the gate's final state, and exactly
    // one decider per gate got a terminal ok.
    let mut finals: BTreeMap<GateId, GateStatus> = BTreeMap::new();
    for (gate, deciders) in raced {
        let mut oks = Vec::new();
        for d in deciders {
            match d.await.expect("decider") {
                Ok(v) if v.status.is_terminal() => oks.push(v.status),
                Ok(v) => panic!("a decision left {gate} {:?}", v.status),
                Err(code) => assert_eq!(code, ErrorCode::AlreadyDecided, "{gate}"),
            }
        }
        let last = settled("reading a gate", || client.show_fresh(gate)).await;
        assert_eq!(oks.len(), 1, "{gate}: {oks:?}");
        assert_eq!(
            oks[0], last.status,
            "{gate}: the acknowledged decision is not the final state"
        );
        assert_eq!(crate::terminal_events(&client, gate).await, 1, "{gate}");
        finals.insert(gate, last.status);
    }
    // Every timed gate timed out.
    for gate in &timed {
        let last = settled("reading a gate", || client.show_fresh(*gate)).await;
        assert_eq!(last.status, GateStatus::TimedOut, "{gate}");
        assert_eq!(crate::terminal_events(&client, *gate).await, 1, "{gate}");
        finals.insert(*gate, last.status);
    }
    // Every waiter ended with its gate's final state.
    for (gate, status) in &seen {
        assert_eq!(
            Some(status),
            finals.get(gate),
            "{gate}: a waiter saw another end"
        );
    }
    for (gate, p) in &mut cli_waiters {
        let status =
            tokio::task::block_in_place(|| p.wait(PATIENCE)).expect("the CLI waiter exits");
        let want = match finals[gate] {
            GateStatus::Approved => 0,
            GateStatus::Denied => 3,
            GateStatus::TimedOut => 4,
            _ => 5,
        };
        assert_eq!(status.code(), Some(want), "{gate}: {:?}", p.output());
    }
    // Every run finished, and no step whose finish was recorded ran again.
    for (run, gate, approver) in runs {
        let v = approver
            .await
            .expect("approver")
            .expect("the run's gate is approved");
        assert_eq!(v.status, GateStatus::Approved);
        finals.insert(gate, GateStatus::Approved);
        let done = tokio::time::timeout(PATIENCE, async {
            loop {
                match client.wait_run(&run).await {
                    Ok(v) => break v,
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("run {run} never finished"));
        assert_eq!(done.status, RunStatus::Succeeded, "{done:?}");
        for name in ["a", "b"] {
            let st = done.steps.iter().find(|s| s.name == name).expect("step");
            let side = |attempt: u32| lines(&dir.path().join(format!("{run}.{name}.{attempt}")));
            assert_eq!(
                side(st.attempt),
                1,
                "{run} {name} attempt {} ran more than once",
                st.attempt
            );
            assert_eq!(
                side(st.attempt + 1),
                0,
                "{run} {name} ran again after its recorded finish"
            );
        }
    }
    // Every decided gate was notified; count the repeats.
    let finals = Arc::new(finals);
    let kind = |s: GateStatus| match s {
        GateStatus::Approved => "approved",
        GateStatus::Denied => "denied",
        _ => "timed_out",
    };
    {
        let finals = finals.clone();
        rx.wait("every decided gate notified", move |r| {
            finals
                .iter()
                .all(|(g, s)| r.about("/hook", kind(*s), &g.to_string()) >= 1)
        })
        .await;
    }
    let twice = finals
        .iter()
        .filter(|(g, s)| rx.about("/hook", kind(**s), &g.to_string()) > 1)
        .count();
    println!(
        "chaos: {} gates decided or timed out, {} commands sent again after a fault, {} gates notified twice",
        finals.len(),
        RETRIES.load(std::sync::atomic::Ordering::Relaxed),
        twice
    );
    drop(notifier);
    drop(runners);
    drop(gks);
}
