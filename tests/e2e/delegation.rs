//! Delegation by OpenSSH certificate: alice signs bob's key with her own
//! registered key (`ssh-keygen -s alice -n moira:alice`), and bob's
//! decisions signed with that certificate count where a gate accepts
//! alice. Real keys and certificates from `ssh-keygen`, a gate-keeper with
//! `--signatures require`, and the exported trail checked by plain
//! `ssh-keygen -Y verify`.

use std::path::{Path, PathBuf};

use moira_client::protocol::time::now_ms;
use moira_client::protocol::{Command, CommandId};
use moira_client::signing::Signer;
use moira_client::{ApproveGate, Client, ErrorCode, GateId, GateStatus, OpenGate};
use moira_testkit::TempDir;
use moira_tests::moira_env;

use crate::signatures::{public, ssh_keygen, ssh_keygen_verify};
use crate::Stack;

struct Delegated {
    s: Stack,
    dir: TempDir,
    alice: PathBuf,
    bob: PathBuf,
    carol: PathBuf,
    mallory: PathBuf,
    registry: PathBuf,
}

impl Delegated {
    async fn start() -> Delegated {
        let dir = TempDir::new("moira-delegated").expect("tmp");
        let alice = ssh_keygen(dir.path(), "alice", "ed25519");
        let bob = ssh_keygen(dir.path(), "bob", "ed25519");
        let carol = ssh_keygen(dir.path(), "carol", "ed25519");
        let mallory = ssh_keygen(dir.path(), "mallory", "ed25519");
        let gatekeeper = ssh_keygen(dir.path(), "gatekeeper", "ed25519");
        let registry = dir.path().join("approvers.toml");
        std::fs::write(
            &registry,
            format!(
                "[users.alice]\nroles = [\"owner\"]\nkeys = [\"{}\"]\n\
                 revoked = [\"id:bob-lost-laptop\", \"serial:77\"]\n\
                 [users.bob]\nkeys = [\"{}\"]\n[users.carol]\nkeys = [\"{}\"]\n\
                 [users.mallory]\nkeys = [\"{}\"]\n[services.gatekeeper]\nkeys = [\"{}\"]\n",
                public(&alice),
                public(&bob),
                public(&carol),
                public(&mallory),
                public(&gatekeeper),
            ),
        )
        .expect("write the registry");
        let s = Stack::with_gatekeeper_args(&[
            "--signatures",
            "require",
            "--approvers",
            &registry.display().to_string(),
            "--key",
            &gatekeeper.display().to_string(),
        ])
        .await;
        Delegated {
            s,
            dir,
            alice,
            bob,
            carol,
            mallory,
            registry,
        }
    }

    fn certify(&self, ca: &Path, subject: &Path, name: &str, args: &[&str]) -> PathBuf {
        certify(self.dir.path(), ca, subject, name, args)
    }

    async fn as_key(&self, key: &Path) -> Client {
        Client::connect(&self.s.url())
            .await
            .expect("connect")
            .with_signer(Signer::from_file(key).expect("key"))
    }

    /// carol (or `by`) opens a gate for `approvers` / `roles`.
    async fn open(&self, by: (&str, &Path), approvers: &[&str], roles: &[&str], n: u32) -> GateId {
        self.as_key(by.1)
            .await
            .open(OpenGate {
                actor: by.0.into(),
                message: "Ship 1.4 to production?".into(),
                approvers: approvers.iter().map(|a| a.to_string()).collect(),
                roles: roles.iter().map(|r| r.to_string()).collect(),
                approvals: Some(n),
                allow_self_approval: Some(false),
                ..Default::default()
            })
            .await
            .expect("a signed open")
            .id
    }

    async fn events(&self, id: GateId) -> usize {
        self.s.client.read_events(id).await.expect("read").0.len()
    }

    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        moira_env(&self.s.url(), args, &[])
    }
}

