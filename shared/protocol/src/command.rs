//! Command requests on `moira.cmd.gate.<verb>` and their replies.
//!
//! A request body is MessagePack (named fields) or JSON: JSON when the
//! `Content-Type` header says `application/json` or the body starts with `{`.
//! The reply uses the same encoding as the request.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::event::{Inputs, OnTimeout};
use crate::ids::{CommandId, GateId};
use crate::view::GateView;
use crate::wire::Verb;

/// Commands larger than this are refused before decoding.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenGate {
    /// Command id; a retry with the same id has no second effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<CommandId>,
    /// Gate id; giving one makes opening idempotent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_id: Option<GateId>,
    /// A tool's own name for the gate (`release-42/approve`): the gate id
    /// is derived from it ([`GateId::for_key`]), so opening again with the
    /// same key finds the same gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub actor: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Users who may decide.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
    /// Roles (from the approvers registry) whose members may decide.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Approvals required (N of M); default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<u32>,
    /// Whether the requester may approve; default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_self_approval: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<OnTimeout>,
    /// Artifacts the gate approves: names and `sha256:` digests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject: Vec<crate::binding::Artifact>,
    /// An action the gate approves: a tool and its arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<crate::binding::ActionCall>,
    /// How long an approval stays good, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_for_ms: Option<u64>,
    /// Ordered approval stages (instead of approvers, roles and approvals).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<crate::stages::Stage>,
    /// An SSH signature (`ssh-keygen -Y sign -n moira` armor) over the
    /// command's statement (see `statement`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// When the statement was signed, in ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_at: Option<u64>,
}

/// [`Common`] for one command struct; only the gate id and `via` differ
/// between an open and a decision.
macro_rules! impl_common {
    ($name:ident, gate_id = |$g:ident| $gate:expr, via = |$v:ident| $via:expr, via_mut = |$m:ident| $via_mut:expr, on_behalf_of = |$o:ident| $for:expr) => {
        impl Common for $name {
            fn id(&self) -> Option<CommandId> {
                self.id
            }
            fn gate_id(&self) -> Option<GateId> {
                let $g = self;
                $gate
            }
            fn actor(&self) -> &str {
                &self.actor
            }
            fn signature(&self) -> (Option<&String>, Option<u64>) {
                (self.signature.as_ref(), self.signed_at)
            }
            fn signature_mut(&mut self) -> (&mut Option<String>, &mut Option<u64>) {
                (&mut self.signature, &mut self.signed_at)
            }
            fn via_mut(&mut self) -> Option<&mut Option<String>> {
                let $m = self;
                $via_mut
            }
            fn via(&self) -> Option<&str> {
                let $v = self;
                $via
            }
            fn on_behalf_of(&self) -> Option<&str> {
                let $o = self;
                $for
            }
            fn encode(&self, format: Format) -> Vec<u8> {
                format.encode(self)
            }
        }
    };
}

/// The decision commands share their first fields (`id`, `gate_id`,
/// `actor`) and their last ones (`signature`, `signed_at`, `via`); this
/// writes them once. Each keeps its own struct, so the wire format stays
/// a flat map with unknown fields refused.
macro_rules! decision_command {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// Command id; a retry with the same id has no second effect.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub id: Option<CommandId>,
            pub gate_id: GateId,
            pub actor: String,
            $($(#[$fdoc])* pub $field: $ty,)*
            /// An SSH signature (`ssh-keygen -Y sign -n moira` armor) over the
            /// command's statement (see `statement`).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub signature: Option<String>,
            /// When the statement was signed, in ms since the epoch.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub signed_at: Option<u64>,
            /// Set when a moira service (moira-web) decides for the actor and
            /// signs as itself: how it authenticated them (`proxy`, `link`,
            /// `slack` or `dev`). The statement covers it, and the registry
            /// says whether the actor accepts decisions made this way.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub via: Option<String>,
            /// Set when the actor decides as a deputy of another user: the
            /// user whose OpenSSH certificate (signed with one of their
            /// registered keys) the signature carries. The statement covers
            /// it; unsigned, or signed without that certificate, it is refused.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub on_behalf_of: Option<String>,
        }

        impl_common!(
            $name,
            gate_id = |c| Some(c.gate_id),
            via = |c| c.via.as_deref(),
            via_mut = |c| Some(&mut c.via),
            on_behalf_of = |c| c.on_behalf_of.as_deref()
        );
    };
}

