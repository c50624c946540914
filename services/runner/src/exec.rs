//! Running one `run:` step: `sh -c` in its own folder, output lines to the
//! run's log subject, `key=value` outputs from `$MOIRA_OUTPUT`, a timeout.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use moira_client::Client;

pub struct StepRun {
    pub run_id: String,
    pub step: String,
    pub command: String,
    pub env: BTreeMap<String, String>,
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
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn spawn_lines<R>(
    name: &'static str,
    reader: R,
    tx: tokio::sync::mpsc::UnboundedSender<(&'static str, String)>,
) where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send((name, line)).is_err() {
                break;
            }
        }
    });
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
    if let Err(e) = tokio::fs::create_dir_all(&dir).await {
        return failed(format!(
            "cannot create the step folder {}: {e}",
            dir.display()
        ));
    }
    let output_file = dir.join("moira-output");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(&s.command)
        .current_dir(&dir)
        .envs(&s.env)
        .env("MOIRA_OUTPUT", &output_file)
        .env("MOIRA_RUN_ID", &s.run_id)
        .env("MOIRA_STEP", &s.step)
        .env("MOIRA_ITERATION", s.iteration.to_string())
        .env("MOIRA_ATTEMPT", s.attempt.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout or a cancel reaches whatever
        // the step started, not only `sh`.
        .process_group(0)
        .kill_on_drop(true);
    if let Some(prev) = &s.previous_outputs {
        let path = dir.join("moira-previous-output");
        let text: String = prev.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        if let Err(e) = tokio::fs::write(&path, text).await {
            return failed(format!("cannot write {}: {e}", path.display()));
        }
        cmd.env("MOIRA_PREVIOUS_OUTPUT", &path);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot start sh: {e}")),
    };
    let _group = GroupGuard(child.id());
    // Both pipes feed one channel; lines are published in arrival order.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(&'static str, String)>();
    if let Some(out) = child.stdout.take() {
        spawn_lines("stdout", out, tx.clone());
    }
    if let Some(err) = child.stderr.take() {
        spawn_lines("stderr", err, tx.clone());
    }
    drop(tx);
    let forward = async {
        let acks = FuturesUnordered::new();
        while let Some((stream, line)) = rx.recv().await {
            if let Ok(ack) = client
                .publish_log(&s.run_id, &s.step, stream, Bytes::from(line))
                .await
            {
                acks.push(std::future::IntoFuture::into_future(ack));
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
    while acks.next().await.is_some() {}
    let status = match status {
        Ok(st) => st,
        Err(e) => return failed(format!("waiting for the step failed: {e}")),
    };
    let outputs = tokio::fs::read_to_string(&output_file)
        .await
        .map(|t| parse_outputs(&t))
        .unwrap_or_default();
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
    #[test]
    fn outputs() {
        let o = super::parse_outputs("a=1\nb=x=y\n\nnoequals\n=v\n");
        assert_eq!(o.get("a").map(String::as_str), Some("1"));
        assert_eq!(o.get("b").map(String::as_str), Some("x=y"));
        assert_eq!(o.len(), 2);
    }
}
