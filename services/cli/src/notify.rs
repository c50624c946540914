//! `moira notify …`

use clap::Subcommand;

use crate::Cli;

#[derive(Subcommand, Debug)]
pub enum NotifyCmd {
    /// Deliveries that still failed after all their attempts
    Failures {
        #[arg(long)]
        channel: Option<String>,
    },
}

pub async fn run(cli: &Cli, cmd: &NotifyCmd) -> anyhow::Result<u8> {
    let client = cli.connect().await?;
    match cmd {
        NotifyCmd::Failures { channel } => {
            let failures = moira_notifier::failures(&client, channel.as_deref()).await?;
            if cli.json {
                outln!("{}", serde_json::to_string(&failures)?);
            } else if failures.is_empty() {
                errln!("no failed deliveries");
            } else {
                outln!(
                    "{:<24}  {:<14}  {:<12}  {:<8}  ERROR",
                    "AT",
                    "CHANNEL",
                    "KIND",
                    "ATTEMPTS"
                );
                for f in &failures {
                    let target = f
                        .gate_id
                        .map(|g| g.to_string())
                        .or(f.run_id.clone())
                        .unwrap_or_default();
                    outln!(
                        "{:<24}  {:<14}  {:<12}  {:<8}  {} ({target})",
                        f.at,
                        f.channel,
                        f.kind,
                        f.attempts,
                        f.error
                    );
                }
            }
            Ok(0)
        }
    }
}
