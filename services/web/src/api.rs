//! `/api/v1`: the same JSON shapes and error codes as the NATS contract.
//!
//! A reply is `{"ok": true, "gate": {…}}` (or `"gates"`, `"run"`), or
//! `{"ok": false, "error": {"code", "message"}}` with the HTTP status that
//! fits the code: `bad_request` 400, `unauthenticated` 401, `not_allowed`
//! and the signature codes (`unsigned`, `bad_signature`, `wrong_key`) 403,
//! `not_found` 404, `already_decided`, `conflict` and `stale` 409,
//! `too_large` 413, `missing_input` 422, `unavailable` 503, `internal`
//! 500.

// Handlers answer early with a whole `Response` as their error; boxing it
// would only add noise to every `?`.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use moira_client::{ClientError, GateId, ListFilter, RunView};
use moira_protocol::command::MAX_COMMAND_BYTES;
use moira_protocol::ids::CommandId;
use moira_protocol::{ErrorCode, GateStatus};

use crate::{State, Unauthenticated};

/// Event streams one moira-web serves at once; each holds a consumer on
/// the broker. More get 503.
pub const MAX_EVENT_STREAMS: usize = 256;

type Shared = Arc<State>;

pub(crate) fn router(state: Shared) -> Router {
    Router::new()
        .route("/api/v1/gates", get(list_gates))
        .route("/api/v1/gates/{id}", get(show_gate))
        .route("/api/v1/gates/{id}/check", get(check_gate))
        .route("/api/v1/gates/{id}/{verb}", post(decide))
        .route("/api/v1/runs", get(list_runs))
        .route("/api/v1/runs/{id}", get(show_run))
        .route("/api/v1/runs/{id}/logs", get(run_logs))
        .route("/api/v1/events", get(events))
        .route("/api/v1/openapi.json", get(crate::openapi::openapi_json))
        .merge(crate::page::routes())
        .route("/slack/interactivity", post(crate::slack::interactivity))
        .route(
            "/links/{token}",
            get(crate::links::show).post(crate::links::decide),
        )
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such path; the API is under /api/v1, the page at /",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_COMMAND_BYTES))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Headers every answer carries: nothing here is cached, sniffed or framed.
async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (k, v) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // Not `no-referrer`: with it a browser sends `Origin: null` on the
        // page's own form posts, which the CSRF check refuses.
        (header::REFERRER_POLICY, "same-origin"),
        // Pages run only moira-web's own script and style (nothing inline,
        // nothing from elsewhere), and post only to themselves.
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    r
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({"ok": false, "error": {"code": code, "message": message.into()}});
    (status, axum::Json(body)).into_response()
}

fn ok(key: &str, value: impl serde::Serialize) -> Response {
    let mut body = serde_json::Map::new();
    body.insert("ok".into(), Value::Bool(true));
    body.insert(
        key.into(),
        serde_json::to_value(value).unwrap_or(Value::Null),
    );
    (StatusCode::OK, axum::Json(Value::Object(body))).into_response()
}

pub(crate) fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::NotAllowed
        | ErrorCode::Unsigned
        | ErrorCode::BadSignature
        | ErrorCode::WrongKey => StatusCode::FORBIDDEN,
        ErrorCode::Stale => StatusCode::CONFLICT,
        ErrorCode::NotCovered | ErrorCode::OutOfOrder => StatusCode::CONFLICT,
        ErrorCode::AlreadyDecided | ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::MissingInput => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn client_error(e: ClientError) -> Response {
    match &e {
        ClientError::Rejected(c) => error(status_of(c.code), c.code.as_str(), c.message.clone()),
        ClientError::NotFound(_) | ClientError::RunNotFound(_) | ClientError::NoRunStreams => {
            error(StatusCode::NOT_FOUND, "not_found", e.to_string())
        }
        ClientError::Invalid(_) => error(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        ),
    }
}

fn unauthenticated(why: Unauthenticated) -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        unauthenticated_message(&why),
    )
}

