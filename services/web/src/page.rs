//! The web page: waiting gates, one gate, runs and one run, with forms to
//! decide.
//!
//! Everything is rendered on the server with `maud`, which escapes every
//! value it is given, so text from a gate or a run can never become markup.
//! A little plain JavaScript (`/static/app.js`, the only script; the CSP
//! allows no other) follows `/api/v1/events` and swaps in fragments the
//! server rendered, so lists and states change without a reload.
//!
//! A decision from the page takes two POSTs: the form shows a confirmation
//! page, and only its Confirm button decides. Both carry a CSRF token that
//! must equal the `moira_csrf` cookie (double submit; the cookie is
//! `SameSite=Strict`), and a request that a browser marks as cross-site is
//! refused before any of that.

// Handlers answer early with a whole `Response` as their error.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;

use moira_client::{ClientError, GateId, GateSummary, GateView, ListFilter, RunView};
use moira_protocol::ids::CommandId;
use moira_protocol::GateStatus;

use crate::{AuthMode, State, Unauthenticated};

type Shared = Arc<State>;

/// Rows one page of a list shows; `?offset=` pages on.
pub const PAGE_ROWS: usize = 500;
/// Log lines of one step shown on a run's page.
pub const PAGE_LOG_LINES: usize = 2_000;

/// The cookie holding the CSRF token.
pub const CSRF_COOKIE: &str = "moira_csrf";
/// With `--auth dev`: the cookie holding the name picked on the page.
pub const DEV_USER_COOKIE: &str = "moira_dev_user";

const APP_JS: &str = include_str!("../static/app.js");
const STYLE_CSS: &str = include_str!("../static/style.css");

pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/", get(waiting_page))
        .route("/gates/{id}", get(gate_page))
        .route("/gates/{id}/{verb}", post(gate_form))
        .route("/runs", get(runs_page))
        .route("/runs/{id}", get(run_page))
        .route("/fragments/row/{id}", get(row_fragment))
        .route("/fragments/gates/{id}", get(gate_fragment))
        .route("/fragments/runs/{id}", get(run_fragment))
        .route("/dev/user", post(dev_user))
        .route("/static/app.js", get(|| asset(APP_JS, "text/javascript")))
        .route("/static/style.css", get(|| asset(STYLE_CSS, "text/css")))
}

async fn asset(body: &'static str, kind: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

// ---------------------------------------------------------------------------
// Text

/// Shows C0 control characters (escape sequences, carriage returns, bells)
/// as their visible pictures: on a page they are noise at best, and a
/// copied command should not carry them hidden. Tabs and newlines stay.
pub fn visible(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\t' | '\n' => c,
            c if (c as u32) < 0x20 => char::from_u32(0x2400 + c as u32).unwrap_or('?'),
            '\u{7f}' => '\u{2421}',
            c => c,
        })
        .collect()
}

fn status_class(status: &str) -> String {
    format!("badge {status}")
}

// ---------------------------------------------------------------------------
// Layout

/// Who the page acts as, for the banner and the forms.
struct Viewer {
    /// The user a decision would be made as, or why there is none.
    user: Result<String, Unauthenticated>,
    auth: AuthMode,
    /// The CSRF token forms carry.
    csrf: String,
    /// Set when the browser had no token yet.
    set_cookie: Option<String>,
}

impl State {
    /// The user a page decision is made as. Like [`State::user`], except
    /// that in dev mode the name picked on the page (a cookie) also counts.
    pub(crate) fn page_user(
        &self,
        headers: &HeaderMap,
        peer: SocketAddr,
    ) -> Result<String, Unauthenticated> {
        if self.auth == AuthMode::Dev {
            if let Some(name) = cookie(headers, DEV_USER_COOKIE) {
                if moira_protocol::ids::is_valid_name(&name) {
                    return Ok(name);
                }
            }
        }
        self.user(headers, peer)
    }
}

/// A cookie's value, if the request carries it.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
}

fn viewer(s: &State, headers: &HeaderMap, peer: SocketAddr) -> Viewer {
    let existing = cookie(headers, CSRF_COOKIE)
        .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()));
    let (csrf, set_cookie) = match existing {
        Some(t) => (t, None),
        None => {
            let t = moira_protocol::hex::encode(&rand_bytes());
            let c = format!("{CSRF_COOKIE}={t}; Path=/; HttpOnly; SameSite=Strict");
            (t, Some(c))
        }
    };
    Viewer {
        user: s.page_user(headers, peer),
        auth: s.auth,
        csrf,
        set_cookie,
    }
}

fn rand_bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    b[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    b[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    b
}

fn layout(v: Option<&Viewer>, title: &str, live: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (visible(title)) " · moira" }
                link rel="stylesheet" href="/static/style.css";
                script src="/static/app.js" defer {}
            }
            body data-live-page=[live] {
                header.top {
                    a.brand href="/" { "moira" }
                    nav { a href="/" { "Waiting" } " " a href="/runs" { "Runs" } }
                    @if let Some(v) = v { (who(v)) }
                }
                @if let Some(v) = v { @if v.auth == AuthMode::Dev { (dev_banner(v)) } }
                main { (body) }
            }
        }
    }
}

