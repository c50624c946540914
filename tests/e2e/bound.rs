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

/// Builds an artifact, reviews its digest, and deploys only that digest;
/// `{tamper}` is replaced by a step that changes the artifact after the
/// review, or by nothing.
const RELEASE: &str = r#"name: release
steps:
  - name: build
    run: |
      printf 'build %s' "$MOIRA_RUN_ID" > {dir}/$MOIRA_RUN_ID.tar.gz
      echo "digest=$(sha256sum {dir}/$MOIRA_RUN_ID.tar.gz | cut -d' ' -f1)" >> "$MOIRA_OUTPUT"
  - name: review
    use: moira.gate
    depends_on: [build]
    with:
      message: "Ship build ${{ steps.build.outputs.digest }}?"
      approvers: { users: [bob] }
      subject:
        - { name: app.tar.gz, digest: "sha256:${{ steps.build.outputs.digest }}" }
{tamper}  - name: deploy
    depends_on: [{after}]
    run: |
      have="sha256:$(sha256sum {dir}/$MOIRA_RUN_ID.tar.gz | cut -d' ' -f1)"
      case " $MOIRA_APPROVED_DIGESTS " in
        *" $have "*) echo "deploying $have" ;;
        *) echo "refusing $have: approved were $MOIRA_APPROVED_DIGESTS" >&2; exit 1 ;;
      esac
"#;