decision_command!(ApproveGate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    comment: Option<String>,
    #[serde(default, skip_serializing_if = "Inputs::is_empty")]
    inputs: Inputs,
});

decision_command!(DenyGate { reason: String });

decision_command!(PushBackGate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    comment: Option<String>,
    #[serde(default, skip_serializing_if = "Inputs::is_empty")]
    inputs: Inputs,
});

decision_command!(CancelGate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
});

/// What every command carries, whatever its verb.
trait Common {
    fn id(&self) -> Option<CommandId>;
    fn gate_id(&self) -> Option<GateId>;
    fn actor(&self) -> &str;
    fn signature(&self) -> (Option<&String>, Option<u64>);
    fn signature_mut(&mut self) -> (&mut Option<String>, &mut Option<u64>);
    /// `None` for a command that cannot be attested (opening a gate).
    fn via_mut(&mut self) -> Option<&mut Option<String>>;
    fn via(&self) -> Option<&str>;
    /// `None` for a command no deputy can send (opening a gate).
    fn on_behalf_of(&self) -> Option<&str>;
    fn encode(&self, format: Format) -> Vec<u8>;
}

impl_common!(
    OpenGate,
    gate_id = |c| c.gate_id,
    via = |_c| None,
    via_mut = |_c| None,
    on_behalf_of = |_c| None
);

// One short-lived value per request, so the open variant's size is no cost.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Open(OpenGate),
    Approve(ApproveGate),
    Deny(DenyGate),
    PushBack(PushBackGate),
    Cancel(CancelGate),
}

impl Command {
    pub fn verb(&self) -> Verb {
        match self {
            Command::Open(_) => Verb::Open,
            Command::Approve(_) => Verb::Approve,
            Command::Deny(_) => Verb::Deny,
            Command::PushBack(_) => Verb::PushBack,
            Command::Cancel(_) => Verb::Cancel,
        }
    }

    fn common(&self) -> &dyn Common {
        match self {
            Command::Open(c) => c,
            Command::Approve(c) => c,
            Command::Deny(c) => c,
            Command::PushBack(c) => c,
            Command::Cancel(c) => c,
        }
    }

    fn common_mut(&mut self) -> &mut dyn Common {
        match self {
            Command::Open(c) => c,
            Command::Approve(c) => c,
            Command::Deny(c) => c,
            Command::PushBack(c) => c,
            Command::Cancel(c) => c,
        }
    }

    pub fn actor(&self) -> &str {
        self.common().actor()
    }

    /// The command id, if the sender gave one.
    pub fn id(&self) -> Option<CommandId> {
        self.common().id()
    }

    /// The gate the command is about (an open without `gate_id` has none yet).
    pub fn gate_id(&self) -> Option<GateId> {
        self.common().gate_id()
    }

    /// When the signer says it signed.
    pub fn signed_at(&self) -> Option<u64> {
        self.common().signature().1
    }

    /// Attaches a signature made at `at`.
    pub fn set_signature(&mut self, signature: String, at: u64) {
        let (sig, when) = self.common_mut().signature_mut();
        *sig = Some(signature);
        *when = Some(at);
    }

    /// How a service authenticated the actor, for an attested decision.
    pub fn via(&self) -> Option<&str> {
        self.common().via()
    }

