//! `GET` and `POST /links/{token}`: one-click links from notifications.
//!
//! A GET only shows what the link would do, with a button; mail scanners
//! and link previews that open links decide nothing. The POST from that
//! page decides, once: the link's nonce is recorded in the
//! `MOIRA_WEB_LINKS` bucket with a create that fails if it is there, so a
//! second use (on any moira-web) is refused.

// Handlers answer early with a whole `Response` as their error.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use axum::response::Response;

use moira_client::{ClientError, GateView};
use moira_protocol::time::now_ms;
use moira_service::links::{Link, LinkError};

use crate::State;

/// The nonces of links used; kept longer than any link may live.
pub use moira_protocol::wire::WEB_LINKS_BUCKET as BUCKET;
/// The longest a link may live; one that says more is refused.
pub const MAX_TTL_SECS: u64 = 7 * 24 * 3600;

/// Text for HTML: nothing in it can open a tag or an attribute.
pub fn html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    // `body` is built with [`html`] around every value.
    crate::page::plain(status, title, maud::PreEscaped(body.to_string()))
}

fn verb(action: &str) -> &'static str {
    if action == "deny" {
        "Deny"
    } else {
        "Approve"
    }
}

/// The link, if this moira-web honours links and it verifies.
fn check(s: &State, token: &str) -> Result<Link, Response> {
    let Some(secret) = s.link_secret.as_deref() else {
        return Err(page(
            StatusCode::NOT_FOUND,
            "moira",
            "<h1>Links are not set up here</h1>",
        ));
    };
    let now = now_ms() / 1000;
    let refused = |status: StatusCode, why: &str| {
        Err(page(
            status,
            "moira: link refused",
            &format!("<h1>This link cannot be used</h1><p>{}</p>", html(why)),
        ))
    };
    match Link::verify(secret, token, now) {
        Ok(l) if l.expires.saturating_sub(now) > MAX_TTL_SECS => refused(
            StatusCode::FORBIDDEN,
            "it claims to live longer than a link may",
        ),
        Ok(l) if l.action != "approve" && l.action != "deny" => {
            refused(StatusCode::FORBIDDEN, "it names no action moira knows")
        }
        Ok(l) => Ok(l),
        Err(LinkError::Expired) => refused(StatusCode::GONE, &LinkError::Expired.to_string()),
        Err(e) => refused(StatusCode::FORBIDDEN, &e.to_string()),
    }
}

fn describe(g: &GateView) -> String {
    let title = g.title.clone().unwrap_or_else(|| "A gate".into());
    format!(
        "<p><strong>{}</strong></p><pre>{}</pre><p>Requested by {} · status {}</p>",
        html(&title),
        html(&g.message),
        html(&g.requested_by),
        html(g.status.as_str())
    )
}

pub(crate) async fn show(AxState(s): AxState<Arc<State>>, Path(token): Path<String>) -> Response {
    let link = match check(&s, &token) {
        Ok(l) => l,
        Err(r) => return r,
    };
    let gate = match s.client.show(link.gate).await {
        Ok(g) => g,
        Err(e) => {
            return page(
                StatusCode::NOT_FOUND,
                "moira",
                &format!("<h1>No such gate</h1><p>{}</p>", html(&e.to_string())),
            )
        }
    };
    let v = verb(&link.action);
    let body = format!(
        "<h1>{v} this gate as {}?</h1>{}<form method=\"post\"><button type=\"submit\">{v} as {}</button></form>\
         <p>Nothing is decided until you press the button. The link works once.</p>",
        html(&link.user),
        describe(&gate),
        html(&link.user)
    );
    page(StatusCode::OK, &format!("moira: {v}?"), &body)
}

pub(crate) async fn decide(AxState(s): AxState<Arc<State>>, Path(token): Path<String>) -> Response {
    let link = match check(&s, &token) {
        Ok(l) => l,
        Err(r) => return r,
    };
    // Once only, across every moira-web.
    let kv = match used_links(&s).await {
        Ok(kv) => kv,
        Err(e) => {
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "moira",
                &format!("<h1>Try again</h1><p>{}</p>", html(&e)),
            )
        }
    };
    let used = kv
        .create(link.nonce.as_str(), now_ms().to_string().into())
        .await;
    match used {
        Ok(_) => {}
        Err(e) if e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => {
            return page(
                StatusCode::CONFLICT,
                "moira: link used",
                "<h1>This link was used already</h1>",
            )
        }
        Err(e) => {
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "moira",
                &format!("<h1>Try again</h1><p>{}</p>", html(&e.to_string())),
            )
        }
    }
    // The command id comes from the nonce: if a lost reply made the link
    // come back and it is pressed again, the gate-keeper sees a repeat.
    let id = Some(moira_protocol::ids::CommandId(uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("moira-link:{}", link.nonce).as_bytes(),
    )));
    let (verb, comment, reason) = if link.action == "deny" {
        (
            "deny",
            None,
            Some("denied through a one-click link".to_string()),
        )
    } else {
        (
            "approve",
            Some("approved through a one-click link".to_string()),
            None,
        )
    };
    let result = s
        .decide(crate::Decision {
            verb,
            gate: link.gate,
            actor: link.user.clone(),
            id,
            comment,
            reason,
            via: Some("link".into()),
            ..Default::default()
        })
        .await;
    tracing::info!(gate = %link.gate, user = link.user, action = link.action, ok = result.is_ok(), "decision through a link");
    match result {
        Ok(g) => page(
            StatusCode::OK,
            "moira: done",
            &format!("<h1>Done</h1>{}", describe(&g)),
        ),
        Err(ClientError::Rejected(e)) => page(
            crate::api::status_of(e.code),
            "moira: not decided",
            &format!("<h1>Not decided</h1><p>{}</p>", html(&e.message)),
        ),
        Err(e) => {
            // Nothing was decided (no gate-keeper answered): give the link
            // back, so pressing again later works.
            if let Err(d) = kv.delete(link.nonce.as_str()).await {
                tracing::warn!(gate = %link.gate, "could not give a link back: {d}");
            }
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "moira",
                &format!("<h1>Not decided</h1><p>{}</p>", html(&e.to_string())),
            )
        }
    }
}

async fn used_links(s: &State) -> Result<async_nats::jetstream::kv::Store, String> {
    let js = async_nats::jetstream::new(s.client.nats().clone());
    match js.get_key_value(BUCKET).await {
        Ok(kv) => Ok(kv),
        Err(_) => js
            // Longer than a link may live, so a nonce is never forgotten while its link works.
            .create_key_value(moira_protocol::wire::streams::web_links_bucket_config(
                moira_client::streams::replicas_in_use(&js).await,
                std::time::Duration::from_secs(MAX_TTL_SECS + 24 * 3600),
            ))
            .await
            .map_err(|e| format!("cannot create the {BUCKET} bucket: {e}")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn html_escapes_everything_that_opens_markup() {
        assert_eq!(
            super::html("<script>\"x\" & 'y'</script>"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
    }
}
