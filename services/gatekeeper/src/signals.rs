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
