//! Workflow files: the YAML format, validation, and `${{ }}` templates.
//!
//! [`Workflow::parse`] reads and validates a file; every problem is found
//! before anything runs, with the step and field it is about.
//!
//! # Layout
//! - this file: the format and its validation;
//! - [`expr`]: templates and conditions.

#![forbid(unsafe_code)]

pub mod bundle;
pub mod expr;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use moira_protocol::event::OnTimeout;
use moira_protocol::ids::is_subject_token;
use moira_protocol::time::parse_duration;

pub use expr::{Path, Template};

/// The use: value of a gate step.
pub const GATE_USE: &str = "moira.gate";
/// The largest workflow file accepted, in bytes.
pub const MAX_WORKFLOW_BYTES: usize = 256 * 1024;
/// The most steps a workflow may have.
pub const MAX_STEPS: usize = 256;
/// The longest step or gate timeout (the gate-keeper's own maximum).
pub const MAX_TIMEOUT: Duration = Duration::from_millis(moira_protocol::gate::MAX_TIMEOUT_MS);

/// Output keys every gate step has (besides its inputs).
pub const GATE_OUTPUTS: [&str; 5] = ["approved_by", "approved_at", "reason", "gate_id", "digests"];

#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    #[error("the workflow is not valid YAML for moira: {0}")]
    Yaml(String),
    #[error("the workflow has problems:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<String>),
}

/// A YAML scalar used as text (`tag: v1`, `retries: 3`, `debug: true`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Text(String),
    Int(i64),
    Bool(bool),
    Float(f64),
}

