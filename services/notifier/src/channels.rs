//! Delivering one notification to one channel. Each attempt is bounded by
//! the delivery timeout; any answer other than success is an error to retry.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use crate::config::{ChannelConfig, Resolved};
use crate::http::{self, Url};
use crate::smtp;
use crate::Notification;

/// The `X-Moira-Signature` value: `sha256=<hex HMAC-SHA256 of the body>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// One line a person reads (Slack text, e-mail subject, log line).
pub fn headline(n: &Notification) -> String {
    let what = match n.kind.as_str() {
        "opened" => "waiting for approval",
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
        out += &format!("Who can approve: {who} ({} needed)\n", g.approvals_required);
        if let Some(by) = &g.decided_by {
            out += &format!("Decided by: {by}\n");
        }
        if let Some(r) = &g.reason {
            out += &format!("Reason: {r}\n");
        }
        if let (Some(run), Some(step)) = (&g.run_id, &g.step) {
            out += &format!("Run {run}, step {step}\n");
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
            let url = Url::parse(url)?;
            expect_2xx(http::post(&url, &headers, &body, r.timeout).await?)
        }
        ChannelConfig::Slack { url } => {
            let text = slack_text(n);
            let payload = serde_json::to_vec(&serde_json::json!({ "text": text }))
                .map_err(|e| e.to_string())?;
            let url = Url::parse(url)?;
            expect_2xx(
                http::post(
                    &url,
                    &[("Content-Type", "application/json".into())],
                    &payload,
                    r.timeout,
                )
                .await?,
            )
        }
        ChannelConfig::Email {
            smtp: server,
            starttls,
            username,
            from,
            to,
            ..
        } => {
            let auth = username
                .as_deref()
                .zip(r.smtp_passwords.get(name).map(String::as_str));
            let subject = format!("[moira] {}", headline(n));
            let text = body(n);
            let mail = smtp::Mail {
                server,
                starttls: *starttls,
                auth,
                from,
                to,
                subject: &subject,
                body: &text,
            };
            smtp::send(&mail, r.timeout).await
        }
        ChannelConfig::Exec { command } => exec(command, n, r).await,
        ChannelConfig::Log {} => {
            tracing::info!(target: "moira_notify", kind = n.kind, id = n.id, "{}", headline(n));
            Ok(())
        }
    }
}

/// Escapes text for Slack mrkdwn: `&`, `<` and `>` are the only
/// characters Slack reads as control syntax (links, `<!channel>`
/// mentions), so after this a gate's text can neither mention anyone nor
/// disguise a link.
pub fn mrkdwn_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The Slack message: gate text escaped, then moira's own link.
pub fn slack_text(n: &Notification) -> String {
    let body = body(n);
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
    text
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
    fn mrkdwn_is_escaped() {
        assert_eq!(
            super::mrkdwn_escape("<!channel> <https://evil.example/login|open in moira> & co"),
            "&lt;!channel&gt; &lt;https://evil.example/login|open in moira&gt; &amp; co"
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
