//! moira-web's API through a real process: reads, decisions on the
//! gate-keeper's path, who is deciding, and every error code.

use std::time::Duration;

use moira_client::{GateStatus, OpenGate};
use moira_tests::{bin, Proc, ProcBuilder};
use serde_json::{json, Value};

use crate::{open, Stack};

/// A moira-web process and where it listens.
pub(crate) struct Web {
    _proc: Proc,
    /// `http://host:port/api/v1`
    pub(crate) base: String,
    /// `http://host:port`
    pub(crate) root: String,
}

pub(crate) fn web(url: &str, args: &[&str]) -> Web {
    let port = moira_testkit::free_port();
    let listen = format!("127.0.0.1:{port}");
    let p = ProcBuilder::new(bin("moira-web"), "moira-web")
        .args(["--nats-url", url, "--listen", &listen])
        .args(args)
        .env("MOIRA_LOG", "info")
        .spawn()
        .expect("spawn moira-web");
    p.wait_for_line("moira-web ready", Duration::from_secs(20));
    Web {
        _proc: p,
        base: format!("http://{listen}/api/v1"),
        root: format!("http://{listen}"),
    }
}

async fn call(
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            req = req.header("content-type", "application/json");
        }
        req = req.body(b.to_string());
    }
    let resp = req.send().await.expect("moira-web answers");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn post(w: &Web, path: &str, user: Option<(&str, &str)>, body: &str) -> (u16, Value) {
    let headers: Vec<(&str, &str)> = user.into_iter().collect();
    call(
        reqwest::Method::POST,
        &format!("{}{path}", w.base),
        &headers,
        Some(body),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auth_the_api_serves_reads_and_refuses_every_decision() {
    let s = Stack::start().await;
    let w = web(&s.url(), &[]);
    let g = s
        .client
        .open(open("alice", "Ship it?"))
        .await
        .expect("open");
    let (code, list) = call(
        reqwest::Method::GET,
        &format!("{}/gates", w.base),
        &[],
        None,
    )
    .await;
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["gates"][0]["id"], g.id.to_string());
    let (code, one) = call(
        reqwest::Method::GET,
        &format!("{}/gates/{}", w.base, g.id),
        &[],
        None,
    )
    .await;
    assert_eq!(
        (code, one["gate"]["message"].clone()),
        (200, json!("Ship it?"))
    );
    for verb in ["approve", "deny", "push-back", "cancel"] {
        // Even a header naming someone is not believed without --auth.
        let (code, r) = post(
            &w,
            &format!("/gates/{}/{verb}", g.id),
            Some(("x-forwarded-user", "bob")),
            r#"{"reason":"r"}"#,
        )
        .await;
        assert_eq!(code, 401, "{verb}: {r}");
        assert_eq!(r["error"]["code"], "unauthenticated");
    }
    assert_eq!(
        s.client.show(g.id).await.expect("show").status,
        GateStatus::Waiting
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_decisions_are_made_as_its_user_and_the_gatekeeper_policy_holds() {
    let s = Stack::with_gatekeeper_args(&["--strict"]).await;
    let w = web(
        &s.url(),
        &["--auth", "proxy", "--trusted-proxy", "127.0.0.1"],
    );
    let g = s
        .client
        .open(OpenGate {
            approvers: vec!["bob".into()],
            inputs: vec!["TICKET".into()],
            required: vec!["TICKET".into()],
            ..open("alice", "Ship it?")
        })
        .await
        .expect("open");
    let path = format!("/gates/{}/approve", g.id);
    // The body may not name the actor.
    let (code, r) = post(
        &w,
        &path,
        Some(("x-forwarded-user", "mallory")),
        r#"{"actor":"bob"}"#,
    )
    .await;
    assert_eq!(
        (code, r["error"]["code"].clone()),
        (400, json!("bad_request")),
        "{r}"
    );
    // The gate-keeper's rules apply: alice opened it and is not an approver.
    let (code, r) = post(&w, &path, Some(("x-forwarded-user", "alice")), "{}").await;
    assert_eq!(
        (code, r["error"]["code"].clone()),
        (403, json!("not_allowed")),
        "{r}"
    );
    let (code, r) = post(&w, &path, Some(("x-forwarded-user", "bob")), "{}").await;
    assert_eq!(
        (code, r["error"]["code"].clone()),
        (422, json!("missing_input")),
        "{r}"
    );
    // No user header at all.
    let (code, _) = post(&w, &path, None, "{}").await;
    assert_eq!(code, 401);
    assert_eq!(
        s.client.show(g.id).await.expect("show").status,
        GateStatus::Waiting
    );
    let (code, r) = post(
        &w,
        &path,
        Some(("x-forwarded-user", "bob")),
        r#"{"inputs":{"TICKET":"T-1"},"comment":"ok"}"#,
    )
    .await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["gate"]["status"], "approved");
    assert_eq!(r["gate"]["approved_by"], "bob");
    let (code, r) = post(
        &w,
        &format!("/gates/{}/deny", g.id),
        Some(("x-forwarded-user", "bob")),
        r#"{"reason":"late"}"#,
    )
    .await;
    assert_eq!(
        (code, r["error"]["code"].clone()),
        (409, json!("already_decided")),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_header_from_an_untrusted_address_is_not_believed() {
    let s = Stack::start().await;
    // Only 10.0.0.1 is a proxy; the test connects from 127.0.0.1.
    let w = web(
        &s.url(),
        &["--auth", "proxy", "--trusted-proxy", "10.0.0.1"],
    );
    let g = s
        .client
        .open(open("alice", "Ship it?"))
        .await
        .expect("open");
    let (code, r) = post(
        &w,
        &format!("/gates/{}/approve", g.id),
        Some(("x-forwarded-user", "bob")),
        "{}",
    )
    .await;
    assert_eq!(code, 401, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("not a trusted proxy"),
        "{r}"
    );
    assert_eq!(
        s.client.show(g.id).await.expect("show").status,
        GateStatus::Waiting
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_codes_and_change_nothing() {
    let s = Stack::start().await;
    let w = web(&s.url(), &["--auth", "dev"]);
    let g = s
        .client
        .open(open("alice", "Ship it?"))
        .await
        .expect("open");
    let bob = Some(("x-moira-user", "bob"));
    let unknown = moira_client::GateId::new();
    let cases: Vec<(String, &str, u16, &str)> = vec![
        (format!("/gates/{unknown}/approve"), "{}", 404, "not_found"),
        ("/gates/not-a-gate/approve".into(), "{}", 400, "bad_request"),
        (
            format!("/gates/{}/approve", g.id),
            "{not json",
            400,
            "bad_request",
        ),
        (
            format!("/gates/{}/approve", g.id),
            r#"{"surprise":1}"#,
            400,
            "bad_request",
        ),
        (format!("/gates/{}/deny", g.id), "{}", 400, "bad_request"),
        (
            format!("/gates/{}/deny", g.id),
            r#"{"reason":"r","comment":"c"}"#,
            400,
            "bad_request",
        ),
        (
            format!("/gates/{}/approve", g.id),
            r#"{"reason":"r"}"#,
            400,
            "bad_request",
        ),
        (format!("/gates/{}/teleport", g.id), "{}", 404, "not_found"),
    ];
    for (path, body, want, code) in &cases {
        let (got, r) = post(&w, path, bob, body).await;
        assert_eq!(
            (got, r["error"]["code"].as_str()),
            (*want, Some(*code)),
            "{path} {body}: {r}"
        );
    }
    // A cross-site form can only send form or text types: refused.
    let (got, r) = call(
        reqwest::Method::POST,
        &format!("{}/gates/{}/approve", w.base, g.id),
        &[("x-moira-user", "bob"), ("content-type", "text/plain")],
        Some(r#"{"comment":"forged"}"#),
    )
    .await;
    assert_eq!(got, 415, "{r}");
    let huge = format!(r#"{{"comment":"{}"}}"#, "x".repeat(70_000));
    let (got, _) = post(&w, &format!("/gates/{}/approve", g.id), bob, &huge).await;
    assert_eq!(got, 413);
    let (got, r) = call(
        reqwest::Method::GET,
        &format!("{}/gates?status=sideways", w.base),
        &[],
        None,
    )
    .await;
    assert_eq!(got, 400, "{r}");
    assert_eq!(
        s.client.show(g.id).await.expect("show").status,
        GateStatus::Waiting
    );
    // A retry with the same command id is answered, not applied twice.
    let id = moira_client::protocol::CommandId::new();
    let once = format!(r#"{{"id":"{id}","comment":"go"}}"#);
    let (a, _) = post(&w, &format!("/gates/{}/approve", g.id), bob, &once).await;
    let (b, r) = post(&w, &format!("/gates/{}/approve", g.id), bob, &once).await;
    assert_eq!((a, b), (200, 200), "{r}");
    assert_eq!(crate::terminal_events(&s.client, g.id).await, 1);
}

#[test]
fn dev_auth_refuses_to_listen_beyond_loopback() {
    let mut p = ProcBuilder::new(bin("moira-web"), "moira-web")
        .args([
            "--nats-url",
            "nats://127.0.0.1:1",
            "--auth",
            "dev",
            "--listen",
            "0.0.0.0:0",
        ])
        .spawn()
        .expect("spawn");
    p.wait_for_line("only on loopback", Duration::from_secs(20));
    let status = p.wait(Duration::from_secs(20)).expect("exits");
    assert_eq!(status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moira_dev_serves_the_api_and_prints_where() {
    let dir = moira_testkit::TempDir::new("moira-dev-web").expect("tmp");
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
    let line = dev.wait_for_line("HTTP API:", Duration::from_secs(60));
    let api = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("a URL")
        .trim_end_matches("/gates")
        .to_string();
    let client = moira_client::Client::connect(&format!("nats://127.0.0.1:{port}"))
        .await
        .expect("connect");
    let g = client.open(open("alice", "From dev?")).await.expect("open");
    let (code, r) = call(
        reqwest::Method::POST,
        &format!("{api}/gates/{}/approve", g.id),
        &[("x-moira-user", "bob")],
        Some("{}"),
    )
    .await;
    assert_eq!(
        (code, r["gate"]["approved_by"].clone()),
        (200, json!("bob")),
        "{r}"
    );
    dev.stop(Duration::from_secs(20));
}

/// Reads a Server-Sent Events response until `done` holds over what came.
async fn read_events(resp: &mut reqwest::Response, done: impl Fn(&str) -> bool) -> String {
    let mut text = String::new();
    let read = async {
        while !done(&text) {
            match resp.chunk().await.expect("the stream goes on") {
                Some(c) => text.push_str(&String::from_utf8_lossy(&c)),
                None => break,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .unwrap_or_else(|_| panic!("the events never came; got {text}"));
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_shows_decisions_live_and_resumes_after_the_last_event_id() {
    let s = Stack::start().await;
    let w = web(&s.url(), &[]);
    let mut live = reqwest::Client::new()
        .get(format!("{}/events", w.base))
        .send()
        .await
        .expect("events");
    assert_eq!(live.status().as_u16(), 200);
    let g = s.client.open(open("alice", "Live?")).await.expect("open");
    s.client
        .approve(moira_client::ApproveGate {
            gate_id: g.id,
            actor: "bob".into(),
            ..Default::default()
        })
        .await
        .expect("approve");
    let id = g.id.to_string();
    let text = read_events(&mut live, |t| t.contains("GateApproved")).await;
    assert!(text.contains("event: gate") && text.contains(&id), "{text}");
    // The id of the GateOpened event (`<gate seq>-<run seq>`), then a
    // reconnect after it.
    let opened_seq = text
        .split("\n\n")
        .find(|e| e.contains("GateOpened"))
        .and_then(|e| e.lines().find_map(|l| l.strip_prefix("id: ")))
        .expect("the opened event has an id")
        .to_string();
    let mut again = reqwest::Client::new()
        .get(format!("{}/events", w.base))
        .header("last-event-id", &opened_seq)
        .send()
        .await
        .expect("events");
    let text = read_events(&mut again, |t| t.contains("GateApproved")).await;
    assert!(
        !text.contains("GateOpened"),
        "an event before Last-Event-ID came again: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gates_page_and_filter_and_runs_show_their_steps_and_logs() {
    let s = crate::runs::Runs::start(1).await;
    let w = web(&s.server.url(), &[]);
    for i in 0..5 {
        let who = if i % 2 == 0 { "alice" } else { "carol" };
        s.client
            .open(open(who, &format!("gate {i}")))
            .await
            .expect("open");
    }
    let get = |path: String| async move { call(reqwest::Method::GET, &path, &[], None).await };
    let (code, r) = get(format!(
        "{}/gates?requested_by=alice&limit=2&offset=1",
        w.base
    ))
    .await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["total"], 3);
    let msgs: Vec<&str> = r["gates"]
        .as_array()
        .expect("gates")
        .iter()
        .filter_map(|g| g["message"].as_str())
        .collect();
    assert_eq!(msgs, ["gate 2", "gate 4"]);
    let (code, _) = get(format!("{}/gates?colour=red", w.base)).await;
    assert_eq!(code, 400);

    let run = s
        .submit(
            "name: talk\nsteps:\n  - name: say\n    run: echo hello from the step\n",
            &[],
        )
        .await;
    s.finished(&run).await;
    let (code, r) = get(format!("{}/runs/{run}", w.base)).await;
    assert_eq!(
        (code, r["run"]["status"].clone()),
        (200, json!("succeeded")),
        "{r}"
    );
    let (code, r) = get(format!("{}/runs/{run}/logs?step=say", w.base)).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["lines"][0]["line"], "hello from the step");
    assert_eq!(r["truncated"], false);
    let (code, r) = get(format!("{}/runs?status=succeeded", w.base)).await;
    assert_eq!((code, r["total"].clone()), (200, json!(1)), "{r}");
    let (code, r) = get(format!("{}/runs/no-such-run/logs", w.base)).await;
    assert_eq!(
        (code, r["error"]["code"].clone()),
        (404, json!("not_found")),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_carries_run_events_too() {
    let s = crate::runs::Runs::start(1).await;
    let w = web(&s.server.url(), &[]);
    let mut live = reqwest::Client::new()
        .get(format!("{}/events", w.base))
        .send()
        .await
        .expect("events");
    let run = s
        .submit(
            "name: quick\nsteps:\n  - name: one\n    run: \"true\"\n",
            &[],
        )
        .await;
    let text = read_events(&mut live, |t| t.contains("RunFinished")).await;
    assert!(text.contains("event: run") && text.contains(&run), "{text}");
}

/// A Slack interactivity request as Slack signs it.
pub(crate) fn slack_request(
    secret: &str,
    ts: u64,
    slack_user: &str,
    action: &str,
    gate: &str,
    response_url: &str,
) -> (String, String) {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": slack_user},
        "actions": [{"action_id": action, "value": gate}],
        "response_url": response_url,
    })
    .to_string();
    let body: String = url_encode(&payload);
    let body = format!("payload={body}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, format!("v0:{ts}:{body}").as_bytes());
    (
        body,
        format!("v0={}", moira_client::protocol::hex::encode(tag.as_ref())),
    )
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_buttons_decide_only_when_signed_by_slack_for_a_linked_user() {
    let s = Stack::start().await;
    let (rx, port) = crate::notify::Receiver::start().await;
    let dir = moira_testkit::TempDir::new("moira-slack").expect("tmp");
    let secret = "slack-signing-secret";
    std::fs::write(dir.path().join("secret"), secret).expect("write");
    std::fs::write(
        dir.path().join("approvers.toml"),
        "[users.bob]\nroles = [\"owner\"]\nslack = \"U0BOB\"\n",
    )
    .expect("write");
    let api = format!("http://127.0.0.1:{port}/");
    let w = web(
        &s.url(),
        &[
            "--approvers",
            &dir.path().join("approvers.toml").display().to_string(),
            "--slack-signing-secret-file",
            &dir.path().join("secret").display().to_string(),
            "--slack-api",
            &api,
        ],
    );
    let url = w.base.replace("/api/v1", "/slack/interactivity");
    let g = s
        .client
        .open(OpenGate {
            approvers: vec!["bob".into()],
            ..open("alice", "Ship from Slack?")
        })
        .await
        .expect("open");
    let id = g.id.to_string();
    let now = moira_client::protocol::time::now_ms() / 1000;
    let resp = format!("{api}resp");
    let send = |body: String, ts: u64, sig: String| {
        let url = url.clone();
        async move {
            reqwest::Client::new()
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("x-slack-request-timestamp", ts.to_string())
                .header("x-slack-signature", sig)
                .body(body)
                .send()
                .await
                .expect("answer")
                .status()
                .as_u16()
        }
    };
    // A bad signature, and a good one that is too old: refused.
    let (body, _) = slack_request(secret, now, "U0BOB", "moira_approve", &id, &resp);
    assert_eq!(send(body, now, "v0=00".into()).await, 401);
    let (body, sig) = slack_request(secret, now - 600, "U0BOB", "moira_approve", &id, &resp);
    assert_eq!(send(body, now - 600, sig).await, 401);
    // A Slack user no moira user is linked to: nothing decided.
    let (body, sig) = slack_request(secret, now, "U0MALLORY", "moira_approve", &id, &resp);
    assert_eq!(send(body, now, sig).await, 200);
    rx.wait("the not-linked answer", |r| r.hits("/resp").len() == 1)
        .await;
    assert!(rx.hits("/resp")[0].body["text"]
        .as_str()
        .unwrap_or("")
        .contains("not linked"));
    assert_eq!(
        s.client.show(g.id).await.expect("show").status,
        GateStatus::Waiting
    );
    // bob's button decides, as bob, and the message says so.
    let (body, sig) = slack_request(secret, now, "U0BOB", "moira_approve", &id, &resp);
    assert_eq!(send(body, now, sig).await, 200);
    let shown = s.client.show(g.id).await.expect("show");
    assert_eq!(
        (shown.status, shown.approved_by.as_deref()),
        (GateStatus::Approved, Some("bob"))
    );
    rx.wait("the outcome", |r| r.hits("/resp").len() == 2).await;
    let text = rx.hits("/resp")[1].body["text"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(text.contains("approved") && text.contains("bob"), "{text}");
    // A second press after the decision only says what happened.
    let (body, sig) = slack_request(secret, now, "U0BOB", "moira_deny", &id, &resp);
    assert_eq!(send(body, now, sig).await, 200);
    rx.wait("the already-decided answer", |r| r.hits("/resp").len() == 3)
        .await;
    assert!(rx.hits("/resp")[2].body["text"]
        .as_str()
        .unwrap_or("")
        .contains("Already decided"));
    assert_eq!(crate::terminal_events(&s.client, g.id).await, 1);
    // A response_url elsewhere gets nothing.
    let g2 = s
        .client
        .open(OpenGate {
            approvers: vec!["bob".into()],
            ..open("alice", "Two?")
        })
        .await
        .expect("open");
    let (body, sig) = slack_request(
        secret,
        now,
        "U0BOB",
        "moira_approve",
        &g2.id.to_string(),
        "http://evil.example/x",
    );
    assert_eq!(send(body, now, sig).await, 200);
    assert_eq!(
        s.client.show(g2.id).await.expect("show").status,
        GateStatus::Approved
    );
    assert_eq!(rx.hits("/resp").len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_button_on_the_notifiers_slack_message_decides_the_gate_through_moira_web() {
    let s = Stack::start().await;
    let (rx, port) = crate::notify::Receiver::start().await;
    let dir = moira_testkit::TempDir::new("moira-slack-loop").expect("tmp");
    let secret = "loop-secret";
    std::fs::write(dir.path().join("secret"), secret).expect("write");
    let registry = dir.path().join("approvers.toml");
    std::fs::write(&registry, "[users.bob]\nslack = \"U0BOB\"\n").expect("write");
    let config = dir.path().join("notify.toml");
    std::fs::write(
        &config,
        format!("[channels.team]\ntype = \"slack\"\nurl = \"http://127.0.0.1:{port}/slack\"\nbuttons = true\n[[rules]]\nkinds = [\"opened\", \"approved\"]\nchannels = [\"team\"]\n"),
    )
    .expect("write");
    let notifier = ProcBuilder::new(bin("moira-notifier"), "moira-notifier")
        .args(["--nats-url", &s.url(), "--config"])
        .arg(&config)
        .env("MOIRA_LOG", "info")
        .spawn()
        .expect("spawn notifier");
    notifier.wait_for_line("moira-notifier ready", Duration::from_secs(20));
    let api = format!("http://127.0.0.1:{port}/");
    let w = web(
        &s.url(),
        &[
            "--approvers",
            &registry.display().to_string(),
            "--slack-signing-secret-file",
            &dir.path().join("secret").display().to_string(),
            "--slack-api",
            &api,
        ],
    );
    let g = s
        .client
        .open(OpenGate {
            approvers: vec!["bob".into()],
            ..open("alice", "Ship <it> & see?")
        })
        .await
        .expect("open");
    rx.wait("the Slack message", |r| !r.hits("/slack").is_empty())
        .await;
    let message = rx.hits("/slack")[0].body.clone();
    let buttons = message["blocks"][1]["elements"]
        .as_array()
        .expect("buttons")
        .clone();
    assert_eq!(buttons.len(), 2, "{message}");
    assert!(
        message["blocks"][0]["text"]["text"]
            .as_str()
            .unwrap_or("")
            .contains("Ship &lt;it&gt; &amp; see?"),
        "{message}"
    );
    let approve = buttons
        .iter()
        .find(|b| b["action_id"] == "moira_approve")
        .expect("an approve button");
    assert_eq!(approve["value"], g.id.to_string());
    // bob presses it: Slack sends the action, signed, to moira-web.
    let now = moira_client::protocol::time::now_ms() / 1000;
    let (body, sig) = slack_request(
        secret,
        now,
        "U0BOB",
        approve["action_id"].as_str().expect("id"),
        approve["value"].as_str().expect("value"),
        &format!("{api}resp"),
    );
    let status = reqwest::Client::new()
        .post(w.base.replace("/api/v1", "/slack/interactivity"))
        .header("x-slack-request-timestamp", now.to_string())
        .header("x-slack-signature", sig)
        .body(body)
        .send()
        .await
        .expect("answer")
        .status()
        .as_u16();
    assert_eq!(status, 200);
    let shown = s.client.show(g.id).await.expect("show");
    assert_eq!(
        (shown.status, shown.approved_by.as_deref()),
        (GateStatus::Approved, Some("bob"))
    );
    // The decided gate's message has no buttons.
    rx.wait("the approved message", |r| r.hits("/slack").len() >= 2)
        .await;
    let decided = rx.hits("/slack").last().expect("message").body.clone();
    assert!(decided.get("blocks").is_none(), "{decided}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_click_link_confirms_on_get_decides_once_on_post_and_refuses_forgery_and_age() {
    use moira_service::links::Link;
    let s = Stack::start().await;
    let dir = moira_testkit::TempDir::new("moira-links").expect("tmp");
    let secret = "link-secret-0123456789";
    std::fs::write(dir.path().join("secret"), secret).expect("write");
    let w = web(
        &s.url(),
        &[
            "--link-secret-file",
            &dir.path().join("secret").display().to_string(),
        ],
    );
    let root = w.base.replace("/api/v1", "");
    let g = s
        .client
        .open(OpenGate {
            approvers: vec!["bob".into()],
            ..open("alice", "<script>alert(1)</script> ship?")
        })
        .await
        .expect("open");
    let now = moira_client::protocol::time::now_ms() / 1000;
    let token = Link::new(g.id, "bob", "approve", now, 3600).token(secret);
    let url = format!("{root}/links/{token}");
    let http = reqwest::Client::new();
    // A GET (a mail scanner, a preview) only shows the question.
    let r = http.get(&url).send().await.expect("get");
    assert_eq!(r.status().as_u16(), 200);
    let csp = r
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = r.text().await.expect("page");
    assert!(html.contains("Approve this gate as bob?"), "{html}");
    assert!(
        !html.contains("<script>") && html.contains("&lt;script&gt;"),
        "{html}"
    );
    assert_eq!(
        s.client.show(g.id).await.expect("show").status,
        GateStatus::Waiting
    );
    // The POST from that page decides, as the link's user.
    let r = http.post(&url).send().await.expect("post");
    assert_eq!(r.status().as_u16(), 200);
    let shown = s.client.show(g.id).await.expect("show");
    assert_eq!(
        (shown.status, shown.approved_by.as_deref()),
        (GateStatus::Approved, Some("bob"))
    );
    // A second use is refused.
    let r = http.post(&url).send().await.expect("post");
    assert_eq!(r.status().as_u16(), 409);
    // Another gate: an expired link, one signed elsewhere, one changed.
    let g2 = s
        .client
        .open(OpenGate {
            approvers: vec!["bob".into()],
            ..open("alice", "Two?")
        })
        .await
        .expect("open");
    let old = Link::new(g2.id, "bob", "approve", now - 7200, 3600).token(secret);
    let elsewhere = Link::new(g2.id, "bob", "approve", now, 3600).token("guess");
    let good = Link::new(g2.id, "bob", "deny", now, 3600).token(secret);
    let (_, tag) = good.split_once('.').expect("token");
    let mallory = Link {
        user: "mallory".into(),
        ..Link::new(g2.id, "bob", "deny", now, 3600)
    }
    .token("x");
    let changed = format!("{}.{tag}", mallory.split_once('.').expect("token").0);
    let too_long = Link::new(g2.id, "bob", "approve", now, 30 * 24 * 3600).token(secret);
    for (t, want) in [
        (old, 410),
        (elsewhere, 403),
        (changed, 403),
        (too_long, 403),
    ] {
        let r = http
            .post(format!("{root}/links/{t}"))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), want, "{t}");
    }
    assert_eq!(
        s.client.show(g2.id).await.expect("show").status,
        GateStatus::Waiting
    );
    // The good one still works: a deny, with its reason.
    let r = http
        .post(format!("{root}/links/{good}"))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        s.client.show(g2.id).await.expect("show").status,
        GateStatus::Denied
    );
}

/// schemathesis from PyPI, as `scripts/tools.sh test` installs it.
fn schemathesis() -> std::process::Command {
    let dir = std::env::var_os("MOIRA_SCHEMATHESIS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/py/schemathesis")
        });
    assert!(
        dir.join("schemathesis").is_dir(),
        "schemathesis is not in {dir:?}: run `scripts/tools.sh test` (or set MOIRA_SCHEMATHESIS)"
    );
    let mut c = std::process::Command::new("python3");
    c.args(["-m", "schemathesis.cli"]).env("PYTHONPATH", dir);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_fuzzed_from_its_openapi_document_never_fails_and_answers_as_it_says() {
    let s = crate::runs::Runs::start(1).await;
    let w = web(&s.server.url(), &["--auth", "dev"]);
    // Something to find: gates (one of a run) and a finished run.
    for n in 0..3 {
        s.client
            .open(OpenGate {
                approvers: vec!["bob".into()],
                inputs: vec!["WINDOW".into()],
                ..open("alice", &format!("Ship {n}?"))
            })
            .await
            .expect("open");
    }
    let run = s
        .submit(
            "name: quick\nsteps:\n  - name: one\n    run: echo hi\n",
            &[],
        )
        .await;
    s.finished(&run).await;
    let (code, doc) = call(
        reqwest::Method::GET,
        &format!("{}/openapi.json", w.base),
        &[],
        None,
    )
    .await;
    assert_eq!(code, 200);
    for path in [
        "/api/v1/gates",
        "/api/v1/gates/{id}/{verb}",
        "/api/v1/runs/{id}/logs",
        "/api/v1/events",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "the document lacks {path}: {doc}"
        );
    }
    // schemathesis keeps a cache of what it found in its working folder:
    // a fresh one each run, so no run replays another's and the checkout
    // stays clean.
    let cwd = moira_testkit::TempDir::new("moira-schemathesis").expect("tmp");
    let out = schemathesis()
        .current_dir(cwd.path())
        .args(["run", &format!("{}/openapi.json", w.base), "--url", &w.root])
        .args([
            "--checks",
            "all",
            // A decision the schema allows can still be refused by the
            // gate's own policy (an input it does not collect, a denial
            // without a reason, a required input missing): no static
            // schema says those, so "valid data is accepted" cannot hold.
            "--exclude-checks",
            "positive_data_acceptance",
            // The event stream never ends; its own tests cover it.
            "--exclude-path",
            "/api/v1/events",
            "--header",
            "X-Moira-User: bob",
            "--max-examples",
            "40",
            "--seed",
            "7",
            "--request-timeout",
            "20",
        ])
        .env("NO_COLOR", "1")
        .output()
        .expect("run schemathesis");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}"
    );
}