    /// Marks the command as attested by the service sending it (opening a
    /// gate is never attested, so this leaves an open as it is).
    pub fn set_via(&mut self, via: &str) {
        if let Some(slot) = self.common_mut().via_mut() {
            *slot = Some(via.to_string());
        }
    }

    pub fn signature(&self) -> Option<&String> {
        self.common().signature().0
    }

    /// The user a deputy decides for, if the actor acts as one.
    pub fn on_behalf_of(&self) -> Option<&str> {
        self.common().on_behalf_of()
    }

    /// Encodes the body for `verb().subject()`.
    pub fn encode(&self, format: Format) -> Vec<u8> {
        self.common().encode(format)
    }

    /// Decodes a request body for `verb`.
    pub fn decode(verb: Verb, format: Format, body: &[u8]) -> Result<Command, CommandError> {
        if body.len() > MAX_COMMAND_BYTES {
            return Err(CommandError::new(
                ErrorCode::TooLarge,
                format!(
                    "the command is {} bytes; the limit is {MAX_COMMAND_BYTES} bytes",
                    body.len()
                ),
            ));
        }
        Ok(match verb {
            Verb::Open => {
                let mut c: OpenGate = format.decode(body)?;
                if let Some(key) = &c.key {
                    let id = GateId::for_key(key)
                        .map_err(|e| CommandError::new(ErrorCode::BadRequest, e))?;
                    if c.gate_id.is_some_and(|g| g != id) {
                        return Err(CommandError::new(
                            ErrorCode::BadRequest,
                            "give gate_id or key, or a gate_id that is the key's",
                        ));
                    }
                    c.gate_id = Some(id);
                }
                Command::Open(c)
            }
            Verb::Approve => Command::Approve(format.decode(body)?),
            Verb::Deny => Command::Deny(format.decode(body)?),
            Verb::PushBack => Command::PushBack(format.decode(body)?),
            Verb::Cancel => Command::Cancel(format.decode(body)?),
        })
    }
}

/// The body encoding of a request (and so of its reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    MsgPack,
    Json,
}

impl Format {
    /// JSON when the content type says so or the body looks like a JSON object.
    pub fn detect(content_type: Option<&str>, body: &[u8]) -> Format {
        let json_type = content_type.is_some_and(|t| t.trim().starts_with("application/json"));
        let looks_json = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        if json_type || looks_json {
            Format::Json
        } else {
            Format::MsgPack
        }
    }

    pub fn encode<T: Serialize>(self, value: &T) -> Vec<u8> {
        match self {
            Format::Json => serde_json::to_vec(value).unwrap_or_default(),
            Format::MsgPack => rmp_serde::to_vec_named(value).unwrap_or_default(),
        }
    }

    pub fn decode<T: DeserializeOwned>(self, body: &[u8]) -> Result<T, CommandError> {
        let res = match self {
            Format::Json => serde_json::from_slice(body).map_err(|e| e.to_string()),
            Format::MsgPack => crate::codec::from_msgpack(body).map_err(|e| e.to_string()),
        };
        res.map_err(|e| {
            let what = if self == Format::Json {
                "JSON"
            } else {
                "MessagePack"
            };
            CommandError::new(
                ErrorCode::BadRequest,
                format!("could not decode the {what} body: {e}"),
            )
        })
    }
}

