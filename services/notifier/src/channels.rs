//! Delivering one notification to one channel. Each attempt is bounded by
//! the delivery timeout; any answer other than success is an error to retry.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::{ChannelConfig, Resolved, SmtpTls};
use crate::Notification;

/// One HTTP client for every webhook and Slack post: connection reuse,
/// proxies from `HTTPS_PROXY`/`NO_PROXY`, and no redirects (a receiver
/// must not send moira's signed body somewhere else).
fn http_client() -> Result<&'static reqwest::Client, String> {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    if let Some(c) = CLIENT.get() {
        return Ok(c);
    }
    let c = reqwest::Client::builder()
        .user_agent(concat!("moira-notifier/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot set up HTTP: {e}"))?;
    Ok(CLIENT.get_or_init(|| c))
}

async fn post(
    url: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
    r: &Resolved,
) -> Result<(), String> {
    let mut req = http_client()?.post(url).timeout(r.timeout).body(body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req.send().await.map_err(|e| {
        if e.is_timeout() {
            format!("no answer from {url} within {:?}", r.timeout)
        } else {
            format!("posting to {url}: {e}")
        }
    })?;
    expect_2xx(resp.status().as_u16())
}

/// Text for a mail: every line break a CRLF, and no lone CR or LF left
/// that a server could read as the end of the message.
pub fn mail_text(s: &str) -> String {
    s.replace("\r\n", "\n").replace('\r', "\n")
}

/// A header value on one line: control characters become spaces.
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

struct Mail<'a> {
    server: &'a str,
    tls: SmtpTls,
    auth: Option<(&'a str, &'a str)>,
    from: &'a str,
    to: &'a [String],
    subject: String,
    body: String,
}

async fn send_mail(m: Mail<'_>, r: &Resolved) -> Result<(), String> {
    let (host, port) = m
        .server
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .ok_or_else(|| format!("'{}' is not host:port", m.server))?;
    let mut message = Message::builder()
        .from(
            m.from
                .parse::<Mailbox>()
                .map_err(|e| format!("from {}: {e}", m.from))?,
        )
        .subject(one_line(&m.subject))
        .header(ContentType::TEXT_PLAIN);
    for to in m.to {
        message = message.to(to.parse::<Mailbox>().map_err(|e| format!("to {to}: {e}"))?);
    }
    let message = message
        .body(mail_text(&m.body))
        .map_err(|e| format!("building the mail: {e}"))?;
    let params =
        || TlsParameters::new(host.to_string()).map_err(|e| format!("TLS with {host}: {e}"));
    let tls = match m.tls {
        SmtpTls::Starttls => Tls::Required(params()?),
        SmtpTls::Implicit => Tls::Wrapper(params()?),
        SmtpTls::None => Tls::None,
    };
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(port)
        .tls(tls)
        .timeout(Some(r.timeout));
    if let Some((user, pass)) = m.auth {
        // The config refuses a username without TLS; this is the backstop.
        if m.tls == SmtpTls::None {
            return Err("refusing to send SMTP credentials without TLS".into());
        }
        transport = transport
            .credentials(Credentials::new(user.to_string(), pass.to_string()))
            .authentication(vec![Mechanism::Plain, Mechanism::Login]);
    }
    let transport = transport.build();
    let send = transport.send(message);
    tokio::time::timeout(r.timeout * 2, send)
        .await
        .map_err(|_| {
            format!(
                "the SMTP server {} did not finish within {:?}",
                m.server,
                r.timeout * 2
            )
        })?
        .map(|_| ())
        .map_err(|e| format!("SMTP {}: {e}", m.server))
}

/// The `X-Moira-Signature` value: `sha256=<hex HMAC-SHA256 of the body>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, body);
    format!("sha256={}", moira_protocol::hex::encode(tag.as_ref()))
}

/// One line a person reads (Slack text, e-mail subject, log line).
pub fn headline(n: &Notification) -> String {
    let what = match n.kind.as_str() {
        "opened" => "waiting for approval",
        "stage_began" => "your stage of approval began",
        "reminder" => "still waiting for approval",
        "escalated" => "escalated: still waiting",
        "approved" => "approved",
        "denied" => "denied",
        "timed_out" => "timed out",
        "cancelled" => "cancelled",
        "pushed_back" => "pushed back",
        "run_finished" => "run finished",
        "run_failed" => "run failed",
        other => other,
    };
    match (&n.gate, &n.run) {
        (Some(g), _) => format!(
            "{what}: {}",
            g.title.clone().unwrap_or_else(|| g.message.clone())
        ),
        (None, Some(r)) => format!("{what}: {} ({})", r.workflow, r.status.as_str()),
        _ => what.to_string(),
    }
}

