//! Ids are UUIDs in their hyphenated lowercase form, which is a valid single
//! NATS subject token (no `.`, `*`, `>` or whitespace).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
pub use uuid::Uuid;

/// Namespace for deterministic gate ids derived from a run, step and attempt.
const GATE_NAMESPACE: Uuid = Uuid::from_u128(0x6d6f_6972_612d_6761_7465_2d6e_732d_7631);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "'{input}' is not a valid id: expected a UUID such as 0190f5e2-8b1c-7d3a-9f00-1a2b3c4d5e6f"
)]
pub struct IdError {
    pub input: String,
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new time-ordered id (UUID v7).
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.as_hyphenated().fmt(f)
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
                    .into()
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::try_parse(s.trim())
                    .map(Self)
                    .map_err(|_| IdError { input: s.to_string() })
            }
        }
    };
}

uuid_id!(
    /// The id of one gate; `moira.gate.ev.<gate_id>` holds its events.
    GateId
);
uuid_id!(
    /// The id of one command, used as `Nats-Msg-Id` so retries do not apply twice.
    CommandId
);

/// The longest gate key ([`GateId::for_key`]).
pub const MAX_GATE_KEY: usize = 200;

impl GateId {
    /// The gate id a key stands for (UUID v5 of the key): a tool names a
    /// gate by its own key and gets the same gate each time. A key is 1 to
    /// [`MAX_GATE_KEY`] bytes with no control characters.
    pub fn for_key(key: &str) -> Result<GateId, String> {
        if key.is_empty() || key.len() > MAX_GATE_KEY || key.chars().any(char::is_control) {
            return Err(format!(
                "a gate key is 1 to {MAX_GATE_KEY} bytes with no control characters"
            ));
        }
        Ok(GateId(Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("moira-gate-key:{key}").as_bytes(),
        )))
    }

    /// The deterministic id of the gate a runner opens for a step, so that a
    /// runner that restarts re-attaches to the same gate.
    pub fn for_step(run_id: &str, step: &str, attempt: u32) -> Self {
        let name = format!("{run_id}\n{step}\n{attempt}");
        Self(Uuid::new_v5(&GATE_NAMESPACE, name.as_bytes()))
    }
}

/// Run ids are free-form in this crate (the runner owns their format), but
/// they travel inside subjects, so they must be a single safe token.
/// The longest user, tool or role name.
pub const MAX_NAME: usize = 64;

/// Whether `s` is an acceptable user, tool or role name: 1 to
/// [`MAX_NAME`] characters of ASCII letters, digits and `. _ @ + -`,
/// starting with a letter or digit. Names end up in step environments,
/// terminals, chat messages and mail, so nothing that any of those would
/// read as syntax is allowed.
pub fn is_valid_name(s: &str) -> bool {
    s.len() <= MAX_NAME
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'+' | b'-'))
}

pub fn is_subject_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    #[test]
    fn names() {
        for ok in ["alice", "ci-bot", "a.b@example.com", "x+y_z", "7"] {
            assert!(super::is_valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "x$(touch /tmp/p)",
            "a`id`",
            "a;b",
            "a\"b",
            "a'b",
            "a b",
            "-x",
            "moira:timeout",
            "\u{1b}[2J",
            "é",
            &"a".repeat(65),
        ] {
            assert!(!super::is_valid_name(bad), "{bad}");
        }
    }

    use super::*;

    #[test]
    fn ids_round_trip_and_reject_garbage() {
        let id = GateId::new();
        assert_eq!(id.to_string().parse::<GateId>(), Ok(id));
        assert!("nope".parse::<GateId>().is_err());
        assert!("a.b".parse::<GateId>().is_err());
    }

    #[test]
    fn step_gate_ids_are_deterministic() {
        assert_eq!(
            GateId::for_step("r1", "deploy", 1),
            GateId::for_step("r1", "deploy", 1)
        );
        assert_ne!(
            GateId::for_step("r1", "deploy", 1),
            GateId::for_step("r1", "deploy", 2)
        );
    }

    #[test]
    fn subject_tokens() {
        assert!(is_subject_token("run-1_A"));
        assert!(!is_subject_token("a.b"));
        assert!(!is_subject_token("a b"));
        assert!(!is_subject_token(""));
        assert!(!is_subject_token("*"));
    }
}
