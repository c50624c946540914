//! `moira dev`: the whole stack on one machine. Starts a nats-server child
//! with JetStream in a local data folder (unless --nats-url names a running
//! server) and runs a gate-keeper, a runner and a notifier in-process,
//! until Ctrl-C.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::Cli;

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Folder for the broker's data and log
    #[arg(long, default_value = ".moira/dev")]
    pub data: PathBuf,
    /// Port for the nats-server child
    #[arg(long, default_value_t = 4222)]
    pub port: u16,
    /// Approvers registry (TOML) for the gate-keeper
    #[arg(long, env = "MOIRA_APPROVERS")]
    pub approvers: Option<PathBuf>,
    /// Notifier config (TOML); without it notifications go to the log
    #[arg(long, env = "MOIRA_NOTIFY_CONFIG")]
    pub notify_config: Option<PathBuf>,
}

/// `moira dev`: the stack, and the web page and HTTP API beside it.
#[derive(Args, Debug)]
pub struct DevCmd {
    #[command(flatten)]
    pub stack: DevArgs,
    /// Port of the web page and HTTP API (moira-web, `--auth dev`) on
    /// 127.0.0.1; 0 picks a free one
    #[arg(long, default_value_t = 8080)]
    pub web_port: u16,
}

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running one-machine stack: the broker child (unless an external
/// server is used), a gate-keeper and a runner in-process.
pub struct LocalStack {
    pub url: String,
    pub shutdown: CancellationToken,
    broker: Option<Child>,
    gatekeeper: Task,
    runner: Task,
    notifier: Task,
}

/// An in-process service; `None` once it has been seen to end.
type Task = Option<tokio::task::JoinHandle<anyhow::Result<()>>>;

/// Why a service ended, from its task's result.
fn ended(what: &str, r: Result<anyhow::Result<()>, tokio::task::JoinError>) -> String {
    match r {
        Ok(Ok(())) => format!("the {what} stopped"),
        Ok(Err(e)) => format!("the {what} stopped: {e:#}"),
        Err(e) => format!("the {what} failed: {e}"),
    }
}

/// Waits for a task that is still there; never, if it is gone.
async fn join(t: &mut Task) -> Result<anyhow::Result<()>, tokio::task::JoinError> {
    match t.as_mut() {
        Some(h) => {
            let r = h.await;
            *t = None;
            r
        }
        None => std::future::pending().await,
    }
}

impl LocalStack {
    /// Starts the stack; `external` is a server to use instead of a child.
    pub async fn start(args: &DevArgs, external: Option<String>) -> anyhow::Result<LocalStack> {
        let shutdown = CancellationToken::new();
        let (url, mut broker) = match external {
            Some(url) => (url, None),
            None => {
                let child = start_broker(args).await?;
                (format!("nats://127.0.0.1:{}", args.port), Some(child))
            }
        };
        let gk_config = moira_gatekeeper::Config {
            nats_url: url.clone(),
            approvers: args.approvers.clone(),
            replicas: 1,
            ..Default::default()
        };
        let gatekeeper = match moira_gatekeeper::start(gk_config).await {
            Ok(gk) => Some(tokio::spawn(gk.serve(shutdown.clone()))),
            Err(e) => {
                stop_broker(&mut broker).await;
                return Err(e.context("the gate-keeper could not start"));
            }
        };
        let runner_config = moira_runner::Config {
            nats_url: url.clone(),
            work_dir: args.data.join("work"),
            approvers: args.approvers.clone(),
            ..Default::default()
        };
        let runner = match moira_runner::start(runner_config).await {
            Ok(r) => Some(tokio::spawn(r.serve(shutdown.clone()))),
            Err(e) => {
                shutdown.cancel();
                stop_broker(&mut broker).await;
                return Err(e.context("the runner could not start"));
            }
        };
        let settings = moira_notifier::Settings {
            nats_url: url.clone(),
            config: args.notify_config.clone(),
            auth: Default::default(),
            replicas: 1,
            approvers: None,
            approvers_kv: false,
            metrics_listen: None,
        };
        let notifier = match moira_notifier::start(settings).await {
            Ok(n) => Some(tokio::spawn(n.serve(shutdown.clone()))),
            Err(e) => {
                shutdown.cancel();
                stop_broker(&mut broker).await;
                return Err(e.context("the notifier could not start"));
            }
        };
        Ok(LocalStack {
            url,
            shutdown,
            broker,
            gatekeeper,
            runner,
            notifier,
        })
    }

    /// Resolves, with the reason, when a part of the stack ends while it
    /// should be running: the broker child or an in-process service.
    pub async fn failure(&mut self) -> String {
        let LocalStack {
            broker,
            gatekeeper,
            runner,
            notifier,
            ..
        } = self;
        let broker_exit = async {
            match broker.as_mut() {
                Some(child) => {
                    let why = match child.wait().await {
                        Ok(status) => format!("nats-server exited ({status})"),
                        Err(e) => format!("nats-server could not be watched: {e}"),
                    };
                    *broker = None;
                    why
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            why = broker_exit => why,
            r = join(gatekeeper) => ended("gate-keeper", r),
            r = join(runner) => ended("runner", r),
            r = join(notifier) => ended("notifier", r),
        }
    }

    /// Stops the services (bounded drains), then the broker.
    pub async fn stop(mut self) -> anyhow::Result<u8> {
        self.shutdown.cancel();
        let result = match self.gatekeeper.take() {
            Some(h) => flatten(h.await),
            None => Ok(0),
        };
        for t in [self.runner.take(), self.notifier.take()]
            .into_iter()
            .flatten()
        {
            let _ = t.await;
        }
        stop_broker(&mut self.broker).await;
        result
    }
}

pub async fn run(cli: &Cli, cmd: &DevCmd) -> anyhow::Result<u8> {
    let args = &cmd.stack;
    // Only an explicit --nats-url means "use that server"; an exported
    // MOIRA_NATS_URL (as the banner suggests) must not stop dev from
    // starting its own broker.
    let external = cli
        .nats_url
        .clone()
        .filter(|_| cli.nats_url_on_command_line);
    let stack = LocalStack::start(args, external).await?;
    let web = moira_web::start(moira_web::Settings {
        nats_url: stack.url.clone(),
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], cmd.web_port)),
        auth: moira_web::AuthMode::Dev,
        user_header: String::new(),
        trusted_proxies: Vec::new(),
        connect: Default::default(),
        approvers: args.approvers.clone(),
        approvers_kv: false,
        slack: None,
        link_secret: None,
        key: None,
        metrics_listen: None,
    })
    .await;
    let web = match web {
        Ok(w) => w,
        Err(e) => {
            let _ = stack.stop().await;
            return Err(
                e.context("the HTTP API could not start (pick another port with --web-port)")
            );
        }
    };
    // One listener for the whole process: every service in it records
    // into the same metrics.
    let ops_addr = match async_nats::connect(stack.url.as_str()).await {
        Ok(nats) => moira_service::ops::serve(
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            "moira-dev",
            nats,
            stack.shutdown.clone(),
        )
        .await
        .ok(),
        Err(_) => None,
    };
    let page_url = format!("http://{}", web.addr());
    let web_url = format!("{page_url}/api/v1");
    let web_task = tokio::spawn(web.serve(stack.shutdown.clone()));
    moira_service::signals::cancel_on_signals(
        stack.shutdown.clone(),
        "stopping moira dev (Ctrl-C again to exit at once)",
    );
    let url = stack.url.clone();
    errln!();
    errln!("moira dev is running. This is a development setup: the broker has no");
    errln!("authentication or TLS, anyone who can reach it may decide any gate, and the");
    errln!("gate-keeper uses the easy defaults. For production see the README's");
    errln!("\"Production setup\" and deploy/README.md.");
    errln!("  NATS:         {url}");
    errln!(
        "  data:         {}",
        if stack.broker.is_some() {
            args.data.display().to_string()
        } else {
            "(external server)".into()
        }
    );
    errln!("  gate-keeper:  in-process");
    errln!(
        "  runner:       in-process (steps run in {})",
        args.data.join("work").display()
    );
    let notify = args.notify_config.as_ref().map(|p| p.display().to_string());
    errln!(
        "  notifier:     in-process ({})",
        notify.unwrap_or_else(|| "everything to the log".into())
    );
    errln!("  web page:     {page_url}/ (pick any name in its banner and decide as it)");
    if let Some(a) = ops_addr {
        errln!("  metrics:      http://{a}/metrics (and /healthz, /readyz)");
    }
    errln!("  HTTP API:     {web_url}/gates (decide as anyone: header X-Moira-User)");
    errln!();
    errln!("In another terminal:");
    errln!("  export MOIRA_NATS_URL={url}");
    errln!("  moira gate open --message 'Deploy?' --wait");
    errln!("  moira run submit examples/release.yml");
    errln!();
    errln!("Press Ctrl-C to stop.");
    outln!("{url}");
    let mut stack = stack;
    let mut web_task = Some(web_task);
    // Supervised: a part that ends while the rest runs stops everything,
    // with the reason, rather than leaving a half-dead stack.
    let shutdown = stack.shutdown.clone();
    let failed = tokio::select! {
        _ = shutdown.cancelled() => None,
        why = stack.failure() => Some(why),
        r = join(&mut web_task) => Some(ended("web service", r)),
    };
    if let Some(why) = &failed {
        errln!("moira dev: {why}; stopping everything");
        stack.shutdown.cancel();
    }
    if let Some(t) = web_task {
        let _ = t.await;
    }
    let result = stack.stop().await;
    errln!("moira dev stopped");
    match failed {
        Some(_) => Ok(1),
        None => result,
    }
}