fn who(v: &Viewer) -> Markup {
    html! {
        span.who {
            @match &v.user {
                Ok(u) => { "Deciding as " strong #whoami { (u) } }
                Err(Unauthenticated::NoAuth) => { "Read only" }
                Err(_) => { "Not signed in" }
            }
        }
    }
}

fn dev_banner(v: &Viewer) -> Markup {
    html! {
        div.devbanner role="alert" {
            strong { "Development mode (--auth dev)." }
            " Anyone who can reach this page can decide as anyone. "
            form.inline method="post" action="/dev/user" {
                input type="hidden" name="csrf" value=(v.csrf);
                label { "Act as " input name="user" required maxlength="64" size="10"
                    value=[v.user.as_ref().ok()] placeholder="name"; }
                " " button type="submit" { "Switch" }
            }
        }
    }
}

fn html_response(status: StatusCode, v: Option<&Viewer>, doc: Markup) -> Response {
    let mut r = (status, doc.into_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Some(c) = v.and_then(|v| v.set_cookie.as_ref()) {
        if let Ok(c) = HeaderValue::from_str(c) {
            r.headers_mut().insert(header::SET_COOKIE, c);
        }
    }
    r
}

fn fragment(doc: Markup) -> Response {
    html_response(StatusCode::OK, None, doc)
}

/// A whole page saying what went wrong.
fn problem(v: Option<&Viewer>, status: StatusCode, title: &str, detail: &str) -> Response {
    let body = html! { h1 { (title) } p.problem { (visible(detail)) } p { a href="/" { "Back to waiting gates" } } };
    html_response(status, v, layout(v, title, None, body))
}

/// A page for a failed read or decision.
fn client_problem(v: Option<&Viewer>, e: &ClientError) -> Response {
    match e {
        ClientError::Rejected(c) => problem(
            v,
            crate::api::status_of(c.code),
            "Not decided",
            &format!("{}: {}", c.code.as_str(), c.message),
        ),
        ClientError::NotFound(_) | ClientError::RunNotFound(_) => {
            problem(v, StatusCode::NOT_FOUND, "Not found", &e.to_string())
        }
        ClientError::Invalid(_) => {
            problem(v, StatusCode::BAD_REQUEST, "Bad request", &e.to_string())
        }
        _ => problem(
            v,
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            &e.to_string(),
        ),
    }
}

fn parse_gate(v: &Viewer, id: &str) -> Result<GateId, Response> {
    id.parse::<GateId>().map_err(|_| {
        problem(
            Some(v),
            StatusCode::BAD_REQUEST,
            "Bad request",
            "that is not a gate id",
        )
    })
}

// ---------------------------------------------------------------------------
// Waiting gates

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Paging {
    offset: Option<usize>,
}

fn gate_title(g: &GateView) -> String {
    title_of(g.title.as_deref(), &g.message)
}

fn title_of(title: Option<&str>, message: &str) -> String {
    visible(title.unwrap_or(message))
}

fn row(g: &GateSummary) -> Markup {
    html! {
        li.gate #{"gate-" (g.id)} data-gate=(g.id) {
            a.title href={"/gates/" (g.id)} { (title_of(g.title.as_deref(), &g.message)) }
            @if g.title.is_some() { div.msg { (visible(&g.message)) } }
            div.meta {
                "asked by " strong { (g.requested_by) } " "
                time datetime=(g.opened_at) { (g.opened_at) }
                @if let Some(run) = &g.run_id {
                    " · run " a href={"/runs/" (run)} { (run) }
                    @if let Some(step) = &g.step { " / " (step) }
                }
                " · " (g.approvals) " of " (g.approvals_required) " approvals"
                @if let Some(t) = &g.timeout_at {
                    " · due " time.countdown datetime=(t) data-deadline=(t) { (t) }
                }
            }
        }
    }
}

async fn waiting_page(
    AxState(s): AxState<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    q: Result<Query<Paging>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let v = viewer(&s, &headers, peer);
    let offset = q.map(|Query(p)| p.offset.unwrap_or(0)).unwrap_or(0);
    let filter = ListFilter {
        status: Some(GateStatus::Waiting),
        run_id: None,
    };
    let gates = match s.client.list(&filter).await {
        Ok(g) => g,
        Err(e) => return client_problem(Some(&v), &e),
    };
    let total = gates.len();
    // Newest first, as the live updates add them.
    let shown: Vec<&GateSummary> = gates.iter().rev().skip(offset).take(PAGE_ROWS).collect();
    let body = html! {
        h1 { "Waiting gates " span.count #count { (total) } }
        @if total > PAGE_ROWS {
            p.paging {
                "Showing " (offset.min(total) + 1) "–" (offset + shown.len()) " of " (total) ". "
                @if offset > 0 { a href={"/?offset=" (offset.saturating_sub(PAGE_ROWS))} { "Newer" } " " }
                @if offset + shown.len() < total { a href={"/?offset=" (offset + PAGE_ROWS)} { "Older" } }
            }
        }
        // No whitespace inside: CSS shows the empty note when it is empty.
        ul.gates #waiting data-live-list="gates" { @for g in &shown { (row(g)) } }
        p.empty { "No gates are waiting." }
    };
    html_response(
        StatusCode::OK,
        Some(&v),
        layout(Some(&v), "Waiting gates", Some("waiting"), body),
    )
}

/// One waiting gate's row, or 204 when it waits no more (the page drops it).
async fn row_fragment(AxState(s): AxState<Shared>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<GateId>() else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    match s.client.show(id).await {
        Ok(g) if g.status == GateStatus::Waiting => fragment(row(&GateSummary::of_view(&g, 0))),
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(ClientError::NotFound(_)) => StatusCode::NOT_FOUND.into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

// ---------------------------------------------------------------------------
// One gate

/// Whether each event of the gate verifies, by the approver and kind.
struct Trail {
    findings: Vec<moira_service::verify::Finding>,
    checked: bool,
}

async fn trail(s: &State, id: GateId) -> Trail {
    let current = s.registry.current();
    // Without a registry no key can be matched to anyone.
    if current.is_empty() {
        return Trail {
            findings: vec![],
            checked: false,
        };
    }
    let registries = moira_service::verify::Registries::only(current);
    let rules = moira_service::verify::Rules {
        require_signatures: false,
    };
    match moira_service::verify::verify_gate(&s.client, id, &registries, rules).await {
        Ok(r) => Trail {
            findings: r.findings,
            checked: true,
        },
        Err(_) => Trail {
            findings: vec![],
            checked: false,
        },
    }
}

impl Trail {
    /// What to say about the signature of `by`'s `nth` approval.
    fn approval(&self, by: &str, nth: usize, via: Option<&str>) -> Markup {
        let found = self
            .findings
            .iter()
            .filter(|f| f.actor == by && (f.kind == "ApprovalRecorded" || f.kind == "GateApproved"))
            .nth(nth);
        signature_cell(self.checked, found, via)
    }

    fn push_back(&self, by: &str, nth: usize, via: Option<&str>) -> Markup {
        let found = self
            .findings
            .iter()
            .filter(|f| f.actor == by && f.kind == "GatePushedBack")
            .nth(nth);
        signature_cell(self.checked, found, via)
    }
}

fn signature_cell(
    checked: bool,
    f: Option<&moira_service::verify::Finding>,
    via: Option<&str>,
) -> Markup {
    html! {
        @match f {
            _ if !checked => span.sig.unknown title="moira-web has no approvers registry (--approvers or --approvers-kv)" { "not checked" },
            Some(f) if f.ok() && f.signer.is_some() && via.is_some() => span.sig.good
                title="signed by moira-web's key, which the registry lets attest for this user this way" {
                "✔ attested by moira-web (" (via.unwrap_or("")) ") " code { (f.signer.as_deref().unwrap_or("")) }
            },
            Some(f) if f.ok() && f.signer.is_some() => span.sig.good title="signed by a key the registry lists for this user" {
                "✔ verifies " code { (f.signer.as_deref().unwrap_or("")) }
            },
            Some(f) if f.ok() => span.sig.unsigned { "unsigned" @if let Some(v) = via { " (via " (v) ")" } },
            Some(f) => span.sig.bad { "✘ " (visible(&f.problems.join("; "))) },
            None => span.sig.unknown { "not found in the trail" },
        }
    }
}

/// A staged gate's stages: who approved in each, and which takes
/// approvals now.
fn stages(g: &GateView) -> Markup {
    html! {
        @if !g.stages.is_empty() {
            h2 { "Stages" }
            ol.stages #stages {
                @for (i, s) in g.stages.iter().enumerate() {
                    @let now = g.stage == Some(i as u32 + 1);
                    li class=(if s.met { "met" } else if now { "now" } else { "later" }) {
                        @for u in &s.users { span.user { (u) } " " }
                        @for r in &s.roles { span.role { "role " (r) } " " }
                        @if s.users.is_empty() && s.roles.is_empty() { "anyone " }
                        "· " (s.approved_by.len()) " of " (s.count)
                        @if !s.approved_by.is_empty() { " (" (s.approved_by.join(", ")) ")" }
                        @if s.met { " · met" }
                        @else if now { " · " strong { "may approve now" } }
                        @else { " · after the stages before it" }
                    }
                }
            }
        }
    }
}

fn policy(g: &GateView) -> Markup {
    html! {
        (stages(g))
        dl.policy {
            dt { "Approvers" }
            dd {
                @if g.approvers.is_open() { "anyone" }
                @for u in &g.approvers.users { span.user { (u) } " " }
                @for r in &g.approvers.roles { span.role { "role " (r) } " " }
            }
            dt { "Approvals needed" }
            dd { (g.approvals_required) }
            dt { "Self-approval" }
            dd { @if g.allow_self_approval { "allowed" } @else { "not allowed: " (g.requested_by) " cannot approve" } }
            @if !g.input_names.is_empty() {
                dt { "Inputs" }
                dd { @for n in &g.input_names {
                    code { (n) } @if g.required_inputs.contains(n) { span.req title="required" { "*" } } " "
                } }
            }
        }
    }
}

/// Exactly what an approval of this gate covers: artifacts by digest, or
/// one tool call as its canonical JSON, and how long an approval holds.
fn approves(g: &GateView) -> Markup {
    html! {
        @if !g.subject.is_empty() {
            h2 { "Approves these artifacts" }
            table.kv #approves {
                @for a in &g.subject { tr { th { (visible(&a.name)) } td { code { (a.digest) } } } }
            }
        }
        @if let Some(a) = &g.action {
            h2 { "Approves this call" }
            dl.facts #action {
                dt { "Tool" } dd { code { (visible(&a.tool)) } }
                dt { "Call" } dd { pre { (visible(&a.canonical)) } }
                dt { "Digest" } dd { code { (a.digest) } }
            }
        }
        @if let Some(v) = &g.valid_for {
            p.validfor {
                "An approval holds for " (v) " after it is given"
                @if let Some(u) = &g.valid_until { ", until " time datetime=(u) { (u) } }
                "."
            }
        }
    }
}

fn gate_detail(g: &GateView, t: &Trail) -> Markup {
    html! {
        div.gatehead {
            span class=(status_class(g.status.as_str())) #status { (g.status.as_str()) }
            @if g.iteration > 1 { " " span.iter { "iteration " (g.iteration) } }
        }
        pre.message { (visible(&g.message)) }
        @if let Some(sum) = &g.summary { div.summary { pre { (visible(sum)) } } }
        (approves(g))
        dl.facts {
            dt { "Asked by" } dd { (g.requested_by) " at " time datetime=(g.opened_at) { (g.opened_at) } }
            @if let Some(run) = &g.run_id {
                dt { "Run" } dd { a href={"/runs/" (run)} { (run) } @if let Some(st) = &g.step { " / " (st) } }
            }
            @if let Some(t) = &g.timeout_at {
                dt { "Deadline" }
                dd {
                    time datetime=(t) { (t) } " ("
                    @if g.status == GateStatus::Waiting { time.countdown data-deadline=(t) { "…" } } @else { "passed or moot" }
                    "), then " (format!("{:?}", g.on_timeout).to_lowercase())
                }
            }
            @if let Some(by) = g.decider() {
                dt { "Decided by" } dd { (by) @if let Some(at) = &g.decided_at { " at " time datetime=(at) { (at) } } }
            }
            @if let Some(r) = &g.reason { dt { "Reason" } dd { (visible(r)) } }
        }
        @if !g.metadata.is_empty() {
            h2 { "Metadata" }
            table.kv { @for (k, val) in &g.metadata { tr { th { (visible(k)) } td { (visible(val)) } } } }
        }
        h2 { "Policy" }
        (policy(g))
        h2 { "Approvals " span.count { (g.approvals.len()) " of " (g.approvals_required) } }
        @if g.approvals.is_empty() { p.none { "None yet." } } @else {
            table.trail {
                tr { th { "Who" } th { "When" } th { "Comment" } th { "Signature" } }
                @for (i, a) in g.approvals.iter().enumerate() {
                    @let nth = g.approvals[..i].iter().filter(|p| p.by == a.by).count();
                    tr { td { (a.who()) } td { time datetime=(a.at) { (a.at) } }
                         td { (visible(a.comment.as_deref().unwrap_or(""))) } td { (t.approval(&a.by, nth, a.via.as_deref())) } }
                }
            }
        }
        @if !g.inputs.is_empty() {
            h2 { "Inputs given" }
            table.kv { @for (k, val) in &g.inputs { tr { th { (visible(k)) } td { (visible(val)) } } } }
        }
        @if !g.push_backs.is_empty() {
            h2 { "Push-backs" }
            table.trail {
                tr { th { "Who" } th { "When" } th { "Iteration" } th { "Comment" } th { "Inputs" } th { "Signature" } }
                @for (i, p) in g.push_backs.iter().enumerate() {
                    @let nth = g.push_backs[..i].iter().filter(|q| q.by == p.by).count();
                    tr { td { (p.who()) } td { time datetime=(p.at) { (p.at) } } td { (p.iteration) }
                         td { (visible(p.comment.as_deref().unwrap_or(""))) }
                         td { @for (k, val) in &p.inputs { code { (visible(k)) "=" (visible(val)) } " " } }
                         td { (t.push_back(&p.by, nth, p.via.as_deref())) } }
                }
            }
        }
    }
}

/// The approve, deny and push-back forms; each leads to a confirmation.
fn decision_forms(v: &Viewer, g: &GateView) -> Markup {
    let action = |verb: &str| format!("/gates/{}/{verb}", g.id);
    html! {
        @if g.status != GateStatus::Waiting {
        } @else if let Err(why) = &v.user {
            p.readonly { (match why {
                Unauthenticated::NoAuth => "This moira-web serves reads only (no --auth). Decide with the moira CLI, or run moira-web behind an authenticating proxy with --auth proxy.".to_string(),
                Unauthenticated::UntrustedPeer(ip) => format!("Requests from {ip} are not from a trusted proxy, so nobody is signed in."),
                Unauthenticated::NoUser(h) => format!("Nobody is signed in: the request has no {h} header."),
            }) }
        } @else {
            section.decide #decide {
                form.approve method="post" action=(action("approve")) {
                    h3 { "Approve" }
                    input type="hidden" name="csrf" value=(v.csrf);
                    @for n in &g.input_names {
                        @let req = g.required_inputs.contains(n);
                        label { code { (n) } @if req { span.req { " * required" } }
                            input type="text" name={"input." (n)} required[req] maxlength="4096"; }
                    }
                    label { "Comment" textarea name="comment" rows="2" maxlength="4096" {} }
                    button.approve type="submit" { "Approve…" }
                }
                form.deny method="post" action=(action("deny")) {
                    h3 { "Deny" }
                    input type="hidden" name="csrf" value=(v.csrf);
                    label { "Reason " span.req { "* required" } textarea name="reason" rows="2" required maxlength="4096" {} }
                    button.deny type="submit" { "Deny…" }
                }
                @if g.run_id.is_some() {
                    form.pushback method="post" action=(action("push-back")) {
                        h3 { "Push back" }
                        input type="hidden" name="csrf" value=(v.csrf);
                        @for n in &g.input_names {
                            label { code { (n) } input type="text" name={"input." (n)} maxlength="4096"; }
                        }
                        label { "What to change" textarea name="comment" rows="2" maxlength="4096" {} }
                        button.pushback type="submit" { "Push back…" }
                    }
                }
            }
        }
    }
}

