//! `moira-bench [quick|full]`: measures moira against the broker's own floor
//! in the same run, on the same machine, with real processes (a nats-server
//! and release builds of `moira-gatekeeper` and `moira`).
//!
//! Prints a table and writes `target/bench/results.json`.
//! `moira-bench waiter URL IDS_FILE [--whole-feed]` is the child process of
//! the waiting-scale and fan-out benchmarks (run by the benchmark itself).
//! For profiling by hand: `populate URL N` opens N waiting gates on a
//! running stack, `lifecycles URL N CONCURRENCY` and `runs URL N` measure
//! one figure against a running stack, `history GATES WAITING` runs the
//! history listing alone, and `web` the moira-web figures alone.

#![forbid(unsafe_code)]

mod common;
mod floor;
mod gates;
mod runs;
mod scale;
mod waiter;
mod web;

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

use common::*;
use floor::*;
use gates::*;
use runs::*;
use scale::*;
use web::*;

struct Sizes {
    name: &'static str,
    latency_gates: usize,
    lifecycles: usize,
    concurrency: usize,
    waiting_gates: usize,
    timeout_gates: usize,
    history_gates: usize,
    history_waiting: usize,
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
    history_gates: 100_000,
    history_waiting: 10_000,
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
    history_gates: 1_000_000,
    history_waiting: 100_000,
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
            let whole_feed = args.get(3).is_some_and(|a| a == "--whole-feed");
            rt.block_on(waiter::run(url, file, whole_feed))
        }
        Some("quick") => rt.block_on(bench(&QUICK)),
        // Fills a running stack with waiting gates, for profiling by hand.
        Some("populate") => {
            let usage = "populate URL N";
            let url = args.get(1).context(usage)?;
            let n: usize = number(&args, 2, usage)?;
            rt.block_on(open_many(url, n, |i| {
                gate("alice", &format!("waiting gate {i}"))
            }))
            .map(|ids| {
                eprintln!("opened {} gates", ids.len());
            })
        }
        // Lifecycles/s against a running stack, for profiling by hand.
        Some("lifecycles") => {
            let usage = "lifecycles URL N CONCURRENCY";
            let url = args.get(1).context(usage)?;
            let (n, c) = (number(&args, 2, usage)?, number(&args, 3, usage)?);
            let per_s = rt.block_on(lifecycles(url, n, c))?;
            println!("{per_s:.0} lifecycles/s");
            Ok(())
        }
        // Runs/s and resume latency against a running stack with a runner,
        // for profiling by hand.
        Some("runs") => {
            let usage = "runs URL N";
            let url = args.get(1).context(usage)?;
            let n = number(&args, 2, usage)?;
            let per_s = rt.block_on(runs_throughput(url, n))?;
            let resume = rt.block_on(resume_latency(url, (n / 3).max(1)))?;
            println!(
                "{per_s:.1} runs/s; resume p50 {} ms",
                pct(&resume, 0.5).as_millis()
            );
            Ok(())
        }
        // Only the history listing, at the sizes given.
        Some("history") => {
            let usage = "history GATES WAITING";
            let (gates, waiting) = (number(&args, 1, usage)?, number(&args, 2, usage)?);
            let h = rt.block_on(history_list(gates, waiting))?;
            println!(
                "{} waiting of {} gates: list {} ms, fold {} ms, {} left {} ms, reindex {} ms",
                h.waiting, h.gates, h.list_ms, h.fold_ms, h.few, h.few_list_ms, h.reindex_ms
            );
            Ok(())
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
        Some(other) => anyhow::bail!(
            "unknown mode '{other}'; use: moira-bench [quick|full|web|populate|lifecycles|runs|history]"
        ),
    }
}

/// The count at `args[i]`, with `usage` in the error when it is missing or
/// not a number.
fn number(args: &[String], i: usize, usage: &str) -> anyhow::Result<usize> {
    args.get(i)
        .context(usage.to_string())?
        .parse()
        .with_context(|| format!("{usage}: '{}' is not a count", args[i]))
}

