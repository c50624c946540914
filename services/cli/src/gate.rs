//! `moira gate …`

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{Args, Subcommand};
use futures_util::StreamExt;

use moira_client::protocol::binding::{ActionCall, Artifact};
use moira_client::protocol::event::{Decoded, OnTimeout};
use moira_client::protocol::stages::Stage;
use moira_client::protocol::time::parse_duration;
use moira_client::protocol::wire::Verb;
use moira_client::protocol::{Command, CommandId};
use moira_client::{
    ApproveGate, CancelGate, Client, ClientError, DenyGate, GateId, GateStatus, GateView,
    ListFilter, OpenGate, PushBackGate,
};

use moira_service::verify::Registries;

use crate::render;
use crate::Cli;

#[derive(Subcommand, Debug)]
pub enum GateCmd {
    /// Open a gate and print its id
    Open(Box<OpenArgs>),
    /// List gates (waiting ones unless --status says otherwise)
    List(ListArgs),
    /// Show one gate
    Show { id: GateId },
    /// Print a gate's decision as KEY=VALUE lines for a CI job's outputs
    /// (status, approved_by, decided_by, reason, input_<NAME>); values are
    /// kept to one line
    Outputs { id: GateId },
    /// Approve a gate
    Approve {
        id: GateId,
        #[arg(long)]
        comment: Option<String>,
        /// An input value, NAME=VALUE (repeatable)
        #[arg(long = "input", value_name = "NAME=VALUE", value_parser = parse_kv)]
        inputs: Vec<(String, String)>,
        #[command(flatten)]
        signed: Presigned,
    },
    /// Deny a gate
    Deny {
        id: GateId,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        signed: Presigned,
    },
    /// Send a gate back to waiting (iteration + 1), recording inputs
    PushBack {
        id: GateId,
        #[arg(long = "input", value_name = "NAME=VALUE", value_parser = parse_kv)]
        inputs: Vec<(String, String)>,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        signed: Presigned,
    },
    /// Cancel a gate
    Cancel {
        id: GateId,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        signed: Presigned,
    },
    /// Check a gate's trail without a gate-keeper: hash chain, signatures,
    /// keys against the registry, policy; exit 0 only if all of it holds
    Verify {
        id: GateId,
        /// The approvers registry (TOML) to check keys and roles against;
        /// without it, every registry the shared bucket put in force
        #[arg(long, env = "MOIRA_APPROVERS", value_name = "FILE")]
        approvers: Option<std::path::PathBuf>,
        /// Every event must be signed (people's, services' and timeouts)
        #[arg(long)]
        require_signatures: bool,
    },
    /// Print the exact bytes a decision signs, for `ssh-keygen -Y sign -n moira`
    Statement {
        id: GateId,
        /// approve, deny, push-back or cancel
        #[arg(long)]
        verb: String,
        #[arg(long)]
        comment: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long = "input", value_name = "NAME=VALUE", value_parser = parse_kv)]
        inputs: Vec<(String, String)>,
        /// The command id the decision will be sent with
        #[arg(long)]
        command_id: CommandId,
        /// The signing time, ms since the epoch, sent with the decision
        #[arg(long)]
        signed_at: u64,
        /// The statement of USER's deputy (see `approve --for`)
        #[arg(long = "for", value_name = "USER")]
        for_user: Option<String>,
    },
    /// Exit 0 only if the gate is approved, its approval is still in force
    /// (valid_for) and it covers this digest; otherwise exit 6 and say why
    Check {
        id: GateId,
        /// sha256:<64 hex>: an artifact's digest, or an action's
        #[arg(long, value_name = "sha256:HEX", required_unless_present_any = ["file", "action_file"])]
        digest: Option<String>,
        /// A file whose SHA-256 must be covered (the artifact itself)
        #[arg(long, value_name = "PATH", conflicts_with_all = ["digest", "action_file"])]
        file: Option<std::path::PathBuf>,
        /// A tool call, {"tool": …, "arguments": …}, that must be the one
        /// approved ('-' reads standard input)
        #[arg(long, value_name = "FILE", conflicts_with = "digest")]
        action_file: Option<std::path::PathBuf>,
    },
    /// Wait until a gate is decided; exit 0 approved, 3 denied, 4 timed out, 5 cancelled
    Wait {
        id: GateId,
        /// Give up after this long (exit 1), e.g. 30s, 10m
        #[arg(long, value_parser = parse_dur)]
        timeout: Option<Duration>,
    },
    /// Print gate events as they happen
    Watch {
        #[arg(long = "run", value_name = "ID")]
        run_id: Option<String>,
        /// Replay stored events first
        #[arg(long)]
        all: bool,
    },
}