/// Why nobody may decide here, and what to do about it.
pub(crate) fn unauthenticated_message(why: &Unauthenticated) -> String {
    match why {
        Unauthenticated::NoAuth => "moira-web was started without --auth, so it serves reads only. \
             Decide with the moira CLI, or run moira-web behind an authenticating proxy with --auth proxy"
            .to_string(),
        Unauthenticated::UntrustedPeer(ip) => format!(
            "this request came from {ip}, which is not a trusted proxy (--trusted-proxy); \
             its user header is not believed"
        ),
        Unauthenticated::NoUser(h) => format!("the request has no {h} header naming the user"),
    }
}

fn gate_id(id: &str) -> Result<GateId, Response> {
    id.parse::<GateId>().map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "'{}' is not a gate id",
                id.chars().take(64).collect::<String>()
            ),
        )
    })
}

/// The most items one list answer holds; `offset` pages on.
pub const MAX_PAGE: usize = 1_000;
/// The most log lines one answer holds.
pub const MAX_LOG_LINES: usize = 10_000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// waiting (the default), approved, denied, timed_out, cancelled or all.
    #[param(value_type = Option<crate::openapi::GateFilter>)]
    status: Option<String>,
    run: Option<String>,
    step: Option<String>,
    requested_by: Option<String>,
    /// At most 1000 (the default).
    #[param(minimum = 0, maximum = 1000)]
    limit: Option<u32>,
    #[param(value_type = Option<u64>, minimum = 0, maximum = 4294967295_u64)]
    offset: Option<u32>,
}

/// One page of `items`, with the total before paging.
fn page<T: serde::Serialize>(
    key: &str,
    items: Vec<T>,
    limit: Option<u32>,
    offset: Option<u32>,
) -> Response {
    let total = items.len();
    let (limit, offset) = (limit.map(|l| l as usize), offset.map(|o| o as usize));
    if limit.is_some_and(|l| l > MAX_PAGE) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("limit is at most {MAX_PAGE}"),
        );
    }
    let limit = limit.unwrap_or(MAX_PAGE);
    let items: Vec<T> = items
        .into_iter()
        .skip(offset.unwrap_or(0))
        .take(limit)
        .collect();
    let mut body = serde_json::Map::new();
    body.insert("ok".into(), Value::Bool(true));
    body.insert("total".into(), json!(total));
    body.insert(
        key.into(),
        serde_json::to_value(items).unwrap_or(Value::Null),
    );
    (StatusCode::OK, axum::Json(Value::Object(body))).into_response()
}

/// List gates (waiting ones unless `status` says otherwise), one page.
#[utoipa::path(get, path = "/api/v1/gates", tag = "gates", params(ListQuery),
    responses((status = 200, description = "One page of gates", body = crate::openapi::GatesReply),
        (status = 400, description = "Bad request", body = crate::openapi::ErrorReply),
        (status = 503, description = "The broker or the gate-keepers cannot be reached", body = crate::openapi::ErrorReply)))]
pub(crate) async fn list_gates(
    AxState(s): AxState<Shared>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("{}; the parameters are status, run, step, requested_by, limit (at most {MAX_PAGE}) and offset", e.body_text()),
            )
        }
    };
    let status = match q.status.as_deref().unwrap_or("waiting") {
        "all" => None,
        other => match GateStatus::parse(other) {
            Some(st) => Some(st),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "status is one of waiting, approved, denied, timed_out, cancelled, all",
                )
            }
        },
    };
    let filter = ListFilter {
        status,
        run_id: q.run,
    };
    match s.client.list(&filter).await {
        Ok(mut gates) => {
            gates.retain(|g| {
                q.step.as_ref().is_none_or(|st| g.step.as_ref() == Some(st))
                    && q.requested_by.as_ref().is_none_or(|r| &g.requested_by == r)
            });
            page("gates", gates, q.limit, q.offset)
        }
        Err(e) => client_error(e),
    }
}

