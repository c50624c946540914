//! The `moira` CLI as a user runs it: output, exit codes, errors.

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use moira_tests::{bin, moira, ProcBuilder};
use serde_json::Value;

use crate::Stack;

fn ok(out: (i32, String, String)) -> String {
    assert_eq!(out.0, 0, "stdout: {}\nstderr: {}", out.1, out.2);
    out.1
}

fn open_gate(url: &str, extra: &[&str]) -> String {
    let mut args = vec!["--as", "alice", "gate", "open", "--message", "Deploy?"];
    args.extend_from_slice(extra);
    ok(moira(url, &args)).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_exit_codes_follow_the_outcome() {
    let s = Stack::start().await;
    let url = s.url();

    let approved = open_gate(&url, &[]);
    ok(moira(
        &url,
        &[
            "--as",
            "bob",
            "gate",
            "approve",
            &approved,
            "--comment",
            "lgtm",
        ],
    ));
    assert_eq!(moira(&url, &["gate", "wait", &approved]).0, 0);

    let denied = open_gate(&url, &[]);
    ok(moira(
        &url,
        &["--as", "bob", "gate", "deny", &denied, "--reason", "freeze"],
    ));
    let (code, out, _) = moira(&url, &["gate", "wait", &denied]);
    assert_eq!(code, 3);
    assert!(out.contains("freeze"), "{out}");

    let timed_out = open_gate(&url, &["--timeout", "1s"]);
    assert_eq!(moira(&url, &["gate", "wait", &timed_out]).0, 4);

    let cancelled = open_gate(&url, &[]);
    ok(moira(
        &url,
        &[
            "--as",
            "alice",
            "gate",
            "cancel",
            &cancelled,
            "--reason",
            "superseded",
        ],
    ));
    assert_eq!(moira(&url, &["gate", "wait", &cancelled]).0, 5);

    // `open --wait` prints the id first and exits like `wait`.
    let (code, out, _) = moira(
        &url,
        &[
            "--as",
            "alice",
            "gate",
            "open",
            "--message",
            "x",
            "--timeout",
            "1s",
            "--on-timeout",
            "deny",
            "--wait",
        ],
    );
    assert_eq!(code, 3, "{out}");
    assert!(
        out.lines()
            .next()
            .is_some_and(|l| l.parse::<moira_client::GateId>().is_ok()),
        "{out}"
    );

    // A local --timeout on wait gives up with exit 1.
    let waiting = open_gate(&url, &[]);
    let (code, _, err) = moira(&url, &["gate", "wait", &waiting, "--timeout", "300ms"]);
    assert_eq!(code, 1, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_wait_keeps_waiting_through_a_push_back() {
    let s = Stack::start().await;
    let url = s.url();
    let waiter = ProcBuilder::new(bin("moira"), "moira gate open --wait")
        .args([
            "--nats-url",
            &url,
            "--as",
            "alice",
            "gate",
            "open",
            "--message",
            "Review",
            "--input",
            "FEEDBACK",
            "--wait",
        ])
        .spawn()
        .expect("spawn");
    let id = waiter
        .wait_for_match(
            "a gate id",
            |l| l.trim().parse::<moira_client::GateId>().is_ok(),
            Duration::from_secs(20),
        )
        .trim()
        .to_string();
    waiter.wait_for_line("waiting for gate", Duration::from_secs(20));
    ok(moira(
        &url,
        &[
            "--as",
            "bob",
            "gate",
            "push-back",
            &id,
            "--input",
            "FEEDBACK=more tests",
            "--comment",
            "not yet",
        ],
    ));
    waiter.wait_for_line("pushed back by bob", Duration::from_secs(20));
    ok(moira(&url, &["--as", "bob", "gate", "approve", &id]));
    let mut waiter = waiter;
    let status = waiter.wait(Duration::from_secs(20)).expect("exits");
    assert_eq!(status.code(), Some(0));
    let shown: Value =
        serde_json::from_str(&ok(moira(&url, &["--json", "gate", "show", &id]))).expect("json");
    assert_eq!(shown["iteration"], 2);
    assert_eq!(shown["push_backs"][0]["inputs"]["FEEDBACK"], "more tests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_show_and_json_shapes() {
    let s = Stack::start().await;
    let url = s.url();
    let a = open_gate(
        &url,
        &[
            "--run",
            "r1",
            "--step",
            "deploy",
            "--title",
            "Release",
            "--approvals",
            "2",
            "--approver",
            "bob",
            "--approver",
            "carol",
        ],
    );
    let b = open_gate(&url, &["--run", "r2"]);
    ok(moira(&url, &["--as", "bob", "gate", "approve", &b]));

    let table = ok(moira(&url, &["gate", "list"]));
    assert!(table.contains(&a) && !table.contains(&b), "{table}");
    let all: Value = serde_json::from_str(&ok(moira(
        &url,
        &["--json", "gate", "list", "--status", "all"],
    )))
    .expect("json");
    assert_eq!(all.as_array().map(Vec::len), Some(2));
    let r1: Value = serde_json::from_str(&ok(moira(
        &url,
        &["--json", "gate", "list", "--status", "all", "--run", "r1"],
    )))
    .expect("json");
    assert_eq!(r1[0]["id"], a.as_str());
    let approved: Value = serde_json::from_str(&ok(moira(
        &url,
        &["--json", "gate", "list", "--status", "approved"],
    )))
    .expect("json");
    assert_eq!(approved[0]["id"], b.as_str());

    let g: Value =
        serde_json::from_str(&ok(moira(&url, &["--json", "gate", "show", &a]))).expect("json");
    for key in [
        "id",
        "status",
        "message",
        "title",
        "run_id",
        "step",
        "requested_by",
        "opened_at",
        "timeout_at",
        "iteration",
        "approvals_required",
        "approvals",
        "approved_by",
        "approved_at",
        "reason",
        "inputs",
    ] {
        assert!(g.get(key).is_some(), "gate JSON lacks {key}: {g}");
    }
    assert_eq!(
        (
            g["status"].as_str(),
            g["approvals_required"].as_u64(),
            g["step"].as_str()
        ),
        (Some("waiting"), Some(2), Some("deploy"))
    );
    let text = ok(moira(&url, &["gate", "show", &a]));
    assert!(
        text.contains("WAITING") && text.contains("users bob, carol"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_events_as_they_happen() {
    let s = Stack::start().await;
    let url = s.url();
    let watcher = ProcBuilder::new(bin("moira"), "moira gate watch")
        .args(["--nats-url", &url, "--json", "gate", "watch", "--run", "r7"])
        .spawn()
        .expect("spawn");
    let other = open_gate(&url, &["--run", "other"]);
    let id = open_gate(&url, &["--run", "r7"]);
    ok(moira(&url, &["--as", "bob", "gate", "approve", &other]));
    ok(moira(&url, &["--as", "bob", "gate", "approve", &id]));
    let line = watcher.wait_for_line("GateApproved", Duration::from_secs(20));
    let v: Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(v["gate_id"], id.as_str());
    assert_eq!(v["actor"], "bob");
    assert!(
        !watcher.output().iter().any(|l| l.contains(&other)),
        "events of other runs are filtered out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_usage_errors_have_their_exit_codes() {
    let s = Stack::start().await;
    let url = s.url();
    let id = open_gate(&url, &["--no-self-approval", "--required", "WINDOW"]);
    let (code, _, err) = moira(
        &url,
        &[
            "--as",
            "alice",
            "gate",
            "approve",
            &id,
            "--input",
            "WINDOW=now",
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("self-approval"), "{err}");
    let (code, _, err) = moira(&url, &["--as", "bob", "gate", "approve", &id]);
    assert_eq!(code, 1);
    assert!(err.contains("WINDOW"), "{err}");
    // Usage errors: missing --reason, a bad id, a bad duration, a bad K=V.
    assert_eq!(moira(&url, &["gate", "deny", &id]).0, 2);
    assert_eq!(moira(&url, &["gate", "show", "not-an-id"]).0, 2);
    assert_eq!(
        moira(
            &url,
            &["gate", "open", "--message", "x", "--timeout", "soon"]
        )
        .0,
        2
    );
    assert_eq!(
        moira(&url, &["gate", "approve", &id, "--input", "novalue"]).0,
        2
    );
    assert_eq!(moira(&url, &["gate", "frobnicate"]).0, 2);
    // An unknown gate.
    let (code, _, err) = moira(
        &url,
        &["gate", "show", &moira_client::GateId::new().to_string()],
    );
    assert_eq!(code, 1);
    assert!(err.contains("no gate has id"), "{err}");
    // The CLI (not the libraries) says which of its commands helps.
    assert!(err.contains("moira gate list --status all"), "{err}");
    let needs = open_gate(&url, &["--input", "WINDOW", "--required", "WINDOW"]);
    let (code, _, err) = moira(&url, &["--as", "bob", "gate", "approve", &needs]);
    assert_eq!(code, 1);
    assert!(
        err.contains("needs the input(s) WINDOW") && err.contains("--input NAME=VALUE"),
        "{err}"
    );
    // Still waiting, untouched.
    let g: Value =
        serde_json::from_str(&ok(moira(&url, &["--json", "gate", "show", &id]))).expect("json");
    assert_eq!(g["status"], "waiting");
}

#[test]
fn a_broker_that_is_down_gets_a_clear_error() {
    let port = moira_testkit::free_port();
    let (code, _, err) = moira(&format!("nats://127.0.0.1:{port}"), &["gate", "list"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot reach NATS") && err.contains("moira dev"),
        "{err}"
    );
    let gk = ProcBuilder::new(bin("moira-gatekeeper"), "gatekeeper")
        .args(["--nats-url", &format!("nats://127.0.0.1:{port}")])
        .spawn()
        .expect("spawn");
    gk.wait_for_line("cannot reach NATS", Duration::from_secs(20));
}

/// A fake server that speaks just enough of the NATS handshake to announce
/// an old version.
fn fake_old_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut w = conn.try_clone().expect("clone");
                let info = r#"INFO {"server_id":"old","server_name":"old","version":"2.9.10","go":"go1.19","host":"127.0.0.1","port":4222,"headers":true,"max_payload":1048576,"proto":1}"#;
                let _ = w.write_all(format!("{info}\r\n").as_bytes());
                for line in BufReader::new(conn).lines().map_while(Result::ok) {
                    if line.starts_with("PING") {
                        let _ = w.write_all(b"PONG\r\n");
                    }
                }
            });
        }
    });
    port
}

#[test]
fn an_old_server_version_is_refused_clearly() {
    let port = fake_old_server();
    let url = format!("nats://127.0.0.1:{port}");
    let (code, _, err) = moira(&url, &["gate", "list"]);
    assert_eq!(code, 1);
    assert!(err.contains("2.9.10") && err.contains("2.14"), "{err}");
    let mut gk = ProcBuilder::new(bin("moira-gatekeeper"), "gatekeeper")
        .args(["--nats-url", &url])
        .spawn()
        .expect("spawn");
    gk.wait_for_line("needs nats-server 2.14", Duration::from_secs(20));
    assert_eq!(
        gk.wait(Duration::from_secs(10)).and_then(|s| s.code()),
        Some(1)
    );
}

#[test]
fn the_deploy_configs_really_start() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repo root");
    let server = moira_testkit::find_nats_server().expect("nats-server").path;
    let store = moira_testkit::TempDir::new("moira-deploy").expect("tmp");
    // Ports are moved to free ones and the relative store folders land in a
    // temporary working folder; everything else is the files' own.
    let dev_port = moira_testkit::free_port();
    let dev = ProcBuilder::new(&server, "dev.conf")
        .args([
            "-c",
            &root.join("deploy/nats/dev.conf").display().to_string(),
        ])
        .args(["-p", &dev_port.to_string(), "-m", "0"])
        .current_dir(store.path())
        .spawn()
        .expect("spawn");
    dev.wait_for_line("Server is ready", Duration::from_secs(20));
    // moira works on it: a gate-keeper, a gate opened and approved.
    let dev_url = format!("nats://127.0.0.1:{dev_port}");
    let gk = moira_tests::gatekeeper(&dev_url, &[]);
    let id = ok(moira(
        &dev_url,
        &["--as", "alice", "gate", "open", "--message", "On dev.conf?"],
    ));
    ok(moira(
        &dev_url,
        &["--as", "bob", "gate", "approve", id.trim()],
    ));
    assert_eq!(moira(&dev_url, &["gate", "wait", id.trim()]).0, 0);
    drop(gk);

    let cports: Vec<u16> = (0..3).map(|_| moira_testkit::free_port()).collect();
    let routes = cports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let client_ports: Vec<u16> = (0..3).map(|_| moira_testkit::free_port()).collect();
    let nodes: Vec<_> = (1..=3)
        .map(|i| {
            ProcBuilder::new(&server, &format!("cluster-n{i}.conf"))
                .args([
                    "-c",
                    &root
                        .join(format!("deploy/nats/cluster-n{i}.conf"))
                        .display()
                        .to_string(),
                ])
                .args(["-p", &client_ports[i - 1].to_string()])
                .args([
                    "--cluster",
                    &format!("nats://127.0.0.1:{}", cports[i - 1]),
                    "--routes",
                    &routes,
                ])
                .current_dir(store.path())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for n in &nodes {
        n.wait_for_line("Server is ready", Duration::from_secs(30));
    }
    let leader = [
        "JetStream cluster new metadata leader",
        "Self is new JetStream cluster metadata leader",
    ];
    let elected = (0..100).any(|_| {
        nodes.iter().any(|n| {
            n.try_wait_for(&leader, 1, Duration::from_millis(100))
                .is_some()
        })
    });
    assert!(
        elected,
        "the cluster from deploy/nats elected a JetStream meta leader"
    );
    // And moira works on it, with R3 streams.
    let urls = client_ports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let _gk = moira_tests::gatekeeper(&urls, &["--replicas", "3"]);
    let id = ok(moira(
        &urls,
        &[
            "--as",
            "alice",
            "gate",
            "open",
            "--message",
            "On the cluster?",
        ],
    ));
    ok(moira(&urls, &["--as", "bob", "gate", "approve", id.trim()]));
    assert_eq!(moira(&urls, &["gate", "wait", id.trim()]).0, 0);
}

#[test]
fn a_gatekeeper_stops_promptly_even_when_the_broker_is_gone() {
    let mut server = moira_tests::NatsServer::start();
    let mut gk = moira_tests::gatekeeper(&server.url(), &[]);
    server.stop();
    // Without a bound on the shutdown flush this waited for a reconnect
    // until the fixture's SIGKILL, which is not a successful exit.
    let status = gk.stop(Duration::from_secs(20)).expect("it exits");
    assert!(status.success(), "a clean exit, not a SIGKILL: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_into_a_pipe_that_closes_early_ends_quietly() {
    let s = Stack::start().await;
    for n in 0..1500 {
        s.client
            .open(crate::open(
                "alice",
                &format!("gate number {n} with some text to list"),
            ))
            .await
            .expect("open");
    }
    // More than a pipe holds, to a reader that stops after 100 bytes.
    let moira = bin("moira");
    let out = std::process::Command::new("bash")
        .args([
            "-c",
            &format!(
                "set -o pipefail; {} --nats-url {} gate list | head -c 100 >/dev/null",
                moira.display(),
                s.url()
            ),
        ])
        .output()
        .expect("bash");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
    assert_eq!(out.status.code(), Some(0), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_key_names_the_same_gate_from_the_cli_and_the_json_contract() {
    let s = Stack::start().await;
    let url = s.url();
    let open = |msg: &str| {
        moira(
            &url,
            &[
                "--as",
                "alice",
                "gate",
                "open",
                "--gate-key",
                "release-42/approve",
                "--message",
                msg,
            ],
        )
    };
    let first = ok(open("Ship release 42?")).trim().to_string();
    let again = ok(open("Ship release 42?")).trim().to_string();
    assert_eq!(first, again, "the same key and definition: the same gate");
    let want = moira_client::GateId::for_key("release-42/approve").expect("key");
    assert_eq!(first, want.to_string());
    // The same key with another definition is refused.
    let (code, _, err) = open("Something else?");
    assert_ne!(code, 0, "{err}");
    // A tool on the JSON contract names its gate the same way.
    let ask = |body: &str| {
        let nats = s.client.nats().clone();
        let body = body.to_string();
        async move {
            let reply = nats
                .request("moira.cmd.gate.open", body.into_bytes().into())
                .await
                .expect("reply");
            serde_json::from_slice::<Value>(&reply.payload).expect("json")
        }
    };
    let body = r#"{"key": "deploy/eu-1", "actor": "ci-bot", "message": "Deploy eu-1?"}"#;
    let r = ask(body).await;
    let id = moira_client::GateId::for_key("deploy/eu-1").expect("key");
    assert_eq!(r["gate"]["id"], id.to_string(), "{r}");
    assert_eq!(ask(body).await["gate"]["id"], id.to_string());
    let r = ask(r#"{"key": "bad\u0007key", "actor": "ci-bot", "message": "x"}"#).await;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
}

/// Runs examples/ci/approve.sh as a GitHub Actions job would.
fn ci_job(url: &str, dir: &std::path::Path, attempt: &str) -> moira_tests::Proc {
    let path = format!(
        "{}:{}",
        moira_tests::bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ci/approve.sh");
    let p = ProcBuilder::new("bash", "ci job")
        .arg(script)
        .args([
            "Deploy v2 to production?",
            "--approver",
            "bob",
            "--input",
            "WINDOW",
            "--required",
            "WINDOW",
        ])
        .env("PATH", path)
        .env("MOIRA_NATS_URL", url)
        .env("MOIRA_USER", "ci-bot")
        .env("GITHUB_OUTPUT", dir.join("out"))
        .env("GITHUB_REPOSITORY", "acme/app")
        .env("GITHUB_RUN_ID", "42")
        .env("GITHUB_RUN_ATTEMPT", attempt)
        .spawn()
        .expect("bash");
    p.wait_for_line("moira: waiting for gate", Duration::from_secs(30));
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_ci_job_waits_passes_its_decision_on_and_fails_when_denied() {
    let s = Stack::start().await;
    let dir = moira_testkit::TempDir::new("moira-ci").expect("tmp");
    let mut job = ci_job(&s.url(), dir.path(), "1");
    let id = moira_client::GateId::for_key("acme/app/42/1/approve").expect("key");
    ok(moira(
        &s.url(),
        &[
            "--as",
            "bob",
            "gate",
            "approve",
            &id.to_string(),
            "--input",
            "WINDOW=sat 02:00",
        ],
    ));
    let status = job.wait(Duration::from_secs(30)).expect("the job ends");
    assert_eq!(status.code(), Some(0), "{:?}", job.output());
    let out = std::fs::read_to_string(dir.path().join("out")).expect("outputs");
    for want in [
        format!("gate_id={id}"),
        "status=approved".into(),
        "approved_by=bob".into(),
        "input_WINDOW=sat 02:00".into(),
    ] {
        assert!(out.lines().any(|l| l == want), "no {want} in:\n{out}");
    }
    // A retried attempt opens its own gate; a denial fails the job, and a
    // reason with a line break cannot write an output of its own.
    std::fs::remove_file(dir.path().join("out")).expect("rm");
    let mut job = ci_job(&s.url(), dir.path(), "2");
    let id = moira_client::GateId::for_key("acme/app/42/2/approve").expect("key");
    ok(moira(
        &s.url(),
        &[
            "--as",
            "bob",
            "gate",
            "deny",
            &id.to_string(),
            "--reason",
            "freeze\nstatus=approved",
        ],
    ));
    let status = job.wait(Duration::from_secs(30)).expect("the job ends");
    assert_eq!(status.code(), Some(3), "{:?}", job.output());
    let out = std::fs::read_to_string(dir.path().join("out")).expect("outputs");
    assert!(out.lines().any(|l| l == "status=denied"), "{out}");
    assert!(
        !out.lines().any(|l| l == "status=approved"),
        "an output was smuggled in:\n{out}"
    );
}