#[derive(Args, Debug)]
pub struct OpenArgs {
    /// What the approver decides
    #[arg(long)]
    message: String,
    #[arg(long)]
    title: Option<String>,
    /// Longer description (e.g. a plan summary)
    #[arg(long)]
    summary: Option<String>,
    #[arg(long = "run", value_name = "ID")]
    run_id: Option<String>,
    #[arg(long)]
    step: Option<String>,
    /// Deadline, e.g. 30s, 24h
    #[arg(long, value_parser = parse_dur)]
    timeout: Option<Duration>,
    /// What the deadline does
    #[arg(long, value_parser = ["fail", "approve", "deny"])]
    on_timeout: Option<String>,
    /// A user who may decide (repeatable)
    #[arg(long = "approver", value_name = "USER")]
    approvers: Vec<String>,
    /// A role whose members may decide (repeatable)
    #[arg(long = "role", value_name = "ROLE")]
    roles: Vec<String>,
    /// Approvals required (N of M)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    approvals: u32,
    /// The requester may not approve their own gate (without this flag or
    /// --self-approval, the gate-keeper's policy decides)
    #[arg(long, conflicts_with = "self_approval")]
    no_self_approval: bool,
    /// The requester may approve their own gate
    #[arg(long)]
    self_approval: bool,
    /// An input to collect from the approver (repeatable)
    #[arg(long = "input", value_name = "NAME")]
    inputs: Vec<String>,
    /// An input that must be given to approve (repeatable)
    #[arg(long = "required", value_name = "NAME")]
    required: Vec<String>,
    /// Metadata, KEY=VALUE (repeatable)
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_kv)]
    metadata: Vec<(String, String)>,
    /// An artifact the gate approves: NAME=sha256:HEX, or the path of a
    /// file (named by its file name, its SHA-256 computed) (repeatable)
    #[arg(long = "artifact", value_name = "NAME=sha256:HEX|PATH")]
    artifacts: Vec<String>,
    /// The tool call the gate approves, {"tool": …, "arguments": …}
    /// ('-' reads standard input); stored as canonical JSON with its digest
    #[arg(long, value_name = "FILE", conflicts_with = "artifacts")]
    action_file: Option<std::path::PathBuf>,
    /// How long an approval stays good, e.g. 2h (`moira gate check` and
    /// runs refuse an older one)
    #[arg(long, value_parser = parse_dur)]
    valid_for: Option<Duration>,
    /// An approval stage, in order (repeatable): 'roles=qa count=1',
    /// 'users=alice,bob count=2'; instead of --approver/--role/--approvals
    #[arg(long = "stage", value_name = "SPEC", value_parser = parse_stage,
          conflicts_with_all = ["approvers", "roles"])]
    stages: Vec<Stage>,
    /// Gate id; opening again with the same id and definition is a no-op
    #[arg(long, conflicts_with = "gate_key")]
    id: Option<GateId>,
    /// Your own name for the gate (say `release-42/approve`): the gate id
    /// is derived from it, so opening again with the same key and
    /// definition is a no-op. (Not `--key`, which names your signing key.)
    #[arg(long, value_name = "TEXT")]
    gate_key: Option<String>,
    /// Wait for the decision; exit like `moira gate wait`
    #[arg(long)]
    wait: bool,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[arg(long, default_value = "waiting", value_parser = ["waiting", "approved", "denied", "timed_out", "cancelled", "all"])]
    status: String,
    #[arg(long = "run", value_name = "ID")]
    run_id: Option<String>,
    /// Fold every stored gate event instead of reading the read model
    /// (slower; the source of truth, for checking)
    #[arg(long)]
    from_events: bool,
}

/// `--stage 'roles=qa,ops users=alice count=2'`: space-separated fields,
/// comma-separated names.
pub fn parse_stage(s: &str) -> Result<Stage, String> {
    let mut st = Stage::default();
    let names = |v: &str| -> Vec<String> {
        v.split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect()
    };
    for field in s.split_whitespace() {
        match field.split_once('=') {
            Some(("users", v)) => st.users = names(v),
            Some(("roles", v)) => st.roles = names(v),
            Some(("count", v)) => {
                st.count = v
                    .parse()
                    .map_err(|_| format!("count '{v}' is not a number"))?
            }
            _ => {
                return Err(format!(
                    "'{field}': a stage is 'users=a,b roles=r count=N' (any of them)"
                ))
            }
        }
    }
    Ok(st)
}

pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("'{s}' is not NAME=VALUE")),
    }
}

