//! A runner that dies or loses the broker: nothing its steps started
//! outlives it, and a step never runs on two runners at once.

use std::time::Duration;

use moira_client::protocol::run::RunStatus;
use moira_tests::{bin, ProcBuilder, Proxy};

use crate::runs::{alive, Runs};

/// Waits until the process `pid` is gone; false if it outlives `within`.
async fn gone_within(pid: &str, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while alive(pid) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_killed_with_sigkill_takes_what_its_step_started_with_it() {
    let mut s = Runs::start(1).await;
    let yaml = "name: orphan\nsteps:\n  - name: long\n    run: |\n      sleep 300 &\n      echo $! > {dir}/pid\n      echo started\n      wait\n";
    let run = s.submit(yaml, &[]).await;
    s.step_printed(&run, "long", "started").await;
    let pid = s.file("pid");
    assert!(alive(&pid), "the step's background child runs");
    s.runners[0].kill();
    assert!(
        gone_within(&pid, Duration::from_secs(10)).await,
        "the step's child outlived its runner"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_job_consumer_takes_a_longer_ack_wait_and_refuses_a_shorter_one() {
    // The fixture's runner created the consumer with --ack-wait 2s.
    let s = Runs::start(1).await;
    let with_ack_wait = |wait: &str, n: usize| {
        ProcBuilder::new(bin("moira-runner"), &format!("moira-runner {wait}"))
            .args([
                "--nats-url",
                &s.server.url(),
                "--ack-wait",
                wait,
                "--work-dir",
            ])
            .arg(s.dir.path().join(format!("work-ack-{n}")))
            .env("MOIRA_LOG", "info")
            .spawn()
            .expect("spawn runner")
    };
    let mut shorter = with_ack_wait("1s", 1);
    let line = shorter.wait_for_line("--ack-wait 2s", Duration::from_secs(20));
    assert!(line.contains("longer than this runner's"), "{line}");
    let status = shorter.wait(Duration::from_secs(20)).expect("exits");
    assert!(!status.success());
    let longer = with_ack_wait("5s", 2);
    longer.wait_for_line("moira-runner ready", Duration::from_secs(20));
    let js = async_nats::jetstream::new(s.client.nats().clone());
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(moira_client::protocol::wire::JOBS_STREAM)
        .await
        .expect("stream")
        .get_consumer(moira_client::protocol::wire::RUNNERS_CONSUMER)
        .await
        .expect("consumer");
    let info = consumer.info().await.expect("info");
    assert_eq!(info.config.ack_wait, Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_cut_off_from_the_broker_stops_its_step_before_another_runner_takes_it() {
    let s = Runs::start(0).await;
    let proxy = Proxy::start(s.server.port).await;
    let runner_at = |url: &str, name: &str| {
        let p = ProcBuilder::new(bin("moira-runner"), name)
            .args(["--nats-url", url, "--ack-wait", "4s", "--work-dir"])
            .arg(s.dir.path().join(name))
            .env("MOIRA_LOG", "info")
            .spawn()
            .expect("spawn runner");
        p.wait_for_line("moira-runner ready", Duration::from_secs(20));
        p
    };
    let cut_off = runner_at(&proxy.url(), "proxied");
    // The second attempt records whether the first one's process still ran
    // (a zombie left unreaped by this container's init does not count).
    let yaml = "name: split\nsteps:\n  - name: long\n    retries: 1\n    run: |\n      if [ -f {dir}/pid ]; then\n        state=$(awk '{print $3}' /proc/$(cat {dir}/pid)/stat 2>/dev/null)\n        if [ -n \"$state\" ] && [ \"$state\" != Z ]; then echo overlap >> {dir}/seen; else echo alone >> {dir}/seen; fi\n        exit 0\n      fi\n      sleep 300 &\n      echo $! > {dir}/pid\n      echo started\n      wait\n";
    let run = s.submit(yaml, &[]).await;
    s.step_printed(&run, "long", "started").await;
    let pid = s.file("pid");
    assert!(alive(&pid));
    proxy.cut();
    cut_off.wait_for_line("cut off from the broker", Duration::from_secs(10));
    assert!(
        gone_within(&pid, Duration::from_secs(2)).await,
        "the cut-off runner's step still runs"
    );
    // Another runner takes the job once its ack wait has passed.
    let _other = runner_at(&s.server.url(), "direct");
    let done = s.finished(&run).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{done:?}");
    assert_eq!(
        s.file("seen").trim(),
        "alone",
        "the two attempts overlapped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_finishes_while_the_cluster_has_no_quorum_is_recorded_once_and_never_runs_again(
) {
    let mut cluster = moira_tests::Cluster::start();
    let dir = moira_testkit::TempDir::new("moira-quorum").expect("tmp");
    let url = cluster.nodes[0].url();
    // A long ack wait: the job stays with this runner through the outage,
    // as it does through a leader election.
    let runner = ProcBuilder::new(bin("moira-runner"), "moira-runner n1")
        .args([
            "--nats-url",
            &url,
            "--replicas",
            "3",
            "--ack-wait",
            "120s",
            "--work-dir",
        ])
        .arg(dir.path().join("work"))
        .env("MOIRA_LOG", "info")
        .spawn()
        .expect("spawn runner");
    runner.wait_for_line("moira-runner ready", Duration::from_secs(60));
    let client = moira_client::Client::connect(&url).await.expect("connect");
    let d = dir.path().display();
    let yaml = format!("name: quorum\nsteps:\n  - name: once\n    retries: 1\n    run: |\n      echo started\n      while [ ! -f {d}/go ]; do sleep 0.05; done\n      echo ran >> {d}/ran\n");
    let run = client
        .submit_run(&yaml, &Default::default(), "alice")
        .await
        .expect("submit");
    crate::runs::wait_printed(&client, &run, "once", "started").await;
    // Two of three nodes down: the streams have no leader and no write can
    // be stored, while the runner's own node still answers it.
    cluster.nodes[1].kill();
    cluster.nodes[2].kill();
    std::fs::write(dir.path().join("go"), "").expect("write go");
    runner.wait_for_line("recording a finished step failed", Duration::from_secs(30));
    // Longer than the old runner kept trying (about 28 s): it then gave
    // the job back and the step ran again as if it had been cut off.
    tokio::time::sleep(Duration::from_secs(35)).await;
    cluster.nodes[1].restart();
    cluster.nodes[2].restart();
    // The cluster takes a moment to elect leaders again.
    let done = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            match client.wait_run(&run).await {
                Ok(done) => break done,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
    .await
    .expect("the run ends once the cluster is back");
    assert_eq!(done.status, RunStatus::Succeeded, "{done:?}");
    let ran = std::fs::read_to_string(dir.path().join("ran")).unwrap_or_default();
    assert_eq!(ran.lines().count(), 1, "the finished step ran again");
    let step = done
        .steps
        .iter()
        .find(|st| st.name == "once")
        .expect("step");
    assert_eq!(step.attempt, 1, "{step:?}");
}
