//! Decisions moira-web makes for people, signed with its own key and
//! saying how it authenticated them, against a gate-keeper with
//! `--signatures require`: they count only for users and ways the
//! registry allows, on every entry path, and the trail verifies.

use moira_client::protocol::Command;
use moira_client::signing::Signer;
use moira_client::{ApproveGate, Client, GateStatus, OpenGate};
use moira_testkit::TempDir;
use moira_tests::moira;
use serde_json::Value;

use crate::signatures::{public, ssh_keygen};
use crate::web::web;
use crate::Stack;

struct Attested {
    s: Stack,
    dir: TempDir,
    alice: Client,
}

const LINK_SECRET: &str = "link-secret-for-the-attested-tests-0123456789";
const SLACK_SECRET: &str = "slack-secret-for-the-attested-tests";

impl Attested {
    async fn start() -> Attested {
        let dir = TempDir::new("moira-attested").expect("tmp");
        let key = |n: &str| ssh_keygen(dir.path(), n, "ed25519");
        let (alice, bob, carol, erin, web, runner, gk) = (
            key("alice"),
            key("bob"),
            key("carol"),
            key("erin"),
            key("web"),
            key("runner"),
            key("gatekeeper"),
        );
        let registry = format!(
            "[users.alice]\nkeys = [\"{}\"]\n\
             [users.bob]\nkeys = [\"{}\"]\nattested = [\"proxy\", \"link\"]\nslack = \"U0BOB\"\n\
             [users.carol]\nkeys = [\"{}\"]\nattested = [\"slack\"]\nslack = \"U0CAROL\"\n\
             [users.erin]\nkeys = [\"{}\"]\nattested = [\"proxy\"]\n\
             [services.web]\nkeys = [\"{}\"]\nattests = true\n\
             [services.runner]\nkeys = [\"{}\"]\n\
             [services.gatekeeper]\nkeys = [\"{}\"]\n",
            public(&alice),
            public(&bob),
            public(&carol),
            public(&erin),
            public(&web),
            public(&runner),
            public(&gk),
        );
        std::fs::write(dir.path().join("approvers.toml"), registry).expect("write");
        std::fs::write(dir.path().join("link-secret"), LINK_SECRET).expect("write");
        std::fs::write(dir.path().join("slack-secret"), SLACK_SECRET).expect("write");
        let file = dir.path().join("approvers.toml").display().to_string();
        let s = Stack::with_gatekeeper_args(&[
            "--signatures",
            "require",
            "--approvers",
            &file,
            "--key",
            &gk.display().to_string(),
        ])
        .await;
        let alice = Client::connect(&s.url())
            .await
            .expect("connect")
            .with_signer(Signer::from_file(&alice).expect("key"));
        Attested { s, dir, alice }
    }

