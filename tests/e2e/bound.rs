//! Approvals bound to exactly what was approved: artifacts by digest, a
//! tool call by the digest of its canonical JSON, and `valid_for`, checked
//! by `moira gate check`, by the NATS check request and by runs.

use std::path::Path;
use std::time::Duration;

use moira_client::protocol::binding::{ActionCall, Artifact};
use moira_client::protocol::GateStatus;
use moira_client::{ApproveGate, GateId, OpenGate};
use moira_tests::moira;

use crate::Stack;

fn digest_of(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        moira_client::protocol::statement::sha256_hex(bytes)
    )
}

/// Opens a gate through the CLI as alice; returns its id.
fn open_cli(url: &str, extra: &[&str]) -> GateId {
    let mut args = vec![
        "--as",
        "alice",
        "gate",
        "open",
        "--message",
        "Ship it?",
        "--approver",
        "bob",
    ];
    args.extend_from_slice(extra);
    let (code, out, err) = moira(url, &args);
    assert_eq!(code, 0, "open: {err}");
    out.trim().parse().expect("a gate id")
}

fn check(url: &str, gate: GateId, how: &[&str]) -> (i32, String, String) {
    let g = gate.to_string();
    let mut args = vec!["gate", "check", g.as_str()];
    args.extend_from_slice(how);
    moira(url, &args)
}

fn approve_cli(url: &str, gate: GateId) {
    let (code, _, err) = moira(url, &["--as", "bob", "gate", "approve", &gate.to_string()]);
    assert_eq!(code, 0, "approve: {err}");
}

