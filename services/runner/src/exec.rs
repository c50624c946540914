//! Running one `run:` step: `sh -c` in its own folder, output lines to the
//! run's log subject, `key=value` outputs from `$MOIRA_OUTPUT`, a timeout.
//!
//! A step starts from a clean environment ([`BASE_ENV`], the runner's
//! `--pass-env` names, then what the workflow sets), never the runner's
//! own: a runner may hold broker credentials or other secrets. What a step
//! prints and writes is bounded ([`MAX_LINE`], [`MAX_OUTPUTS`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

use moira_client::Client;

/// Variables a step gets from the runner's environment when they are set.
pub const BASE_ENV: [&str; 8] = [
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ",
];
/// `PATH` for a step when the runner has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// A longer output line is split into pieces of this size.
pub const MAX_LINE: usize = 16 * 1024;
/// Output lines sent to the broker and not yet acknowledged, at most.
const MAX_LOG_IN_FLIGHT: usize = 512;
/// How much of `$MOIRA_OUTPUT` is read.
pub const MAX_OUTPUTS: u64 = 64 * 1024;

pub struct StepRun {
    pub run_id: String,
    pub step: String,
    pub command: String,
    pub env: BTreeMap<String, String>,
    /// Names passed through from the runner's environment (`--pass-env`).
    pub pass_env: Arc<Vec<String>>,
    pub dir: PathBuf,
    pub timeout: Option<Duration>,
    /// Outputs of the previous iteration, written to a file for the re-run.
    pub previous_outputs: Option<BTreeMap<String, String>>,
    pub iteration: u32,
    pub attempt: u32,
    /// Cancelled when the run is cancelled: the step's processes are killed.
    pub cancel: tokio_util::sync::CancellationToken,
}

pub struct StepResult {
    /// The run was cancelled while the step ran.
    pub cancelled: bool,
    pub ok: bool,
    pub exit_code: Option<i32>,
    pub outputs: BTreeMap<String, String>,
    pub reason: Option<String>,
}

fn failed(reason: String) -> StepResult {
    StepResult {
        cancelled: false,
        ok: false,
        exit_code: None,
        outputs: BTreeMap::new(),
        reason: Some(reason),
    }
}

/// Kills the step's whole process group when dropped: after a timeout or a
/// cancel, and after a normal end too (nothing a step started outlives it).
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            crate::supervise::kill_group(pid, crate::supervise::Signal::KILL);
        }
    }
}

/// Forwards a pipe's lines, splitting any longer than [`MAX_LINE`]. The
/// channel is bounded, so a step that prints faster than the broker takes
/// it waits on its pipe instead of filling the runner's memory.
fn spawn_lines<R>(
    name: &'static str,
    reader: R,
    tx: tokio::sync::mpsc::Sender<(&'static str, String)>,
) where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut reader = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let mut limited = (&mut reader).take(MAX_LINE as u64);
            match limited.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if buf.last() == Some(&b'\n') {
                buf.pop();
            }
            let line = String::from_utf8_lossy(&buf).into_owned();
            if tx.send((name, line)).await.is_err() {
                break;
            }
        }
    });
}

/// Makes a folder (and its parents) that only this user can enter.
pub async fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let mut b = tokio::fs::DirBuilder::new();
    b.recursive(true).mode(0o700);
    b.create(dir).await
}

/// Writes a new file with mode 0600 that was not there before: a file or a
/// symlink already at `path` is removed first (not followed), and the
/// create is exclusive, so the write cannot be redirected elsewhere.
async fn write_new(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    match tokio::fs::remove_file(path).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await?;
    tokio::io::AsyncWriteExt::write_all(&mut f, text.as_bytes()).await?;
    // tokio writes in the background: without a flush the step could start
    // before the bytes reach the file.
    tokio::io::AsyncWriteExt::flush(&mut f).await
}

/// Reads at most [`MAX_OUTPUTS`] bytes of the step's output file.
async fn read_outputs(path: &std::path::Path) -> BTreeMap<String, String> {
    let Ok(f) = tokio::fs::File::open(path).await else {
        return BTreeMap::new();
    };
    let mut text = Vec::new();
    let _ = f.take(MAX_OUTPUTS).read_to_end(&mut text).await;
    parse_outputs(&String::from_utf8_lossy(&text))
}

pub fn parse_outputs(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !k.trim().is_empty())
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .collect()
}

