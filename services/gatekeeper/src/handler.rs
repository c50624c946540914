//! Answering one command: get the gate's state, decide, append, reply.

use std::sync::Arc;

use async_nats::HeaderMap;

use moira_client::Client;
use moira_protocol::command::{Format, Reply};
use moira_protocol::event::{Decoded, GateEvent};
use moira_protocol::gate::{apply, decide, Context, Decision};
use moira_protocol::subjects::{Verb, HDR_CONTENT_TYPE};
use moira_protocol::time::now_ms;
use moira_protocol::{Command, CommandError, ErrorCode, GateId, GateState, GateView};

use crate::append::{append, append_open_with_timeout, AppendError};
use crate::cache::Cache;
use moira_service::registry::Registry;

/// How many times a command is decided again after losing a write race.
/// 50 deciders on one gate settle well within this.
const MAX_ATTEMPTS: usize = 200;

pub struct Handler {
    pub client: Client,
    pub policy: moira_protocol::gate::Policy,
    pub registry: Arc<Registry>,
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
        let reply = match self.run(subject, format, body).await {
            Ok(gate) => Reply::ok(gate),
            Err(e) => {
                tracing::debug!(subject, code = e.code.as_str(), "refused: {}", e.message);
                Reply::err(e)
            }
        };
        format.encode(&reply)
    }

    async fn run(
        &self,
        subject: &str,
        format: Format,
        body: &[u8],
    ) -> Result<GateView, CommandError> {
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
        let roles = self.registry.roles_of(cmd.actor());
        // Where the state comes from: an open assumes a new gate (the write's
        // expected sequence 0 checks it), other commands use the cache.
        let mut fresh_read = false;
        for attempt in 0..MAX_ATTEMPTS {
            let (state, last_seq) = if fresh_read {
                self.read(gate_id).await?
            } else {
                match self.cache.get(&gate_id) {
                    Some(c) => (Some(c.state), c.last_seq),
                    None if matches!(cmd, Command::Open(_)) => (None, 0),
                    None => {
                        fresh_read = true;
                        self.read(gate_id).await?
                    }
                }
            };
            let ctx = Context {
                policy: self.policy.clone(),
                service: moira_protocol::subjects::is_service_subject(subject),
                now: now_ms(),
                command_id,
                new_gate_id: gate_id,
                actor_roles: roles.clone(),
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
            for env in &events {
                let result = match &env.event {
                    GateEvent::GateOpened { .. } => {
                        append_open_with_timeout(self.client.nats(), env).await
                    }
                    ev => {
                        let purge = ev.is_terminal()
                            && state.as_ref().is_some_and(|s| s.timeout_at.is_some());
                        append(self.client.nats(), env, last_seq, purge).await
                    }
                };
                match result {
                    Ok(seq) => {
                        apply(&mut state, env);
                        stored_at = Some(seq);
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
                }
            }
            if let Some(seq) = stored_at {
                let state = state
                    .ok_or_else(|| err(ErrorCode::Internal, "the gate vanished after writing"))?;
                let view = GateView::from(&state);
                self.cache.put(state, seq);
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

    async fn read(&self, id: GateId) -> Result<(Option<GateState>, u64), CommandError> {
        let (events, last_seq) = self
            .client
            .read_events(id)
            .await
            .map_err(|e| err(ErrorCode::Unavailable, e.to_string()))?;
        let mut state = None;
        for e in &events {
            if let Decoded::Event(env) = &e.event {
                apply(&mut state, env);
            }
        }
        Ok((state, last_seq))
    }
}
