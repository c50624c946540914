//! What operators see: every service's `/metrics`, `/healthz` and
//! `/readyz` (`--metrics-listen`), scraped from real processes while they
//! work, and readiness that follows the broker going away and coming back.

use std::time::{Duration, Instant};

use moira_client::{ApproveGate, Client, GateId, OpenGate};
use moira_testkit::TempDir;
use moira_tests::{bin, NatsServer, Proc, ProcBuilder};

use crate::open;

/// One service process and its metrics address.
struct Svc {
    name: &'static str,
    _proc: Proc,
    addr: String,
}

fn spawn(name: &'static str, url: &str, args: &[&str], ready_line: &str) -> Svc {
    let addr = format!("127.0.0.1:{}", moira_testkit::free_port());
    let p = ProcBuilder::new(bin(name), name)
        .args(["--nats-url", url, "--metrics-listen", &addr])
        .args(args)
        .env("MOIRA_LOG", "info")
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    p.wait_for_line(ready_line, Duration::from_secs(20));
    Svc {
        name,
        _proc: p,
        addr,
    }
}

async fn get(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(r) => {
            let code = r.status().as_u16();
            (code, r.text().await.unwrap_or_default())
        }
        Err(_) => (0, String::new()),
    }
}

/// Waits (polling an HTTP endpoint, with a bound) until `pred` holds.
async fn until(what: &str, url: &str, pred: impl Fn(u16, &str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = get(url).await;
        if pred(code, &body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {url} answered {code}:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of one sample line (`name{labels} value`), 0 when absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_serves_metrics_that_move_and_readiness_that_follows_the_broker() {
    let mut server = NatsServer::start();
    let url = server.url();
    let dir = TempDir::new("moira-ops").expect("tmp");
    let work = dir.path().join("work").display().to_string();
    let web_port = moira_testkit::free_port().to_string();
    let web_listen = format!("127.0.0.1:{web_port}");
    let svcs = [
        spawn("moira-gatekeeper", &url, &[], "moira-gatekeeper ready"),
        spawn(
            "moira-runner",
            &url,
            &["--work-dir", &work],
            "moira-runner ready",
        ),
        spawn("moira-notifier", &url, &[], "moira-notifier ready"),
        spawn(
            "moira-web",
            &url,
            &["--listen", &web_listen],
            "moira-web ready",
        ),
    ];
    for s in &svcs {
        until("ready", &format!("http://{}/readyz", s.addr), |c, _| {
            c == 200
        })
        .await;
        let (code, body) = get(&format!("http://{}/healthz", s.addr)).await;
        assert_eq!((code, body.trim()), (200, "ok"), "{}", s.name);
        let m = get(&format!("http://{}/metrics", s.addr)).await.1;
        assert!(
            m.contains(&format!("moira_build_info{{service=\"{}\"", s.name)),
            "{}: {m}",
            s.name
        );
    }
    let (gk, runner, notifier) = (&svcs[0].addr, &svcs[1].addr, &svcs[2].addr);

    let client = Client::connect(&url).await.expect("connect");
    let g = client.open(open("alice", "Ship it?")).await.expect("open");
    client
        .approve(ApproveGate {
            gate_id: g.id,
            actor: "bob".into(),
            ..Default::default()
        })
        .await
        .expect("approve");
    let _ = client
        .approve(ApproveGate {
            gate_id: GateId::new(),
            actor: "bob".into(),
            ..Default::default()
        })
        .await
        .expect_err("no such gate");
    client
        .open(OpenGate {
            timeout_ms: Some(1_000),
            ..open("alice", "Quick?")
        })
        .await
        .expect("open");
    let run = client
        .submit_run(
            "name: quick\nsteps:\n  - name: one\n    run: \"true\"\n",
            &Default::default(),
            "alice",
        )
        .await
        .expect("submit");
    tokio::time::timeout(Duration::from_secs(60), client.wait_run(&run))
        .await
        .expect("the run ends")
        .expect("wait");

    let m = until(
        "the gate-keeper's counts",
        &format!("http://{gk}/metrics"),
        |_, m| sample(m, "moira_commands_total{verb=\"approve\",outcome=\"ok\"}") >= 1.0,
    )
    .await;
    assert_eq!(
        sample(&m, "moira_commands_total{verb=\"open\",outcome=\"ok\"}"),
        2.0,
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "moira_commands_total{verb=\"approve\",outcome=\"not_found\"}"
        ),
        1.0,
        "{m}"
    );
    assert!(
        sample(&m, "moira_decision_latency_seconds_count") >= 1.0,
        "{m}"
    );
    assert!(
        sample(&m, "moira_command_duration_seconds_count{verb=\"open\"}") >= 2.0,
        "{m}"
    );
    assert_eq!(sample(&m, "moira_gates_opened_total"), 2.0, "{m}");
    let m = until(
        "the runner's counts",
        &format!("http://{runner}/metrics"),
        |_, m| sample(m, "moira_runs_finished_total{status=\"succeeded\"}") >= 1.0,
    )
    .await;
    assert_eq!(
        sample(&m, "moira_steps_finished_total{status=\"succeeded\"}"),
        1.0,
        "{m}"
    );
    assert!(
        sample(&m, "moira_step_duration_seconds_count") >= 1.0,
        "{m}"
    );
    assert!(
        m.contains("moira_consumer_pending_messages{consumer=\"moira-resumer\"}"),
        "{m}"
    );
    // The notifier tells its log channel, and counts the timeout that fired.
    let m = until(
        "the notifier's counts",
        &format!("http://{notifier}/metrics"),
        |_, m| sample(m, "moira_gate_timeouts_total{action=\"fail\"}") >= 1.0,
    )
    .await;
    assert!(
        sample(
            &m,
            "moira_notifications_total{channel=\"log\",result=\"delivered\"}"
        ) >= 3.0,
        "{m}"
    );

    // The broker goes away: no service is ready; it comes back: all are.
    server.stop();
    for s in &svcs {
        let ready = format!("http://{}/readyz", s.addr);
        let body = until("not ready without the broker", &ready, |c, _| c == 503).await;
        assert!(body.contains("broker"), "{}: {body}", s.name);
        assert_eq!(
            get(&format!("http://{}/healthz", s.addr)).await.0,
            200,
            "{}",
            s.name
        );
    }
    server.restart();
    for s in &svcs {
        until(
            "ready again",
            &format!("http://{}/readyz", s.addr),
            |c, _| c == 200,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_moira_log_format_json_each_log_line_is_one_json_object() {
    let server = NatsServer::start();
    let p = ProcBuilder::new(bin("moira-gatekeeper"), "moira-gatekeeper")
        .args(["--nats-url", &server.url()])
        .env("MOIRA_LOG", "info")
        .env("MOIRA_LOG_FORMAT", "json")
        .spawn()
        .expect("spawn");
    let line = p.wait_for_line("moira-gatekeeper ready", Duration::from_secs(20));
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
    assert_eq!(v["level"], "INFO", "{v}");
    assert_eq!(v["message"], "moira-gatekeeper ready", "{v}");
    assert_eq!(v["url"], server.url(), "a field of the event: {v}");
    assert!(v["timestamp"].is_string() && v["target"].is_string(), "{v}");
    for l in p.output() {
        serde_json::from_str::<serde_json::Value>(&l)
            .unwrap_or_else(|e| panic!("a line that is not JSON ({e}): {l}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_approvers_file_and_a_bad_one_is_refused_keeping_the_old() {
    let server = NatsServer::start();
    let dir = TempDir::new("moira-reload").expect("tmp");
    let file = dir.path().join("approvers.toml");
    std::fs::write(&file, "[users.bob]\nroles = [\"owner\"]\n").expect("write");
    let gk = ProcBuilder::new(bin("moira-gatekeeper"), "moira-gatekeeper")
        .args(["--nats-url", &server.url(), "--approvers"])
        .arg(&file)
        .env("MOIRA_LOG", "info")
        .spawn()
        .expect("spawn");
    gk.wait_for_line("moira-gatekeeper ready", Duration::from_secs(20));
    let client = Client::connect(&server.url()).await.expect("connect");
    let gate = |c: Client| async move {
        c.open(OpenGate {
            roles: vec!["release".into()],
            ..open("alice", "Ship it?")
        })
        .await
        .expect("open")
        .id
    };
    let approve = |c: Client, id: GateId| async move {
        c.approve(ApproveGate {
            gate_id: id,
            actor: "bob".into(),
            ..Default::default()
        })
        .await
    };
    let first = gate(client.clone()).await;
    let e = approve(client.clone(), first)
        .await
        .expect_err("bob has no release role yet");
    assert!(e.to_string().contains("release"), "{e}");
    std::fs::write(&file, "[users.bob]\nroles = [\"owner\", \"release\"]\n").expect("write");
    gk.signal("HUP");
    gk.wait_for_line("approvers file reloaded", Duration::from_secs(20));
    approve(client.clone(), first)
        .await
        .expect("bob holds release now");
    // A broken file: refused, and the registry in force stays.
    std::fs::write(&file, "[users.bob\nroles = oops").expect("write");
    gk.signal("HUP");
    gk.wait_for_line("the new approvers file is refused", Duration::from_secs(20));
    let second = gate(client.clone()).await;
    approve(client.clone(), second)
        .await
        .expect("the old registry is still in force");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_notifier_config_and_a_bad_one_is_refused_keeping_the_old() {
    let server = NatsServer::start();
    let _gk = moira_tests::gatekeeper(&server.url(), &[]);
    let (rx, port) = crate::notify::Receiver::start().await;
    let dir = TempDir::new("moira-reload").expect("tmp");
    let file = dir.path().join("notify.toml");
    let config = |path: &str| {
        format!(
            "{}[[rules]]\nkinds = [\"opened\"]\nchannels = [\"hook\"]\n",
            crate::notify::webhook("hook", port, path)
        )
    };
    std::fs::write(&file, config("/before")).expect("write");
    let n = ProcBuilder::new(bin("moira-notifier"), "moira-notifier")
        .args(["--nats-url", &server.url(), "--config"])
        .arg(&file)
        .env("MOIRA_LOG", "info")
        .spawn()
        .expect("spawn");
    n.wait_for_line("moira-notifier ready", Duration::from_secs(20));
    let client = Client::connect(&server.url()).await.expect("connect");
    client.open(open("alice", "one")).await.expect("open");
    rx.wait("the first gate at /before", |r| {
        r.hits("/before").len() == 1
    })
    .await;
    std::fs::write(&file, config("/after")).expect("write");
    n.signal("HUP");
    n.wait_for_line("notifier config reloaded", Duration::from_secs(20));
    client.open(open("alice", "two")).await.expect("open");
    rx.wait("the second gate at /after", |r| r.hits("/after").len() == 1)
        .await;
    // A config with an unknown channel in a rule: refused, the old stays.
    std::fs::write(&file, "[[rules]]\nchannels = [\"nowhere\"]\n").expect("write");
    n.signal("HUP");
    n.wait_for_line("is refused", Duration::from_secs(20));
    // With the reason, on the lines after.
    n.wait_for_line("unknown channel 'nowhere'", Duration::from_secs(20));
    client.open(open("alice", "three")).await.expect("open");
    rx.wait("the third gate at /after", |r| r.hits("/after").len() == 2)
        .await;
    assert_eq!(rx.hits("/before").len(), 1);
}

/// The pids of a process's children, from /proc (by parent, not by name).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(list) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(
                    list.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moira_dev_stops_with_the_reason_when_its_broker_dies() {
    let dir = TempDir::new("moira-dev-supervised").expect("tmp");
    let port = moira_testkit::free_port();
    let mut dev = ProcBuilder::new(bin("moira"), "moira dev")
        .args([
            "dev",
            "--port",
            &port.to_string(),
            "--web-port",
            "0",
            "--data",
        ])
        .arg(dir.path().join("dev"))
        .spawn()
        .expect("spawn moira dev");
    let metrics = dev.wait_for_line("metrics:", Duration::from_secs(60));
    let addr = metrics
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .and_then(|w| w.strip_suffix("/metrics"))
        .expect("the metrics address")
        .to_string();
    dev.wait_for_line("Press Ctrl-C", Duration::from_secs(30));
    until("ready", &format!("http://{addr}/readyz"), |c, _| c == 200).await;
    // Its one child is the nats-server it started.
    let pid = dev.pid().expect("pid");
    let kids = children(pid);
    assert_eq!(kids.len(), 1, "moira dev's children: {kids:?}");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &kids[0].to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = dev
        .wait(Duration::from_secs(60))
        .expect("moira dev exits by itself");
    assert_eq!(status.code(), Some(1), "{:?}", dev.output());
    let out = dev.output().join("\n");
    assert!(
        out.contains("nats-server exited") && out.contains("stopping everything"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_context_goes_from_the_cli_and_the_web_to_the_gatekeeper_and_the_stored_event() {
    let server = NatsServer::start();
    let gk = ProcBuilder::new(bin("moira-gatekeeper"), "moira-gatekeeper")
        .args(["--nats-url", &server.url()])
        .env("MOIRA_LOG", "info")
        .spawn()
        .expect("spawn");
    gk.wait_for_line("moira-gatekeeper ready", Duration::from_secs(20));
    let client = Client::connect(&server.url()).await.expect("connect");
    // A CI job's TRACEPARENT, through the CLI.
    let g = client.open(open("alice", "Ship it?")).await.expect("open");
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (code, _, err) = moira_tests::moira_env(
        &server.url(),
        &["--as", "bob", "gate", "approve", &g.id.to_string()],
        &[("TRACEPARENT", tp)],
    );
    assert_eq!(code, 0, "{err}");
    let line = gk.wait_for_line(tp, Duration::from_secs(20));
    assert!(
        line.contains(&g.id.to_string()) && line.contains("approve"),
        "{line}"
    );
    let js = async_nats::jetstream::new(client.nats().clone());
    let stored = js
        .get_stream("MOIRA_GATES")
        .await
        .expect("stream")
        .get_last_raw_message_by_subject(&format!("moira.gate.ev.{}", g.id))
        .await
        .expect("the approval");
    let header = stored
        .headers
        .get(moira_client::trace::HDR_TRACEPARENT)
        .map(|v| v.as_str().to_string());
    assert_eq!(header.as_deref(), Some(tp), "the stored event carries it");
    // A request to moira-web with a traceparent header.
    let w = crate::web::web(&server.url(), &["--auth", "dev"]);
    let g = client.open(open("alice", "And this?")).await.expect("open");
    let tp2 = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = reqwest::Client::new()
        .post(format!("{}/gates/{}/approve", w.base, g.id))
        .header("x-moira-user", "bob")
        .header("content-type", "application/json")
        .header("traceparent", tp2)
        .body("{}")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 200);
    let line = gk.wait_for_line(tp2, Duration::from_secs(20));
    assert!(line.contains(&g.id.to_string()), "{line}");
    // A malformed one is not passed on.
    let (code, _, _) = moira_tests::moira_env(
        &server.url(),
        &["--as", "alice", "gate", "open", "--message", "x"],
        &[("TRACEPARENT", "00-zz\r\nx-injected: 1")],
    );
    assert_eq!(code, 0);
    assert!(!gk.output().iter().any(|l| l.contains("x-injected")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_and_the_notifier_log_the_trace_context_of_the_events_they_act_on() {
    let s = crate::runs::Runs::start(1).await;
    let notifier = ProcBuilder::new(bin("moira-notifier"), "moira-notifier")
        .args(["--nats-url", &s.server.url()])
        .env("MOIRA_LOG", "info")
        .spawn()
        .expect("spawn");
    notifier.wait_for_line("moira-notifier ready", Duration::from_secs(20));
    let run = s
        .submit(
            "name: traced\nsteps:\n  - name: ok\n    use: moira.gate\n    with:\n      message: Go?\n",
            &[],
        )
        .await;
    let waiting = s
        .client
        .wait_run_until(&run, |r| {
            r.steps.get("ok").is_some_and(|st| st.gate_id.is_some())
        })
        .await
        .expect("the run waits at its gate");
    let gate = waiting
        .steps
        .iter()
        .find_map(|st| st.gate_id)
        .expect("gate");
    let tp = "00-5bf92f3577b34da6a3ce929d0e0e4736-10f067aa0ba902b7-01";
    let (code, _, err) = moira_tests::moira_env(
        &s.server.url(),
        &["--as", "bob", "gate", "approve", &gate.to_string()],
        &[("TRACEPARENT", tp)],
    );
    assert_eq!(code, 0, "{err}");
    let line = s.runners[0].wait_for_line(tp, Duration::from_secs(20));
    assert!(line.contains(&run), "{line}");
    notifier.wait_for_line(tp, Duration::from_secs(20));
}
