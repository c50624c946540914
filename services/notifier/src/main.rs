//! `moira-notifier`: see the crate docs of `moira_notifier`.

use std::path::PathBuf;

use clap::Parser;

/// Delivers notifications about moira gates and runs.
#[derive(Parser, Debug)]
#[command(name = "moira-notifier", version)]
struct Args {
    /// NATS server URL (several may be given, comma-separated).
    #[arg(long, env = "MOIRA_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Channels and routing (TOML); without it everything goes to the log.
    #[arg(long, env = "MOIRA_NOTIFY_CONFIG")]
    config: Option<PathBuf>,
    /// Replicas for the streams when this notifier creates them.
    #[arg(long, env = "MOIRA_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    replicas: u8,
    /// Approvers registry (TOML): who holds a role, and each user's
    /// `email` and `slack` id, for the messages an approver alone gets.
    #[arg(long, env = "MOIRA_APPROVERS")]
    approvers: Option<PathBuf>,
    /// Follow the registry in the MOIRA_REGISTRY KV bucket instead.
    #[arg(long, env = "MOIRA_APPROVERS_KV", conflicts_with = "approvers")]
    approvers_kv: bool,
    #[command(flatten)]
    connect: moira_service::ConnectArgs,
    #[command(flatten)]
    ops: moira_service::ops::OpsArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let settings = moira_notifier::Settings {
        nats_url: args.nats_url,
        config: args.config,
        auth: args.connect.auth(),
        replicas: args.replicas as usize,
        approvers: args.approvers,
        approvers_kv: args.approvers_kv,
        metrics_listen: args.ops.metrics_listen,
    };
    moira_service::signals::serve("moira-notifier", |shutdown| {
        moira_notifier::run(settings, shutdown)
    })
    .await
}
