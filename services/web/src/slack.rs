//! `POST /slack/interactivity`: Slack's Approve and Deny buttons.
//!
//! A request counts only when Slack signed it: `X-Slack-Signature` is
//! `v0=` and the hex HMAC-SHA256, under the app's signing secret, of
//! `v0:<X-Slack-Request-Timestamp>:<body>`, compared in constant time, with
//! the timestamp within five minutes. The Slack user must be mapped to a
//! moira user in the approvers registry (`slack = "U…"`); the decision is
//! then that user's, through the gate-keeper like any other, and the
//! message is replaced with the outcome (also when the gate had been
//! decided elsewhere). moira-web posts that update only to a
//! `response_url` under `--slack-api`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use moira_client::{ClientError, GateId, GateView};
use moira_protocol::time::now_ms;
use moira_protocol::ErrorCode;
use moira_service::slack::mrkdwn_escape;

use crate::State;

/// How far a request's timestamp may be from now.
pub const WINDOW_SECS: u64 = 300;
/// The action ids of moira's buttons.
pub const APPROVE: &str = "moira_approve";
pub const DENY: &str = "moira_deny";

/// What moira-web needs to answer Slack.
#[derive(Debug, Clone)]
pub struct SlackSettings {
    /// The app's signing secret.
    pub signing_secret: String,
    /// Where `response_url`s may point (`https://hooks.slack.com/`).
    pub api: String,
}

#[derive(Debug, Deserialize)]
struct Interaction {
    #[serde(rename = "type")]
    kind: String,
    user: SlackUser,
    #[serde(default)]
    actions: Vec<Action>,
    response_url: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SlackUser {
    id: String,
}

#[derive(Debug, Deserialize)]
struct Action {
    action_id: String,
    #[serde(default)]
    value: String,
}

fn refuse(status: StatusCode, why: &str) -> Response {
    tracing::warn!("refused a Slack request: {why}");
    (status, why.to_string()).into_response()
}

/// Whether Slack signed this body at this time.
pub fn signed(
    secret: &str,
    headers: &HeaderMap,
    body: &[u8],
    now_secs: u64,
) -> Result<(), &'static str> {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let ts = header("x-slack-request-timestamp")
        .and_then(|t| t.trim().parse::<u64>().ok())
        .ok_or("no X-Slack-Request-Timestamp")?;
    if now_secs.abs_diff(ts) > WINDOW_SECS {
        return Err("the request is older than five minutes (or from the future)");
    }
    let sig = header("x-slack-signature")
        .and_then(|s| s.strip_prefix("v0="))
        .ok_or("no v0 X-Slack-Signature")?;
    let tag = Some(sig)
        .filter(|s| s.len() <= 128)
        .and_then(moira_protocol::hex::decode)
        .ok_or("the signature is not hex")?;
    let mut msg = format!("v0:{ts}:").into_bytes();
    msg.extend_from_slice(body);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    // Constant time.
    ring::hmac::verify(&key, &msg, &tag).map_err(|_| "the signature does not match")
}

pub(crate) async fn interactivity(
    AxState(s): AxState<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(slack) = s.slack.as_ref() else {
        return refuse(
            StatusCode::NOT_FOUND,
            "Slack is not set up on this moira-web (--slack-signing-secret-file)",
        );
    };
    if let Err(why) = signed(&slack.signing_secret, &headers, &body, now_ms() / 1000) {
        return refuse(StatusCode::UNAUTHORIZED, why);
    }
    let form: HashMap<String, String> = match serde_urlencoded::from_bytes(&body) {
        Ok(f) => f,
        Err(_) => return refuse(StatusCode::BAD_REQUEST, "not a form body"),
    };
    let Some(i) = form
        .get("payload")
        .and_then(|p| serde_json::from_str::<Interaction>(p).ok())
    else {
        return refuse(StatusCode::BAD_REQUEST, "no interaction payload");
    };
    if i.kind != "block_actions" {
        return StatusCode::OK.into_response();
    }
    let Some(action) = i.actions.first() else {
        return StatusCode::OK.into_response();
    };
    let Ok(gate) = action.value.parse::<GateId>() else {
        return refuse(StatusCode::BAD_REQUEST, "the button names no gate");
    };
    let registry = s.registry.current();
    let text = match registry.user_for_slack(&i.user.id) {
        None => {
            tracing::warn!(slack_user = i.user.id, %gate, "a Slack user no moira user is mapped to");
            format!(
                "Your Slack account is not linked to a moira user (`slack = \"{}\"` in the approvers registry), so nothing was decided.",
                mrkdwn_escape(&i.user.id)
            )
        }
        Some(user) => decide(&s, gate, &action.action_id, user).await,
    };
    if let Some(url) = i.response_url.as_deref() {
        update(slack, url, &text).await;
    }
    StatusCode::OK.into_response()
}

