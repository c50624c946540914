//! The protocol floor: the hops of a moira decision with no moira logic.
//! A minimal responder answers each request with an acknowledged append
//! to a stream that republishes, then replies; a subscriber receives the
//! republished copy. A decision makes exactly these hops (command in,
//! append, reply out, the live copy to the waiter), so moira's own cost is
//! its figure divided by this one.

use super::*;

use std::collections::HashMap;
use std::sync::Mutex;

const STREAM: &str = "BENCH_PROTOCOL_FLOOR";
const COMMANDS: &str = "bench.pf.cmd";

/// Starts the responder (on its own connection, in a queue group as the
/// gate-keepers are) and the stream it appends to.
async fn responder(url: &str, replicas: usize) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let nats = nats_connect(url).await?;
    let js = async_nats::jetstream::new(nats.clone());
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: STREAM.into(),
        subjects: vec!["bench.pf.ev.*".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        num_replicas: replicas,
        republish: Some(async_nats::jetstream::stream::Republish {
            source: "bench.pf.ev.*".into(),
            destination: "bench.pf.live.{{wildcard(1)}}".into(),
            headers_only: false,
        }),
        ..Default::default()
    })
    .await?;
    let mut sub = nats
        .queue_subscribe(COMMANDS, "protocol-floor".into())
        .await?;
    nats.flush().await?;
    Ok(tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let (nats, js) = (nats.clone(), js.clone());
            // Each request in its own task, as the gate-keeper serves them.
            tokio::spawn(async move {
                let Some(reply) = msg.reply else { return };
                // The body names the gate: `<id>`.
                let id = String::from_utf8_lossy(&msg.payload).into_owned();
                let stored = match js.publish(format!("bench.pf.ev.{id}"), msg.payload).await {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                };
                let answer: &'static [u8] = if stored { b"ok" } else { b"err" };
                let _ = nats.publish(reply, answer.into()).await;
            });
        }
    }))
}

/// One live subscription for every waiter, as moira's client has.
struct Live {
    waiting: Arc<Mutex<HashMap<String, tokio::sync::oneshot::Sender<()>>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Live {
    async fn start(url: &str) -> anyhow::Result<Live> {
        let nats = nats_connect(url).await?;
        let mut sub = nats.subscribe("bench.pf.live.>").await?;
        nats.flush().await?;
        let waiting: Arc<Mutex<HashMap<String, tokio::sync::oneshot::Sender<()>>>> = Arc::default();
        let w = waiting.clone();
        let task = tokio::spawn(async move {
            let _keep = nats;
            while let Some(msg) = sub.next().await {
                let id = msg.subject.rsplit('.').next().unwrap_or("").to_string();
                if let Some(tx) = w.lock().unwrap_or_else(|p| p.into_inner()).remove(&id) {
                    let _ = tx.send(());
                }
            }
        });
        Ok(Live {
            waiting,
            _task: task,
        })
    }

    /// Registers a waiter for `id` before the write that wakes it.
    fn follow(&self, id: &str) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), tx);
        rx
    }
}

async fn request(nats: &async_nats::Client, id: &str) -> anyhow::Result<()> {
    let reply = nats
        .request(COMMANDS, id.to_string().into_bytes().into())
        .await?;
    anyhow::ensure!(&reply.payload[..] == b"ok", "the floor responder failed");
    Ok(())
}

/// The same timing as moira's decision latency: from sending the request
/// until the waiter on another connection has the republished copy.
/// `replicas` is the stream's, as the gate stream's on the same broker.
pub(crate) async fn protocol_floor_latency(
    url: &str,
    n: usize,
    replicas: usize,
) -> anyhow::Result<Vec<Duration>> {
    let _responder = AbortOnDrop(responder(url, replicas).await?);
    let live = Live::start(url).await?;
    let sender = nats_connect(url).await?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 50 {
        let id = format!("l{i}");
        let woken = live.follow(&id);
        let t0 = Instant::now();
        request(&sender, &id).await?;
        woken.await.context("the live subscription ended")?;
        if i >= 50 {
            out.push(t0.elapsed());
        }
    }
    out.sort();
    Ok(out)
}

/// The same work as moira's lifecycles: two request round trips (open and
/// decide) and the waiter woken by the second, from `concurrency` tasks
/// over four sender connections.
pub(crate) async fn protocol_floor_lifecycles(
    url: &str,
    n: usize,
    concurrency: usize,
    replicas: usize,
) -> anyhow::Result<f64> {
    let _responder = AbortOnDrop(responder(url, replicas).await?);
    let live = Arc::new(Live::start(url).await?);
    let mut senders = Vec::new();
    for _ in 0..4 {
        senders.push(nats_connect(url).await?);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (c, live, next) = (
            senders[w % senders.len()].clone(),
            live.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                request(&c, &format!("o{i}")).await?;
                let id = format!("d{i}");
                let woken = live.follow(&id);
                request(&c, &id).await?;
                woken.await.context("the live subscription ended")?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// Stops the responder when a measurement ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