async fn gate_page(
    AxState(s): AxState<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let v = viewer(&s, &headers, peer);
    let id = match parse_gate(&v, &id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let g = match s.client.show(id).await {
        Ok(g) => g,
        Err(e) => return client_problem(Some(&v), &e),
    };
    let t = trail(&s, id).await;
    let body = html! {
        h1 #title { (gate_title(&g)) }
        p.id { "gate " code { (g.id) } }
        div #detail data-live={"/fragments/gates/" (g.id)} data-live-gate=(g.id) { (gate_detail(&g, &t)) }
        (decision_forms(&v, &g))
    };
    html_response(
        StatusCode::OK,
        Some(&v),
        layout(Some(&v), &gate_title(&g), Some("gate"), body),
    )
}

async fn gate_fragment(AxState(s): AxState<Shared>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<GateId>() else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    match s.client.show(id).await {
        Ok(g) => fragment(gate_detail(&g, &trail(&s, id).await)),
        Err(ClientError::NotFound(_)) => StatusCode::NOT_FOUND.into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

// ---------------------------------------------------------------------------
// Deciding from the page

/// Why a form post is refused before anything else is looked at.
fn forged(
    s: &State,
    headers: &HeaderMap,
    peer: SocketAddr,
    form_token: Option<&str>,
) -> Option<&'static str> {
    // Browsers say where a request comes from; anything but this origin
    // (or the user typing the address) is refused.
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site != "same-origin" && site != "none" {
            return Some("the form was sent from another site");
        }
    }
    // Behind a proxy that rewrites Host, the browser's host is the one the
    // trusted proxy forwards.
    let forwarded = s
        .trusted_proxies
        .contains(&peer.ip())
        .then(|| headers.get("x-forwarded-host"))
        .flatten();
    let host = forwarded
        .or_else(|| headers.get(header::HOST))
        .and_then(|v| v.to_str().ok());
    if let (Some(origin), Some(host)) = (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        host,
    ) {
        let bare = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or("");
        if bare != host {
            return Some("the form was sent from another origin");
        }
    }
    let Some(cookie) = cookie(headers, CSRF_COOKIE) else {
        return Some("the browser sent no CSRF cookie; reload the page and try again");
    };
    let Some(token) = form_token else {
        return Some("the form carries no CSRF token");
    };
    // Constant time: an HMAC of one, checked against the other.
    let tag = ring::hmac::sign(&s.csrf_key, token.as_bytes());
    if ring::hmac::verify(&s.csrf_key, cookie.as_bytes(), tag.as_ref()).is_err() {
        return Some(
            "the form's CSRF token does not match this browser's; reload the page and try again",
        );
    }
    None
}

/// A decision form, parsed.
#[derive(Debug, Default)]
struct DecisionForm {
    csrf: Option<String>,
    confirm: bool,
    id: Option<CommandId>,
    comment: Option<String>,
    reason: Option<String>,
    inputs: BTreeMap<String, String>,
}

fn parse_form(bytes: &Bytes) -> Result<DecisionForm, String> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_bytes(bytes).map_err(|e| format!("not a form: {e}"))?;
    if pairs.len() > 256 {
        return Err("the form has too many fields".into());
    }
    let mut f = DecisionForm::default();
    let some = |v: String| {
        let v = v.trim().to_string();
        (!v.is_empty()).then_some(v)
    };
    for (k, val) in pairs {
        match k.as_str() {
            "csrf" => f.csrf = Some(val),
            "confirm" => f.confirm = val == "yes",
            "id" => {
                f.id = Some(
                    val.parse::<uuid::Uuid>()
                        .map(CommandId)
                        .map_err(|_| "the form's command id is not a UUID".to_string())?,
                )
            }
            "comment" => f.comment = some(val),
            "reason" => f.reason = some(val),
            _ => match k.strip_prefix("input.") {
                Some(name) if !name.is_empty() => {
                    if let Some(val) = some(val) {
                        f.inputs.insert(name.to_string(), val);
                    }
                }
                _ => {
                    return Err(format!(
                        "the form has a field '{}' no decision takes",
                        visible(&k.chars().take(64).collect::<String>())
                    ))
                }
            },
        }
    }
    Ok(f)
}

