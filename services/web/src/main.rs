//! `moira-web`: see the crate docs of `moira_web`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;

/// Serves moira's HTTP API: read gates and runs, decide gates.
#[derive(Parser, Debug)]
#[command(name = "moira-web", version)]
struct Args {
    /// NATS server URL (several may be given, comma-separated).
    #[arg(long, env = "MOIRA_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Address to listen on.
    #[arg(long, env = "MOIRA_WEB_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Who is deciding: `none` (reads only; every decision is refused),
    /// `proxy` (a header set by an authenticating reverse proxy) or `dev`
    /// (any name, loopback only).
    #[arg(long, env = "MOIRA_WEB_AUTH", value_enum, default_value = "none")]
    auth: moira_web::AuthMode,
    /// With `--auth proxy`: the header that names the user.
    #[arg(
        long,
        env = "MOIRA_WEB_USER_HEADER",
        default_value = "x-forwarded-user"
    )]
    user_header: String,
    /// With `--auth proxy`: addresses of the proxies whose header is
    /// believed (repeat the flag, or comma-separate in the env variable).
    #[arg(
        long = "trusted-proxy",
        env = "MOIRA_WEB_TRUSTED_PROXIES",
        value_delimiter = ',',
        default_value = "127.0.0.1,::1"
    )]
    trusted_proxies: Vec<IpAddr>,
    /// A file holding the Slack app's signing secret: turns on
    /// POST /slack/interactivity.
    #[arg(long, env = "MOIRA_SLACK_SIGNING_SECRET_FILE")]
    slack_signing_secret_file: Option<PathBuf>,
    /// Where Slack's response_urls may point; message updates go nowhere else.
    #[arg(
        long,
        env = "MOIRA_SLACK_API",
        default_value = "https://hooks.slack.com/"
    )]
    slack_api: String,
    /// A file holding the secret one-click links are signed with (the
    /// notifier's `[links]` uses the same): turns on /links/….
    #[arg(long, env = "MOIRA_LINK_SECRET_FILE")]
    link_secret_file: Option<PathBuf>,
    /// moira-web's own SSH key: it signs every decision it makes for
    /// someone, saying how it authenticated them (proxy, link, slack, dev).
    /// A gate-keeper with `--signatures require` counts such a decision
    /// only if the registry lists this key under a `[services.<name>]` with
    /// `attests = true` and the user's `attested` names that way.
    #[arg(long, env = "MOIRA_WEB_KEY")]
    key: Option<PathBuf>,
    #[command(flatten)]
    registry: moira_service::live::RegistryArgs,
    #[command(flatten)]
    connect: moira_service::ConnectArgs,
    #[command(flatten)]
    ops: moira_service::ops::OpsArgs,
}

/// A secret from a file: trimmed, and not empty.
fn secret(path: &std::path::Path) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        Ok(_) => Err(format!("{} is empty", path.display())),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let read = |p: &Option<PathBuf>| p.as_deref().map(secret).transpose();
    let link = read(&args.link_secret_file).and_then(|s| match s {
        // Whoever can guess it can mint links as anyone.
        Some(s) if s.len() < 16 => Err(format!(
            "the link secret in {} is shorter than 16 characters; make a long random one \
             (for example: head -c 32 /dev/urandom | base64)",
            args.link_secret_file
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        )),
        other => Ok(other),
    });
    let (slack_secret, link_secret) = match (read(&args.slack_signing_secret_file), link) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("moira-web: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let slack = slack_secret.map(|signing_secret| moira_web::slack::SlackSettings {
        signing_secret,
        api: args.slack_api.clone(),
    });
    let settings = moira_web::Settings {
        nats_url: args.nats_url,
        listen: args.listen,
        auth: args.auth,
        user_header: args.user_header,
        trusted_proxies: args.trusted_proxies,
        connect: args.connect.auth(),
        approvers: args.registry.approvers,
        approvers_kv: args.registry.approvers_kv,
        slack,
        link_secret,
        key: args.key,
        metrics_listen: args.ops.metrics_listen,
    };
    moira_service::signals::serve("moira-web", |shutdown| moira_web::run(settings, shutdown)).await
}
