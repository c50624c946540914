//! The gate state machine.
//!
//! [`decide`] holds every rule: given the current state and a command it
//! returns the events to append, or why the command is refused. [`apply`]
//! holds none: it folds an event into the state. Once a gate is terminal,
//! later events (a timeout that raced a decision, say) are ignored, so the
//! first terminal event on the subject wins.

use std::collections::BTreeMap;

use crate::command::{
    ApproveGate, CancelGate, Command, CommandError, DenyGate, ErrorCode, OpenGate, PushBackGate,
};
use crate::event::{Envelope, GateEvent, GateSpec, Inputs, OnTimeout, SCHEMA, TIMEOUT_ACTOR};
use crate::ids::{is_subject_token, is_valid_name, CommandId, GateId, MAX_NAME};

/// Why a user, tool or role name was refused (the name is shown escaped).
pub fn bad_name(what: &str, name: &str) -> String {
    format!(
        "{what} name {:?} is not allowed: use 1 to {MAX_NAME} ASCII letters, digits and . _ @ + -, starting with a letter or digit",
        name.chars().take(80).collect::<String>()
    )
}

/// Limits on user-supplied text, so one gate cannot bloat the stream.
pub const MAX_TEXT: usize = 4096;
pub const MAX_NAMES: usize = 64;
/// The most push-backs one gate takes. Each may carry up to a command's
/// size of text, so this keeps a gate's whole history (and a read of it)
/// bounded; a gate that needs more is denied or cancelled and opened anew.
pub const MAX_PUSH_BACKS: usize = 100;
/// The longest timeout accepted (one year).
pub const MAX_TIMEOUT_MS: u64 = 366 * 24 * 3600 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum GateStatus {
    Waiting,
    Approved,
    Denied,
    TimedOut,
    Cancelled,
}

impl GateStatus {
    pub fn is_terminal(self) -> bool {
        self != GateStatus::Waiting
    }
    pub fn as_str(self) -> &'static str {
        match self {
            GateStatus::Waiting => "waiting",
            GateStatus::Approved => "approved",
            GateStatus::Denied => "denied",
            GateStatus::TimedOut => "timed_out",
            GateStatus::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Waiting,
            Self::Approved,
            Self::Denied,
            Self::TimedOut,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub by: String,
    pub at: u64,
    pub comment: Option<String>,
    /// The fingerprint of the key that signed it, when it was signed.
    pub key: Option<String>,
    /// How a service authenticated the approver, when the service signed
    /// for them (`key` is then the service's).
    pub via: Option<String>,
    /// The user `by` approved for, as their deputy (`key` is the deputy's).
    pub on_behalf_of: Option<String>,
}

impl Approval {
    /// Whether `person` took part in this approval, as the approver or as
    /// the user a deputy approved for.
    pub fn involves(&self, person: &str) -> bool {
        self.by == person || self.on_behalf_of.as_deref() == Some(person)
    }

