//! What a gate approves, by content: artifacts named by their digests, or
//! one action (a tool and its arguments), and how long an approval stays
//! good.
//!
//! A gate may name artifacts (`app.tar.gz` with `sha256:…`) or an action.
//! An action is stored as the canonical JSON (RFC 8785) of
//! `{"arguments": …, "tool": …}` and the SHA-256 of those bytes, computed
//! by the gate-keeper from what the request carries, so the digest can be
//! recomputed by anyone from the same call. Every signed statement about
//! the gate lists these digests beside the gate's own (see `statement`),
//! and [`check`] says whether an approved gate covers a given digest.

use serde::{Deserialize, Serialize};

use crate::gate::{GateState, GateStatus};
use crate::statement::sha256_hex;

/// At most this many artifacts per gate.
pub const MAX_ARTIFACTS: usize = 64;
/// The longest artifact name.
pub const MAX_ARTIFACT_NAME: usize = 256;
/// The largest canonical action (tool and arguments).
pub const MAX_ACTION_BYTES: usize = 64 * 1024;
/// The longest `valid_for` a gate may set (366 days).
pub const MAX_VALID_FOR_MS: u64 = 366 * 24 * 3600 * 1000;
/// The only digest algorithm accepted, as its prefix.
pub const SHA256: &str = "sha256:";

/// One artifact a gate approves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub name: String,
    /// `sha256:` and 64 lowercase hex digits.
    pub digest: String,
}

/// An action as a request names it: a tool and its arguments, any JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionCall {
    pub tool: String,
    #[serde(default)]
    pub arguments: serde_json::Value,
}

/// An action as a gate stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Action {
    pub tool: String,
    /// The canonical JSON (RFC 8785) of `{"arguments": …, "tool": …}`.
    pub canonical: String,
    /// `sha256:` and the hex SHA-256 of `canonical`.
    pub digest: String,
}

impl ActionCall {
    /// Reads a call from JSON text (`{"tool": …, "arguments": …}`).
    pub fn from_json(text: &str) -> Result<ActionCall, String> {
        if text.len() > MAX_ACTION_BYTES {
            return Err(format!(
                "an action may be at most {} KiB of JSON",
                MAX_ACTION_BYTES / 1024
            ));
        }
        serde_json::from_str(text).map_err(|e| {
            format!(
                "an action is JSON of the form {{\"tool\": \"name\", \"arguments\": {{…}}}}: {e}"
            )
        })
    }

    /// The canonical bytes and their digest, checked against the bounds.
    pub fn to_action(&self) -> Result<Action, String> {
        if !valid_tool(&self.tool) {
            return Err(format!(
                "tool name '{}' must be 1 to 128 letters, digits or '.', '_', '-', '/', ':'",
                self.tool.chars().take(128).collect::<String>()
            ));
        }
        let canonical = serde_json_canonicalizer::to_string(&serde_json::json!({
            "arguments": self.arguments,
            "tool": self.tool,
        }))
        .map_err(|e| format!("the action's arguments cannot be put in canonical form: {e}"))?;
        if canonical.len() > MAX_ACTION_BYTES {
            return Err(format!(
                "an action may be at most {} KiB of canonical JSON",
                MAX_ACTION_BYTES / 1024
            ));
        }
        let digest = format!("{SHA256}{}", sha256_hex(canonical.as_bytes()));
        Ok(Action {
            tool: self.tool.clone(),
            canonical,
            digest,
        })
    }
}

fn valid_tool(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:".contains(c))
}

/// The hex part of a `sha256:<64 hex>` digest, lowercased; an error naming
/// the expected form otherwise.
pub fn parse_digest(d: &str) -> Result<String, String> {
    let hex = d.strip_prefix(SHA256).ok_or_else(|| {
        format!(
            "digest '{}' must be sha256:<64 hex digits>",
            d.chars().take(80).collect::<String>()
        )
    })?;
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "digest '{}' must be sha256: and 64 hex digits",
            d.chars().take(80).collect::<String>()
        ));
    }
    Ok(hex.to_ascii_lowercase())
}

/// Checks the artifacts a request names; returns them with digests in
/// lowercase.
pub fn check_artifacts(list: &[Artifact]) -> Result<Vec<Artifact>, String> {
    if list.len() > MAX_ARTIFACTS {
        return Err(format!("a gate may name at most {MAX_ARTIFACTS} artifacts"));
    }
    let mut out: Vec<Artifact> = Vec::with_capacity(list.len());
    for a in list {
        if a.name.trim().is_empty()
            || a.name.len() > MAX_ARTIFACT_NAME
            || a.name.chars().any(char::is_control)
        {
            return Err(format!(
                "an artifact needs a name of 1 to {MAX_ARTIFACT_NAME} characters without control characters"
            ));
        }
        let hex = parse_digest(&a.digest).map_err(|e| format!("artifact '{}': {e}", a.name))?;
        if out.iter().any(|o| o.name == a.name) {
            return Err(format!("artifact '{}' is named twice", a.name));
        }
        out.push(Artifact {
            name: a.name.clone(),
            digest: format!("{SHA256}{hex}"),
        });
    }
    Ok(out)
}

/// Every digest a gate covers, with the name a statement gives it: each
/// artifact under its own name, the action as `action:<tool>`. The digests
/// are hex, without the `sha256:` prefix.
pub fn subjects(spec: &crate::event::GateSpec) -> Vec<(String, String)> {
    let hex = |d: &str| d.strip_prefix(SHA256).unwrap_or(d).to_string();
    let mut out: Vec<(String, String)> = spec
        .subject
        .iter()
        .map(|a| (a.name.clone(), hex(&a.digest)))
        .collect();
    if let Some(a) = &spec.action {
        out.push((format!("action:{}", a.tool), hex(&a.digest)));
    }
    out
}