impl Scalar {
    pub fn text(&self) -> String {
        match self {
            Scalar::Text(t) => t.clone(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Bool(b) => b.to_string(),
            Scalar::Float(f) => f.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDeny {
    /// The run is rejected and the gate's dependents are aborted.
    #[default]
    Fail,
    /// Dependents run and can read the denial.
    Continue,
    /// The gate's dependents are skipped; other branches go on.
    Skip,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproversSpec {
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
}

/// `with:` of a `use: moira.gate` step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateWith {
    pub message: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub on_timeout: Option<OnTimeout>,
    #[serde(default)]
    pub approvers: ApproversSpec,
    #[serde(default)]
    pub approvals: Option<u32>,
    #[serde(default)]
    pub allow_self_approval: Option<bool>,
    #[serde(default)]
    pub inputs: Vec<String>,
    #[serde(default)]
    pub required: Vec<String>,
    /// False: the gate is approved at once, with the same outputs.
    #[serde(default)]
    pub when: Option<String>,
    #[serde(default)]
    pub notify: Vec<String>,
    /// Artifacts the gate approves: `name` and `digest` (`sha256:…`),
    /// templates allowed (`${{ steps.build.outputs.digest }}`).
    #[serde(default)]
    pub subject: Vec<moira_protocol::binding::Artifact>,
    /// How long an approval stays good (`2h`): a step after the gate that
    /// would start later opens the gate again instead.
    #[serde(default)]
    pub valid_for: Option<String>,
    /// Ordered approval stages (instead of approvers and approvals):
    /// `[{ roles: [qa], count: 1 }, { roles: [owner], count: 2 }]`.
    #[serde(default)]
    pub stages: Vec<moira_protocol::stages::Stage>,
}

/// `approval:` on a step: review its result after it ran.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Review {
    pub prompt: String,
    #[serde(default, alias = "inputs")]
    pub input: Vec<String>,
    #[serde(default)]
    pub approvers: ApproversSpec,
    #[serde(default)]
    pub timeout: Option<String>,
    /// Artifacts the review approves (templates may read the reviewed
    /// step's own outputs: `${{ steps.plan.outputs.digest }}`).
    #[serde(default)]
    pub subject: Vec<moira_protocol::binding::Artifact>,
    /// Ordered approval stages, as on a gate.
    #[serde(default)]
    pub stages: Vec<moira_protocol::stages::Stage>,
}

/// A step as written: `with:` is read as the gate's fields for a gate step
/// and as the called workflow's variables for a `call:` step.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: String,
    #[serde(default)]
    run: Option<String>,
    #[serde(default, rename = "use")]
    uses: Option<String>,
    #[serde(default)]
    call: Option<String>,
    #[serde(default)]
    with: Option<serde_yaml::Value>,
    #[serde(default)]
    approval: Option<Review>,
    #[serde(default)]
    depends_on: Vec<String>,
    #[serde(default)]
    when: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, Scalar>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    retries: u32,
    #[serde(default)]
    on_deny: OnDeny,
    #[serde(default)]
    continue_on_failure: bool,
}

impl TryFrom<RawStep> for Step {
    type Error = String;

    fn try_from(r: RawStep) -> Result<Step, String> {
        let (with, args) = match (r.with, &r.call) {
            (None, _) => (None, BTreeMap::new()),
            (Some(v), Some(_)) => (
                None,
                serde_yaml::from_value(v).map_err(|e| {
                    format!(
                        "step '{}': with: of a call: step is the called workflow's variables, NAME: value ({e})",
                        r.name
                    )
                })?,
            ),
            (Some(v), None) => (
                Some(
                    serde_yaml::from_value(v)
                        .map_err(|e| format!("step '{}': with: {e}", r.name))?,
                ),
                BTreeMap::new(),
            ),
        };
        Ok(Step {
            name: r.name,
            run: r.run,
            uses: r.uses,
            call: r.call,
            with,
            args,
            approval: r.approval,
            depends_on: r.depends_on,
            when: r.when,
            env: r.env,
            timeout: r.timeout,
            retries: r.retries,
            on_deny: r.on_deny,
            continue_on_failure: r.continue_on_failure,
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawStep")]
pub struct Step {
    pub name: String,
    #[serde(default)]
    pub run: Option<String>,
    #[serde(default, rename = "use")]
    pub uses: Option<String>,
    /// Another workflow file (relative to this one) to run as a child run.
    #[serde(default)]
    pub call: Option<String>,
    #[serde(default)]
    pub with: Option<GateWith>,
    /// `with:` of a `call:` step: the child's variables (templates allowed).
    #[serde(default)]
    pub args: BTreeMap<String, Scalar>,
    #[serde(default)]
    pub approval: Option<Review>,
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub when: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, Scalar>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub retries: u32,
    #[serde(default)]
    pub on_deny: OnDeny,
    #[serde(default)]
    pub continue_on_failure: bool,
}

impl Step {
    pub fn is_gate(&self) -> bool {
        self.uses.as_deref() == Some(GATE_USE)
    }
    pub fn is_call(&self) -> bool {
        self.call.is_some()
    }
    pub fn gate(&self) -> Option<&GateWith> {
        self.with.as_ref().filter(|_| self.is_gate())
    }
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout.as_deref().and_then(|t| parse_duration(t).ok())
    }
    /// The condition that decides whether the step runs (or, for a gate,
    /// whether it asks anyone).
    pub fn condition(&self) -> Option<&str> {
        self.when
            .as_deref()
            .or_else(|| self.gate().and_then(|g| g.when.as_deref()))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    pub name: String,
    #[serde(default)]
    pub vars: BTreeMap<String, Scalar>,
    pub steps: Vec<Step>,
    /// What a run of this workflow gives the step that called it: names
    /// and templates over its steps' outputs (`${{ steps.build.outputs.digest }}`).
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
}

impl Workflow {
    /// Parses and validates a workflow, with `overrides` (from `--var`)
    /// replacing or adding variables.
    pub fn parse(
        yaml: &str,
        overrides: &BTreeMap<String, String>,
    ) -> Result<Workflow, WorkflowError> {
        if yaml.len() > MAX_WORKFLOW_BYTES {
            return Err(WorkflowError::Invalid(vec![format!(
                "the workflow is {} bytes; at most {MAX_WORKFLOW_BYTES} are accepted",
                yaml.len()
            )]));
        }
        let mut wf: Workflow =
            serde_yaml::from_str(yaml).map_err(|e| WorkflowError::Yaml(e.to_string()))?;
        for (k, v) in overrides {
            wf.vars.insert(k.clone(), Scalar::Text(v.clone()));
        }
        let problems = wf.problems();
        if problems.is_empty() {
            Ok(wf)
        } else {
            Err(WorkflowError::Invalid(problems))
        }
    }

    /// What a step's gate asks the gate-keeper for, with its texts put
    /// through `render` (the runner fills in templates; validation passes
    /// them as written). The caller adds the gate id, actor and run.
    pub fn gate_request(
        &self,
        def: &Step,
        review: bool,
        render: impl Fn(&str) -> String,
    ) -> moira_protocol::command::OpenGate {
        use moira_protocol::command::OpenGate;
        // Validation bounds timeouts; a value that does not fit is sent as
        // u64::MAX, which the gate-keeper refuses, rather than wrapping.
        let ms = |t: &Option<String>| {
            t.as_deref()
                .and_then(|t| parse_duration(t).ok())
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        };
        let mut meta = BTreeMap::from([("workflow".to_string(), self.name.clone())]);
        let base = OpenGate {
            step: Some(def.name.clone()),
            ..Default::default()
        };
        if review {
            let r = def.approval.clone().unwrap_or_default();
            meta.insert("kind".into(), "review".into());
            return OpenGate {
                message: render(&r.prompt),
                title: Some(format!("{} / {}: review", self.name, def.name)),
                approvers: r.approvers.users,
                roles: r.approvers.roles,
                inputs: r.input,
                timeout_ms: ms(&r.timeout),
                metadata: meta,
                subject: rendered(&r.subject, &render),
                stages: r.stages,
                ..base
            };
        }
        let g = def.with.clone().unwrap_or_default();
        if !g.notify.is_empty() {
            meta.insert("notify".into(), g.notify.join(","));
        }
        OpenGate {
            message: render(&g.message),
            title: Some(
                g.title
                    .as_deref()
                    .map(&render)
                    .unwrap_or_else(|| format!("{} / {}", self.name, def.name)),
            ),
            approvers: g.approvers.users,
            roles: g.approvers.roles,
            approvals: g.approvals,
            allow_self_approval: g.allow_self_approval,
            inputs: g.inputs,
            required: g.required,
            timeout_ms: ms(&g.timeout),
            on_timeout: g
                .on_timeout
                .filter(|o| *o != OnTimeout::Fail || g.timeout.is_some()),
            metadata: meta,
            subject: rendered(&g.subject, &render),
            valid_for_ms: ms(&g.valid_for),
            stages: g.stages,
            ..base
        }
    }

    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }

    pub fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).map(Scalar::text)
    }

    /// Every step that depends on `name`, directly or not.
    pub fn dependents(&self, name: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut frontier = vec![name.to_string()];
        while let Some(n) = frontier.pop() {
            for s in &self.steps {
                if s.depends_on.contains(&n) && out.insert(s.name.clone()) {
                    frontier.push(s.name.clone());
                }
            }
        }
        out
    }

    /// Every step that `name` depends on, directly or not.
    pub fn ancestors(&self, name: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut frontier = vec![name.to_string()];
        while let Some(n) = frontier.pop() {
            if let Some(s) = self.step(&n) {
                for d in &s.depends_on {
                    if out.insert(d.clone()) {
                        frontier.push(d.clone());
                    }
                }
            }
        }
        out
    }

    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.name.trim().is_empty() {
            p.push("the workflow needs a name".to_string());
        }
        if self.name.len() > 128 || self.name.chars().any(char::is_control) {
            p.push(
                "the workflow name must be at most 128 bytes, without control characters"
                    .to_string(),
            );
        }
        if self.steps.is_empty() {
            p.push("the workflow has no steps".to_string());
        }
        if self.steps.len() > MAX_STEPS {
            p.push(format!(
                "the workflow has {} steps; at most {MAX_STEPS} are allowed",
                self.steps.len()
            ));
            return p;
        }
        let mut seen = HashMap::new();
        for s in &self.steps {
            if !is_subject_token(&s.name) || s.name.len() > 64 {
                p.push(format!(
                    "step name '{}' may hold only letters, digits, '-' and '_' (at most 64)",
                    s.name
                ));
            }
            if seen.insert(s.name.as_str(), ()).is_some() {
                p.push(format!("two steps are named '{}'", s.name));
            }
        }
        for s in &self.steps {
            let at = format!("step '{}'", s.name);
            let kinds = [s.run.is_some(), s.uses.is_some(), s.call.is_some()];
            match (&s.run, &s.uses) {
                _ if kinds.iter().filter(|k| **k).count() > 1 => p.push(format!(
                    "{at}: has more than one of run:, use: and call:; pick one"
                )),
                (None, None) if s.call.is_some() => {}
                (None, None) => p.push(format!(
                    "{at}: needs run: (a command), use: {GATE_USE} or call: (a workflow file)"
                )),
                (None, Some(u)) if u != GATE_USE => p.push(format!(
                    "{at}: unknown use: '{u}'; the only one is {GATE_USE}"
                )),
                _ => {}
            }
            if s.is_gate() {
                match &s.with {
                    None => p.push(format!("{at}: a gate needs with: (at least a message)")),
                    Some(g) => {
                        if g.message.trim().is_empty() {
                            p.push(format!("{at}: with.message is empty"));
                        }
                        for r in &g.required {
                            if !g.inputs.contains(r) {
                                p.push(format!(
                                    "{at}: required input '{r}' is not listed in inputs"
                                ));
                            }
                        }
                        for i in g.inputs.iter().chain(&g.required) {
                            if GATE_OUTPUTS.contains(&i.as_str()) {
                                p.push(format!(
                                    "{at}: input name '{i}' is one of the gate's own outputs ({})",
                                    GATE_OUTPUTS.join(", ")
                                ));
                            }
                            if is_reserved_env(i) {
                                p.push(format!("{at}: input name '{i}' is reserved: inputs become environment variables, and PATH, IFS, LD_*, MOIRA_* and the like may not be set by an approver"));
                            }
                        }
                        if g.approvals == Some(0) {
                            p.push(format!("{at}: approvals must be at least 1"));
                        }
                        if g.on_timeout.is_some() && g.timeout.is_none() {
                            p.push(format!("{at}: on_timeout needs a timeout"));
                        }
                        check_duration(&mut p, &at, "with.timeout", g.timeout.as_deref());
                        check_duration(&mut p, &at, "with.valid_for", g.valid_for.as_deref());
                    }
                }
                if s.approval.is_some() {
                    p.push(format!(
                        "{at}: approval: reviews a step that ran; a gate step cannot have one"
                    ));
                }
            } else if s.with.is_some() {
                p.push(format!(
                    "{at}: with: belongs to use: {GATE_USE} and call: steps"
                ));
            }
            if let Some(file) = &s.call {
                if let Err(e) = bundle::check_target(file) {
                    p.push(format!("{at}: call: {e}"));
                }
                if s.approval.is_some() {
                    p.push(format!(
                        "{at}: approval: reviews a step that ran; put the gate inside the called workflow"
                    ));
                }
                if s.timeout.is_some() {
                    p.push(format!(
                        "{at}: timeout: applies to commands; give the called workflow's steps and gates their own"
                    ));
                }
                for k in s.args.keys() {
                    if !valid_env_name(k) {
                        p.push(format!(
                            "{at}: with: '{k}' is not a variable name (letters, digits and '_')"
                        ));
                    }
                }
            }
            if let Some(r) = &s.approval {
                for i in &r.input {
                    if is_reserved_env(i) {
                        p.push(format!("{at}: approval input name '{i}' is reserved: inputs become environment variables, and PATH, IFS, LD_*, MOIRA_* and the like may not be set by an approver"));
                    }
                }
                if r.prompt.trim().is_empty() {
                    p.push(format!("{at}: approval.prompt is empty"));
                }
                check_duration(&mut p, &at, "approval.timeout", r.timeout.as_deref());
            }
            check_duration(&mut p, &at, "timeout", s.timeout.as_deref());
            for k in s.env.keys() {
                if !valid_env_name(k) {
                    p.push(format!("{at}: env name '{k}' must be letters, digits and '_', not starting with a digit"));
                } else if is_reserved_env(k) {
                    p.push(format!("{at}: env name '{k}' is reserved (PATH, IFS, LD_*, MOIRA_* and the like are set by the runner)"));
                }
            }
            for d in &s.depends_on {
                if self.step(d).is_none() {
                    p.push(format!("{at}: depends on unknown step '{d}'"));
                }
                if d == &s.name {
                    p.push(format!("{at}: depends on itself"));
                }
            }
            self.check_templates(&mut p, s);
            // The gate-keeper's own rules, on the gate as written (a
            // rendered text can still grow past a limit at run time; the
            // step then ends with the gate-keeper's reason).
            let gates = [(s.is_gate(), false), (s.approval.is_some(), true)];
            for (_, review) in gates.into_iter().filter(|(has, _)| *has) {
                let mut req = self.gate_request(s, review, str::to_string);
                req.actor = "moira:runner".into();
                // A digest or name filled in at run time is checked then.
                for a in &mut req.subject {
                    if a.digest.contains("${{") {
                        a.digest = format!("sha256:{}", "0".repeat(64));
                    }
                    if a.name.contains("${{") {
                        a.name = "artifact".into();
                    }
                }
                if let Err(e) =
                    moira_protocol::gate::spec_from(&req, &moira_protocol::gate::Policy::dev())
                {
                    let what = if review {
                        "its review gate"
                    } else {
                        "its gate"
                    };
                    p.push(format!(
                        "{at}: the gate-keeper would refuse {what}: {}",
                        e.message
                    ));
                }
            }
        }
        for (name, text) in &self.outputs {
            if !valid_env_name(name) {
                p.push(format!(
                    "outputs: '{name}' is not a name (letters, digits and '_')"
                ));
            }
            match Template::parse(text) {
                Err(e) => p.push(format!("outputs.{name}: {e}")),
                Ok(t) => {
                    for path in t.paths() {
                        match &path {
                            Path::Var(n) if !self.vars.contains_key(n) => {
                                p.push(format!("outputs.{name}: unknown variable vars.{n}"))
                            }
                            Path::Output { step, .. } | Path::Status { step }
                                if self.step(step).is_none() =>
                            {
                                p.push(format!("outputs.{name}: {path} names an unknown step"))
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        if let Some(cycle) = self.cycle() {
            p.push(format!(
                "the steps depend on each other in a cycle: {}",
                cycle.join(" -> ")
            ));
        }
        p
    }

    fn check_templates(&self, p: &mut Vec<String>, s: &Step) {
        let at = format!("step '{}'", s.name);
        let mut texts: Vec<(&str, &str)> = Vec::new();
        if let Some(r) = &s.run {
            texts.push(("run", r));
        }
        if let Some(w) = &s.when {
            texts.push(("when", w));
        }
        if let Some(g) = s.gate() {
            texts.push(("with.message", &g.message));
            if let Some(t) = &g.title {
                texts.push(("with.title", t));
            }
            if let Some(w) = &g.when {
                texts.push(("with.when", w));
            }
            for a in &g.subject {
                texts.push(("with.subject.name", &a.name));
                texts.push(("with.subject.digest", &a.digest));
            }
        }
        if let Some(r) = &s.approval {
            texts.push(("approval.prompt", &r.prompt));
            for a in &r.subject {
                texts.push(("approval.subject.name", &a.name));
                texts.push(("approval.subject.digest", &a.digest));
            }
        }
        let env: Vec<(String, String)> = s
            .env
            .iter()
            .map(|(k, v)| (format!("env.{k}"), v.text()))
            .chain(s.args.iter().map(|(k, v)| (format!("with.{k}"), v.text())))
            .collect();
        let ancestors = self.ancestors(&s.name);
        for (field, text) in texts
            .into_iter()
            .chain(env.iter().map(|(f, t)| (f.as_str(), t.as_str())))
        {
            let tpl = match Template::parse(text) {
                Ok(t) => t,
                Err(e) => {
                    p.push(format!("{at}: {field}: {e}"));
                    continue;
                }
            };
            for path in tpl.paths() {
                match &path {
                    Path::Var(n) if !self.vars.contains_key(n) => {
                        p.push(format!("{at}: {field}: unknown variable vars.{n}; define it under vars: or pass --var {n}=…"))
                    }
                    Path::Output { step, .. } | Path::Status { step } if self.step(step).is_none() => {
                        p.push(format!("{at}: {field}: {path} names an unknown step"))
                    }
                    // A review is opened after its step ran: it may read
                    // that step's own outputs.
                    Path::Output { step, .. } | Path::Status { step }
                        if step == &s.name && field.starts_with("approval.") => {}
                    Path::Output { step, .. } | Path::Status { step } if !ancestors.contains(step) => p.push(format!(
                        "{at}: {field}: {path} is read before that step is sure to have run; add '{step}' to depends_on"
                    )),
                    Path::Output { step, key } => {
                        if let Some(g) = self.step(step).and_then(Step::gate) {
                            if !GATE_OUTPUTS.contains(&key.as_str()) && !g.inputs.contains(key) {
                                p.push(format!(
                                    "{at}: {field}: gate '{step}' has no output '{key}'; it has {} and its inputs",
                                    GATE_OUTPUTS.join(", ")
                                ));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// A dependency cycle, if there is one (Kahn's algorithm leaves it).
    fn cycle(&self) -> Option<Vec<String>> {
        let known: BTreeSet<&str> = self.steps.iter().map(|s| s.name.as_str()).collect();
        let mut indegree: BTreeMap<&str, usize> = BTreeMap::new();
        for s in &self.steps {
            indegree.insert(
                &s.name,
                s.depends_on
                    .iter()
                    .filter(|d| known.contains(d.as_str()) && *d != &s.name)
                    .count(),
            );
        }
        let mut ready: Vec<&str> = indegree
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(k, _)| *k)
            .collect();
        while let Some(n) = ready.pop() {
            indegree.remove(n);
            for s in &self.steps {
                if s.depends_on.iter().any(|d| d == n) {
                    if let Some(c) = indegree.get_mut(s.name.as_str()) {
                        *c -= 1;
                        if *c == 0 {
                            ready.push(&s.name);
                        }
                    }
                }
            }
        }
        if indegree.is_empty() {
            None
        } else {
            Some(indegree.keys().map(|k| k.to_string()).collect())
        }
    }
}

/// A gate's or review's artifacts with their templates filled in.
fn rendered(
    subject: &[moira_protocol::binding::Artifact],
    render: &impl Fn(&str) -> String,
) -> Vec<moira_protocol::binding::Artifact> {
    subject
        .iter()
        .map(|a| moira_protocol::binding::Artifact {
            name: render(&a.name),
            digest: render(&a.digest),
        })
        .collect()
}

fn check_duration(p: &mut Vec<String>, at: &str, field: &str, value: Option<&str>) {
    if let Some(v) = value {
        match parse_duration(v) {
            Err(e) => p.push(format!("{at}: {field}: {e}")),
            Ok(d) if d > MAX_TIMEOUT => p.push(format!(
                "{at}: {field}: '{v}' is longer than the maximum of 366 days"
            )),
            Ok(_) => {}
        }
    }
}

/// Environment variables that change how a shell or the dynamic loader
/// behaves. Values from approvers (gate inputs) and workflow `env:` never
/// set them, and validation refuses them as names.
pub fn is_reserved_env(name: &str) -> bool {
    const EXACT: [&str; 9] = [
        "PATH",
        "IFS",
        "ENV",
        "BASH_ENV",
        "SHELLOPTS",
        "BASHOPTS",
        "PS4",
        "CDPATH",
        "GLOBIGNORE",
    ];
    EXACT.contains(&name)
        || ["LD_", "DYLD_", "MOIRA_", "BASH_FUNC_"]
            .iter()
            .any(|p| name.starts_with(p))
}

/// An environment variable name a step may set.
fn valid_env_name(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && k.len() <= 128
}

#[cfg(test)]
mod tests;
