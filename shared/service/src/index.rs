//! Keeping the read model (`MOIRA_INDEX`, see `moira_client::index`) up
//! to date. Gate-keepers project gate events and runners project run
//! events, each through a durable consumer its copies share, so each event
//! is projected once by whichever copy is alive; one that dies before it
//! acknowledges leaves the event to be delivered again.
//!
//! A projection is idempotent: it stores the summary of the gate's (or
//! run's) state as of its latest event, never an older one than stored
//! (the write is checked against the entry it replaces), and acknowledges
//! the event only once the entry reflects it. Events of one id are handled
//! one at a time within a process; across processes the checked write
//! settles races. A gate's next event usually applies to the state this
//! process holds (its `prev` names the last event seen), so only the write
//! costs a round trip; otherwise the gate's events are read again. A new
//! summary waits a few milliseconds before it is written, and events of
//! the same id that arrive meanwhile join that one write.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, Consumer};
use async_nats::jetstream::AckKind;
use tokio::sync::Semaphore;
use tokio_util::bytes::Bytes;
use tokio_util::sync::CancellationToken;

use moira_client::index::Put;
use moira_client::runs::{RunEntry, RunView};
use moira_client::{Client, ClientError, GateState, GateSummary};
use moira_protocol::event::Decoded;
use moira_protocol::gate::apply;
use moira_protocol::statement::sha256_hex;
use moira_protocol::wire::{self, streams::index_consumer_config};
use moira_protocol::{Envelope, GateEvent};

use crate::feed::DurableFeed;

/// Events projected at once by one process.
const IN_FLIGHT: usize = 256;
/// Events taken and not yet finished, including those whose write waits
/// to coalesce (above the consumer's `max_ack_pending`, so never reached).
const STARTED_MAX: usize = 25_000;
/// How long a new summary waits before it is written, so that events of
/// one id that come close together (a gate opened and decided at once by
/// a tool, a run's steps) cost one write instead of one each. A list
/// right after a change waits this much longer for the projector.
const COALESCE: Duration = Duration::from_millis(20);
/// Ids whose state a projector keeps between events (waiting gates and
/// runs in progress; ended ones are let go at once).
const CACHED: usize = 20_000;

/// What an entry says, ready to store.
pub struct Projected {
    pub status: &'static str,
    pub body: Bytes,
    pub last_seq: u64,
    pub ended: bool,
}

/// A projection read from the events, and the state to keep for the
/// next event.
pub type Read<S> = (Projected, Option<S>);

/// One kind of thing the read model holds.
pub trait Source: Send + Sync + 'static {
    /// What a projector remembers of one id between its events.
    type State: Send + 'static;
    const KIND: &'static str;
    const STREAM: &'static str;
    const EVENTS: &'static str;
    const CONSUMER: &'static str;
    /// The id an event subject names.
    fn id(subject: &str) -> Option<String>;
    /// The projection after event `seq`, from the state held, when the
    /// event follows it directly; `None` to read the id's events again.
    fn advance(state: &mut Option<Self::State>, seq: u64, payload: &[u8]) -> Option<Projected>;
    /// The projection from the id's events as the stream leader has them;
    /// `None` when it has none that make a state.
    fn read(
        client: &Client,
        id: &str,
    ) -> impl Future<Output = Result<Option<Read<Self::State>>, ClientError>> + Send;
}

/// Gates: the summary of `moira gate list`.
pub struct Gates;

pub struct GateHeld {
    state: GateState,
    /// The hex SHA-256 of the last event applied (what the next one's
    /// `prev` names).
    digest: String,
}

pub fn gate_projection(state: &GateState, last_seq: u64) -> Projected {
    let summary = GateSummary::of(state, last_seq);
    Projected {
        status: state.status.as_str(),
        body: serde_json::to_vec(&summary).unwrap_or_default().into(),
        last_seq,
        ended: state.status.is_terminal(),
    }
}

impl Source for Gates {
    type State = GateHeld;
    const KIND: &'static str = wire::INDEX_GATE;
    const STREAM: &'static str = wire::GATES_STREAM;
    const EVENTS: &'static str = wire::GATE_EVENTS_ALL;
    const CONSUMER: &'static str = wire::INDEX_GATES_CONSUMER;

