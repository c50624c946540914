//! The locked-down broker of `deploy/nats/locked/`: TLS only, one user per
//! role with the permissions of `roles.conf`. Keys and certificates are
//! made here at run time. Every service and person connects with its own
//! credentials; what a role may not do, the server refuses.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use moira_testkit::{find_nats_server, free_port, TempDir};
use moira_tests::{bin, Proc, ProcBuilder};

/// A CA and a server certificate for 127.0.0.1 and localhost, as PEM files.
pub(crate) struct Tls {
    pub(crate) ca: PathBuf,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

pub(crate) fn make_tls(dir: &Path) -> Tls {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "moira test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");
    let key = rcgen::KeyPair::generate().expect("server key");
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("params");
    let cert = params.signed_by(&key, &ca).expect("server cert");
    let tls = Tls {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server-key.pem"),
    };
    std::fs::write(&tls.ca, ca.pem()).expect("write ca");
    std::fs::write(&tls.cert, cert.pem()).expect("write cert");
    std::fs::write(&tls.key, key.serialize_pem()).expect("write key");
    tls
}

/// One NKey user: the seed file a process is given, and its public key.
struct NKeyUser {
    seed_file: PathBuf,
    public: String,
}

fn nkey_user(dir: &Path, name: &str) -> NKeyUser {
    let kp = nkeys::KeyPair::new_user();
    let seed_file = dir.join(format!("{name}.nk"));
    std::fs::write(&seed_file, kp.seed().expect("seed")).expect("write seed");
    NKeyUser {
        seed_file,
        public: kp.public_key(),
    }
}

/// The same, made the way the README tells a person to: `moira nkey new`.
fn nkey_user_by_cli(dir: &Path, name: &str) -> NKeyUser {
    let seed_file = dir.join(format!("{name}.nk"));
    let out = std::process::Command::new(bin("moira"))
        .args(["nkey", "new"])
        .arg(&seed_file)
        .output()
        .expect("run moira nkey new");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        public.starts_with('U') && public.len() == 56,
        "a user public key: {public}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&seed_file)
        .expect("seed file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the seed is private to its owner");
    let again = std::process::Command::new(bin("moira"))
        .args(["nkey", "new"])
        .arg(&seed_file)
        .output()
        .expect("run moira nkey new");
    assert_eq!(
        again.status.code(),
        Some(1),
        "an existing seed is never overwritten"
    );
    NKeyUser { seed_file, public }
}

/// Everyone who connects to the locked broker in these tests.
struct Users {
    admin: NKeyUser,
    gatekeeper: NKeyUser,
    runner: NKeyUser,
    notifier: NKeyUser,
    bob: NKeyUser,
    alice_password: String,
}

/// The locked configs copied into a folder, with a users.conf for `users`.
fn write_configs(dir: &Path, users: &Users) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats/locked");
    // The files as they are, but for the store folder (moved into `dir`);
    // ports and routes are moved to free ones on the command line.
    for f in [
        "roles.conf",
        "node.conf",
        "cluster-n1.conf",
        "cluster-n2.conf",
        "cluster-n3.conf",
    ] {
        let text = std::fs::read_to_string(src.join(f)).unwrap_or_else(|e| panic!("read {f}: {e}"));
        let store = dir.join(format!("store-{f}"));
        let text = text.replace(
            "\"/var/lib/moira-nats\"",
            &format!("{:?}", store.display().to_string()),
        );
        std::fs::write(dir.join(f), text).unwrap_or_else(|e| panic!("write {f}: {e}"));
    }
    let conf = format!(
        "include \"roles.conf\"\nauthorization {{\n  users = [\n    \
         {{nkey: {}, permissions: $GATEKEEPER}}\n    {{nkey: {}, permissions: $RUNNER}}\n    \
         {{nkey: {}, permissions: $NOTIFIER}}\n    {{nkey: {}, permissions: $PERSON}}\n    \
         {{user: alice, password: \"{}\", permissions: $PERSON}}\n    {{nkey: {}, permissions: $ADMIN}}\n  ]\n}}\n",
        users.gatekeeper.public,
        users.runner.public,
        users.notifier.public,
        users.bob.public,
        users.alice_password,
        users.admin.public
    );
    std::fs::write(dir.join("users.conf"), conf).expect("write users.conf");
}

