//! Which notification goes where: building it from an event, routing it
//! to channels by the config's rules, and splitting a channel that writes
//! to approvers into one message per person.

use super::*;

pub(crate) fn notification(
    shared: &Shared,
    id: String,
    kind: &str,
    gate: Option<GateView>,
    run: Option<&RunView>,
) -> Notification {
    let loaded = shared.loaded();
    let base = loaded
        .config
        .base_url
        .as_deref()
        .map(|b| b.trim_end_matches('/').to_string());
    let link = match (&base, &gate, run) {
        (Some(b), Some(g), _) => Some(format!("{b}/gates/{}", g.id)),
        (Some(b), None, Some(r)) => Some(format!("{b}/runs/{}", r.id)),
        _ => None,
    };
    let run = run.map(|r| RunSummary {
        id: r.id.clone(),
        workflow: r.name.clone(),
        status: r.status,
        waiting_gates: r
            .steps
            .iter()
            .filter(|s| s.status == moira_protocol::run::StepStatus::Waiting)
            .filter_map(|s| s.gate_id)
            .collect(),
    });
    Notification {
        id,
        kind: kind.to_string(),
        at: rfc3339(now_ms()),
        gate,
        run,
        link,
        personal: None,
    }
}

/// Where one channel's copies of a notification go: the shared message
/// (unless the channel has no shared recipient), and, for a waiting gate on
/// a channel that writes to approvers, one message for each approver the
/// registry can reach, with their own links. Each is delivered, and
/// claimed, on its own: `(delivery name, message)`.
pub(crate) fn targets(
    shared: &Shared,
    n: &Notification,
    channel: &str,
) -> Vec<(String, Notification)> {
    let loaded = shared.loaded();
    use config::ChannelConfig;
    #[derive(Clone, Copy)]
    enum Reach {
        Email,
        Slack,
    }
    let (common, reach) = match loaded.config.channels.get(channel) {
        Some(ChannelConfig::Email { to, approvers, .. }) => {
            (!to.is_empty(), approvers.then_some(Reach::Email))
        }
        Some(ChannelConfig::SlackBot {
            channel: c, direct, ..
        }) => (c.is_some(), direct.then_some(Reach::Slack)),
        _ => (true, None),
    };
    let mut out = Vec::new();
    if common {
        out.push((channel.to_string(), n.clone()));
    }
    let asks = matches!(
        n.kind.as_str(),
        "opened" | "reminder" | "escalated" | "stage_began"
    );
    let waiting = n
        .gate
        .as_ref()
        .filter(|g| asks && g.status == moira_protocol::GateStatus::Waiting);
    let (Some(reach), Some(g)) = (reach, waiting) else {
        return out;
    };
    let registry = shared.registry.current();
    let base = loaded
        .config
        .base_url
        .as_deref()
        .map(|b| b.trim_end_matches('/'));
    let now = now_ms() / 1000;
    // A staged gate asks only the stage that takes approvals now.
    let (users, roles) = match g.stage.and_then(|n| g.stages.get(n as usize - 1)) {
        Some(s) => (&s.users, &s.roles),
        None => (&g.approvers.users, &g.approvers.roles),
    };
    for user in registry.approvers_of(users, roles) {
        let done = g
            .approvals
            .iter()
            .any(|a| a.by == user || a.on_behalf_of.as_deref() == Some(user.as_str()));
        if done || (!g.allow_self_approval && user == g.requested_by) {
            continue;
        }
        let address = match reach {
            Reach::Email => registry.email_of(&user),
            Reach::Slack => registry.slack_of(&user),
        };
        let Some(address) = address else {
            continue;
        };
        let link = |action: &str| {
            let ((secret, ttl), base) = (loaded.resolved.links.as_ref()?, base?);
            let token = moira_service::links::Link::new(g.id, &user, action, now, ttl.as_secs())
                .token(secret);
            Some(format!("{base}/links/{token}"))
        };
        let mut mine = n.clone();
        mine.personal = Some(Personal {
            user: user.clone(),
            address: address.to_string(),
            approve: link("approve"),
            deny: link("deny"),
        });
        out.push((format!("{channel}/{user}"), mine));
    }
    out
}

