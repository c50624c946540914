//! `moira run FILE --local`: runs a workflow and asks at this terminal when
//! a gate is reached. Another terminal can still decide with `moira gate
//! approve`; the question here is then withdrawn.
//!
//! Without `--nats-url` it starts the one-machine dev stack (its own broker,
//! gate-keeper and runner). With `--nats-url` it starts no services of its
//! own: the run goes to the runners on that broker and every answer to its
//! gate-keepers, so their policy and `--signatures require` hold here as on
//! every other path (sign with `--key` or `--agent`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use moira_client::protocol::run::{RunStatus, StepStatus};
use moira_client::{ApproveGate, Client, DenyGate, GateId, GateView, PushBackGate, RunView};

use crate::dev::LocalStack;
use crate::run::{read_bundle, render, RunArgs};
use crate::{render as gate_render, Cli};

pub async fn run(cli: &Cli, file: &Path, args: &RunArgs) -> anyhow::Result<u8> {
    let bundle = read_bundle(file)?;
    let vars: BTreeMap<String, String> = args.vars.iter().cloned().collect();
    moira_workflow::Workflow::parse(&bundle.text, &vars)?;
    let actor = cli.actor()?;
    let external = cli
        .nats_url
        .clone()
        .filter(|_| cli.nats_url_on_command_line);
    if let Some(url) = external {
        let client = cli.connect_to(&url).await?;
        return drive(&client, &url, &bundle, &vars, &actor).await;
    }
    let stack = LocalStack::start(&args.stack, None).await?;
    let result = match cli.connect_to(&stack.url).await {
        Ok(client) => drive(&client, &stack.url, &bundle, &vars, &actor).await,
        Err(e) => Err(e),
    };
    let stopped = stack.stop().await;
    let code = result?;
    stopped?;
    Ok(code)
}

async fn drive(
    client: &Client,
    url: &str,
    bundle: &moira_workflow::bundle::Bundle,
    vars: &BTreeMap<String, String>,
    actor: &str,
) -> anyhow::Result<u8> {
    let run_id = client.submit_bundle(bundle, vars, actor).await?;
    errln!("run {run_id} started (another terminal can decide gates: MOIRA_NATS_URL={url} moira gate approve ID)");

    let mut answers = stdin_lines();
    let mut asked: BTreeSet<(GateId, u32)> = BTreeSet::new();
    let view = drive_run(
        client,
        &run_id,
        actor,
        &mut answers,
        &mut asked,
        String::new(),
    )
    .await?;
    err!("{}", render(&view));
    Ok(if view.status == RunStatus::Succeeded {
        0
    } else {
        1
    })
}

/// Prints a run's step output as it comes (`prefix` names the calling
/// steps of a child run, `staging/`).
async fn print_logs(client: &Client, run_id: &str, prefix: String) -> anyhow::Result<()> {
    let mut logs = Box::pin(client.run_logs(run_id, None, true).await?);
    tokio::spawn(async move {
        while let Some(Ok(l)) = logs.next().await {
            outln!("[{prefix}{}] {}", l.step, l.line);
        }
    });
    Ok(())
}

/// Asks at the terminal for each gate the run waits on, and drives each
/// child run a `call:` step waits on the same way, until the run ends.
fn drive_run<'a>(
    client: &'a Client,
    run_id: &'a str,
    actor: &'a str,
    answers: &'a mut mpsc::Receiver<String>,
    asked: &'a mut BTreeSet<(GateId, u32)>,
    prefix: String,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<RunView>> + 'a>> {
    Box::pin(async move {
        let depth = prefix.matches('/').count();
        print_logs(client, run_id, prefix.clone()).await?;
        let mut driven: BTreeSet<String> = BTreeSet::new();
        loop {
            let view = client
                .wait_run_until(run_id, |r| {
                    r.finished.is_some()
                        || r.steps.values().any(|s| {
                            s.status == StepStatus::Waiting
                                && (s
                                    .gate_id
                                    .is_some_and(|g| !asked.contains(&(g, s.gate_iteration)))
                                    || s.child.as_ref().is_some_and(|c| !driven.contains(c)))
                        })
                })
                .await?;
            if view.status.is_terminal() {
                return Ok(view);
            }
            let rec = client
                .read_run(run_id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("the run vanished"))?;
            for st in rec
                .state
                .steps
                .values()
                .filter(|s| s.status == StepStatus::Waiting)
            {
                if let Some(child) = &st.child {
                    if driven.insert(child.clone())
                        && depth < moira_workflow::bundle::MAX_CALL_DEPTH
                    {
                        errln!("step {} runs the called workflow as run {child}", st.name);
                        let inner = format!("{prefix}{}/", st.name);
                        drive_run(client, child, actor, answers, asked, inner).await?;
                    }
                    continue;
                }
                let Some(gate) = st.gate_id else { continue };
                if asked.insert((gate, st.gate_iteration)) {
                    ask(client, gate, st.in_review, actor, answers).await?;
                }
            }
        }
    })
}

fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).await.is_err() {
                break;
            }
        }
    });
    rx
}

/// Reads one answer, unless the gate is decided elsewhere first.
async fn read(
    client: &Client,
    gate: GateId,
    iteration: u32,
    answers: &mut mpsc::Receiver<String>,
) -> anyhow::Result<Option<String>> {
    let mut f = client.follow(gate).await?;
    tokio::select! {
        line = answers.recv() => match line {
            Some(l) => Ok(Some(l.trim().to_string())),
            // No more input: wait for a decision made elsewhere.
            None => {
                f.wait_until(|g| g.status.is_terminal() || g.iteration > iteration).await?;
                Ok(None)
            }
        },
        g = f.wait_until(|g| g.status.is_terminal() || g.iteration > iteration) => {
            let g = GateView::from(&*g?);
            errln!("\n{}", gate_render::outcome(&g));
            Ok(None)
        }
    }
}

async fn ask(
    client: &Client,
    gate: GateId,
    review: bool,
    actor: &str,
    answers: &mut mpsc::Receiver<String>,
) -> anyhow::Result<()> {
    loop {
        let g = client.show(gate).await?;
        if g.status.is_terminal() {
            return Ok(());
        }
        errln!();
        err!("{}", gate_render::gate(&g));
        let choices = if review {
            "[y]es, [n]o, [p]ush back"
        } else {
            "[y]es, [n]o"
        };
        errln!("Approve? {choices}, or Enter to leave it to another terminal:");
        let Some(answer) = read(client, gate, g.iteration, answers).await? else {
            return Ok(());
        };
        let result = match answer.to_lowercase().as_str() {
            "y" | "yes" => {
                let inputs = collect_inputs(client, &g, answers).await?;
                let Some(inputs) = inputs else { return Ok(()) };
                client
                    .approve(ApproveGate {
                        gate_id: gate,
                        actor: actor.into(),
                        inputs,
                        ..Default::default()
                    })
                    .await
            }
            "n" | "no" => {
                errln!("reason:");
                let Some(reason) = read(client, gate, g.iteration, answers).await? else {
                    return Ok(());
                };
                client
                    .deny(DenyGate {
                        gate_id: gate,
                        actor: actor.into(),
                        reason,
                        ..Default::default()
                    })
                    .await
            }
            "p" | "push" | "push back" if review => {
                let Some(inputs) = collect_inputs(client, &g, answers).await? else {
                    return Ok(());
                };
                client
                    .push_back(PushBackGate {
                        gate_id: gate,
                        actor: actor.into(),
                        inputs,
                        ..Default::default()
                    })
                    .await
            }
            "" => {
                errln!("waiting for a decision from another terminal");
                client
                    .follow(gate)
                    .await?
                    .wait_until(|x| x.status.is_terminal() || x.iteration > g.iteration)
                    .await?;
                return Ok(());
            }
            other => {
                errln!("'{other}' is not one of {choices}");
                continue;
            }
        };
        match result {
            Ok(v) => {
                errln!("{}", gate_render::outcome(&v));
                return Ok(());
            }
            Err(e) => errln!("refused: {e}"),
        }
    }
}

async fn collect_inputs(
    client: &Client,
    g: &GateView,
    answers: &mut mpsc::Receiver<String>,
) -> anyhow::Result<Option<BTreeMap<String, String>>> {
    let mut inputs = BTreeMap::new();
    for name in &g.input_names {
        let required = if g.required_inputs.contains(name) {
            " (required)"
        } else {
            ""
        };
        errln!("{name}{required}:");
        let Some(v) = read(client, g.id, g.iteration, answers).await? else {
            return Ok(None);
        };
        if !v.is_empty() {
            inputs.insert(name.clone(), v);
        }
    }
    Ok(Some(inputs))
}
