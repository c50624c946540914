//! Child processes whose output is captured line by line, so a test can wait
//! for a line instead of sleeping. Stopped by pid on drop: SIGTERM, then
//! SIGKILL if it has not exited within a few seconds.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound and released at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

#[derive(Default)]
struct Output {
    lines: Vec<String>,
    closed: usize,
}

type Shared = Arc<(Mutex<Output>, Condvar)>;

pub struct ProcBuilder {
    cmd: Command,
    name: String,
    stdin: bool,
    group: bool,
}

impl ProcBuilder {
    pub fn new(program: impl AsRef<Path>, name: &str) -> Self {
        Self {
            cmd: Command::new(program.as_ref()),
            name: name.to_string(),
            stdin: false,
            group: false,
        }
    }
    /// Starts the process in a process group of its own, and stops the
    /// whole group: for a program whose children (a browser a driver
    /// started) must not outlive it.
    pub fn own_group(mut self) -> Self {
        use std::os::unix::process::CommandExt;
        self.cmd.process_group(0);
        self.group = true;
        self
    }
    pub fn arg(mut self, a: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.arg(a);
        self
    }
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(args);
        self
    }
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.cmd.current_dir(dir);
        self
    }
    pub fn env(mut self, k: &str, v: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.env(k, v);
        self
    }
    /// Lets the test type into the process with [`Proc::write_stdin`].
    pub fn stdin_piped(mut self) -> Self {
        self.stdin = true;
        self
    }
    pub fn spawn(mut self) -> std::io::Result<Proc> {
        let stdin = if self.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        self.cmd
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self.cmd.spawn()?;
        let shared: Shared = Arc::default();
        let out = child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
        let err = child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
        for stream in [out, err].into_iter().flatten() {
            let shared = shared.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let (lock, cv) = &*shared;
                    if let Ok(mut o) = lock.lock() {
                        o.lines.push(line);
                    }
                    cv.notify_all();
                }
                let (lock, cv) = &*shared;
                if let Ok(mut o) = lock.lock() {
                    o.closed += 1;
                }
                cv.notify_all();
            });
        }
        Ok(Proc {
            child: Some(child),
            shared,
            name: self.name,
            group: self.group,
        })
    }
}

/// A running child process with captured stdout and stderr.
pub struct Proc {
    child: Option<Child>,
    shared: Shared,
    name: String,
    /// Its pid is also its process group's id ([`ProcBuilder::own_group`]).
    group: bool,
}

impl Proc {
    /// Types `text` into the process's stdin (spawned with `stdin_piped`).
    pub fn write_stdin(&mut self, text: &str) {
        use std::io::Write;
        let stdin = self.child.as_mut().and_then(|c| c.stdin.as_mut());
        let stdin = stdin.unwrap_or_else(|| panic!("{}: stdin is not piped", self.name));
        stdin
            .write_all(text.as_bytes())
            .and_then(|_| stdin.flush())
            .unwrap_or_else(|e| panic!("{}: writing stdin: {e}", self.name));
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Every line printed so far (stdout and stderr interleaved).
    pub fn output(&self) -> Vec<String> {
        self.shared
            .0
            .lock()
            .map(|o| o.lines.clone())
            .unwrap_or_default()
    }

    /// Waits until a printed line contains `needle`, and returns that line.
    /// Panics with the process output if it does not appear in time.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_nth_line(needle, 1, timeout)
    }

    /// Waits until `n` printed lines contain `needle`; returns the n-th.
    pub fn wait_for_nth_line(&self, needle: &str, n: usize, timeout: Duration) -> String {
        self.try_wait_for(&[needle], n, timeout).unwrap_or_else(|| {
            panic!(
                "{}: no line containing {needle:?} (#{n}) within {timeout:?}; output:\n{}",
                self.name,
                self.output().join("\n")
            )
        })
    }

    /// Waits until a printed line satisfies `pred`, and returns it.
    pub fn wait_for_match(
        &self,
        what: &str,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> String {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.shared;
        let mut out = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(line) = out.lines.iter().find(|l| pred(l)) {
                return line.clone();
            }
            let now = Instant::now();
            if now >= deadline || out.closed == 2 {
                panic!(
                    "{}: no line that is {what} within {timeout:?}; output:\n{}",
                    self.name,
                    out.lines.join("\n")
                );
            }
            out = cv
                .wait_timeout(out, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Waits until `n` printed lines contain any of `needles`; `None` if the
    /// time runs out or the process closed its output first.
    pub fn try_wait_for(&self, needles: &[&str], n: usize, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.shared;
        let mut out = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let found = out
                .lines
                .iter()
                .filter(|l| needles.iter().any(|n| l.contains(n)))
                .nth(n.saturating_sub(1));
            if let Some(line) = found {
                return Some(line.clone());
            }
            let now = Instant::now();
            if now >= deadline || out.closed == 2 {
                return None;
            }
            out = cv
                .wait_timeout(out, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Sends SIGTERM and waits for the exit (SIGKILL after `grace`).
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let group = self.group;
        let child = self.child.as_mut()?;
        let target = |pid: u32| {
            if group {
                format!("-{pid}")
            } else {
                pid.to_string()
            }
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg("--")
            .arg(target(child.id()))
            .status();
        let deadline = Instant::now() + grace;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    // Polling try_wait is the portable way to wait with a
                    // bound on a std Child.
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = child.kill();
                    break child.wait().ok();
                }
            }
        };
        if group {
            // Whatever of the group is left.
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg("--")
                .arg(target(child.id()))
                .stderr(Stdio::null())
                .status();
        }
        self.child = None;
        status
    }

    /// Sends a signal by name (`STOP`, `CONT`, …) to the process.
    pub fn signal(&self, name: &str) {
        if let Some(child) = self.child.as_ref() {
            let _ = Command::new("kill")
                .arg(format!("-{name}"))
                .arg(child.id().to_string())
                .status();
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}