/// The channels a notification goes to: matching rules, channels the gate
/// names itself (`notify` metadata, only those in `gate_channels`), and
/// `extra`. Rules on `workflow` and `metadata` trust only gates a runner
/// opened for a run: anyone else who opens a gate could write any metadata.
pub fn route(config: &config::Config, n: &Notification, extra: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let gate = n.gate.as_ref();
    let trusted = gate.filter(|g| g.run_id.is_some());
    let workflow = match gate {
        Some(_) => trusted.and_then(|g| g.metadata.get("workflow").cloned()),
        None => n.run.as_ref().map(|r| r.workflow.clone()),
    };
    let run_id = gate
        .and_then(|g| g.run_id.clone())
        .or_else(|| n.run.as_ref().map(|r| r.id.clone()));
    for rule in &config.rules {
        // A later stage beginning asks its approvers as an open does.
        let kind_ok = rule.kinds.is_empty()
            || rule
                .kinds
                .iter()
                .any(|k| k == &n.kind || (k == "opened" && n.kind == "stage_began"));
        let run_ok = rule.run.as_ref().is_none_or(|r| run_id.as_ref() == Some(r));
        let step_ok = rule
            .step
            .as_ref()
            .is_none_or(|s| gate.and_then(|g| g.step.as_ref()) == Some(s));
        let wf_ok = rule
            .workflow
            .as_ref()
            .is_none_or(|w| workflow.as_ref() == Some(w));
        let meta_ok = rule
            .metadata
            .iter()
            .all(|(k, v)| trusted.and_then(|g| g.metadata.get(k)) == Some(v));
        if kind_ok && run_ok && step_ok && wf_ok && meta_ok {
            out.extend(rule.channels.iter().cloned());
        }
    }
    if let Some(named) = gate.and_then(|g| g.metadata.get("notify")) {
        for c in named.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if config.gate_channels.iter().any(|g| g == c) {
                out.push(c.to_string());
            } else {
                tracing::warn!(
                    channel = c.chars().take(64).collect::<String>(),
                    "a gate names a channel that is not in gate_channels; ignored"
                );
            }
        }
    }
    out.extend(extra.iter().cloned());
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
gate_channels = ["page"]
[channels.all]
type = "log"
[channels.ops]
type = "log"
[channels.deploys]
type = "log"
[channels.prod]
type = "log"
[channels.page]
type = "log"
[channels.run]
type = "log"
[[rules]]
channels = ["all"]
[[rules]]
kinds = ["opened", "reminder"]
channels = ["ops"]
[[rules]]
workflow = "deploy"
channels = ["deploys"]
[[rules]]
metadata = { env = "prod" }
channels = ["prod"]
[[rules]]
kinds = ["run_failed"]
step = "ship"
channels = ["run"]
"#;

    fn config() -> config::Config {
        config::Config::parse(CONFIG).expect("config").0
    }

    /// A waiting gate; `run` makes it one a runner opened for a run.
    fn gate(run: Option<&str>, metadata: &[(&str, &str)]) -> GateView {
        let metadata: std::collections::BTreeMap<String, String> = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        serde_json::from_value(serde_json::json!({
            "id": GateId::new(), "status": "waiting", "message": "go?", "title": null,
            "summary": null, "metadata": metadata, "run_id": run, "step": "approve",
            "requested_by": "alice", "opened_at": "2026-01-01T00:00:00Z", "timeout_at": null,
            "on_timeout": "fail", "iteration": 1, "approvers": {"users": [], "roles": []},
            "approvals_required": 1, "allow_self_approval": true, "input_names": [],
            "required_inputs": [], "approvals": [], "approved_by": null, "approved_at": null,
            "decided_by": null, "decided_at": null, "reason": null, "timed_out": false,
            "inputs": {}, "push_backs": []
        }))
        .expect("gate view")
    }

    fn note(kind: &str, gate: Option<GateView>, run: Option<RunSummary>) -> Notification {
        Notification {
            id: "MOIRA_GATES:1".into(),
            kind: kind.into(),
            at: "2026-01-01T00:00:00Z".into(),
            gate,
            run,
            link: None,
            personal: None,
        }
    }

    #[test]
    fn rules_match_by_kind_and_every_rule_that_matches_adds_its_channels() {
        let c = config();
        let opened = note("opened", Some(gate(None, &[])), None);
        assert_eq!(route(&c, &opened, &[]), ["all", "ops"]);
        let approved = note("approved", Some(gate(None, &[])), None);
        assert_eq!(route(&c, &approved, &[]), ["all"]);
    }

    #[test]
    fn workflow_and_metadata_rules_trust_only_gates_a_runner_opened() {
        let c = config();
        let meta = [("workflow", "deploy"), ("env", "prod")];
        // Anyone may open a gate with any metadata: no rule believes it.
        let forged = note("approved", Some(gate(None, &meta)), None);
        assert_eq!(route(&c, &forged, &[]), ["all"]);
        let real = note("approved", Some(gate(Some("r1"), &meta)), None);
        assert_eq!(route(&c, &real, &[]), ["all", "deploys", "prod"]);
    }

    #[test]
    fn a_gate_names_only_channels_listed_in_gate_channels() {
        let c = config();
        let g = gate(None, &[("notify", "page, ops ,nosuch,")]);
        let n = note("approved", Some(g), None);
        // `ops` exists but is not in gate_channels; `nosuch` does not exist.
        assert_eq!(route(&c, &n, &[]), ["all", "page"]);
    }

    #[test]
    fn run_notifications_match_on_the_runs_workflow_and_extra_channels_are_added_once() {
        let c = config();
        let run = RunSummary {
            id: "r1".into(),
            workflow: "deploy".into(),
            status: RunStatus::Failed,
            waiting_gates: Vec::new(),
        };
        let n = note("run_failed", None, Some(run));
        // `step = "ship"` needs a gate, so that rule does not match a run.
        assert_eq!(
            route(&c, &n, &["all".into(), "page".into()]),
            ["all", "deploys", "page"]
        );
    }
}
