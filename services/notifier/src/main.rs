//! `moira-notifier`: see the crate docs of `moira_notifier`.

use std::path::PathBuf;

use clap::Parser;
use tokio_util::sync::CancellationToken;

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
    /// Folder for this notifier's delivery record.
    #[arg(long, env = "MOIRA_NOTIFY_DATA", default_value = ".moira/notifier")]
    data: PathBuf,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("MOIRA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let shutdown = CancellationToken::new();
    moira_gatekeeper::signals::cancel_on_signals(
        shutdown.clone(),
        "stopping (signal again to exit at once)",
    );
    let settings = moira_notifier::Settings {
        nats_url: args.nats_url,
        config: args.config,
        data_dir: args.data,
    };
    match moira_notifier::run(settings, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moira-notifier: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