fn parse_dur(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

/// Exit codes of `wait` and `open --wait`.
pub fn exit_code(status: GateStatus) -> u8 {
    match status {
        GateStatus::Approved => 0,
        GateStatus::Denied => 3,
        GateStatus::TimedOut => 4,
        GateStatus::Cancelled => 5,
        GateStatus::Waiting => 1,
    }
}

/// A signature made elsewhere (`ssh-keygen -Y sign`), sent as it is.
#[derive(Args, Debug, Clone, Default)]
pub struct Presigned {
    /// The command id the statement names
    #[arg(long, requires_all = ["signed_at", "signature"])]
    command_id: Option<CommandId>,
    /// The signing time the statement names, ms since the epoch
    #[arg(long, requires_all = ["command_id", "signature"])]
    signed_at: Option<u64>,
    /// The signature file (`ssh-keygen -Y sign` writes FILE.sig)
    #[arg(long, value_name = "FILE", requires_all = ["command_id", "signed_at"])]
    signature: Option<std::path::PathBuf>,
    /// Decide as USER's deputy, signing with the certificate USER made for
    /// your key (--key YOU-cert.pub). Without it, a certificate that names
    /// one user (moira:USER) decides for that user.
    #[arg(long = "for", value_name = "USER")]
    for_user: Option<String>,
}

impl Presigned {
    /// Puts the id and signature on `cmd`, if given.
    fn apply(&self, mut cmd: Command) -> anyhow::Result<Command> {
        if let (Some(id), Some(at), Some(path)) = (self.command_id, self.signed_at, &self.signature)
        {
            let sig = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("cannot read the signature {}: {e}", path.display())
            })?;
            match &mut cmd {
                Command::Approve(c) => c.id = Some(id),
                Command::Deny(c) => c.id = Some(id),
                Command::PushBack(c) => c.id = Some(id),
                Command::Cancel(c) => c.id = Some(id),
                Command::Open(c) => c.id = Some(id),
            }
            cmd.set_signature(sig, at);
        }
        Ok(cmd)
    }
}

/// A decision command from its parts (one builder for the decision
/// subcommands and for `gate statement`).
fn decision_command(
    verb: Verb,
    gate_id: GateId,
    actor: String,
    comment: Option<String>,
    reason: Option<String>,
    inputs: BTreeMap<String, String>,
) -> anyhow::Result<Command> {
    Ok(match verb {
        Verb::Approve => Command::Approve(ApproveGate {
            gate_id,
            actor,
            comment,
            inputs,
            ..Default::default()
        }),
        Verb::Deny => Command::Deny(DenyGate {
            gate_id,
            actor,
            reason: reason.ok_or_else(|| anyhow::anyhow!("a denial needs --reason"))?,
            ..Default::default()
        }),
        Verb::PushBack => Command::PushBack(PushBackGate {
            gate_id,
            actor,
            comment,
            inputs,
            ..Default::default()
        }),
        Verb::Cancel => Command::Cancel(CancelGate {
            gate_id,
            actor,
            reason,
            ..Default::default()
        }),
        Verb::Open => anyhow::bail!("use approve, deny, push-back or cancel"),
    })
}

/// The decision a subcommand describes, if it is one.
fn decision(cli: &Cli, cmd: &GateCmd) -> anyhow::Result<Option<(Command, Presigned)>> {
    let kv = |i: &[(String, String)]| i.iter().cloned().collect();
    let (verb, id, comment, reason, inputs, signed) = match cmd {
        GateCmd::Approve {
            id,
            comment,
            inputs,
            signed,
        } => (Verb::Approve, id, comment.clone(), None, kv(inputs), signed),
        GateCmd::Deny { id, reason, signed } => (
            Verb::Deny,
            id,
            None,
            Some(reason.clone()),
            BTreeMap::new(),
            signed,
        ),
        GateCmd::PushBack {
            id,
            inputs,
            comment,
            signed,
        } => (
            Verb::PushBack,
            id,
            comment.clone(),
            None,
            kv(inputs),
            signed,
        ),
        GateCmd::Cancel { id, reason, signed } => (
            Verb::Cancel,
            id,
            None,
            reason.clone(),
            BTreeMap::new(),
            signed,
        ),
        _ => return Ok(None),
    };
    let mut c = decision_command(verb, *id, cli.actor()?, comment, reason, inputs)?;
    let deputy_for = match &signed.for_user {
        Some(u) => Some(u.clone()),
        None if verb != Verb::Cancel => certificate_user(cli)?,
        None => None,
    };
    if let Some(user) = deputy_for {
        set_on_behalf_of(&mut c, user);
    }
    Ok(Some((c, signed.clone())))
}

