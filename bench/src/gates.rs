//! Gate figures against the broker's floor: decision latency, appends
//! and lifecycles per second, and timeout lateness.

use super::*;

/// The broker's floor: a JetStream publish (acknowledged) followed by the
/// republished copy reaching a subscriber, as a moira event does.
pub(crate) async fn floor_latency(url: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
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
pub(crate) struct Keys {
    pub(crate) alice: moira_client::signing::Signer,
    pub(crate) bob: moira_client::signing::Signer,
}

pub(crate) async fn connect_as(
    url: &str,
    key: Option<&moira_client::signing::Signer>,
) -> anyhow::Result<Client> {
    let c = Client::connect(url).await?;
    Ok(match key {
        Some(k) => c.with_signer(k.clone()),
        None => c,
    })
}

pub(crate) async fn decision_latency(url: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
    decision_latency_as(url, n, None).await
}

pub(crate) async fn decision_latency_as(
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
pub(crate) async fn raw_appends(url: &str, n: usize, concurrency: usize) -> anyhow::Result<f64> {
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
pub(crate) async fn lifecycles(url: &str, n: usize, concurrency: usize) -> anyhow::Result<f64> {
    lifecycles_as(url, n, concurrency, None).await
}

pub(crate) async fn lifecycles_as(
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

/// How late each GateTimedOut reaches a waiter, against its deadline.
pub(crate) async fn timeout_lateness(url: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
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