/// The longer text for Slack and e-mail.
pub fn body(n: &Notification) -> String {
    let mut out = headline(n);
    if let Some(g) = &n.gate {
        out += &format!("\n\n{}\n", g.message);
        let mut who = Vec::new();
        if !g.approvers.users.is_empty() {
            who.push(format!("users {}", g.approvers.users.join(", ")));
        }
        if !g.approvers.roles.is_empty() {
            who.push(format!("roles {}", g.approvers.roles.join(", ")));
        }
        let who = if who.is_empty() {
            "anyone".to_string()
        } else {
            who.join("; ")
        };
        if let Some(s) = &g.summary {
            out += &format!("{s}\n");
        }
        out += &format!("Who can approve: {who} ({} needed)\n", g.approvals_required);
        if let Some(s) = g
            .stage
            .and_then(|n| g.stages.get(n as usize - 1).map(|s| (n, s)))
        {
            let (n, s) = s;
            let stage = moira_protocol::stages::Stage {
                users: s.users.clone(),
                roles: s.roles.clone(),
                count: s.count,
            };
            out += &format!(
                "Stage {n} of {}: {} may approve now ({} of {})\n",
                g.stages.len(),
                stage.who(),
                s.approved_by.len(),
                s.count
            );
        }
        // Exactly what an approval covers.
        for a in &g.subject {
            out += &format!("Approves {} {}\n", a.name, a.digest);
        }
        if let Some(a) = &g.action {
            out += &format!(
                "Approves the call {} {}\n{}\n",
                a.tool, a.digest, a.canonical
            );
        }
        if let Some(v) = &g.valid_for {
            out += &format!("An approval holds for {v}\n");
        }
        if let Some(by) = g.decider() {
            out += &format!("Decided by: {by}\n");
        }
        if let Some(r) = &g.reason {
            out += &format!("Reason: {r}\n");
        }
        if let (Some(run), Some(step)) = (&g.run_id, &g.step) {
            out += &format!("Run {run}, step {step}\n");
        }
        if let Some(p) = moira_protocol::view::parent_of(&g.metadata) {
            out += &format!("Called by run/step {p}\n");
        }
        if !g.status.is_terminal() {
            out += &format!(
                "Approve: moira gate approve {}\nDeny:    moira gate deny {} --reason …\n",
                g.id, g.id
            );
        }
    } else if let Some(r) = &n.run {
        out += &format!(
            "\n\nRun {} of {}: {}\n",
            r.id,
            r.workflow,
            r.status.as_str()
        );
    }
    if let Some(link) = &n.link {
        out += &format!("{link}\n");
    }
    if let Some(p) = &n.personal {
        if let (Some(a), Some(d)) = (&p.approve, &p.deny) {
            out += &format!(
                "\nFor {} alone (each link asks you to confirm, and works once):\nApprove: {a}\nDeny:    {d}\n",
                p.user
            );
        }
    }
    out
}

pub async fn send(
    cfg: &ChannelConfig,
    name: &str,
    n: &Notification,
    r: &Resolved,
) -> Result<(), String> {
    match cfg {
        ChannelConfig::Webhook { url, .. } => {
            let body = serde_json::to_vec(n).map_err(|e| e.to_string())?;
            let secret = r.secrets.get(name).ok_or("no secret")?;
            let headers = [
                ("Content-Type", "application/json".to_string()),
                ("X-Moira-Event", n.kind.clone()),
                ("X-Moira-Delivery", n.id.clone()),
                ("X-Moira-Signature", signature(secret, &body)),
            ];
            post(url, &headers, body, r).await
        }
        ChannelConfig::SlackBot {
            channel,
            buttons,
            api,
            ..
        } => {
            let to = match (&n.personal, channel) {
                (Some(p), _) => p.address.clone(),
                (None, Some(c)) => c.clone(),
                (None, None) => return Err("no channel to post to".into()),
            };
            let mut message = slack_message(n, *buttons);
            message["channel"] = serde_json::Value::String(to);
            message["unfurl_links"] = serde_json::Value::Bool(false);
            let token = r.slack_tokens.get(name).ok_or("no bot token")?;
            slack_api(api, "chat.postMessage", token, &message, r).await
        }
        ChannelConfig::Slack { url, buttons } => {
            let payload =
                serde_json::to_vec(&slack_message(n, *buttons)).map_err(|e| e.to_string())?;
            post(
                url,
                &[("Content-Type", "application/json".into())],
                payload,
                r,
            )
            .await
        }
        ChannelConfig::Email {
            smtp: server,
            tls,
            username,
            from,
            to,
            ..
        } => {
            // A personal message goes to its approver alone.
            let personal;
            let to = match &n.personal {
                Some(p) => {
                    personal = [p.address.clone()];
                    &personal[..]
                }
                None => &to[..],
            };
            let auth = username
                .as_deref()
                .zip(r.smtp_passwords.get(name).map(String::as_str));
            let mail = Mail {
                server,
                tls: *tls,
                auth,
                from,
                to,
                subject: format!("[moira] {}", headline(n)),
                body: body(n),
            };
            send_mail(mail, r).await
        }
        ChannelConfig::Exec { command } => exec(command, n, r).await,
        ChannelConfig::Log {} => {
            tracing::info!(target: "moira_notify", kind = n.kind, id = n.id, "{}", headline(n));
            Ok(())
        }
    }
}