/// The user a `--key` certificate lets you act for, when it names exactly
/// one (`moira:alice`, `moira:alice:role=owner`).
fn certificate_user(cli: &Cli) -> anyhow::Result<Option<String>> {
    let Some(path) = &cli.key else {
        return Ok(None);
    };
    let Some(cert) = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| ssh_key::Certificate::from_openssh(t.trim()).ok())
    else {
        return Ok(None);
    };
    let mut users: Vec<&str> = cert
        .valid_principals()
        .iter()
        .filter_map(|p| moira_service::registry::deputy_principal(p))
        .map(|(user, _)| user)
        .collect();
    users.sort();
    users.dedup();
    match users.as_slice() {
        [one] => Ok(Some(one.to_string())),
        [] => Err(crate::usage(format!(
            "the certificate {} names no moira:USER principal, so it lets you act for no one; \
             sign with your own key instead",
            path.display()
        ))),
        many => Err(crate::usage(format!(
            "the certificate {} covers {}; say which with --for USER",
            path.display(),
            many.join(", ")
        ))),
    }
}

fn set_on_behalf_of(c: &mut Command, user: String) {
    match c {
        Command::Approve(c) => c.on_behalf_of = Some(user),
        Command::Deny(c) => c.on_behalf_of = Some(user),
        Command::PushBack(c) => c.on_behalf_of = Some(user),
        Command::Cancel(c) => c.on_behalf_of = Some(user),
        Command::Open(_) => {}
    }
}

/// The decision `moira gate statement` describes.
fn statement_command(
    cli: &Cli,
    cmd: &GateCmd,
) -> anyhow::Result<Option<(Command, CommandId, u64)>> {
    let GateCmd::Statement {
        id,
        verb,
        comment,
        reason,
        inputs,
        command_id,
        signed_at,
        for_user,
    } = cmd
    else {
        return Ok(None);
    };
    let verb = Verb::parse(verb)
        .filter(|v| *v != Verb::Open)
        .ok_or_else(|| {
            anyhow::anyhow!("unknown verb '{verb}'; use approve, deny, push-back or cancel")
        })?;
    let inputs = inputs.iter().cloned().collect();
    let mut c = decision_command(
        verb,
        *id,
        cli.actor()?,
        comment.clone(),
        reason.clone(),
        inputs,
    )?;
    if let Some(user) = for_user {
        set_on_behalf_of(&mut c, user.clone());
    }
    Ok(Some((c, *command_id, *signed_at)))
}

pub async fn run(cli: &Cli, cmd: &GateCmd) -> anyhow::Result<u8> {
    let client = cli.connect().await?;
    match cmd {
        GateCmd::Open(a) => open(cli, &client, a).await,
        GateCmd::List(a) => {
            let status = if a.status == "all" {
                None
            } else {
                GateStatus::parse(&a.status)
            };
            let filter = ListFilter {
                status,
                run_id: a.run_id.clone(),
            };
            let gates = if a.from_events {
                client.list_from_events(&filter).await?
            } else {
                client.list(&filter).await?
            };
            if cli.json {
                // Streamed: a list of 100,000 gates is tens of megabytes.
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                serde_json::to_writer(&mut out, &gates)?;
                std::io::Write::write_all(&mut out, b"\n")?;
                std::io::Write::flush(&mut out)?;
            } else if gates.is_empty() {
                errln!(
                    "no {} gates",
                    if a.status == "all" { "" } else { &a.status }
                );
            } else {
                out!("{}", render::table(&gates));
            }
            Ok(0)
        }
        GateCmd::Outputs { id } => {
            let gate = client.show(*id).await?;
            for (k, v) in outputs(&gate) {
                outln!("{k}={v}");
            }
            Ok(0)
        }
        GateCmd::Show { id } => {
            let gate = client.show(*id).await?;
            print_gate(cli, &gate)?;
            Ok(0)
        }
        GateCmd::Check {
            id,
            digest,
            file,
            action_file,
        } => {
            check(
                cli,
                &client,
                *id,
                digest.as_deref(),
                file.as_deref(),
                action_file.as_deref(),
            )
            .await
        }
        GateCmd::Approve { .. }
        | GateCmd::Deny { .. }
        | GateCmd::PushBack { .. }
        | GateCmd::Cancel { .. } => {
            let Some((c, signed)) = decision(cli, cmd)? else {
                return Ok(2);
            };
            let gate = client.send(signed.apply(c)?).await?;
            decided(cli, &gate)
        }
        GateCmd::Verify {
            id,
            approvers,
            require_signatures,
        } => {
            let registries = load_registries(&client, approvers.as_deref()).await?;
            let ok = verify_one(cli, &client, *id, &registries, *require_signatures).await?;
            Ok(if ok { 0 } else { 1 })
        }
        GateCmd::Statement { .. } => {
            let Some((c, id, at)) = statement_command(cli, cmd)? else {
                return Ok(2);
            };
            let bytes = client.statement(&c, id, at).await?;
            std::io::Write::write_all(&mut std::io::stdout().lock(), &bytes)?;
            Ok(0)
        }
        GateCmd::Wait { id, timeout } => wait(cli, &client, *id, *timeout).await,
        GateCmd::Watch { run_id, all } => watch(cli, &client, run_id.as_deref(), *all).await,
    }
}

