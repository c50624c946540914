//! The notifier's TOML config: channels, routing rules, reminders,
//! escalation and delivery settings. Everything is checked at start-up:
//! unknown channels, bad URLs and missing secrets are refused with a clear
//! message, before any event is read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use moira_protocol::time::parse_duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Base URL of a web view, for links in messages.
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub channels: BTreeMap<String, ChannelConfig>,
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Channels a gate may name itself (`notify` metadata). A channel not
    /// listed here is used only by rules: whoever opens a gate does not
    /// choose where, or which command, the notifier sends to.
    #[serde(default)]
    pub gate_channels: Vec<String>,
    #[serde(default)]
    pub reminders: Option<Reminders>,
    #[serde(default)]
    pub escalation: Option<Escalation>,
    #[serde(default)]
    pub delivery: Delivery,
    /// One-click links for approvers, signed with moira-web's link secret.
    #[serde(default)]
    pub links: Option<Links>,
}

/// `[links]`: personal Approve and Deny links in the messages an approver
/// alone receives (an e-mail channel's `approvers = true`, a Slack bot
/// channel's `direct = true`). Never in a shared message: a link decides
/// as the person it names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Links {
    /// The file holding the secret (moira-web's `--link-secret-file`).
    pub secret_file: String,
    /// How long a link works: default 24h, at most 7 days.
    #[serde(default)]
    pub ttl: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ChannelConfig {
    Webhook {
        url: String,
        #[serde(default)]
        secret: Option<String>,
        /// Name of an environment variable holding the secret.
        #[serde(default)]
        secret_env: Option<String>,
    },
    /// A Slack bot (chat.postMessage with a bot token): posts to
    /// `channel`, and with `direct` sends each approver named in the
    /// registry (`slack = "U…"`) a message of their own, with their own
    /// one-click links when `[links]` is set.
    SlackBot {
        /// Name of the environment variable holding the bot token (xoxb-…).
        token_env: String,
        /// The channel id to post to (C…); optional with `direct`.
        #[serde(default)]
        channel: Option<String>,
        #[serde(default)]
        direct: bool,
        /// Approve and Deny buttons, for moira-web's `/slack/interactivity`.
        #[serde(default)]
        buttons: bool,
        /// Slack's Web API base (a test points it elsewhere).
        #[serde(default = "default_slack_api")]
        api: String,
    },
    Slack {
        url: String,
        /// Approve and Deny buttons on messages about waiting gates, for a
        /// Slack app whose interactivity URL is moira-web's
        /// `/slack/interactivity`.
        #[serde(default)]
        buttons: bool,
    },
    Email {
        /// `host:port` of the SMTP server.
        smtp: String,
        /// `starttls` (the default: the server must offer it), `implicit`
        /// (TLS from the first byte, usually port 465) or `none` (a local
        /// relay; no credentials are sent then).
        #[serde(default)]
        tls: SmtpTls,
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        password_env: Option<String>,
        from: String,
        /// Who gets every message (may be empty with `approvers`).
        #[serde(default)]
        to: Vec<String>,
        /// Also mail each approver of a waiting gate who has an `email` in
        /// the approvers registry a message of their own, with their own
        /// one-click links when `[links]` is set.
        #[serde(default)]
        approvers: bool,
    },
    Exec {
        command: Vec<String>,
    },
    Log {},
}

/// How an e-mail channel secures its SMTP connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    #[default]
    Starttls,
    Implicit,
    None,
}

