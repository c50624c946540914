//! The child process of the waiting-scale benchmark: follows every gate
//! listed in a file with one client (one live subscription), reports its
//! RSS, then waits until every gate is decided and checks each outcome
//! (even lines approved, odd lines denied).

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

pub async fn run(url: &str, ids_file: &str) -> anyhow::Result<()> {
    let ids: Vec<GateId> = std::fs::read_to_string(ids_file)?
        .lines()
        .map(|l| l.parse())
        .collect::<Result<_, _>>()?;
    let client = Client::connect(url).await?;
    println!("idle rss_mb={:.1}", rss_mb().0);

    let mut waits = FuturesUnordered::new();
    // Follow in bounded parallel batches (each follow reads its gate once).
    let mut pending = ids.iter().enumerate();
    let mut followers = Vec::with_capacity(ids.len());
    loop {
        let batch: Vec<_> = pending.by_ref().take(512).collect();
        if batch.is_empty() {
            break;
        }
        let got = futures_util::future::join_all(batch.into_iter().map(|(i, id)| {
            let c = client.clone();
            async move { c.follow(*id).await.map(|f| (i, f)) }
        }))
        .await;
        for f in got {
            followers.push(f?);
        }
    }
    println!("following {} rss_mb={:.1}", followers.len(), rss_mb().0);
    for (i, mut f) in followers {
        waits.push(async move {
            let want = if i % 2 == 0 {
                GateStatus::Approved
            } else {
                GateStatus::Denied
            };
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
    println!("woken ok={ok} bad={bad} rss_mb={now:.1} peak_rss_mb={peak:.1}");
    Ok(())
}
