//! Gate events and their envelope.
//!
//! Every stored message on `moira.gate.ev.<id>` is one [`Envelope`] encoded
//! as MessagePack with named fields (so fields can be added later without
//! breaking older readers). The event kind is also put in the `Moira-Event`
//! header so tools can filter without decoding. Kind names are fixed forever
//! and never reused; a kind this build does not know decodes to
//! [`Decoded::Unknown`] and is skipped by the fold.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{CommandId, GateId};

/// The envelope schema this build writes.
pub const SCHEMA: u16 = 1;

/// Inputs an approver supplies: name to value.
pub type Inputs = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub schema: u16,
    /// The command that produced this event (the `Nats-Msg-Id`).
    pub id: CommandId,
    pub gate_id: GateId,
    /// Who did it: a user, a tool, or `moira:timeout` for a fired timeout.
    pub actor: String,
    /// When, in milliseconds since the epoch.
    pub at: u64,
    pub event: GateEvent,
    /// The run that opened the gate, on every event of a runner's gate, so
    /// a runner can resume the run without reading the gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Reserved for a detached signature over the command, so approvals can
    /// later be verified by anyone replaying the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// When the signer signed the command's statement (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_at: Option<u64>,
    /// The SHA-256 fingerprint of the key that signed, as the gate-keeper
    /// checked it (readers can recompute it from `signature`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// The approvers registry revision the command was checked against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// The hex SHA-256 of the message stored before this one on the gate's
    /// subject: a hash chain per gate, so a removed, reordered or inserted
    /// event shows. `None` on a gate's first event and on a fired timeout
    /// (prepared when the gate opened, before anything came after).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
    /// For a decision a service made for the actor and signed as itself
    /// (moira-web): how it authenticated them. `signer` is then the
    /// service's key, not the actor's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// For a decision a deputy made under another user's certificate: that
    /// user (`actor` is the deputy, `signer` the deputy's key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
}

/// What a gate does when its deadline passes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    /// The gate ends as `timed_out`.
    #[default]
    Fail,
    /// The gate ends as `approved`, by `moira:timeout`.
    Approve,
    /// The gate ends as `denied`, with reason "timed out".
    Deny,
}

impl OnTimeout {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "fail" => Some(Self::Fail),
            "approve" => Some(Self::Approve),
            "deny" => Some(Self::Deny),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fail => "fail",
            Self::Approve => "approve",
            Self::Deny => "deny",
        }
    }
}

/// Who may decide a gate. Both empty means anyone may.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Approvers {
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
}

impl Approvers {
    pub fn is_open(&self) -> bool {
        self.users.is_empty() && self.roles.is_empty()
    }
}

/// A gate's policy and description, fixed when it is opened.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateSpec {
    pub message: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub summary: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub run_id: Option<String>,
    #[serde(default)]
    pub step: Option<String>,
    #[serde(default)]
    pub approvers: Approvers,
    pub approvals_required: u32,
    pub allow_self_approval: bool,
    #[serde(default)]
    pub inputs: Vec<String>,
    #[serde(default)]
    pub required: Vec<String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub on_timeout: OnTimeout,
    /// Artifacts the gate approves, by digest. (This and the next two are
    /// left out of the encoding when unset, so the digest of a gate opened
    /// before they existed is unchanged.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject: Vec<crate::binding::Artifact>,
    /// The action the gate approves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<crate::binding::Action>,
    /// How long an approval stays good (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_for_ms: Option<u64>,
    /// Ordered approval stages. With stages, `approvers` holds every
    /// stage's users and roles and `approvals_required` their total.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<crate::stages::Stage>,
}

