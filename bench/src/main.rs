//! `moira-bench [quick|full]`: measures moira against the broker's own floor
//! in the same run, on the same machine, with real processes (a nats-server
//! and release builds of `moira-gatekeeper` and `moira`).
//!
//! Prints a table and writes `target/bench/results.json`.
//! `moira-bench waiter URL IDS_FILE` is the child process of the
//! waiting-scale benchmark (run by the benchmark itself), and
//! `moira-bench populate URL N` opens N waiting gates on a running stack.

#![forbid(unsafe_code)]

mod waiter;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde_json::{json, Value};

use moira_client::{ApproveGate, Client, DenyGate, GateId, GateStatus, OpenGate};
use moira_protocol::time::now_ms;
use moira_testkit::{NatsServer, Proc, ProcBuilder};

struct Sizes {
    name: &'static str,
    latency_gates: usize,
    lifecycles: usize,
    concurrency: usize,
    waiting_gates: usize,
    timeout_gates: usize,
    cold_events: usize,
    runs: usize,
    resumes: usize,
    web_gates: usize,
}

const QUICK: Sizes = Sizes {
    name: "quick",
    latency_gates: 300,
    lifecycles: 3_000,
    concurrency: 64,
    waiting_gates: 10_000,
    timeout_gates: 200,
    cold_events: 100_000,
    runs: 100,
    resumes: 20,
    web_gates: 2_000,
};
const FULL: Sizes = Sizes {
    name: "full",
    latency_gates: 2_000,
    lifecycles: 20_000,
    concurrency: 128,
    waiting_gates: 100_000,
    timeout_gates: 1_000,
    cold_events: 1_000_000,
    runs: 300,
    resumes: 100,
    web_gates: 10_000,
};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Runtime::new()?;
    match args.first().map(String::as_str) {
        Some("waiter") => {
            let (url, file) = (
                args.get(1).context("waiter URL")?,
                args.get(2).context("waiter IDS_FILE")?,
            );
            rt.block_on(waiter::run(url, file))
        }
        Some("quick") => rt.block_on(bench(&QUICK)),
        // Fills a running stack with waiting gates, for profiling by hand.
        Some("populate") => {
            let url = args.get(1).context("populate URL N")?;
            let n: usize = args.get(2).context("populate URL N")?.parse()?;
            rt.block_on(open_many(url, n, |i| {
                gate("alice", &format!("waiting gate {i}"))
            }))
            .map(|ids| {
                eprintln!("opened {} gates", ids.len());
            })
        }
        // Only the moira-web figures, at the full sizes.
        Some("web") => rt.block_on(async {
            let w = web_figures(&FULL).await?;
            println!(
                "{} waiting gates: API list {} ms, page {} ms, client list {} ms; \
                 decision to SSE p50 {} µs (p99 {} µs), to moira gate watch p50 {} µs",
                FULL.web_gates,
                w.api_ms,
                w.page_ms,
                w.client_ms,
                us(w.sse_p50),
                us(w.sse_p99),
                us(w.watch_p50)
            );
            Ok(())
        }),
        None | Some("full") => rt.block_on(bench(&FULL)),
        Some(other) => anyhow::bail!("unknown mode '{other}'; use: moira-bench [quick|full|web]"),
    }
}

fn bin_dir() -> anyhow::Result<PathBuf> {
    Ok(std::env::current_exe()?
        .parent()
        .context("binary folder")?
        .to_path_buf())
}

fn gatekeeper(url: &str) -> anyhow::Result<Proc> {
    gatekeeper_with(url, &[])
}

fn gatekeeper_with(url: &str, extra: &[&str]) -> anyhow::Result<Proc> {
    let p = ProcBuilder::new(bin_dir()?.join("moira-gatekeeper"), "moira-gatekeeper")
        .args(["--nats-url", url])
        .args(extra)
        .env("MOIRA_LOG", "warn,moira_gatekeeper=info")
        .spawn()?;
    p.wait_for_line("moira-gatekeeper ready", Duration::from_secs(30));
    Ok(p)
}