    /// moira-web behind a trusted proxy on loopback, signing with its own
    /// key, reading this registry; `extra` adds flags.
    fn signed_web(&self, extra: &[&str]) -> crate::web::Web {
        let (key, reg) = (self.path("web"), self.path("approvers.toml"));
        let mut args = vec!["--auth", "proxy", "--trusted-proxy", "127.0.0.1"];
        args.extend(["--key", &key, "--approvers", &reg]);
        args.extend_from_slice(extra);
        web(&self.s.url(), &args)
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    async fn open(&self, approvers: &[&str], approvals: u32) -> moira_client::GateId {
        self.alice
            .open(OpenGate {
                actor: "alice".into(),
                message: "Ship it?".into(),
                approvers: approvers.iter().map(|a| a.to_string()).collect(),
                approvals: Some(approvals),
                ..Default::default()
            })
            .await
            .expect("a signed open")
            .id
    }
}

async fn approve_as(base: &str, gate: &str, user: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/gates/{gate}/approve"))
        .header("x-forwarded-user", user)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("moira-web answers");
    let code = r.status().as_u16();
    let text = r.text().await.expect("body");
    (
        code,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_moira_web_signs_count_only_for_the_users_and_ways_the_registry_allows() {
    let a = Attested::start().await;
    let link_secret = a.path("link-secret");
    let w = a.signed_web(&["--link-secret-file", &link_secret]);
    let gate = a.open(&["bob", "carol", "erin"], 2).await;
    let id = gate.to_string();
    // carol takes only Slack-attested decisions: a proxy one is refused.
    let (code, r) = approve_as(&w.base, &id, "carol").await;
    assert_eq!(
        (code, r["error"]["code"].as_str()),
        (403, Some("wrong_key")),
        "{r}"
    );
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("carol does not accept"),
        "{r}"
    );
    // bob and erin accept proxy ones. One key (moira-web's) signs both,
    // and they count as two approvals: the people are distinct.
    let (code, r) = approve_as(&w.base, &id, "bob").await;
    assert_eq!(code, 200, "{r}");
    let (code, r) = approve_as(&w.base, &id, "erin").await;
    assert_eq!(code, 200, "{r}");
    let g = a.s.client.show(gate).await.expect("show");
    assert_eq!(g.status, GateStatus::Approved);
    assert!(
        g.approvals
            .iter()
            .all(|ap| ap.via.as_deref() == Some("proxy")),
        "{:?}",
        g.approvals
    );
    assert_eq!(
        g.approvals[0].key, g.approvals[1].key,
        "moira-web's key signed both"
    );
    // Anyone can check the trail against the registry, signatures required.
    let (code, out, err) = moira(
        &a.s.url(),
        &[
            "gate",
            "verify",
            &id,
            "--approvers",
            &a.path("approvers.toml"),
            "--require-signatures",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    // The page says how each approval was made.
    let page = reqwest::get(format!("{}/gates/{id}", w.root))
        .await
        .expect("page")
        .text()
        .await
        .expect("text");
    assert!(page.contains("attested by moira-web (proxy)"), "{page}");

    // A one-click link: bob takes link-attested decisions, carol does not.
    let now = moira_client::protocol::time::now_ms() / 1000;
    let second = a.open(&["bob", "carol"], 1).await;
    let link = |user: &str| {
        moira_service::links::Link::new(second, user, "approve", now, 600).token(LINK_SECRET)
    };
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/links/{}", w.root, link("carol")))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 403);
    let body = r.text().await.expect("text");
    assert!(body.contains("does not accept"), "{body}");
    assert_eq!(
        a.s.client.show(second).await.expect("show").status,
        GateStatus::Waiting
    );
    let r = http
        .post(format!("{}/links/{}", w.root, link("bob")))
        .send()
        .await
        .expect("post");
    assert_eq!(
        r.status().as_u16(),
        200,
        "{}",
        r.text().await.unwrap_or_default()
    );
    let g = a.s.client.show(second).await.expect("show");
    assert_eq!(
        (g.status, g.approved_by.as_deref()),
        (GateStatus::Approved, Some("bob"))
    );
    assert_eq!(g.approvals[0].via.as_deref(), Some("link"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_other_key_and_no_unsigned_moira_web_can_attest_for_anyone() {
    let a = Attested::start().await;
    let gate = a.open(&["bob"], 1).await;
    // bob's approval, signed with `key`, claiming moira-web's `via`.
    let claim = |key: &'static str, via: &'static str| {
        let (url, key) = (a.s.url(), a.path(key));
        async move {
            Client::connect(&url)
                .await
                .expect("connect")
                .with_signer(Signer::from_file(std::path::Path::new(&key)).expect("key"))
                .send(Command::Approve(ApproveGate {
                    gate_id: gate,
                    actor: "bob".into(),
                    via: Some(via.into()),
                    ..Default::default()
                }))
                .await
                .expect_err("refused")
        }
    };
    // A runner's service key is a service's, but not one that attests.
    let e = claim("runner", "proxy").await;
    assert!(
        e.to_string().contains("may not sign decisions for people"),
        "{e}"
    );
    // bob's own key, claiming to be moira-web's attestation: not a service's.
    let e = claim("bob", "proxy").await;
    assert!(e.to_string().contains("not a service's key"), "{e}");
    // A way that does not exist.
    let e = claim("bob", "sso").await;
    assert!(e.to_string().contains("via is one of"), "{e}");
    // moira-web without its key: unsigned, so refused here.
    let w = web(
        &a.s.url(),
        &["--auth", "proxy", "--trusted-proxy", "127.0.0.1"],
    );
    let (code, r) = approve_as(&w.base, &gate.to_string(), "bob").await;
    assert_eq!(
        (code, r["error"]["code"].as_str()),
        (403, Some("unsigned")),
        "{r}"
    );
    assert_eq!(
        a.s.client.show(gate).await.expect("show").status,
        GateStatus::Waiting
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_buttons_and_page_forms_signed_by_moira_web_meet_the_registry_too() {
    let a = Attested::start().await;
    let slack_secret = a.path("slack-secret");
    // Message updates would go to --slack-api; nothing listens there.
    let w = a.signed_web(&[
        "--slack-signing-secret-file",
        &slack_secret,
        "--slack-api",
        "http://127.0.0.1:9/",
    ]);
    let press = |user: &'static str, gate: String| {
        let url = format!("{}/slack/interactivity", w.root);
        async move {
            let now = moira_client::protocol::time::now_ms() / 1000;
            let (body, sig) = crate::web::slack_request(
                SLACK_SECRET,
                now,
                user,
                "moira_approve",
                &gate,
                "http://127.0.0.1:9/resp",
            );
            let r = reqwest::Client::new()
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("x-slack-request-timestamp", now.to_string())
                .header("x-slack-signature", sig)
                .body(body)
                .send()
                .await
                .expect("answer");
            assert_eq!(r.status().as_u16(), 200);
        }
    };
    // bob's Slack account is linked, but bob does not take Slack-attested
    // decisions; carol does.
    let gate = a.open(&["bob", "carol"], 1).await;
    press("U0BOB", gate.to_string()).await;
    assert_eq!(
        a.s.client.show(gate).await.expect("show").status,
        GateStatus::Waiting
    );
    press("U0CAROL", gate.to_string()).await;
    let g = a.s.client.show(gate).await.expect("show");
    assert_eq!(
        (g.status, g.approved_by.as_deref()),
        (GateStatus::Approved, Some("carol"))
    );
    assert_eq!(g.approvals[0].via.as_deref(), Some("slack"));

    // The page's form, as a browser sends it after the confirmation, as
    // the proxy's user: erin takes proxy-attested decisions.
    let page_gate = a.open(&["erin"], 1).await;
    let http = reqwest::Client::new();
    let page = http
        .get(format!("{}/gates/{page_gate}", w.root))
        .header("x-forwarded-user", "erin")
        .send()
        .await
        .expect("page");
    let cookie = page
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("a CSRF cookie")
        .to_string();
    let token = cookie
        .split_once('=')
        .map(|(_, t)| t.to_string())
        .expect("token");
    let post = |user: &'static str| {
        http.post(format!("{}/gates/{page_gate}/approve", w.root))
            .header("x-forwarded-user", user)
            .header("cookie", cookie.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf={token}&confirm=yes"))
            .send()
    };
    // alice opened it: the gate-keeper's self-approval rule holds here too.
    let r = post("alice").await.expect("post");
    assert_eq!(r.status().as_u16(), 403);
    // Behind a proxy that rewrites Host, the browser's Origin matches the
    // host the trusted proxy forwards, and nothing else.
    let with_origin = |forwarded: Option<&'static str>| {
        let mut req = http
            .post(format!("{}/gates/{page_gate}/approve", w.root))
            .header("x-forwarded-user", "erin")
            .header("origin", "https://moira.example.com")
            .header("cookie", cookie.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "csrf={token}&confirm=yes&id={}",
                uuid::Uuid::new_v4()
            ));
        if let Some(h) = forwarded {
            req = req.header("x-forwarded-host", h);
        }
        req.send()
    };
    let r = with_origin(None).await.expect("post");
    assert_eq!(r.status().as_u16(), 403, "an Origin that is not the Host");
    let r = with_origin(Some("evil.example.com")).await.expect("post");
    assert_eq!(
        r.status().as_u16(),
        403,
        "an Origin that is not the forwarded host"
    );
    let r = with_origin(Some("moira.example.com")).await.expect("post");
    assert_eq!(
        r.status().as_u16(),
        200,
        "{}",
        r.text().await.unwrap_or_default()
    );
    let g = a.s.client.show(page_gate).await.expect("show");
    assert_eq!(
        (g.status, g.approved_by.as_deref()),
        (GateStatus::Approved, Some("erin"))
    );
    assert_eq!(g.approvals[0].via.as_deref(), Some("proxy"));
    let (code, out, err) = moira(
        &a.s.url(),
        &[
            "gate",
            "verify",
            &page_gate.to_string(),
            "--approvers",
            &a.path("approvers.toml"),
            "--require-signatures",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
}
