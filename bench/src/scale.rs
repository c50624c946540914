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

/// Processes in the fan-out figure, each following its share of the gates.
pub(crate) const FANOUT_PROCESSES: usize = 16;

/// What one waiting child reported once every gate it followed was decided.
pub(crate) struct Woken {
    pub(crate) ok: usize,
    pub(crate) followed: usize,
    pub(crate) peak_rss_mb: f64,
    pub(crate) in_msgs: f64,
    pub(crate) cpu_ms: f64,
}

/// A child process following the gates `ids[i]` for each `i` of
/// `indices`; even indices will be approved and odd ones denied.
struct Waiter {
    proc: Proc,
    followed: usize,
}

fn spawn_waiter(
    url: &str,
    dir: &std::path::Path,
    ids: &[GateId],
    name: &str,
    indices: impl Iterator<Item = usize>,
    whole_feed: bool,
) -> anyhow::Result<Waiter> {
    let file = dir.join(format!("ids-{name}.txt"));
    let lines: Vec<String> = indices
        .map(|i| {
            let want = if i % 2 == 0 { "approved" } else { "denied" };
            format!("{} {want}", ids[i])
        })
        .collect();
    let followed = lines.len();
    std::fs::write(&file, lines.join("\n"))?;
    let mut args = vec![
        "waiter".to_string(),
        url.to_string(),
        file.display().to_string(),
    ];
    if whole_feed {
        args.push("--whole-feed".into());
    }
    let proc = ProcBuilder::new(std::env::current_exe()?, "moira-bench waiter")
        .args(args)
        .spawn()?;
    Ok(Waiter { proc, followed })
}

fn field(line: &str, key: &str) -> f64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

impl Waiter {
    fn woken(&self) -> Woken {
        let done = self
            .proc
            .wait_for_line("woken ok=", Duration::from_secs(600));
        Woken {
            ok: field(&done, "ok=") as usize,
            followed: self.followed,
            peak_rss_mb: field(&done, "peak_rss_mb="),
            in_msgs: field(&done, "in_msgs="),
            cpu_ms: field(&done, "cpu_ms="),
        }
    }
}

/// The fan-out figure: processes that each follow a share of the gates,
/// and one following a share on the whole live feed (the baseline).
pub(crate) struct Fanout {
    pub(crate) shares: Vec<Woken>,
    pub(crate) whole_feed: Woken,
}

pub(crate) async fn waiting_scale(url: &str, n: usize) -> anyhow::Result<(Scale, Fanout)> {
    let ids = open_many(url, n, |i| gate("alice", &format!("waiting gate {i}"))).await?;
    let dir = moira_testkit::TempDir::new("moira-bench")?;
    let all = spawn_waiter(url, dir.path(), &ids, "all", 0..n, false)?;
    let idle = all
        .proc
        .wait_for_line("idle rss_mb=", Duration::from_secs(60));
    all.proc
        .wait_for_line("following", Duration::from_secs(600));
    // The fan-out processes: every 16th gate each (the gates are decided
    // in order, so each one's last gate is decided near the end and its
    // count covers nearly all the decisions), and the first share again on
    // the whole feed.
    let share = |k: usize| (k..n).step_by(FANOUT_PROCESSES);
    let mut shares = Vec::new();
    for k in 0..FANOUT_PROCESSES {
        let name = format!("share-{k}");
        shares.push(spawn_waiter(url, dir.path(), &ids, &name, share(k), false)?);
    }
    let baseline = spawn_waiter(url, dir.path(), &ids, "whole-feed", share(0), true)?;
    for w in shares.iter().chain([&baseline]) {
        w.proc.wait_for_line("following", Duration::from_secs(600));
    }

    // Listing every waiting gate through the CLI, as a person would
    // (`moira gate list … > file`).
    let list_file = dir.path().join("list.json");
    let list_ms = timed_list(
        url,
        &["--status", "waiting"],
        std::fs::File::create(&list_file)?.into(),
    )?;
    let listed = serde_json::from_slice::<Vec<Value>>(&std::fs::read(&list_file)?)?.len();
    // The same read and fold with nothing to print, to tell reading from rendering.
    let read_only_ms = timed_list(url, &["--status", "cancelled"], std::process::Stdio::null())?;
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
    let done = all.woken();
    let fanout = Fanout {
        shares: shares.iter().map(Waiter::woken).collect(),
        whole_feed: baseline.woken(),
    };
    Ok((
        Scale {
            read_only_ms,
            rss_mb: done.peak_rss_mb,
            idle_rss_mb: field(&idle, "rss_mb="),
            woken_ok: done.ok,
            list_ms,
            listed,
            stored_events,
        },
        fanout,
    ))
}

/// Wall time of `moira --json gate list ARGS…`, output to `out`.
pub(crate) fn timed_list(
    url: &str,
    args: &[&str],
    out: std::process::Stdio,
) -> anyhow::Result<u128> {
    let t0 = Instant::now();
    let run = std::process::Command::new(bin_dir()?.join("moira"))
        .args(["--nats-url", url, "--json", "gate", "list"])
        .args(args)
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
    pub(crate) gates: usize,
    pub(crate) events: usize,
    pub(crate) waiting: usize,
    /// `moira admin reindex` over the whole history (an empty model).
    pub(crate) reindex_ms: u128,
    /// `gate list --status waiting` from the read model, and folding.
    pub(crate) list_ms: u128,
    pub(crate) fold_ms: u128,
    /// After all but `few` of the waiting gates were decided.
    pub(crate) few: usize,
    pub(crate) few_list_ms: u128,
    /// A gate-keeper's projector taking those decisions in.
    pub(crate) projected: usize,
    pub(crate) projected_per_s: f64,
}