struct Locked {
    dir: TempDir,
    tls: Tls,
    users: Users,
    nodes: Vec<Proc>,
    ports: Vec<u16>,
}

impl Locked {
    fn prepare(name: &str) -> Locked {
        let dir = TempDir::new(name).expect("tmp");
        let tls = make_tls(dir.path());
        let users = Users {
            admin: nkey_user(dir.path(), "admin"),
            gatekeeper: nkey_user(dir.path(), "gatekeeper"),
            runner: nkey_user(dir.path(), "runner"),
            notifier: nkey_user(dir.path(), "notifier"),
            bob: nkey_user_by_cli(dir.path(), "bob"),
            alice_password: uuid::Uuid::new_v4().simple().to_string(),
        };
        write_configs(dir.path(), &users);
        Locked {
            dir,
            tls,
            users,
            nodes: Vec::new(),
            ports: Vec::new(),
        }
    }

    fn node(&self, config: &str, port: u16) -> ProcBuilder {
        let server = find_nats_server().expect("nats-server").path;
        ProcBuilder::new(&server, config)
            .args(["-c", &self.dir.path().join(config).display().to_string()])
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["-m", &free_port().to_string()])
            .env("MOIRA_TLS_CERT", &self.tls.cert)
            .env("MOIRA_TLS_KEY", &self.tls.key)
            .env("MOIRA_TLS_CA", &self.tls.ca)
    }

    /// One node from node.conf.
    fn single() -> Locked {
        let mut l = Locked::prepare("moira-locked");
        let port = free_port();
        let n = l
            .node("node.conf", port)
            .spawn()
            .expect("spawn nats-server");
        n.wait_for_line("Server is ready", Duration::from_secs(20));
        l.nodes.push(n);
        l.ports.push(port);
        l
    }

    /// Three nodes from cluster-n{1,2,3}.conf, routes over mutual TLS.
    fn cluster() -> Locked {
        let mut l = Locked::prepare("moira-locked-cluster");
        let cports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes = cports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        for i in 1..=3 {
            let port = free_port();
            let n = l
                .node(&format!("cluster-n{i}.conf"), port)
                .args(["--cluster", &format!("nats://127.0.0.1:{}", cports[i - 1])])
                .args(["--routes", &routes])
                .spawn()
                .expect("spawn nats-server");
            l.nodes.push(n);
            l.ports.push(port);
        }
        for n in &l.nodes {
            n.wait_for_line("Server is ready", Duration::from_secs(30));
        }
        // The routes are up (over mutual TLS) once a meta leader is elected.
        let leader = [
            "JetStream cluster new metadata leader",
            "Self is new JetStream cluster metadata leader",
        ];
        let elected = (0..300).any(|_| {
            l.nodes.iter().any(|n| {
                n.try_wait_for(&leader, 1, Duration::from_millis(100))
                    .is_some()
            })
        });
        let logs: Vec<String> = l.nodes.iter().flat_map(|n| n.output()).collect();
        assert!(
            elected,
            "the locked cluster elected a meta leader: {logs:#?}"
        );
        l
    }

    fn url(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("tls://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn service(&self, binary: &str, user: &NKeyUser, extra: &[&str]) -> Proc {
        let p = ProcBuilder::new(bin(binary), binary)
            .args(["--nats-url", &self.url(), "--nkey"])
            .arg(&user.seed_file)
            .arg("--tls-ca")
            .arg(&self.tls.ca)
            .args(extra)
            .env("MOIRA_LOG", "info")
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {binary}: {e}"));
        p.wait_for_line(&format!("{binary} ready"), Duration::from_secs(30));
        p
    }

    /// The CLI as alice (password) or bob (NKey).
    fn moira(&self, who: &str, args: &[&str]) -> (i32, String, String) {
        self.moira_env(who, args, &[])
    }

    /// [`Locked::moira`] with extra environment (an agent's socket, say).
    fn moira_env(&self, who: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
        let mut cmd = std::process::Command::new(bin("moira"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.args(["--nats-url", &self.url(), "--tls-ca"])
            .arg(&self.tls.ca)
            .args(["--as", who]);
        match who {
            "alice" => {
                cmd.env("MOIRA_NATS_USER", "alice")
                    .env("MOIRA_NATS_PASSWORD", &self.users.alice_password);
            }
            "admin" => {
                cmd.arg("--nkey").arg(&self.users.admin.seed_file);
            }
            _ => {
                cmd.arg("--nkey").arg(&self.users.bob.seed_file);
            }
        }
        let out = cmd
            .args(args)
            .env_remove("MOIRA_USER")
            .output()
            .expect("run moira");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The CLI as a long-running process (watch, follow).
    fn moira_proc(&self, who: &str, args: &[&str]) -> Proc {
        let mut b = ProcBuilder::new(bin("moira"), &format!("moira {}", args.join(" ")))
            .args(["--nats-url", &self.url(), "--tls-ca"])
            .arg(&self.tls.ca)
            .args(["--as", who]);
        b = match who {
            "alice" => b
                .env("MOIRA_NATS_USER", "alice")
                .env("MOIRA_NATS_PASSWORD", &self.users.alice_password),
            _ => b.arg("--nkey").arg(&self.users.bob.seed_file),
        };
        b.args(args).spawn().expect("spawn moira")
    }

    /// A raw client with bob's credentials, for trying what a person may
    /// not, and the errors the server sends it.
    async fn person(&self) -> Person {
        let seed = std::fs::read_to_string(&self.users.bob.seed_file).expect("seed");
        let (tx, errors) = tokio::sync::mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::new()
            .nkey(seed.trim().to_string())
            .add_root_certificates(self.tls.ca.clone())
            .require_tls(true)
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    if let async_nats::Event::ServerError(e) = event {
                        let _ = tx.send(e.to_string());
                    }
                }
            })
            .connect(self.url().split(',').collect::<Vec<_>>())
            .await
            .expect("bob connects");
        Person { client, errors }
    }
}