async fn parked_gate(client: &moira_client::Client, run: &str, step: &str) -> GateId {
    let wait = client.wait_run_until(run, |r| {
        r.steps
            .get(step)
            .is_some_and(|s| s.status == moira_client::protocol::run::StepStatus::Waiting)
    });
    let view = tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .expect("the step waits on its gate in time")
        .expect("wait");
    view.steps
        .iter()
        .find(|s| s.name == step)
        .and_then(|s| s.gate_id)
        .expect("a gate id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_deploys_only_the_artifact_digest_its_gate_approved() {
    use moira_client::protocol::run::RunStatus;
    let s = crate::runs::Runs::start(1).await;
    let honest = RELEASE.replace("{tamper}", "").replace("{after}", "review");
    let run = s.submit(&honest, &[]).await;
    let gate = parked_gate(&s.client, &run, "review").await;
    let built = std::fs::read(s.dir.path().join(format!("{run}.tar.gz"))).expect("built");
    let digest = digest_of(&built);
    // The approver is shown exactly the digest that was built.
    let shown = s.client.show(gate).await.expect("show");
    assert_eq!(shown.subject[0].digest, digest);
    assert_eq!(shown.run_id.as_deref(), Some(run.as_str()));
    s.client
        .approve(ApproveGate {
            gate_id: gate,
            actor: "bob".into(),
            ..Default::default()
        })
        .await
        .expect("approve");
    let done = s.finished(&run).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{done:?}");
    s.step_printed(&run, "deploy", &format!("deploying {digest}"))
        .await;
    let review = done
        .steps
        .iter()
        .find(|st| st.name == "review")
        .expect("review");
    assert_eq!(review.outputs.get("digests"), Some(&digest));
    assert_eq!(review.outputs.get("gate_id"), Some(&gate.to_string()));

    // The artifact is changed after the review: the deploy refuses it.
    let tampered = RELEASE
        .replace(
            "{tamper}",
            "  - name: tamper\n    depends_on: [review]\n    run: echo swapped >> {dir}/$MOIRA_RUN_ID.tar.gz\n",
        )
        .replace("{after}", "tamper");
    let run = s.submit(&tampered, &[]).await;
    let gate = parked_gate(&s.client, &run, "review").await;
    s.client
        .approve(ApproveGate {
            gate_id: gate,
            actor: "bob".into(),
            ..Default::default()
        })
        .await
        .expect("approve");
    let done = s.finished(&run).await;
    assert_eq!(done.status, RunStatus::Failed, "{done:?}");
    s.step_printed(&run, "deploy", "refusing sha256:").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_older_than_valid_for_when_the_next_step_starts_is_asked_for_again() {
    use moira_client::protocol::run::RunStatus;
    let s = crate::runs::Runs::start(1).await;
    let yaml = "name: expiry\nsteps:\n  - name: ok\n    use: moira.gate\n    with: { message: \"Go?\", approvers: { users: [bob] }, valid_for: 1s }\n  - {name: slow, run: 'sleep 2'}\n  - {name: after, depends_on: [ok, slow], run: 'echo went'}\n";
    let run = s.submit(yaml, &[]).await;
    let first = parked_gate(&s.client, &run, "ok").await;
    s.client
        .approve(ApproveGate {
            gate_id: first,
            actor: "bob".into(),
            ..Default::default()
        })
        .await
        .expect("approve");
    // `slow` ends about 2 s later, when the approval is past its 1 s: the
    // gate is opened again as a new gate, saying why.
    let wait = s.client.wait_run_until(&run, |r| {
        r.steps.get("ok").is_some_and(|st| {
            st.status == moira_client::protocol::run::StepStatus::Waiting
                && st.gate_id != Some(first)
        })
    });
    let view = tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .expect("asked again in time")
        .expect("wait");
    let ok = view.steps.iter().find(|st| st.name == "ok").expect("ok");
    assert_eq!(ok.iteration, 2, "{ok:?}");
    let second = ok.gate_id.expect("a new gate");
    let again = s.client.show(second).await.expect("show");
    assert_eq!(again.status, GateStatus::Waiting);
    let why = again.summary.clone().unwrap_or_default();
    assert!(
        why.contains("valid_for of 1s") && why.contains("bob"),
        "{why}"
    );
    assert!(
        !view
            .steps
            .iter()
            .any(|st| st.name == "after" && st.attempt > 0),
        "the step after the gate did not run on the stale approval"
    );
    s.client
        .approve(ApproveGate {
            gate_id: second,
            actor: "bob".into(),
            ..Default::default()
        })
        .await
        .expect("approve again");
    let done = s.finished(&run).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{done:?}");
    s.step_printed(&run, "after", "went").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_shows_what_a_gate_approves_escaped_and_the_api_checks_a_digest() {
    let s = Stack::start().await;
    let w = crate::web::web(&s.url(), &[]);
    let d = digest_of(b"web build");
    let gate = s
        .client
        .open(OpenGate {
            actor: "alice".into(),
            message: "Ship?".into(),
            approvers: vec!["bob".into()],
            subject: vec![Artifact {
                name: "<script>alert(1)</script>.tgz".into(),
                digest: d.clone(),
            }],
            valid_for_ms: Some(3_600_000),
            ..Default::default()
        })
        .await
        .expect("open")
        .id;
    let call = s
        .client
        .open(OpenGate {
            actor: "alice".into(),
            message: "Run this tool?".into(),
            action: Some(ActionCall {
                tool: "browser.open".into(),
                arguments: serde_json::json!({"url": "\"><img src=x onerror=alert(2)>"}),
            }),
            ..Default::default()
        })
        .await
        .expect("open")
        .id;
    let page = |id: GateId| {
        let url = format!("{}/gates/{id}", w.root);
        async move {
            reqwest::get(url)
                .await
                .expect("page")
                .text()
                .await
                .expect("html")
        }
    };
    let html = page(gate).await;
    assert!(
        html.contains("Approves these artifacts") && html.contains(&d),
        "{html}"
    );
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;.tgz"),
        "{html}"
    );
    assert!(!html.contains("<script>alert(1)"), "escaped");
    assert!(html.contains("An approval holds for 1h"), "{html}");
    let html = page(call).await;
    assert!(
        html.contains("Approves this call") && html.contains("browser.open"),
        "{html}"
    );
    assert!(!html.contains("<img src=x"), "escaped: {html}");

    let check = |digest: String| {
        let url = format!("{}/gates/{gate}/check?digest={digest}", w.base);
        async move {
            let r = reqwest::get(url).await.expect("check");
            let code = r.status().as_u16();
            let text = r.text().await.expect("body");
            (
                code,
                serde_json::from_str::<serde_json::Value>(&text).expect("json"),
            )
        }
    };
    let (code, r) = check(d.clone()).await;
    assert_eq!(
        (code, r["error"]["code"].as_str()),
        (409, Some("not_covered")),
        "{r}"
    );
    s.client
        .approve(ApproveGate {
            gate_id: gate,
            actor: "bob".into(),
            ..Default::default()
        })
        .await
        .expect("approve");
    let (code, r) = check(d.clone()).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["gate"]["valid_for"], "1h");
    let (code, _) = check(digest_of(b"other")).await;
    assert_eq!(code, 409);
    let (code, r) = check("sha1:abc".into()).await;
    assert_eq!(code, 400, "{r}");
}

/// `PATH` with the built moira binaries first, as the examples expect.
pub(crate) fn path_with_moira() -> String {
    format!(
        "{}:{}",
        moira_tests::bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

pub(crate) fn example(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(rel)
}

/// Runs an example script as a newcomer would (the built `moira` on
/// PATH); asserts it succeeded and returns its stdout and stderr.
pub(crate) fn run_example(rel: &str) -> (String, String) {
    let out = std::process::Command::new("bash")
        .arg(example(rel))
        .env("PATH", path_with_moira())
        .env_remove("MOIRA_USER")
        .output()
        .expect("bash");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{rel}: {stdout}\n{stderr}");
    (stdout, stderr)
}

#[test]
fn the_release_example_ships_only_the_digest_two_stages_approved() {
    let (stdout, stderr) = run_example("release-digest.sh");
    assert!(stderr.contains("(out_of_order)"), "bob before QA: {stderr}");
    assert!(
        stdout.contains("deploying ") && stdout.contains("refusing "),
        "{stdout}"
    );
    assert!(
        stdout.contains("Done: v1.2.0 shipped as approved"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_example_runs_a_tool_call_only_as_approved() {
    let s = Stack::start().await;
    let dir = moira_testkit::TempDir::new("moira-agent").expect("tmp");
    let script = example("agent/tool-call.sh");
    let call = example("agent/call.json");
    let agent = |args: &[&str]| {
        let out = std::process::Command::new("bash")
            .arg(&script)
            .args(args)
            .env("PATH", path_with_moira())
            .env("MOIRA_NATS_URL", s.url())
            .env("MOIRA_USER", "agent")
            .env("MOIRA_AGENT_APPROVER", "bob")
            .output()
            .expect("bash");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = agent(&["ask", &call.display().to_string()]);
    assert_eq!(code, 0, "{err}");
    let gate = out.trim().to_string();
    let call_path = call.display().to_string();
    // Not approved yet: the tool does not run.
    let (code, out, _) = agent(&["run", &gate, &call_path]);
    assert_eq!(code, 6);
    assert!(!out.contains("agent: running"), "{out}");
    approve_cli(&s.url(), gate.parse().expect("id"));
    let (code, out, err) = agent(&["run", &gate, &call_path]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("agent: running shell.exec"), "{out}");
    // One argument changed: refused, and the tool does not run.
    let text = std::fs::read_to_string(&call).expect("read");
    let changed = dir.path().join("changed.json");
    std::fs::write(&changed, text.replace("./build", "/")).expect("write");
    let (code, out, err) = agent(&["run", &gate, &changed.display().to_string()]);
    assert_eq!(code, 6, "{out}{err}");
    assert!(!out.contains("agent: running"), "{out}");
    assert!(err.contains("not the one that was approved"), "{err}");
}

const REVIEWED: &str = r#"name: reviewed
steps:
  - name: build
    run: |
      printf 'bytes of %s' "$MOIRA_RUN_ID" > {dir}/$MOIRA_RUN_ID.bin
      echo "digest=$(sha256sum {dir}/$MOIRA_RUN_ID.bin | cut -d' ' -f1)" >> "$MOIRA_OUTPUT"
      echo "digests=sha256:forged-by-the-step" >> "$MOIRA_OUTPUT"
    approval:
      prompt: "Ship sha256 ${{ steps.build.outputs.digest }}?"
      subject:
        - { name: app.bin, digest: "sha256:${{ steps.build.outputs.digest }}" }
      stages:
        - { users: [carol] }
        - { users: [bob] }
  - name: deploy
    depends_on: [build]
    run: echo "approved=$MOIRA_APPROVED_DIGESTS"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_names_its_steps_own_digest_takes_stages_in_order_and_its_dependents_get_that_digest(
) {
    use moira_client::protocol::run::RunStatus;
    let s = crate::runs::Runs::start(1).await;
    let run = s.submit(REVIEWED, &[]).await;
    let gate = parked_gate(&s.client, &run, "build").await;
    let built = std::fs::read(s.dir.path().join(format!("{run}.bin"))).expect("built");
    let digest = digest_of(&built);
    let shown = s.client.show(gate).await.expect("show");
    assert_eq!(shown.subject[0].digest, digest, "{shown:?}");
    assert_eq!(shown.message, format!("Ship {}?", digest.replace(':', " ")));
    assert_eq!(shown.stages.len(), 2);
    // bob is the second stage: refused until carol approved.
    let early = s
        .client
        .approve(ApproveGate {
            gate_id: gate,
            actor: "bob".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        early.err().and_then(|e| e.code()),
        Some(moira_client::ErrorCode::OutOfOrder)
    );
    for who in ["carol", "bob"] {
        s.client
            .approve(ApproveGate {
                gate_id: gate,
                actor: who.into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{who}: {e}"));
    }
    let done = s.finished(&run).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{done:?}");
    // The step's own "digests" line never stands in for what was approved.
    s.step_printed(&run, "deploy", &format!("approved={digest}"))
        .await;
    let url = s.server.url();
    let (code, _, err) = check(&url, gate, &["--digest", &digest]);
    assert_eq!(code, 0, "{err}");
}