async fn open(cli: &Cli, client: &Client, a: &OpenArgs) -> anyhow::Result<u8> {
    let on_timeout = a.on_timeout.as_deref().and_then(OnTimeout::parse);
    let spec = OpenGate {
        gate_id: Some(match (&a.gate_key, a.id) {
            (Some(k), _) => GateId::for_key(k).map_err(anyhow::Error::msg)?,
            (None, id) => id.unwrap_or_default(),
        }),
        actor: cli.actor()?,
        message: a.message.clone(),
        title: a.title.clone(),
        summary: a.summary.clone(),
        metadata: a.metadata.iter().cloned().collect::<BTreeMap<_, _>>(),
        run_id: a.run_id.clone(),
        step: a.step.clone(),
        approvers: a.approvers.clone(),
        roles: a.roles.clone(),
        approvals: a.stages.is_empty().then_some(a.approvals),
        allow_self_approval: match (a.self_approval, a.no_self_approval) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        inputs: a.inputs.clone(),
        required: a.required.clone(),
        timeout_ms: a
            .timeout
            .map(|d| d.as_millis().min(u64::MAX as u128) as u64),
        on_timeout,
        subject: a
            .artifacts
            .iter()
            .map(|s| artifact_arg(s))
            .collect::<anyhow::Result<_>>()?,
        action: a.action_file.as_deref().map(read_action).transpose()?,
        valid_for_ms: a
            .valid_for
            .map(|d| d.as_millis().min(u64::MAX as u128) as u64),
        stages: a.stages.clone(),
        ..Default::default()
    };
    if a.wait {
        // Following from before the open: no decision can slip past.
        let (gate, follower) = client.open_and_follow(spec).await?;
        outln!("{}", gate.id);
        return wait_on(cli, follower, None).await;
    }
    let gate = client.open(spec).await?;
    if cli.json {
        outln!("{}", serde_json::to_string(&gate)?);
    } else {
        outln!("{}", gate.id);
    }
    Ok(0)
}

/// Reads a tool call from a file, or standard input for `-` (at most the
/// largest action and one byte, so an endless input is refused, not held).
fn read_action(path: &std::path::Path) -> anyhow::Result<ActionCall> {
    use std::io::Read;
    let limit = moira_client::protocol::binding::MAX_ACTION_BYTES as u64 + 1;
    let mut text = String::new();
    let read = if path.as_os_str() == "-" {
        std::io::stdin().take(limit).read_to_string(&mut text)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(limit).read_to_string(&mut text))
    };
    read.map_err(|e| anyhow::anyhow!("cannot read the action {}: {e}", path.display()))?;
    ActionCall::from_json(&text).map_err(anyhow::Error::msg)
}

/// The SHA-256 of a file, as `sha256:<hex>`, read in pieces.
fn file_digest(path: &std::path::Path) -> anyhow::Result<String> {
    use sha2::Digest as _;
    use std::io::Read;
    let mut f = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!(
        "sha256:{}",
        moira_client::protocol::hex::encode(&h.finalize())
    ))
}

/// `--artifact NAME=sha256:HEX` or `--artifact PATH`.
fn artifact_arg(s: &str) -> anyhow::Result<Artifact> {
    if let Some((name, digest)) = s.split_once('=') {
        if digest.starts_with("sha256:") {
            return Ok(Artifact {
                name: name.to_string(),
                digest: digest.to_string(),
            });
        }
    }
    let path = std::path::Path::new(s);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            anyhow::anyhow!("--artifact takes NAME=sha256:HEX or a file's path, not '{s}'")
        })?;
    Ok(Artifact {
        name,
        digest: file_digest(path)?,
    })
}