    /// "bob" or "bob for alice".
    pub fn who(&self) -> String {
        who_text(&self.by, self.on_behalf_of.as_deref())
    }
}

/// How a decider is shown: "bob", or "bob for alice" for a deputy.
pub fn who_text(by: &str, on_behalf_of: Option<&str>) -> String {
    match on_behalf_of {
        Some(u) => format!("{by} for {u}"),
        None => by.to_string(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushBack {
    pub by: String,
    pub at: u64,
    pub comment: Option<String>,
    pub inputs: Inputs,
    /// The iteration that was pushed back.
    pub iteration: u32,
    /// As [`Approval::via`].
    pub via: Option<String>,
    /// As [`Approval::on_behalf_of`].
    pub on_behalf_of: Option<String>,
}

/// The folded state of one gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateState {
    pub id: GateId,
    pub spec: GateSpec,
    pub requested_by: String,
    pub opened_at: u64,
    pub timeout_at: Option<u64>,
    pub status: GateStatus,
    /// Starts at 1; each push-back adds one.
    pub iteration: u32,
    /// Approvals of the current iteration.
    pub approvals: Vec<Approval>,
    /// Inputs supplied in the current iteration (by approvals or push-back).
    pub inputs: Inputs,
    pub push_backs: Vec<PushBack>,
    pub approved_by: Option<String>,
    pub approved_at: Option<u64>,
    pub decided_by: Option<String>,
    /// The user `decided_by` decided for, as their deputy.
    pub decided_for: Option<String>,
    pub decided_at: Option<u64>,
    pub reason: Option<String>,
    /// True when the gate ended because its deadline passed.
    pub timed_out: bool,
    /// Commands already applied and what each did, so a retried command
    /// has no second effect and a reused id for another command is refused.
    /// A gate sees a handful of commands, so a Vec beats a map here.
    pub applied: Vec<(CommandId, Did)>,
}

impl GateState {
    /// About how many bytes this state takes in memory: the text it holds
    /// plus a fixed cost per part. For bounding caches, not for accounting.
    pub fn approx_bytes(&self) -> usize {
        fn opt(s: &Option<String>) -> usize {
            s.as_ref().map_or(0, String::len)
        }
        fn map(m: &BTreeMap<String, String>) -> usize {
            m.iter().map(|(k, v)| k.len() + v.len() + 48).sum()
        }
        fn names(v: &[String]) -> usize {
            v.iter().map(|s| s.len() + 24).sum()
        }
        let spec = &self.spec;
        let spec_bytes = spec.message.len()
            + opt(&spec.title)
            + opt(&spec.summary)
            + map(&spec.metadata)
            + opt(&spec.run_id)
            + opt(&spec.step)
            + names(&spec.approvers.users)
            + names(&spec.approvers.roles)
            + names(&spec.inputs)
            + names(&spec.required);
        let approvals: usize = self
            .approvals
            .iter()
            .map(|a| a.by.len() + opt(&a.comment) + opt(&a.key) + 64)
            .sum();
        let push_backs: usize = self
            .push_backs
            .iter()
            .map(|p| p.by.len() + opt(&p.comment) + map(&p.inputs) + 64)
            .sum();
        let applied: usize = self
            .applied
            .iter()
            .map(|(_, did)| {
                64 + match did {
                    Did::Approve {
                        actor,
                        comment,
                        inputs,
                    }
                    | Did::PushBack {
                        actor,
                        comment,
                        inputs,
                    } => actor.len() + opt(comment) + map(inputs),
                    Did::Deny { actor, reason } => actor.len() + reason.len(),
                    Did::Cancel { actor, reason } => actor.len() + opt(reason),
                    Did::Open | Did::TimedOut => 0,
                }
            })
            .sum();
        512 + spec_bytes
            + self.requested_by.len()
            + approvals
            + map(&self.inputs)
            + push_backs
            + opt(&self.approved_by)
            + opt(&self.decided_by)
            + opt(&self.reason)
            + applied
    }
}

/// What a command did, as far as telling a retry from a different command
/// with a reused id goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Did {
    Open,
    Approve {
        actor: String,
        comment: Option<String>,
        inputs: Inputs,
    },
    Deny {
        actor: String,
        reason: String,
    },
    PushBack {
        actor: String,
        comment: Option<String>,
        inputs: Inputs,
    },
    Cancel {
        actor: String,
        reason: Option<String>,
    },
    TimedOut,
}

impl Did {
    fn of_event(actor: &str, ev: &GateEvent) -> Did {
        let actor = actor.to_string();
        match ev {
            GateEvent::GateOpened { .. } => Did::Open,
            GateEvent::ApprovalRecorded { comment, inputs }
            | GateEvent::GateApproved { comment, inputs } => Did::Approve {
                actor,
                comment: comment.clone(),
                inputs: inputs.clone(),
            },
            GateEvent::GateDenied { reason } => Did::Deny {
                actor,
                reason: reason.clone(),
            },
            GateEvent::GatePushedBack { comment, inputs } => Did::PushBack {
                actor,
                comment: comment.clone(),
                inputs: inputs.clone(),
            },
            GateEvent::GateCancelled { reason } => Did::Cancel {
                actor,
                reason: reason.clone(),
            },
            GateEvent::GateTimedOut { .. } => Did::TimedOut,
        }
    }

    fn of_command(cmd: &Command) -> Did {
        match cmd {
            Command::Open(_) => Did::Open,
            Command::Approve(c) => Did::Approve {
                actor: c.actor.clone(),
                comment: c.comment.clone(),
                inputs: c.inputs.clone(),
            },
            Command::Deny(c) => Did::Deny {
                actor: c.actor.clone(),
                reason: c.reason.clone(),
            },
            Command::PushBack(c) => Did::PushBack {
                actor: c.actor.clone(),
                comment: c.comment.clone(),
                inputs: c.inputs.clone(),
            },
            Command::Cancel(c) => Did::Cancel {
                actor: c.actor.clone(),
                reason: c.reason.clone(),
            },
        }
    }
}

/// Why a command was refused.
pub type Rejection = CommandError;

fn reject(code: ErrorCode, message: impl Into<String>) -> Rejection {
    CommandError::new(code, message)
}

/// The gate-keeper's house rules for opening gates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// A gate must name its approvers (users or roles); without this a
    /// gate that names none may be decided by anyone.
    pub require_approvers: bool,
    /// Whether the requester may approve their own gate when the open
    /// does not say.
    pub self_approval_by_default: bool,
    /// The shortest timeout of a gate that approves itself on timeout, so
    /// a requester cannot approve their own gate with a 1 ms deadline.
    pub min_auto_approve_ms: u64,
    /// A role the requester must hold to open such a gate at all.
    pub auto_approve_role: Option<String>,
}

/// The role that may open gates with `on_timeout: approve` under
/// [`Policy::strict`].
pub const AUTO_APPROVE_ROLE: &str = "auto-approver";

impl Policy {
    /// `moira dev`, the demo and the gate-keeper's default: easy to try.
    pub fn dev() -> Policy {
        Policy {
            require_approvers: false,
            self_approval_by_default: true,
            min_auto_approve_ms: 1_000,
            auto_approve_role: None,
        }
    }
    /// Production (`--strict`): gates name their approvers, no
    /// self-approval unless a gate allows it, and auto-approval on timeout
    /// needs at least 15 minutes and the `auto-approver` role.
    pub fn strict() -> Policy {
        Policy {
            require_approvers: true,
            self_approval_by_default: false,
            min_auto_approve_ms: 15 * 60 * 1000,
            auto_approve_role: Some(AUTO_APPROVE_ROLE.to_string()),
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy::dev()
    }
}

/// What `decide` needs besides the state and the command. The caller does
/// the I/O to fill it in (clock, approvers registry).
#[derive(Debug, Clone)]
pub struct Context {
    pub policy: Policy,
    /// The command came from one of moira's services (the runners'
    /// subject): it may act as a `moira:` actor, open a gate for a run, and
    /// cancel the gates of runs.
    pub service: bool,
    pub now: u64,
    /// The command id to stamp on the events.
    pub command_id: CommandId,
    /// The gate id to use for an open that did not name one.
    pub new_gate_id: GateId,
    /// Roles of the command's actor, from the approvers registry.
    pub actor_roles: Vec<String>,
    /// The fingerprint of the key whose signature the gate-keeper checked.
    pub signer: Option<String>,
    /// The approvers registry revision the command is checked against.
    pub registry: Option<String>,
    /// The digest of the gate's last stored message (the hash chain).
    pub prev: Option<String>,
    /// Set when the actor decides as a deputy and the signature's
    /// certificate was checked: for whom, and how far.
    pub deputy: Option<Deputy>,
}

/// What a delegation certificate lets its holder do for a user: act as
/// them (their name and all their roles), or only in some of their roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deputy {
    /// The user the deputy acts for.
    pub user: String,
    /// The certificate names the user without a role (`moira:alice`): the
    /// deputy counts where the gate names the user.
    pub as_user: bool,
    /// The user's roles the deputy may act in (all of them when `as_user`).
    pub roles: Vec<String>,
}

/// Who a decision counts as: the actor, or the user a deputy acts for.
struct Acting<'a> {
    /// Matched against the users a gate names (`None`: a deputy limited to
    /// roles matches no name).
    name: Option<&'a str>,
    roles: &'a [String],
    /// For messages: "bob" or "bob for alice".
    shown: String,
}

