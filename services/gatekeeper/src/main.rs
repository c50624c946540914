//! `moira-gatekeeper`: see the crate docs of `moira_gatekeeper`.

use std::path::PathBuf;

use clap::Parser;

/// Answers moira gate commands (open, approve, deny, push-back, cancel).
#[derive(Parser, Debug)]
#[command(name = "moira-gatekeeper", version)]
struct Args {
    /// NATS server URL (several may be given, comma-separated).
    #[arg(long, env = "MOIRA_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Replicas for the gate stream when this gate-keeper creates it.
    #[arg(long, env = "MOIRA_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    replicas: u8,
    /// Production rules: every gate names its approvers, no self-approval
    /// unless a gate allows it, and `on_timeout: approve` needs a timeout
    /// of 15 minutes or more and the `auto-approver` role.
    #[arg(long, env = "MOIRA_STRICT")]
    strict: bool,
    /// `require`: every command must be signed with a key the approvers
    /// registry lists for its actor (production); `off`: dev and demo.
    #[arg(long, env = "MOIRA_SIGNATURES", value_enum, default_value = "off")]
    signatures: moira_gatekeeper::handler::Signatures,
    /// The SSH key this gate-keeper signs the timeouts it prepares with;
    /// the registry lists it under [services.<name>]. Needed with
    /// `--signatures require`
    #[arg(long, env = "MOIRA_KEY")]
    key: Option<PathBuf>,
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
    let config = moira_gatekeeper::Config {
        nats_url: args.nats_url,
        approvers: args.registry.approvers,
        replicas: args.replicas as usize,
        policy: if args.strict {
            moira_protocol::gate::Policy::strict()
        } else {
            moira_protocol::gate::Policy::dev()
        },
        auth: args.connect.auth(),
        signatures: args.signatures,
        approvers_kv: args.registry.approvers_kv,
        key: args.key,
        metrics_listen: args.ops.metrics_listen,
    };
    moira_service::signals::serve("moira-gatekeeper", |shutdown| {
        moira_gatekeeper::run(config, shutdown)
    })
    .await
}
