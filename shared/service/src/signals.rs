//! SIGINT/SIGTERM handling shared by moira's long-running processes.

use tokio_util::sync::CancellationToken;

/// The first SIGINT or SIGTERM cancels `shutdown` (a drain) after printing
/// `notice`; a second one exits at once with status 130.
pub fn cancel_on_signals(shutdown: CancellationToken, notice: &'static str) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("cannot listen for SIGTERM: {e}");
                    return;
                }
            };
        for n in 0.. {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
            if n == 0 {
                tracing::info!("{notice}");
                shutdown.cancel();
            } else {
                std::process::exit(130);
            }
        }
    });
}

/// Calls `reload` on each SIGHUP until `shutdown`: how services re-read
/// their config files.
pub fn on_hangup(
    shutdown: CancellationToken,
    reload: impl Fn() + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    // Registered before returning, so a SIGHUP from now on is ours.
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    tokio::spawn(async move {
        let mut hup = match hup {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot listen for SIGHUP: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    reload();
                }
            }
        }
    })
}

/// Logging for a service: `MOIRA_LOG` (default `info`) to stderr, in
/// colour only on a terminal.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MOIRA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // `MOIRA_LOG_FORMAT=json`: one JSON object a line (timestamp, level,
    // target, message and fields, such as gate and run ids), for log
    // shippers. Readable text otherwise.
    if std::env::var("MOIRA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        fmt.json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

/// Sets up logging and signals, runs a service until it stops, and turns
/// its result into the process exit code.
pub async fn serve<F, Fut>(name: &str, run: F) -> std::process::ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    init_tracing();
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone(), "stopping (signal again to exit at once)");
    // SIGHUP means "reload" (`systemctl reload`): from the start it must
    // not end the process, whether or not this service reloads anything.
    on_hangup(shutdown.clone(), || tracing::debug!("SIGHUP"));
    match run(shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
