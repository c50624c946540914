//! `moira`: the command-line tool for people and scripts.
//!
//! Exit codes: 0 success; 1 any error; 2 a usage error. `gate wait` and
//! `gate open --wait` end with 0 approved, 3 denied, 4 timed out,
//! 5 cancelled.

#![forbid(unsafe_code)]

#[macro_use]
mod term;

mod admin;
mod approvers;
mod dev;
mod gate;
mod keys;
mod local;
mod notify;
mod render;
mod run;

use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

#[derive(Parser, Debug)]
#[command(
    name = "moira",
    version,
    about = "Approval gates for pipelines, over NATS JetStream"
)]
pub struct Cli {
    /// NATS server URL [env: MOIRA_NATS_URL] [default: nats://127.0.0.1:4222]
    #[arg(long, global = true, env = "MOIRA_NATS_URL", hide_env = true)]
    pub nats_url: Option<String>,
    /// Act as this user [env: MOIRA_USER] [default: the OS user]
    #[arg(
        long = "as",
        global = true,
        env = "MOIRA_USER",
        hide_env = true,
        value_name = "USER"
    )]
    pub actor: Option<String>,
    /// Print JSON instead of text
    #[arg(long, global = true)]
    pub json: bool,
    #[command(flatten)]
    pub connect: moira_service::ConnectArgs,
    /// Sign gate commands with this SSH key: a private key file, or a
    /// public key (.pub) whose private half is held by ssh-agent [env: MOIRA_KEY]
    #[arg(
        long,
        global = true,
        env = "MOIRA_KEY",
        hide_env = true,
        value_name = "FILE"
    )]
    pub key: Option<std::path::PathBuf>,
    /// Sign gate commands with the first Ed25519 or ECDSA P-256 key of the
    /// running ssh-agent (SSH_AUTH_SOCK)
    #[arg(long, global = true, conflicts_with = "key")]
    pub agent: bool,
    #[command(subcommand)]
    pub command: Top,
    /// Whether --nats-url was typed on the command line (not from the env).
    #[arg(skip)]
    pub nats_url_on_command_line: bool,
}

#[derive(Subcommand, Debug)]
pub enum Top {
    /// Open, decide, list and watch gates
    #[command(subcommand)]
    Gate(gate::GateCmd),
    /// Submit, show, list, follow and cancel workflow runs
    Run(run::RunArgs),
    /// Notification deliveries
    #[command(subcommand)]
    Notify(notify::NotifyCmd),
    /// Run a one-machine stack: a nats-server child, a gate-keeper, a runner and a notifier
    Dev(dev::DevCmd),
    /// The approvers registry shared by every gate-keeper and runner
    #[command(subcommand)]
    Approvers(approvers::ApproversCmd),
    /// Verify gates' trails and export signed decisions for ssh-keygen
    #[command(subcommand)]
    Audit(gate::AuditCmd),
    /// Make NKeys for users of the locked-down broker
    #[command(subcommand)]
    Nkey(keys::NkeyCmd),
    /// Look after moira's derived data
    #[command(subcommand)]
    Admin(admin::AdminCmd),
}

impl Cli {
    /// Connects with the URL, credentials and TLS settings given, signing
    /// gate commands when a key or the agent was named.
    pub async fn connect(&self) -> anyhow::Result<moira_client::Client> {
        self.connect_to(&self.url()).await
    }

    /// Like [`Cli::connect`], to another broker URL.
    pub async fn connect_to(&self, url: &str) -> anyhow::Result<moira_client::Client> {
        let signer = self.signer()?;
        let client = moira_client::Client::connect_with(url, "moira", &self.connect.auth()).await?;
        Ok(match signer {
            Some(s) => client.with_signer(s),
            None => client,
        })
    }

    /// The signer named by --key or --agent.
    pub fn signer(&self) -> anyhow::Result<Option<moira_client::signing::Signer>> {
        use moira_client::signing::Signer;
        Ok(match (&self.key, self.agent) {
            (Some(path), _) => Some(Signer::from_file(path)?),
            (None, true) => Some(Signer::agent()?),
            (None, false) => None,
        })
    }

