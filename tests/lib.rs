//! Helpers for moira's end-to-end tests: start real nats-servers (through
//! the testkit), real `moira-gatekeeper` processes, and run the `moira` CLI.

use std::path::PathBuf;
use std::time::Duration;

pub use moira_testkit::{Cluster, NatsServer, Proc, ProcBuilder};

/// The folder cargo put this workspace's binaries in.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    // target/debug/deps/e2e-<hash> -> target/debug
    exe.parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("odd test path {exe:?}"))
}

/// Path to one of moira's binaries, with a clear panic if it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{p:?} is missing: build it first with `cargo build --workspace --bins` (`just test` does)"
    );
    p
}

/// Starts a gate-keeper process and waits until it answers commands.
pub fn gatekeeper(url: &str, extra: &[&str]) -> Proc {
    let p = ProcBuilder::new(bin("moira-gatekeeper"), "moira-gatekeeper")
        .args(["--nats-url", url])
        .args(extra)
        .env("MOIRA_LOG", "info")
        .spawn()
        .unwrap_or_else(|e| panic!("spawn moira-gatekeeper: {e}"));
    p.wait_for_line("moira-gatekeeper ready", Duration::from_secs(20));
    p
}

/// Runs the CLI to completion and returns (exit code, stdout, stderr).
pub fn moira(url: &str, args: &[&str]) -> (i32, String, String) {
    moira_env(url, args, &[])
}

/// [`moira`] with extra environment variables (credentials, say).
pub fn moira_env(url: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(bin("moira"));
    cmd.args(["--nats-url", url])
        .args(args)
        .env_remove("MOIRA_USER");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("run moira: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A loopback TCP proxy in front of a nats-server, so a test can cut one
/// client's connection (and refuse reconnects) while the server stays up.
pub struct Proxy {
    pub port: u16,
    enabled: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target_port: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind proxy: {e}"));
        let port = listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("proxy addr: {e}"));
        let (tx, _) = tokio::sync::watch::channel(true);
        let enabled = std::sync::Arc::new(tx);
        let en = enabled.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !*en.borrow() {
                    drop(inbound);
                    continue;
                }
                let mut rx = en.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.wait_for(|on| !on) => {}
                    }
                });
            }
        });
        Proxy {
            port,
            enabled,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Cuts every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.enabled.send_replace(false);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.enabled.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Retries `f` while no gate-keeper is subscribed yet (after a restart),
/// up to `timeout`.
pub async fn retry_until_served<T, F, Fut>(
    timeout: Duration,
    mut f: F,
) -> Result<T, moira_client::ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, moira_client::ClientError>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match f().await {
            Err(
                moira_client::ClientError::NoGatekeeper { .. } | moira_client::ClientError::Nats(_),
            ) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => return other,
        }
    }
}
