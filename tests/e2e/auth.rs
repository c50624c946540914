//! Connecting to a broker that requires credentials: every binary takes
//! them as flags or environment variables, and wrong ones end the process
//! with a clear message instead of a retry loop.

use std::time::Duration;

use moira_testkit::{find_nats_server, free_port, TempDir};
use moira_tests::{bin, gatekeeper, moira_env, ProcBuilder};

#[test]
fn binaries_connect_with_credentials_and_wrong_ones_fail_clearly() {
    let server = find_nats_server().expect("nats-server").path;
    let store = TempDir::new("moira-auth").expect("tmp");
    let port = free_port();
    // Made up at run time: no secret lives in the repository.
    let password = uuid::Uuid::new_v4().simple().to_string();
    let nats = ProcBuilder::new(&server, "nats-server (auth)")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(store.path())
        .args(["--user", "moira", "--pass", &password])
        .spawn()
        .expect("spawn nats-server");
    nats.wait_for_line("Server is ready", Duration::from_secs(20));
    let url = format!("nats://127.0.0.1:{port}");

    let _gk = gatekeeper(&url, &["--nats-user", "moira", "--password", &password]);
    let cli = |env: &[(&str, &str)], args: &[&str]| moira_env(&url, args, env);
    let good = [
        ("MOIRA_NATS_USER", "moira"),
        ("MOIRA_NATS_PASSWORD", password.as_str()),
    ];
    let (code, out, err) = cli(
        &good,
        &["--as", "alice", "gate", "open", "--message", "Deploy?"],
    );
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_string();
    let (code, _, err) = cli(&good, &["--as", "bob", "gate", "approve", &id]);
    assert_eq!(code, 0, "{err}");

    let bad = [
        ("MOIRA_NATS_USER", "moira"),
        ("MOIRA_NATS_PASSWORD", "wrong"),
    ];
    let (code, _, err) = cli(&bad, &["gate", "show", &id]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot reach NATS"), "{err}");
    assert!(
        err.to_lowercase().contains("authorization"),
        "the reason is named: {err}"
    );
    let (code, _, err) = cli(&[], &["gate", "show", &id]);
    assert_eq!(code, 1, "no credentials: {err}");

    for binary in ["moira-gatekeeper", "moira-runner", "moira-notifier"] {
        let dir = store.path().join(binary);
        let mut p = ProcBuilder::new(bin(binary), binary)
            .args([
                "--nats-url",
                &url,
                "--nats-user",
                "moira",
                "--password",
                "wrong",
            ])
            .env("MOIRA_WORK_DIR", dir.join("work"))
            .spawn()
            .expect("spawn");
        let status = p.wait(Duration::from_secs(20)).expect("exits by itself");
        assert_eq!(status.code(), Some(1), "{binary}: {:?}", p.output());
        assert!(
            p.output()
                .iter()
                .any(|l| l.to_lowercase().contains("authorization")),
            "{binary} names the reason: {:?}",
            p.output()
        );
    }
}
