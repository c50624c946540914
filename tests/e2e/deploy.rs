//! The production pieces: the systemd units pass `systemd-analyze verify`
//! and its security check, and the `just dist` tarball installs its files
//! where the units expect them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use moira_testkit::TempDir;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

const UNITS: [&str; 4] = [
    "moira-gatekeeper",
    "moira-runner",
    "moira-notifier",
    "moira-web",
];

fn run(cmd: &mut std::process::Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_systemd_units_verify_and_their_exposure_stays_under_4() {
    let dir = TempDir::new("moira-units").expect("tmp");
    for unit in UNITS {
        let text = std::fs::read_to_string(repo().join(format!("deploy/systemd/{unit}.service")))
            .expect("read unit");
        // verify checks that ExecStart exists: point it at this build.
        let exec = format!("ExecStart={}", moira_tests::bin(unit).display());
        let text = text.replace(&format!("ExecStart=/usr/local/bin/{unit}"), &exec);
        assert!(
            text.contains(&exec),
            "{unit}: ExecStart is not /usr/local/bin/{unit}"
        );
        for want in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "UMask=0077",
            "RestrictAddressFamilies=",
            "StateDirectory=",
            "ExecReload=/bin/kill -HUP $MAINPID",
        ] {
            assert!(text.contains(want), "{unit} lacks {want}");
        }
        let path = dir.path().join(format!("{unit}.service"));
        std::fs::write(&path, text).expect("write");
        let (ok, out) = run(std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path));
        assert!(
            ok && out.trim().is_empty(),
            "systemd-analyze verify {unit}:\n{out}"
        );
        let (ok, out) = run(std::process::Command::new("systemd-analyze")
            // The threshold is in tenths of the printed level: 4.0 here.
            .args(["security", "--offline=yes", "--threshold=40"])
            .arg(&path));
        let verdict = out.lines().rev().find(|l| l.contains("Overall exposure"));
        assert!(
            ok,
            "systemd-analyze security {unit} is above 4.0: {verdict:?}"
        );
    }
}

#[test]
fn the_dist_tarball_installs_where_the_units_expect() {
    let dir = TempDir::new("moira-dist").expect("tmp");
    let target = moira_tests::bin_dir().join("..");
    let (ok, out) = run(std::process::Command::new("bash")
        .arg(repo().join("scripts/dist.sh"))
        .args(["--debug", "--out"])
        .arg(dir.path())
        .env("CARGO_TARGET_DIR", &target));
    assert!(ok, "dist: {out}");
    let tarball = PathBuf::from(out.trim().lines().last().expect("the tarball"));
    let (ok, out) = run(std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(dir.path()));
    assert!(ok, "tar: {out}");
    let name = tarball
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".tar.gz"))
        .expect("name")
        .to_string();
    let root = dir.path().join("root");
    let (ok, out) = run(std::process::Command::new("bash")
        .arg(dir.path().join(&name).join("install.sh"))
        .env("DESTDIR", &root));
    assert!(ok, "install.sh: {out}");
    for unit in UNITS {
        let text = std::fs::read_to_string(root.join(format!("etc/systemd/system/{unit}.service")))
            .expect("the unit is installed");
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("ExecStart");
        let bin = root.join(exec.trim_start_matches('/'));
        let (ok, out) = run(std::process::Command::new(&bin).arg("--version"));
        assert!(ok, "{}: {out}", bin.display());
        let env = text
            .lines()
            .find_map(|l| l.strip_prefix("EnvironmentFile="))
            .expect("EnvironmentFile");
        let env = root.join(env.trim_start_matches('-').trim_start_matches('/'));
        let mode = std::fs::metadata(&env)
            .expect("the env file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{}", env.display());
    }
    assert!(root.join("usr/local/bin/moira").is_file());
}
