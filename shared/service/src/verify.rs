//! Checking a gate's trail from the stream alone, without a gate-keeper:
//! the hash chain, each signature, the signer's key against the approvers
//! registry, and each event against the gate's policy (replayed through
//! the same `decide` the gate-keepers run).

use moira_client::signing;
use moira_client::{Client, ClientError};
use moira_protocol::event::{Decoded, GateEvent};
use moira_protocol::gate::{apply, decide, timed_out_event, Context, Decision, Policy};
use moira_protocol::statement::{recorded, sha256_hex, statement, timeout_statement};
use moira_protocol::wire::{gate_events, GATES_STREAM};
use moira_protocol::{Envelope, GateId, GateState};

use std::collections::BTreeMap;

use moira_protocol::run::{apply_run, RunEnvelope, RunEvent, RunSignature, RunState};
use moira_protocol::statement::{run_id_for, run_statement, RunAbout, RunVerb};
use moira_protocol::wire::{run_events, RUNS_STREAM};
use moira_protocol::{CommandError, ErrorCode};

use crate::Registry;

/// How far a statement's signing time may be from the receiving service's
/// clock (a gate-keeper's or a runner's).
pub const SIGNATURE_SKEW_MS: u64 = 5 * 60 * 1000;

/// Refuses a statement signed more than [`SIGNATURE_SKEW_MS`] from `now`.
pub fn check_fresh(at: u64, now: u64) -> Result<(), CommandError> {
    if now.abs_diff(at) <= SIGNATURE_SKEW_MS {
        return Ok(());
    }
    Err(CommandError::new(
        ErrorCode::Stale,
        format!(
            "the statement was signed at {}, more than {} minutes from now; sign it again",
            moira_protocol::time::rfc3339(at),
            SIGNATURE_SKEW_MS / 60_000
        ),
    ))
}

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
    /// Every event must be signed: people's with their own keys, a
    /// runner's and a fired timeout with a service key.
    pub require_signatures: bool,
}

/// The registries to check a trail against: the one in force now, and
/// earlier ones by their revision, so each event is checked against the
/// registry it records (a key removed since still verifies what it signed
/// while it was listed).
#[derive(Debug, Clone, Default)]
pub struct Registries {
    pub current: std::sync::Arc<Registry>,
    pub past: std::collections::HashMap<String, std::sync::Arc<Registry>>,
}

impl Registries {
    /// Just one registry.
    pub fn only(r: std::sync::Arc<Registry>) -> Registries {
        Registries {
            current: r,
            past: Default::default(),
        }
    }

    /// The registry an event recorded (by revision), else the current one.
    pub fn at(&self, revision: Option<&str>) -> &Registry {
        revision
            .and_then(|r| self.past.get(r))
            .unwrap_or(&self.current)
    }
}

/// Whether the event was authored by a service rather than a person.
fn by_service(env: &Envelope) -> bool {
    env.actor.starts_with("moira:")
}

/// How much earlier than its deadline a fired timeout may be stored
/// (rounding of the broker's clock), before it counts as written by hand.
const TIMEOUT_EARLY_MS: u64 = 1_000;