/// Which notifications go to which channels.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Kinds to match; empty matches every kind.
    #[serde(default)]
    pub kinds: Vec<String>,
    #[serde(default)]
    pub run: Option<String>,
    #[serde(default)]
    pub step: Option<String>,
    #[serde(default)]
    pub workflow: Option<String>,
    /// Gate metadata entries that must all be present with these values.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    pub channels: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reminders {
    /// Re-notify (kind `reminder`) this often while a gate waits.
    pub every: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Escalation {
    /// Once, this long after a gate opened if it still waits.
    pub after: String,
    /// Channels that get the escalation (besides rules matching `escalated`).
    #[serde(default)]
    pub channels: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delivery {
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// First pause between attempts; it doubles each time, with jitter.
    #[serde(default = "default_backoff")]
    pub backoff: String,
    /// Bound on one attempt (connect, send, answer).
    #[serde(default = "default_timeout")]
    pub timeout: String,
}

fn default_slack_api() -> String {
    "https://slack.com/api/".into()
}

fn default_attempts() -> u32 {
    5
}
fn default_backoff() -> String {
    "500ms".into()
}
fn default_timeout() -> String {
    "10s".into()
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            attempts: default_attempts(),
            backoff: default_backoff(),
            timeout: default_timeout(),
        }
    }
}

/// Notification kinds a rule may name.
pub const KINDS: [&str; 11] = [
    "opened",
    "stage_began",
    "reminder",
    "escalated",
    "approved",
    "denied",
    "timed_out",
    "cancelled",
    "pushed_back",
    "run_finished",
    "run_failed",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the notifier config {0}: {1}")]
    Read(String, std::io::Error),
    #[error("the notifier config is not valid TOML for moira: {0}")]
    Parse(String),
    #[error("the notifier config has problems:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<String>),
}

/// Durations and secrets resolved from a valid config.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub attempts: u32,
    pub backoff: Duration,
    pub timeout: Duration,
    pub remind_every: Option<Duration>,
    pub escalate_after: Option<Duration>,
    /// Webhook secrets (from the file or the environment) by channel.
    pub secrets: BTreeMap<String, String>,
    pub smtp_passwords: BTreeMap<String, String>,
    /// Slack bot tokens by channel.
    pub slack_tokens: BTreeMap<String, String>,
    /// The one-click link secret and how long links work.
    pub links: Option<(String, Duration)>,
}

