//! Checking a gate's trail from the stream alone, without a gate-keeper:
//! the hash chain, each signature, the signer's key against the approvers
//! registry, and each event against the gate's policy (replayed through
//! the same `decide` the gate-keepers run).

use moira_client::signing;
use moira_client::{Client, ClientError};
use moira_protocol::event::{Decoded, GateEvent};
use moira_protocol::gate::{apply, decide, timed_out_event, Context, Decision, Policy};
use moira_protocol::statement::{recorded, sha256_hex, statement};
use moira_protocol::subjects::{gate_events, GATES_STREAM};
use moira_protocol::{Envelope, GateId, GateState};

use crate::Registry;

/// Whether commands (for a gate-keeper) and decisions (for a runner) must
/// be signed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Signatures {
    /// Unsigned commands are accepted (dev, demo); signatures that come
    /// along are still checked.
    #[default]
    Off,
    /// Every command on the public subject must be signed by a key the
    /// approvers registry lists for its actor; a runner acts only on
    /// decisions whose trail verifies.
    Require,
}

/// What was found about one stored event.
#[derive(Debug, Clone)]
pub struct Finding {
    pub seq: u64,
    pub kind: String,
    pub actor: String,
    /// The signing key's fingerprint, when signed and good.
    pub signer: Option<String>,
    /// What does not hold; empty when the event verifies.
    pub problems: Vec<String>,
}

impl Finding {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The whole trail of one gate.
#[derive(Debug, Clone)]
pub struct Report {
    pub gate_id: GateId,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn ok(&self) -> bool {
        !self.findings.is_empty() && self.findings.iter().all(Finding::ok)
    }
}

/// How strict to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Events by people must be signed (service events and fired timeouts
    /// need not).
    pub require_signatures: bool,
}

/// Whether the event was authored by a service rather than a person.
fn by_service(env: &Envelope) -> bool {
    env.actor.starts_with("moira:")
}

/// Reads and checks one gate's trail.
pub async fn verify_gate(
    client: &Client,
    gate_id: GateId,
    registry: &Registry,
    rules: Rules,
) -> Result<Report, ClientError> {
    let (raw, _) = client
        .read_subject(GATES_STREAM, &gate_events(&gate_id))
        .await?;
    if raw.is_empty() {
        return Err(ClientError::NotFound(gate_id));
    }
    let mut findings = Vec::new();
    let mut state: Option<GateState> = None;
    let mut prev_digest: Option<String> = None;
    for (seq, payload) in &raw {
        let digest = sha256_hex(payload);
        let env = match Envelope::decode(payload) {
            Ok(Decoded::Event(env)) => env,
            Ok(Decoded::Unknown { kind, .. }) => {
                findings.push(Finding {
                    seq: *seq,
                    kind,
                    actor: String::new(),
                    signer: None,
                    problems: vec!["an event kind this build does not know".into()],
                });
                prev_digest = Some(digest);
                continue;
            }
            Err(e) => {
                findings.push(Finding {
                    seq: *seq,
                    kind: "?".into(),
                    actor: String::new(),
                    signer: None,
                    problems: vec![format!("not a moira event: {e}")],
                });
                prev_digest = Some(digest);
                continue;
            }
        };
        let mut f = Finding {
            seq: *seq,
            kind: env.event.kind().to_string(),
            actor: env.actor.clone(),
            signer: None,
            problems: Vec::new(),
        };
        check_event(
            &env,
            state.as_ref(),
            prev_digest.as_deref(),
            registry,
            rules,
            &mut f,
        );
        findings.push(f);
        if state.as_ref().is_none_or(|s| !s.status.is_terminal()) {
            apply(&mut state, &env);
        }
        prev_digest = Some(digest);
    }
    Ok(Report { gate_id, findings })
}