impl<'a> Acting<'a> {
    fn of(
        actor: &'a str,
        on_behalf_of: Option<&str>,
        ctx: &'a Context,
    ) -> Result<Acting<'a>, Rejection> {
        let Some(user) = on_behalf_of else {
            return Ok(Acting {
                name: Some(actor),
                roles: &ctx.actor_roles,
                shown: actor.to_string(),
            });
        };
        match &ctx.deputy {
            Some(d) if d.user == user => Ok(Acting {
                name: d.as_user.then_some(d.user.as_str()),
                roles: &d.roles,
                shown: who_text(actor, Some(user)),
            }),
            _ => Err(reject(
                ErrorCode::NotAllowed,
                format!(
                    "{actor} says they act for {}, but the command is not signed with a certificate from that user's key; sign with the certificate they gave you",
                    user.chars().take(64).collect::<String>()
                ),
            )),
        }
    }

    fn accepted_by(&self, users: &[String], roles: &[String]) -> bool {
        self.name.is_some_and(|n| users.iter().any(|u| u == n))
            || self.roles.iter().any(|r| roles.contains(r))
    }
}

/// The outcome of deciding a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Append these events.
    Append(Vec<Envelope>),
    /// Nothing to append: the command was applied before (same command id),
    /// or an idempotent open found the same gate already there.
    AlreadyDone,
}

