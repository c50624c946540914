//! One-click decision links: one gate, one approver, one action, an
//! expiry and a nonce, signed with HMAC-SHA256 under a secret that the
//! notifier (which mints them) and moira-web (which honours them) share.
//!
//! A token is `<hex of the JSON claims>.<hex of the tag>`. moira-web shows a
//! confirmation page for a GET and decides only on the POST from it, and
//! records each nonce it honours, so a link works once.

use serde::{Deserialize, Serialize};

use moira_protocol::hex;
use moira_protocol::ids::GateId;

/// What a link lets its holder do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    #[serde(rename = "g")]
    pub gate: GateId,
    #[serde(rename = "u")]
    pub user: String,
    /// `approve` or `deny`.
    #[serde(rename = "a")]
    pub action: String,
    /// Seconds since the epoch after which the link is refused.
    #[serde(rename = "e")]
    pub expires: u64,
    #[serde(rename = "n")]
    pub nonce: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("this is not a moira link")]
    Malformed,
    #[error("this link's signature does not match: it was changed or made elsewhere")]
    BadSignature,
    #[error("this link expired")]
    Expired,
}

fn key(secret: &str) -> ring::hmac::Key {
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes())
}

/// The longest token accepted (a link names short things).
const MAX_TOKEN: usize = 2048;

impl Link {
    /// A new link for `user` to `action` on `gate`, valid `ttl_secs` from `now_secs`.
    pub fn new(gate: GateId, user: &str, action: &str, now_secs: u64, ttl_secs: u64) -> Link {
        Link {
            gate,
            user: user.to_string(),
            action: action.to_string(),
            expires: now_secs.saturating_add(ttl_secs),
            nonce: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// The signed token.
    pub fn token(&self, secret: &str) -> String {
        let claims = serde_json::to_vec(self).unwrap_or_default();
        let tag = ring::hmac::sign(&key(secret), &claims);
        format!("{}.{}", hex::encode(&claims), hex::encode(tag.as_ref()))
    }

    /// The link a token stands for, if it was signed with `secret` and has
    /// not expired at `now_secs`. The tag is checked (in constant time)
    /// before the claims are read.
    pub fn verify(secret: &str, token: &str, now_secs: u64) -> Result<Link, LinkError> {
        if token.len() > MAX_TOKEN {
            return Err(LinkError::Malformed);
        }
        let (claims, tag) = token.split_once('.').ok_or(LinkError::Malformed)?;
        let (claims, tag) = (
            hex::decode(claims).ok_or(LinkError::Malformed)?,
            hex::decode(tag).ok_or(LinkError::Malformed)?,
        );
        ring::hmac::verify(&key(secret), &claims, &tag).map_err(|_| LinkError::BadSignature)?;
        let link: Link = serde_json::from_slice(&claims).map_err(|_| LinkError::Malformed)?;
        if now_secs > link.expires {
            return Err(LinkError::Expired);
        }
        Ok(link)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_verifies_until_it_expires_and_not_after_any_change() {
        let l = Link::new(GateId::new(), "bob", "approve", 1_000, 60);
        let t = l.token("s");
        assert_eq!(Link::verify("s", &t, 1_030), Ok(l.clone()));
        assert_eq!(Link::verify("s", &t, 1_061), Err(LinkError::Expired));
        assert_eq!(
            Link::verify("other", &t, 1_030),
            Err(LinkError::BadSignature)
        );
        // Claims changed (bob becomes another user): the tag no longer fits.
        let forged = Link {
            user: "mallory".into(),
            ..l
        };
        let (claims, _) = forged
            .token("x")
            .split_once('.')
            .map(|(c, t)| (c.to_string(), t.to_string()))
            .expect("token");
        let (_, tag) = t.split_once('.').expect("token");
        assert_eq!(
            Link::verify("s", &format!("{claims}.{tag}"), 1_030),
            Err(LinkError::BadSignature)
        );
        assert_eq!(Link::verify("s", "zz.zz", 1_030), Err(LinkError::Malformed));
        assert_eq!(
            Link::verify("s", &"a".repeat(5000), 1_030),
            Err(LinkError::Malformed)
        );
    }
}
