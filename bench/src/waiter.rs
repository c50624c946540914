//! The child process of the waiting benchmarks: follows every gate listed
//! in a file (`<id> approved|denied` per line) with one client, reports its
//! RSS, then waits until every gate is decided and checks each outcome.
//! It reports the messages it received and the CPU it used while the
//! gates were decided, for the fan-out figures. `--whole-feed` makes it
//! take the whole live feed however few gates it follows (the design
//! before per-gate subscriptions, kept as the same-run baseline).

use futures_util::stream::{FuturesUnordered, StreamExt};

use moira_client::{Client, GateId, GateStatus};

/// Resident set size now and at its peak, in MB, from /proc.
fn rss_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |key: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
}

/// User plus system CPU time of this process so far, in ms (from
/// /proc/self/stat, whose times are in USER_HZ = 100 ticks a second).
fn cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    let tick = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (tick(11) + tick(12)) * 10.0
}

fn received(c: &Client) -> u64 {
    c.nats()
        .statistics()
        .in_messages
        .load(std::sync::atomic::Ordering::Relaxed)
}

pub async fn run(url: &str, ids_file: &str, whole_feed: bool) -> anyhow::Result<()> {
    let mut ids: Vec<(GateId, GateStatus)> = Vec::new();
    for line in std::fs::read_to_string(ids_file)?.lines() {
        let (id, want) = line
            .split_once(' ')
            .ok_or_else(|| anyhow::anyhow!("bad line {line:?}"))?;
        let want = match want {
            "approved" => GateStatus::Approved,
            "denied" => GateStatus::Denied,
            other => anyhow::bail!("bad outcome {other:?}"),
        };
        ids.push((id.parse()?, want));
    }
    let client = Client::connect(url).await?;
    if whole_feed {
        client.set_per_gate_limit(0);
    }
    println!("idle rss_mb={:.1}", rss_mb().0);

    let mut waits = FuturesUnordered::new();
    // Follow in bounded parallel batches (each follow reads its gate once).
    let mut pending = ids.iter();
    let mut followers = Vec::with_capacity(ids.len());
    loop {
        let batch: Vec<_> = pending.by_ref().take(512).collect();
        if batch.is_empty() {
            break;
        }
        let got = futures_util::future::join_all(batch.into_iter().map(|(id, want)| {
            let c = client.clone();
            async move { c.follow(*id).await.map(|f| (*want, f)) }
        }))
        .await;
        for f in got {
            followers.push(f?);
        }
    }
    let (msgs0, cpu0) = (received(&client), cpu_ms());
    println!(
        "following {} rss_mb={:.1} whole_feed={}",
        followers.len(),
        rss_mb().0,
        client.takes_whole_live_feed()
    );
    for (want, mut f) in followers {
        waits.push(async move {
            f.wait_until(|s| s.status.is_terminal())
                .await
                .map(|s| s.status == want)
        });
    }
    let (mut ok, mut bad) = (0usize, 0usize);
    while let Some(r) = waits.next().await {
        if r? {
            ok += 1;
        } else {
            bad += 1;
        }
    }
    let (now, peak) = rss_mb();
    println!(
        "woken ok={ok} bad={bad} rss_mb={now:.1} peak_rss_mb={peak:.1} in_msgs={} cpu_ms={:.0}",
        received(&client) - msgs0,
        cpu_ms() - cpu0
    );
    Ok(())
}
