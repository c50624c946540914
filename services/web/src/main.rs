//! `moira-web`: see the crate docs of `moira_web`.

use std::net::{IpAddr, SocketAddr};

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
    #[command(flatten)]
    connect: moira_service::ConnectArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let settings = moira_web::Settings {
        nats_url: args.nats_url,
        listen: args.listen,
        auth: args.auth,
        user_header: args.user_header,
        trusted_proxies: args.trusted_proxies,
        connect: args.connect.auth(),
    };
    moira_service::signals::serve("moira-web", |shutdown| moira_web::run(settings, shutdown)).await
}
