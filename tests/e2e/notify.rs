//! The notifier against real receivers: an HTTP server that checks every
//! signature, and an SMTP server, both started by the tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moira_client::{ApproveGate, Client, OpenGate};
use moira_testkit::TempDir;
use moira_tests::{bin, gatekeeper, moira, NatsServer, Proc, ProcBuilder};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const SECRET: &str = "s3cret";

/// One request the HTTP receiver got.
#[derive(Debug, Clone)]
struct Hit {
    path: String,
    signature_ok: bool,
    body: Value,
}

#[derive(Clone, Default)]
struct Receiver {
    hits: Arc<Mutex<Vec<Hit>>>,
    changed: Arc<tokio::sync::Notify>,
    /// Requests to fail per path (500) before answering 200.
    fail_first: Arc<Mutex<HashMap<String, usize>>>,
}

fn expected_signature(body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let hex: String = ring::hmac::sign(&key, body)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

impl Receiver {
    /// Paths: `/garbage` answers bytes that are not HTTP; `/down` answers 500.
    async fn start() -> (Receiver, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let r = Receiver::default();
        let rr = r.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let r = rr.clone();
                tokio::spawn(async move {
                    let _ = r.serve(sock).await;
                });
            }
        });
        (r, port)
    }

    async fn serve(&self, sock: tokio::net::TcpStream) -> std::io::Result<()> {
        let mut rd = BufReader::new(sock);
        let mut line = String::new();
        rd.read_line(&mut line).await?;
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let (mut len, mut sig) = (0usize, String::new());
        loop {
            let mut h = String::new();
            rd.read_line(&mut h).await?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    "x-moira-signature" => sig = v.trim().to_string(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; len];
        rd.read_exact(&mut body).await?;
        if path == "/slow" {
            self.hits.lock().expect("lock").push(Hit {
                path,
                signature_ok: true,
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            });
            self.changed.notify_waiters();
            // Never answer: the notifier's timeout must cut it short.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return Ok(());
        }
        let fail = {
            let mut f = self.fail_first.lock().expect("lock");
            match f.get_mut(&path) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    true
                }
                _ => false,
            }
        };
        let answer: &[u8] = match path.as_str() {
            "/garbage" => b"lol what\r\n\r\n",
            "/down" => b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n",
            _ if fail => b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n",
            _ => b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        };
        let hit = Hit {
            signature_ok: path == "/slack" || sig == expected_signature(&body),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            path,
        };
        self.hits.lock().expect("lock").push(hit);
        let mut sock = rd.into_inner();
        sock.write_all(answer).await?;
        sock.flush().await?;
        self.changed.notify_waiters();
        Ok(())
    }

    fn hits(&self, path: &str) -> Vec<Hit> {
        self.hits
            .lock()
            .expect("lock")
            .iter()
            .filter(|h| h.path == path)
            .cloned()
            .collect()
    }

    /// Hits on `path` of notification `kind` about `gate`.
    fn about(&self, path: &str, kind: &str, gate: &str) -> usize {
        self.hits(path)
            .iter()
            .filter(|h| h.body["kind"] == kind && h.body["gate"]["id"] == gate)
            .count()
    }

    /// Waits until `pred` holds over the hits.
    async fn wait(&self, what: &str, pred: impl Fn(&Receiver) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let notified = self.changed.notified();
            if pred(self) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "the receiver never saw {what}; it got: {:#?}",
                    self.hits.lock().expect("lock")
                );
            }
        }
    }
}

struct Stack {
    client: Client,
    _gk: Proc,
    server: NatsServer,
    dir: TempDir,
}

impl Stack {
    async fn start() -> Stack {
        let server = NatsServer::start();
        let gk = gatekeeper(&server.url(), &[]);
        let client = Client::connect(&server.url()).await.expect("connect");
        Stack {
            client,
            _gk: gk,
            server,
            dir: TempDir::new("moira-notify").expect("tmp"),
        }
    }

    fn notifier(&self, config: &str, data: &str) -> Proc {
        self.notifier_env(config, data, &[])
    }

    fn notifier_env(&self, config: &str, data: &str, env: &[(&str, &str)]) -> Proc {
        let file = self.dir.path().join(format!("{data}.toml"));
        std::fs::write(&file, config).expect("write config");
        let mut b = ProcBuilder::new(bin("moira-notifier"), &format!("moira-notifier {data}"))
            .args(["--nats-url", &self.server.url(), "--config"])
            .arg(&file)
            .arg("--data")
            .arg(self.dir.path().join(data))
            .env("MOIRA_LOG", "info");
        for (k, v) in env {
            b = b.env(k, v);
        }
        let p = b.spawn().expect("spawn notifier");
        p.wait_for_line("moira-notifier ready", Duration::from_secs(20));
        p
    }