/// Decision latency and lifecycles/s on a 3-node loopback cluster whose
/// streams keep three replicas, against the protocol floor on the same
/// cluster. Clients connect to any node, as in production.
async fn r3_figures(
    sizes: &Sizes,
    results: &mut BTreeMap<String, Value>,
) -> anyhow::Result<Vec<Row>> {
    let cluster = moira_testkit::Cluster::start();
    let urls = cluster.urls();
    let gk = gatekeeper_with(&urls, &["--replicas", "3"])?;
    let lat = decision_latency(&urls, sizes.latency_gates).await?;
    let proto = protocol_floor_latency(&urls, sizes.latency_gates, 3).await?;
    let proto_lc = protocol_floor_lifecycles(&urls, sizes.lifecycles, sizes.concurrency, 3).await?;
    let one = lifecycles(&urls, sizes.lifecycles, sizes.concurrency).await?;
    drop(gk);
    drop(cluster);
    let (p50, p99, pf50, pf99) = (
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&proto, 0.5),
        pct(&proto, 0.99),
    );
    results.insert("r3_decision_p50_us".into(), json!(us(p50)));
    results.insert("r3_decision_p99_us".into(), json!(us(p99)));
    results.insert("r3_protocol_floor_p50_us".into(), json!(us(pf50)));
    results.insert("r3_protocol_floor_p99_us".into(), json!(us(pf99)));
    results.insert("r3_lifecycles_per_s".into(), json!(one.round()));
    results.insert(
        "r3_protocol_floor_lifecycles_per_s".into(),
        json!(proto_lc.round()),
    );
    let ratio = p50.as_secs_f64() / pf50.as_secs_f64().max(1e-9);
    let lc_ratio = one / proto_lc.max(1.0);
    Ok(vec![
        Row {
            metric: "R3 cluster: decision latency p50".into(),
            value: format!("{} µs", us(p50)),
            baseline: format!("R3 protocol floor {} µs ({ratio:.2}×)", us(pf50)),
            target: "≤ 1.5× protocol floor".into(),
            met: Some(ratio <= 1.5),
        },
        Row {
            metric: "R3 cluster: decision latency p99".into(),
            value: format!("{} µs", us(p99)),
            baseline: format!("R3 protocol floor p99 {} µs", us(pf99)),
            target: "-".into(),
            met: None,
        },
        Row {
            metric: "R3 cluster: lifecycles/s, 1 gate-keeper".into(),
            value: format!("{one:.0}"),
            baseline: format!("R3 protocol floor {proto_lc:.0}/s ({lc_ratio:.2}×)"),
            target: "≥ 0.6× protocol floor".into(),
            met: Some(lc_ratio >= 0.6),
        },
    ])
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
    eprintln!("[1/9] decision latency over {} gates", sizes.latency_gates);
    let floor = floor_latency(&url, sizes.latency_gates).await?;
    let lat = decision_latency(&url, sizes.latency_gates).await?;
    let proto = protocol_floor_latency(&url, sizes.latency_gates, 1).await?;
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
    let (pf50, pf99) = (pct(&proto, 0.5), pct(&proto, 0.99));
    results.insert("protocol_floor_p50_us".into(), json!(us(pf50)));
    results.insert("protocol_floor_p99_us".into(), json!(us(pf99)));
    let proto_ratio = p50.as_secs_f64() / pf50.as_secs_f64().max(1e-9);
    rows.push(Row {
        metric: "decision latency p50, against the protocol floor".into(),
        value: format!("{} µs", us(p50)),
        baseline: format!(
            "request, append, reply, live copy: {} µs ({proto_ratio:.2}×)",
            us(pf50)
        ),
        target: "≤ 1.5× protocol floor".into(),
        met: Some(proto_ratio <= 1.5),
    });

    // 2. Throughput with 1 and 2 gate-keepers, against raw appends.
    eprintln!(
        "[2/9] throughput: {} lifecycles, {} concurrent clients",
        sizes.lifecycles, sizes.concurrency
    );
    settle(&url).await?;
    let raw = raw_appends(&url, sizes.lifecycles * 2, sizes.concurrency).await?;
    let proto_lc = protocol_floor_lifecycles(&url, sizes.lifecycles, sizes.concurrency, 1).await?;
    let one = lifecycles(&url, sizes.lifecycles, sizes.concurrency).await?;
    let _gk2 = gatekeeper(&url)?;
    let two = lifecycles(&url, sizes.lifecycles, sizes.concurrency).await?;
    results.insert("raw_appends_per_s".into(), json!(raw.round()));
    results.insert("lifecycles_per_s_1gk".into(), json!(one.round()));
    results.insert("lifecycles_per_s_2gk".into(), json!(two.round()));
    results.insert(
        "protocol_floor_lifecycles_per_s".into(),
        json!(proto_lc.round()),
    );
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
    rows.push(Row {
        metric: "lifecycles/s, 1 gate-keeper, against the protocol floor".into(),
        value: format!("{one:.0}"),
        baseline: format!(
            "2 × (request, append, reply) + live copy: {proto_lc:.0}/s ({:.2}×)",
            one / proto_lc.max(1.0)
        ),
        target: "≥ 0.6× protocol floor".into(),
        met: Some(one / proto_lc.max(1.0) >= 0.6),
    });

    // 3. The same on a 3-node cluster with R3 streams, each against its
    // own protocol floor on that cluster.
    eprintln!("[3/9] decision latency and throughput on a 3-node R3 cluster");
    rows.extend(r3_figures(sizes, &mut results).await?);

    // 4 and 5. Many waiting gates in one process, and listing them.
    eprintln!("[4/9] {} gates waiting in one process", sizes.waiting_gates);
    let (scale, fanout) = waiting_scale(&url, sizes.waiting_gates).await?;
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
    let mean = |f: fn(&scale::Woken) -> f64| {
        fanout.shares.iter().map(f).sum::<f64>() / fanout.shares.len().max(1) as f64
    };
    let followed = fanout.shares.first().map_or(0, |w| w.followed);
    let (msgs, cpu) = (mean(|w| w.in_msgs), mean(|w| w.cpu_ms));
    let base = &fanout.whole_feed;
    let all_ok = fanout.shares.iter().all(|w| w.ok == w.followed) && base.ok == base.followed;
    results.insert("fanout_processes".into(), json!(fanout.shares.len()));
    results.insert("fanout_followed_per_process".into(), json!(followed));
    results.insert("fanout_msgs_per_process".into(), json!(msgs.round()));
    results.insert("fanout_cpu_ms_per_process".into(), json!(cpu.round()));
    results.insert("fanout_whole_feed_msgs".into(), json!(base.in_msgs));
    results.insert("fanout_whole_feed_cpu_ms".into(), json!(base.cpu_ms));
    results.insert("fanout_woken_ok".into(), json!(all_ok));
    rows.push(Row {
        metric: format!(
            "fan-out: {} processes each following {followed} of {} decided gates, messages / CPU each",
            fanout.shares.len(),
            sizes.waiting_gates
        ),
        value: format!("{msgs:.0} msgs / {cpu:.0} ms"),
        baseline: format!(
            "whole live feed: {:.0} msgs / {:.0} ms",
            base.in_msgs, base.cpu_ms
        ),
        target: "≤ 2× followed, all woken right".into(),
        met: Some(msgs <= 2.0 * followed as f64 && all_ok),
    });

    // 6. Timeout precision.
    eprintln!("[5/9] timeout precision over {} gates", sizes.timeout_gates);
    settle(&url).await?;
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

    // 7. Listing over a long history, from the read model and by folding.
    eprintln!(
        "[6/9] gate list: {} waiting among {} stored gates",
        sizes.history_waiting, sizes.history_gates
    );
    let h = history_list(sizes.history_gates, sizes.history_waiting).await?;
    let k = |n: usize| match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}m", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    };
    let (w, g) = (k(h.waiting), k(h.gates));
    results.insert("history_gates".into(), json!(h.gates));
    results.insert("history_events".into(), json!(h.events));
    results.insert("history_waiting".into(), json!(h.waiting));
    results.insert("reindex_ms".into(), json!(h.reindex_ms as u64));
    results.insert(
        format!("list_waiting_{w}_of_{g}_ms"),
        json!(h.list_ms as u64),
    );
    results.insert(format!("list_fold_{w}_of_{g}_ms"), json!(h.fold_ms as u64));
    results.insert(
        format!("list_waiting_{}_of_{g}_ms", h.few),
        json!(h.few_list_ms as u64),
    );
    // The figure this one replaces: the same list by folding.
    results.insert("history_list_ms".into(), json!(h.fold_ms as u64));
    results.insert(
        "projector_cold_events_per_s".into(),
        json!(h.projected_per_s.round()),
    );
    rows.push(Row {
        metric: format!(
            "gate list --status waiting, {} waiting among {} gates",
            h.waiting, h.gates
        ),
        value: format!("{} ms", h.list_ms),
        baseline: format!(
            "fold: {} ms ({:.2}×)",
            h.fold_ms,
            h.list_ms as f64 / h.fold_ms.max(1) as f64
        ),
        target: "≤ 300 ms and ≤ 0.2× fold".into(),
        met: Some(h.list_ms <= 300 && h.list_ms * 5 <= h.fold_ms),
    });
    rows.push(Row {
        metric: format!(
            "gate list --status waiting, {} waiting among {} gates",
            h.few, h.gates
        ),
        value: format!("{} ms", h.few_list_ms),
        baseline: "-".into(),
        target: "≤ 20 ms".into(),
        met: Some(h.few_list_ms <= 20),
    });
    rows.push(Row {
        metric: format!(
            "moira admin reindex, {} gates ({} events)",
            h.gates, h.events
        ),
        value: format!("{:.1} s", h.reindex_ms as f64 / 1000.0),
        baseline: "-".into(),
        target: "-".into(),
        met: None,
    });
    rows.push(Row {
        metric: format!(
            "projector, {} decisions, cold (each gate read again)",
            h.projected
        ),
        value: format!("{:.0} events/s", h.projected_per_s),
        baseline: "-".into(),
        target: "-".into(),
        met: None,
    });

    // 8. Runs through a runner process.
    eprintln!(
        "[7/9] {} runs of a 3-step workflow, {} resumes after a gate",
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

    // 9. The same decisions signed, against a gate-keeper that requires it.
    eprintln!("[8/9] signed decisions: --signatures require, Ed25519 keys");
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

    // 10. moira-web: listing many waiting gates, and how soon a decision
    // reaches a page, beside the CLI's own list and `moira gate watch`.
    eprintln!(
        "[9/9] moira-web: {} waiting gates, decisions seen live",
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