async fn decide(s: &State, gate: GateId, action: &str, user: &str) -> String {
    let (verb, comment, reason) = match action {
        APPROVE => ("approve", Some("approved in Slack".to_string()), None),
        DENY => ("deny", None, Some("denied in Slack".to_string())),
        _ => return "This button is not one of moira's.".into(),
    };
    let result = s
        .decide(crate::Decision {
            verb,
            gate,
            actor: user.to_string(),
            comment,
            reason,
            via: Some("slack".into()),
            ..Default::default()
        })
        .await;
    tracing::info!(%gate, action, user, ok = result.is_ok(), "decision from Slack");
    match result {
        Ok(g) => outcome(&g),
        Err(ClientError::Rejected(e)) if e.code == ErrorCode::AlreadyDecided => {
            match s.client.show(gate).await {
                Ok(g) => format!("Already decided: {}", outcome(&g)),
                Err(_) => "This gate was already decided.".into(),
            }
        }
        Err(e) => format!("Not decided: {}", mrkdwn_escape(&e.to_string())),
    }
}

/// One line on a decided (or still waiting) gate, escaped for mrkdwn.
fn outcome(g: &GateView) -> String {
    let what = g.title.clone().unwrap_or_else(|| g.message.clone());
    let by = g
        .decided_by
        .clone()
        .or_else(|| g.approvals.last().map(|a| a.by.clone()))
        .unwrap_or_default();
    mrkdwn_escape(&format!("*{}* by {by}: {what}", g.status.as_str()))
}

/// Replaces the message the button was on, through its `response_url`.
async fn update(slack: &SlackSettings, url: &str, text: &str) {
    if !url.starts_with(&slack.api) {
        tracing::warn!("a response_url outside --slack-api; the message is not updated");
        return;
    }
    static HTTP: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let http = HTTP.get_or_init(|| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .unwrap_or_default()
    });
    let body = serde_json::json!({"replace_original": true, "text": text});
    if let Err(e) = http.post(url).json(&body).send().await {
        tracing::warn!("updating the Slack message failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, ts: u64, body: &[u8]) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let mut msg = format!("v0:{ts}:").into_bytes();
        msg.extend_from_slice(body);
        let tag = ring::hmac::sign(&key, &msg);
        format!("v0={}", moira_protocol::hex::encode(tag.as_ref()))
    }

    fn headers(ts: u64, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "x-slack-request-timestamp",
            ts.to_string().parse().expect("value"),
        );
        h.insert("x-slack-signature", sig.parse().expect("value"));
        h
    }

    #[test]
    fn only_a_fresh_request_signed_with_the_secret_counts() {
        let body = b"payload=%7B%7D";
        let now = 1_700_000_000;
        let good = sign("s3cret", now, body);
        assert_eq!(
            signed("s3cret", &headers(now, &good), body, now + 10),
            Ok(())
        );
        assert!(signed("other", &headers(now, &good), body, now).is_err());
        assert!(signed("s3cret", &headers(now, &good), b"payload=x", now).is_err());
        assert!(signed("s3cret", &headers(now, &good), body, now + WINDOW_SECS + 1).is_err());
        assert!(signed("s3cret", &headers(now, "v0=zz"), body, now).is_err());
        assert!(signed("s3cret", &HeaderMap::new(), body, now).is_err());
    }
}