    async fn open(&self, spec: OpenGate) -> String {
        self.client.open(spec).await.expect("open").id.to_string()
    }

    async fn approve(&self, id: &str) {
        let gate_id = id.parse().expect("id");
        self.client
            .approve(ApproveGate {
                gate_id,
                actor: "bob".into(),
                ..Default::default()
            })
            .await
            .expect("approve");
    }
}

fn gate(msg: &str) -> OpenGate {
    OpenGate {
        actor: "alice".into(),
        message: msg.into(),
        ..Default::default()
    }
}

fn webhook(name: &str, port: u16, path: &str) -> String {
    format!("[channels.{name}]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{port}{path}\"\nsecret = \"{SECRET}\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_webhooks_for_opened_decided_and_timed_out_gates() {
    let s = Stack::start().await;
    let (rx, port) = Receiver::start().await;
    let _n = s.notifier(
        &format!(
            "{}\n[[rules]]\nchannels = [\"hook\"]\n",
            webhook("hook", port, "/hook")
        ),
        "n1",
    );
    let a = s.open(gate("Deploy A?")).await;
    s.approve(&a).await;
    let b = s
        .open(OpenGate {
            timeout_ms: Some(1000),
            ..gate("Deploy B?")
        })
        .await;
    rx.wait("opened/approved/timed_out", |r| {
        r.about("/hook", "opened", &a) == 1
            && r.about("/hook", "approved", &a) == 1
            && r.about("/hook", "timed_out", &b) == 1
    })
    .await;
    let hits = rx.hits("/hook");
    assert!(
        hits.iter().all(|h| h.signature_ok),
        "every request is signed with the shared secret"
    );
    let approved = hits
        .iter()
        .find(|h| h.body["kind"] == "approved")
        .expect("approved");
    assert_eq!(approved.body["gate"]["approved_by"], "bob");
    assert!(approved.body["id"]
        .as_str()
        .is_some_and(|i| i.starts_with("MOIRA_GATES:")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_rules_trust_run_gates_and_gates_name_only_opted_in_channels() {
    let s = Stack::start().await;
    let (rx, port) = Receiver::start().await;
    let config = format!(
        "gate_channels = [\"named\", \"team\"]\n{}{}{}[channels.team]\ntype = \"slack\"\nurl = \"http://127.0.0.1:{port}/slack\"\n\
         [[rules]]\nkinds = [\"approved\"]\nchannels = [\"decisions\"]\n\
         [[rules]]\nmetadata = {{ env = \"prod\" }}\nchannels = [\"prod\"]\n",
        webhook("decisions", port, "/decisions"),
        webhook("prod", port, "/prod"),
        webhook("named", port, "/named"),
    );
    let _n = s.notifier(&config, "n1");
    let prod = s
        .open(OpenGate {
            metadata: [("env".into(), "prod".into())].into(),
            run_id: Some("r-prod".into()),
            step: Some("deploy".into()),
            ..gate("Prod?")
        })
        .await;
    // Not a runner's gate: its metadata does not route it, and it cannot
    // name a channel that did not opt in.
    let spoof = s
        .open(OpenGate {
            metadata: [
                ("env".into(), "prod".into()),
                ("notify".into(), "prod".into()),
            ]
            .into(),
            ..gate("Spoof?")
        })
        .await;
    let dev = s
        .open(OpenGate {
            metadata: [("notify".into(), "named,team".into())].into(),
            ..gate("Dev? <!channel> <https://evil.example/login|open in moira>")
        })
        .await;
    s.approve(&prod).await;
    s.approve(&spoof).await;
    s.approve(&dev).await;
    rx.wait("all routed deliveries", |r| {
        r.about("/prod", "approved", &prod) == 1
            && r.about("/decisions", "approved", &dev) == 1
            && r.about("/decisions", "approved", &spoof) == 1
            && r.about("/named", "approved", &dev) == 1
            && r.hits("/slack").len() == 2
    })
    .await;
    assert_eq!(rx.about("/prod", "opened", &prod), 1);
    assert_eq!(
        rx.about("/decisions", "opened", &prod),
        0,
        "the decisions rule is for approvals only"
    );
    for other in [&dev, &spoof] {
        assert_eq!(
            rx.hits("/prod")
                .iter()
                .filter(|h| h.body["gate"]["id"] == other.as_str())
                .count(),
            0,
            "{other} must not reach the prod channel"
        );
    }
    // Handlers run concurrently: pick the "opened" message, not the first.
    let slack = rx.hits("/slack");
    let text = slack
        .iter()
        .filter_map(|h| h.body["text"].as_str())
        .find(|t| t.contains("waiting for approval"))
        .unwrap_or_default()
        .to_string();
    assert!(
        !text.contains("Decided by"),
        "an opened message shows the gate as it was when opened: {text}"
    );
    assert!(
        text.contains("Dev?") && text.contains("moira gate approve"),
        "{text}"
    );
    assert!(
        text.contains("&lt;!channel&gt;") && !text.contains("<!channel>"),
        "a gate's text cannot mention the channel: {text}"
    );
    assert!(
        !text.contains("<https://evil.example"),
        "a gate's text cannot make a link: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reminders_stop_once_decided_and_escalation_fires_once() {
    let s = Stack::start().await;
    let (rx, port) = Receiver::start().await;
    let config = format!(
        "{}{}[[rules]]\nkinds = [\"reminder\"]\nchannels = [\"hook\"]\n[reminders]\nevery = \"1s\"\n[escalation]\nafter = \"1s\"\nchannels = [\"oncall\"]\n",
        webhook("hook", port, "/hook"),
        webhook("oncall", port, "/oncall"),
    );
    let _n = s.notifier(&config, "n1");
    let g = s.open(gate("Waiting a while")).await;
    rx.wait("two reminders and an escalation", |r| {
        r.about("/hook", "reminder", &g) >= 2 && r.about("/oncall", "escalated", &g) == 1
    })
    .await;
    s.approve(&g).await;
    let reminders_then = rx.about("/hook", "reminder", &g);
    // Another gate's reminders are the clock: two of them take over 2s.
    let h = s.open(gate("The clock")).await;
    rx.wait("the clock's reminders", |r| {
        r.about("/hook", "reminder", &h) >= 2
    })
    .await;
    assert!(
        rx.about("/hook", "reminder", &g) <= reminders_then + 1,
        "reminders stop once the gate is decided"
    );
    assert_eq!(
        rx.about("/oncall", "escalated", &g),
        1,
        "escalation fires once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_notifiers_deliver_each_event_once() {
    let s = Stack::start().await;
    let (rx, port) = Receiver::start().await;
    let config = format!(
        "{}[[rules]]\nchannels = [\"hook\"]\n",
        webhook("hook", port, "/hook")
    );
    let n1 = s.notifier(&config, "n1");
    let n2 = s.notifier(&config, "n2");
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(s.open(gate(&format!("gate {i}"))).await);
    }
    for id in &ids {
        s.approve(id).await;
    }
    rx.wait("all approvals", |r| {
        ids.iter().all(|g| r.about("/hook", "approved", g) >= 1)
    })
    .await;
    for id in &ids {
        assert_eq!(
            rx.about("/hook", "opened", id),
            1,
            "opened {id} delivered once"
        );
        assert_eq!(
            rx.about("/hook", "approved", id),
            1,
            "approved {id} delivered once"
        );
    }
    let worked = |p: &Proc| p.output().iter().any(|l| l.contains("delivered"));
    assert!(worked(&n1) || worked(&n2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_notifier_misses_nothing_and_repeats_no_success() {
    let s = Stack::start().await;
    let (rx, port) = Receiver::start().await;
    let config = format!(
        "{}[[rules]]\nchannels = [\"hook\"]\n",
        webhook("hook", port, "/hook")
    );
    let mut n = s.notifier(&config, "n1");
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(s.open(gate(&format!("gate {i}"))).await);
    }
    n.wait_for_nth_line("delivered", 5, Duration::from_secs(30));
    n.kill();
    // What the notifier had recorded as delivered when it was killed: it
    // logs "delivered" only after the record is stored.
    let recorded: Vec<String> = n
        .output()
        .iter()
        .filter(|l| l.contains("delivered") && !l.contains("not recorded"))
        .filter_map(|l| {
            l.split("notification=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .map(str::to_string)
        })
        .collect();
    assert!(
        !recorded.is_empty(),
        "some deliveries were recorded before the kill"
    );
    let _n = s.notifier(&config, "n1");
    rx.wait("every opened gate", |r| {
        ids.iter().all(|g| r.about("/hook", "opened", g) >= 1)
    })
    .await;
    // Everything is delivered after the restart, so a repeat would be here by now.
    for id in &recorded {
        let times = rx
            .hits("/hook")
            .iter()
            .filter(|h| h.body["id"] == id.as_str())
            .count();
        assert_eq!(
            times, 1,
            "{id} was recorded as delivered before the kill, and delivered again"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_then_success_and_failures_are_listed() {
    let s = Stack::start().await;
    let (rx, port) = Receiver::start().await;
    rx.fail_first
        .lock()
        .expect("lock")
        .insert("/flaky".into(), 2);
    let config = format!(
        "{}{}{}{}[[rules]]\nchannels = [\"flaky\", \"down\", \"garbage\", \"slow\"]\n[delivery]\nattempts = 3\nbackoff = \"50ms\"\ntimeout = \"500ms\"\n",
        webhook("flaky", port, "/flaky"),
        webhook("down", port, "/down"),
        webhook("garbage", port, "/garbage"),
        webhook("slow", port, "/slow"),
    );
    let n = s.notifier(&config, "n1");
    let g = s.open(gate("Flaky?")).await;
    rx.wait("three tries each", |r| {
        r.about("/flaky", "opened", &g) == 3
            && r.about("/down", "opened", &g) == 3
            && r.about("/garbage", "opened", &g) == 3
    })
    .await;
    n.wait_for_nth_line("giving up", 3, Duration::from_secs(30));
    let (code, out, err) = moira(&s.server.url(), &["--json", "notify", "failures"]);
    assert_eq!(code, 0, "{err}");
    let failures: Vec<Value> = serde_json::from_str(&out).expect("json");
    let channels: Vec<&str> = failures
        .iter()
        .filter_map(|f| f["channel"].as_str())
        .collect();
    assert!(
        channels.contains(&"down")
            && channels.contains(&"garbage")
            && channels.contains(&"slow")
            && !channels.contains(&"flaky"),
        "{out}"
    );
    assert!(
        failures
            .iter()
            .all(|f| f["attempts"] == 3 && f["gate_id"] == g.as_str()),
        "{out}"
    );
    // The notifier is still serving.
    let again = s.open(gate("Still there?")).await;
    rx.wait("the next event", |r| {
        r.about("/flaky", "opened", &again) == 1
    })
    .await;
}

/// A minimal SMTP server that keeps each message it receives.
async fn smtp_server() -> (Arc<Mutex<Vec<String>>>, Arc<tokio::sync::Notify>, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mails = Arc::new(Mutex::new(Vec::new()));
    let notify = Arc::new(tokio::sync::Notify::new());
    let (m, nt) = (mails.clone(), notify.clone());
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let (m, nt) = (m.clone(), nt.clone());
            tokio::spawn(async move {
                let (rd, mut wr) = sock.into_split();
                let mut lines = BufReader::new(rd).lines();
                let _ = wr.write_all(b"220 test ESMTP\r\n").await;
                let mut data: Option<String> = None;
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(d) = data.as_mut() {
                        if line == "." {
                            m.lock()
                                .expect("lock")
                                .push(data.take().unwrap_or_default());
                            nt.notify_waiters();
                            let _ = wr.write_all(b"250 queued\r\n").await;
                        } else {
                            d.push_str(&line);
                            d.push('\n');
                        }
                        continue;
                    }
                    let reply: &[u8] = match line
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_ascii_uppercase()
                        .as_str()
                    {
                        "EHLO" => b"250-test\r\n250 OK\r\n",
                        "MAIL" | "RCPT" => b"250 OK\r\n",
                        "DATA" => {
                            data = Some(String::new());
                            b"354 go on\r\n"
                        }
                        "QUIT" => b"221 bye\r\n",
                        _ => b"502 no\r\n",
                    };
                    let _ = wr.write_all(reply).await;
                }
            });
        }
    });
    (mails, notify, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_and_exec_channels_and_exec_gets_no_notifier_secrets() {
    let s = Stack::start().await;
    let (mails, arrived, smtp_port) = smtp_server().await;
    let out = s.dir.path().join("exec");
    let config = format!(
        "[channels.mail]\ntype = \"email\"\nsmtp = \"127.0.0.1:{smtp_port}\"\nfrom = \"moira@example.com\"\nto = [\"ops@example.com\"]\n\
         [channels.script]\ntype = \"exec\"\ncommand = [\"sh\", \"-c\", \"cat > {out}.$MOIRA_EVENT.json; echo \\\"$MOIRA_GATE_ID $MOIRA_GATE_MESSAGE $MOIRA_WAITING_GATES ${{SMTP_SECRET:-none}}\\\" > {out}.$MOIRA_EVENT.env\"]\n\
         [[rules]]\nkinds = [\"opened\"]\nchannels = [\"mail\", \"script\"]\n",
        out = out.display()
    );
    let n = s.notifier_env(&config, "n1", &[("SMTP_SECRET", "hunter2")]);
    let g = s.open(gate("Mail me?")).await;
    n.wait_for_nth_line("delivered", 2, Duration::from_secs(30));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while mails.lock().expect("lock").is_empty() {
        tokio::time::timeout_at(deadline, arrived.notified())
            .await
            .expect("a mail arrives");
    }
    let mail = mails.lock().expect("lock")[0].clone();
    assert!(
        mail.contains("Subject: [moira] waiting for approval: Mail me?"),
        "{mail}"
    );
    assert!(mail.contains(&format!("moira gate approve {g}")), "{mail}");
    let env = std::fs::read_to_string(format!("{}.opened.env", out.display())).expect("exec ran");
    assert_eq!(
        env.trim(),
        format!("{g} Mail me? {g} none"),
        "the command sees the event, not the notifier's environment"
    );
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{}.opened.json", out.display())).expect("stdin"),
    )
    .expect("the event as JSON on stdin");
    assert_eq!(json["gate"]["id"], g.as_str());
}

#[test]
fn a_bad_config_is_refused_at_start() {
    let server = NatsServer::start();
    let dir = TempDir::new("moira-notify-bad").expect("tmp");
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[channels.hook]\ntype = \"webhook\"\nurl = \"not a url\"\n[[rules]]\nchannels = [\"ghost\"]\n").expect("write");
    let mut p = ProcBuilder::new(bin("moira-notifier"), "moira-notifier")
        .args(["--nats-url", &server.url(), "--config"])
        .arg(&file)
        .arg("--data")
        .arg(dir.path())
        .spawn()
        .expect("spawn");
    let line = p.wait_for_line("unknown channel 'ghost'", Duration::from_secs(20));
    assert!(
        p.output().iter().any(|l| l.contains("needs a secret")),
        "{line}"
    );
    assert_eq!(
        p.wait(Duration::from_secs(20)).and_then(|s| s.code()),
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_that_finish_or_fail_are_routed_by_workflow() {
    let s = Stack::start().await;
    let (rx, port) = Receiver::start().await;
    let config = format!(
        "{}[[rules]]\nkinds = [\"run_finished\", \"run_failed\"]\nworkflow = \"nightly\"\nchannels = [\"hook\"]\n",
        webhook("hook", port, "/hook")
    );
    let _n = s.notifier(&config, "n1");
    let _runner = ProcBuilder::new(bin("moira-runner"), "moira-runner")
        .args(["--nats-url", &s.server.url(), "--work-dir"])
        .arg(s.dir.path().join("work"))
        .spawn()
        .expect("spawn runner");
    _runner.wait_for_line("moira-runner ready", Duration::from_secs(20));
    let ok = s
        .client
        .submit_run(
            "name: nightly\nsteps:\n  - {name: a, run: 'true'}\n",
            &Default::default(),
            "alice",
        )
        .await
        .expect("submit");
    let bad = s
        .client
        .submit_run(
            "name: nightly\nsteps:\n  - {name: a, run: 'exit 2'}\n",
            &Default::default(),
            "alice",
        )
        .await
        .expect("submit");
    let other = s
        .client
        .submit_run(
            "name: other\nsteps:\n  - {name: a, run: 'true'}\n",
            &Default::default(),
            "alice",
        )
        .await
        .expect("submit");
    for r in [&ok, &bad, &other] {
        s.client.wait_run(r).await.expect("run ends");
    }
    rx.wait("run_finished", run_hit("run_finished", ok.clone()))
        .await;
    rx.wait("run_failed", run_hit("run_failed", bad.clone()))
        .await;
    // By now the other workflow's run would have been delivered too, had it matched.
    assert!(
        !rx.hits("/hook")
            .iter()
            .any(|h| h.body["run"]["id"] == other.as_str()),
        "only the nightly workflow is routed"
    );
}

fn run_hit(kind: &'static str, run: String) -> impl Fn(&Receiver) -> bool {
    move |r: &Receiver| {
        r.hits("/hook")
            .iter()
            .any(|h| h.body["kind"] == kind && h.body["run"]["id"] == run.as_str())
    }
}