pub use moira_service::slack::mrkdwn_escape;

/// A call to Slack's Web API with a bot token. Slack answers 200 with
/// `{"ok": false, "error": …}` when it refuses, so the body decides.
async fn slack_api(
    api: &str,
    method: &str,
    token: &str,
    body: &serde_json::Value,
    r: &Resolved,
) -> Result<(), String> {
    let url = format!("{api}{method}");
    let resp = http_client()?
        .post(&url)
        .timeout(r.timeout)
        .bearer_auth(token)
        .header("Content-Type", "application/json; charset=utf-8")
        .body(serde_json::to_vec(body).map_err(|e| e.to_string())?)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                format!("no answer from {url} within {:?}", r.timeout)
            } else {
                format!("posting to {url}: {e}")
            }
        })?;
    expect_2xx(resp.status().as_u16())?;
    // A small JSON answer; a huge one is not Slack's.
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| format!("reading Slack's answer: {e}"))?;
    let answer: serde_json::Value = serde_json::from_slice(&bytes[..bytes.len().min(64 * 1024)])
        .map_err(|_| "Slack's answer is not JSON".to_string())?;
    if answer["ok"] == serde_json::Value::Bool(true) {
        Ok(())
    } else {
        let why = answer["error"].as_str().unwrap_or("no reason given");
        Err(format!(
            "Slack refused {method}: {}",
            why.chars().take(100).collect::<String>()
        ))
    }
}

/// The Slack message: gate text escaped, then moira's own link.
pub fn slack_text(n: &Notification) -> String {
    // The personal links are added below as Slack links, not as text.
    let plain = Notification {
        personal: None,
        ..n.clone()
    };
    let body = body(&plain);
    let mut detail = body
        .split_once("\n\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    if let Some(link) = &n.link {
        detail = detail.replace(link.as_str(), "");
    }
    let mut text = format!(
        "*{}*\n{}",
        mrkdwn_escape(&headline(n)),
        mrkdwn_escape(detail.trim_end())
    );
    if let Some(link) = &n.link {
        // The link is built from the configured base URL and the gate id.
        text.push_str(&format!("\n<{}|open in moira>", mrkdwn_escape(link)));
    }
    if let Some(p) = &n.personal {
        // Built from the base URL and a hex token; the name is a checked
        // user name, escaped all the same.
        if let (Some(a), Some(d)) = (&p.approve, &p.deny) {
            text.push_str(&format!(
                "\n<{}|Approve as {}> · <{}|Deny as {}> (links for you alone; each asks to confirm and works once)",
                mrkdwn_escape(a),
                mrkdwn_escape(&p.user),
                mrkdwn_escape(d),
                mrkdwn_escape(&p.user)
            ));
        }
    }
    text
}

/// The Slack message body. With `buttons`, a message about a waiting gate
/// also carries Approve and Deny buttons (Block Kit), which Slack sends to
/// moira-web's `/slack/interactivity`; the gate id is their value.
pub fn slack_message(n: &Notification, buttons: bool) -> serde_json::Value {
    let text = slack_text(n);
    let waiting = n.gate.as_ref().filter(|g| !g.status.is_terminal());
    match waiting.filter(|_| buttons) {
        None => serde_json::json!({ "text": text }),
        Some(g) => {
            let id = g.id.to_string();
            serde_json::json!({
                "text": text,
                "blocks": [
                    {"type": "section", "text": {"type": "mrkdwn", "text": text}},
                    {"type": "actions", "elements": [
                        {"type": "button", "action_id": "moira_approve", "style": "primary",
                         "text": {"type": "plain_text", "text": "Approve"}, "value": id},
                        {"type": "button", "action_id": "moira_deny", "style": "danger",
                         "text": {"type": "plain_text", "text": "Deny"}, "value": id},
                    ]},
                ],
            })
        }
    }
}

fn expect_2xx(code: u16) -> Result<(), String> {
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(format!("the receiver answered HTTP {code}"))
    }
}