/// `ssh-keygen -s ca` over a copy of `subject`'s key named `name`, with
/// `args` (principals, validity, serial); returns the certificate path
/// (`<name>-cert.pub`, beside the copied private key).
pub(crate) fn certify(d: &Path, ca: &Path, subject: &Path, name: &str, args: &[&str]) -> PathBuf {
    std::fs::copy(subject, d.join(name)).expect("copy the key");
    std::fs::copy(
        format!("{}.pub", subject.display()),
        d.join(format!("{name}.pub")),
    )
    .expect("copy the public key");
    let out = std::process::Command::new("ssh-keygen")
        .arg("-q")
        .arg("-s")
        .arg(ca)
        .args(args)
        .arg(d.join(format!("{name}.pub")))
        .output()
        .expect("ssh-keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.join(format!("{name}-cert.pub"))
}

fn for_alice(gate: GateId, actor: &str) -> Command {
    Command::Approve(ApproveGate {
        gate_id: gate,
        actor: actor.into(),
        on_behalf_of: Some("alice".into()),
        comment: Some("covering for alice".into()),
        ..Default::default()
    })
}

fn code(r: Result<moira_client::GateView, moira_client::ClientError>) -> (ErrorCode, String) {
    match r {
        Err(e) => (
            e.code().unwrap_or_else(|| panic!("not a refusal: {e}")),
            e.to_string(),
        ),
        Ok(g) => panic!("accepted: {g:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deputys_certificate_approval_counts_for_alice_is_shown_as_bob_for_alice_and_verifies_with_ssh_keygen(
) {
    let t = Delegated::start().await;
    let cert = t.certify(
        &t.alice,
        &t.bob,
        "bob-covers",
        &["-I", "bob-covers", "-n", "moira:alice", "-V", "-5m:+7d"],
    );
    let gate = t.open(("carol", &t.carol), &["alice"], &[], 1).await;
    let id = gate.to_string();
    // bob alone may not decide this gate.
    let bob_key = t.bob.display().to_string();
    let (code_, _, err) = t.cli(&["--as", "bob", "--key", &bob_key, "gate", "approve", &id]);
    assert_ne!(code_, 0, "bob is no approver: {err}");
    // With alice's certificate over his key, he approves for her; the CLI
    // reads whom for from the certificate.
    let cert_s = cert.display().to_string();
    let (code_, out, err) = t.cli(&[
        "--as",
        "bob",
        "--key",
        &cert_s,
        "--json",
        "gate",
        "approve",
        &id,
        "--comment",
        "on call",
    ]);
    assert_eq!(code_, 0, "{err}");
    let view: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(view["status"], "approved");
    assert_eq!(view["approvals"][0]["by"], "bob");
    assert_eq!(view["approvals"][0]["on_behalf_of"], "alice");
    assert_eq!(view["decided_for"], "alice");
    let (_, shown, _) = t.cli(&["gate", "show", &id]);
    assert!(shown.contains("bob for alice"), "{shown}");

    // The trail verifies from the stream, against the registry.
    let registry = t.registry.display().to_string();
    let (code_, out, err) = crate::signatures::verify_cli(&t.s.url(), gate, &registry);
    assert_eq!(code_, 0, "{out}{err}");

    // Exported, plain ssh-keygen checks the delegated approval with alice's
    // key as a certificate authority for moira:alice.
    let dir = t.dir.path().join("export");
    let (code_, out, err) = t.cli(&[
        "audit",
        "export",
        &id,
        "--dir",
        &dir.display().to_string(),
        "--approvers",
        &registry,
    ]);
    assert_eq!(code_, 0, "{err}");
    let allowed = std::fs::read_to_string(dir.join("allowed_signers")).expect("allowed_signers");
    assert!(
        allowed.contains(&format!(
            "cert-authority,namespaces=\"moira\" {}",
            public(&t.alice)
        )),
        "{allowed}"
    );
    let line = out
        .lines()
        .find(|l| l.contains("GateApproved"))
        .unwrap_or_else(|| panic!("the approval is exported: {out}"));
    assert!(line.contains("(-I moira:alice -O verify-time="), "{line}");
    let file = line.split("  (-I ").next().expect("the statement file");
    let when = line
        .rsplit("verify-time=")
        .next()
        .and_then(|t| t.strip_suffix(')'))
        .expect("a verify time");
    // As the export prints it: the certificate checked when bob signed.
    let check = |statement: &str| {
        std::process::Command::new("ssh-keygen")
            .args(["-Y", "verify", "-n", "moira", "-I", "moira:alice", "-O"])
            .arg(format!("verify-time={when}"))
            .arg("-f")
            .arg(dir.join("allowed_signers"))
            .arg("-s")
            .arg(format!("{statement}.sig"))
            .stdin(std::fs::File::open(statement).expect("open"))
            .output()
            .expect("ssh-keygen")
    };
    let v = check(file);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    // And without it, at the present, while the certificate still holds.
    let v = ssh_keygen_verify(
        &dir.join("allowed_signers"),
        Path::new(file),
        None,
        "moira:alice",
    );
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    // Not as anyone else.
    let v = ssh_keygen_verify(
        &dir.join("allowed_signers"),
        Path::new(file),
        None,
        "moira:carol",
    );
    assert!(!v.status.success(), "only as moira:alice");
    // The statement names both people.
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(file).expect("read")).expect("json");
    assert_eq!(st["predicate"]["actor"], "bob");
    assert_eq!(st["predicate"]["on_behalf_of"], "alice");
    // Changed to name someone else, it no longer verifies.
    let forged = String::from_utf8(std::fs::read(file).expect("read"))
        .expect("utf-8")
        .replace("\"on_behalf_of\":\"alice\"", "\"on_behalf_of\":\"carol\"");
    std::fs::write(file, forged).expect("write");
    let v = ssh_keygen_verify(
        &dir.join("allowed_signers"),
        Path::new(file),
        None,
        "moira:alice",
    );
    assert!(!v.status.success(), "a changed statement fails");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_tool_signs_a_deputys_statement_with_ssh_keygen_and_the_certificate() {
    let t = Delegated::start().await;
    let cert = t.certify(
        &t.alice,
        &t.bob,
        "bob-tool",
        &["-I", "bob-tool", "-n", "moira:alice", "-V", "-5m:+1h"],
    );
    let gate = t
        .open(("carol", &t.carol), &["alice"], &[], 1)
        .await
        .to_string();
    let cid = CommandId::new().to_string();
    let at = now_ms().to_string();
    let (code_, statement, err) = t.cli(&[
        "--as",
        "bob",
        "gate",
        "statement",
        &gate,
        "--verb",
        "approve",
        "--for",
        "alice",
        "--command-id",
        &cid,
        "--signed-at",
        &at,
    ]);
    assert_eq!(code_, 0, "{err}");
    let d = t.dir.path();
    std::fs::write(d.join("st.json"), &statement).expect("write");
    // ssh-keygen puts the certificate into the signature itself.
    let signed = std::process::Command::new("ssh-keygen")
        .args(["-Y", "sign", "-n", "moira", "-f"])
        .arg(&cert)
        .arg(d.join("st.json"))
        .output()
        .expect("ssh-keygen");
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    let sig = d.join("st.json.sig").display().to_string();
    let (code_, _, err) = t.cli(&[
        "--as",
        "bob",
        "gate",
        "approve",
        &gate,
        "--for",
        "alice",
        "--command-id",
        &cid,
        "--signed-at",
        &at,
        "--signature",
        &sig,
    ]);
    assert_eq!(code_, 0, "{err}");
    let (_, out, _) = t.cli(&["--json", "gate", "show", &gate]);
    let view: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(view["status"], "approved");
    assert_eq!(view["approvals"][0]["on_behalf_of"], "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_outside_its_window_with_another_principal_revoked_or_not_alices_is_refused()
{
    let t = Delegated::start().await;
    let gate = t.open(("carol", &t.carol), &["alice"], &[], 1).await;
    let before = t.events(gate).await;
    let cases: Vec<(PathBuf, &str, &str)> = vec![
        (
            t.certify(
                &t.alice,
                &t.bob,
                "expired",
                &["-I", "old", "-n", "moira:alice", "-V", "20200101:20200102"],
            ),
            "bob",
            "valid from",
        ),
        (
            t.certify(
                &t.alice,
                &t.bob,
                "later",
                &["-I", "later", "-n", "moira:alice", "-V", "+1d:+2d"],
            ),
            "bob",
            "valid from",
        ),
        (
            t.certify(
                &t.alice,
                &t.bob,
                "for-dave",
                &["-I", "dave", "-n", "moira:dave", "-V", "-5m:+1h"],
            ),
            "bob",
            "names neither moira:alice",
        ),
        (
            t.certify(
                &t.alice,
                &t.bob,
                "lost",
                &[
                    "-I",
                    "bob-lost-laptop",
                    "-n",
                    "moira:alice",
                    "-V",
                    "-5m:+1h",
                ],
            ),
            "bob",
            "revoked",
        ),
        (
            t.certify(
                &t.alice,
                &t.bob,
                "serial",
                &["-I", "s", "-z", "77", "-n", "moira:alice", "-V", "-5m:+1h"],
            ),
            "bob",
            "revoked",
        ),
        // mallory makes herself a certificate "from alice" with her own key.
        (
            t.certify(
                &t.mallory,
                &t.bob,
                "self-made",
                &["-I", "m", "-n", "moira:alice", "-V", "-5m:+1h"],
            ),
            "bob",
            "not one of alice's keys",
        ),
        // alice's certificate is over bob's key: mallory cannot use it as herself.
        (
            t.certify(
                &t.alice,
                &t.bob,
                "borrowed",
                &["-I", "b", "-n", "moira:alice", "-V", "-5m:+1h"],
            ),
            "mallory",
            "not one of mallory's keys",
        ),
        (
            t.certify(
                &t.alice,
                &t.bob,
                "opts",
                &[
                    "-I",
                    "o",
                    "-n",
                    "moira:alice",
                    "-V",
                    "-5m:+1h",
                    "-O",
                    "force-command=/bin/true",
                ],
            ),
            "bob",
            "critical option",
        ),
    ];
    for (cert, actor, why) in &cases {
        let (c, msg) = code(t.as_key(cert).await.send(for_alice(gate, actor)).await);
        assert_eq!(c, ErrorCode::WrongKey, "{}: {msg}", cert.display());
        assert!(msg.contains(why), "{}: {msg}", cert.display());
    }
    // A deputy's decision without any certificate, and a certificate
    // without saying whom for, are refused too.
    let (c, msg) = code(t.as_key(&t.bob).await.send(for_alice(gate, "bob")).await);
    assert_eq!(c, ErrorCode::WrongKey, "{msg}");
    let good = t.certify(
        &t.alice,
        &t.bob,
        "good",
        &["-I", "g", "-n", "moira:alice", "-V", "-5m:+1h"],
    );
    let mut plain = for_alice(gate, "bob");
    if let Command::Approve(a) = &mut plain {
        a.on_behalf_of = None;
    }
    let (c, msg) = code(t.as_key(&good).await.send(plain).await);
    assert_eq!(c, ErrorCode::BadSignature, "{msg}");
    assert_eq!(t.events(gate).await, before, "no refusal stored anything");
    // The good one approves.
    let g = t
        .as_key(&good)
        .await
        .send(for_alice(gate, "bob"))
        .await
        .expect("in its window");
    assert_eq!(g.status, GateStatus::Approved);

    // alice revokes it before it expires: her registry entry names its key
    // id, the gate-keeper reloads the file, and the next use is refused.
    let text = std::fs::read_to_string(&t.registry).expect("read the registry");
    std::fs::write(
        &t.registry,
        text.replace("\"serial:77\"]", "\"serial:77\", \"id:g\"]"),
    )
    .expect("write the registry");
    t.s.gk.signal("HUP");
    t.s.gk.wait_for_line(
        "approvers file reloaded",
        std::time::Duration::from_secs(20),
    );
    let next = t.open(("carol", &t.carol), &["alice"], &[], 1).await;
    let (c, msg) = code(t.as_key(&good).await.send(for_alice(next, "bob")).await);
    assert_eq!(c, ErrorCode::WrongKey, "{msg}");
    assert!(msg.contains("revoked"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_certificate_counts_only_in_that_role_and_a_deputy_is_still_one_person() {
    let t = Delegated::start().await;
    let owner_only = t.certify(
        &t.alice,
        &t.bob,
        "bob-owner",
        &[
            "-I",
            "bob-owner",
            "-n",
            "moira:alice:role=owner",
            "-V",
            "-5m:+1h",
        ],
    );
    // A gate naming alice: a role-limited deputy does not count there.
    let by_name = t.open(("carol", &t.carol), &["alice"], &[], 1).await;
    let (c, msg) = code(
        t.as_key(&owner_only)
            .await
            .send(for_alice(by_name, "bob"))
            .await,
    );
    assert_eq!(c, ErrorCode::NotAllowed, "{msg}");
    // A gate for owners: it counts.
    let by_role = t.open(("carol", &t.carol), &[], &["owner"], 1).await;
    let g = t
        .as_key(&owner_only)
        .await
        .send(for_alice(by_role, "bob"))
        .await
        .expect("owner");
    assert_eq!(g.status, GateStatus::Approved);

    let full = t.certify(
        &t.alice,
        &t.bob,
        "bob-full",
        &["-I", "bob-full", "-n", "moira:alice", "-V", "-5m:+1h"],
    );
    // bob opened this one: bob covering alice is still self-approval.
    let own = t.open(("bob", &t.bob), &["alice"], &[], 1).await;
    let (c, msg) = code(t.as_key(&full).await.send(for_alice(own, "bob")).await);
    assert_eq!(c, ErrorCode::NotAllowed, "{msg}");
    assert!(msg.contains("self-approval"), "{msg}");
    // Two approvals needed from alice, bob and carol: bob as himself, then
    // bob for alice, would count bob twice.
    let two = t
        .open(("mallory", &t.mallory), &["alice", "bob", "carol"], &[], 2)
        .await;
    t.as_key(&t.bob)
        .await
        .send(crate::signatures::approve(two, "bob", "me"))
        .await
        .expect("bob as himself");
    let (c, msg) = code(t.as_key(&full).await.send(for_alice(two, "bob")).await);
    assert_eq!(c, ErrorCode::NotAllowed, "{msg}");
    assert!(msg.contains("already approved"), "{msg}");
    let g = t
        .as_key(&t.carol)
        .await
        .send(crate::signatures::approve(two, "carol", "second"))
        .await
        .expect("carol");
    assert_eq!(g.status, GateStatus::Approved);
}

#[test]
fn the_delegation_example_approves_as_bob_for_alice_and_ssh_keygen_verifies_it() {
    let (stdout, stderr) = crate::bound::run_example("delegate.sh");
    assert!(stderr.contains("(not_allowed)"), "bob alone: {stderr}");
    assert!(stdout.contains("approved by bob for alice"), "{stdout}");
    assert!(
        format!("{stdout}{stderr}")
            .contains("Good \"moira\" signature for moira:alice with ED25519-CERT key"),
        "{stdout}{stderr}"
    );
    assert!(stdout.contains("Done: bob approved for alice"), "{stdout}");
}