/// Decides a command against the current state (`None`: no gate yet).
pub fn decide(
    state: Option<&GateState>,
    cmd: &Command,
    ctx: &Context,
) -> Result<Decision, Rejection> {
    if !(ctx.service && cmd.actor().starts_with("moira:")) {
        check_actor(cmd.actor())?;
    }
    if let Some(via) = cmd.via() {
        check_via(via)?;
    }
    if let Some(user) = cmd.on_behalf_of() {
        check_actor(user)?;
        if user == cmd.actor() {
            return Err(reject(
                ErrorCode::BadRequest,
                "a deputy acts for someone else; leave on_behalf_of out to act as yourself",
            ));
        }
        if cmd.via().is_some() {
            return Err(reject(
                ErrorCode::BadRequest,
                "a deputy signs their own decisions; on_behalf_of cannot come with via",
            ));
        }
    }
    // An open is compared by its definition below.
    if let (Some(state), false) = (state, matches!(cmd, Command::Open(_))) {
        if let Some((_, did)) = state.applied.iter().find(|(id, _)| *id == ctx.command_id) {
            return if *did == Did::of_command(cmd) {
                Ok(Decision::AlreadyDone)
            } else {
                Err(reject(
                    ErrorCode::Conflict,
                    format!(
                        "command id {} was already used on gate {} for a different command; send a new id",
                        ctx.command_id, state.id
                    ),
                ))
            };
        }
    }
    let envelope = |gate_id: GateId, event: GateEvent| Envelope {
        schema: SCHEMA,
        id: ctx.command_id,
        gate_id,
        actor: cmd.actor().to_string(),
        at: ctx.now,
        event,
        run_id: match (cmd, state) {
            (Command::Open(c), _) => c.run_id.clone(),
            (_, Some(s)) => s.spec.run_id.clone(),
            _ => None,
        },
        signature: cmd.signature().cloned(),
        signed_at: cmd.signed_at(),
        signer: ctx.signer.clone(),
        registry: ctx.registry.clone(),
        prev: ctx.prev.clone(),
        via: cmd.via().map(str::to_string),
        on_behalf_of: cmd.on_behalf_of().map(str::to_string),
    };
    let event = match cmd {
        Command::Open(c) => {
            if c.run_id.is_some() && !ctx.service {
                return Err(reject(
                    ErrorCode::NotAllowed,
                    "only a runner may open a gate that names a run; link a gate to other things with --meta",
                ));
            }
            let spec = spec_from(c, &ctx.policy)?;
            check_auto_approve(&spec, &ctx.policy, &ctx.actor_roles)?;
            if let Some(existing) = state {
                return if existing.spec == spec && existing.requested_by == c.actor {
                    Ok(Decision::AlreadyDone)
                } else {
                    Err(reject(
                        ErrorCode::Conflict,
                        format!("gate {} already exists with a different definition; choose another --id", existing.id),
                    ))
                };
            }
            let timeout_at = spec.timeout_ms.map(|t| ctx.now.saturating_add(t));
            let gate_id = c.gate_id.unwrap_or(ctx.new_gate_id);
            return Ok(Decision::Append(vec![envelope(
                gate_id,
                GateEvent::GateOpened {
                    spec: Box::new(spec),
                    timeout_at,
                },
            )]));
        }
        Command::Approve(c) => decide_approve(open_gate(state)?, c, ctx)?,
        Command::Deny(c) => decide_deny(open_gate(state)?, c, ctx)?,
        Command::PushBack(c) => decide_push_back(open_gate(state)?, c, ctx)?,
        Command::Cancel(c) => decide_cancel(open_gate(state)?, c, ctx)?,
    };
    let gate_id = state.map(|s| s.id).unwrap_or(ctx.new_gate_id);
    Ok(Decision::Append(vec![envelope(gate_id, event)]))
}

/// How moira-web may say it authenticated the person it decides for.
pub const VIAS: &[&str] = &["proxy", "link", "slack", "dev"];

/// Refuses a `via` that is not one of [`VIAS`].
pub fn check_via(via: &str) -> Result<(), Rejection> {
    if VIAS.contains(&via) {
        return Ok(());
    }
    Err(reject(
        ErrorCode::BadRequest,
        format!(
            "via is one of {}, not '{}'",
            VIAS.join(", "),
            via.chars().take(32).collect::<String>()
        ),
    ))
}

fn check_actor(actor: &str) -> Result<(), Rejection> {
    if actor.trim().is_empty() {
        return Err(reject(
            ErrorCode::BadRequest,
            "the command names no actor; set --as or MOIRA_USER",
        ));
    }
    if actor.starts_with("moira:") {
        return Err(reject(
            ErrorCode::BadRequest,
            "actor names starting with 'moira:' are reserved",
        ));
    }
    if !is_valid_name(actor) {
        return Err(reject(ErrorCode::BadRequest, bad_name("actor", actor)));
    }
    Ok(())
}

/// The gate, if it exists and still waits for a decision.
fn open_gate(state: Option<&GateState>) -> Result<&GateState, Rejection> {
    let state = state.ok_or_else(|| reject(ErrorCode::NotFound, "no gate has this id"))?;
    if state.status.is_terminal() {
        let by = state.decided_by.as_deref().unwrap_or("?");
        let what = match state.status {
            GateStatus::Approved => format!("approved by {by}"),
            GateStatus::Denied => format!("denied by {by}"),
            GateStatus::TimedOut => "timed out".to_string(),
            GateStatus::Cancelled => format!("cancelled by {by}"),
            GateStatus::Waiting => "decided".to_string(),
        };
        return Err(reject(
            ErrorCode::AlreadyDecided,
            format!("gate {} was already {what}", state.id),
        ));
    }
    Ok(state)
}