/// Why a gate does not cover a digest now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotCovered {
    /// The gate is not approved (it waits, or ended otherwise).
    NotApproved(GateStatus),
    /// The approval is older than the gate's `valid_for`.
    Expired { approved_at: u64, valid_until: u64 },
    /// The gate names no artifact or action with this digest.
    OtherDigest { covered: Vec<String> },
}

impl std::fmt::Display for NotCovered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::time::rfc3339;
        match self {
            NotCovered::NotApproved(s) => write!(f, "the gate is {}, not approved", s.as_str()),
            NotCovered::Expired {
                approved_at,
                valid_until,
            } => write!(
                f,
                "the approval of {} expired at {} (the gate's valid_for)",
                rfc3339(*approved_at),
                rfc3339(*valid_until)
            ),
            NotCovered::OtherDigest { covered } if covered.is_empty() => {
                write!(f, "the gate names no artifact or action")
            }
            NotCovered::OtherDigest { covered } => {
                write!(f, "the gate approved only {}", covered.join(", "))
            }
        }
    }
}

/// When an approval given at `approved_at` stops being good, if the gate
/// limits it.
pub fn valid_until(state: &GateState) -> Option<u64> {
    let (at, ms) = (state.approved_at?, state.spec.valid_for_ms?);
    Some(at.saturating_add(ms))
}

/// Whether an approval of this gate is still good at `now` (always, when
/// the gate sets no `valid_for`). `None` when it is not approved.
pub fn in_force(state: &GateState, now: u64) -> Option<bool> {
    if state.status != GateStatus::Approved {
        return None;
    }
    Some(valid_until(state).is_none_or(|until| now <= until))
}

/// Whether the gate, as it stands at `now`, is approved, in force and
/// covers `digest` (`sha256:…`, case-insensitive hex).
pub fn check(state: &GateState, digest: &str, now: u64) -> Result<(), NotCovered> {
    if state.status != GateStatus::Approved {
        return Err(NotCovered::NotApproved(state.status));
    }
    if let Some(until) = valid_until(state).filter(|u| now > *u) {
        return Err(NotCovered::Expired {
            approved_at: state.approved_at.unwrap_or_default(),
            valid_until: until,
        });
    }
    let want = parse_digest(digest).ok();
    let subjects = subjects(&state.spec);
    if want.is_some_and(|w| subjects.iter().any(|(_, h)| *h == w)) {
        return Ok(());
    }
    Err(NotCovered::OtherDigest {
        covered: subjects
            .into_iter()
            .map(|(name, hex)| format!("{name} {SHA256}{hex}"))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_action_is_canonical_whatever_the_key_order_and_spacing() {
        let a = ActionCall::from_json(r#"{"tool":"shell.run","arguments":{"b":2,"a":"x y"}}"#)
            .expect("call")
            .to_action()
            .expect("action");
        let b = ActionCall::from_json(
            "{ \"arguments\" : { \"a\" : \"x y\", \"b\" : 2.0 }, \"tool\": \"shell.run\" }",
        )
        .expect("call")
        .to_action()
        .expect("action");
        assert_eq!(
            a.canonical,
            r#"{"arguments":{"a":"x y","b":2},"tool":"shell.run"}"#
        );
        assert_eq!(a, b);
        assert_eq!(
            a.digest,
            format!("sha256:{}", sha256_hex(a.canonical.as_bytes()))
        );
        let c = ActionCall::from_json(r#"{"tool":"shell.run","arguments":{"b":3,"a":"x y"}}"#)
            .expect("call")
            .to_action()
            .expect("action");
        assert_ne!(a.digest, c.digest, "one argument changed");
    }

    #[test]
    fn bad_digests_names_and_tools_are_refused() {
        let good = "a".repeat(64);
        assert_eq!(
            parse_digest(&format!("sha256:{}", good.to_uppercase())),
            Ok(good.clone())
        );
        for bad in [
            "",
            "sha256:",
            "md5:abc",
            "sha256:xyz",
            &format!("sha512:{good}"),
        ] {
            assert!(parse_digest(bad).is_err(), "{bad}");
        }
        let art = |n: &str| Artifact {
            name: n.into(),
            digest: format!("sha256:{good}"),
        };
        assert!(check_artifacts(&[art("app.tar.gz")]).is_ok());
        assert!(check_artifacts(&[art("")]).is_err());
        assert!(check_artifacts(&[art("a\u{1b}[2J")]).is_err());
        assert!(check_artifacts(&[art("a"), art("a")]).is_err());
        assert!(check_artifacts(&vec![art("x"); MAX_ARTIFACTS + 1]).is_err());
        for tool in ["", "rm -rf", "a;b", &"t".repeat(129)] {
            let call = ActionCall {
                tool: tool.into(),
                arguments: serde_json::Value::Null,
            };
            assert!(call.to_action().is_err(), "{tool}");
        }
        let huge = format!(
            r#"{{"tool":"t","arguments":"{}"}}"#,
            "x".repeat(MAX_ACTION_BYTES)
        );
        assert!(ActionCall::from_json(&huge).is_err());
        assert!(ActionCall::from_json(r#"{"tool":"t","arguments":1,"extra":1}"#).is_err());
    }
}