    fn id(subject: &str) -> Option<String> {
        wire::gate_id_from_subject(subject).map(|id| id.to_string())
    }

    fn advance(held: &mut Option<GateHeld>, seq: u64, payload: &[u8]) -> Option<Projected> {
        let Ok(Decoded::Event(env)) = Envelope::decode(payload) else {
            return None;
        };
        let follows = match (held.as_ref(), env.prev.as_deref()) {
            (Some(h), Some(prev)) => h.digest == prev,
            // A gate's first event.
            (None, None) => matches!(env.event, GateEvent::GateOpened { .. }),
            _ => false,
        };
        if !follows {
            return None;
        }
        let mut state = held.take().map(|h| h.state);
        apply(&mut state, &env);
        let state = state?;
        let p = gate_projection(&state, seq);
        *held = Some(GateHeld {
            state,
            digest: sha256_hex(payload),
        });
        Some(p)
    }

    async fn read(
        client: &Client,
        id: &str,
    ) -> Result<Option<(Projected, Option<GateHeld>)>, ClientError> {
        let Ok(gate) = id.parse() else {
            return Ok(None);
        };
        let (events, last_seq) = client.read_events_fresh(gate).await?;
        let digest = events.last().and_then(|e| e.digest.clone());
        let Some(state) = moira_client::fold_stored(&events) else {
            return Ok(None);
        };
        let p = gate_projection(&state, last_seq);
        Ok(Some((p, digest.map(|digest| GateHeld { state, digest }))))
    }
}

/// Runs: each run's view, as `moira run list` prints it.
pub struct Runs;

pub fn run_projection(view: RunView, last_seq: u64) -> Projected {
    let status = view.status.as_str();
    let ended = view.status.is_terminal();
    let entry = RunEntry {
        last_seq,
        run: view,
    };
    Projected {
        status,
        body: serde_json::to_vec(&entry).unwrap_or_default().into(),
        last_seq,
        ended,
    }
}

impl Source for Runs {
    type State = ();
    const KIND: &'static str = wire::INDEX_RUN;
    const STREAM: &'static str = wire::RUNS_STREAM;
    const EVENTS: &'static str = wire::RUN_EVENTS_ALL;
    const CONSUMER: &'static str = wire::INDEX_RUNS_CONSUMER;

    fn id(subject: &str) -> Option<String> {
        wire::run_id_from_event_subject(subject).map(str::to_string)
    }

    /// A run's view covers its whole workflow, so it is read each time.
    fn advance(_: &mut Option<()>, _: u64, _: &[u8]) -> Option<Projected> {
        None
    }

    async fn read(
        client: &Client,
        id: &str,
    ) -> Result<Option<(Projected, Option<()>)>, ClientError> {
        Ok(client
            .read_run_fresh(id)
            .await?
            .map(|r| (run_projection(RunView::from(&r.state), r.last_seq), None)))
    }
}

struct Slot<S> {
    state: Option<S>,
    /// The index sequence of the entry this process last stored, its
    /// status, and the event it reflects.
    index_seq: u64,
    status: Option<&'static str>,
    last_seq: u64,
    /// The last event applied to `state`, and its projection while it
    /// waits to be written.
    applied: u64,
    pending: Option<Projected>,
}

impl<S> Default for Slot<S> {
    fn default() -> Self {
        Slot {
            state: None,
            index_seq: 0,
            status: None,
            last_seq: 0,
            applied: 0,
            pending: None,
        }
    }
}

type Slots<S> = Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot<S>>>>>;

/// Creates the index stream if missing and the source's shared consumer.
/// A new index stream (a first start, or one dropped to be rebuilt) gets
/// a new consumer too, so the whole history is projected into it.
pub async fn start<S: Source>(
    client: &Client,
    replicas: usize,
) -> anyhow::Result<Consumer<pull::Config>> {
    let js = async_nats::jetstream::new(client.nats().clone());
    let created = moira_client::streams::patiently("creating the read model stream", || async {
        moira_client::streams::ensure_index_stream(&js, replicas)
            .await
            .map_err(anyhow::Error::from)
    })
    .await?;
    if created {
        if let Ok(stream) = js.get_stream(S::STREAM).await {
            if stream.delete_consumer(S::CONSUMER).await.is_ok() {
                tracing::info!(
                    consumer = S::CONSUMER,
                    "a new read model stream: projecting the whole history again"
                );
            }
        }
    }
    let config = index_consumer_config(S::CONSUMER, S::EVENTS);
    moira_client::streams::patiently(
        &format!("creating the consumer {}", S::CONSUMER),
        || async {
            js.get_stream(S::STREAM)
                .await
                .map_err(anyhow::Error::from)?
                .get_or_create_consumer(S::CONSUMER, config.clone())
                .await
                .map_err(anyhow::Error::from)
        },
    )
    .await
}

