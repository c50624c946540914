//! `moira-runner`: see the crate docs of `moira_runner`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Runs moira workflow runs from the shared job queue.
#[derive(Parser, Debug)]
#[command(name = "moira-runner", version)]
struct Args {
    /// NATS server URL (several may be given, comma-separated).
    #[arg(long, env = "MOIRA_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Runs advanced at once.
    #[arg(long, env = "MOIRA_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Folder where steps run (default: $STATE_DIRECTORY/work, or
    /// $TMPDIR/moira-runner-<uid>); kept private to this user.
    #[arg(long, env = "MOIRA_WORK_DIR")]
    work_dir: Option<PathBuf>,
    /// An environment variable of the runner's that steps also get
    /// (repeat, or comma-separate in the env var).
    #[arg(long = "pass-env", env = "MOIRA_PASS_ENV", value_delimiter = ',')]
    pass_env: Vec<String>,
    /// Keep each run's folder after the run ends.
    #[arg(long, env = "MOIRA_KEEP_WORK_FILES")]
    keep_work_files: bool,
    /// How long a job may go unacknowledged before another runner takes it
    /// over (used when the shared consumer is first created).
    #[arg(long, env = "MOIRA_ACK_WAIT", default_value = "30s", value_parser = parse_dur)]
    ack_wait: Duration,
    /// Replicas for streams this runner creates.
    #[arg(long, env = "MOIRA_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    replicas: u8,
    /// `require`: act on a gate decision only if the gate's trail verifies
    /// against the registry (hash chain, signatures, keys, policy)
    #[arg(long, env = "MOIRA_SIGNATURES", value_enum, default_value = "off")]
    signatures: moira_service::verify::Signatures,
    /// The SSH key this runner signs its gate opens and cancels with; the
    /// registry lists it under [services.<name>]
    #[arg(long, env = "MOIRA_KEY")]
    key: Option<PathBuf>,
    #[command(flatten)]
    registry: moira_service::live::RegistryArgs,
    #[command(flatten)]
    connect: moira_service::ConnectArgs,
    #[command(flatten)]
    ops: moira_service::ops::OpsArgs,
}

fn parse_dur(s: &str) -> Result<Duration, String> {
    moira_protocol::time::parse_duration(s)
}

fn main() -> std::process::ExitCode {
    // A step's supervisor is this binary again (before any runtime starts).
    moira_runner::supervise::run_if_asked();
    serve()
}

#[tokio::main]
async fn serve() -> std::process::ExitCode {
    let args = Args::parse();
    let config = moira_runner::Config {
        nats_url: args.nats_url,
        concurrency: args.concurrency as usize,
        work_dir: args.work_dir.unwrap_or_else(moira_runner::default_work_dir),
        ack_wait: args.ack_wait,
        replicas: args.replicas as usize,
        pass_env: args.pass_env,
        keep_work_files: args.keep_work_files,
        auth: args.connect.auth(),
        approvers: args.registry.approvers,
        signatures: args.signatures,
        approvers_kv: args.registry.approvers_kv,
        key: args.key,
        metrics_listen: args.ops.metrics_listen,
    };
    moira_service::signals::serve("moira-runner", |shutdown| {
        moira_runner::run(config, shutdown)
    })
    .await
}