/// One gate, whole.
#[utoipa::path(get, path = "/api/v1/gates/{id}", tag = "gates",
    params(("id" = String, Path, format = Uuid, description = "The gate id")),
    responses((status = 200, description = "The gate", body = crate::openapi::GateReply),
        (status = 404, description = "No such gate", body = crate::openapi::ErrorReply),
        (status = 400, description = "Bad request", body = crate::openapi::ErrorReply),
        (status = 503, description = "The broker or the gate-keepers cannot be reached", body = crate::openapi::ErrorReply)))]
pub(crate) async fn show_gate(AxState(s): AxState<Shared>, Path(id): Path<String>) -> Response {
    let id = match gate_id(&id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match s.client.show(id).await {
        Ok(g) => ok("gate", g),
        Err(e) => client_error(e),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct CheckQuery {
    /// `sha256:` and 64 hex digits: an artifact's, or a tool call's (the
    /// SHA-256 of its canonical JSON).
    digest: String,
}

/// Whether the gate is approved, its approval still holds (valid_for) and
/// it covers the digest: 200 with the gate if so, 409 `not_covered` and
/// the reason if not (`moira gate check` over HTTP).
#[utoipa::path(get, path = "/api/v1/gates/{id}/check", tag = "gates",
    params(("id" = String, Path, format = Uuid, description = "The gate id"), CheckQuery),
    responses((status = 200, description = "Approved, in force, and covering the digest", body = crate::openapi::GateReply),
        (status = 409, description = "Not covered: not approved, expired, or another digest", body = crate::openapi::ErrorReply),
        (status = 404, description = "No such gate", body = crate::openapi::ErrorReply),
        (status = 400, description = "Bad request", body = crate::openapi::ErrorReply),
        (status = 503, description = "The broker cannot be reached", body = crate::openapi::ErrorReply)))]
pub(crate) async fn check_gate(
    AxState(s): AxState<Shared>,
    Path(id): Path<String>,
    q: Result<Query<CheckQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let id = match gate_id(&id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let Ok(Query(q)) = q else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "give ?digest=sha256:<64 hex digits>".to_string(),
        );
    };
    if let Err(e) = moira_protocol::binding::parse_digest(&q.digest) {
        return error(StatusCode::BAD_REQUEST, "bad_request", e);
    }
    match s.client.check_gate(id, &q.digest).await {
        Ok(Ok(g)) => ok("gate", g),
        Ok(Err(why)) => error(StatusCode::CONFLICT, "not_covered", why.to_string()),
        Err(e) => client_error(e),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct RunsQuery {
    /// queued, running, waiting, succeeded, failed, rejected, cancelled;
    /// all when absent.
    #[param(value_type = Option<crate::openapi::RunFilter>)]
    status: Option<String>,
    #[param(minimum = 0, maximum = 1000)]
    limit: Option<u32>,
    #[param(value_type = Option<u64>, minimum = 0, maximum = 4294967295_u64)]
    offset: Option<u32>,
}

/// List runs, one page.
#[utoipa::path(get, path = "/api/v1/runs", tag = "runs", params(RunsQuery),
    responses((status = 200, description = "One page of runs", body = crate::openapi::RunsReply),
        (status = 400, description = "Bad request", body = crate::openapi::ErrorReply),
        (status = 503, description = "The broker or the gate-keepers cannot be reached", body = crate::openapi::ErrorReply)))]
