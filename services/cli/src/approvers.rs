//! `moira approvers apply FILE` and `moira approvers show`: the registry
//! shared through the `MOIRA_REGISTRY` KV bucket, signed by an admin.

use std::path::PathBuf;

use moira_service::live::{self, SignedRegistry};

use crate::Cli;

#[derive(clap::Subcommand, Debug)]
pub enum ApproversCmd {
    /// Write FILE (TOML) as the shared registry, signed with your key
    /// (--key or --agent) as an admin of the registry in force (of FILE
    /// itself the first time)
    Apply { file: PathBuf },
    /// Print the registry in force, who signed it and its revision
    Show,
}

pub async fn run(cli: &Cli, cmd: &ApproversCmd) -> anyhow::Result<u8> {
    let client = cli.connect().await?;
    match cmd {
        ApproversCmd::Apply { file } => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let signer = cli.signer()?.ok_or_else(|| {
                anyhow::anyhow!("a registry update is signed: pass --key FILE or --agent")
            })?;
            let actor = cli.actor()?;
            let signed = SignedRegistry::sign(&text, &actor, &signer)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let rev = live::apply(&client, &signed).await?;
            errln!("registry written as revision {rev}, signed by {actor}");
            Ok(0)
        }
        ApproversCmd::Show => match live::show(&client).await? {
            Some((s, rev)) => {
                if cli.json {
                    outln!(
                        "{}",
                        serde_json::json!({"revision": rev, "signer": s.signer, "toml": s.toml})
                    );
                } else {
                    errln!("revision {rev}, signed by {}", s.signer);
                    out!("{}", s.toml);
                }
                Ok(0)
            }
            None => {
                errln!(
                    "no valid registry in {}; write one with `moira approvers apply FILE`",
                    live::BUCKET
                );
                Ok(1)
            }
        },
    }
}