/// `moira gate check`: exit 0 if covered, 6 (and why) if not.
async fn check(
    cli: &Cli,
    client: &Client,
    id: GateId,
    digest: Option<&str>,
    file: Option<&std::path::Path>,
    action_file: Option<&std::path::Path>,
) -> anyhow::Result<u8> {
    let digest = match (digest, file, action_file) {
        (Some(d), _, _) => d.to_string(),
        (_, Some(f), _) => file_digest(f)?,
        (_, _, Some(a)) => {
            read_action(a)?
                .to_action()
                .map_err(anyhow::Error::msg)?
                .digest
        }
        _ => anyhow::bail!("give --digest, --file or --action-file"),
    };
    moira_client::protocol::binding::parse_digest(&digest).map_err(anyhow::Error::msg)?;
    match client.check_gate(id, &digest).await? {
        Ok(gate) => {
            if cli.json {
                outln!(
                    "{}",
                    serde_json::to_string(
                        &serde_json::json!({"ok": true, "digest": digest, "gate": gate})
                    )?
                );
            } else {
                let by = gate.approved_by.as_deref().unwrap_or("?");
                outln!("ok: gate {id} was approved by {} and covers {digest}", by);
            }
            Ok(0)
        }
        Err(why) => {
            if cli.json {
                outln!(
                    "{}",
                    serde_json::to_string(
                        &serde_json::json!({"ok": false, "digest": digest, "reason": why.to_string()})
                    )?
                );
            }
            errln!("not covered: gate {id}: {}", why);
            Ok(6)
        }
    }
}

fn print_gate(cli: &Cli, gate: &GateView) -> anyhow::Result<()> {
    if cli.json {
        outln!("{}", serde_json::to_string(gate)?);
    } else {
        out!("{}", render::gate(gate));
    }
    Ok(())
}

fn decided(cli: &Cli, gate: &GateView) -> anyhow::Result<u8> {
    if cli.json {
        outln!("{}", serde_json::to_string(gate)?);
    } else {
        outln!("{}", render::outcome(gate));
    }
    Ok(0)
}

async fn wait(
    cli: &Cli,
    client: &Client,
    id: GateId,
    timeout: Option<Duration>,
) -> anyhow::Result<u8> {
    wait_on(cli, client.follow(id).await?, timeout).await
}

async fn wait_on(
    cli: &Cli,
    mut follower: moira_client::Follower,
    timeout: Option<Duration>,
) -> anyhow::Result<u8> {
    let id = follower.id();
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut seen_iteration = follower.current().map(|s| s.iteration).unwrap_or(1);
    if !cli.json {
        if let Some(s) = follower.current().filter(|s| !s.status.is_terminal()) {
            errln!("waiting for gate {id}: {}", s.spec.message);
        }
    }
    loop {
        if let Some(state) = follower.current() {
            if state.status.is_terminal() {
                let view = GateView::from(&*state);
                if cli.json {
                    outln!("{}", serde_json::to_string(&view)?);
                } else {
                    outln!("{}", render::outcome(&view));
                }
                return Ok(exit_code(view.status));
            }
            if state.iteration > seen_iteration {
                seen_iteration = state.iteration;
                if let Some(pb) = state.push_backs.last() {
                    errln!(
                        "pushed back by {}{}; still waiting (iteration {})",
                        pb.by,
                        pb.comment
                            .as_deref()
                            .map(|c| format!(": {c}"))
                            .unwrap_or_default(),
                        state.iteration
                    );
                }
            }
        }
        let next = follower.changed();
        match deadline {
            Some(d) => {
                if tokio::time::timeout_at(d, next).await.is_err() {
                    let t = timeout.unwrap_or_default();
                    return Err(ClientError::WaitTimedOut(t).into());
                }
            }
            None => {
                next.await?;
            }
        }
    }
}

async fn watch(cli: &Cli, client: &Client, run_id: Option<&str>, all: bool) -> anyhow::Result<u8> {
    let mut feed = Box::pin(client.watch(all).await?);
    // Gate id -> run id, learned from opened events or read on first sight.
    let mut runs: BTreeMap<GateId, Option<String>> = BTreeMap::new();
    if !cli.json {
        errln!("watching gate events (Ctrl-C to stop)");
    }
    while let Some(ev) = feed.next().await {
        let ev = ev?;
        let Decoded::Event(env) = &ev.event else {
            continue;
        };
        if let Some(want) = run_id {
            let run = match runs.get(&env.gate_id) {
                Some(r) => r.clone(),
                None => {
                    let r = match &env.event {
                        moira_client::protocol::GateEvent::GateOpened { spec, .. } => {
                            spec.run_id.clone()
                        }
                        _ => client.show(env.gate_id).await.ok().and_then(|g| g.run_id),
                    };
                    runs.insert(env.gate_id, r.clone());
                    r
                }
            };
            if run.as_deref() != Some(want) {
                continue;
            }
        }
        if cli.json {
            outln!(
                "{}",
                serde_json::to_string(&render::EventLine::from_stored(ev.seq, env))?
            );
        } else {
            outln!("{}", render::event_line(env));
        }
    }
    Ok(0)
}