/// Projects events until `shutdown`, then finishes those in flight.
pub async fn project<S: Source>(
    client: Client,
    consumer: Consumer<pull::Config>,
    shutdown: CancellationToken,
) {
    let slots: Arc<Slots<S::State>> = Arc::default();
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    // Every projection started and not finished, waiting or working.
    let started = Arc::new(Semaphore::new(STARTED_MAX));
    let mut feed = DurableFeed::new(S::CONSUMER, consumer);
    let projected = crate::ops::metrics()
        .index_projected
        .get_or_create(&crate::ops::KindLabels {
            kind: S::KIND.to_string(),
        })
        .clone();
    while let Some(msg) = feed.next(&shutdown).await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let Ok(one_more) = started.clone().acquire_owned().await else {
            break;
        };
        let (client, slots, projected) = (client.clone(), slots.clone(), projected.clone());
        let permits = permits.clone();
        tokio::spawn(async move {
            let _started = one_more;
            let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
            let Some(id) = S::id(&msg.subject) else {
                let _ = msg.ack().await;
                return;
            };
            match one::<S>(&client, &slots, &id, seq, &msg.payload, (&permits, permit)).await {
                Ok(()) => {
                    projected.inc();
                    let _ = msg.ack().await;
                }
                Err(e) => {
                    tracing::warn!(
                        kind = S::KIND,
                        id,
                        seq,
                        "cannot project an event: {e}; it will come again"
                    );
                    let _ = msg
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                        .await;
                }
            }
        });
    }
    // Wait for the projections in flight.
    let _ = started.acquire_many(STARTED_MAX as u32).await;
}

/// `work` bounds the projections doing work at once; the permit held is
/// given back while the write waits to coalesce, so waiting writes do not
/// hold back the events behind them (the consumer's `max_ack_pending`
/// bounds how many wait).
async fn one<S: Source>(
    client: &Client,
    slots: &Slots<S::State>,
    id: &str,
    seq: u64,
    payload: &[u8],
    work: (&Arc<Semaphore>, tokio::sync::OwnedSemaphorePermit),
) -> Result<(), ClientError> {
    let (permits, permit) = work;
    let slot = {
        let mut map = slots.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= CACHED {
            // Keep what is in use; let the rest go.
            map.retain(|_, s| Arc::strong_count(s) > 1);
        }
        map.entry(id.to_string()).or_default().clone()
    };
    let due = apply_one::<S>(&mut *slot.lock().await, seq, payload);
    if !due {
        return Ok(());
    }
    // Let events of the same id that come meanwhile join this write.
    drop(permit);
    tokio::time::sleep(COALESCE).await;
    let _permit = permits.acquire().await;
    let ended = {
        let mut held = slot.lock().await;
        match write_pending::<S>(client, &mut held, id, seq).await {
            Ok(ended) => ended,
            Err(e) => {
                *held = Slot::default();
                return Err(e);
            }
        }
    };
    if ended {
        let mut map = slots.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(id).is_some_and(|s| Arc::strong_count(s) <= 2) {
            map.remove(id);
        }
    }
    Ok(())
}

/// Applies an event to the state held when it follows it, and says
/// whether a write is due for it: not when an entry that reflects it is
/// stored already. The write (or, for an event that does not follow, the
/// read and the write) comes later.
fn apply_one<S: Source>(slot: &mut Slot<S::State>, seq: u64, payload: &[u8]) -> bool {
    if seq != 0 && seq <= slot.applied {
        // Already applied (a redelivery, or read along with an earlier
        // one): stored, or waiting to be.
        return seq > slot.last_seq;
    }
    if let Some(p) = S::advance(&mut slot.state, seq, payload) {
        slot.applied = p.last_seq;
        slot.pending = Some(p);
    }
    // Otherwise the id's events are read when the write is due, once for
    // all of its events that came meanwhile (a run's are always read).
    true
}

