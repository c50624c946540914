//! `/api/v1/openapi.json`: the API's OpenAPI 3.1 document, made from the
//! handlers' annotations and the shapes' own types (utoipa), so it cannot
//! drift from what the code serves.

use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use moira_client::{GateSummary, GateView, LogLine, RunView};

/// `{"ok": true, "gate": …}`
#[derive(Serialize, ToSchema)]
pub(crate) struct GateReply {
    ok: bool,
    gate: GateView,
}

/// `{"ok": true, "total": N, "gates": […]}`: one page of gates.
#[derive(Serialize, ToSchema)]
pub(crate) struct GatesReply {
    ok: bool,
    /// How many matched, before paging.
    total: usize,
    gates: Vec<GateSummary>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct RunReply {
    ok: bool,
    run: RunView,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct RunsReply {
    ok: bool,
    total: usize,
    runs: Vec<RunView>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct LogsReply {
    ok: bool,
    lines: Vec<LogLine>,
    /// More lines are stored than one answer holds.
    truncated: bool,
}

/// What went wrong, with the NATS contract's codes.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    #[schema(example = "not_allowed")]
    code: ErrorCodeName,
    message: String,
}

/// The codes an error may carry.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub(crate) enum ErrorCodeName {
    BadRequest,
    Unauthenticated,
    TooLarge,
    NotFound,
    NotAllowed,
    AlreadyDecided,
    MissingInput,
    Conflict,
    Unsigned,
    BadSignature,
    WrongKey,
    Stale,
    NotCovered,
    OutOfOrder,
    Unavailable,
    Internal,
}

/// A gate's actions.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
#[allow(dead_code)]
pub(crate) enum Verb {
    Approve,
    Deny,
    PushBack,
    Cancel,
}

/// Which gates a list holds.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub(crate) enum GateFilter {
    Waiting,
    Approved,
    Denied,
    TimedOut,
    Cancelled,
    All,
}

/// Which runs a list holds.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub(crate) enum RunFilter {
    Queued,
    Running,
    Waiting,
    Succeeded,
    Failed,
    Rejected,
    Cancelled,
    All,
}

/// A run id: what `moira run submit` prints.
#[derive(Serialize, ToSchema)]
#[schema(pattern = "^[A-Za-z0-9_-]{1,128}$")]
pub(crate) struct RunId(String);

/// `{"ok": false, "error": {…}}`
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorReply {
    ok: bool,
    error: ErrorBody,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "moira-web",
        description = "Read and decide moira gates and runs. Decisions go to the gate-keepers like any client's, \
                       so their policy holds; who decides comes from the authentication (--auth), never the body.",
        license(name = "MIT OR Apache-2.0")
    ),
    paths(
        crate::api::list_gates,
        crate::api::show_gate,
        crate::api::check_gate,
        crate::api::decide,
        crate::api::list_runs,
        crate::api::show_run,
        crate::api::run_logs,
        crate::api::events,
        openapi_json,
    ),
    components(schemas(
        GateReply, GatesReply, RunReply, RunsReply, LogsReply, ErrorReply, Verb, RunId, GateFilter,
        RunFilter
    ))
)]
pub(crate) struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
pub(crate) async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}