/// The registries to check against: a file, or else every registry the
/// shared bucket has put in force (each event is checked against the
/// revision it records).
async fn load_registries(
    client: &Client,
    path: Option<&std::path::Path>,
) -> anyhow::Result<Registries> {
    if let Some(p) = path {
        return Ok(Registries::only(std::sync::Arc::new(
            moira_service::Registry::load(p)?,
        )));
    }
    let history = moira_service::live::history(client).await?;
    let mut r = Registries::default();
    for reg in history {
        let reg = std::sync::Arc::new(reg);
        r.past.insert(reg.revision().to_string(), reg.clone());
        r.current = reg;
    }
    if r.past.is_empty() {
        errln!("no --approvers file and no registry in the shared bucket: no key is known, so no signature can be matched to anyone");
    }
    Ok(r)
}

/// Verifies one gate and prints what holds; true when all of it does.
async fn verify_one(
    cli: &Cli,
    client: &Client,
    id: GateId,
    registries: &Registries,
    require_signatures: bool,
) -> anyhow::Result<bool> {
    let rules = moira_service::verify::Rules { require_signatures };
    let report = moira_service::verify::verify_gate(client, id, registries, rules).await?;
    let ok = report.ok();
    let what = ("gate_id", id.to_string(), "gate");
    print_findings(cli, what, &report.findings, ok, "every event verifies");
    Ok(ok)
}

/// Verifies one run's signed events and prints what holds.
async fn verify_run_one(
    cli: &Cli,
    client: &Client,
    run_id: &str,
    registries: &Registries,
    require_signatures: bool,
) -> anyhow::Result<bool> {
    let rules = moira_service::verify::Rules { require_signatures };
    // A run's events record no registry revision: check them against the
    // registry in force now.
    let findings =
        moira_service::verify::verify_run(client, run_id, &registries.current, rules).await?;
    let ok = findings.iter().all(|f| f.ok());
    let what = ("run_id", run_id.to_string(), "run");
    print_findings(cli, what, &findings, ok, "every signed event verifies");
    Ok(ok)
}

/// Prints a verification: one line per event (or one JSON object), then
/// the verdict. `what` is the JSON key, the id and the word for it.
fn print_findings(
    cli: &Cli,
    (key, id, noun): (&str, String, &str),
    findings: &[moira_service::verify::Finding],
    ok: bool,
    all_good: &str,
) {
    if cli.json {
        let items: Vec<serde_json::Value> = findings
            .iter()
            .map(|f| {
                serde_json::json!({"seq": f.seq, "kind": f.kind, "actor": f.actor,
                    "signer": f.signer, "ok": f.ok(), "problems": f.problems})
            })
            .collect();
        outln!(
            "{}",
            serde_json::json!({key: id, "ok": ok, "events": items})
        );
        return;
    }
    for f in findings {
        let signed = f
            .signer
            .as_ref()
            .map(|s| format!(", signed {s}"))
            .unwrap_or_else(|| ", unsigned".into());
        if f.ok() {
            outln!("ok    #{} {} by {}{}", f.seq, f.kind, f.actor, signed);
        } else {
            outln!(
                "FAIL  #{} {} by {}{}: {}",
                f.seq,
                f.kind,
                f.actor,
                signed,
                f.problems.join("; ")
            );
        }
    }
    if ok {
        outln!("{noun} {id}: {all_good}");
    } else {
        outln!("{noun} {id}: NOT verified");
    }
}

/// `moira audit …`
#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Verify every gate and run (or those of one run, or of a recent
    /// span), as `gate verify` does, plus each run's signed submission,
    /// cancels and auto-approvals; exit 0 only if all of it verifies
    Verify {
        /// Only this run and its gates
        #[arg(long = "run", value_name = "ID")]
        run_id: Option<String>,
        /// Only gates opened and runs submitted within this span (e.g. 24h)
        #[arg(long, value_name = "DUR", value_parser = parse_duration)]
        since: Option<Duration>,
        /// The approvers registry (TOML); without it, every registry the
        /// shared bucket put in force
        #[arg(long, env = "MOIRA_APPROVERS", value_name = "FILE")]
        approvers: Option<std::path::PathBuf>,
        /// Every event must be signed
        #[arg(long)]
        require_signatures: bool,
    },
    /// Write each signed decision of a gate (its statement, its signature)
    /// and the signers' keys to DIR, for `ssh-keygen -Y verify`
    Export {
        id: GateId,
        #[arg(long)]
        dir: std::path::PathBuf,
        /// The approvers registry (TOML) whose keys go into allowed_signers;
        /// without it, the registries the shared bucket put in force
        #[arg(long, env = "MOIRA_APPROVERS", value_name = "FILE")]
        approvers: Option<std::path::PathBuf>,
    },
}