fn runner(url: &str) -> anyhow::Result<Proc> {
    let dir = std::env::temp_dir().join(format!("moira-bench-runner-{}", std::process::id()));
    let p = ProcBuilder::new(bin_dir()?.join("moira-runner"), "moira-runner")
        .args(["--nats-url", url, "--work-dir", &dir.display().to_string()])
        .env("MOIRA_LOG", "warn,moira_runner=info")
        .spawn()?;
    p.wait_for_line("moira-runner ready", Duration::from_secs(30));
    Ok(p)
}

/// Fresh Ed25519 keys for alice and bob, and a registry listing them.
fn bench_keys() -> anyhow::Result<(Keys, moira_testkit::TempDir)> {
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

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

fn gate(actor: &str, msg: &str) -> OpenGate {
    OpenGate {
        actor: actor.into(),
        message: msg.into(),
        ..Default::default()
    }
}

/// One row of the printed table.
struct Row {
    metric: String,
    value: String,
    baseline: String,
    target: String,
    met: Option<bool>,
}

async fn bench(sizes: &Sizes) -> anyhow::Result<()> {
    let started = Instant::now();
    eprintln!(
        "moira-bench ({}): starting a nats-server and a gate-keeper",
        sizes.name
    );
    let server = NatsServer::start();
    let url = server.url();
    let _gk1 = gatekeeper(&url)?;
    let mut results = BTreeMap::<String, Value>::new();
    let mut rows = Vec::new();

    // 1. Decision latency, and the JetStream floor.
    eprintln!("[1/8] decision latency over {} gates", sizes.latency_gates);
    let floor = floor_latency(&url, sizes.latency_gates).await?;
    let lat = decision_latency(&url, sizes.latency_gates).await?;
    let (p50, p99, f50, f99) = (
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&floor, 0.5),
        pct(&floor, 0.99),
    );
    results.insert("decision_p50_us".into(), json!(us(p50)));
    results.insert("decision_p99_us".into(), json!(us(p99)));
    results.insert("floor_p50_us".into(), json!(us(f50)));
    results.insert("floor_p99_us".into(), json!(us(f99)));
    let ratio = p50.as_secs_f64() / f50.as_secs_f64().max(1e-9);
    rows.push(Row {
        metric: "decision latency p50".into(),
        value: format!("{} µs", us(p50)),
        baseline: format!("floor p50 {} µs ({ratio:.1}×)", us(f50)),
        target: "≤ 1000 µs, ≤ 3× floor".into(),
        met: Some(p50 <= Duration::from_millis(1) && ratio <= 3.0),
    });
    rows.push(Row {
        metric: "decision latency p99".into(),
        value: format!("{} µs", us(p99)),
        baseline: format!("floor p99 {} µs", us(f99)),
        target: "≤ 5000 µs".into(),
        met: Some(p99 <= Duration::from_millis(5)),
    });

    // 2. Throughput with 1 and 2 gate-keepers, against raw appends.
    eprintln!(
        "[2/8] throughput: {} lifecycles, {} concurrent clients",
        sizes.lifecycles, sizes.concurrency
    );
    let raw = raw_appends(&url, sizes.lifecycles * 2, sizes.concurrency).await?;
    let one = lifecycles(&url, sizes.lifecycles, sizes.concurrency).await?;
    let _gk2 = gatekeeper(&url)?;
    let two = lifecycles(&url, sizes.lifecycles, sizes.concurrency).await?;
    results.insert("raw_appends_per_s".into(), json!(raw.round()));
    results.insert("lifecycles_per_s_1gk".into(), json!(one.round()));
    results.insert("lifecycles_per_s_2gk".into(), json!(two.round()));
    for (label, v) in [
        ("lifecycles/s, 1 gate-keeper", one),
        ("lifecycles/s, 2 gate-keepers", two),
    ] {
        rows.push(Row {
            metric: label.into(),
            value: format!("{v:.0}"),
            baseline: format!("raw appends/s {raw:.0} ({:.2}×)", v / raw.max(1.0)),
            target: "≥ 10000, ≥ 0.25× raw".into(),
            met: Some(v >= 10_000.0 && v / raw.max(1.0) >= 0.25),
        });
    }

    // 3 and 4. Many waiting gates in one process, and listing them.
    eprintln!("[3/8] {} gates waiting in one process", sizes.waiting_gates);
    let scale = waiting_scale(&url, sizes.waiting_gates).await?;
    results.insert("waiting_gates".into(), json!(sizes.waiting_gates));
    results.insert("waiting_rss_mb".into(), json!(scale.rss_mb));
    results.insert("waiters_woken_ok".into(), json!(scale.woken_ok));
    results.insert("list_100k_ms".into(), json!(scale.list_ms));
    results.insert("listed_gates".into(), json!(scale.listed));
    results.insert("list_read_only_ms".into(), json!(scale.read_only_ms));
    rows.push(Row {
        metric: format!("RSS with {} waiting gates", sizes.waiting_gates),
        value: format!("{:.0} MB", scale.rss_mb),
        baseline: format!("idle waiter {:.0} MB", scale.idle_rss_mb),
        target: "≤ 256 MB".into(),
        met: Some(scale.rss_mb <= 256.0),
    });
    rows.push(Row {
        metric: "waiters woken with the right outcome".into(),
        value: format!("{}/{}", scale.woken_ok, sizes.waiting_gates),
        baseline: "-".into(),
        target: "all".into(),
        met: Some(scale.woken_ok == sizes.waiting_gates),
    });
    rows.push(Row {
        metric: format!(
            "`gate list --status waiting --json`, {} gates",
            scale.listed
        ),
        value: format!("{} ms", scale.list_ms),
        baseline: format!(
            "{} events; read+fold only {} ms",
            scale.stored_events, scale.read_only_ms
        ),
        target: "≤ 2000 ms".into(),
        met: Some(scale.list_ms <= 2_000),
    });

    // 5. Timeout precision.
    eprintln!("[4/8] timeout precision over {} gates", sizes.timeout_gates);
    let late = timeout_lateness(&url, sizes.timeout_gates).await?;
    let (l50, l99) = (pct(&late, 0.5), pct(&late, 0.99));
    results.insert("timeout_late_p50_ms".into(), json!(l50.as_millis() as u64));
    results.insert("timeout_late_p99_ms".into(), json!(l99.as_millis() as u64));
    rows.push(Row {
        metric: "timeout lateness p50 / p99".into(),
        value: format!("{} / {} ms", l50.as_millis(), l99.as_millis()),
        baseline: "deadline".into(),
        target: "p99 ≤ 1000 ms".into(),
        met: Some(l99 <= Duration::from_secs(1)),
    });

    // 6. Cold start against a big stream.
    eprintln!("[5/8] cold start with {} stored events", sizes.cold_events);
    let ready = cold_start(sizes.cold_events).await?;
    results.insert(
        "gatekeeper_ready_ms".into(),
        json!(ready.as_millis() as u64),
    );
    results.insert("cold_start_events".into(), json!(sizes.cold_events));
    rows.push(Row {
        metric: format!("gate-keeper ready, {} events stored", sizes.cold_events),
        value: format!("{} ms", ready.as_millis()),
        baseline: "-".into(),
        target: "≤ 1000 ms".into(),
        met: Some(ready <= Duration::from_secs(1)),
    });

    // 7. Runs through a runner process.
    eprintln!(
        "[6/8] {} runs of a 3-step workflow, {} resumes after a gate",
        sizes.runs, sizes.resumes
    );
    let _runner = runner(&url)?;
    let floor_runs = spawn_floor(sizes.runs, 4).await?;
    let runs_per_s = runs_throughput(&url, sizes.runs).await?;
    let resume = resume_latency(&url, sizes.resumes).await?;
    let r50 = pct(&resume, 0.5);
    results.insert(
        "runs_per_s".into(),
        json!((runs_per_s * 10.0).round() / 10.0),
    );
    results.insert(
        "runs_floor_per_s".into(),
        json!((floor_runs * 10.0).round() / 10.0),
    );
    results.insert("resume_p50_ms".into(), json!(r50.as_millis() as u64));
    results.insert(
        "resume_p99_ms".into(),
        json!(pct(&resume, 0.99).as_millis() as u64),
    );
    rows.push(Row {
        metric: "runs/s, 3 steps, 1 runner".into(),
        value: format!("{runs_per_s:.1}"),
        baseline: format!("3 × sh -c true, 4 at once: {floor_runs:.1}/s"),
        target: "-".into(),
        met: None,
    });
    rows.push(Row {
        metric: "resume: decision → next step started, p50".into(),
        value: format!("{} ms", r50.as_millis()),
        baseline: format!("decision p50 {} µs", us(p50)),
        target: "-".into(),
        met: None,
    });

    // 7. The same decisions signed, against a gate-keeper that requires it.
    eprintln!("[7/8] signed decisions: --signatures require, Ed25519 keys");
    let (keys, registry_dir) = bench_keys()?;
    let signed_server = NatsServer::start();
    let surl = signed_server.url();
    let registry = registry_dir
        .path()
        .join("approvers.toml")
        .display()
        .to_string();
    let gk_key = registry_dir.path().join("gatekeeper").display().to_string();
    let _sgk = gatekeeper_with(
        &surl,
        &[
            "--signatures",
            "require",
            "--approvers",
            &registry,
            "--key",
            &gk_key,
        ],
    )?;
    let slat = decision_latency_as(&surl, sizes.latency_gates, Some(&keys)).await?;
    let sone = lifecycles_as(&surl, sizes.lifecycles, sizes.concurrency, Some(&keys)).await?;
    let s50 = pct(&slat, 0.5);
    results.insert("signed_decision_p50_us".into(), json!(us(s50)));
    results.insert("signed_lifecycles_per_s".into(), json!(sone.round()));
    rows.push(Row {
        metric: "signed decision latency p50 (require)".into(),
        value: format!("{} µs", us(s50)),
        baseline: format!("unsigned (off) {} µs", us(p50)),
        target: "-".into(),
        met: None,
    });
    rows.push(Row {
        metric: "signed lifecycles/s, 1 gate-keeper (require)".into(),
        value: format!("{sone:.0}"),
        baseline: format!("unsigned (off) {one:.0}"),
        target: "-".into(),
        met: None,
    });

    // 8. moira-web: listing many waiting gates, and how soon a decision
    // reaches a page, beside the CLI's own list and `moira gate watch`.
    eprintln!(
        "[8/8] moira-web: {} waiting gates, decisions seen live",
        sizes.web_gates
    );
    let web = web_figures(sizes).await?;
    results.insert("web_gates".into(), json!(sizes.web_gates));
    results.insert("web_api_list_ms".into(), json!(web.api_ms));
    results.insert("web_page_list_ms".into(), json!(web.page_ms));
    results.insert("web_client_list_ms".into(), json!(web.client_ms));
    results.insert("web_sse_p50_us".into(), json!(us(web.sse_p50)));
    results.insert("web_sse_p99_us".into(), json!(us(web.sse_p99)));
    results.insert("web_watch_p50_us".into(), json!(us(web.watch_p50)));
    rows.push(Row {
        metric: format!(
            "API: list {} waiting gates (1,000 a page), median",
            sizes.web_gates
        ),
        value: format!("{} ms", web.api_ms),
        baseline: format!("client list of the same: {} ms", web.client_ms),
        target: "-".into(),
        met: None,
    });
    rows.push(Row {
        metric: format!(
            "page: waiting gates of {} (500 rows), median",
            sizes.web_gates
        ),
        value: format!("{} ms", web.page_ms),
        baseline: format!("client list of the same: {} ms", web.client_ms),
        target: "-".into(),
        met: None,
    });
    rows.push(Row {
        metric: "decision → SSE event on /api/v1/events, p50 (p99)".into(),
        value: format!("{} µs ({} µs)", us(web.sse_p50), us(web.sse_p99)),
        baseline: format!("moira gate watch: {} µs", us(web.watch_p50)),
        target: "-".into(),
        met: None,
    });

    results.insert("mode".into(), json!(sizes.name));
    results.insert("elapsed_s".into(), json!(started.elapsed().as_secs()));
    print_table(&rows);
    let out = bin_dir()?.join("../bench");
    std::fs::create_dir_all(&out)?;
    let path = out.join("results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)?)?;
    println!(
        "\nresults: {} (in {:.0} s)",
        path.canonicalize().unwrap_or(path).display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn print_table(rows: &[Row]) {
    let head = ["metric", "value", "baseline (same run)", "target", ""];
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            let verdict = match r.met {
                Some(true) => "ok",
                Some(false) => "MISSED",
                None => "",
            };
            [
                r.metric.clone(),
                r.value.clone(),
                r.baseline.clone(),
                r.target.clone(),
                verdict.into(),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..5)
        .map(|c| {
            cells
                .iter()
                .map(|r| r[c].chars().count())
                .chain([head[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |r: &[String]| {
        r.iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!();
    println!("{}", line(&head.map(String::from)));
    for r in &cells {
        println!("{}", line(r));
    }
}

/// The broker's floor: a JetStream publish (acknowledged) followed by the
/// republished copy reaching a subscriber, as a moira event does.
async fn floor_latency(url: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
    let nats = async_nats::connect(url).await?;
    let js = async_nats::jetstream::new(nats.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH_FLOOR".into(),
        subjects: vec!["bench.floor.*".into()],
        republish: Some(async_nats::jetstream::stream::Republish {
            source: "bench.floor.*".into(),
            destination: "bench.live.floor.{{wildcard(1)}}".into(),
            headers_only: false,
        }),
        ..Default::default()
    })
    .await?;
    let mut sub = nats.subscribe("bench.live.floor.>").await?;
    nats.flush().await?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 50 {
        let t0 = Instant::now();
        js.publish(format!("bench.floor.{i}"), bytes::Bytes::from_static(b"x"))
            .await?
            .await?;
        sub.next().await.context("floor subscriber closed")?;
        if i >= 50 {
            out.push(t0.elapsed());
        }
    }
    out.sort();
    Ok(out)
}

/// From the approve call until a waiter in another connection wakes.
/// Who signs in the signed-mode stage: alice opens, bob decides.
#[derive(Clone)]
struct Keys {
    alice: moira_client::signing::Signer,
    bob: moira_client::signing::Signer,
}

async fn connect_as(
    url: &str,
    key: Option<&moira_client::signing::Signer>,
) -> anyhow::Result<Client> {
    let c = Client::connect(url).await?;
    Ok(match key {
        Some(k) => c.with_signer(k.clone()),
        None => c,
    })
}

async fn decision_latency(url: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
    decision_latency_as(url, n, None).await
}

async fn decision_latency_as(
    url: &str,
    n: usize,
    keys: Option<&Keys>,
) -> anyhow::Result<Vec<Duration>> {
    let waiter = Client::connect(url).await?;
    let opener = connect_as(url, keys.map(|k| &k.alice)).await?;
    let approver = connect_as(url, keys.map(|k| &k.bob)).await?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 50 {
        let g = opener.open(gate("alice", "latency")).await?;
        let mut f = waiter.follow(g.id).await?;
        let t0 = Instant::now();
        let approve = approver.approve(ApproveGate {
            gate_id: g.id,
            actor: "bob".into(),
            ..Default::default()
        });
        let woke = async {
            let r = f.wait_until(|s| s.status.is_terminal()).await;
            (r, t0.elapsed())
        };
        let (a, (w, dt)) = tokio::join!(approve, woke);
        a?;
        anyhow::ensure!(
            w?.status == GateStatus::Approved,
            "waiter saw the wrong outcome"
        );
        if i >= 50 {
            out.push(dt);
        }
    }
    out.sort();
    Ok(out)
}

/// Acknowledged JetStream appends per second at the same concurrency.
async fn raw_appends(url: &str, n: usize, concurrency: usize) -> anyhow::Result<f64> {
    let nats = async_nats::connect(url).await?;
    let js = async_nats::jetstream::new(nats);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH_RAW".into(),
        subjects: vec!["bench.raw.*".into()],
        ..Default::default()
    })
    .await?;
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (js, next) = (js.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let i = next.load(Ordering::Relaxed);
                js.publish(
                    format!("bench.raw.{i}"),
                    bytes::Bytes::from_static(b"0123456789abcdef0123456789abcdef"),
                )
                .await?
                .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// Full lifecycles per second: open, approve, and the waiter woken.
async fn lifecycles(url: &str, n: usize, concurrency: usize) -> anyhow::Result<f64> {
    lifecycles_as(url, n, concurrency, None).await
}

async fn lifecycles_as(
    url: &str,
    n: usize,
    concurrency: usize,
    keys: Option<&Keys>,
) -> anyhow::Result<f64> {
    let mut senders = Vec::new();
    for _ in 0..4 {
        senders.push(connect_as(url, keys.map(|k| &k.bob)).await?);
    }
    let waiter = connect_as(url, keys.map(|k| &k.alice)).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (c, waiter, next) = (
            senders[w % senders.len()].clone(),
            waiter.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                // As a runner does: open and follow on one connection.
                let (g, mut f) = waiter.open_and_follow(gate("alice", "throughput")).await?;
                c.approve(ApproveGate {
                    gate_id: g.id,
                    actor: "bob".into(),
                    ..Default::default()
                })
                .await?;
                f.wait_until(|s| s.status.is_terminal()).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

struct Scale {
    read_only_ms: u128,
    rss_mb: f64,
    idle_rss_mb: f64,
    woken_ok: usize,
    list_ms: u128,
    listed: usize,
    stored_events: u64,
}

async fn open_many(
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

async fn waiting_scale(url: &str, n: usize) -> anyhow::Result<Scale> {
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
fn timed_list(url: &str, status: &str, out: std::process::Stdio) -> anyhow::Result<u128> {
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

/// How late each GateTimedOut reaches a waiter, against its deadline.
async fn timeout_lateness(url: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
    // Deadlines spread over 3 s, starting 2 s from now.
    let ids = open_many(url, n, move |i| OpenGate {
        timeout_ms: Some(2_000 + (i as u64 * 3_000 / n.max(1) as u64)),
        ..gate("alice", "timeout")
    })
    .await?;
    let waiter = Client::connect(url).await?;
    let mut waits = FuturesUnordered::new();
    for id in ids {
        let mut f = waiter.follow(id).await?;
        let deadline = f.current().and_then(|s| s.timeout_at).context("deadline")?;
        waits.push(async move {
            let s = f.wait_until(|s| s.status.is_terminal()).await?;
            anyhow::ensure!(s.status == GateStatus::TimedOut, "expected a timeout");
            Ok(Duration::from_millis(now_ms().saturating_sub(deadline)))
        });
    }
    let mut late = Vec::new();
    while let Some(r) = waits.next().await {
        late.push(r?);
    }
    late.sort();
    Ok(late)
}

/// A fresh gate-keeper against a stream holding many events: time from
/// process start until it answers a command.
async fn cold_start(events: usize) -> anyhow::Result<Duration> {
    let server = NatsServer::start();
    let url = server.url();
    {
        // The first gate-keeper creates the stream; then fill it.
        let mut gk = gatekeeper(&url)?;
        gk.stop(Duration::from_secs(10));
    }
    let nats = async_nats::connect(&url).await?;
    let js = async_nats::jetstream::new(nats.clone());
    let payload = bytes::Bytes::from(vec![b'e'; 200]);
    let mut acks = FuturesUnordered::new();
    for i in 0..events {
        // About ten events per gate subject, as real gates have a few each.
        let subject = moira_protocol::wire::gate_events(&GateId(uuid_for(i / 10)));
        acks.push(std::future::IntoFuture::into_future(
            js.publish(subject, payload.clone()).await?,
        ));
        if acks.len() >= 4096 {
            acks.next().await.context("ack")??;
        }
    }
    while let Some(a) = acks.next().await {
        a?;
    }
    let client = Client::connect(&url).await?;
    let t0 = Instant::now();
    let _gk = ProcBuilder::new(bin_dir()?.join("moira-gatekeeper"), "moira-gatekeeper")
        .args(["--nats-url", &url])
        .spawn()?;
    loop {
        match client.open(gate("alice", "first")).await {
            Ok(_) => return Ok(t0.elapsed()),
            Err(moira_client::ClientError::NoGatekeeper { .. })
                if t0.elapsed() < Duration::from_secs(60) =>
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn uuid_for(n: usize) -> moira_protocol::ids::Uuid {
    moira_protocol::ids::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 | n as u128)
}

const THREE_STEPS: &str = "name: bench\nsteps:\n  - {name: a, run: 'true'}\n  - {name: b, run: 'true', depends_on: [a]}\n  - {name: c, run: 'true', depends_on: [b]}\n";

/// The floor for runs: the same shell processes, spawned directly.
async fn spawn_floor(runs: usize, concurrency: usize) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let mut inflight = FuturesUnordered::new();
    for _ in 0..runs * 3 {
        inflight.push(
            tokio::process::Command::new("sh")
                .args(["-c", "true"])
                .status(),
        );
        if inflight.len() >= concurrency {
            inflight.next().await.context("spawn")??;
        }
    }
    while let Some(r) = inflight.next().await {
        r?;
    }
    Ok(runs as f64 / t0.elapsed().as_secs_f64())
}

/// Runs per second through one runner (4 runs at once, its default).
async fn runs_throughput(url: &str, n: usize) -> anyhow::Result<f64> {
    let client = Client::connect(url).await?;
    let t0 = Instant::now();
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(
            client
                .submit_run(THREE_STEPS, &Default::default(), "bench")
                .await?,
        );
    }
    for id in &ids {
        let done = client.wait_run(id).await?;
        anyhow::ensure!(
            done.status == moira_protocol::run::RunStatus::Succeeded,
            "run {id} did not succeed"
        );
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// From an approve call to the next step of the parked run being started.
async fn resume_latency(url: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
    use moira_protocol::run::{RunEnvelope, RunEvent, StepStatus};
    use moira_protocol::wire::RUNS_STREAM;
    let yaml = "name: resume\nsteps:\n  - {name: g, use: moira.gate, with: {message: go}}\n  - {name: after, run: 'true', depends_on: [g]}\n";
    let client = Client::connect(url).await?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let id = client
            .submit_run(yaml, &Default::default(), "bench")
            .await?;
        client
            .wait_run_until(&id, |r| {
                r.steps
                    .get("g")
                    .is_some_and(|s| s.status == StepStatus::Waiting)
            })
            .await?;
        let t0 = now_ms();
        client
            .approve(ApproveGate {
                gate_id: GateId::for_step(&id, "g", 1),
                actor: "bob".into(),
                ..Default::default()
            })
            .await?;
        client.wait_run(&id).await?;
        let (raw, _) = client
            .read_subject(RUNS_STREAM, &moira_protocol::wire::run_events(&id))
            .await?;
        let started = raw
            .iter()
            .filter_map(|(_, p)| RunEnvelope::decode(p))
            .find_map(|e| match e.event {
                RunEvent::StepStarted { ref step, .. } if step == "after" => Some(e.at),
                _ => None,
            })
            .context("the step after the gate never started")?;
        out.push(Duration::from_millis(started.saturating_sub(t0)));
    }
    out.sort();
    Ok(out)
}

struct WebFigures {
    api_ms: u64,
    page_ms: u64,
    client_ms: u64,
    sse_p50: Duration,
    sse_p99: Duration,
    watch_p50: Duration,
}

fn median_ms(mut v: Vec<Duration>) -> u64 {
    v.sort();
    v.get(v.len() / 2)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A moira-web (`--auth dev`) over `web_gates` waiting gates: the API's
/// and the page's list against the client's own fold of the same gates,
/// then 50 decisions, each timed from its send to its event on an open
/// `/api/v1/events` stream and to its line in a running `moira gate watch`.
async fn web_figures(sizes: &Sizes) -> anyhow::Result<WebFigures> {
    let server = NatsServer::start();
    let url = server.url();
    let _gk = gatekeeper(&url)?;
    let listen = format!("127.0.0.1:{}", moira_testkit::free_port());
    let web = ProcBuilder::new(bin_dir()?.join("moira-web"), "moira-web")
        .args(["--nats-url", &url, "--listen", &listen, "--auth", "dev"])
        .env("MOIRA_LOG", "warn,moira_web=info")
        .spawn()?;
    web.wait_for_line("moira-web ready", Duration::from_secs(30));
    let ids = open_many(&url, sizes.web_gates, |i| {
        gate("alice", &format!("waiting gate {i}"))
    })
    .await?;
    let client = Client::connect(&url).await?;
    let http = reqwest::Client::new();
    let root = format!("http://{listen}");
    let (mut api, mut page, mut local) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        let t = Instant::now();
        let body = http
            .get(format!("{root}/api/v1/gates?limit=1000"))
            .send()
            .await?
            .text()
            .await?;
        api.push(t.elapsed());
        anyhow::ensure!(
            body.contains(&format!("\"total\":{}", ids.len())),
            "the API listed something else"
        );
        let t = Instant::now();
        let body = http.get(format!("{root}/")).send().await?.text().await?;
        page.push(t.elapsed());
        anyhow::ensure!(body.contains("waiting gate"), "the page listed nothing");
        let t = Instant::now();
        let filter = moira_client::ListFilter {
            status: Some(GateStatus::Waiting),
            run_id: None,
        };
        let n = client.list(&filter).await?.len();
        local.push(t.elapsed());
        anyhow::ensure!(n == ids.len(), "the client listed {n}");
    }
    let mut sse = http.get(format!("{root}/api/v1/events")).send().await?;
    let watch = ProcBuilder::new(bin_dir()?.join("moira"), "moira gate watch")
        .args(["--nats-url", &url, "gate", "watch"])
        .env("NO_COLOR", "1")
        .spawn()?;
    watch.wait_for_line("watching gate events", Duration::from_secs(30));
    // Both followers are live once they show an event made after they started.
    let probe = client.open(gate("alice", "probe")).await?.id.to_string();
    let mut buf = String::new();
    read_sse_until(&mut sse, &mut buf, &probe).await?;
    watch.wait_for_line(&probe, Duration::from_secs(30));
    let watch = Arc::new(watch);
    let (mut to_sse, mut to_watch) = (Vec::new(), Vec::new());
    for id in ids.iter().take(50) {
        let key = id.to_string();
        let t = Instant::now();
        client
            .approve(ApproveGate {
                gate_id: *id,
                actor: "bob".into(),
                ..Default::default()
            })
            .await?;
        let w = watch.clone();
        let k = key.clone();
        let seen_by_watch = tokio::task::spawn_blocking(move || {
            w.wait_for_line(&k, Duration::from_secs(30));
            t.elapsed()
        });
        buf.clear();
        read_sse_until(&mut sse, &mut buf, &key).await?;
        to_sse.push(t.elapsed());
        to_watch.push(seen_by_watch.await?);
    }
    to_sse.sort();
    to_watch.sort();
    Ok(WebFigures {
        api_ms: median_ms(api),
        page_ms: median_ms(page),
        client_ms: median_ms(local),
        sse_p50: pct(&to_sse, 0.5),
        sse_p99: pct(&to_sse, 0.99),
        watch_p50: pct(&to_watch, 0.5),
    })
}

/// Reads the event stream until `needle` has come.
async fn read_sse_until(
    resp: &mut reqwest::Response,
    buf: &mut String,
    needle: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !buf.contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, resp.chunk()).await {
            Ok(Ok(Some(c))) => buf.push_str(&String::from_utf8_lossy(&c)),
            Ok(Ok(None)) => anyhow::bail!("the event stream ended"),
            Ok(Err(e)) => anyhow::bail!("the event stream failed: {e}"),
            Err(_) => anyhow::bail!("no event for {needle} within 30 s"),
        }
    }
    Ok(())
}