fn may_decide(state: &GateState, who: &Acting) -> Result<(), Rejection> {
    let a = &state.spec.approvers;
    if a.is_open() || who.accepted_by(&a.users, &a.roles) {
        return Ok(());
    }
    let actor = &who.shown;
    let mut who = Vec::new();
    if !a.users.is_empty() {
        who.push(format!("users {}", a.users.join(", ")));
    }
    if !a.roles.is_empty() {
        who.push(format!("roles {}", a.roles.join(", ")));
    }
    Err(reject(
        ErrorCode::NotAllowed,
        format!(
            "{actor} may not decide gate {}; its approvers are {}",
            state.id,
            who.join(" and ")
        ),
    ))
}

/// With stages, only the current stage's approvers may approve now; one
/// of a later stage is told to wait for the earlier ones.
fn check_stage(state: &GateState, who: &Acting) -> Result<(), Rejection> {
    let stages = &state.spec.stages;
    let Some(now) = crate::stages::current(state) else {
        return Ok(());
    };
    let accepts = |s: &crate::stages::Stage| s.accepts(who.name, who.roles);
    if accepts(&stages[now]) {
        return Ok(());
    }
    let actor = &who.shown;
    let n = now + 1;
    let have = crate::stages::progress(stages, &state.approvals)[now].len();
    match stages.iter().skip(n).position(accepts) {
        Some(later) => Err(reject(
            ErrorCode::OutOfOrder,
            format!(
                "gate {} is at stage {n} of {} ({}: {have} of {} approvals); {actor} approves in stage {}, after it",
                state.id,
                stages.len(),
                stages[now].who(),
                stages[now].count,
                n + later + 1
            ),
        )),
        None => Err(reject(
            ErrorCode::NotAllowed,
            format!(
                "{actor} is in no stage of gate {} that is still to come; stage {n} takes {}",
                state.id,
                stages[now].who()
            ),
        )),
    }
}

fn check_text(what: &str, text: &str) -> Result<(), Rejection> {
    if text.len() > MAX_TEXT {
        return Err(reject(
            ErrorCode::BadRequest,
            format!("{what} is longer than {MAX_TEXT} bytes"),
        ));
    }
    Ok(())
}

fn check_inputs(state: &GateState, inputs: &Inputs) -> Result<(), Rejection> {
    for (k, v) in inputs {
        if !state.spec.inputs.contains(k) {
            let known = if state.spec.inputs.is_empty() {
                "this gate collects no inputs".to_string()
            } else {
                format!("this gate collects {}", state.spec.inputs.join(", "))
            };
            return Err(reject(
                ErrorCode::BadRequest,
                format!("unknown input '{k}': {known}"),
            ));
        }
        check_text(&format!("input {k}"), v)?;
    }
    Ok(())
}

fn decide_approve(
    state: &GateState,
    c: &ApproveGate,
    ctx: &Context,
) -> Result<GateEvent, Rejection> {
    let who = Acting::of(&c.actor, c.on_behalf_of.as_deref(), ctx)?;
    may_decide(state, &who)?;
    check_stage(state, &who)?;
    // The deputy and the user they act for are both people here: neither
    // may approve a gate they opened, nor count twice.
    let persons: Vec<&str> = std::iter::once(c.actor.as_str())
        .chain(c.on_behalf_of.as_deref())
        .collect();
    if !state.spec.allow_self_approval && persons.contains(&state.requested_by.as_str()) {
        return Err(reject(
            ErrorCode::NotAllowed,
            format!(
                "{} opened gate {} and it forbids self-approval; another approver must approve it{}",
                state.requested_by,
                state.id,
                if c.on_behalf_of.is_some() {
                    format!(" ({} cannot approve it for them or as their deputy)", who.shown)
                } else {
                    String::new()
                }
            ),
        ));
    }
    if let Some(a) = state
        .approvals
        .iter()
        .find(|a| persons.iter().any(|p| a.involves(p)))
    {
        let left = state.spec.approvals_required as usize - state.approvals.len();
        return Err(reject(
            ErrorCode::NotAllowed,
            format!(
                "{} already approved gate {} ({}); {left} more approval(s) needed from others",
                who.shown,
                state.id,
                a.who()
            ),
        ));
    }
    // N of M counts distinct signers: one key cannot approve twice under
    // two names. A service's key signing for people it authenticated
    // (`via`) names no one person, so there the actors count.
    if let (Some(key), None) = (&ctx.signer, &c.via) {
        let own = |a: &&Approval| a.via.is_none() && a.key.as_ref() == Some(key);
        if let Some(a) = state.approvals.iter().find(own) {
            return Err(reject(
                ErrorCode::NotAllowed,
                format!(
                    "the key {key} already approved gate {} (as {}); approvals must come from distinct signers",
                    state.id, a.by
                ),
            ));
        }
    }
    if let Some(comment) = &c.comment {
        check_text("the comment", comment)?;
    }
    check_inputs(state, &c.inputs)?;
    let completes = state.approvals.len() + 1 >= state.spec.approvals_required as usize;
    if completes {
        let mut merged = state.inputs.clone();
        merged.extend(c.inputs.clone());
        let missing: Vec<&str> = state
            .spec
            .required
            .iter()
            .filter(|r| merged.get(*r).is_none_or(|v| v.is_empty()))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(reject(
                ErrorCode::MissingInput,
                format!(
                    "approving gate {} needs the input(s) {}",
                    state.id,
                    missing.join(", ")
                ),
            ));
        }
        Ok(GateEvent::GateApproved {
            comment: c.comment.clone(),
            inputs: c.inputs.clone(),
        })
    } else {
        Ok(GateEvent::ApprovalRecorded {
            comment: c.comment.clone(),
            inputs: c.inputs.clone(),
        })
    }
}