impl Config {
    pub fn load(path: &Path) -> Result<(Config, Resolved), ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read(path.display().to_string(), e))?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<(Config, Resolved), ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let r = c.check()?;
        Ok((c, r))
    }

    /// The config `moira dev` uses: everything to the log.
    pub fn log_only() -> (Config, Resolved) {
        Self::parse("[channels.log]\ntype = \"log\"\n\n[[rules]]\nchannels = [\"log\"]\n")
            .unwrap_or_else(unreachable_config)
    }

    fn check(&self) -> Result<Resolved, ConfigError> {
        let mut p = Vec::new();
        let mut secrets = BTreeMap::new();
        let mut smtp_passwords = BTreeMap::new();
        let mut slack_tokens = BTreeMap::new();
        let names: BTreeSet<&str> = self.channels.keys().map(String::as_str).collect();
        let url_ok = |u: &str| u.starts_with("http://") || u.starts_with("https://");
        for (name, ch) in &self.channels {
            let at = format!("channel '{name}'");
            match ch {
                ChannelConfig::Webhook {
                    url,
                    secret,
                    secret_env,
                } => {
                    if !url_ok(url) || reqwest::Url::parse(url).is_err() {
                        p.push(format!(
                            "{at}: url '{url}' must be an http:// or https:// URL"
                        ));
                    }
                    match (secret, secret_env) {
                        (Some(s), None) if !s.is_empty() => {
                            secrets.insert(name.clone(), s.clone());
                        }
                        (None, Some(var)) => match std::env::var(var) {
                            Ok(v) if !v.is_empty() => {
                                secrets.insert(name.clone(), v);
                            }
                            _ => p.push(format!("{at}: secret_env names {var}, which is not set")),
                        },
                        (Some(_), Some(_)) => p.push(format!("{at}: give secret or secret_env, not both")),
                        _ => p.push(format!("{at}: a webhook needs a secret (secret or secret_env) to sign its requests")),
                    }
                }
                ChannelConfig::SlackBot {
                    token_env,
                    channel,
                    direct,
                    api,
                    ..
                } => {
                    match std::env::var(token_env) {
                        Ok(v) if !v.trim().is_empty() => {
                            slack_tokens.insert(name.clone(), v.trim().to_string());
                        }
                        _ => p.push(format!(
                            "{at}: token_env names {token_env}, which is not set"
                        )),
                    }
                    if !url_ok(api) || reqwest::Url::parse(api).is_err() || !api.ends_with('/') {
                        p.push(format!(
                            "{at}: api '{api}' must be an http:// or https:// URL ending in /"
                        ));
                    }
                    match channel {
                        Some(c)
                            if c.is_empty() || !c.bytes().all(|b| b.is_ascii_alphanumeric()) =>
                        {
                            p.push(format!(
                                "{at}: channel '{c}' is not a Slack channel id (C…)"
                            ))
                        }
                        None if !direct => {
                            p.push(format!("{at}: give a channel, or direct = true, or both"))
                        }
                        _ => {}
                    }
                }
                ChannelConfig::Slack { url, .. } => {
                    if !url_ok(url) || reqwest::Url::parse(url).is_err() {
                        p.push(format!(
                            "{at}: url '{url}' must be an http:// or https:// URL"
                        ));
                    }
                }
                ChannelConfig::Email {
                    smtp,
                    tls,
                    username,
                    password_env,
                    from,
                    to,
                    approvers,
                } => {
                    if username.is_some() && *tls == SmtpTls::None {
                        p.push(format!(
                            "{at}: a username with tls = \"none\" would send the password in clear; \
                             use tls = \"starttls\" or \"implicit\""
                        ));
                    }
                    for addr in std::iter::once(from).chain(to.iter()) {
                        if let Err(e) = addr.parse::<lettre::message::Mailbox>() {
                            p.push(format!("{at}: '{addr}' is not an e-mail address: {e}"));
                        }
                    }
                    if smtp
                        .rsplit_once(':')
                        .is_none_or(|(h, port)| h.is_empty() || port.parse::<u16>().is_err())
                    {
                        p.push(format!("{at}: smtp '{smtp}' must be host:port"));
                    }
                    if !from.contains('@')
                        || (to.is_empty() && !approvers)
                        || to.iter().any(|t| !t.contains('@'))
                    {
                        p.push(format!("{at}: from and to need e-mail addresses (to may be empty with approvers = true)"));
                    }
                    match (username, password_env) {
                        (Some(_), Some(var)) => match std::env::var(var) {
                            Ok(v) => {
                                smtp_passwords.insert(name.clone(), v);
                            }
                            Err(_) => {
                                p.push(format!("{at}: password_env names {var}, which is not set"))
                            }
                        },
                        (Some(_), None) => p.push(format!("{at}: username needs password_env")),
                        (None, Some(_)) => p.push(format!("{at}: password_env needs username")),
                        (None, None) => {}
                    }
                }
                ChannelConfig::Exec { command } => {
                    if command.is_empty() || command[0].trim().is_empty() {
                        p.push(format!("{at}: command is empty"));
                    }
                }
                ChannelConfig::Log {} => {}
            }
        }
        for c in &self.gate_channels {
            if !names.contains(c.as_str()) {
                p.push(format!("gate_channels: unknown channel '{c}'"));
            }
        }
        for (i, rule) in self.rules.iter().enumerate() {
            for k in &rule.kinds {
                if !KINDS.contains(&k.as_str()) {
                    p.push(format!(
                        "rule {}: unknown kind '{k}'; kinds are {}",
                        i + 1,
                        KINDS.join(", ")
                    ));
                }
            }
            if rule.channels.is_empty() {
                p.push(format!("rule {}: names no channels", i + 1));
            }
            for c in &rule.channels {
                if !names.contains(c.as_str()) {
                    p.push(format!("rule {}: unknown channel '{c}'", i + 1));
                }
            }
        }
        let dur = |p: &mut Vec<String>, what: &str, v: &str| match parse_duration(v) {
            Ok(d) => Some(d),
            Err(e) => {
                p.push(format!("{what}: {e}"));
                None
            }
        };
        let remind_every = self
            .reminders
            .as_ref()
            .and_then(|r| dur(&mut p, "reminders.every", &r.every));
        if remind_every.is_some_and(|d| d < Duration::from_secs(1)) {
            p.push("reminders.every must be at least 1s".into());
        }
        let escalate_after = self
            .escalation
            .as_ref()
            .and_then(|e| dur(&mut p, "escalation.after", &e.after));
        if let Some(e) = &self.escalation {
            for c in &e.channels {
                if !names.contains(c.as_str()) {
                    p.push(format!("escalation: unknown channel '{c}'"));
                }
            }
        }
        let backoff = dur(&mut p, "delivery.backoff", &self.delivery.backoff);
        let timeout = dur(&mut p, "delivery.timeout", &self.delivery.timeout);
        if self.delivery.attempts == 0 {
            p.push("delivery.attempts must be at least 1".into());
        }
        let links = self.links.as_ref().and_then(|l| {
            if self.base_url.is_none() {
                p.push(
                    "links: needs base_url, moira-web's address, for the links to point at".into(),
                );
            }
            let ttl = match &l.ttl {
                None => Some(Duration::from_secs(24 * 3600)),
                Some(t) => dur(&mut p, "links.ttl", t),
            };
            if ttl.is_some_and(|t| {
                t > Duration::from_secs(7 * 24 * 3600) || t < Duration::from_secs(60)
            }) {
                p.push(
                    "links.ttl is at least 1m and at most 7d (moira-web refuses longer links)"
                        .into(),
                );
            }
            let secret = match std::fs::read_to_string(&l.secret_file) {
                Ok(s) if s.trim().len() >= 16 => Some(s.trim().to_string()),
                Ok(_) => {
                    p.push(format!(
                        "links: {} holds no secret of 16 characters or more",
                        l.secret_file
                    ));
                    None
                }
                Err(e) => {
                    p.push(format!("links: cannot read {}: {e}", l.secret_file));
                    None
                }
            };
            secret.zip(ttl)
        });
        if !p.is_empty() {
            return Err(ConfigError::Invalid(p));
        }
        Ok(Resolved {
            attempts: self.delivery.attempts,
            backoff: backoff.unwrap_or(Duration::from_millis(500)),
            timeout: timeout.unwrap_or(Duration::from_secs(10)),
            remind_every,
            escalate_after,
            secrets,
            smtp_passwords,
            slack_tokens,
            links,
        })
    }
}