/// Stores what waits to be written, if no write since covers event `seq`.
async fn write_pending<S: Source>(
    client: &Client,
    slot: &mut Slot<S::State>,
    id: &str,
    seq: u64,
) -> Result<bool, ClientError> {
    // A sequence of 0 (none known) is treated as newer than anything held.
    let covered = |slot: &Slot<S::State>| seq != 0 && seq <= slot.last_seq;
    if covered(slot) {
        return Ok(false);
    }
    let mut ended = false;
    if let Some(p) = slot.pending.take() {
        ended = store::<S>(client, slot, id, p).await?;
    }
    if !covered(slot) {
        // Not applied to the state held (it did not follow it, or the slot
        // was reset by a failure meanwhile): start from the events.
        ended = reread_and_store::<S>(client, slot, id).await?;
    }
    Ok(ended)
}

/// Reads the id's events again and stores what they say, unless the
/// stored entry is as new. Returns whether the id has ended (nothing will
/// follow, usually).
async fn reread_and_store<S: Source>(
    client: &Client,
    slot: &mut Slot<S::State>,
    id: &str,
) -> Result<bool, ClientError> {
    let Some((p, state)) = S::read(client, id).await? else {
        return Ok(false);
    };
    slot.state = state;
    slot.pending = None;
    slot.applied = p.last_seq;
    let current = client.index_current(S::KIND, id).await?;
    if let Some(cur) = &current {
        if cur.last_seq >= p.last_seq {
            // Stored already; still tidy, as a projector may have died
            // between storing and tidying.
            client.index_tidy(S::KIND, id).await?;
            slot.index_seq = cur.index_seq;
            slot.status = None;
            slot.last_seq = cur.last_seq;
            slot.applied = slot.applied.max(cur.last_seq);
            return Ok(p.ended);
        }
    }
    slot.index_seq = current.map(|c| c.index_seq).unwrap_or(0);
    slot.status = None;
    store::<S>(client, slot, id, p).await
}

/// Writes a projection, checked against the entry this process last
/// stored (`slot.index_seq`), and tidies the entry it replaced.
async fn store<S: Source>(
    client: &Client,
    slot: &mut Slot<S::State>,
    id: &str,
    p: Projected,
) -> Result<bool, ClientError> {
    let (expected, known_status) = (slot.index_seq, slot.status);
    let put = client
        .index_put(S::KIND, id, p.status, p.body, p.last_seq, expected)
        .await?;
    match put {
        Put::Stored {
            seq: index_seq,
            replaced,
        } => {
            // Nothing to tidy when nothing was stored before (the checked
            // write proved it) or the status stayed (the entry replaced
            // its predecessor on the same subject).
            let same_subject = replaced == expected && known_status == Some(p.status);
            if replaced != 0 && !same_subject {
                client.index_tidy(S::KIND, id).await?;
            }
            slot.index_seq = index_seq;
            slot.status = Some(p.status);
            slot.last_seq = p.last_seq;
        }
        Put::Newer => {
            // Another projector is ahead: forget what is held here.
            client.index_tidy(S::KIND, id).await?;
            *slot = Slot::default();
        }
    }
    Ok(p.ended)
}