fn decide_deny(state: &GateState, c: &DenyGate, ctx: &Context) -> Result<GateEvent, Rejection> {
    may_decide(
        state,
        &Acting::of(&c.actor, c.on_behalf_of.as_deref(), ctx)?,
    )?;
    if c.reason.trim().is_empty() {
        return Err(reject(ErrorCode::BadRequest, "a denial needs a reason"));
    }
    check_text("the reason", &c.reason)?;
    Ok(GateEvent::GateDenied {
        reason: c.reason.clone(),
    })
}

fn decide_push_back(
    state: &GateState,
    c: &PushBackGate,
    ctx: &Context,
) -> Result<GateEvent, Rejection> {
    may_decide(
        state,
        &Acting::of(&c.actor, c.on_behalf_of.as_deref(), ctx)?,
    )?;
    if state.push_backs.len() >= MAX_PUSH_BACKS {
        return Err(reject(
            ErrorCode::TooLarge,
            format!(
                "gate {} has been pushed back {MAX_PUSH_BACKS} times, the most a gate takes; \
                 approve, deny or cancel it",
                state.id
            ),
        ));
    }
    if let Some(comment) = &c.comment {
        check_text("the comment", comment)?;
    }
    check_inputs(state, &c.inputs)?;
    Ok(GateEvent::GatePushedBack {
        comment: c.comment.clone(),
        inputs: c.inputs.clone(),
    })
}

fn decide_cancel(state: &GateState, c: &CancelGate, ctx: &Context) -> Result<GateEvent, Rejection> {
    if c.on_behalf_of.is_some() {
        return Err(reject(
            ErrorCode::NotAllowed,
            "a deputy approves, denies or pushes back for the user they cover; cancel as yourself",
        ));
    }
    let a = &state.spec.approvers;
    // A run's gates are cancelled by the runner that checked the run
    // cancel against the run's own policy.
    let for_run = ctx.service && state.spec.run_id.is_some();
    let allowed =
        for_run || c.actor == state.requested_by || a.is_open() || a.users.contains(&c.actor);
    if !allowed {
        return Err(reject(
            ErrorCode::NotAllowed,
            format!(
                "only the requester ({}) or a named approver may cancel gate {}",
                state.requested_by, state.id
            ),
        ));
    }
    if let Some(reason) = &c.reason {
        check_text("the reason", reason)?;
    }
    Ok(GateEvent::GateCancelled {
        reason: c.reason.clone(),
    })
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && s.len() <= 64
}