fn flatten(r: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<u8> {
    match r {
        Ok(Ok(())) => Ok(0),
        Ok(Err(e)) => Err(e.context("the gate-keeper stopped")),
        Err(e) => Err(anyhow::anyhow!("the gate-keeper task failed: {e}")),
    }
}

async fn start_broker(args: &DevArgs) -> anyhow::Result<Child> {
    let bin = moira_service::find_nats_server()?;
    let store = args.data.join("jetstream");
    std::fs::create_dir_all(&store)
        .with_context(|| format!("cannot create {}", store.display()))?;
    let log_path = args.data.join("nats-server.log");
    let mut log = tokio::fs::File::create(&log_path)
        .await
        .with_context(|| format!("cannot write {}", log_path.display()))?;
    let mut child = Command::new(&bin.path)
        .args([
            "-a",
            "127.0.0.1",
            "-p",
            &args.port.to_string(),
            "-js",
            "--server_name",
            "moira-dev",
            "-sd",
        ])
        .arg(&store)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.path.display()))?;
    let stderr = child.stderr.take().context("no stderr from nats-server")?;
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    let wait_ready = async {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = log.write_all(format!("{line}\n").as_bytes()).await;
            let ready = line.contains("Server is ready");
            seen.push(line);
            if ready {
                return true;
            }
        }
        false
    };
    let ready = tokio::time::timeout(START_TIMEOUT, wait_ready)
        .await
        .unwrap_or(false);
    if !ready {
        let _ = child.kill().await;
        let hint = if seen.iter().any(|l| l.contains("address already in use")) {
            format!(
                "port {} is taken; pass --port N, or use that server with --nats-url",
                args.port
            )
        } else {
            format!("see {}", log_path.display())
        };
        anyhow::bail!("nats-server did not start: {hint}\n{}", seen.join("\n"));
    }
    // Keep copying the broker's log to the file.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = log.write_all(format!("{line}\n").as_bytes()).await;
        }
    });
    Ok(child)
}

/// SIGTERM so JetStream shuts down cleanly; SIGKILL if it lingers.
async fn stop_broker(broker: &mut Option<Child>) {
    let Some(child) = broker.as_mut() else { return };
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await;
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}
