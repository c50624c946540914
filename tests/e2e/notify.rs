//! The notifier against real receivers: an HTTP server that checks every
//! signature, and an SMTP server, both started by the tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moira_client::{ApproveGate, Client, GateStatus, OpenGate};
use moira_testkit::TempDir;
use moira_tests::{bin, gatekeeper, moira, NatsServer, Proc, ProcBuilder};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const SECRET: &str = "s3cret";

/// One request the HTTP receiver got.
#[derive(Debug, Clone)]
pub(crate) struct Hit {
    pub(crate) path: String,
    pub(crate) signature_ok: bool,
    pub(crate) body: Value,
    /// The Authorization header, if any.
    pub(crate) auth: String,
}

#[derive(Clone, Default)]
pub(crate) struct Receiver {
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
    pub(crate) async fn start() -> (Receiver, u16) {
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
        let (mut len, mut sig, mut auth) = (0usize, String::new(), String::new());
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
                    "authorization" => auth = v.trim().to_string(),
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
                auth,
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
            // Slack's Web API answers 200 and says in the body.
            p if p.starts_with("/api/") => {
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}"
            }
            _ => b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        };
        let hit = Hit {
            signature_ok: path == "/slack" || sig == expected_signature(&body),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            path,
            auth,
        };
        self.hits.lock().expect("lock").push(hit);
        let mut sock = rd.into_inner();
        sock.write_all(answer).await?;
        sock.flush().await?;
        self.changed.notify_waiters();
        Ok(())
    }

    pub(crate) fn hits(&self, path: &str) -> Vec<Hit> {
        self.hits
            .lock()
            .expect("lock")
            .iter()
            .filter(|h| h.path == path)
            .cloned()
            .collect()
    }

    /// Hits on `path` of notification `kind` about `gate`.
    pub(crate) fn about(&self, path: &str, kind: &str, gate: &str) -> usize {
        self.hits(path)
            .iter()
            .filter(|h| h.body["kind"] == kind && h.body["gate"]["id"] == gate)
            .count()
    }

    /// Waits until `pred` holds over the hits.
    pub(crate) async fn wait(&self, what: &str, pred: impl Fn(&Receiver) -> bool) {
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
        self.notifier_with(config, data, &[], env)
    }

    fn notifier_with(&self, config: &str, data: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let file = self.dir.path().join(format!("{data}.toml"));
        std::fs::write(&file, config).expect("write config");
        let mut b = ProcBuilder::new(bin("moira-notifier"), &format!("moira-notifier {data}"))
            .args(["--nats-url", &self.server.url(), "--config"])
            .arg(&file)
            .args(args)
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

pub(crate) fn webhook(name: &str, port: u16, path: &str) -> String {
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
    // Events of one gate are handled concurrently: its open may be told
    // after its approval, so wait for that too.
    rx.wait("all routed deliveries", |r| {
        r.about("/prod", "opened", &prod) == 1
            && r.about("/prod", "approved", &prod) == 1
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
async fn reminders_made_under_an_old_config_stop_once_the_config_drops_them() {
    let s = Stack::start().await;
    let (rx, port) = Receiver::start().await;
    let hooks = format!(
        "{}{}[[rules]]\nkinds = [\"reminder\"]\nchannels = [\"hook\"]\n",
        webhook("hook", port, "/hook"),
        webhook("oncall", port, "/oncall"),
    );
    let mut n1 = s.notifier(&format!("{hooks}[reminders]\nevery = \"1s\"\n"), "n1");
    let g = s.open(gate("Remind me")).await;
    rx.wait("a reminder", |r| r.about("/hook", "reminder", &g) >= 1)
        .await;
    n1.stop(Duration::from_secs(10));
    // The same notifiers, restarted without [reminders]; an escalation
    // after 3s serves as the clock.
    let n2 = s.notifier(
        &format!("{hooks}[escalation]\nafter = \"3s\"\nchannels = [\"oncall\"]\n"),
        "n2",
    );
    n2.wait_for_line(
        "ending a schedule the config no longer has",
        Duration::from_secs(30),
    );
    let then = rx.about("/hook", "reminder", &g);
    let clock = s.open(gate("The clock")).await;
    rx.wait("the clock's escalation", |r| {
        r.about("/oncall", "escalated", &clock) == 1
    })
    .await;
    assert_eq!(
        rx.about("/hook", "reminder", &g),
        then,
        "a reminder the config no longer has went on firing"
    );
}

/// Writes a delivery record as another notifier would have.
async fn record_delivery(s: &Stack, seq: u64, channel: &str, state: &str) {
    let js = async_nats::jetstream::new(s.client.nats().clone());
    let kv = js
        .get_key_value("MOIRA_NOTIFY_DELIVERIES")
        .await
        .expect("the notifier made the bucket");
    let key = format!("MOIRA_GATES=3a{seq}.{channel}");
    let value = serde_json::json!({
        "state": state,
        "by": "notifier-elsewhere",
        "at": moira_client::protocol::time::now_ms(),
    });
    kv.create(
        key.as_str(),
        serde_json::to_vec(&value).expect("json").into(),
    )
    .await
    .expect("record");
}

async fn next_gate_seq(s: &Stack) -> u64 {
    let js = async_nats::jetstream::new(s.client.nats().clone());
    let mut stream = js
        .get_stream(moira_client::protocol::wire::GATES_STREAM)
        .await
        .expect("stream");
    stream.info().await.expect("info").state.last_sequence + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_claimed_elsewhere_waits_for_it_and_an_abandoned_claim_is_taken_over_once() {
    let s = Stack::start().await;
    let (rx, port) = Receiver::start().await;
    // A one-second timeout makes a claim stale after 7s.
    let config = format!(
        "{}[[rules]]\nkinds = [\"opened\"]\nchannels = [\"hook\"]\n[delivery]\ntimeout = \"1s\"\n",
        webhook("hook", port, "/hook")
    );
    let n = s.notifier(&config, "n1");
    // Delivered by someone else already: never delivered here.
    let seq = next_gate_seq(&s).await;
    record_delivery(&s, seq, "hook", "delivered").await;
    let done = s.open(gate("Told already")).await;
    // Claimed just now by a notifier that then died.
    let seq = next_gate_seq(&s).await;
    record_delivery(&s, seq, "hook", "claimed").await;
    let claimed = s.open(gate("Claimed elsewhere")).await;
    let fresh = s.open(gate("Nobody's")).await;
    rx.wait("the unclaimed gate", |r| {
        r.about("/hook", "opened", &fresh) == 1
    })
    .await;
    assert_eq!(
        rx.about("/hook", "opened", &claimed),
        0,
        "delivered under another's claim"
    );
    n.wait_for_line("took over an abandoned delivery", Duration::from_secs(30));
    rx.wait("the abandoned one", |r| {
        r.about("/hook", "opened", &claimed) == 1
    })
    .await;
    assert_eq!(rx.about("/hook", "opened", &done), 0, "delivered twice");
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
    // Events are handled concurrently, and a retried delivery can land
    // after a later event's: wait for both kinds before counting.
    rx.wait("every open and approval", |r| {
        ids.iter()
            .all(|g| r.about("/hook", "opened", g) >= 1 && r.about("/hook", "approved", g) >= 1)
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
        "{}{}{}{}[[rules]]\nchannels = [\"flaky\", \"down\", \"garbage\", \"slow\"]\n[delivery]\nattempts = 3\nbackoff = \"50ms\"\ntimeout = \"2s\"\n",
        webhook("flaky", port, "/flaky"),
        webhook("down", port, "/down"),
        webhook("garbage", port, "/garbage"),
        webhook("slow", port, "/slow"),
    );
    // The timeout is what cuts `/slow` short; it is long enough that on a
    // loaded machine no try of the others ends before the receiver reads it
    // (a try cut short there would not be seen, and would count).
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

/// What the test SMTP server saw in one session.
#[derive(Debug, Clone, Default)]
struct Session {
    /// Commands, in order, each with whether TLS was on when it came.
    commands: Vec<(String, bool)>,
    /// Each DATA section exactly as it came over the wire, with its end.
    mails: Vec<Vec<u8>>,
}

#[derive(Clone, Default)]
struct SmtpServer {
    sessions: Arc<Mutex<Vec<Session>>>,
    changed: Arc<tokio::sync::Notify>,
}

impl SmtpServer {
    /// Listens on a free port; offers STARTTLS when given a TLS setup.
    async fn start(tls: Option<tokio_rustls::TlsAcceptor>) -> (SmtpServer, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = SmtpServer::default();
        let srv = server.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (srv, tls) = (srv.clone(), tls.clone());
                tokio::spawn(async move {
                    let mut seen = Session::default();
                    let mut sock = sock;
                    let _ = sock.write_all(b"220 test ESMTP\r\n").await;
                    let upgrade = smtp_session(&mut sock, tls.is_some(), false, &mut seen).await;
                    if let (true, Some(acceptor)) = (upgrade, tls) {
                        if let Ok(mut t) = acceptor.accept(sock).await {
                            smtp_session(&mut t, false, true, &mut seen).await;
                        }
                    }
                    srv.sessions.lock().expect("lock").push(seen);
                    srv.changed.notify_waiters();
                });
            }
        });
        (server, port)
    }

    fn sessions(&self) -> Vec<Session> {
        self.sessions.lock().expect("lock").clone()
    }

    fn mails(&self) -> Vec<String> {
        self.sessions()
            .iter()
            .flat_map(|s| {
                s.mails
                    .iter()
                    .map(|m| String::from_utf8_lossy(m).into_owned())
            })
            .collect()
    }

    async fn wait_sessions(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let wait = self.changed.notified();
            if self.sessions.lock().expect("lock").len() >= n {
                return;
            }
            tokio::time::timeout_at(deadline, wait)
                .await
                .expect("an SMTP session ends in time");
        }
    }
}

/// Serves SMTP commands until QUIT or the end; true when the client asked
/// for STARTTLS (and it was offered).
async fn smtp_session<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    sock: &mut S,
    offer_starttls: bool,
    tls: bool,
    seen: &mut Session,
) -> bool {
    let mut rd = BufReader::new(sock);
    let mut line = Vec::new();
    loop {
        line.clear();
        if rd.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
            return false;
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let verb = text
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        seen.commands.push((verb.clone(), tls));
        let reply: &[u8] = match verb.as_str() {
            "EHLO" if offer_starttls => b"250-test\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n",
            "EHLO" => b"250-test\r\n250 AUTH PLAIN LOGIN\r\n",
            "STARTTLS" if offer_starttls => {
                let _ = rd.get_mut().write_all(b"220 go ahead\r\n").await;
                return true;
            }
            "AUTH" => b"235 ok\r\n",
            "MAIL" | "RCPT" | "RSET" | "NOOP" => b"250 OK\r\n",
            "DATA" => {
                let _ = rd.get_mut().write_all(b"354 go on\r\n").await;
                let mut raw = Vec::new();
                loop {
                    let mut l = Vec::new();
                    if rd.read_until(b'\n', &mut l).await.unwrap_or(0) == 0 {
                        return false;
                    }
                    raw.extend_from_slice(&l);
                    if l == b".\r\n" {
                        break;
                    }
                }
                seen.mails.push(raw);
                b"250 queued\r\n"
            }
            "QUIT" => {
                let _ = rd.get_mut().write_all(b"221 bye\r\n").await;
                return false;
            }
            _ => b"502 no\r\n",
        };
        let _ = rd.get_mut().write_all(reply).await;
    }
}

/// A TLS acceptor for 127.0.0.1 and the CA file that trusts it.
fn smtp_tls(dir: &std::path::Path) -> (tokio_rustls::TlsAcceptor, std::path::PathBuf) {
    let t = crate::locked::make_tls(dir);
    let certs: Vec<rustls::pki_types::CertificateDer<'static>> =
        rustls::pki_types::pem::PemObject::pem_file_iter(&t.cert)
            .expect("read cert")
            .map(|c| c.expect("cert"))
            .collect();
    let key = <rustls::pki_types::PrivateKeyDer<'static> as rustls::pki_types::pem::PemObject>::from_pem_file(&t.key)
        .expect("read key");
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), t.ca)
}