/// Validates an open command and turns it into the gate's fixed policy.
pub fn spec_from(c: &OpenGate, policy: &Policy) -> Result<GateSpec, Rejection> {
    let bad = |m: String| reject(ErrorCode::BadRequest, m);
    if c.message.trim().is_empty() {
        return Err(bad(
            "a gate needs a message (--message) telling the approver what they decide".into(),
        ));
    }
    check_text("the message", &c.message)?;
    for t in [&c.title, &c.summary, &c.step].into_iter().flatten() {
        check_text("a title, summary or step", t)?;
    }
    if let Some(run) = &c.run_id {
        if !is_subject_token(run) {
            return Err(bad(format!(
                "run id '{run}' may hold only letters, digits, '-' and '_' (at most 128)"
            )));
        }
    }
    if c.metadata.len() > MAX_NAMES
        || c.metadata
            .iter()
            .any(|(k, v)| k.len() > 128 || v.len() > MAX_TEXT)
    {
        return Err(bad(format!(
            "metadata may hold at most {MAX_NAMES} entries of modest size"
        )));
    }
    if c.approvers.len() > MAX_NAMES || c.roles.len() > MAX_NAMES || c.inputs.len() > MAX_NAMES {
        return Err(bad(format!(
            "at most {MAX_NAMES} approvers, roles and inputs each"
        )));
    }
    for (what, name) in c
        .approvers
        .iter()
        .map(|n| ("approver", n))
        .chain(c.roles.iter().map(|n| ("role", n)))
    {
        if !is_valid_name(name) {
            return Err(bad(bad_name(what, name)));
        }
    }
    for name in c.inputs.iter().chain(&c.required) {
        if !valid_name(name) {
            return Err(bad(format!("input name '{name}' must start with a letter or '_' and hold only letters, digits, '_' or '-'")));
        }
    }
    let mut inputs = c.inputs.clone();
    for r in &c.required {
        // A required input is collected even if it was not listed separately.
        if !inputs.contains(r) {
            inputs.push(r.clone());
        }
    }
    let (staged_users, staged_roles, staged_total) =
        crate::stages::check(&c.stages).map_err(bad)?;
    if !c.stages.is_empty()
        && (!c.approvers.is_empty() || !c.roles.is_empty() || c.approvals.is_some_and(|n| n > 1))
    {
        return Err(bad(
            "give stages or approvers/roles/approvals, not both: each stage names its own".into(),
        ));
    }
    let approvals = if c.stages.is_empty() {
        c.approvals.unwrap_or(1)
    } else {
        staged_total
    };
    if approvals == 0 {
        return Err(bad("--approvals must be at least 1".into()));
    }
    let mut users = if c.stages.is_empty() {
        c.approvers.clone()
    } else {
        staged_users
    };
    let roles = if c.stages.is_empty() {
        c.roles.clone()
    } else {
        staged_roles
    };
    users.sort();
    users.dedup();
    if roles.is_empty() && !users.is_empty() && approvals as usize > users.len() {
        return Err(bad(format!(
            "{approvals} approvals required but only {} approver(s) named; name more approvers or a role",
            users.len()
        )));
    }
    if let Some(t) = c.timeout_ms {
        if t == 0 || t > MAX_TIMEOUT_MS {
            return Err(bad("the timeout must be between 1ms and 366 days".into()));
        }
    } else if c.on_timeout.is_some_and(|o| o != OnTimeout::Fail) {
        return Err(bad("--on-timeout needs --timeout".into()));
    }
    let subject = crate::binding::check_artifacts(&c.subject).map_err(bad)?;
    let action = c
        .action
        .as_ref()
        .map(crate::binding::ActionCall::to_action)
        .transpose()
        .map_err(bad)?;
    if !subject.is_empty() && action.is_some() {
        return Err(bad(
            "a gate approves artifacts or an action, not both: open one gate for each".into(),
        ));
    }
    if let Some(v) = c.valid_for_ms {
        if v == 0 || v > crate::binding::MAX_VALID_FOR_MS {
            return Err(bad("valid_for must be between 1ms and 366 days".into()));
        }
    }
    if policy.require_approvers && users.is_empty() && roles.is_empty() {
        return Err(reject(
            ErrorCode::NotAllowed,
            "this gate-keeper requires every gate to name its approvers (--approver or --role)",
        ));
    }
    Ok(GateSpec {
        message: c.message.clone(),
        title: c.title.clone(),
        summary: c.summary.clone(),
        metadata: c.metadata.clone(),
        run_id: c.run_id.clone(),
        step: c.step.clone(),
        approvers: crate::event::Approvers { users, roles },
        approvals_required: approvals,
        allow_self_approval: c
            .allow_self_approval
            .unwrap_or(policy.self_approval_by_default),
        inputs,
        required: c.required.clone(),
        timeout_ms: c.timeout_ms,
        on_timeout: c.on_timeout.unwrap_or_default(),
        subject,
        action,
        valid_for_ms: c.valid_for_ms,
        stages: c.stages.clone(),
    })
}

/// A gate that approves itself when its deadline passes skips every
/// approver rule, so its timeout has a floor and, under a strict policy,
/// its requester needs a role for it.
fn check_auto_approve(spec: &GateSpec, policy: &Policy, roles: &[String]) -> Result<(), Rejection> {
    if spec.on_timeout != OnTimeout::Approve {
        return Ok(());
    }
    let t = spec.timeout_ms.unwrap_or(0);
    if t < policy.min_auto_approve_ms {
        return Err(reject(
            ErrorCode::NotAllowed,
            format!(
                "a gate that approves itself on timeout needs a timeout of at least {}",
                crate::time::short_duration(std::time::Duration::from_millis(
                    policy.min_auto_approve_ms
                ))
            ),
        ));
    }
    if let Some(role) = &policy.auto_approve_role {
        if !roles.contains(role) {
            return Err(reject(
                ErrorCode::NotAllowed,
                format!("opening a gate with on_timeout approve needs the '{role}' role in the approvers registry"),
            ));
        }
    }
    Ok(())
}

/// The event the server's scheduler writes when a gate's deadline passes.
/// Its command id is derived from the gate id, so it is the same every time.
pub fn timed_out_event(gate_id: GateId, timeout_at: u64, spec: &GateSpec) -> Envelope {
    Envelope {
        schema: SCHEMA,
        id: CommandId(uuid::Uuid::new_v5(&gate_id.0, b"timeout")),
        gate_id,
        actor: TIMEOUT_ACTOR.to_string(),
        at: timeout_at,
        event: GateEvent::GateTimedOut {
            on_timeout: spec.on_timeout,
        },
        run_id: spec.run_id.clone(),
        signature: None,
        signed_at: None,
        signer: None,
        registry: None,
        prev: None,
        via: None,
        on_behalf_of: None,
    }
}

