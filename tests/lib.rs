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
    let out = std::process::Command::new(bin("moira"))
        .args(["--nats-url", url])
        .args(args)
        .env_remove("MOIRA_USER")
        .output()
        .unwrap_or_else(|e| panic!("run moira: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