/// Every 10 s until `shutdown`, counts the gates the read model holds as
/// waiting into `moira_gates_waiting` (a consumer over that status only:
/// the broker counts the subjects, nothing is delivered).
pub fn watch_waiting(client: Client, shutdown: CancellationToken) {
    use async_nats::jetstream::consumer::DeliverPolicy;
    let gauge = crate::ops::metrics().gates_waiting.clone();
    tokio::spawn(async move {
        let js = async_nats::jetstream::new(client.nats().clone());
        loop {
            if let Ok(stream) = js.get_stream_no_info(wire::INDEX_STREAM).await {
                let config = pull::Config {
                    filter_subject: wire::index_entries_in(wire::INDEX_GATE, Some("waiting")),
                    deliver_policy: DeliverPolicy::LastPerSubject,
                    inactive_threshold: Duration::from_secs(30),
                    ..Default::default()
                };
                if let Ok(mut c) = stream.create_consumer(config).await {
                    if let Ok(info) = c.info().await {
                        gauge.set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
                        let name = info.name.clone();
                        let _ = stream.delete_consumer(&name).await;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            }
        }
    });
}

/// What `moira admin reindex` found for one kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Gates or runs folded from the events.
    pub checked: usize,
    /// Entries missing, stale or duplicated (repaired unless only checking).
    pub differed: usize,
    /// Entries of ids that have no events (removed unless only checking).
    pub orphans: usize,
}

/// Compares the read model of `S` with the fold of every event and, unless
/// `check_only`, repairs what differs: missing or stale entries are written
/// (checked writes, so a projector running meanwhile is never undone),
/// duplicates tidied, entries without events removed. When no projector
/// consumer exists yet, one is made that starts after the events folded.
pub async fn reindex<S: Source>(
    client: &Client,
    want: Vec<(String, Projected)>,
    last_event: u64,
    check_only: bool,
) -> anyhow::Result<Report> {
    use futures_util::{stream, StreamExt, TryStreamExt};
    let js = async_nats::jetstream::new(client.nats().clone());
    if !check_only {
        let replicas = moira_client::streams::replicas_in_use(&js).await;
        moira_client::streams::ensure_index_stream(&js, replicas).await?;
    }
    let mut stored: HashMap<String, Vec<moira_client::index::Entry>> = HashMap::new();
    for e in client
        .index_entries(S::KIND, None)
        .await?
        .unwrap_or_default()
    {
        stored.entry(e.id.clone()).or_default().push(e);
    }
    let mut report = Report {
        checked: want.len(),
        ..Report::default()
    };
    let mut repairs = Vec::new();
    for (id, p) in want {
        let have = stored.remove(&id).unwrap_or_default();
        let same = matches!(have.as_slice(), [e] if e.status == p.status && e.body == p.body);
        if !same {
            let expected = have.iter().map(|e| e.index_seq).max().unwrap_or(0);
            let tidy = have.len() > 1 || have.iter().any(|e| e.status != p.status);
            repairs.push((id, p, expected, tidy));
        }
    }
    report.differed = repairs.len();
    report.orphans = stored.len();
    if check_only {
        return Ok(report);
    }
    stream::iter(repairs)
        .map(|(id, p, expected, tidy)| async move {
            let put = client
                .index_put(S::KIND, &id, p.status, p.body, p.last_seq, expected)
                .await?;
            let clean = matches!(put, Put::Stored { replaced, .. } if replaced == expected);
            if tidy || !clean {
                client.index_tidy(S::KIND, &id).await?;
            }
            Ok::<_, ClientError>(())
        })
        .buffer_unordered(256)
        .try_collect::<Vec<()>>()
        .await?;
    for id in stored.keys() {
        client.index_remove(S::KIND, id).await?;
    }
    let stream = js.get_stream(S::STREAM).await?;
    if stream.consumer_info(S::CONSUMER).await.is_err() {
        let mut config = index_consumer_config(S::CONSUMER, S::EVENTS);
        config.deliver_policy = async_nats::jetstream::consumer::DeliverPolicy::ByStartSequence {
            start_sequence: last_event + 1,
        };
        stream.get_or_create_consumer(S::CONSUMER, config).await?;
    }
    Ok(report)
}

/// [`reindex`] for gates: folds every gate event.
pub async fn reindex_gates(client: &Client, check_only: bool) -> anyhow::Result<Report> {
    let gates = client.fold_all_gates().await?;
    let last = gates.iter().map(|(_, seq)| *seq).max().unwrap_or(0);
    let want = gates
        .iter()
        .map(|(g, seq)| (g.id.to_string(), gate_projection(g, *seq)))
        .collect();
    reindex::<Gates>(client, want, last, check_only).await
}

/// [`reindex`] for runs: folds every run event.
pub async fn reindex_runs(client: &Client, check_only: bool) -> anyhow::Result<Report> {
    let runs = client.fold_all_runs().await?;
    let last = runs.iter().map(|r| r.last_seq).max().unwrap_or(0);
    let want = runs
        .into_iter()
        .map(|r| {
            let id = r.state.id.clone();
            (id, run_projection(RunView::from(&r.state), r.last_seq))
        })
        .collect();
    reindex::<Runs>(client, want, last, check_only).await
}
