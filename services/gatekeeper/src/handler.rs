//! Answering one command: get the gate's state, decide, append, reply.

use std::sync::Arc;

use async_nats::HeaderMap;

use moira_client::Client;
use moira_protocol::command::{Format, Reply};
use moira_protocol::event::{Decoded, GateEvent};
use moira_protocol::gate::{apply, decide, Context, Decision, Deputy};
use moira_protocol::time::now_ms;
use moira_protocol::wire::{Verb, GATE_CHECK, HDR_CONTENT_TYPE};
use moira_protocol::{Command, CommandError, ErrorCode, GateId, GateState, GateView};

use crate::append::{append, append_open_with_timeout, AppendError};
use crate::cache::Cache;
use moira_service::live::LiveRegistry;
use moira_service::registry::Registry;

/// How many times a command is decided again after losing a write race.
/// 50 deciders on one gate settle well within this.
const MAX_ATTEMPTS: usize = 200;
/// Bytes of a message kept free for its subject and headers.
const REPLY_HEADROOM: usize = 4096;

pub use moira_service::verify::{Signatures, SIGNATURE_SKEW_MS};

pub struct Handler {
    pub client: Client,
    pub policy: moira_protocol::gate::Policy,
    pub signatures: Signatures,
    pub registry: LiveRegistry,
    /// Signs the timeouts this gate-keeper prepares.
    pub signer: Option<Arc<moira_client::signing::Signer>>,
    pub cache: Arc<Cache>,
}

fn err(code: ErrorCode, message: impl Into<String>) -> CommandError {
    CommandError::new(code, message)
}

impl Handler {
    /// Handles one request and returns the encoded reply.
    pub async fn handle(&self, subject: &str, headers: Option<&HeaderMap>, body: &[u8]) -> Vec<u8> {
        let content_type = headers
            .and_then(|h| h.get(HDR_CONTENT_TYPE))
            .map(|v| v.as_str());
        let format = Format::detect(content_type, body);
        let started = std::time::Instant::now();
        // Only the verbs there are, so a hostile subject adds no label value.
        let verb = match Verb::from_subject(subject) {
            Some(v) => v.as_str(),
            None if subject == GATE_CHECK => "check",
            None => "unknown",
        };
        let m = moira_service::ops::metrics();
        let traceparent = moira_client::trace::of(headers);
        let traced = traceparent.clone();
        let result = moira_client::trace::scope(traced, self.run(subject, format, body)).await;
        if let Some(tp) = &traceparent {
            let outcome = result.as_ref().map_or_else(|e| e.code.as_str(), |_| "ok");
            let gate = result
                .as_ref()
                .map(|g| g.id.to_string())
                .unwrap_or_default();
            tracing::info!(
                verb,
                gate,
                outcome,
                traceparent = tp.as_str(),
                "command with a trace context"
            );
        }
        let reply = match result {
            Ok(gate) => {
                m.command(verb, "ok", started.elapsed());
                Reply::ok(gate)
            }
            Err(e) => {
                m.command(verb, e.code.as_str(), started.elapsed());
                tracing::debug!(subject, code = e.code.as_str(), "refused: {}", e.message);
                Reply::err(e)
            }
        };
        let encoded = format.encode(&reply);
        // A gate pushed back many times can outgrow a message: the event is
        // stored either way, so the reply must still get through.
        let limit = self.reply_limit();
        match reply {
            Reply {
                ok: true,
                gate: Some(mut gate),
                ..
            } if encoded.len() > limit => {
                gate.trim_push_backs(|g| format.encode(&Reply::ok(g.clone())).len() <= limit);
                format.encode(&Reply::ok(gate))
            }
            _ => encoded,
        }
    }

    /// The largest reply body the broker takes, less room for headers.
    fn reply_limit(&self) -> usize {
        let max = self.client.nats().server_info().max_payload;
        max.saturating_sub(REPLY_HEADROOM).max(REPLY_HEADROOM)
    }