pub async fn audit(cli: &Cli, cmd: &AuditCmd) -> anyhow::Result<u8> {
    let client = cli.connect().await?;
    match cmd {
        AuditCmd::Verify {
            run_id,
            since,
            approvers,
            require_signatures,
        } => {
            let registries = load_registries(&client, approvers.as_deref()).await?;
            // Times are stored in one rfc3339 form, so they sort as text.
            let cutoff = since.map(|d| {
                let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                moira_client::protocol::time::rfc3339(
                    moira_client::protocol::time::now_ms().saturating_sub(ms),
                )
            });
            let recent = |at: &str| cutoff.as_deref().is_none_or(|c| at >= c);
            // The events themselves, not the read model: this is the audit.
            let gates = client
                .list_from_events(&ListFilter {
                    status: None,
                    run_id: run_id.clone(),
                })
                .await?;
            let gates: Vec<_> = gates.iter().filter(|g| recent(&g.opened_at)).collect();
            let mut bad = 0;
            for g in &gates {
                if !verify_one(cli, &client, g.id, &registries, *require_signatures).await? {
                    bad += 1;
                }
            }
            let runs: Vec<String> = match run_id {
                Some(r) => vec![r.clone()],
                None => match client.list_runs_from_events(None).await {
                    Ok(runs) => runs
                        .into_iter()
                        .filter(|r| recent(&r.submitted_at))
                        .map(|r| r.id)
                        .collect(),
                    // Gates without runners: no runs to check.
                    Err(moira_client::ClientError::NoRunStreams) => Vec::new(),
                    Err(e) => return Err(e.into()),
                },
            };
            let mut bad_runs = 0;
            for r in &runs {
                if !verify_run_one(cli, &client, r, &registries, *require_signatures).await? {
                    bad_runs += 1;
                }
            }
            errln!(
                "{} gate(s) checked, {bad} not verified; {} run(s) checked, {bad_runs} not verified",
                gates.len(),
                runs.len()
            );
            Ok(if bad == 0 && bad_runs == 0 { 0 } else { 1 })
        }
        AuditCmd::Export { id, dir, approvers } => {
            let registries = load_registries(&client, approvers.as_deref()).await?;
            let files = moira_service::verify::export(&client, *id, &registries, dir).await?;
            for f in &files {
                match &f.verify_time {
                    Some(t) => outln!(
                        "{}  (-I {} -O verify-time={t})",
                        f.statement.display(),
                        f.identity
                    ),
                    None => outln!("{}  (-I {})", f.statement.display(), f.identity),
                }
            }
            errln!(
                "{} signed event(s) written to {}; check one with:\n  ssh-keygen -Y verify -n moira -f {}/allowed_signers -I <identity> -s <file>.statement.sig < <file>.statement",
                files.len(),
                dir.display(),
                dir.display()
            );
            Ok(0)
        }
    }
}

/// A gate's decision as CI outputs. Each value is one line: a line break
/// in a reason or an input could otherwise write a second output (a CI's
/// `KEY=VALUE` file reads each line as one).
fn outputs(g: &moira_client::GateView) -> Vec<(String, String)> {
    let line = |s: &str| s.replace(['\r', '\n'], " ");
    let mut out = vec![("status".to_string(), g.status.as_str().to_string())];
    let mut add = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            out.push((k.to_string(), line(v)));
        }
    };
    add("approved_by", &g.approved_by);
    add("decided_by", &g.decided_by);
    add("reason", &g.reason);
    if g.status == GateStatus::Approved {
        add("digests", &approved_digests(g));
    }
    for (k, v) in &g.inputs {
        // Input names are checked when the gate opens; keep only what a
        // variable name may hold all the same.
        let name: String = k
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        out.push((format!("input_{name}"), line(v)));
    }
    out
}

/// The digests an approved gate covers, space-separated (`None` if it
/// names none).
fn approved_digests(g: &moira_client::GateView) -> Option<String> {
    let all: Vec<&str> = g
        .subject
        .iter()
        .map(|a| a.digest.as_str())
        .chain(g.action.as_ref().map(|a| a.digest.as_str()))
        .collect();
    (!all.is_empty()).then(|| all.join(" "))
}