pub(crate) async fn list_runs(
    AxState(s): AxState<Shared>,
    q: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!(
                    "{}; the parameters are status, limit (at most {MAX_PAGE}) and offset",
                    e.body_text()
                ),
            )
        }
    };
    let status = match q.status.as_deref() {
        None | Some("all") => None,
        Some(st) => match moira_protocol::run::RunStatus::parse(st) {
            Some(st) => Some(st),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!(
                        "'{}' is not a run status",
                        st.chars().take(32).collect::<String>()
                    ),
                )
            }
        },
    };
    match s.client.list_runs(status).await {
        Ok(runs) => page("runs", runs, q.limit, q.offset),
        // No runner has made the run streams yet: no runs.
        Err(ClientError::NoRunStreams) => page::<RunView>("runs", vec![], q.limit, q.offset),
        Err(e) => client_error(e),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct LogsQuery {
    /// One step's lines; all steps' when absent.
    #[param(pattern = "^[A-Za-z0-9_-]{1,128}$")]
    step: Option<String>,
}

/// The lines stored so far, at most [`MAX_LOG_LINES`] (`truncated` says so).
#[utoipa::path(get, path = "/api/v1/runs/{id}/logs", tag = "runs",
    params(("id" = crate::openapi::RunId, Path, description = "The run id"), LogsQuery),
    responses((status = 200, description = "The step output stored so far", body = crate::openapi::LogsReply),
        (status = 404, description = "No such run", body = crate::openapi::ErrorReply),
        (status = 400, description = "Bad request", body = crate::openapi::ErrorReply),
        (status = 503, description = "The broker or the gate-keepers cannot be reached", body = crate::openapi::ErrorReply)))]
pub(crate) async fn run_logs(
    AxState(s): AxState<Shared>,
    Path(id): Path<String>,
    q: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    use futures_util::StreamExt;
    let Ok(Query(q)) = q else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the query parameter is step",
        );
    };
    let tokens_ok = moira_protocol::ids::is_subject_token(&id)
        && q.step
            .as_deref()
            .is_none_or(moira_protocol::ids::is_subject_token);
    if !tokens_ok {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "not a run id or step name",
        );
    }
    if let Err(e) = s.client.show_run(&id).await {
        return client_error(e);
    }
    let lines = match s.client.run_logs(&id, q.step.as_deref(), false).await {
        Ok(l) => l,
        Err(e) => return client_error(e),
    };
    let mut lines = Box::pin(lines);
    let mut out = Vec::new();
    let mut truncated = false;
    while let Some(l) = lines.next().await {
        match l {
            Ok(l) if out.len() < MAX_LOG_LINES => out.push(l),
            Ok(_) => {
                truncated = true;
                break;
            }
            Err(e) => return client_error(e),
        }
    }
    (
        StatusCode::OK,
        axum::Json(json!({"ok": true, "lines": out, "truncated": truncated})),
    )
        .into_response()
}

/// One run and its steps.
#[utoipa::path(get, path = "/api/v1/runs/{id}", tag = "runs",
    params(("id" = crate::openapi::RunId, Path, description = "The run id")),
    responses((status = 200, description = "The run", body = crate::openapi::RunReply),
        (status = 404, description = "No such run", body = crate::openapi::ErrorReply),
        (status = 400, description = "Bad request", body = crate::openapi::ErrorReply),
        (status = 503, description = "The broker or the gate-keepers cannot be reached", body = crate::openapi::ErrorReply)))]
pub(crate) async fn show_run(AxState(s): AxState<Shared>, Path(id): Path<String>) -> Response {
    if !moira_protocol::ids::is_subject_token(&id) {
        return error(StatusCode::BAD_REQUEST, "bad_request", "not a run id");
    }
    match s.client.show_run(&id).await {
        Ok(r) => ok("run", r),
        Err(e) => client_error(e),
    }
}

/// What a decision's body may hold. The actor is never one of them: it
/// comes from the authentication.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DecisionBody {
    /// The command id; send the same one again to retry safely.
    id: Option<CommandId>,
    /// approve and push-back only.
    comment: Option<String>,
    /// deny (required) and cancel only.
    reason: Option<String>,
    /// approve and push-back only: values for the gate's inputs.
    #[serde(default)]
    inputs: BTreeMap<String, String>,
}

fn body<T: DeserializeOwned + Default>(bytes: &Bytes) -> Result<T, Response> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("the body is not a valid decision: {e}"),
        )
    })
}