/// The events of one gate. Variant names are the stored kind names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GateEvent {
    GateOpened {
        spec: Box<GateSpec>,
        /// Absolute deadline (ms) when the gate has a timeout.
        #[serde(default)]
        timeout_at: Option<u64>,
    },
    /// An approval that did not yet reach the number required.
    ApprovalRecorded {
        #[serde(default)]
        comment: Option<String>,
        #[serde(default)]
        inputs: Inputs,
    },
    /// The approval that completed the gate.
    GateApproved {
        #[serde(default)]
        comment: Option<String>,
        #[serde(default)]
        inputs: Inputs,
    },
    GateDenied {
        reason: String,
    },
    GatePushedBack {
        #[serde(default)]
        comment: Option<String>,
        #[serde(default)]
        inputs: Inputs,
    },
    /// Written by the server's scheduler at the deadline.
    GateTimedOut {
        on_timeout: OnTimeout,
    },
    GateCancelled {
        #[serde(default)]
        reason: Option<String>,
    },
}

impl GateEvent {
    pub fn kind(&self) -> &'static str {
        match self {
            GateEvent::GateOpened { .. } => "GateOpened",
            GateEvent::ApprovalRecorded { .. } => "ApprovalRecorded",
            GateEvent::GateApproved { .. } => "GateApproved",
            GateEvent::GateDenied { .. } => "GateDenied",
            GateEvent::GatePushedBack { .. } => "GatePushedBack",
            GateEvent::GateTimedOut { .. } => "GateTimedOut",
            GateEvent::GateCancelled { .. } => "GateCancelled",
        }
    }

    /// Whether this event can end a gate.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            GateEvent::GateApproved { .. }
                | GateEvent::GateDenied { .. }
                | GateEvent::GateTimedOut { .. }
                | GateEvent::GateCancelled { .. }
        )
    }
}

/// The actor name the server's scheduler acts as.
pub const TIMEOUT_ACTOR: &str = "moira:timeout";

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a moira event envelope: {0}")]
    Malformed(String),
}

/// What a stored message decoded to.
#[derive(Debug, Clone, PartialEq)]
// Nearly every message decodes to an event, so boxing it would only add
// an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Decoded {
    Event(Envelope),
    /// A kind (or schema) this build does not know: log and skip it.
    Unknown {
        kind: String,
        schema: u16,
    },
}

#[derive(Deserialize)]
struct Head {
    schema: u16,
    #[serde(default)]
    event: BTreeMap<String, serde::de::IgnoredAny>,
}

impl Envelope {
    pub fn encode(&self) -> Vec<u8> {
        // Encoding a plain struct of strings, numbers and maps into a Vec
        // cannot fail.
        rmp_serde::to_vec_named(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
        match crate::codec::from_msgpack::<Envelope>(bytes) {
            Ok(env) => Ok(Decoded::Event(env)),
            Err(full) => match crate::codec::from_msgpack::<Head>(bytes) {
                Ok(head) => Ok(Decoded::Unknown {
                    kind: head.event.into_keys().next().unwrap_or_default(),
                    schema: head.schema,
                }),
                Err(_) => Err(DecodeError::Malformed(full.to_string())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(event: GateEvent) -> Envelope {
        Envelope {
            schema: SCHEMA,
            id: CommandId::new(),
            gate_id: GateId::new(),
            actor: "alice".into(),
            at: 1,
            event,
            run_id: None,
            signature: None,
            signed_at: None,
            signer: None,
            registry: None,
            prev: None,
            via: None,
            on_behalf_of: None,
        }
    }

    #[test]
    fn round_trip() {
        let e = env(GateEvent::GateDenied {
            reason: "no".into(),
        });
        assert_eq!(Envelope::decode(&e.encode()).ok(), Some(Decoded::Event(e)));
    }

    #[test]
    fn unknown_kind_is_not_an_error() {
        #[derive(Serialize)]
        struct Future {
            schema: u16,
            event: BTreeMap<String, u8>,
        }
        let bytes = rmp_serde::to_vec_named(&Future {
            schema: 7,
            event: [("GateTeleported".to_string(), 1)].into(),
        })
        .expect("encode");
        assert_eq!(
            Envelope::decode(&bytes).ok(),
            Some(Decoded::Unknown {
                kind: "GateTeleported".into(),
                schema: 7
            })
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Envelope::decode(b"\xc1\xc1 nope").is_err());
        assert!(Envelope::decode(b"").is_err());
    }
}
