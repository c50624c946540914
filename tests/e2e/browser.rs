//! The web page in a real browser: headless Chromium driven through
//! ChromeDriver (WebDriver), against real moira-web, gate-keeper and
//! runner processes. `scripts/tools.sh test` installs Debian's chromium and
//! chromium-driver; `MOIRA_CHROMIUM` and `MOIRA_CHROMEDRIVER` name others.
//!
//! Screenshots land in `target/screenshots/` (or `MOIRA_SCREENSHOTS`); the
//! ones in `docs/screenshots/` were taken by these tests.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fantoccini::{Client as Driver, Locator};
use moira_client::protocol::run::StepStatus;
use moira_client::{ApproveGate, GateStatus, OpenGate};
use moira_testkit::TempDir;
use moira_tests::{Proc, ProcBuilder};
use serde_json::json;

use crate::web::{web, Web};
use crate::{open, Stack};

const WAIT: Duration = Duration::from_secs(20);

/// A program on PATH (or the path an environment variable names).
fn program(var: &str, name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(var) {
        return PathBuf::from(p);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!("{name} is not on PATH: run `scripts/tools.sh test` (or set {var})")
        })
}

/// ChromeDriver and the headless Chromium it starts. Stopping the driver
/// stops its whole process group, so no browser outlives a test.
struct Browser {
    driver: Driver,
    _chromedriver: Proc,
    _profile: TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let chromium = program("MOIRA_CHROMIUM", "chromium");
        let chromedriver = program("MOIRA_CHROMEDRIVER", "chromedriver");
        let port = moira_testkit::free_port();
        let proc = ProcBuilder::new(&chromedriver, "chromedriver")
            .arg(format!("--port={port}"))
            .own_group()
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {chromedriver:?}: {e}"));
        proc.wait_for_line("started successfully", WAIT);
        let profile = TempDir::new("moira-chromium").expect("tmp");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                // As this machine needs it: no sandbox as root, and nothing
                // that reaches for the network outside loopback.
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--disable-quic",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let driver = fantoccini::ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("a WebDriver session with {chromium:?}: {e}"));
        Browser {
            driver,
            _chromedriver: proc,
            _profile: profile,
        }
    }

    async fn goto(&self, url: &str) {
        self.driver.goto(url).await.expect("goto");
    }

    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.driver
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
    }

    async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.expect("text")
    }

    async fn type_into(&self, css: &str, text: &str) {
        self.find(css).await.send_keys(text).await.expect("type");
    }

    async fn click(&self, css: &str) {
        self.find(css).await.click().await.expect("click");
    }

    async fn js(&self, script: &str) -> serde_json::Value {
        self.driver.execute(script, vec![]).await.expect("script")
    }

    /// Waits until `script` returns true in the page.
    async fn until(&self, what: &str, script: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.js(script).await == json!(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gave up waiting for {what}; the page holds:\n{}",
                self.text("body").await
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Marks the loaded document, to tell later that it was not reloaded.
    async fn mark(&self) {
        self.js("window.__moiraMark = 42; return true;").await;
    }

    async fn still_marked(&self) -> bool {
        self.js("return window.__moiraMark === 42;").await == json!(true)
    }

    async fn screenshot(&self, name: &str) {
        let png = self.driver.screenshot().await.expect("screenshot");
        let dir = std::env::var_os("MOIRA_SCREENSHOTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| moira_tests::bin_dir().join("../screenshots"));
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    }

    /// Picks the name `--auth dev` decides as, in the page's banner.
    async fn act_as(&self, root: &str, user: &str) {
        self.goto(&format!("{root}/")).await;
        self.type_into(".devbanner input[name=user]", user).await;
        self.click(".devbanner button").await;
        self.until(
            "the banner to name the user",
            &format!("return (document.getElementById('whoami')||{{}}).textContent === '{user}';"),
        )
        .await;
    }

    async fn stop(self) {
        let _ = self.driver.close().await;
    }
}

fn dev_web(s_url: &str) -> Web {
    web(s_url, &["--auth", "dev"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_gate_appears_on_the_page_live_is_approved_with_an_input_and_leaves() {
    let s = Stack::start().await;
    let w = dev_web(&s.url());
    let b = Browser::start().await;
    b.act_as(&w.root, "bob").await;
    b.find("#waiting").await;
    b.mark().await;
    let g = s
        .client
        .open(OpenGate {
            title: Some("release v1.4.2".into()),
            approvers: vec!["bob".into()],
            inputs: vec!["WINDOW".into(), "TICKET".into()],
            required: vec!["WINDOW".into()],
            timeout_ms: Some(3_600_000),
            metadata: [("commit".to_string(), "3f9c2e1".to_string())].into(),
            ..open("alice", "Deploy v1.4.2 to production?")
        })
        .await
        .expect("open");
    let other = s
        .client
        .open(open("alice", "Rotate the staging keys?"))
        .await
        .expect("open");
    // Both arrive without a reload.
    for id in [g.id, other.id] {
        b.find(&format!("#gate-{id}")).await;
    }
    assert!(b.still_marked().await, "the page was reloaded");
    assert_eq!(b.text("#count").await, "2");
    b.screenshot("waiting").await;
    // Decided elsewhere (the CLI's path): its row leaves, live.
    s.client
        .approve(ApproveGate {
            gate_id: other.id,
            actor: "carol".into(),
            ..Default::default()
        })
        .await
        .expect("approve elsewhere");
    b.until(
        "the decided gate to leave the list",
        &format!("return !document.getElementById('gate-{}');", other.id),
    )
    .await;
    assert!(b.still_marked().await, "the page was reloaded");

    b.click(&format!("#gate-{} a.title", g.id)).await;
    b.find("#detail").await;
    let page = b.text("main").await;
    for want in [
        "Deploy v1.4.2 to production?",
        "alice",
        "commit",
        "3f9c2e1",
        "bob",
        "WINDOW",
    ] {
        assert!(page.contains(want), "the gate page lacks {want:?}:\n{page}");
    }
    b.until(
        "the countdown to tick",
        "const t = document.querySelector('time.countdown'); return !!t && t.textContent.startsWith('in ');",
    )
    .await;
    b.screenshot("gate").await;
    b.type_into("form.approve input[name='input.WINDOW']", "sat-02:00")
        .await;
    b.type_into("form.approve textarea[name=comment]", "checks are green")
        .await;
    b.click("form.approve button").await;
    // The confirmation decides nothing.
    assert_eq!(b.text("#as").await, "bob");
    b.find("#confirm").await;
    assert_eq!(
        s.client.show(g.id).await.expect("show").status,
        GateStatus::Waiting
    );
    b.screenshot("confirm").await;
    b.click("#confirm").await;
    assert_eq!(b.text("#outcome").await, "Approved");
    let after = s.client.show(g.id).await.expect("show");
    assert_eq!(after.status, GateStatus::Approved);
    assert_eq!(after.approved_by.as_deref(), Some("bob"));
    assert_eq!(
        after.inputs.get("WINDOW").map(String::as_str),
        Some("sat-02:00")
    );
    assert_eq!(
        after.approvals[0].comment.as_deref(),
        Some("checks are green")
    );
    b.goto(&format!("{}/", w.root)).await;
    b.find("#waiting").await;
    assert!(b.text("main").await.contains("No gates are waiting"));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_from_the_page_needs_a_reason_and_records_it() {
    let s = Stack::start().await;
    let w = dev_web(&s.url());
    let b = Browser::start().await;
    b.act_as(&w.root, "bob").await;
    let g = s
        .client
        .open(open("alice", "Drop the old tables?"))
        .await
        .expect("open");
    b.goto(&format!("{}/gates/{}", w.root, g.id)).await;
    // The browser will not send the form without a reason.
    b.click("form.deny button").await;
    assert!(
        b.js("return !document.querySelector('form.deny textarea').validity.valid;")
            .await
            == json!(true)
    );
    assert!(b.js("return !!document.getElementById('detail');").await == json!(true));
    b.type_into("form.deny textarea[name=reason]", "not during the freeze")
        .await;
    b.click("form.deny button").await;
    b.click("#confirm").await;
    assert_eq!(b.text("#outcome").await, "Denied");
    let after = s.client.show(g.id).await.expect("show");
    assert_eq!(after.status, GateStatus::Denied);
    assert_eq!(after.decided_by.as_deref(), Some("bob"));
    assert_eq!(after.reason.as_deref(), Some("not during the freeze"));
    // The gate's page now says so, and offers no forms.
    b.goto(&format!("{}/gates/{}", w.root, g.id)).await;
    assert_eq!(b.text("#status").await, "denied");
    assert!(
        b.js("return !document.querySelector('form.approve');")
            .await
            == json!(true)
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushing_back_a_review_on_the_run_page_reruns_the_step_live_and_approving_finishes_it() {
    let s = crate::runs::Runs::start(1).await;
    let w = dev_web(&s.server.url());
    let b = Browser::start().await;
    b.act_as(&w.root, "bob").await;
    let run = s
        .submit(
            "name: release\nsteps:\n  - name: plan\n    run: |\n      echo \"plan iteration $MOIRA_ITERATION\"\n      if [ -n \"$FEEDBACK\" ]; then echo \"addressed: $FEEDBACK\"; fi\n    approval:\n      prompt: Review the plan\n      input: [FEEDBACK]\n  - name: deploy\n    run: echo deployed\n    depends_on: [plan]\n",
            &[],
        )
        .await;
    s.client
        .wait_run_until(&run, |r| {
            r.steps
                .get("plan")
                .is_some_and(|st| st.status == StepStatus::Waiting)
        })
        .await
        .expect("the plan waits for its review");
    b.goto(&format!("{}/runs/{run}", w.root)).await;
    // The step's output sits beside the review's buttons.
    let review = b.text("#step-plan .review").await;
    assert!(review.contains("plan iteration 1"), "{review}");
    b.find("#step-plan form.pushback").await;
    b.screenshot("run-review").await;
    b.mark().await;
    b.type_into(
        "#step-plan form.pushback input[name='input.FEEDBACK']",
        "add a rollback",
    )
    .await;
    b.click("#step-plan form.pushback button").await;
    b.click("#confirm").await;
    assert_eq!(b.text("#outcome").await, "Pushed back");
    b.goto(&format!("{}/runs/{run}", w.root)).await;
    b.mark().await;
    // The step runs again and its new output comes to this page by itself.
    b.until(
        "the re-run's output on the page",
        "return document.querySelector('#step-plan .output').textContent.includes('addressed: add a rollback');",
    )
    .await;
    assert!(b.still_marked().await, "the page was reloaded");
    b.find("#step-plan form.approve").await;
    b.click("#step-plan form.approve button").await;
    b.click("#confirm").await;
    assert_eq!(b.text("#outcome").await, "Approved");
    let done = s.finished(&run).await;
    assert_eq!(done.status.as_str(), "succeeded", "{done:?}");
    b.goto(&format!("{}/runs/{run}", w.root)).await;
    assert_eq!(b.text("#runstatus").await, "succeeded");
    b.stop().await;
}

/// Payloads a gate's text may carry; none may run or become markup.
const PAYLOADS: &[&str] = &[
    "<script>window.__pwned = 'script'</script>",
    "<img src=x onerror=\"window.__pwned='img'\">",
    "\"><svg onload=\"window.__pwned='svg'\">",
    "javascript:window.__pwned='href'",
    "</pre><iframe src=\"javascript:parent.__pwned='iframe'\"></iframe>",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_and_html_in_a_gate_show_as_text_and_never_run() {
    let s = Stack::start().await;
    let w = dev_web(&s.url());
    let b = Browser::start().await;
    let all = PAYLOADS.join(" ");
    let g = s
        .client
        .open(OpenGate {
            title: Some(PAYLOADS[0].into()),
            summary: Some(PAYLOADS[2].into()),
            metadata: PAYLOADS
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("k{i}<b>"), p.to_string()))
                .collect(),
            ..open("alice", &all)
        })
        .await
        .expect("open");
    for path in ["/".to_string(), format!("/gates/{}", g.id)] {
        b.goto(&format!("{}{path}", w.root)).await;
        b.find(&format!("#gate-{}, #detail", g.id)).await;
        let text = b.text("main").await;
        assert!(
            text.contains(PAYLOADS[0]),
            "{path}: the title is not shown as text:\n{text}"
        );
        assert!(text.contains("onerror"), "{path}: {text}");
        let found = b
            .js("return [typeof window.__pwned, document.querySelectorAll('main img, main svg, main iframe, main script, main b').length];")
            .await;
        assert_eq!(
            found,
            json!(["undefined", 0]),
            "{path}: markup from the gate took effect"
        );
    }
    b.screenshot("hostile-gate").await;
    b.stop().await;
}

/// A page on another origin that makes the browser post a decision.
async fn attacker_page(target: String) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let page = format!(
        "<!doctype html><form method=post action=\"{target}\">\
         <input name=csrf value=0000000000000000000000000000000000000000000000000000000000000000>\
         <input name=confirm value=yes></form><script>document.forms[0].submit()</script>"
    );
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut c, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf).await;
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                page.len()
            );
            let _ = c.write_all(resp.as_bytes()).await;
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_posted_from_another_site_is_refused_and_changes_nothing() {
    let s = Stack::start().await;
    let w = dev_web(&s.url());
    let b = Browser::start().await;
    // The victim has a session on moira-web (its cookies are set).
    b.act_as(&w.root, "bob").await;
    let g = s
        .client
        .open(open("alice", "Ship it?"))
        .await
        .expect("open");
    let port = attacker_page(format!("{}/gates/{}/approve", w.root, g.id)).await;
    b.goto(&format!("http://127.0.0.1:{port}/")).await;
    let refused = b.text("main").await;
    assert!(refused.contains("another site"), "{refused}");
    assert_eq!(
        s.client.show(g.id).await.expect("show").status,
        GateStatus::Waiting
    );
    // Without a browser's help: no cookie, or a token that does not match.
    let http = reqwest::Client::new();
    let url = format!("{}/gates/{}/approve", w.root, g.id);
    for cookie in [
        "",
        "moira_csrf=1111111111111111111111111111111111111111111111111111111111111111",
    ] {
        let r = http
            .post(&url)
            .header("cookie", format!("{cookie}; moira_dev_user=bob"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                "csrf=2222222222222222222222222222222222222222222222222222222222222222&confirm=yes",
            )
            .send()
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), 403, "cookie {cookie:?}");
    }
    assert_eq!(
        s.client.show(g.id).await.expect("show").status,
        GateStatus::Waiting
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_click_link_in_the_browser_confirms_on_open_decides_once_and_not_when_expired() {
    use moira_service::links::Link;
    let s = Stack::start().await;
    let dir = TempDir::new("moira-links").expect("tmp");
    let secret = "a-link-secret-of-some-length-0123456789";
    std::fs::write(dir.path().join("secret"), secret).expect("write");
    let secret_file = dir.path().join("secret").display().to_string();
    let w = web(&s.url(), &["--link-secret-file", &secret_file]);
    let b = Browser::start().await;
    let g = s
        .client
        .open(OpenGate {
            approvers: vec!["bob".into()],
            ..open("alice", "Ship it?")
        })
        .await
        .expect("open");
    let now = moira_client::protocol::time::now_ms() / 1000;
    let link = Link::new(g.id, "bob", "approve", now, 3600).token(secret);
    b.goto(&format!("{}/links/{link}", w.root)).await;
    assert!(b.text("h1").await.contains("as bob"));
    assert_eq!(
        s.client.show(g.id).await.expect("show").status,
        GateStatus::Waiting,
        "opening the link decided"
    );
    b.click("form button").await;
    b.until(
        "the link's outcome",
        "return document.querySelector('h1').textContent === 'Done';",
    )
    .await;
    assert_eq!(
        s.client
            .show(g.id)
            .await
            .expect("show")
            .approved_by
            .as_deref(),
        Some("bob")
    );
    // Used once: the same link again is refused.
    b.goto(&format!("{}/links/{link}", w.root)).await;
    b.click("form button").await;
    b.until(
        "the second use to be refused",
        "return document.querySelector('h1').textContent.includes('used already');",
    )
    .await;
    // Expired: refused on open.
    let g2 = s
        .client
        .open(open("alice", "And this one?"))
        .await
        .expect("open");
    let old = Link::new(g2.id, "bob", "approve", now - 7200, 3600).token(secret);
    b.goto(&format!("{}/links/{old}", w.root)).await;
    assert!(
        b.text("main").await.contains("expired"),
        "{}",
        b.text("main").await
    );
    assert_eq!(
        s.client.show(g2.id).await.expect("show").status,
        GateStatus::Waiting
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_page_fits_a_phone_screen() {
    let s = Stack::start().await;
    let w = dev_web(&s.url());
    let b = Browser::start().await;
    b.act_as(&w.root, "bob").await;
    let g = s
        .client
        .open(OpenGate {
            title: Some("release v1.4.2".into()),
            approvers: vec!["bob".into()],
            inputs: vec!["WINDOW".into()],
            required: vec!["WINDOW".into()],
            timeout_ms: Some(1_800_000),
            ..open(
                "alice",
                "Deploy v1.4.2 to production? The canary has been green for 40 minutes.",
            )
        })
        .await
        .expect("open");
    b.driver.set_window_size(390, 844).await.expect("resize");
    b.goto(&format!("{}/gates/{}", w.root, g.id)).await;
    b.find("form.approve").await;
    // Nothing is wider than the screen: no sideways scrolling.
    let wide = b
        .js("return document.documentElement.scrollWidth <= window.innerWidth;")
        .await;
    assert_eq!(wide, json!(true), "the page scrolls sideways on a phone");
    b.screenshot("gate-phone").await;
    b.stop().await;
}