/// Like [`apply`], for a caller that owns the event: the gate's policy is
/// moved rather than copied (listing many gates folds every one).
pub fn apply_owned(state: &mut Option<GateState>, env: Envelope) {
    if state.is_none() {
        if let GateEvent::GateOpened { spec, timeout_at } = env.event {
            *state = Some(opened(
                env.gate_id,
                *spec,
                timeout_at,
                env.actor,
                env.at,
                env.id,
            ));
        }
        return;
    }
    apply(state, &env);
}

fn opened(
    id: GateId,
    spec: GateSpec,
    timeout_at: Option<u64>,
    by: String,
    at: u64,
    cmd: CommandId,
) -> GateState {
    GateState {
        id,
        spec,
        requested_by: by,
        opened_at: at,
        timeout_at,
        status: GateStatus::Waiting,
        iteration: 1,
        approvals: Vec::new(),
        inputs: BTreeMap::new(),
        push_backs: Vec::new(),
        approved_by: None,
        approved_at: None,
        decided_by: None,
        decided_for: None,
        decided_at: None,
        reason: None,
        timed_out: false,
        applied: vec![(cmd, Did::Open)],
    }
}

/// Folds one event into the state. Holds no rules beyond "nothing before
/// the open, nothing after the end".
pub fn apply(state: &mut Option<GateState>, env: &Envelope) {
    let Some(s) = state else {
        if let GateEvent::GateOpened { spec, timeout_at } = &env.event {
            *state = Some(opened(
                env.gate_id,
                (**spec).clone(),
                *timeout_at,
                env.actor.clone(),
                env.at,
                env.id,
            ));
        }
        return;
    };
    if s.status.is_terminal() {
        return;
    }
    s.applied
        .push((env.id, Did::of_event(&env.actor, &env.event)));
    let approval = |comment: &Option<String>| Approval {
        by: env.actor.clone(),
        at: env.at,
        comment: comment.clone(),
        key: env.signer.clone(),
        via: env.via.clone(),
        on_behalf_of: env.on_behalf_of.clone(),
    };
    match &env.event {
        GateEvent::GateOpened { .. } => {}
        GateEvent::ApprovalRecorded { comment, inputs } => {
            s.approvals.push(approval(comment));
            s.inputs.extend(inputs.clone());
        }
        GateEvent::GateApproved { comment, inputs } => {
            s.approvals.push(approval(comment));
            s.inputs.extend(inputs.clone());
            s.status = GateStatus::Approved;
            s.approved_by = Some(env.actor.clone());
            s.approved_at = Some(env.at);
            s.decided_by = Some(env.actor.clone());
            s.decided_for = env.on_behalf_of.clone();
            s.decided_at = Some(env.at);
        }
        GateEvent::GateDenied { reason } => {
            s.status = GateStatus::Denied;
            s.reason = Some(reason.clone());
            s.decided_by = Some(env.actor.clone());
            s.decided_for = env.on_behalf_of.clone();
            s.decided_at = Some(env.at);
        }
        GateEvent::GatePushedBack { comment, inputs } => {
            s.push_backs.push(PushBack {
                by: env.actor.clone(),
                at: env.at,
                comment: comment.clone(),
                inputs: inputs.clone(),
                iteration: s.iteration,
                via: env.via.clone(),
                on_behalf_of: env.on_behalf_of.clone(),
            });
            s.iteration += 1;
            s.approvals.clear();
            s.inputs = inputs.clone();
        }
        GateEvent::GateTimedOut { on_timeout } => {
            s.timed_out = true;
            s.decided_by = Some(env.actor.clone());
            s.decided_at = Some(env.at);
            match on_timeout {
                OnTimeout::Fail => s.status = GateStatus::TimedOut,
                OnTimeout::Approve => {
                    s.status = GateStatus::Approved;
                    s.approved_by = Some(env.actor.clone());
                    s.approved_at = Some(env.at);
                }
                OnTimeout::Deny => {
                    s.status = GateStatus::Denied;
                    s.reason = Some("timed out".to_string());
                }
            }
        }
        GateEvent::GateCancelled { reason } => {
            s.status = GateStatus::Cancelled;
            s.reason = reason.clone();
            s.decided_by = Some(env.actor.clone());
            s.decided_at = Some(env.at);
        }
    }
}

/// Folds a whole history.
pub fn fold<'a>(events: impl IntoIterator<Item = &'a Envelope>) -> Option<GateState> {
    let mut state = None;
    for e in events {
        apply(&mut state, e);
    }
    state
}

#[cfg(test)]
#[path = "gate_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "gate_props.rs"]
mod props;