fn unreachable_config(e: ConfigError) -> (Config, Resolved) {
    panic!("the built-in log config is invalid: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_and_slack_bots_are_checked_before_anything_runs() {
        let dir = std::env::temp_dir().join(format!("moira-links-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let secret = dir.join("secret");
        std::fs::write(&secret, "0123456789abcdef0123").expect("write");
        let secret = secret.display();
        let bad = |text: &str, want: &str| match Config::parse(text) {
            Err(ConfigError::Invalid(p)) => {
                assert!(p.iter().any(|m| m.contains(want)), "{p:?} lacks {want}")
            }
            other => panic!("{text}: {other:?}"),
        };
        bad(
            &format!("[links]\nsecret_file = \"{secret}\"\n"),
            "needs base_url",
        );
        bad(
            &format!(
                "base_url = \"http://x\"\n[links]\nsecret_file = \"{secret}\"\nttl = \"30d\"\n"
            ),
            "at most 7d",
        );
        bad(
            "base_url = \"http://x\"\n[links]\nsecret_file = \"/nonexistent/moira\"\n",
            "cannot read",
        );
        bad(
            "[channels.b]\ntype = \"slack_bot\"\ntoken_env = \"MOIRA_TEST_NO_SUCH_VAR\"\nchannel = \"C1\"\n",
            "not set",
        );
        bad(
            "[channels.b]\ntype = \"slack_bot\"\ntoken_env = \"PATH\"\n",
            "give a channel, or direct = true",
        );
        bad(
            "[channels.b]\ntype = \"slack_bot\"\ntoken_env = \"PATH\"\nchannel = \"#general\"\n",
            "not a Slack channel id",
        );
        let (_, r) = Config::parse(&format!(
            "base_url = \"http://x\"\n[links]\nsecret_file = \"{secret}\"\n\
             [channels.m]\ntype = \"email\"\nsmtp = \"127.0.0.1:25\"\ntls = \"none\"\nfrom = \"m@example.com\"\napprovers = true\n"
        ))
        .expect("an approvers-only mail channel is valid");
        assert_eq!(r.links.map(|(_, ttl)| ttl.as_secs()), Some(24 * 3600));
    }

    #[test]
    fn a_full_config_parses() {
        let (c, r) = Config::parse(
            r#"
base_url = "https://moira.example.com"
[channels.hook]
type = "webhook"
url = "http://127.0.0.1:9/hook"
secret = "s"
[channels.team]
type = "slack"
url = "https://hooks.slack.com/services/x"
[channels.mail]
type = "email"
smtp = "127.0.0.1:2525"
from = "moira@example.com"
to = ["ops@example.com"]
[channels.page]
type = "exec"
command = ["true"]
[channels.log]
type = "log"
[[rules]]
kinds = ["opened", "reminder"]
workflow = "release"
metadata = { env = "prod" }
channels = ["hook", "team"]
[reminders]
every = "30m"
[escalation]
after = "2h"
channels = ["page"]
[delivery]
attempts = 3
backoff = "100ms"
"#,
        )
        .expect("valid");
        assert_eq!(c.channels.len(), 5);
        assert_eq!(r.remind_every, Some(Duration::from_secs(1800)));
        assert_eq!(r.attempts, 3);
        assert_eq!(r.secrets.get("hook").map(String::as_str), Some("s"));
    }

    #[test]
    fn problems_are_refused_with_clear_messages() {
        let e = Config::parse(
            r#"
[channels.hook]
type = "webhook"
url = "ftp://nope"
[channels.mail]
type = "email"
smtp = "nohostport"
from = "x"
to = []
[[rules]]
kinds = ["openned"]
channels = ["ghost"]
[reminders]
every = "soon"
"#,
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "url 'ftp://nope'",
            "needs a secret",
            "host:port",
            "unknown kind 'openned'",
            "unknown channel 'ghost'",
            "reminders.every",
            "'x' is not an e-mail address",
        ] {
            assert!(e.contains(needle), "missing {needle:?} in {e}");
        }
        assert!(Config::parse("[channels.x]\ntype = \"pigeon\"\n").is_err());
        assert!(Config::parse("[channels.x]\ntype = \"webhook\"\nurl = \"http://a/\"\nsecret_env = \"MOIRA_SURELY_UNSET_VAR\"\n")
            .unwrap_err()
            .to_string()
            .contains("MOIRA_SURELY_UNSET_VAR"));
    }

    #[test]
    fn smtp_credentials_without_tls_are_refused() {
        std::env::set_var("MOIRA_TEST_SMTP_PASSWORD", "pw");
        let mail = |tls: &str| {
            format!(
                "[channels.mail]\ntype = \"email\"\nsmtp = \"127.0.0.1:25\"\ntls = \"{tls}\"\n\
                 username = \"u\"\npassword_env = \"MOIRA_TEST_SMTP_PASSWORD\"\n\
                 from = \"m@example.com\"\nto = [\"o@example.com\"]\n"
            )
        };
        let e = Config::parse(&mail("none"))
            .expect_err("refused")
            .to_string();
        assert!(e.contains("password in clear"), "{e}");
        for ok in ["starttls", "implicit"] {
            Config::parse(&mail(ok)).expect("accepted");
        }
        assert!(Config::parse(&mail("sometimes")).is_err());
    }
}