/// `gates` gates stored, `waiting` of them still waiting (an open and an
/// approval per decided gate). The events are copies, under new gate ids,
/// of ones a gate-keeper wrote, so folds and projections do their usual
/// work. Then:
/// - `moira admin reindex` builds the read model from the whole history;
/// - `moira gate list --status waiting` is timed from the read model and
///   with `--from-events` (the fold every list did before);
/// - approvals for all but 100 of the waiting gates are stored, a
///   gate-keeper's projector takes them in (timed), and the list of the
///   100 left is timed.
pub(crate) async fn history_list(gates: usize, waiting: usize) -> anyhow::Result<History> {
    use moira_protocol::event::Decoded;
    use moira_protocol::wire::{gate_events, GATES_STREAM, INDEX_GATES_CONSUMER};
    let server = NatsServer::start();
    let url = server.url();
    let client = Client::connect(&url).await?;
    let template = {
        let _gk = gatekeeper(&url)?;
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
        template
    };
    // The gate-keeper is gone; so is its projector's place in the stream,
    // so the model is built by reindex rather than event by event.
    let js = async_nats::jetstream::new(async_nats::connect(&url).await?);
    js.get_stream(GATES_STREAM)
        .await?
        .delete_consumer(INDEX_GATES_CONSUMER)
        .await?;
    let mut acks = FuturesUnordered::new();
    let every = gates / waiting.max(1);
    let mut left_waiting = Vec::new();
    let mut written = 0;
    for n in 0..gates {
        let id = GateId(uuid_for(n));
        let keep = if n % every == 0 && left_waiting.len() < waiting {
            left_waiting.push(id);
            1
        } else {
            2
        };
        for (i, env) in template[..keep].iter().enumerate() {
            let mut env = env.clone();
            env.gate_id = id;
            env.id = moira_protocol::CommandId::new();
            if i == 1 {
                // A copy cannot name the open before it (that open's bytes
                // differ from the template's), so it names none.
                env.prev = None;
            }
            acks.push(std::future::IntoFuture::into_future(
                js.publish(gate_events(&id), env.encode().into()).await?,
            ));
            if acks.len() >= 4096 {
                acks.next().await.context("ack")??;
            }
        }
        written += keep;
    }
    while let Some(a) = acks.next().await {
        a?;
    }
    let t0 = Instant::now();
    let reindex = moira_cmd(&url, &["admin", "reindex"])?;
    let reindex_ms = t0.elapsed().as_millis();
    eprintln!("      {}", reindex.trim().replace('\n', "; "));
    let list_ms = timed_list(&url, &["--status", "waiting"], std::process::Stdio::null())?;
    if std::env::var_os("MOIRA_BENCH_DETAIL").is_some() {
        use async_nats::jetstream::consumer::DeliverPolicy;
        let filter = moira_protocol::wire::index_entries_in(
            moira_protocol::wire::INDEX_GATE,
            Some("waiting"),
        );
        for (name, policy) in [
            ("all", DeliverPolicy::All),
            ("last per subject", DeliverPolicy::LastPerSubject),
            ("all", DeliverPolicy::All),
            ("last per subject", DeliverPolicy::LastPerSubject),
        ] {
            let t0 = Instant::now();
            let mut n = 0usize;
            client
                .read_stored_from(
                    moira_protocol::wire::INDEX_STREAM,
                    &filter,
                    policy,
                    |_, _| n += 1,
                )
                .await?;
            eprintln!(
                "      reading {n} entries in-process, {name}: {} ms",
                t0.elapsed().as_millis()
            );
        }
    }
    let fold_ms = timed_list(
        &url,
        &["--status", "waiting", "--from-events"],
        std::process::Stdio::null(),
    )?;

    // Decide all but a few of the waiting gates, and let a gate-keeper's
    // projector take the decisions in (its consumer starts where reindex
    // left the model, as a projector that had kept up would be).
    let few = 100.min(left_waiting.len());
    let decide = &left_waiting[few..];
    for id in decide {
        let mut env = template[1].clone();
        env.gate_id = *id;
        env.id = moira_protocol::CommandId::new();
        env.prev = None;
        acks.push(std::future::IntoFuture::into_future(
            js.publish(gate_events(id), env.encode().into()).await?,
        ));
        if acks.len() >= 4096 {
            acks.next().await.context("ack")??;
        }
    }
    while let Some(a) = acks.next().await {
        a?;
    }
    let t0 = Instant::now();
    let _gk = gatekeeper(&url)?;
    settle(&url).await?;
    let projected_per_s = decide.len() as f64 / t0.elapsed().as_secs_f64();
    let few_list_ms = timed_list(&url, &["--status", "waiting"], std::process::Stdio::null())?;
    let check = moira_cmd(&url, &["admin", "reindex", "--check"])?;
    anyhow::ensure!(
        check.contains(&format!("gates: {gates} checked, 0 differ, 0 orphans"))
            || check.contains(&format!(
                "gates: {} checked, 0 differ, 0 orphans",
                gates + 1
            )),
        "the read model does not match the events: {check}"
    );
    Ok(History {
        gates,
        events: written,
        waiting: left_waiting.len(),
        reindex_ms,
        list_ms,
        fold_ms,
        few,
        few_list_ms,
        projected: decide.len(),
        projected_per_s,
    })
}

/// Runs the CLI and returns its standard output.
pub(crate) fn moira_cmd(url: &str, args: &[&str]) -> anyhow::Result<String> {
    let run = std::process::Command::new(bin_dir()?.join("moira"))
        .args(["--nats-url", url])
        .args(args)
        .output()?;
    anyhow::ensure!(
        run.status.success(),
        "moira {args:?} failed: {}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    Ok(String::from_utf8_lossy(&run.stdout).into_owned())
}