/// The check request outside tools send, answered by a gate-keeper.
async fn check_request(s: &Stack, gate: GateId, digest: &str) -> serde_json::Value {
    let body = serde_json::json!({ "gate_id": gate, "digest": digest }).to_string();
    let reply = s
        .client
        .nats()
        .request(
            moira_client::protocol::wire::GATE_CHECK.to_string(),
            body.into(),
        )
        .await
        .expect("a reply");
    serde_json::from_slice(&reply.payload).expect("a JSON reply")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_gate_covers_only_its_digest_once_approved_on_every_path() {
    let s = Stack::start().await;
    let url = s.url();
    let dir = moira_testkit::TempDir::new("moira-bound").expect("tmp");
    let file = dir.path().join("app.tar.gz");
    std::fs::write(&file, b"the build that was reviewed").expect("write");
    let good = digest_of(b"the build that was reviewed");
    let other = digest_of(b"another build");
    let path = file.display().to_string();
    // Named by a file: its name and SHA-256 are taken from it.
    let gate = open_cli(&url, &["--artifact", &path]);
    let shown = s.client.show(gate).await.expect("show");
    assert_eq!(
        shown.subject,
        vec![Artifact {
            name: "app.tar.gz".into(),
            digest: good.clone()
        }]
    );
    let (_, text, _) = moira(&url, &["gate", "show", &gate.to_string()]);
    assert!(text.contains("approves:") && text.contains(&good), "{text}");

    // Not approved yet: refused, with the reason.
    let (code, _, err) = check(&url, gate, &["--digest", &good]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("waiting, not approved"), "{err}");
    let r = check_request(&s, gate, &good).await;
    assert_eq!(r["error"]["code"], "not_covered", "{r}");

    approve_cli(&url, gate);
    let (code, out, err) = check(&url, gate, &["--digest", &good]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("approved by bob"), "{out}");
    let (code, _, _) = check(&url, gate, &["--file", &path]);
    assert_eq!(code, 0, "the same bytes");
    // Upper-case hex is the same digest.
    let (code, _, _) = check(
        &url,
        gate,
        &["--digest", &good.to_uppercase().replace("SHA256", "sha256")],
    );
    assert_eq!(code, 0);
    let r = check_request(&s, gate, &good).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["gate"]["subject"][0]["digest"], good.as_str());

    // Any other artifact is refused, naming what was approved.
    let (code, _, err) = check(&url, gate, &["--digest", &other]);
    assert_eq!(code, 6);
    assert!(err.contains(&format!("app.tar.gz {good}")), "{err}");
    std::fs::write(&file, b"a build swapped in after the review").expect("write");
    let (code, _, _) = check(&url, gate, &["--file", &path]);
    assert_eq!(code, 6, "changed bytes are not covered");
    let r = check_request(&s, gate, &other).await;
    assert_eq!(r["error"]["code"], "not_covered", "{r}");
    let (code, out, _) = moira(&url, &["gate", "outputs", &gate.to_string()]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("digests={good}")), "{out}");

    // A gate that names nothing covers nothing.
    let plain = open_cli(&url, &[]);
    approve_cli(&url, plain);
    let (code, _, err) = check(&url, plain, &["--digest", &good]);
    assert_eq!(code, 6);
    assert!(err.contains("names no artifact or action"), "{err}");

    // Bad input: a clear error, and nothing opened or answered.
    let before = s
        .client
        .list(&Default::default())
        .await
        .expect("list")
        .len();
    for bad in ["app=sha256:zz", "app=sha256:", "/no/such/file"] {
        let (code, _, err) = moira(
            &url,
            &[
                "--as",
                "alice",
                "gate",
                "open",
                "--message",
                "x",
                "--artifact",
                bad,
            ],
        );
        assert_ne!(code, 0, "{bad}");
        assert!(
            err.contains("sha256") || err.contains("cannot read"),
            "{bad}: {err}"
        );
    }
    assert_eq!(
        s.client
            .list(&Default::default())
            .await
            .expect("list")
            .len(),
        before
    );
    let (code, _, err) = check(&url, gate, &["--digest", "md5:abc"]);
    assert_ne!(code, 0);
    assert!(err.contains("sha256:<64 hex digits>"), "{err}");
    let (code, _, _) = check(&url, GateId::new(), &["--digest", &good]);
    assert_ne!(code, 0, "an unknown gate");
    let r = check_request(&s, gate, "sha256:nothex").await;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    let r = check_request(&s, GateId::new(), &good).await;
    assert_eq!(r["error"]["code"], "not_found", "{r}");
    // Artifacts and an action at once, a duplicate name, a huge list.
    let dup = vec![
        Artifact {
            name: "a".into(),
            digest: good.clone(),
        };
        2
    ];
    let e = s
        .client
        .open(OpenGate {
            actor: "alice".into(),
            message: "x".into(),
            subject: dup,
            ..Default::default()
        })
        .await
        .expect_err("a name twice");
    assert!(e.to_string().contains("named twice"), "{e}");
    let e = s
        .client
        .open(OpenGate {
            actor: "alice".into(),
            message: "x".into(),
            subject: vec![Artifact {
                name: "a".into(),
                digest: good.clone(),
            }],
            action: Some(ActionCall {
                tool: "t".into(),
                arguments: serde_json::json!({}),
            }),
            ..Default::default()
        })
        .await
        .expect_err("both");
    assert!(e.to_string().contains("not both"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_gate_covers_exactly_that_call_and_one_changed_argument_is_refused() {
    let s = Stack::start().await;
    let url = s.url();
    let dir = moira_testkit::TempDir::new("moira-action").expect("tmp");
    let call = dir.path().join("call.json");
    std::fs::write(
        &call,
        r#"{"tool": "shell.exec", "arguments": {"cmd": "rm -rf ./build", "cwd": "/srv/app"}}"#,
    )
    .expect("write");
    let gate = open_cli(&url, &["--action-file", &call.display().to_string()]);
    let shown = s.client.show(gate).await.expect("show");
    let action = shown.action.clone().expect("an action");
    assert_eq!(
        action.canonical,
        r#"{"arguments":{"cmd":"rm -rf ./build","cwd":"/srv/app"},"tool":"shell.exec"}"#
    );
    assert_eq!(action.digest, digest_of(action.canonical.as_bytes()));
    let (_, text, _) = moira(&url, &["gate", "show", &gate.to_string()]);
    assert!(
        text.contains("shell.exec") && text.contains("rm -rf ./build"),
        "{text}"
    );
    approve_cli(&url, gate);

    // The same call, keys in another order and other spacing: covered.
    let same = dir.path().join("same.json");
    std::fs::write(
        &same,
        r#"{"arguments":{"cwd":"/srv/app","cmd":"rm -rf ./build"},"tool":"shell.exec"}"#,
    )
    .expect("write");
    let (code, _, err) = check(&url, gate, &["--action-file", &same.display().to_string()]);
    assert_eq!(code, 0, "{err}");
    // Also from standard input.
    let out = std::process::Command::new(moira_tests::bin("moira"))
        .args([
            "--nats-url",
            &url,
            "gate",
            "check",
            &gate.to_string(),
            "--action-file",
            "-",
        ])
        .stdin(std::fs::File::open(&same).expect("open"))
        .output()
        .expect("run moira");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One argument changed: refused.
    let changed = dir.path().join("changed.json");
    std::fs::write(
        &changed,
        r#"{"tool": "shell.exec", "arguments": {"cmd": "rm -rf /", "cwd": "/srv/app"}}"#,
    )
    .expect("write");
    let (code, _, err) = check(
        &url,
        gate,
        &["--action-file", &changed.display().to_string()],
    );
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("action:shell.exec"), "{err}");
    // Not JSON, or not a call: a clear error.
    std::fs::write(&changed, "rm -rf /").expect("write");
    let (code, _, err) = check(
        &url,
        gate,
        &["--action-file", &changed.display().to_string()],
    );
    assert!(code != 0 && code != 6, "{code}");
    assert!(err.contains("an action is JSON"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_past_its_valid_for_is_not_in_force() {
    let s = Stack::start().await;
    let url = s.url();
    let d = digest_of(b"build 7");
    let gate = open_cli(
        &url,
        &["--artifact", &format!("app={d}"), "--valid-for", "2s"],
    );
    approve_cli(&url, gate);
    let (code, _, err) = check(&url, gate, &["--digest", &d]);
    assert_eq!(code, 0, "{err}");
    let shown = s.client.show(gate).await.expect("show");
    assert_eq!(shown.valid_for.as_deref(), Some("2s"));
    assert!(shown.valid_until.is_some());
    // Waits for the clock, checking as it goes.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let err = loop {
        let (code, _, err) = check(&url, gate, &["--digest", &d]);
        if code == 6 {
            break err;
        }
        assert_eq!(code, 0, "{err}");
        assert!(std::time::Instant::now() < deadline, "never expired");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(err.contains("expired"), "{err}");
    let r = check_request(&s, gate, &d).await;
    assert_eq!(r["error"]["code"], "not_covered");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("expired"),
        "{r}"
    );
    // An out-of-range valid_for is refused.
    let e = s
        .client
        .open(OpenGate {
            actor: "alice".into(),
            message: "x".into(),
            valid_for_ms: Some(0),
            ..Default::default()
        })
        .await
        .expect_err("zero");
    assert!(e.to_string().contains("valid_for"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_approval_names_the_digest_and_its_export_verifies_with_ssh_keygen() {
    let t = crate::signatures::Signed::start().await;
    let url = t.s.url();
    let d = digest_of(b"release 1.4.2");
    let gate = t
        .as_key(&t.alice)
        .await
        .open(OpenGate {
            actor: "alice".into(),
            message: "Ship 1.4.2?".into(),
            approvers: vec!["bob".into()],
            subject: vec![Artifact {
                name: "app.tar.gz".into(),
                digest: d.clone(),
            }],
            ..Default::default()
        })
        .await
        .expect("a signed open")
        .id;
    t.as_key(&t.bob)
        .await
        .approve(ApproveGate {
            gate_id: gate,
            actor: "bob".into(),
            ..Default::default()
        })
        .await
        .expect("a signed approval");
    assert_eq!(
        t.s.client.show(gate).await.expect("show").status,
        GateStatus::Approved
    );
    let dir = t.dir.path().join("export");
    let (code, out, err) = moira(
        &url,
        &[
            "audit",
            "export",
            &gate.to_string(),
            "--dir",
            &dir.display().to_string(),
            "--approvers",
            &t.registry(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let files: Vec<&str> = out
        .lines()
        .map(|l| l.split("  (-I ").next().unwrap_or(l))
        .collect();
    assert_eq!(files.len(), 2, "the open and the approval: {out}");
    let hex = d.trim_start_matches("sha256:");
    for (file, actor) in files.iter().zip(["alice", "bob"]) {
        let v = crate::signatures::ssh_keygen_verify(
            &dir.join("allowed_signers"),
            Path::new(file),
            None,
            actor,
        );
        assert!(
            v.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&v.stderr)
        );
        let st: serde_json::Value =
            serde_json::from_slice(&std::fs::read(file).expect("read")).expect("a statement");
        assert_eq!(st["_type"], "https://in-toto.io/Statement/v1");
        // The gate first, then the artifact the signer approved.
        assert_eq!(st["subject"][1]["name"], "app.tar.gz", "{st}");
        assert_eq!(st["subject"][1]["digest"]["sha256"], hex, "{st}");
    }
    // The trail verifies, and the digest is covered.
    let (code, _, err) = crate::signatures::verify_cli(&url, gate, &t.registry());
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = check(&url, gate, &["--digest", &d]);
    assert_eq!(code, 0, "{err}");
}