async fn exec(command: &[String], n: &Notification, r: &Resolved) -> Result<(), String> {
    let (prog, args) = command.split_first().ok_or("empty command")?;
    let mut cmd = tokio::process::Command::new(prog);
    // A clean environment: the notifier holds SMTP passwords and webhook
    // secrets that the command has no business reading.
    cmd.env_clear();
    for name in ["PATH", "HOME", "LANG", "LC_ALL", "TZ"] {
        if let Some(v) = std::env::var_os(name) {
            cmd.env(name, v);
        }
    }
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd.env("MOIRA_EVENT", &n.kind)
        .env("MOIRA_NOTIFICATION_ID", &n.id);
    if let Some(g) = &n.gate {
        cmd.env("MOIRA_GATE_ID", g.id.to_string())
            .env("MOIRA_GATE_MESSAGE", &g.message)
            .env("MOIRA_GATE_TITLE", g.title.clone().unwrap_or_default())
            .env("MOIRA_GATE_STATUS", g.status.as_str())
            .env("MOIRA_RUN_ID", g.run_id.clone().unwrap_or_default())
            .env("MOIRA_STEP", g.step.clone().unwrap_or_default())
            .env("MOIRA_DECIDED_BY", g.decided_by.clone().unwrap_or_default());
    }
    if let Some(run) = &n.run {
        let waiting: Vec<String> = run.waiting_gates.iter().map(|g| g.to_string()).collect();
        cmd.env("MOIRA_RUN_ID", &run.id)
            .env("MOIRA_WORKFLOW", &run.workflow)
            .env("MOIRA_RUN_STATUS", run.status.as_str())
            .env("MOIRA_WAITING_GATES", waiting.join(","));
    } else if let Some(g) = n.gate.as_ref().filter(|g| !g.status.is_terminal()) {
        cmd.env("MOIRA_WAITING_GATES", g.id.to_string());
    }
    let json = serde_json::to_vec(n).map_err(|e| e.to_string())?;
    let run = async {
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {prog}: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&json).await;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| format!("waiting for {prog}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            Err(format!(
                "{prog} exited with {:?}: {}",
                out.status.code(),
                err.trim().chars().take(200).collect::<String>()
            ))
        }
    };
    tokio::time::timeout(r.timeout, run)
        .await
        .map_err(|_| format!("{prog} did not finish within {:?}", r.timeout))?
}

#[cfg(test)]
mod tests {
    #[test]
    fn mail_text_leaves_no_bare_cr_or_lf_and_headers_stay_on_one_line() {
        assert_eq!(super::mail_text("a\r.\r\nb\rc\n"), "a\n.\nb\nc\n");
        assert_eq!(super::one_line("x\r\nBcc: y\u{1b}"), "x  Bcc: y ");
    }

    #[test]
    fn a_message_names_what_the_gate_approves_and_who_called_its_run_and_slack_text_is_escaped() {
        use moira_protocol::binding::Artifact;
        let spec = moira_protocol::gate::spec_from(
            &moira_protocol::command::OpenGate {
                actor: "alice".into(),
                message: "Ship?".into(),
                subject: vec![Artifact {
                    name: "app*<b>.tgz".into(),
                    digest: format!("sha256:{}", "ab".repeat(32)),
                }],
                valid_for_ms: Some(7_200_000),
                metadata: [
                    ("parent_run".to_string(), "r-parent".to_string()),
                    ("parent_step".to_string(), "staging".to_string()),
                ]
                .into(),
                ..Default::default()
            },
            &moira_protocol::gate::Policy::dev(),
        )
        .expect("spec");
        let state = moira_protocol::gate::fold([&moira_protocol::Envelope {
            schema: moira_protocol::event::SCHEMA,
            id: moira_protocol::CommandId::new(),
            gate_id: moira_protocol::GateId::new(),
            actor: "alice".into(),
            at: 1,
            event: moira_protocol::GateEvent::GateOpened {
                spec: Box::new(spec),
                timeout_at: None,
            },
            run_id: None,
            signature: None,
            signed_at: None,
            signer: None,
            registry: None,
            prev: None,
            via: None,
            on_behalf_of: None,
        }])
        .expect("a gate");
        let n = crate::Notification {
            id: "x".into(),
            kind: "opened".into(),
            at: "now".into(),
            gate: Some(moira_protocol::GateView::from(&state)),
            run: None,
            link: None,
            personal: None,
        };
        let body = super::body(&n);
        assert!(
            body.contains(&format!("Approves app*<b>.tgz sha256:{}", "ab".repeat(32))),
            "{body}"
        );
        assert!(body.contains("An approval holds for 2h"), "{body}");
        assert!(
            body.contains("Called by run/step r-parent/staging"),
            "a child run's gate names its caller: {body}"
        );
        let slack = super::slack_text(&n);
        assert!(
            slack.contains("&lt;b&gt;") && !slack.contains("<b>"),
            "{slack}"
        );
    }

    #[test]
    fn signatures_are_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            super::signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
