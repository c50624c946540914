//! `moira run …`

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use futures_util::StreamExt;

use moira_client::protocol::run::{RunStatus, StepStatus};
use moira_client::RunView;

use crate::{usage, Cli};

/// `moira run <subcommand>`, or `moira run FILE --local`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RunArgs {
    #[command(subcommand)]
    pub cmd: Option<RunCmd>,
    /// A workflow file to run in the one-machine stack (needs --local)
    pub file: Option<PathBuf>,
    /// Run FILE here: start the local stack, and ask at this terminal when a gate is reached
    #[arg(long)]
    pub local: bool,
    /// A workflow variable, NAME=VALUE (repeatable)
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = crate::gate::parse_kv)]
    pub vars: Vec<(String, String)>,
    #[command(flatten)]
    pub stack: crate::dev::DevArgs,
}

#[derive(Subcommand, Debug)]
pub enum RunCmd {
    /// Validate and submit a workflow file; prints the run id
    Submit(SubmitArgs),
    /// Show one run and its steps
    Show { id: String },
    /// List runs
    List {
        #[arg(long, value_parser = ["queued", "running", "waiting", "succeeded", "failed", "rejected", "cancelled", "all"], default_value = "all")]
        status: String,
        /// Fold every stored run event instead of reading the read model
        #[arg(long)]
        from_events: bool,
    },
    /// Print step output (all steps, or one)
    Logs {
        id: String,
        #[arg(long)]
        step: Option<String>,
        /// Keep printing new lines (Ctrl-C to stop)
        #[arg(long)]
        follow: bool,
    },
    /// Cancel a run and the gates it waits on
    Cancel { id: String },
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    file: PathBuf,
    /// A workflow variable, NAME=VALUE (repeatable)
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = crate::gate::parse_kv)]
    vars: Vec<(String, String)>,
    /// Wait for the run to end: exit 0 if it succeeded, 1 otherwise
    #[arg(long)]
    wait: bool,
}

pub fn read_workflow(path: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))
}

pub async fn run(cli: &Cli, args: &RunArgs) -> anyhow::Result<u8> {
    let Some(cmd) = &args.cmd else {
        return match (&args.file, args.local) {
            (Some(file), true) => crate::local::run(cli, file, args).await,
            (Some(file), false) => Err(usage(format!(
                "to run {} here add --local; to hand it to runners use `moira run submit {}`",
                file.display(),
                file.display()
            ))),
            (None, _) => Err(usage(
                "name a subcommand (submit, show, list, logs, cancel) or `moira run FILE --local`",
            )),
        };
    };
    let client = cli.connect().await?;
    match cmd {
        RunCmd::Submit(a) => {
            let yaml = read_workflow(&a.file)?;
            let vars: BTreeMap<String, String> = a.vars.iter().cloned().collect();
            let id = client.submit_run(&yaml, &vars, &cli.actor()?).await?;
            outln!("{id}");
            if a.wait {
                errln!("waiting for run {id} (moira run show {id})");
                let done = client.wait_run(&id).await?;
                return finished(cli, &done);
            }
            Ok(0)
        }
        RunCmd::Show { id } => {
            let run = client.show_run(id).await?;
            if cli.json {
                outln!("{}", serde_json::to_string(&run)?);
            } else {
                out!("{}", render(&run));
            }
            Ok(0)
        }
        RunCmd::List {
            status,
            from_events,
        } => {
            let filter = if status == "all" {
                None
            } else {
                RunStatus::parse(status)
            };
            let runs = if *from_events {
                client.list_runs_from_events(filter).await?
            } else {
                client.list_runs(filter).await?
            };
            if cli.json {
                outln!("{}", serde_json::to_string(&runs)?);
            } else if runs.is_empty() {
                errln!("no runs");
            } else {
                outln!("{:<36}  {:<10}  {:<20}  STEPS", "ID", "STATUS", "WORKFLOW");
                for r in &runs {
                    let done = r.steps.iter().filter(|s| s.status.is_done()).count();
                    outln!(
                        "{:<36}  {:<10}  {:<20}  {done}/{}",
                        r.id,
                        r.status.as_str(),
                        r.name,
                        r.steps.len()
                    );
                }
            }
            Ok(0)
        }
        RunCmd::Logs { id, step, follow } => {
            client.show_run(id).await?;
            let mut lines = Box::pin(client.run_logs(id, step.as_deref(), *follow).await?);
            while let Some(line) = lines.next().await {
                let line = line?;
                if cli.json {
                    outln!("{}", serde_json::to_string(&line)?);
                } else if step.is_some() {
                    outln!("{}", line.line);
                } else {
                    outln!("[{}] {}", line.step, line.line);
                }
            }
            Ok(0)
        }
        RunCmd::Cancel { id } => {
            let run = client.cancel_run(id, &cli.actor()?).await?;
            if cli.json {
                outln!("{}", serde_json::to_string(&run)?);
            } else {
                outln!("run {id} cancelled");
            }
            Ok(0)
        }
    }
}

fn finished(cli: &Cli, run: &RunView) -> anyhow::Result<u8> {
    if cli.json {
        outln!("{}", serde_json::to_string(run)?);
    } else {
        err!("{}", render(run));
    }
    Ok(if run.status == RunStatus::Succeeded {
        0
    } else {
        1
    })
}

pub fn render(r: &RunView) -> String {
    let mut out = format!(
        "run {}  {}  ({})\n",
        r.id,
        r.status.as_str().to_uppercase(),
        r.name
    );
    out += &format!("  submitted by {} at {}\n", r.submitted_by, r.submitted_at);
    for s in &r.steps {
        let mut line = format!("  {:<24} {:<10}", s.name, s.status.as_str());
        if let Some(c) = s.exit_code {
            line += &format!(" exit {c}");
        }
        if s.iteration > 1 {
            line += &format!(" iteration {}", s.iteration);
        }
        if let Some(g) = s.gate_id.filter(|_| s.status == StepStatus::Waiting) {
            line += &format!(" gate {g}");
        }
        if let Some(reason) = &s.reason {
            line += &format!(" ({reason})");
        }
        out += line.trim_end();
        out += "\n";
    }
    out
}