fn verb_word(verb: &str) -> &'static str {
    match verb {
        "approve" => "Approve",
        "deny" => "Deny",
        _ => "Push back",
    }
}

/// The page between the form and the decision: what will be sent, as whom,
/// with the one button that sends it.
fn confirmation(v: &Viewer, user: &str, verb: &str, g: &GateView, f: &DecisionForm) -> Markup {
    let word = verb_word(verb);
    // One id for this confirmation: pressing twice is a repeat, not two decisions.
    let cmd = CommandId::new();
    html! {
        h1 { (word) " this gate as " span #as { (user) } "?" }
        div.card {
            a.title href={"/gates/" (g.id)} { (gate_title(g)) }
            pre.message { (visible(&g.message)) }
            p.meta { "asked by " (g.requested_by) " · " span class=(status_class(g.status.as_str())) { (g.status.as_str()) } }
        }
        dl.facts {
            @for (k, val) in &f.inputs { dt { code { (visible(k)) } } dd { (visible(val)) } }
            @if let Some(c) = &f.comment { dt { "Comment" } dd { (visible(c)) } }
            @if let Some(r) = &f.reason { dt { "Reason" } dd { (visible(r)) } }
        }
        form.confirm method="post" action={"/gates/" (g.id) "/" (verb)} {
            input type="hidden" name="csrf" value=(v.csrf);
            input type="hidden" name="confirm" value="yes";
            input type="hidden" name="id" value=(cmd.0);
            @for (k, val) in &f.inputs { input type="hidden" name={"input." (k)} value=(val); }
            @if let Some(c) = &f.comment { input type="hidden" name="comment" value=(c); }
            @if let Some(r) = &f.reason { input type="hidden" name="reason" value=(r); }
            button class=(verb) #confirm type="submit" { "Confirm: " (word) }
            " " a href={"/gates/" (g.id)} { "Back" }
        }
        p.note { "Nothing is decided until you confirm." }
    }
}

async fn gate_form(
    AxState(s): AxState<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((id, verb)): Path<(String, String)>,
    bytes: Bytes,
) -> Response {
    let v = viewer(&s, &headers, peer);
    let gate = match parse_gate(&v, &id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    if !matches!(verb.as_str(), "approve" | "deny" | "push-back") {
        return problem(
            Some(&v),
            StatusCode::NOT_FOUND,
            "Not found",
            "the page decides with approve, deny or push-back",
        );
    }
    let f = match parse_form(&bytes) {
        Ok(f) => f,
        Err(e) => return problem(Some(&v), StatusCode::BAD_REQUEST, "Bad request", &e),
    };
    if let Some(why) = forged(&s, &headers, peer, f.csrf.as_deref()) {
        return problem(Some(&v), StatusCode::FORBIDDEN, "Refused", why);
    }
    let user = match &v.user {
        Ok(u) => u.clone(),
        Err(why) => {
            return problem(
                Some(&v),
                StatusCode::UNAUTHORIZED,
                "Not signed in",
                &crate::api::unauthenticated_message(why),
            )
        }
    };
    let stray = match verb.as_str() {
        "deny" => (f.comment.is_some() || !f.inputs.is_empty()).then_some("a comment or inputs"),
        _ => f.reason.is_some().then_some("a reason"),
    };
    if let Some(field) = stray {
        return problem(
            Some(&v),
            StatusCode::BAD_REQUEST,
            "Bad request",
            &format!("{verb} takes no {field}"),
        );
    }
    if verb == "deny" && f.reason.is_none() {
        return problem(
            Some(&v),
            StatusCode::BAD_REQUEST,
            "Bad request",
            "a denial needs a reason",
        );
    }
    if !f.confirm {
        let g = match s.client.show(gate).await {
            Ok(g) => g,
            Err(e) => return client_problem(Some(&v), &e),
        };
        let title = format!("{}?", verb_word(&verb));
        return html_response(
            StatusCode::OK,
            Some(&v),
            layout(
                Some(&v),
                &title,
                None,
                confirmation(&v, &user, &verb, &g, &f),
            ),
        );
    }
    let verb: &'static str = match verb.as_str() {
        "approve" => "approve",
        "deny" => "deny",
        _ => "push-back",
    };
    let result = s
        .decide(crate::Decision {
            verb,
            gate,
            actor: user.clone(),
            id: f.id,
            comment: f.comment,
            reason: f.reason,
            inputs: f.inputs,
            via: s.via(),
            traceparent: crate::traceparent(&headers),
        })
        .await;
    match result {
        Ok(g) => {
            let done = match verb {
                "approve" if g.status == GateStatus::Approved => "Approved".to_string(),
                "approve" => format!(
                    "Approval recorded ({} of {})",
                    g.approvals.len(),
                    g.approvals_required
                ),
                "deny" => "Denied".to_string(),
                _ => "Pushed back".to_string(),
            };
            let body = html! {
                h1 #outcome { (done) }
                div.card {
                    a.title href={"/gates/" (g.id)} { (gate_title(&g)) }
                    p.meta { "now " span class=(status_class(g.status.as_str())) { (g.status.as_str()) } }
                }
                p { a href={"/gates/" (g.id)} { "The gate" } " · "
                    @if let Some(run) = &g.run_id { a href={"/runs/" (run)} { "its run" } " · " }
                    a href="/" { "Waiting gates" } }
            };
            html_response(
                StatusCode::OK,
                Some(&v),
                layout(Some(&v), &done, None, body),
            )
        }
        Err(e) => client_problem(Some(&v), &e),
    }
}

/// `--auth dev`: remember the name picked in the banner.
async fn dev_user(
    AxState(s): AxState<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let v = viewer(&s, &headers, peer);
    if s.auth != AuthMode::Dev {
        return problem(
            Some(&v),
            StatusCode::NOT_FOUND,
            "Not found",
            "names are picked only with --auth dev",
        );
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.trim().to_string())
    };
    if let Some(why) = forged(&s, &headers, peer, get("csrf").as_deref()) {
        return problem(Some(&v), StatusCode::FORBIDDEN, "Refused", why);
    }
    let Some(user) = get("user").filter(|u| moira_protocol::ids::is_valid_name(u)) else {
        return problem(
            Some(&v),
            StatusCode::BAD_REQUEST,
            "Bad request",
            "a name is 1 to 64 letters, digits and . _ @ + -, starting with a letter or digit",
        );
    };
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    if let Ok(c) = HeaderValue::from_str(&format!(
        "{DEV_USER_COOKIE}={user}; Path=/; HttpOnly; SameSite=Strict"
    )) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

// ---------------------------------------------------------------------------
// Runs

async fn runs_page(
    AxState(s): AxState<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    q: Result<Query<Paging>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let v = viewer(&s, &headers, peer);
    let offset = q.map(|Query(p)| p.offset.unwrap_or(0)).unwrap_or(0);
    let runs = match s.client.list_runs(None).await {
        Ok(r) => r,
        Err(ClientError::NoRunStreams) => vec![],
        Err(e) => return client_problem(Some(&v), &e),
    };
    let total = runs.len();
    // Newest first.
    let shown: Vec<&RunView> = runs.iter().rev().skip(offset).take(PAGE_ROWS).collect();
    let body = html! {
        h1 { "Runs " span.count { (total) } }
        @if total > PAGE_ROWS {
            p.paging {
                @if offset > 0 { a href={"/runs?offset=" (offset.saturating_sub(PAGE_ROWS))} { "Newer" } " " }
                @if offset + shown.len() < total { a href={"/runs?offset=" (offset + PAGE_ROWS)} { "Older" } }
            }
        }
        @if shown.is_empty() { p.none { "No runs yet." } } @else {
            table.runs {
                tr { th { "Run" } th { "Workflow" } th { "Status" } th { "Submitted" } }
                @for r in &shown {
                    tr { td { a href={"/runs/" (r.id)} { (r.id) } } td { (visible(&r.name)) }
                         td { span class=(status_class(r.status.as_str())) { (r.status.as_str()) } }
                         td { (r.submitted_by) " " time datetime=(r.submitted_at) { (r.submitted_at) } } }
                }
            }
        }
    };
    html_response(
        StatusCode::OK,
        Some(&v),
        layout(Some(&v), "Runs", None, body),
    )
}

/// Each step's stored output, at most [`PAGE_LOG_LINES`] lines a step.
async fn step_logs(s: &State, run: &str) -> BTreeMap<String, (Vec<String>, bool)> {
    use futures_util::StreamExt;
    let mut out: BTreeMap<String, (Vec<String>, bool)> = BTreeMap::new();
    let Ok(lines) = s.client.run_logs(run, None, false).await else {
        return out;
    };
    let mut lines = Box::pin(lines);
    while let Some(Ok(l)) = lines.next().await {
        let e = out.entry(l.step).or_default();
        if e.0.len() < PAGE_LOG_LINES {
            e.0.push(if l.stream == "stderr" {
                format!("! {}", l.line)
            } else {
                l.line
            });
        } else {
            e.1 = true;
        }
    }
    out
}

async fn run_detail(s: &State, v: &Viewer, r: &RunView) -> Markup {
    let logs = step_logs(s, &r.id).await;
    let mut reviews = BTreeMap::new();
    for st in &r.steps {
        if let (moira_protocol::run::StepStatus::Waiting, Some(g)) = (st.status, st.gate_id) {
            if let Ok(g) = s.client.show(g).await {
                reviews.insert(st.name.clone(), g);
            }
        }
    }
    html! {
        div.runhead { span class=(status_class(r.status.as_str())) #runstatus { (r.status.as_str()) } }
        table.steps {
            tr { th { "Step" } th { "Status" } th { "Iteration" } th { "Attempt" } th { "Exit" } th { "Gate" } }
            @for st in &r.steps {
                tr data-step=(st.name) {
                    td { (st.name) } td { span class=(status_class(st.status.as_str())) { (st.status.as_str()) } }
                    td { (st.iteration) } td { (st.attempt) }
                    td { @if let Some(c) = st.exit_code { (c) } }
                    td { @if let Some(g) = st.gate_id { a href={"/gates/" (g)} { "gate" } } }
                }
            }
        }
        @for st in &r.steps {
            @let (lines, cut) = logs.get(&st.name).cloned().unwrap_or_default();
            @let review = reviews.get(&st.name);
            section.step id={"step-" (st.name)} {
                h2 { (st.name) " " span class=(status_class(st.status.as_str())) { (st.status.as_str()) } }
                div class=(if review.is_some() { "review" } else { "" }) {
                    div.output {
                        @if let Some(reason) = &st.reason { p.reason { (visible(reason)) } }
                        @if !st.outputs.is_empty() {
                            table.kv { @for (k, val) in &st.outputs { tr { th { (visible(k)) } td { (visible(val)) } } } }
                        }
                        @if lines.is_empty() { p.none { "No output." } } @else {
                            pre.log { (visible(&lines.join("\n"))) }
                            @if cut { p.note { "Only the first " (PAGE_LOG_LINES) " lines are shown; " code { "moira run logs" } " has them all." } }
                        }
                    }
                    @if let Some(g) = review {
                        div.reviewgate {
                            p { strong { (gate_title(g)) } }
                            pre.message { (visible(&g.message)) }
                            (decision_forms(v, g))
                        }
                    }
                }
            }
        }
    }
}

async fn run_page(
    AxState(s): AxState<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let v = viewer(&s, &headers, peer);
    if !moira_protocol::ids::is_subject_token(&id) {
        return problem(
            Some(&v),
            StatusCode::BAD_REQUEST,
            "Bad request",
            "that is not a run id",
        );
    }
    let r = match s.client.show_run(&id).await {
        Ok(r) => r,
        Err(e) => return client_problem(Some(&v), &e),
    };
    let detail = run_detail(&s, &v, &r).await;
    let body = html! {
        h1 { (visible(&r.name)) " " code { (r.id) } }
        p.meta { "submitted by " (r.submitted_by) " at " time datetime=(r.submitted_at) { (r.submitted_at) } }
        @if !r.vars.is_empty() {
            table.kv { @for (k, val) in &r.vars { tr { th { (visible(k)) } td { (visible(val)) } } } }
        }
        div #run data-live={"/fragments/runs/" (r.id)} data-live-run=(r.id) { (detail) }
    };
    html_response(
        StatusCode::OK,
        Some(&v),
        layout(Some(&v), &r.name, Some("run"), body),
    )
}

async fn run_fragment(
    AxState(s): AxState<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !moira_protocol::ids::is_subject_token(&id) {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let v = viewer(&s, &headers, peer);
    match s.client.show_run(&id).await {
        Ok(r) => fragment(run_detail(&s, &v, &r).await),
        Err(ClientError::RunNotFound(_)) => StatusCode::NOT_FOUND.into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// A page for the one-click links module: the same layout, no viewer.
pub(crate) fn plain(status: StatusCode, title: &str, body: Markup) -> Response {
    html_response(status, None, layout(None, title, None, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_become_visible_and_newlines_stay() {
        assert_eq!(
            visible("a\x1b[31mb\r\nc\td\x7f"),
            "a\u{241b}[31mb\u{240d}\nc\td\u{2421}"
        );
    }

    #[test]
    fn a_form_with_a_field_no_decision_takes_is_refused() {
        let err = parse_form(&Bytes::from_static(b"csrf=x&actor=mallory")).expect_err("refused");
        assert!(err.contains("actor"), "{err}");
        let f = parse_form(&Bytes::from_static(
            b"csrf=x&input.WINDOW=+sat+&comment=&confirm=yes",
        ))
        .expect("parses");
        assert_eq!(f.inputs.get("WINDOW").map(String::as_str), Some("sat"));
        assert!(f.comment.is_none() && f.confirm);
    }

    #[test]
    fn markup_from_a_gate_is_escaped() {
        let m = html! { p { (visible("<script>alert(1)</script>\"'&")) } };
        assert_eq!(
            m.into_string(),
            "<p>&lt;script&gt;alert(1)&lt;/script&gt;&quot;'&amp;</p>"
        );
    }
}