/// What the server told these processes it refused.
fn violations(procs: &[&Proc]) -> Vec<String> {
    procs
        .iter()
        .flat_map(|p| p.output())
        .filter(|l| l.contains("Permissions Violation"))
        .collect()
}

struct Person {
    client: async_nats::Client,
    errors: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Person {
    /// Waits for the server to refuse something naming `what`.
    async fn refused(&mut self, what: &str) {
        let wait = async {
            while let Some(e) = self.errors.recv().await {
                if e.contains("Permissions Violation") && e.contains(what) {
                    return;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .unwrap_or_else(|_| panic!("the server never refused {what}"));
    }
}

const FLOW: &str = r#"
name: locked
steps:
  - name: approve
    use: moira.gate
    with: { message: "Ship it?", approvers: { users: [bob] } }
  - name: ship
    run: echo "shipped by ${{ steps.approve.outputs.approved_by }}"
    depends_on: [approve]
"#;

/// A run on the locked broker: submitted by alice, its gate approved by
/// bob from the CLI, run by a runner with its own key.
fn a_run_is_approved_from_the_cli(l: &Locked) {
    let file = l.dir.path().join("flow.yml");
    std::fs::write(&file, FLOW).expect("write");
    let (code, out, err) = l.moira("alice", &["run", "submit", &file.display().to_string()]);
    assert_eq!(code, 0, "alice submits: {err}");
    let run = out.trim().to_string();
    let watch = l.moira_proc("bob", &["--json", "gate", "watch", "--all", "--run", &run]);
    let opened = watch.wait_for_line("GateOpened", Duration::from_secs(30));
    let v: serde_json::Value = serde_json::from_str(&opened).expect("a JSON line");
    let gate = v["gate_id"].as_str().expect("gate id").to_string();
    let logs = l.moira_proc(
        "alice",
        &["run", "logs", &run, "--step", "ship", "--follow"],
    );
    let (code, _, err) = l.moira("bob", &["gate", "approve", &gate, "--comment", "ok"]);
    assert_eq!(code, 0, "bob approves: {err}");
    logs.wait_for_line("shipped by bob", Duration::from_secs(60));
}

/// alice opens a gate for bob; bob approves it through moira-web, which
/// runs with a person's role behind a (here simulated) proxy on loopback.
async fn a_gate_is_approved_through_the_web(l: &Locked, listen: &str) {
    let (code, out, err) = l.moira(
        "alice",
        &[
            "gate",
            "open",
            "--message",
            "Via the web?",
            "--approver",
            "bob",
        ],
    );
    assert_eq!(code, 0, "alice opens: {err}");
    let gate = out.lines().next().expect("the gate id").trim().to_string();
    let http = reqwest::Client::new();
    let base = format!("http://{listen}/api/v1");
    let events = http
        .get(format!("{base}/events"))
        .send()
        .await
        .expect("events");
    assert_eq!(events.status().as_u16(), 200);
    let list = http
        .get(format!("{base}/gates"))
        .send()
        .await
        .expect("list");
    assert_eq!(list.status().as_u16(), 200);
    let r = http
        .post(format!("{base}/gates/{gate}/approve"))
        .header("x-forwarded-user", "bob")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("approve");
    let status = r.status().as_u16();
    let body = r.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"approved_by\":\"bob\""), "{body}");
    // A one-click link works once here too (its nonce goes to a bucket).
    let (code, out, err) = l.moira(
        "alice",
        &["gate", "open", "--message", "By link?", "--approver", "bob"],
    );
    assert_eq!(code, 0, "alice opens: {err}");
    let gate: moira_client::GateId = out
        .lines()
        .next()
        .expect("id")
        .trim()
        .parse()
        .expect("a gate id");
    let now = moira_client::protocol::time::now_ms() / 1000;
    let token = moira_service::links::Link::new(gate, "bob", "approve", now, 600)
        .token("locked-link-secret");
    let url = format!("http://{listen}/links/{token}");
    let first = http
        .post(&url)
        .send()
        .await
        .expect("post")
        .status()
        .as_u16();
    let again = http
        .post(&url)
        .send()
        .await
        .expect("post")
        .status()
        .as_u16();
    assert_eq!((first, again), (200, 409));
}

/// What a person may not do, each refused by the server itself.
async fn a_person_is_refused_what_is_not_theirs(l: &Locked) {
    let mut p = l.person().await;
    let bob = p.client.clone();
    let gate = uuid::Uuid::now_v7();
    for subject in [
        format!("moira.gate.ev.{gate}"),
        format!("moira.gate.sched.{gate}"),
        format!("moira.live.gate.ev.{gate}"),
        format!("moira.run.ev.{gate}"),
        format!("moira.job.{gate}"),
        "moira.svc.gate.open".to_string(),
        "$JS.API.STREAM.PURGE.MOIRA_GATES".to_string(),
        "$JS.API.STREAM.DELETE.MOIRA_GATES".to_string(),
        // A person may delete ephemeral consumers (its own finished
        // reads), never a shared durable one.
        "$JS.API.CONSUMER.DELETE.MOIRA_GATES.moira-resumer".to_string(),
        "$JS.API.CONSUMER.DELETE.MOIRA_GATES.moira-index-gates".to_string(),
        "$JS.API.CONSUMER.DELETE.MOIRA_RUNS.moira-index-runs".to_string(),
        "$JS.API.CONSUMER.DELETE.MOIRA_RUNS.moira-notifier-runs".to_string(),
        "$JS.API.CONSUMER.DELETE.MOIRA_NOTIFY.moira-notifier-fire".to_string(),
        "$JS.API.CONSUMER.MSG.NEXT.MOIRA_JOBS.moira-runners".to_string(),
        "$KV.MOIRA_REGISTRY.approvers".to_string(),
    ] {
        let _ = bob.publish(subject.clone(), "{}".into()).await;
        let _ = bob.flush().await;
        p.refused(&format!("Publish to \"{subject}\"")).await;
    }
    // Taking over the runners' durable consumer through the ephemeral
    // create that readers use: the server refuses a named consumer there.
    for name in ["moira-resumer", "moira-notifier-gates"] {
        let body = serde_json::json!({
            "stream_name": "MOIRA_GATES",
            "config": {"name": name, "durable_name": name, "filter_subject": "nope.>",
                       "deliver_policy": "new", "ack_policy": "explicit"},
            "action": ""
        });
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            bob.request(
                "$JS.API.CONSUMER.CREATE.MOIRA_GATES",
                body.to_string().into(),
            ),
        )
        .await
        .expect("an answer")
        .expect("a reply");
        let v: serde_json::Value = serde_json::from_slice(&reply.payload).expect("json");
        assert!(v.get("error").is_some(), "{name} must not be replaced: {v}");
    }
    // Joining the gate-keepers' queue group, or listening to commands.
    let _sub = bob
        .queue_subscribe("moira.cmd.gate.*", "gatekeeper".to_string())
        .await;
    let _ = bob.flush().await;
    p.refused("Subscription to \"moira.cmd.gate.*\"").await;
    // A forged live event never reaches a waiter: a subscriber sees nothing
    // but the real events of the gate.
    let (code, out, err) = l.moira(
        "alice",
        &["gate", "open", "--message", "Live?", "--approver", "bob"],
    );
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_string();
    let watcher = l.person().await.client;
    let mut live = watcher
        .subscribe(format!("moira.live.gate.ev.{id}"))
        .await
        .expect("subscribe");
    watcher.flush().await.expect("flush");
    let _ = bob
        .publish(format!("moira.live.gate.ev.{id}"), "forged".into())
        .await;
    let _ = bob.flush().await;
    let (code, _, err) = l.moira("bob", &["gate", "approve", &id]);
    assert_eq!(code, 0, "{err}");
    let first = tokio::time::timeout(
        Duration::from_secs(10),
        futures_util::StreamExt::next(&mut live),
    )
    .await
    .expect("the real event arrives")
    .expect("a message");
    assert_ne!(
        &first.payload[..],
        b"forged",
        "the forged message was delivered"
    );
    let (_, out, _) = l.moira("alice", &["--json", "gate", "show", &id]);
    assert!(out.contains("\"approved\""), "{out}");
}

/// A plain TCP client that skips TLS is refused by the server.
fn plain_connections_are_refused(port: u16) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("tcp");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut info = String::new();
    r.read_line(&mut info).expect("INFO");
    assert!(info.contains("\"tls_required\":true"), "{info}");
    s.write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n")
        .expect("write");
    let mut answer = String::new();
    let _ = r.read_line(&mut answer);
    assert!(
        !answer.starts_with("PONG"),
        "a plain connection must not be served: {answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_locked_single_node_serves_each_role_and_refuses_the_rest() {
    let l = Locked::single();
    let gk = l.service(
        "moira-gatekeeper",
        &l.users.gatekeeper,
        &["--strict", "--approvers-kv"],
    );
    // An admin writes the shared registry over TLS; the gate-keeper takes it.
    let admin_key = crate::signatures::ssh_keygen(l.dir.path(), "admin-ssh", "ed25519");
    let reg = l.dir.path().join("approvers.toml");
    std::fs::write(
        &reg,
        format!(
            "[users.admin]\nroles = [\"admin\"]\nkeys = [\"{}\"]\n[users.bob]\nroles = [\"owner\"]\n",
            crate::signatures::public(&admin_key)
        ),
    )
    .expect("write");
    let key_arg = admin_key.display().to_string();
    let reg_arg = reg.display().to_string();
    let (code, _, err) = l.moira(
        "admin",
        &["--key", &key_arg, "approvers", "apply", &reg_arg],
    );
    assert_eq!(code, 0, "the admin writes the registry: {err}");
    gk.wait_for_line("approvers registry in force", Duration::from_secs(20));
    let work = l.dir.path().join("work");
    let runner = l.service(
        "moira-runner",
        &l.users.runner,
        &["--work-dir", &work.display().to_string()],
    );
    let notifier = l.service("moira-notifier", &l.users.notifier, &[]);
    a_run_is_approved_from_the_cli(&l);
    // moira-web needs nothing beyond a person's role.
    let listen = format!("127.0.0.1:{}", moira_testkit::free_port());
    let link_secret = l.dir.path().join("link-secret");
    std::fs::write(&link_secret, "locked-link-secret").expect("write");
    let web = l.service(
        "moira-web",
        &l.users.bob,
        &[
            "--listen",
            &listen,
            "--auth",
            "proxy",
            "--link-secret-file",
            &link_secret.display().to_string(),
        ],
    );
    a_gate_is_approved_through_the_web(&l, &listen).await;
    let refused = violations(&[&gk, &runner, &notifier, &web]);
    assert!(
        refused.is_empty(),
        "the roles can do their jobs without a refusal: {refused:?}"
    );
    a_person_is_refused_what_is_not_theirs(&l).await;
    // After all that, runs still park and resume.
    a_run_is_approved_from_the_cli(&l);
    plain_connections_are_refused(l.ports[0]);
    // A process with a wrong key is refused and says so.
    let stranger = nkey_user(l.dir.path(), "stranger");
    let mut p = ProcBuilder::new(bin("moira-gatekeeper"), "stranger")
        .args(["--nats-url", &l.url(), "--nkey"])
        .arg(&stranger.seed_file)
        .arg("--tls-ca")
        .arg(&l.tls.ca)
        .spawn()
        .expect("spawn");
    let status = p.wait(Duration::from_secs(20)).expect("exits");
    assert_eq!(status.code(), Some(1));
    assert!(
        p.output()
            .iter()
            .any(|l| l.to_lowercase().contains("authorization")),
        "{:?}",
        p.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_locked_cluster_runs_r3_over_tls_and_refuses_a_person_the_same_way() {
    let l = Locked::cluster();
    let gk = l.service(
        "moira-gatekeeper",
        &l.users.gatekeeper,
        &["--replicas", "3"],
    );
    let work = l.dir.path().join("work");
    let runner = l.service(
        "moira-runner",
        &l.users.runner,
        &["--replicas", "3", "--work-dir", &work.display().to_string()],
    );
    a_run_is_approved_from_the_cli(&l);
    let refused = violations(&[&gk, &runner]);
    assert!(refused.is_empty(), "{refused:?}");
    a_person_is_refused_what_is_not_theirs(&l).await;
}

/// The README's production setup, as written: the locked broker, the
/// shared registry written by an admin, every service on its own NKey and
/// SSH key with `--signatures require`, a run submitted with alice's key
/// file and approved by bob's key in a real ssh-agent; then the trail
/// checked by `moira gate verify` and `moira audit verify` (registry read
/// from the bucket), and each exported decision by plain `ssh-keygen`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_production_setup_signs_every_event_and_the_export_checks_with_ssh_keygen() {
    use crate::signatures::{agent_holding, public, ssh_keygen, ssh_keygen_verify};
    let l = Locked::single();
    let d = l.dir.path();
    let admin = ssh_keygen(d, "admin-ssh", "ed25519");
    let alice = ssh_keygen(d, "alice-ssh", "ed25519");
    let bob = ssh_keygen(d, "bob-ssh", "ed25519");
    let gk_key = ssh_keygen(d, "gatekeeper-ssh", "ed25519");
    let runner_key = ssh_keygen(d, "runner-ssh", "ed25519");
    let reg = d.join("approvers.toml");
    std::fs::write(
        &reg,
        format!(
            "[users.admin]\nroles = [\"admin\"]\nkeys = [\"{}\"]\n\
             [users.alice]\nkeys = [\"{}\"]\n\
             [users.bob]\nroles = [\"owner\"]\nkeys = [\"{}\"]\n\
             [services.gatekeeper]\nkeys = [\"{}\"]\n\
             [services.runner]\nkeys = [\"{}\"]\n",
            public(&admin),
            public(&alice),
            public(&bob),
            public(&gk_key),
            public(&runner_key)
        ),
    )
    .expect("write");
    let arg = |p: &Path| p.display().to_string();
    let (code, _, err) = l.moira(
        "admin",
        &["--key", &arg(&admin), "approvers", "apply", &arg(&reg)],
    );
    assert_eq!(code, 0, "the admin writes the registry: {err}");
    let gk = l.service(
        "moira-gatekeeper",
        &l.users.gatekeeper,
        &[
            "--strict",
            "--signatures",
            "require",
            "--approvers-kv",
            "--key",
            &arg(&gk_key),
        ],
    );
    let work = d.join("work");
    let runner = l.service(
        "moira-runner",
        &l.users.runner,
        &[
            "--signatures",
            "require",
            "--approvers-kv",
            "--key",
            &arg(&runner_key),
            "--work-dir",
            &arg(&work),
        ],
    );
    let (_agent, sock) = agent_holding(d, &bob);
    let sock = arg(&sock);
    let agent_env = [("SSH_AUTH_SOCK", sock.as_str())];

    let file = d.join("flow.yml");
    std::fs::write(&file, FLOW).expect("write");
    // Unsigned, alice's submit is refused; with her key it runs.
    let (code, _, err) = l.moira("alice", &["run", "submit", &arg(&file)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("unsigned"), "{err}");
    let (code, out, err) = l.moira(
        "alice",
        &["--key", &arg(&alice), "run", "submit", &arg(&file)],
    );
    assert_eq!(code, 0, "alice submits: {err}");
    let run = out.trim().to_string();
    let watch = l.moira_proc("bob", &["--json", "gate", "watch", "--all", "--run", &run]);
    let opened = watch.wait_for_line("GateOpened", Duration::from_secs(30));
    let v: serde_json::Value = serde_json::from_str(&opened).expect("a JSON line");
    let gate = v["gate_id"].as_str().expect("gate id").to_string();
    let logs = l.moira_proc(
        "alice",
        &["run", "logs", &run, "--step", "ship", "--follow"],
    );
    let (code, _, err) = l.moira_env(
        "bob",
        &["--agent", "gate", "approve", &gate, "--comment", "ok"],
        &agent_env,
    );
    assert_eq!(code, 0, "bob approves with the agent's key: {err}");
    logs.wait_for_line("shipped by bob", Duration::from_secs(60));

    // The trail, checked against the registry history in the bucket.
    let (code, out, err) = l.moira("bob", &["gate", "verify", &gate, "--require-signatures"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("GateApproved by bob, signed SHA256:"), "{out}");
    let (code, out, err) = l.moira(
        "bob",
        &["audit", "verify", "--run", &run, "--require-signatures"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("RunSubmitted by alice, signed"), "{out}");

    // Each exported decision checks with plain ssh-keygen; a flipped byte fails.
    let evidence = d.join("evidence");
    let (code, out, err) = l.moira("bob", &["audit", "export", &gate, "--dir", &arg(&evidence)]);
    assert_eq!(code, 0, "{err}");
    let exported: Vec<(&str, &str)> = out
        .lines()
        .filter_map(|l| l.split_once("  (-I "))
        .map(|(f, who)| (f, who.trim_end_matches(')')))
        .collect();
    let identities: Vec<&str> = exported.iter().map(|(_, w)| *w).collect();
    assert_eq!(
        identities,
        ["moira-service:runner", "bob"],
        "the runner's open and bob's approval: {out}"
    );
    let check = |statement: &str, who: &str| {
        ssh_keygen_verify(
            &evidence.join("allowed_signers"),
            Path::new(statement),
            None,
            who,
        )
    };
    for (statement, who) in &exported {
        let v = check(statement, who);
        assert!(
            v.status.success(),
            "{statement}: {}",
            String::from_utf8_lossy(&v.stderr)
        );
    }
    let (approval, _) = exported[1];
    let mut bytes = std::fs::read(approval).expect("read");
    bytes[40] ^= 1;
    std::fs::write(approval, &bytes).expect("write");
    assert!(!check(approval, "bob").status.success());
    let refused = violations(&[&gk, &runner]);
    assert!(refused.is_empty(), "{refused:?}");
}
