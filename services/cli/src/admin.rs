//! `moira admin …`: looking after what moira derives from its events.

use clap::Subcommand;

use moira_service::index::Report;

use crate::Cli;

#[derive(Subcommand, Debug)]
pub enum AdminCmd {
    /// Rebuild the read model (what `gate list` and `run list` read) from
    /// the events: write missing and stale entries, remove orphans. Safe
    /// while gate-keepers and runners run.
    Reindex {
        /// Only compare; exit 1 if anything differs
        #[arg(long)]
        check: bool,
    },
}

pub async fn run(cli: &Cli, cmd: &AdminCmd) -> anyhow::Result<u8> {
    let client = cli.connect().await?;
    match cmd {
        AdminCmd::Reindex { check } => {
            let gates = moira_service::index::reindex_gates(&client, *check).await?;
            let runs = match moira_service::index::reindex_runs(&client, *check).await {
                Ok(r) => Some(r),
                Err(e)
                    if matches!(
                        e.downcast_ref::<moira_client::ClientError>(),
                        Some(moira_client::ClientError::NoRunStreams)
                    ) =>
                {
                    None
                }
                Err(e) => return Err(e),
            };
            let verb = if *check { "differ" } else { "repaired" };
            let orphans = if *check { "orphans" } else { "removed" };
            let line = |what: &str, r: &Report| {
                format!(
                    "{what}: {} checked, {} {verb}, {} {orphans}",
                    r.checked, r.differed, r.orphans
                )
            };
            if cli.json {
                let j = |r: &Report| serde_json::json!({ "checked": r.checked, "differed": r.differed, "orphans": r.orphans });
                outln!(
                    "{}",
                    serde_json::json!({
                        "gates": j(&gates),
                        "runs": runs.as_ref().map(j),
                        "repaired": !*check,
                    })
                );
            } else {
                outln!("{}", line("gates", &gates));
                match &runs {
                    Some(r) => outln!("{}", line("runs", r)),
                    None => outln!("runs: no run streams yet"),
                }
            }
            let clean = |r: &Report| r.differed == 0 && r.orphans == 0;
            let all_clean = clean(&gates) && runs.as_ref().is_none_or(clean);
            Ok(if *check && !all_clean { 1 } else { 0 })
        }
    }
}