/// Approve, deny, push back or cancel a gate, as the authenticated user.
#[utoipa::path(post, path = "/api/v1/gates/{id}/{verb}", tag = "gates",
    params(("id" = String, Path, format = Uuid, description = "The gate id"),
        ("verb" = crate::openapi::Verb, Path, description = "The action")),
    request_body(content = DecisionBody, content_type = "application/json"),
    responses((status = 200, description = "The gate after the decision", body = crate::openapi::GateReply),
        (status = 401, description = "Nobody is authenticated (see --auth)", body = crate::openapi::ErrorReply),
        (status = 403, description = "The gate's policy or the signature rules refuse it", body = crate::openapi::ErrorReply),
        (status = 404, description = "No such gate or action", body = crate::openapi::ErrorReply),
        (status = 409, description = "Already decided, or a conflicting command id", body = crate::openapi::ErrorReply),
        (status = 413, description = "The body is too large", body = crate::openapi::ErrorReply),
        (status = 415, description = "The body is not application/json", body = crate::openapi::ErrorReply),
        (status = 422, description = "A required input is missing", body = crate::openapi::ErrorReply),
        (status = 400, description = "Bad request", body = crate::openapi::ErrorReply),
        (status = 503, description = "The broker or the gate-keepers cannot be reached", body = crate::openapi::ErrorReply)))]
pub(crate) async fn decide(
    AxState(s): AxState<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((id, verb)): Path<(String, String)>,
    headers: HeaderMap,
    bytes: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let Ok(bytes) = bytes else {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("a decision's body is at most {MAX_COMMAND_BYTES} bytes"),
        );
    };
    let gate = match gate_id(&id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    // A page on another site can make a browser POST a form (its cookies
    // and a proxy's user header along) but not with this content type
    // without a CORS preflight, which is never granted: no cross-site
    // request forgery.
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json_body {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_request",
            "a decision's body must be sent as Content-Type: application/json",
        );
    }
    let actor = match s.user(&headers, peer) {
        Ok(u) => u,
        Err(why) => return unauthenticated(why),
    };
    let b: DecisionBody = match body(&bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    // A field the action does not use is a mistake to report, not drop.
    let stray = match verb.as_str() {
        "approve" | "push-back" => b.reason.is_some().then_some("reason"),
        "deny" | "cancel" => {
            (b.comment.is_some() || !b.inputs.is_empty()).then_some("comment or inputs")
        }
        _ => None,
    };
    if let Some(field) = stray {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{verb} takes no {field}"),
        );
    }
    let verb: &'static str = match verb.as_str() {
        "approve" => "approve",
        "deny" => "deny",
        "push-back" => "push-back",
        "cancel" => "cancel",
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                "a gate's actions are approve, deny, push-back and cancel",
            )
        }
    };
    if verb == "deny" && b.reason.is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "a denial needs a reason",
        );
    }
    let result = s
        .decide(crate::Decision {
            verb,
            gate,
            actor,
            id: b.id,
            comment: b.comment,
            reason: b.reason,
            inputs: b.inputs,
            via: s.via(),
            traceparent: crate::traceparent(&headers),
        })
        .await;
    match result {
        Ok(g) => ok("gate", g),
        Err(e) => client_error(e),
    }
}