fn check_event(
    env: &Envelope,
    before: Option<&GateState>,
    prev_digest: Option<&str>,
    registry: &Registry,
    rules: Rules,
    f: &mut Finding,
) {
    let p = &mut f.problems;
    if let Some(s) = before.filter(|s| s.status.is_terminal()) {
        p.push(format!(
            "stored after the gate was already {}",
            s.status.as_str()
        ));
        return;
    }
    // The chain: each event names the one before it. A fired timeout was
    // prepared when the gate opened, so it must be exactly those bytes.
    if let GateEvent::GateTimedOut { .. } = env.event {
        match before {
            Some(s) => match s.timeout_at {
                Some(at) => {
                    let prepared = timed_out_event(s.id, at, &s.spec);
                    if &prepared != env {
                        p.push("not the timeout prepared when the gate opened".into());
                    }
                }
                None => p.push("a timeout on a gate that has no deadline".into()),
            },
            None => p.push("a timeout before the gate was opened".into()),
        }
        return;
    }
    match (before, &env.event) {
        (None, GateEvent::GateOpened { .. }) if env.prev.is_none() => {}
        (None, _) => p.push(
            "the first event of a gate must be its GateOpened, naming no previous event".into(),
        ),
        (Some(_), _) if env.prev.as_deref() != prev_digest => p.push(format!(
            "the hash chain breaks here: it names {} as the previous event, the stream holds {}",
            env.prev.as_deref().unwrap_or("nothing"),
            prev_digest.unwrap_or("nothing")
        )),
        _ => {}
    }
    // The signature.
    let Some((cmd, about)) = recorded(before, env) else {
        p.push("the event cannot be matched to a command".into());
        return;
    };
    match (&env.signature, env.signed_at) {
        (Some(sig), Some(at)) => {
            let bytes = statement(&cmd, &about, env.id, at);
            match signing::verify(&bytes, sig) {
                Ok(key) => {
                    let fp = signing::fingerprint(&key);
                    if env.signer.as_deref().is_some_and(|s| s != fp) {
                        p.push(format!("it names signer {:?} but {fp} signed", env.signer));
                    }
                    // A runner signs its gate opens and cancels with its
                    // own service key.
                    let service = by_service(env) || is_runner_open(env);
                    if service && registry.service_of(&key).is_none() {
                        p.push(format!(
                            "the key {fp} is not a service's key in the registry"
                        ));
                    }
                    if !service && !registry.has_key(&env.actor, &key) {
                        p.push(format!(
                            "the key {fp} is not one of {}'s keys in the registry",
                            env.actor
                        ));
                    }
                    f.signer = Some(fp);
                }
                Err(e) => p.push(format!("the signature does not verify: {e}")),
            }
        }
        (Some(_), None) => p.push("signed, but without its signing time".into()),
        (None, _) if rules.require_signatures => p.push("not signed".into()),
        (None, _) => {}
    }
    // The policy, replayed.
    let ctx = Context {
        policy: Policy::dev(),
        service: by_service(env) || is_runner_open(env),
        now: env.at,
        command_id: env.id,
        new_gate_id: env.gate_id,
        actor_roles: registry.roles_of(&env.actor),
        signer: f.signer.clone(),
        registry: None,
        prev: None,
    };
    match decide(before, &cmd, &ctx) {
        Ok(Decision::Append(events)) => {
            if events.first().map(|e| e.event.kind()) != Some(env.event.kind()) {
                p.push(format!(
                    "the gate's policy makes this command a {}, not a {}",
                    events.first().map(|e| e.event.kind()).unwrap_or("nothing"),
                    env.event.kind()
                ));
            }
        }
        Ok(Decision::AlreadyDone) => p.push("a repeat of a command already applied".into()),
        Err(e) => p.push(format!("the gate's policy refuses it: {}", e.message)),
    }
}

/// A runner's open of a run gate comes on the services' subject.
fn is_runner_open(env: &Envelope) -> bool {
    matches!(env.event, GateEvent::GateOpened { ref spec, .. } if spec.run_id.is_some())
}

/// One signed decision, as a third party needs it to check the signature
/// with plain `ssh-keygen -Y verify`.
#[derive(Debug, Clone)]
pub struct Exported {
    pub seq: u64,
    pub kind: String,
    pub actor: String,
    /// The statement file, and its signature beside it (`.sig`).
    pub statement: std::path::PathBuf,
    pub signature: std::path::PathBuf,
}

/// Writes, for each signed event of a gate, its statement bytes and `.sig`,
/// plus `allowed_signers` (the signers' keys from the approvers registry,
/// as `ssh-keygen -Y verify -f` reads them) and `opened.msgpack`, the bytes
/// whose SHA-256 every decision's statement names as its subject.
pub async fn export(
    client: &Client,
    gate_id: GateId,
    registry: &Registry,
    dir: &std::path::Path,
) -> Result<Vec<Exported>, ClientError> {
    let io =
        |e: std::io::Error| ClientError::Invalid(format!("cannot write to {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let (raw, _) = client
        .read_subject(GATES_STREAM, &gate_events(&gate_id))
        .await?;
    if raw.is_empty() {
        return Err(ClientError::NotFound(gate_id));
    }
    let mut state: Option<GateState> = None;
    let mut out = Vec::new();
    let mut signers = std::collections::BTreeSet::new();
    for (seq, payload) in &raw {
        let Ok(Decoded::Event(env)) = Envelope::decode(payload) else {
            continue;
        };
        if let (Some(sig), Some(at), Some((cmd, about))) = (
            &env.signature,
            env.signed_at,
            recorded(state.as_ref(), &env),
        ) {
            let name = format!("{seq:06}-{}", env.event.kind());
            let statement_path = dir.join(format!("{name}.statement"));
            let sig_path = dir.join(format!("{name}.statement.sig"));
            std::fs::write(&statement_path, statement(&cmd, &about, env.id, at)).map_err(io)?;
            std::fs::write(&sig_path, sig).map_err(io)?;
            for key in registry.keys_of(&env.actor) {
                signers.insert(format!("{} namespaces=\"moira\" {key}", env.actor));
            }
            out.push(Exported {
                seq: *seq,
                kind: env.event.kind().to_string(),
                actor: env.actor.clone(),
                statement: statement_path,
                signature: sig_path,
            });
        }
        if state.as_ref().is_none_or(|s| !s.status.is_terminal()) {
            apply(&mut state, &env);
        }
    }
    let lines: String = signers.into_iter().map(|l| l + "\n").collect();
    std::fs::write(dir.join("allowed_signers"), lines).map_err(io)?;
    if let Some(s) = &state {
        std::fs::write(dir.join("opened.msgpack"), s.opened_bytes()).map_err(io)?;
    }
    Ok(out)
}
