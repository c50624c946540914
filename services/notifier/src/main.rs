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
    #[command(flatten)]
    registry: moira_service::live::RegistryArgs,
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
        approvers: args.registry.approvers,
        approvers_kv: args.registry.approvers_kv,
        metrics_listen: args.ops.metrics_listen,
    };
    moira_service::signals::serve("moira-notifier", |shutdown| {
        moira_notifier::run(settings, shutdown)
    })
    .await
}
