//! A step's supervising parent: nothing a step starts outlives its runner.
//!
//! The runner starts each step as `/proc/self/exe __moira-step-supervisor
//! CMD` in a new process group, holding the write end of the supervisor's
//! stdin. The supervisor runs `sh -c CMD` in that same group and blocks on
//! reading its stdin. However the runner ends (an exit, a panic, SIGKILL),
//! the kernel closes that pipe; the read returns and the supervisor kills
//! the whole group (the step, everything it started, and itself). While the
//! runner lives, it kills the group itself after a timeout, a cancel or the
//! step's end.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use rustix::process::Pid;
pub use rustix::process::Signal;

/// The first argument that makes a moira binary a step supervisor.
pub const SUPERVISE_ARG: &str = "__moira-step-supervisor";

/// If this process was started as a step's supervisor, supervises the step
/// and exits; otherwise returns at once. Every binary that can run steps
/// (`moira-runner`, and `moira` for `moira dev`) calls it first thing.
pub fn run_if_asked() {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(OsStr::new(SUPERVISE_ARG)) {
        return;
    }
    let Some(command) = args.next() else {
        eprintln!("moira: {SUPERVISE_ARG} needs the step's command");
        std::process::exit(125);
    };
    std::process::exit(supervise(&command));
}

fn supervise(command: &OsStr) -> i32 {
    let group = std::process::id();
    let mut child = match std::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("moira: cannot start sh: {e}");
            return 127;
        }
    };
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        // The runner is gone: take the step down with it.
        kill_group(group, Signal::KILL);
        std::process::exit(137);
    });
    match child.wait() {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => code,
            // Die the way the step died, so the runner sees a signal too.
            (None, Some(sig)) => {
                if let Some(s) = Signal::from_named_raw(sig) {
                    kill_group(group, s);
                }
                128 + sig
            }
            (None, None) => 1,
        },
        Err(e) => {
            eprintln!("moira: waiting for the step failed: {e}");
            1
        }
    }
}

/// Sends `sig` to the process group `group`. A system call, not a kill(1)
/// process: it is made on every step's end, from the runner's async
/// threads, and must neither block them nor cost a process.
pub fn kill_group(group: u32, sig: Signal) {
    let pid = i32::try_from(group).ok().and_then(Pid::from_raw);
    if let Some(pid) = pid {
        // ESRCH (the group is gone already) is the usual answer.
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}
