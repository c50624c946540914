//! What every benchmark uses: the binaries, keys, percentiles.

use super::*;

pub(crate) fn bin_dir() -> anyhow::Result<PathBuf> {
    Ok(std::env::current_exe()?
        .parent()
        .context("binary folder")?
        .to_path_buf())
}

pub(crate) fn gatekeeper(url: &str) -> anyhow::Result<Proc> {
    gatekeeper_with(url, &[])
}

pub(crate) fn gatekeeper_with(url: &str, extra: &[&str]) -> anyhow::Result<Proc> {
    let p = ProcBuilder::new(bin_dir()?.join("moira-gatekeeper"), "moira-gatekeeper")
        .args(["--nats-url", url])
        .args(extra)
        .env("MOIRA_LOG", "warn,moira_gatekeeper=info")
        .spawn()?;
    p.wait_for_line("moira-gatekeeper ready", Duration::from_secs(30));
    Ok(p)
}

pub(crate) fn runner(url: &str) -> anyhow::Result<Proc> {
    let dir = std::env::temp_dir().join(format!("moira-bench-runner-{}", std::process::id()));
    let p = ProcBuilder::new(bin_dir()?.join("moira-runner"), "moira-runner")
        .args(["--nats-url", url, "--work-dir", &dir.display().to_string()])
        .env("MOIRA_LOG", "warn,moira_runner=info")
        .spawn()?;
    p.wait_for_line("moira-runner ready", Duration::from_secs(30));
    Ok(p)
}

/// Fresh Ed25519 keys for alice and bob, and a registry listing them.
pub(crate) fn bench_keys() -> anyhow::Result<(Keys, moira_testkit::TempDir)> {
    let make = || {
        ssh_key::PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519)
            .map_err(|e| anyhow::anyhow!("key: {e}"))
    };
    let (a, b, gk) = (make()?, make()?, make()?);
    let dir = moira_testkit::TempDir::new("moira-bench-keys")?;
    // The gate-keeper's service key, which signs the timeouts it prepares.
    let gk_file = dir.path().join("gatekeeper");
    gk.write_openssh_file(&gk_file, ssh_key::LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("key: {e}"))?;
    let line = |k: &ssh_key::PrivateKey| {
        k.public_key()
            .to_openssh()
            .map_err(|e| anyhow::anyhow!("key: {e}"))
    };
    std::fs::write(
        dir.path().join("approvers.toml"),
        format!(
            "[users.alice]\nkeys = [\"{}\"]\n[users.bob]\nkeys = [\"{}\"]\n[services.gatekeeper]\nkeys = [\"{}\"]\n",
            line(&a)?,
            line(&b)?,
            line(&gk)?
        ),
    )?;
    let keys = Keys {
        alice: moira_client::signing::Signer::Key(Box::new(a)),
        bob: moira_client::signing::Signer::Key(Box::new(b)),
    };
    Ok((keys, dir))
}

pub(crate) fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub(crate) fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

pub(crate) fn gate(actor: &str, msg: &str) -> OpenGate {
    OpenGate {
        actor: actor.into(),
        message: msg.into(),
        ..Default::default()
    }
}

pub(crate) fn uuid_for(n: usize) -> moira_protocol::ids::Uuid {
    moira_protocol::ids::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 | n as u128)
}

pub(crate) fn median_ms(mut v: Vec<Duration>) -> u64 {
    v.sort();
    v.get(v.len() / 2)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A plain NATS connection to `url`, which may list several servers
/// separated by commas (a cluster's nodes).
pub(crate) async fn nats_connect(url: &str) -> anyhow::Result<async_nats::Client> {
    let servers = url
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(async_nats::connect(servers).await?)
}

/// Waits (up to 2 minutes) until the gate-keepers' read-model projector
/// has taken in every gate event, so that one figure does not pay for the
/// projections the previous one left behind.
pub(crate) async fn settle(url: &str) -> anyhow::Result<()> {
    use moira_protocol::wire::{GATES_STREAM, INDEX_GATES_CONSUMER};
    let js = async_nats::jetstream::new(nats_connect(url).await?);
    let stream = js.get_stream(GATES_STREAM).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let info = stream.consumer_info(INDEX_GATES_CONSUMER).await?;
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the read-model projector did not catch up within 2 minutes")
}