/// The documented error codes of a refused command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body could not be decoded, or a field is invalid.
    BadRequest,
    /// The body is larger than [`MAX_COMMAND_BYTES`].
    TooLarge,
    /// No gate has this id.
    NotFound,
    /// The actor may not do this (not an approver, self-approval, …).
    NotAllowed,
    /// The gate has already been decided.
    AlreadyDecided,
    /// A required input is missing.
    MissingInput,
    /// The gate id is taken by a different gate, or writes kept conflicting.
    Conflict,
    /// The broker could not be reached or did not answer in time.
    Unavailable,
    /// Something unexpected failed inside the gate-keeper.
    Internal,
    /// The gate-keeper requires signed commands and this one is not.
    Unsigned,
    /// The signature is malformed or does not match the command's statement.
    BadSignature,
    /// The signature is good but its key is not one of the actor's keys.
    WrongKey,
    /// The statement was signed too long ago (or in the future).
    Stale,
    /// A check: the gate is not approved, its approval expired, or it does
    /// not cover the digest asked about.
    NotCovered,
    /// An approval for a stage that has not begun: earlier stages first.
    OutOfOrder,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::NotFound => "not_found",
            ErrorCode::NotAllowed => "not_allowed",
            ErrorCode::AlreadyDecided => "already_decided",
            ErrorCode::MissingInput => "missing_input",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Unsigned => "unsigned",
            ErrorCode::BadSignature => "bad_signature",
            ErrorCode::WrongKey => "wrong_key",
            ErrorCode::Stale => "stale",
            ErrorCode::NotCovered => "not_covered",
            ErrorCode::OutOfOrder => "out_of_order",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} ({})", code.as_str())]
pub struct CommandError {
    pub code: ErrorCode,
    pub message: String,
}

impl CommandError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The reply to every command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<CommandError>,
}

impl Reply {
    pub fn ok(gate: GateView) -> Self {
        Self {
            ok: true,
            gate: Some(gate),
            error: None,
        }
    }
    pub fn err(error: CommandError) -> Self {
        Self {
            ok: false,
            gate: None,
            error: Some(error),
        }
    }
    pub fn into_result(self) -> Result<GateView, CommandError> {
        match (self.ok, self.gate, self.error) {
            (true, Some(gate), _) => Ok(gate),
            (_, _, Some(e)) => Err(e),
            _ => Err(CommandError::new(
                ErrorCode::Internal,
                "the reply had neither a gate nor an error",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_msgpack_decode_the_same_command() {
        let gate_id = GateId::new();
        let json = format!(
            r#"{{"gate_id":"{gate_id}","actor":"ci-bot","comment":"green","inputs":{{"WINDOW":"sat"}}}}"#
        );
        assert_eq!(Format::detect(None, json.as_bytes()), Format::Json);
        let a = Command::decode(Verb::Approve, Format::Json, json.as_bytes()).expect("json");
        let packed = a.encode(Format::MsgPack);
        assert_eq!(Format::detect(None, &packed), Format::MsgPack);
        let b = Command::decode(Verb::Approve, Format::MsgPack, &packed).expect("msgpack");
        assert_eq!(a, b);
    }

    #[test]
    fn bad_bodies_get_clear_errors() {
        let e = Command::decode(Verb::Deny, Format::Json, b"{\"gate_id\":1}").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = Command::decode(
            Verb::Approve,
            Format::Json,
            b"{\"gate_id\":\"x\",\"actor\":\"a\",\"coment\":1}",
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = Command::decode(Verb::Approve, Format::MsgPack, &[0xc1; 10]).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let big = vec![b' '; MAX_COMMAND_BYTES + 1];
        assert_eq!(
            Command::decode(Verb::Open, Format::Json, &big)
                .unwrap_err()
                .code,
            ErrorCode::TooLarge
        );
    }

    #[test]
    fn error_codes_serialize_snake_case() {
        let r = Reply::err(CommandError::new(ErrorCode::AlreadyDecided, "x"));
        let j = serde_json::to_string(&r).expect("json");
        assert_eq!(
            j,
            r#"{"ok":false,"error":{"code":"already_decided","message":"x"}}"#
        );
    }
}

/// A check request (`moira.cmd.gate.check`): is the gate approved, in
/// force, and does it cover this digest? Answered with the gate, or with
/// the error code `not_covered` and the reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckGate {
    pub gate_id: GateId,
    /// `sha256:` and 64 hex digits: an artifact's, or an action's (the
    /// SHA-256 of its canonical JSON).
    pub digest: String,
}