    async fn run(
        &self,
        subject: &str,
        format: Format,
        body: &[u8],
    ) -> Result<GateView, CommandError> {
        if subject == GATE_CHECK {
            return self.check(format, body).await;
        }
        let verb = Verb::from_subject(subject).ok_or_else(|| {
            err(
                ErrorCode::BadRequest,
                format!("unknown command subject {subject}; use moira.cmd.gate.<open|approve|deny|push-back|cancel>"),
            )
        })?;
        let cmd = Command::decode(verb, format, body)?;
        let command_id = cmd.id().unwrap_or_default();
        let gate_id = match (cmd.gate_id(), cmd.id()) {
            (Some(g), _) => g,
            // A tool that retries an open with the same command id gets the same gate.
            (None, Some(id)) => GateId(uuid::Uuid::new_v5(&id.0, b"gate")),
            (None, None) => GateId::new(),
        };
        // The registry in force for this whole command.
        let registry = self.registry.current();
        let roles = registry.roles_of(cmd.actor());
        // Where the state comes from: an open assumes a new gate (the write's
        // expected sequence 0 checks it), other commands use the cache.
        let mut fresh_read = false;
        for attempt in 0..MAX_ATTEMPTS {
            let (state, last_seq, last_digest) = if fresh_read {
                self.read(gate_id).await?
            } else {
                match self.cache.get(&gate_id) {
                    Some(c) => (Some(c.state), c.last_seq, c.last_digest),
                    None if matches!(cmd, Command::Open(_)) => (None, 0, None),
                    None => {
                        fresh_read = true;
                        self.read(gate_id).await?
                    }
                }
            };
            let service = moira_protocol::wire::is_service_subject(subject);
            let now = now_ms();
            let (signer, deputy) = match self.check_signature(
                &registry,
                &cmd,
                gate_id,
                state.as_ref(),
                service,
                now,
            ) {
                Ok(s) => s,
                // A refusal is confirmed on a fresh read, like any other.
                Err(_) if !fresh_read => {
                    fresh_read = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let ctx = Context {
                policy: self.policy.clone(),
                service,
                now,
                command_id,
                new_gate_id: gate_id,
                actor_roles: roles.clone(),
                signer,
                registry: Some(registry.revision().to_string()),
                prev: last_digest,
                deputy,
            };
            let events = match decide(state.as_ref(), &cmd, &ctx) {
                // Never refuse on a state that may be stale: confirm first.
                Err(_) if !fresh_read => {
                    fresh_read = true;
                    continue;
                }
                Err(rejection) => return Err(rejection),
                Ok(Decision::AlreadyDone) => {
                    let state = state.ok_or_else(|| {
                        err(ErrorCode::Internal, "decided nothing on a missing gate")
                    })?;
                    return Ok(GateView::from(&state));
                }
                Ok(Decision::Append(events)) => events,
            };
            let mut state = state;
            let mut stored_at = None;
            let mut stored_digest = None;
            for env in &events {
                let result = match &env.event {
                    GateEvent::GateOpened { .. } => {
                        append_open_with_timeout(self.client.nats(), env, self.signer.as_deref())
                            .await
                    }
                    ev => {
                        let purge = ev.is_terminal()
                            && state.as_ref().is_some_and(|s| s.timeout_at.is_some());
                        append(self.client.nats(), env, last_seq, purge).await
                    }
                };
                match result {
                    Ok(seq) => {
                        let m = moira_service::ops::metrics();
                        match (&env.event, state.as_ref()) {
                            (GateEvent::GateOpened { .. }, _) => {
                                m.gates_opened.inc();
                            }
                            (ev, Some(s)) if ev.is_terminal() => {
                                m.gates_ended.inc();
                                let open_for = env.at.saturating_sub(s.opened_at);
                                m.decision_seconds.observe(open_for as f64 / 1000.0);
                            }
                            _ => {}
                        }
                        apply(&mut state, env);
                        stored_at = Some(seq);
                        stored_digest = Some(moira_protocol::statement::sha256_hex(&env.encode()));
                    }
                    Err(AppendError::Conflict) => {
                        stored_at = None;
                        break;
                    }
                    Err(AppendError::Duplicate) => {
                        tracing::debug!(%gate_id, "a duplicate message id; reading the gate back");
                        stored_at = None;
                        break;
                    }
                    Err(AppendError::Unknown) => {
                        tracing::warn!(%gate_id, "no publish acknowledgement; reading the gate again");
                        stored_at = None;
                        break;
                    }
                    Err(AppendError::Refused(m)) => return Err(err(ErrorCode::Internal, m)),
                    Err(AppendError::Unavailable(m)) => return Err(err(ErrorCode::Unavailable, m)),
                    Err(AppendError::NoStream) => {
                        return Err(err(
                            ErrorCode::Unavailable,
                            "no JetStream server answered for the gate stream (a leader election, or MOIRA_GATES is missing); try again",
                        ))
                    }
                }
            }
            if let Some(seq) = stored_at {
                let state = state
                    .ok_or_else(|| err(ErrorCode::Internal, "the gate vanished after writing"))?;
                let view = GateView::from(&state);
                self.cache.put(state, seq, stored_digest);
                return Ok(view);
            }
            // Lost a race (or the ack): read again; decide sees our own
            // command id if the write did land.
            self.cache.forget(&gate_id);
            fresh_read = true;
            if attempt > 2 {
                tokio::task::yield_now().await;
            }
        }
        Err(err(
            ErrorCode::Conflict,
            format!("gate {gate_id} kept changing; try again"),
        ))
    }

    /// Checks the command's signature, if it has one or must have one;
    /// returns the fingerprint of the key that signed and, for a deputy's
    /// decision, what their certificate lets them do.
    fn check_signature(
        &self,
        registry: &Registry,
        cmd: &Command,
        gate_id: GateId,
        state: Option<&GateState>,
        service: bool,
        now: u64,
    ) -> Result<(Option<String>, Option<Deputy>), CommandError> {
        // An unknown way is refused before any key is looked at.
        if let Some(via) = cmd.via() {
            moira_protocol::gate::check_via(via)?;
        }
        let Some(sig) = cmd.signature() else {
            return match (self.signatures, service) {
                (Signatures::Off, _) => Ok((None, None)),
                (Signatures::Require, false) => Err(err(
                    ErrorCode::Unsigned,
                    "this gate-keeper requires signed commands: sign with your SSH key (--key FILE, or --agent)",
                )),
                (Signatures::Require, true) => Err(err(
                    ErrorCode::Unsigned,
                    "this gate-keeper requires signed commands: start the runner with --key FILE, a key listed under [services.<name>] in the registry",
                )),
            };
        };
        let (Some(id), Some(at)) = (cmd.id(), cmd.signed_at()) else {
            return Err(err(
                ErrorCode::BadSignature,
                "a signed command carries its command id (id) and signing time (signed_at)",
            ));
        };
        if let Command::Open(c) = cmd {
            if c.gate_id.is_none() || c.allow_self_approval.is_none() {
                return Err(err(
                    ErrorCode::BadSignature,
                    "a signed open names its gate_id and states allow_self_approval",
                ));
            }
        }
        moira_service::verify::check_fresh(at, now)?;
        // A decision on a missing gate: let decide say "not found".
        let Some(about) = moira_protocol::statement::About::of(cmd, gate_id, state) else {
            return Ok((None, None));
        };
        // A retry of a command already applied was checked when it was
        // applied (a push-back since moved the iteration): decide answers it.
        if state.is_some_and(|s| s.applied.iter().any(|(applied, _)| *applied == id)) {
            return Ok((None, None));
        }
        let bytes = moira_protocol::statement::statement(cmd, &about, id, at);
        let signed = moira_client::signing::verify_signed(&bytes, sig)
            .map_err(|e| err(ErrorCode::BadSignature, e.to_string()))?;
        let key = signed.key;
        let fp = moira_client::signing::fingerprint(&key);
        // A deputy: the certificate is checked at the gate-keeper's clock.
        match (signed.certificate, cmd.on_behalf_of()) {
            (Some(cert), Some(user)) if !service => {
                let deputy = registry
                    .check_deputy(cmd.actor(), user, &key, &cert, now / 1000)
                    .map_err(|why| err(ErrorCode::WrongKey, why))?;
                return Ok((Some(fp), Some(deputy)));
            }
            (Some(_), _) => {
                return Err(err(
                    ErrorCode::BadSignature,
                    "the signature carries a certificate, which only a deputy's decision does: \
                     name whom you act for (--for USER), or sign with your own key",
                ))
            }
            (None, Some(user)) => {
                return Err(err(
                    ErrorCode::WrongKey,
                    format!(
                        "acting for {user} needs a signature made with the certificate {user} gave you (--key bob-cert.pub)"
                    ),
                ))
            }
            (None, None) => {}
        }
        // moira-web signs with its own key for a person it authenticated:
        // that counts only as far as the registry says.
        if let Some(via) = cmd.via() {
            registry
                .check_attested(cmd.actor(), via, &key)
                .map_err(|why| err(ErrorCode::WrongKey, why))?;
            return Ok((Some(fp), None));
        }
        // On the services' subject a runner signs for the run's submitter
        // (its gate opens) or as itself: its own service key counts.
        let allowed = if service {
            registry.service_of(&key).is_some()
        } else {
            registry.has_key(cmd.actor(), &key)
        };
        if !allowed {
            let whose = if service {
                "a service's key (listed under [services.<name>])".to_string()
            } else {
                format!("one of {}'s keys", cmd.actor())
            };
            return Err(err(
                ErrorCode::WrongKey,
                format!("the key {fp} is not {whose} in the approvers registry"),
            ));
        }
        Ok((Some(fp), None))
    }

    /// A check: the gate as the stream holds it now (never the cache), and
    /// whether it is approved, in force and covers the digest.
    async fn check(&self, format: Format, body: &[u8]) -> Result<GateView, CommandError> {
        if body.len() > moira_protocol::command::MAX_COMMAND_BYTES {
            return Err(err(
                ErrorCode::TooLarge,
                "a check is a gate id and a digest",
            ));
        }
        let c: moira_protocol::command::CheckGate = format.decode(body)?;
        moira_protocol::binding::parse_digest(&c.digest)
            .map_err(|e| err(ErrorCode::BadRequest, e))?;
        let (state, _, _) = self.read(c.gate_id).await?;
        let state =
            state.ok_or_else(|| err(ErrorCode::NotFound, format!("no gate {}", c.gate_id)))?;
        moira_protocol::binding::check(&state, &c.digest, now_ms())
            .map_err(|why| err(ErrorCode::NotCovered, why.to_string()))?;
        Ok(GateView::from(&state))
    }

    async fn read(
        &self,
        id: GateId,
    ) -> Result<(Option<GateState>, u64, Option<String>), CommandError> {
        let (events, last_seq) = self
            .client
            .read_events_fresh(id)
            .await
            .map_err(|e| err(ErrorCode::Unavailable, e.to_string()))?;
        let mut state = None;
        for e in &events {
            match &e.event {
                Decoded::Event(env) => apply(&mut state, env),
                // A newer gate-keeper wrote something this one does not
                // understand: deciding as if it were not there could undo it.
                Decoded::Unknown { kind, .. } => {
                    return Err(err(
                        ErrorCode::Unavailable,
                        format!(
                            "gate {id} holds a {kind:?} event this gate-keeper does not know; \
                             a newer gate-keeper must decide it (upgrade this one)"
                        ),
                    ))
                }
            }
        }
        let last_digest = events.last().and_then(|e| e.digest.clone());
        Ok((state, last_seq, last_digest))
    }
}
