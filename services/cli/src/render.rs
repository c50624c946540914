//! Text output for people.

use std::time::Duration;

use serde::Serialize;

use moira_client::protocol::event::Envelope;
use moira_client::protocol::time::{now_ms, rfc3339, short_duration};
use moira_client::protocol::GateEvent;
use moira_client::{GateId, GateStatus, GateSummary, GateView};

fn ms_of(rfc: &str) -> Option<u64> {
    humantime::parse_rfc3339(rfc)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
}

fn ago(rfc: &str) -> String {
    match ms_of(rfc) {
        Some(ms) => short_duration(Duration::from_millis(now_ms().saturating_sub(ms))),
        None => "?".into(),
    }
}

fn until(rfc: &str) -> String {
    match ms_of(rfc) {
        Some(ms) if ms > now_ms() => format!(
            "in {}",
            short_duration(Duration::from_millis(ms - now_ms()))
        ),
        Some(_) => "passed".into(),
        None => "?".into(),
    }
}

fn status_word(s: GateStatus) -> &'static str {
    s.as_str()
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        flat.chars().take(max.saturating_sub(1)).collect::<String>() + "…"
    }
}

/// The table printed by `moira gate list`.
pub fn table(gates: &[GateSummary]) -> String {
    let mut rows = vec![["ID", "STATUS", "AGE", "APPROVALS", "RUN/STEP", "MESSAGE"]
        .map(String::from)
        .to_vec()];
    for g in gates {
        let mut run = match (&g.run_id, &g.step) {
            (Some(r), Some(s)) => format!("{r}/{s}"),
            (Some(r), None) => r.clone(),
            (None, Some(s)) => s.clone(),
            (None, None) => "-".into(),
        };
        if let Some(p) = &g.parent {
            run += &format!(" (called by {p})");
        }
        rows.push(vec![
            g.id.to_string(),
            status_word(g.status).to_string(),
            ago(&g.opened_at),
            format!("{}/{}", g.approvals, g.approvals_required),
            run,
            one_line(g.title.as_deref().unwrap_or(&g.message), 60),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The full text of `moira gate show`.
pub fn gate(g: &GateView) -> String {
    let mut out = format!("gate {}  {}", g.id, status_word(g.status).to_uppercase());
    if g.iteration > 1 {
        out += &format!("  (iteration {})", g.iteration);
    }
    out += "\n";
    if let Some(t) = &g.title {
        out += &format!("  {t}\n");
    }
    out += &format!("  {}\n", g.message);
    let mut field = |k: &str, v: String| out += &format!("  {k:<12} {v}\n");
    if let Some(s) = &g.summary {
        field("summary:", s.clone());
    }
    if g.run_id.is_some() || g.step.is_some() {
        field(
            "run/step:",
            format!(
                "{} / {}",
                g.run_id.as_deref().unwrap_or("-"),
                g.step.as_deref().unwrap_or("-")
            ),
        );
    }
    if let Some(p) = moira_protocol::view::parent_of(&g.metadata) {
        field("called by:", format!("run/step {p}"));
    }
    field(
        "requested:",
        format!(
            "by {} at {} ({} ago)",
            g.requested_by,
            g.opened_at,
            ago(&g.opened_at)
        ),
    );
    if let Some(t) = &g.timeout_at {
        field(
            "deadline:",
            format!("{t} ({}), then {}", until(t), g.on_timeout.as_str()),
        );
    }
    // What exactly is approved: each artifact's digest, or the action.
    for a in &g.subject {
        field("approves:", format!("{}  {}", a.name, a.digest));
    }
    if let Some(a) = &g.action {
        field("action:", format!("{}  {}", a.tool, a.digest));
        field("call:", a.canonical.clone());
    }
    if let Some(v) = &g.valid_for {
        let until = g
            .valid_until
            .as_deref()
            .map(|u| format!(", until {u}"))
            .unwrap_or_default();
        field("valid for:", format!("{v} after approval{until}"));
    }
    let mut who = Vec::new();
    if !g.approvers.users.is_empty() {
        who.push(format!("users {}", g.approvers.users.join(", ")));
    }
    if !g.approvers.roles.is_empty() {
        who.push(format!("roles {}", g.approvers.roles.join(", ")));
    }
    if who.is_empty() {
        who.push("anyone".into());
    }
    let self_note = if g.allow_self_approval {
        ""
    } else {
        "; no self-approval"
    };
    if g.stages.is_empty() {
        field(
            "approvers:",
            format!(
                "{} ({} needed{self_note})",
                who.join("; "),
                g.approvals_required
            ),
        );
    } else {
        for (i, s) in g.stages.iter().enumerate() {
            let n = i as u32 + 1;
            let stage = moira_client::protocol::stages::Stage {
                users: s.users.clone(),
                roles: s.roles.clone(),
                count: s.count,
            };
            let mark = if s.met {
                "met".to_string()
            } else if g.stage == Some(n) {
                "NOW: these may approve".to_string()
            } else {
                "waits for the stages before it".to_string()
            };
            let by = if s.approved_by.is_empty() {
                String::new()
            } else {
                format!("; by {}", s.approved_by.join(", "))
            };
            field(
                &format!("stage {n}:"),
                format!(
                    "{} ({} of {} approvals{by}) {mark}",
                    stage.who(),
                    s.approved_by.len(),
                    s.count
                ),
            );
        }
        if !g.allow_self_approval {
            field("approvers:", format!("{} may not approve", g.requested_by));
        }
    }
    for a in &g.approvals {
        let c = a
            .comment
            .as_deref()
            .map(|c| format!(": {c}"))
            .unwrap_or_default();
        let via = a
            .via
            .as_deref()
            .map(|v| format!(" (through moira-web, {v})"))
            .unwrap_or_default();
        field("approval:", format!("{} at {}{via}{c}", a.who(), a.at));
    }
    if !g.input_names.is_empty() {
        let names: Vec<String> = g
            .input_names
            .iter()
            .map(|n| {
                if g.required_inputs.contains(n) {
                    format!("{n} (required)")
                } else {
                    n.clone()
                }
            })
            .collect();
        field("inputs:", names.join(", "));
    }
    for (k, v) in &g.inputs {
        field("value:", format!("{k}={v}"));
    }
    for p in &g.push_backs {
        let c = p
            .comment
            .as_deref()
            .map(|c| format!(": {c}"))
            .unwrap_or_default();
        field(
            "pushed back:",
            format!("by {} at {} (iteration {}){c}", p.who(), p.at, p.iteration),
        );
    }
    if g.status.is_terminal() {
        field(
            "decided:",
            format!(
                "{} at {}",
                g.decider().as_deref().unwrap_or("?"),
                g.decided_at.as_deref().unwrap_or("?")
            ),
        );
    }
    if let Some(r) = &g.reason {
        field("reason:", r.clone());
    }
    for (k, v) in &g.metadata {
        field("meta:", format!("{k}={v}"));
    }
    out
}

/// One line saying where a gate stands after a command.
pub fn outcome(g: &GateView) -> String {
    let by = g.decider().unwrap_or_else(|| "?".into());
    match g.status {
        GateStatus::Approved => format!("gate {} approved by {by}", g.id),
        GateStatus::Denied => format!(
            "gate {} denied by {by}: {}",
            g.id,
            g.reason.as_deref().unwrap_or("")
        ),
        GateStatus::TimedOut => format!("gate {} timed out", g.id),
        GateStatus::Cancelled => format!("gate {} cancelled by {by}", g.id),
        GateStatus::Waiting if g.iteration > 1 && g.approvals.is_empty() => {
            format!(
                "gate {} pushed back; waiting again (iteration {})",
                g.id, g.iteration
            )
        }
        GateStatus::Waiting => {
            format!(
                "gate {} waiting: {}/{} approvals",
                g.id,
                g.approvals.len(),
                g.approvals_required
            )
        }
    }
}

/// A JSON line of `moira gate watch --json`.
#[derive(Serialize)]
pub struct EventLine<'a> {
    pub seq: u64,
    pub gate_id: GateId,
    pub kind: &'a str,
    pub actor: &'a str,
    pub at: String,
    pub event: &'a GateEvent,
}

impl<'a> EventLine<'a> {
    pub fn from_stored(seq: u64, env: &'a Envelope) -> Self {
        EventLine {
            seq,
            gate_id: env.gate_id,
            kind: env.event.kind(),
            actor: &env.actor,
            at: rfc3339(env.at),
            event: &env.event,
        }
    }
}

/// A text line of `moira gate watch`.
pub fn event_line(env: &Envelope) -> String {
    let detail = match &env.event {
        GateEvent::GateOpened { spec, .. } => one_line(&spec.message, 60),
        GateEvent::ApprovalRecorded { comment, .. }
        | GateEvent::GateApproved { comment, .. }
        | GateEvent::GatePushedBack { comment, .. } => {
            one_line(comment.as_deref().unwrap_or_default(), 200)
        }
        GateEvent::GateDenied { reason } => one_line(reason, 200),
        GateEvent::GateTimedOut { on_timeout } => format!("then {}", on_timeout.as_str()),
        GateEvent::GateCancelled { reason } => one_line(reason.as_deref().unwrap_or_default(), 200),
    };
    format!(
        "{}  {}  {:<16}  {:<10}  {}",
        rfc3339(env.at),
        env.gate_id,
        env.event.kind(),
        env.actor,
        detail
    )
    .trim_end()
    .to_string()
}
