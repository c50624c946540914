//! Many gates: waiting at once, listing them, and listing over a long
//! stored history.

use super::*;

pub(crate) struct Scale {
    pub(crate) read_only_ms: u128,
    pub(crate) rss_mb: f64,
    pub(crate) idle_rss_mb: f64,
    pub(crate) woken_ok: usize,
    pub(crate) list_ms: u128,
    pub(crate) listed: usize,
    pub(crate) stored_events: u64,
}

pub(crate) async fn open_many(
    url: &str,
    n: usize,
    spec: impl Fn(usize) -> OpenGate + Send + Sync + 'static,
) -> anyhow::Result<Vec<GateId>> {
    let mut senders = Vec::new();
    for _ in 0..4 {
        senders.push(Client::connect(url).await?);
    }
    let spec = Arc::new(spec);
    let mut ids = Vec::with_capacity(n);
    let mut inflight = FuturesUnordered::new();
    for i in 0..n {
        let (c, spec) = (senders[i % senders.len()].clone(), spec.clone());
        inflight.push(async move { c.open(spec(i)).await.map(|g| (i, g.id)) });
        if inflight.len() >= 256 {
            ids.push(inflight.next().await.context("open")??);
        }
    }
    while let Some(r) = inflight.next().await {
        ids.push(r?);
    }
    ids.sort();
    Ok(ids.into_iter().map(|(_, id)| id).collect())
}

pub(crate) async fn waiting_scale(url: &str, n: usize) -> anyhow::Result<Scale> {
    let ids = open_many(url, n, |i| gate("alice", &format!("waiting gate {i}"))).await?;
    let dir = moira_testkit::TempDir::new("moira-bench")?;
    let file = dir.path().join("ids.txt");
    std::fs::write(
        &file,
        ids.iter()
            .map(|id| id.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    )?;
    let child = ProcBuilder::new(std::env::current_exe()?, "moira-bench waiter")
        .args(["waiter", url, &file.display().to_string()])
        .spawn()?;
    let idle = child.wait_for_line("idle rss_mb=", Duration::from_secs(60));
    child.wait_for_line("following", Duration::from_secs(600));

    // Listing every waiting gate through the CLI, as a person would
    // (`moira gate list … > file`).
    let list_file = dir.path().join("list.json");
    let list_ms = timed_list(url, "waiting", std::fs::File::create(&list_file)?.into())?;
    let listed = serde_json::from_slice::<Vec<Value>>(&std::fs::read(&list_file)?)?.len();
    // The same read and fold with nothing to print, to tell reading from rendering.
    let read_only_ms = timed_list(url, "cancelled", std::process::Stdio::null())?;
    let nats = async_nats::connect(url).await?;
    let js = async_nats::jetstream::new(nats);
    let stored_events = js
        .get_stream(moira_protocol::wire::GATES_STREAM)
        .await?
        .info()
        .await?
        .state
        .messages;

    // Decide them all: even ones approved, odd ones denied.
    let decider = Client::connect(url).await?;
    let mut inflight = FuturesUnordered::new();
    for (i, id) in ids.iter().enumerate() {
        let (c, id) = (decider.clone(), *id);
        inflight.push(async move {
            if i % 2 == 0 {
                c.approve(ApproveGate {
                    gate_id: id,
                    actor: "bob".into(),
                    ..Default::default()
                })
                .await
                .map(|_| ())
            } else {
                c.deny(DenyGate {
                    gate_id: id,
                    actor: "bob".into(),
                    reason: "odd".into(),
                    ..Default::default()
                })
                .await
                .map(|_| ())
            }
        });
        if inflight.len() >= 256 {
            inflight.next().await.context("decide")??;
        }
    }
    while let Some(r) = inflight.next().await {
        r?;
    }
    let done = child.wait_for_line("woken ok=", Duration::from_secs(600));
    let field = |line: &str, key: &str| -> f64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    Ok(Scale {
        read_only_ms,
        rss_mb: field(&done, "peak_rss_mb="),
        idle_rss_mb: field(&idle, "rss_mb="),
        woken_ok: field(&done, "ok=") as usize,
        list_ms,
        listed,
        stored_events,
    })
}

/// Wall time of `moira --json gate list --status STATUS`, output to `out`.
pub(crate) fn timed_list(
    url: &str,
    status: &str,
    out: std::process::Stdio,
) -> anyhow::Result<u128> {
    let t0 = Instant::now();
    let run = std::process::Command::new(bin_dir()?.join("moira"))
        .args([
            "--nats-url",
            url,
            "--json",
            "gate",
            "list",
            "--status",
            status,
        ])
        .stdout(out)
        .output()?;
    let ms = t0.elapsed().as_millis();
    anyhow::ensure!(
        run.status.success(),
        "gate list failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    Ok(ms)
}

/// What listing costs once a long history is stored.
pub(crate) struct History {
    pub(crate) events: usize,
    pub(crate) waiting: usize,
    pub(crate) list_ms: u128,
}

/// `events` gate events stored (an open and an approval per decided gate,
/// and one gate in every hundred left waiting), then `moira gate list
/// --status waiting` timed: today's list folds every stored event, so this
/// figure grows with the history. The events are copies, under new gate
/// ids, of ones a gate-keeper wrote, so the fold does all its usual work.
pub(crate) async fn history_list(events: usize) -> anyhow::Result<History> {
    use moira_protocol::event::Decoded;
    use moira_protocol::wire::{gate_events, GATES_STREAM};
    let server = NatsServer::start();
    let url = server.url();
    let _gk = gatekeeper(&url)?;
    let client = Client::connect(&url).await?;
    let decided = client
        .open(gate("alice", "a gate from the history"))
        .await?;
    client
        .approve(ApproveGate {
            gate_id: decided.id,
            actor: "bob".into(),
            ..Default::default()
        })
        .await?;
    let (stored, _) = client
        .read_subject(GATES_STREAM, &gate_events(&decided.id))
        .await?;
    let mut template = Vec::new();
    for (_, bytes) in stored {
        match moira_protocol::Envelope::decode(&bytes)? {
            Decoded::Event(env) => template.push(env),
            other => anyhow::bail!("an unexpected stored event: {other:?}"),
        }
    }
    anyhow::ensure!(template.len() == 2, "expected an open and an approval");
    let js = async_nats::jetstream::new(async_nats::connect(&url).await?);
    let mut acks = FuturesUnordered::new();
    let (mut written, mut waiting, mut n) = (0, 0, 0);
    while written < events {
        let id = GateId(uuid_for(n));
        // Every hundredth gate stays waiting: only its open is stored.
        let keep = if n % 100 == 0 { 1 } else { 2 };
        waiting += usize::from(keep == 1);
        for env in &template[..keep] {
            let mut env = env.clone();
            env.gate_id = id;
            env.id = moira_protocol::CommandId::new();
            acks.push(std::future::IntoFuture::into_future(
                js.publish(gate_events(&id), env.encode().into()).await?,
            ));
            if acks.len() >= 4096 {
                acks.next().await.context("ack")??;
            }
        }
        written += keep;
        n += 1;
    }
    while let Some(a) = acks.next().await {
        a?;
    }
    let list_ms = timed_list(&url, "waiting", std::process::Stdio::null())?;
    Ok(History {
        events: written,
        waiting,
        list_ms,
    })
}