    pub fn url(&self) -> String {
        self.nats_url
            .clone()
            .unwrap_or_else(|| DEFAULT_URL.to_string())
    }

    /// The acting user: --as, MOIRA_USER, then the OS user.
    pub fn actor(&self) -> anyhow::Result<String> {
        if let Some(a) = self.actor.as_ref().filter(|a| !a.trim().is_empty()) {
            return Ok(a.clone());
        }
        for var in ["USER", "LOGNAME", "USERNAME"] {
            if let Ok(u) = std::env::var(var) {
                if !u.trim().is_empty() {
                    return Ok(u);
                }
            }
        }
        if let Some(name) = os_user() {
            return Ok(name);
        }
        anyhow::bail!("cannot tell who you are; pass --as USER or set MOIRA_USER")
    }
}

/// The name of this process's user from /etc/passwd, for environments
/// (CI, containers) that do not set $USER.
fn os_user() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)? == uid).then(|| name.to_string())
    })
}

/// What a person at the terminal can do about an error; the libraries say
/// what went wrong, and only the CLI knows its own flags.
fn hint(e: &moira_client::ClientError) -> Option<&'static str> {
    use moira_client::{ClientError, ErrorCode};
    match e {
        ClientError::NotFound(_) => Some("list gates with `moira gate list --status all`"),
        ClientError::RunNotFound(_) => Some("list runs with `moira run list`"),
        ClientError::Rejected(c) => match c.code {
            ErrorCode::MissingInput => Some("give each with --input NAME=VALUE"),
            ErrorCode::NotFound => Some("list gates with `moira gate list --status all`"),
            ErrorCode::OutOfOrder => {
                Some("`moira gate show ID` shows each stage and who may approve now")
            }
            _ => None,
        },
        _ => None,
    }
}

/// An error with a chosen exit code (usage errors found after parsing).
#[derive(Debug)]
pub struct Exit(pub u8, pub String);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}
impl std::error::Error for Exit {}

pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    Exit(2, msg.into()).into()
}

fn main() -> ExitCode {
    // `moira dev` runs steps: their supervisor is this binary again.
    moira_runner::supervise::run_if_asked();
    let matches = Cli::command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    cli.nats_url_on_command_line =
        matches.value_source("nats_url") == Some(ValueSource::CommandLine);
    let filter = tracing_subscriber::EnvFilter::try_from_env("MOIRA_LOG").unwrap_or_else(|_| {
        // `moira dev` shows the services' logs; other commands stay quiet.
        let default = if matches!(cli.command, Top::Dev(_)) {
            "info"
        } else {
            "warn"
        };
        tracing_subscriber::EnvFilter::new(default)
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            errln!("moira: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A CI job's trace context (W3C `TRACEPARENT`) goes with the commands.
    let traceparent = std::env::var("TRACEPARENT").ok();
    let result = runtime.block_on(moira_client::trace::scope(traceparent, async {
        match &cli.command {
            Top::Gate(cmd) => gate::run(&cli, cmd).await,
            Top::Run(cmd) => run::run(&cli, cmd).await,
            Top::Notify(cmd) => notify::run(&cli, cmd).await,
            Top::Dev(args) => dev::run(&cli, args).await,
            Top::Nkey(cmd) => keys::run(cmd),
            Top::Audit(cmd) => gate::audit(&cli, cmd).await,
            Top::Approvers(cmd) => approvers::run(&cli, cmd).await,
            Top::Admin(cmd) => admin::run(&cli, cmd).await,
        }
    }));
    // A read of stdin (`run --local`) sits on a blocking thread that would
    // keep the runtime alive; nothing else is left to wait for here.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if let Some(Exit(code, msg)) = e.downcast_ref::<Exit>() {
                errln!("moira: {msg}");
                return ExitCode::from(*code);
            }
            errln!("moira: {e:#}");
            if let Some(h) = e.downcast_ref::<moira_client::ClientError>().and_then(hint) {
                errln!("  {h}");
            }
            ExitCode::FAILURE
        }
    }
}