/// Reads and checks one gate's trail.
pub async fn verify_gate(
    client: &Client,
    gate_id: GateId,
    registries: &Registries,
    rules: Rules,
) -> Result<Report, ClientError> {
    // Fresh: a runner acts on what this finds.
    let (raw, _) = client
        .read_subject_fresh(GATES_STREAM, &gate_events(&gate_id))
        .await?;
    if raw.is_empty() {
        return Err(ClientError::NotFound(gate_id));
    }
    let mut findings = Vec::new();
    let mut state: Option<GateState> = None;
    let mut prev_digest: Option<String> = None;
    // A fired timeout was prepared under the registry of the gate's open.
    let mut open_revision: Option<String> = None;
    for stored in &raw {
        let (seq, payload) = (&stored.seq, &stored.payload);
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
        if state.is_none() {
            open_revision = env.registry.clone();
        }
        let revision = match env.event {
            GateEvent::GateTimedOut { .. } => open_revision.as_deref(),
            _ => env.registry.as_deref(),
        };
        check_event(
            &env,
            stored.stored_at,
            state.as_ref(),
            prev_digest.as_deref(),
            registries.at(revision),
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
    stored_at: Option<u64>,
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
                    let unsigned = Envelope {
                        signature: None,
                        signed_at: None,
                        signer: None,
                        ..env.clone()
                    };
                    if prepared != unsigned {
                        p.push("not the timeout prepared when the gate opened".into());
                    }
                    // The broker's scheduler writes it at the deadline; a
                    // copy stored earlier was written by hand.
                    if let Some(t) = stored_at.filter(|t| t.saturating_add(TIMEOUT_EARLY_MS) < at) {
                        p.push(format!(
                            "stored at {}, before its deadline {}",
                            moira_protocol::time::rfc3339(t),
                            moira_protocol::time::rfc3339(at)
                        ));
                    }
                    check_timeout_signature(env, s, registry, rules, f);
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
    let mut deputy = None;
    match (&env.signature, env.signed_at) {
        (Some(sig), Some(at)) => {
            let bytes = statement(&cmd, &about, env.id, at);
            match signing::verify_signed(&bytes, sig) {
                Ok(signing::Signed { key, certificate }) => {
                    let fp = signing::fingerprint(&key);
                    if env.signer.as_deref().is_some_and(|s| s != fp) {
                        p.push(format!("it names signer {:?} but {fp} signed", env.signer));
                    }
                    // A runner signs its gate opens and cancels with its
                    // own service key.
                    let service = by_service(env) || is_runner_open(env);
                    if let (Some(cert), Some(user)) = (&certificate, &env.on_behalf_of) {
                        // A deputy: the certificate as it stood when they signed.
                        match registry.check_deputy(&env.actor, user, &key, cert, at / 1000) {
                            Ok(d) => deputy = Some(d),
                            Err(why) => p.push(why),
                        }
                    } else if certificate.is_some() {
                        p.push(
                            "signed with a certificate, but it names no one the actor acted for"
                                .into(),
                        );
                    } else if let Some(user) = &env.on_behalf_of {
                        p.push(format!(
                            "it says {} acted for {user}, but no certificate of {user}'s signed it",
                            env.actor
                        ));
                    } else if let Some(via) = &env.via {
                        // moira-web signed for the person it authenticated.
                        if let Err(why) = registry.check_attested(&env.actor, via, &key) {
                            p.push(why);
                        }
                    } else if service && registry.service_of(&key).is_none() {
                        p.push(format!(
                            "the key {fp} is not a service's key in the registry"
                        ));
                    } else if !service && !registry.has_key(&env.actor, &key) {
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
        deputy,
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

/// A fired timeout is signed by the gate-keeper that prepared it, with a
/// service key, over [`timeout_statement`] of the gate as opened.
fn check_timeout_signature(
    env: &Envelope,
    gate: &GateState,
    registry: &Registry,
    rules: Rules,
    f: &mut Finding,
) {
    let Some(sig) = &env.signature else {
        if rules.require_signatures {
            f.problems.push(
                "not signed (a gate-keeper with --key signs the timeouts it prepares)".into(),
            );
        }
        return;
    };
    let bytes = timeout_statement(env, &gate.opened_digest());
    match signing::verify(&bytes, sig) {
        Ok(key) => {
            let fp = signing::fingerprint(&key);
            if registry.service_of(&key).is_none() {
                f.problems.push(format!(
                    "the key {fp} is not a service's key in the registry"
                ));
            }
            f.signer = Some(fp);
        }
        Err(e) => f
            .problems
            .push(format!("the signature does not verify: {e}")),
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
    /// The principal to give `ssh-keygen -Y verify -I`: the actor,
    /// `moira-service:<name>` for what a service signed, or the
    /// certificate's principal (`moira:alice`) for what a deputy signed.
    pub identity: String,
    /// For a deputy's decision: the time to check their certificate at
    /// (`ssh-keygen -Y verify -O verify-time=…`), when it was signed, since
    /// by default ssh-keygen checks it at the present and it may have
    /// expired since.
    pub verify_time: Option<String>,
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
    registries: &Registries,
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
        // What was signed: a person's or runner's command, or the timeout a
        // gate-keeper prepared.
        let signed = match (&env.signature, env.signed_at, &env.event, &state) {
            (Some(sig), Some(_), GateEvent::GateTimedOut { .. }, Some(s)) => {
                Some((timeout_statement(&env, &s.opened_digest()), sig))
            }
            (Some(sig), Some(at), _, _) => recorded(state.as_ref(), &env)
                .map(|(cmd, about)| (statement(&cmd, &about, env.id, at), sig)),
            _ => None,
        };
        if let Some((statement_bytes, sig)) = signed {
            let name = format!("{seq:06}-{}", env.event.kind());
            let statement_path = dir.join(format!("{name}.statement"));
            let sig_path = dir.join(format!("{name}.statement.sig"));
            std::fs::write(&statement_path, &statement_bytes).map_err(io)?;
            std::fs::write(&sig_path, sig).map_err(io)?;
            let registry = match env.event {
                GateEvent::GateTimedOut { .. } => &registries.current,
                _ => registries.at(env.registry.as_deref()),
            };
            // A service signs as itself: its keys are listed by service,
            // under the principal `moira-service:<name>`.
            let service = by_service(&env) || is_runner_open(&env);
            // One check of the signature: whose key, and any certificate.
            let signed = signing::verify_signed(&statement_bytes, sig).ok();
            let certified = signed.as_ref().and_then(|s| s.certificate.as_ref());
            let identity = if service {
                let name = signed.as_ref().and_then(|s| registry.service_of(&s.key));
                format!("moira-service:{}", name.unwrap_or("unknown"))
            } else if let (Some(cert), Some(user)) = (certified, &env.on_behalf_of) {
                // ssh-keygen checks a certificate against the principal
                // asked for: the one of the certificate's that names the user.
                cert.valid_principals()
                    .iter()
                    .find(|p| crate::registry::deputy_principal(p).is_some_and(|(u, _)| u == user))
                    .cloned()
                    .unwrap_or_else(|| format!("{}{user}", crate::registry::DEPUTY_PRINCIPAL))
            } else {
                env.actor.clone()
            };
            if service {
                for (name, key) in registry.service_keys() {
                    signers.insert(format!("moira-service:{name} namespaces=\"moira\" {key}"));
                }
            } else if let (Some(_), Some(user)) = (certified, &env.on_behalf_of) {
                for line in registry.deputy_signers(user) {
                    signers.insert(line);
                }
            } else {
                for key in registry.keys_of(&env.actor) {
                    signers.insert(format!("{} namespaces=\"moira\" {key}", env.actor));
                }
            }
            out.push(Exported {
                seq: *seq,
                kind: env.event.kind().to_string(),
                actor: env.actor.clone(),
                identity,
                verify_time: match (certified, env.signed_at) {
                    (Some(_), Some(at)) => Some(ssh_keygen_time(at)),
                    _ => None,
                },
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

/// `YYYYMMDDHHMMSSZ` (UTC), as `ssh-keygen -O verify-time` takes it.
fn ssh_keygen_time(ms: u64) -> String {
    let text = moira_protocol::time::rfc3339(ms);
    let digits: String = text.chars().take(19).filter(char::is_ascii_digit).collect();
    format!("{digits}Z")
}

/// Checks the signature of a run command or run event against `about`:
/// a person's must be one of the actor's keys, a service's (`service`) a
/// key listed under `[services.<name>]`. Returns the key's fingerprint.
pub fn check_run_signature(
    registry: &Registry,
    about: &RunAbout<'_>,
    signature: &str,
    service: bool,
) -> Result<String, CommandError> {
    let bytes = run_statement(about);
    let key = signing::verify(&bytes, signature)
        .map_err(|e| CommandError::new(ErrorCode::BadSignature, e.to_string()))?;
    let fp = signing::fingerprint(&key);
    let allowed = if service {
        registry.service_of(&key).is_some()
    } else {
        registry.has_key(about.actor, &key)
    };
    if !allowed {
        let whose = if service {
            "a service's key (listed under [services.<name>])".to_string()
        } else {
            format!("one of {}'s keys", about.actor)
        };
        return Err(CommandError::new(
            ErrorCode::WrongKey,
            format!("the key {fp} is not {whose} in the approvers registry"),
        ));
    }
    Ok(fp)
}

/// The statement a `RunSubmitted` event was signed over.
pub fn submitted_about<'a>(run: &'a RunState, signed: &'a RunSignature) -> RunAbout<'a> {
    RunAbout {
        includes: Some(&run.includes).filter(|i| !i.is_empty()),
        verb: RunVerb::Submit,
        run_id: &run.id,
        actor: &run.submitted_by,
        workflow: &run.workflow,
        vars: &run.vars,
        step: None,
        command_id: &signed.command_id,
        at: signed.signed_at,
    }
}

/// Whether a run's submission is signed by its submitter: `Err` says why not.
pub fn check_submission(run: &RunState, registry: &Registry) -> Result<String, String> {
    let signed = run
        .submitted_signature
        .as_ref()
        .ok_or_else(|| "its submission is not signed".to_string())?;
    if run_id_for(&signed.command_id) != run.id {
        return Err("its submission's command id does not give its run id".into());
    }
    check_run_signature(
        registry,
        &submitted_about(run, signed),
        &signed.signature,
        false,
    )
    .map_err(|e| format!("its submission's signature does not hold: {}", e.message))
}

/// Where a run came from, checked: a root run's submission is signed by
/// its submitter ([`check_submission`]); a child run (a `call:` step's) is
/// named by its parent's step, has the parent's submitter and bundle, and
/// is the file of that bundle the step calls, and so on up to the root,
/// whose signature covers every file of the bundle. Returns the root
/// signer's fingerprint.
pub async fn check_run_origin(
    client: &Client,
    run: &RunState,
    registry: &Registry,
) -> Result<String, String> {
    let mut child = run.clone();
    for _ in 0..=moira_workflow::bundle::MAX_CALL_DEPTH {
        let Some(up) = child.parent.clone() else {
            return check_submission(&child, registry);
        };
        let parent = client
            .read_run_fresh(&up.run_id)
            .await
            .map_err(|e| format!("its parent run {} cannot be read: {e}", up.run_id))?
            .ok_or_else(|| format!("its parent run {} does not exist", up.run_id))?
            .state;
        let named =
            parent.steps.get(&up.step).and_then(|s| s.child.as_deref()) == Some(child.id.as_str());
        if !named {
            return Err(format!(
                "its parent run {} has no step '{}' that started it",
                up.run_id, up.step
            ));
        }
        let calls = moira_workflow::Workflow::parse(&parent.workflow, &parent.vars)
            .ok()
            .and_then(|wf| wf.step(&up.step).and_then(|s| s.call.clone()));
        let from = parent.path.clone().unwrap_or_default();
        let expected = calls.and_then(|c| moira_workflow::bundle::resolve(&from, &c).ok());
        let path_ok = expected.is_some() && expected == child.path;
        let text_ok = child
            .path
            .as_ref()
            .and_then(|p| parent.includes.get(p))
            .is_some_and(|t| *t == child.workflow);
        if !path_ok || !text_ok || parent.includes != child.includes {
            return Err(format!(
                "its workflow is not the file its parent's step '{}' calls from the parent's submitted files",
                up.step
            ));
        }
        if parent.submitted_by != child.submitted_by {
            return Err("it names another submitter than its parent run".into());
        }
        child = parent;
    }
    Err("its parents nest deeper than calls may".into())
}

/// Checks the signed events of one run: the submission (by its
/// submitter), each cancel (by whoever cancelled) and each auto-approval
/// of a `when: false` gate (by a runner's service key). Steps' other
/// events are a runner's bookkeeping and are not signed; decisions live
/// on gates, checked by [`verify_gate`].
pub async fn verify_run(
    client: &Client,
    run_id: &str,
    registry: &Registry,
    rules: Rules,
) -> Result<Vec<Finding>, ClientError> {
    let (raw, _) = client
        .read_subject_fresh(RUNS_STREAM, &run_events(run_id))
        .await?;
    if raw.is_empty() {
        return Err(ClientError::RunNotFound(run_id.to_string()));
    }
    let mut state: Option<RunState> = None;
    let mut out = Vec::new();
    for stored in &raw {
        let (seq, payload) = (&stored.seq, &stored.payload);
        let Some(env) = RunEnvelope::decode(payload) else {
            out.push(Finding {
                seq: *seq,
                kind: "?".into(),
                actor: String::new(),
                signer: None,
                problems: vec!["not a run event this build can read".into()],
            });
            continue;
        };
        let none = BTreeMap::new();
        let about = match (&env.event, &state, &env.signed) {
            (RunEvent::RunSubmitted { .. }, _, _) => None,
            (RunEvent::RunCancelled { by }, Some(run), Some(s)) => Some(RunAbout {
                includes: None,
                verb: RunVerb::Cancel,
                run_id: &run.id,
                actor: by,
                workflow: &run.workflow,
                vars: &none,
                step: None,
                command_id: &s.command_id,
                at: s.signed_at,
            }),
            (RunEvent::GateResolved { step, outputs, .. }, Some(run), Some(s))
                if outputs.get("approved_by").map(String::as_str) == Some(AUTO_APPROVER) =>
            {
                Some(RunAbout {
                    includes: None,
                    verb: RunVerb::AutoApprove,
                    run_id: &run.id,
                    actor: &env.actor,
                    workflow: &run.workflow,
                    vars: &none,
                    step: Some(step),
                    command_id: &s.command_id,
                    at: s.signed_at,
                })
            }
            _ => None,
        };
        let signed_kind = match &env.event {
            RunEvent::RunSubmitted { .. } | RunEvent::RunCancelled { .. } => true,
            RunEvent::GateResolved { outputs, .. } => {
                outputs.get("approved_by").map(String::as_str) == Some(AUTO_APPROVER)
            }
            _ => false,
        };
        let mut f = Finding {
            seq: *seq,
            kind: env.kind().to_string(),
            actor: env.actor.clone(),
            signer: None,
            problems: Vec::new(),
        };
        // A child run is started by a runner for its parent's step: it is
        // as good as the parent's signed submission, and it is cancelled
        // with its parent.
        let child_of = state.as_ref().and_then(|s| s.parent.clone());
        let mut vouched = false;
        if let RunEvent::RunSubmitted { parent, .. } = &env.event {
            let mut fresh = None;
            apply_run(&mut fresh, &env);
            match (&fresh, &env.signed, parent) {
                (Some(run), _, Some(_)) => {
                    vouched = true;
                    match check_run_origin(client, run, registry).await {
                        Ok(fp) => f.signer = Some(fp),
                        Err(e) => f.problems.push(e),
                    }
                }
                (Some(run), Some(_), None) => match check_submission(run, registry) {
                    Ok(fp) => f.signer = Some(fp),
                    Err(e) => f.problems.push(e),
                },
                _ => {}
            }
        } else if let (RunEvent::RunCancelled { by }, Some(up), None) =
            (&env.event, &child_of, &env.signed)
        {
            vouched = true;
            let parent = client.read_run_fresh(&up.run_id).await.ok().flatten();
            if parent.is_none_or(|p| p.state.cancelled_by.as_deref() != Some(by)) {
                f.problems
                    .push(format!("cancelled as by {by}, but its parent run was not"));
            }
        } else if let (Some(about), Some(s)) = (&about, &env.signed) {
            let service = about.verb == RunVerb::AutoApprove;
            match check_run_signature(registry, about, &s.signature, service) {
                Ok(fp) => f.signer = Some(fp),
                Err(e) => f.problems.push(e.message),
            }
        }
        if signed_kind && env.signed.is_none() && rules.require_signatures && !vouched {
            f.problems.push("not signed".into());
        }
        if signed_kind {
            out.push(f);
        }
        apply_run(&mut state, &env);
    }
    Ok(out)
}

/// The `approved_by` of a gate step a runner approved because its `when:`
/// is false.
pub const AUTO_APPROVER: &str = "moira:when";