pub async fn run(client: &Client, s: StepRun) -> StepResult {
    let dir = s.dir.join(format!("{}-{}", s.iteration, s.attempt));
    if let Err(e) = private_dir(&dir).await {
        return failed(format!(
            "cannot create the step folder {}: {e}",
            dir.display()
        ));
    }
    let output_file = dir.join("moira-output");
    // The step runs under a supervisor (this binary again) that takes it
    // down if the runner dies; see `supervise`.
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(crate::supervise::SUPERVISE_ARG)
        .arg(&s.command)
        .current_dir(&dir)
        .env_clear();
    for name in BASE_ENV
        .iter()
        .copied()
        .chain(s.pass_env.iter().map(String::as_str))
    {
        if let Some(v) = std::env::var_os(name) {
            cmd.env(name, v);
        }
    }
    if std::env::var_os("PATH").is_none() {
        cmd.env("PATH", DEFAULT_PATH);
    }
    cmd.env("TMPDIR", &dir)
        .envs(&s.env)
        .env("MOIRA_OUTPUT", &output_file)
        .env("MOIRA_RUN_ID", &s.run_id)
        .env("MOIRA_STEP", &s.step)
        .env("MOIRA_ITERATION", s.iteration.to_string())
        .env("MOIRA_ATTEMPT", s.attempt.to_string())
        // The supervisor's stdin is its lifeline to this runner.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout or a cancel reaches whatever
        // the step started, not only the supervisor and `sh`.
        .process_group(0)
        .kill_on_drop(true);
    if let Some(prev) = &s.previous_outputs {
        let path = dir.join("moira-previous-output");
        let text: String = prev.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        if let Err(e) = write_new(&path, &text).await {
            return failed(format!("cannot write {}: {e}", path.display()));
        }
        cmd.env("MOIRA_PREVIOUS_OUTPUT", &path);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot start sh: {e}")),
    };
    let _group = GroupGuard(child.id());
    // Held until the step is over: closing it tells the supervisor the
    // runner is gone.
    let _lifeline = child.stdin.take();
    // Both pipes feed one channel; lines are published in arrival order.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(&'static str, String)>(256);
    if let Some(out) = child.stdout.take() {
        spawn_lines("stdout", out, tx.clone());
    }
    if let Some(err) = child.stderr.take() {
        spawn_lines("stderr", err, tx.clone());
    }
    drop(tx);
    // Acks are awaited as they come, at most MAX_LOG_IN_FLIGHT at a time,
    // so a step that prints without end costs bounded memory.
    let mut not_stored = 0u64;
    let forward = async {
        let mut acks = FuturesUnordered::new();
        while let Some((stream, line)) = rx.recv().await {
            while acks.len() >= MAX_LOG_IN_FLIGHT {
                if let Some(Err(_)) = acks.next().await {
                    not_stored += 1;
                }
            }
            match client
                .publish_log(&s.run_id, &s.step, stream, Bytes::from(line))
                .await
            {
                Ok(ack) => acks.push(std::future::IntoFuture::into_future(ack)),
                Err(_) => not_stored += 1,
            }
        }
        acks
    };
    let waited = async {
        let acks = forward.await;
        (acks, child.wait().await)
    };
    let limited = async {
        match s.timeout {
            Some(t) => tokio::time::timeout(t, waited).await.map_err(|_| {
                format!(
                    "timed out after {}",
                    moira_protocol::time::short_duration(t)
                )
            }),
            None => Ok(waited.await),
        }
    };
    let (mut acks, status) = tokio::select! {
        r = limited => match r {
            Ok(r) => r,
            Err(reason) => return failed(reason),
        },
        _ = s.cancel.cancelled() => {
            return StepResult { cancelled: true, ..failed("cancelled with its run".to_string()) };
        }
    };
    while let Some(r) = acks.next().await {
        if r.is_err() {
            not_stored += 1;
        }
    }
    if not_stored > 0 {
        tracing::warn!(
            run_id = s.run_id,
            step = s.step,
            "{not_stored} lines of the step's output were not stored (a step's log keeps its first {} lines)",
            moira_client::streams::RUN_MESSAGES_PER_SUBJECT
        );
    }
    let status = match status {
        Ok(st) => st,
        Err(e) => return failed(format!("waiting for the step failed: {e}")),
    };
    let outputs = read_outputs(&output_file).await;
    let code = status.code();
    StepResult {
        cancelled: false,
        ok: status.success(),
        exit_code: code,
        outputs,
        reason: if status.success() {
            None
        } else {
            Some(match code {
                Some(c) => format!("exited with {c}"),
                None => "killed by a signal".to_string(),
            })
        },
    }
}

#[cfg(test)]
mod tests {
    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("moira-exec-{name}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    #[tokio::test]
    async fn a_planted_symlink_is_replaced_not_followed() {
        let d = scratch("symlink");
        let victim = d.join("victim");
        std::fs::write(&victim, "keep me").expect("write");
        let path = d.join("moira-previous-output");
        std::os::unix::fs::symlink(&victim, &path).expect("symlink");
        super::write_new(&path, "a=1\n").await.expect("write_new");
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "keep me");
        let meta = std::fs::symlink_metadata(&path).expect("meta");
        assert!(meta.file_type().is_file());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "a=1\n");
        std::fs::remove_dir_all(&d).ok();
    }

    #[tokio::test]
    async fn the_work_dir_is_private_and_never_a_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let d = scratch("workdir");
        let work = d.join("work");
        crate::check_work_dir(&work).await.expect("created");
        let mode = std::fs::metadata(&work).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        crate::check_work_dir(&work).await.expect("narrowed");
        let mode = std::fs::metadata(&work).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "an open folder of ours is narrowed");
        let link = d.join("link");
        std::os::unix::fs::symlink(&work, &link).expect("symlink");
        let e = crate::check_work_dir(&link)
            .await
            .expect_err("a symlink is refused");
        assert!(e.to_string().contains("symlink"), "{e}");
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn outputs() {
        let o = super::parse_outputs("a=1\nb=x=y\n\nnoequals\n=v\n");
        assert_eq!(o.get("a").map(String::as_str), Some("1"));
        assert_eq!(o.get("b").map(String::as_str), Some("x=y"));
        assert_eq!(o.len(), 2);
    }
}