/// The last sequence a stream holds now (0 when it is empty or missing).
async fn last_sequence(s: &State, stream: &str) -> u64 {
    let js = async_nats::jetstream::new(s.client.nats().clone());
    match js.get_stream(stream).await {
        Ok(mut st) => st.info().await.map(|i| i.state.last_sequence).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Where a reader of `/api/v1/events` is: the last gate and run event
/// sequences it got, written as the event id `<gate seq>-<run seq>`.
fn positions(last_event_id: Option<&str>) -> (Option<u64>, Option<u64>) {
    let Some((g, r)) = last_event_id.and_then(|v| v.trim().split_once('-')) else {
        return (None, None);
    };
    (g.parse().ok(), r.parse().ok())
}

/// `GET /api/v1/events`: Server-Sent Events, a `gate` event per stored gate
/// event (data as `moira gate watch --json`) and a `run` event per stored
/// run event. Each id is `<gate seq>-<run seq>`, the newest of both so far,
/// so a reconnecting `EventSource` (which sends `Last-Event-ID`) resumes
/// both feeds where it left off.
#[utoipa::path(get, path = "/api/v1/events", tag = "events",
    params(("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id (`<gate seq>-<run seq>`)")),
    responses((status = 200, description = "Server-Sent Events: `gate` and `run` events, as JSON", content_type = "text/event-stream"),
        (status = 503, description = "Too many event streams, or the broker cannot be reached", body = crate::openapi::ErrorReply)))]
pub(crate) async fn events(AxState(s): AxState<Shared>, headers: HeaderMap) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures_util::StreamExt;
    let Ok(permit) = s.streams.clone().try_acquire_owned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("this moira-web already serves {MAX_EVENT_STREAMS} event streams"),
        );
    };
    let (gate_after, run_after) =
        positions(headers.get("last-event-id").and_then(|v| v.to_str().ok()));
    // A new reader starts at the streams' ends as they are now, so the ids
    // it gets name real positions in both feeds and a reconnect after any
    // of them resumes both exactly.
    let gate_after = match gate_after {
        Some(seq) => seq,
        None => last_sequence(&s, moira_protocol::wire::GATES_STREAM).await,
    };
    let run_after = match run_after {
        Some(seq) => seq,
        None => last_sequence(&s, moira_protocol::wire::RUNS_STREAM).await,
    };
    let gates = match s.client.watch_after(gate_after).await {
        Ok(f) => f.boxed(),
        Err(e) => return client_error(e),
    };
    let runs = match s.client.watch_runs(Some(run_after)).await {
        Ok(f) => f.boxed(),
        // No runner has made the run streams yet: gate events only.
        Err(ClientError::NoRunStreams) => futures_util::stream::pending().boxed(),
        Err(e) => return client_error(e),
    };
    enum Item {
        Gate(Result<moira_client::StoredEvent, ClientError>),
        Run(Result<(u64, moira_protocol::run::RunEnvelope), ClientError>),
    }
    let merged = futures_util::stream::select(gates.map(Item::Gate), runs.map(Item::Run));
    let mut at = (gate_after, run_after);
    let stream = merged.filter_map(move |item| {
        // Held while the stream lives.
        let _held = &permit;
        let out = match item {
            Item::Gate(Ok(ev)) => match &ev.event {
                moira_protocol::event::Decoded::Event(env) => {
                    at.0 = at.0.max(ev.seq);
                    let data = json!({
                        "seq": ev.seq,
                        "gate_id": env.gate_id,
                        "kind": env.event.kind(),
                        "actor": env.actor,
                        "at": moira_protocol::time::rfc3339(env.at),
                        "event": env.event,
                    });
                    Some(("gate", data))
                }
                // A kind this build does not know, or bytes that do not decode.
                _ => None,
            },
            Item::Run(Ok((seq, env))) => {
                at.1 = at.1.max(seq);
                let data = json!({
                    "seq": seq,
                    "run_id": env.run_id,
                    "kind": env.kind(),
                    "actor": env.actor,
                    "at": moira_protocol::time::rfc3339(env.at),
                    "event": env.event,
                });
                Some(("run", data))
            }
            Item::Gate(Err(e)) | Item::Run(Err(e)) => {
                Some(("error", json!({"message": e.to_string()})))
            }
        };
        let out = out.map(|(kind, data)| {
            Ok::<_, std::convert::Infallible>(
                Event::default()
                    .event(kind)
                    .id(format!("{}-{}", at.0, at.1))
                    .data(data.to_string()),
            )
        });
        std::future::ready(out)
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response()
}