fn mail_channel(port: u16, extra: &str) -> String {
    format!(
        "[channels.mail]\ntype = \"email\"\nsmtp = \"127.0.0.1:{port}\"\nfrom = \"moira@example.com\"\nto = [\"ops@example.com\"]\n{extra}\
         [[rules]]\nkinds = [\"opened\"]\nchannels = [\"mail\"]\n[delivery]\nattempts = 2\nbackoff = \"50ms\"\ntimeout = \"5s\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_text_cannot_end_an_email_early_or_smuggle_a_second_one() {
    let s = Stack::start().await;
    let (smtp, port) = SmtpServer::start(None).await;
    let _n = s.notifier(&mail_channel(port, "tls = \"none\"\n"), "n1");
    // A bare CR before the dot: read by some servers as the end of DATA,
    // after which the rest would be a second, forged mail.
    let message = "deploy\r.\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nforged\r\n.\r\nthe end";
    s.open(gate(message)).await;
    smtp.wait_sessions(1).await;
    let sessions = smtp.sessions();
    let mails: Vec<&Vec<u8>> = sessions.iter().flat_map(|s| &s.mails).collect();
    assert_eq!(mails.len(), 1, "one mail");
    let mail_commands = sessions
        .iter()
        .flat_map(|s| &s.commands)
        .filter(|(c, _)| c == "MAIL")
        .count();
    assert_eq!(mail_commands, 1);
    let raw = mails[0];
    for (i, b) in raw.iter().enumerate() {
        if *b == b'\r' {
            assert_eq!(
                raw.get(i + 1),
                Some(&b'\n'),
                "a bare CR went out at byte {i}"
            );
        }
        if *b == b'\n' {
            assert!(
                i > 0 && raw[i - 1] == b'\r',
                "a bare LF went out at byte {i}"
            );
        }
    }
    let text = String::from_utf8_lossy(raw);
    assert!(text.contains("the end"), "{text}");
    assert_eq!(
        text.matches("\r\n.\r\n").count(),
        1,
        "only the real end of data: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_goes_over_starttls_and_credentials_never_travel_in_clear() {
    let s = Stack::start().await;
    let (acceptor, ca) = smtp_tls(s.dir.path());
    let (smtp, port) = SmtpServer::start(Some(acceptor)).await;
    let creds = "username = \"moira\"\npassword_env = \"MOIRA_SMTP_PASSWORD\"\n";
    let ca = ca.display().to_string();
    let env = [
        ("MOIRA_SMTP_PASSWORD", "pw"),
        ("SSL_CERT_FILE", ca.as_str()),
    ];
    let mut n1 = s.notifier_env(&mail_channel(port, creds), "n1", &env);
    s.open(gate("Over TLS?")).await;
    smtp.wait_sessions(1).await;
    let session = &smtp.sessions()[0];
    assert!(
        session.commands.contains(&("STARTTLS".into(), false)),
        "{session:?}"
    );
    for (c, tls) in &session.commands {
        if ["AUTH", "MAIL", "RCPT", "DATA"].contains(&c.as_str()) {
            assert!(tls, "{c} was sent before TLS: {session:?}");
        }
    }
    assert!(
        session.commands.iter().any(|(c, _)| c == "AUTH"),
        "{session:?}"
    );
    assert!(smtp.mails()[0].contains("Over TLS?"));

    // A server that does not offer STARTTLS gets neither the password nor
    // the mail: there is no fallback to plain text.
    n1.stop(Duration::from_secs(10));
    let (plain, plain_port) = SmtpServer::start(None).await;
    let n2 = s.notifier_env(&mail_channel(plain_port, creds), "n2", &env);
    s.open(gate("Downgrade?")).await;
    n2.wait_for_line("giving up", Duration::from_secs(30));
    for session in plain.sessions() {
        assert!(
            !session
                .commands
                .iter()
                .any(|(c, _)| ["AUTH", "MAIL", "DATA"].contains(&c.as_str())),
            "{session:?}"
        );
        assert!(session.mails.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_and_exec_channels_and_exec_gets_no_notifier_secrets() {
    let s = Stack::start().await;
    let (smtp, smtp_port) = SmtpServer::start(None).await;
    let out = s.dir.path().join("exec");
    let config = format!(
        "[channels.mail]\ntype = \"email\"\nsmtp = \"127.0.0.1:{smtp_port}\"\ntls = \"none\"\nfrom = \"moira@example.com\"\nto = [\"ops@example.com\"]\n\
         [channels.script]\ntype = \"exec\"\ncommand = [\"sh\", \"-c\", \"cat > {out}.$MOIRA_EVENT.json; echo \\\"$MOIRA_GATE_ID $MOIRA_GATE_MESSAGE $MOIRA_WAITING_GATES ${{SMTP_SECRET:-none}}\\\" > {out}.$MOIRA_EVENT.env\"]\n\
         [[rules]]\nkinds = [\"opened\"]\nchannels = [\"mail\", \"script\"]\n",
        out = out.display()
    );
    let n = s.notifier_env(&config, "n1", &[("SMTP_SECRET", "hunter2")]);
    let g = s.open(gate("Mail me?")).await;
    n.wait_for_nth_line("delivered", 2, Duration::from_secs(30));
    smtp.wait_sessions(1).await;
    let mail = smtp.mails()[0].clone();
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

/// A registry where bob is named, carol holds the owner role, and dave
/// holds it too but has no address; and the link secret moira-web shares.
fn approvers_and_secret(dir: &std::path::Path) -> (String, String) {
    let reg = dir.join("approvers.toml");
    std::fs::write(
        &reg,
        "[users.bob]\nemail = \"bob@example.com\"\nslack = \"U0BOB\"\n\
         [users.carol]\nroles = [\"owner\"]\nemail = \"carol@example.com\"\nslack = \"U0CAROL\"\n\
         [users.dave]\nroles = [\"owner\"]\n[users.alice]\nroles = [\"owner\"]\nemail = \"alice@example.com\"\n",
    )
    .expect("write");
    let secret = dir.join("link-secret");
    std::fs::write(&secret, "a-shared-link-secret-0123456789abcdef").expect("write");
    (reg.display().to_string(), secret.display().to_string())
}

/// A mail body as its reader sees it: quoted-printable soft line breaks
/// joined and `=XX` escapes decoded (lettre wraps long lines that way).
fn unquote(mail: &str) -> String {
    let joined = mail.replace("=\r\n", "");
    let b = joined.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'=', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The one-click links in a message, in order.
fn links_in(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || c == '<' || c == '>' || c == '|')
        .filter(|w| w.contains("/links/"))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_approver_gets_a_mail_of_their_own_whose_links_decide_only_as_them() {
    let s = Stack::start().await;
    let (reg, secret) = approvers_and_secret(s.dir.path());
    let w = crate::web::web(&s.server.url(), &["--link-secret-file", &secret]);
    let (smtp, port) = SmtpServer::start(None).await;
    let config = format!(
        "base_url = \"{}\"\n[links]\nsecret_file = \"{secret}\"\nttl = \"1h\"\n{}",
        w.root,
        mail_channel(port, "tls = \"none\"\napprovers = true\n")
    );
    let _n = s.notifier_with(&config, "n1", &["--approvers", &reg], &[]);
    // alice opened it and may not approve it herself: no mail for her.
    let gate = s
        .open(OpenGate {
            approvers: vec!["bob".into()],
            roles: vec!["owner".into()],
            allow_self_approval: Some(false),
            ..gate("Ship v2?")
        })
        .await;
    // ops (the shared list), bob and carol; dave has no address.
    smtp.wait_sessions(3).await;
    let mails: Vec<String> = smtp.mails().iter().map(|m| unquote(m)).collect();
    assert_eq!(mails.len(), 3, "{mails:#?}");
    let to = |addr: &str| {
        mails
            .iter()
            .find(|m| m.contains(&format!("To: {addr}")))
            .unwrap_or_else(|| panic!("no mail to {addr}: {mails:#?}"))
            .clone()
    };
    let (ops, bob, carol) = (
        to("ops@example.com"),
        to("bob@example.com"),
        to("carol@example.com"),
    );
    assert!(
        links_in(&ops).is_empty(),
        "the shared mail carries no one's links: {ops}"
    );
    assert!(!mails.iter().any(|m| m.contains("alice@example.com")));
    let (bob_links, carol_links) = (links_in(&bob), links_in(&carol));
    assert_eq!(
        (bob_links.len(), carol_links.len()),
        (2, 2),
        "{bob}\n{carol}"
    );
    assert!(
        bob.contains("For bob alone") && !bob.contains("carol"),
        "{bob}"
    );
    assert!(bob_links.iter().all(|l| !carol.contains(l.as_str())));
    // bob's Approve link: opening it decides nothing; its button decides as bob.
    let http = reqwest::Client::new();
    let page = http
        .get(&bob_links[0])
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    assert!(page.contains("as bob"), "{page}");
    assert_eq!(
        s.client
            .show(gate.parse().expect("id"))
            .await
            .expect("show")
            .status,
        GateStatus::Waiting
    );
    let r = http.post(&bob_links[0]).send().await.expect("post");
    assert_eq!(r.status().as_u16(), 200);
    let g = s
        .client
        .show(gate.parse().expect("id"))
        .await
        .expect("show");
    assert_eq!(
        (g.status, g.approved_by.as_deref()),
        (GateStatus::Approved, Some("bob"))
    );
    assert_eq!(g.approvals[0].via.as_deref(), Some("link"));
    // carol's Deny link comes too late: the gate is decided.
    let r = http.post(&carol_links[1]).send().await.expect("post");
    assert_eq!(r.status().as_u16(), 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slack_bot_posts_buttons_to_its_channel_and_each_approver_their_own_links_in_a_dm() {
    let s = Stack::start().await;
    let (reg, secret) = approvers_and_secret(s.dir.path());
    let (rx, port) = Receiver::start().await;
    let config = format!(
        "base_url = \"http://moira.example.com\"\n[links]\nsecret_file = \"{secret}\"\n\
         [channels.bot]\ntype = \"slack_bot\"\ntoken_env = \"TEST_SLACK_TOKEN\"\nchannel = \"C0RELEASE\"\n\
         direct = true\nbuttons = true\napi = \"http://127.0.0.1:{port}/api/\"\n\
         [[rules]]\nkinds = [\"opened\"]\nchannels = [\"bot\"]\n[delivery]\nattempts = 2\nbackoff = \"50ms\"\ntimeout = \"5s\"\n"
    );
    let _n = s.notifier_with(
        &config,
        "n1",
        &["--approvers", &reg],
        &[("TEST_SLACK_TOKEN", "xoxb-test-token")],
    );
    let gate = s
        .open(OpenGate {
            approvers: vec!["bob".into()],
            roles: vec!["owner".into()],
            ..gate("Ship <!channel> v3?")
        })
        .await;
    // The channel, bob and carol (alice may approve her own gate here).
    rx.wait("three posts", |r| {
        r.hits("/api/chat.postMessage").len() >= 3
    })
    .await;
    let posts = rx.hits("/api/chat.postMessage");
    assert!(
        posts.iter().all(|h| h.auth == "Bearer xoxb-test-token"),
        "{posts:#?}"
    );
    let to = |c: &str| {
        posts
            .iter()
            .find(|h| h.body["channel"] == c)
            .unwrap_or_else(|| panic!("nothing posted to {c}: {posts:#?}"))
            .body
            .clone()
    };
    let channel = to("C0RELEASE");
    let text = |b: &Value| b["text"].as_str().unwrap_or("").to_string();
    assert!(
        links_in(&text(&channel)).is_empty(),
        "the channel gets no one's links"
    );
    assert!(
        !text(&channel).contains("<!channel>"),
        "the gate's text is escaped: {channel}"
    );
    assert_eq!(channel["blocks"][1]["elements"][0]["value"], gate.as_str());
    let bob = to("U0BOB");
    let links = links_in(&text(&bob));
    assert_eq!(links.len(), 2, "{bob}");
    assert!(links
        .iter()
        .all(|l| l.starts_with("http://moira.example.com/links/")));
    assert!(text(&bob).contains("Approve as bob"));
    let carol = to("U0CAROL");
    assert!(text(&carol).contains("Approve as carol") && !text(&carol).contains("as bob"));
    assert!(links_in(&text(&carol)).iter().all(|l| !links.contains(l)));
    assert_eq!(
        to("U0CAROL")["blocks"][1]["elements"][1]["action_id"],
        "moira_deny"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_stages_approvers_are_mailed_when_their_stage_begins() {
    use moira_client::protocol::stages::Stage;
    let s = Stack::start().await;
    let (reg, _) = approvers_and_secret(s.dir.path());
    let (smtp, port) = SmtpServer::start(None).await;
    // The rule names "opened": a later stage beginning asks as an open does.
    let config = mail_channel(port, "tls = \"none\"\napprovers = true\n");
    let _n = s.notifier_with(&config, "n1", &["--approvers", &reg], &[]);
    let gate = s
        .open(OpenGate {
            stages: vec![
                Stage {
                    users: vec!["bob".into()],
                    ..Default::default()
                },
                Stage {
                    roles: vec!["owner".into()],
                    count: 1,
                    ..Default::default()
                },
            ],
            allow_self_approval: Some(false),
            ..gate("Ship v3?")
        })
        .await;
    // Stage 1: the shared list and bob, not the owners yet.
    smtp.wait_sessions(2).await;
    let mails: Vec<String> = smtp.mails().iter().map(|m| unquote(m)).collect();
    assert_eq!(mails.len(), 2, "{mails:#?}");
    assert!(mails.iter().any(|m| m.contains("To: bob@example.com")));
    assert!(
        !mails.iter().any(|m| m.contains("carol@example.com")),
        "{mails:#?}"
    );
    s.approve(&gate).await;
    // Stage 2 begins: the shared list again, and carol (dave has no
    // address, alice opened the gate); bob is not asked twice.
    smtp.wait_sessions(4).await;
    let mails: Vec<String> = smtp.mails().iter().map(|m| unquote(m)).collect();
    let later = &mails[2..];
    assert_eq!(later.len(), 2, "{mails:#?}");
    let carol = later
        .iter()
        .find(|m| m.contains("To: carol@example.com"))
        .unwrap_or_else(|| panic!("no mail to carol: {later:#?}"));
    assert!(carol.contains("your stage of approval began"), "{carol}");
    assert!(
        carol.contains("Stage 2 of 2: roles owner may approve now"),
        "{carol}"
    );
    assert!(!later.iter().any(|m| m.contains("To: bob@example.com")));
    assert!(!mails.iter().any(|m| m.contains("alice@example.com")));
}
