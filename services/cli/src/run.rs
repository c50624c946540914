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

/// The workflow file and every file its `call:` steps name, read from
/// beside it.
pub fn read_bundle(path: &std::path::Path) -> anyhow::Result<moira_workflow::bundle::Bundle> {
    moira_workflow::bundle::load(path).map_err(usage)
}

/// How deep `run show` and `run logs` follow child runs.
const TREE_DEPTH: usize = moira_workflow::bundle::MAX_CALL_DEPTH + 1;

/// `run`, and under each `call:` step its child run, indented.
async fn render_tree(client: &moira_client::Client, run: &RunView) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut todo = vec![(0usize, run.clone())];
    while let Some((depth, r)) = todo.pop() {
        let pad = "    ".repeat(depth);
        for line in render(&r).lines() {
            out += &format!("{pad}{line}\n");
        }
        if depth + 1 >= TREE_DEPTH {
            continue;
        }
        // Children in step order: pushed in reverse, popped in order.
        for s in r.steps.iter().rev() {
            if let Some(child) = &s.child {
                match client.show_run(child).await {
                    Ok(c) => todo.push((depth + 1, c)),
                    Err(e) => out += &format!("{pad}    (child run {child}: {e})\n"),
                }
            }
        }
    }
    Ok(out)
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
            let bundle = read_bundle(&a.file)?;
            let vars: BTreeMap<String, String> = a.vars.iter().cloned().collect();
            let id = client.submit_bundle(&bundle, &vars, &cli.actor()?).await?;
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
                out!("{}", render_tree(&client, &run).await?);
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
            let run = client.show_run(id).await?;
            // A call step's output is its child run's: every step of it.
            let child = step
                .as_deref()
                .and_then(|s| run.steps.iter().find(|v| v.name == s))
                .and_then(|v| v.child.clone());
            if let (Some(child), Some(step)) = (child, step) {
                let mut lines = Box::pin(client.run_logs(&child, None, *follow).await?);
                while let Some(line) = lines.next().await {
                    let line = line?;
                    if cli.json {
                        outln!("{}", serde_json::to_string(&line)?);
                    } else {
                        outln!("[{step}/{}] {}", line.step, line.line);
                    }
                }
                return Ok(0);
            }
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
    if let Some(p) = &r.parent {
        out += &format!("  called by run {}, step {}\n", p.run_id, p.step);
    }
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
        if let Some(c) = &s.child {
            line += &format!(" run {c}");
        }
        if let Some(reason) = &s.reason {
            line += &format!(" ({reason})");
        }
        out += line.trim_end();
        out += "\n";
    }
    out
}
