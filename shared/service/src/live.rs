//! The approvers registry shared through a JetStream KV bucket, so every
//! gate-keeper and runner on every machine uses the same one and picks up
//! changes live.
//!
//! Each value of the key `approvers` in bucket `MOIRA_REGISTRY` is the
//! registry's TOML text, the name of the admin who wrote it and their SSH
//! signature over the exact text (namespace `moira-registry`). An update
//! counts only if it is signed by a key of a user with the `admin` role in
//! the registry in force before it. The first value is trusted on first
//! use: it must be signed by an admin it lists itself. Protect the bucket
//! with broker permissions (only the admin role may write it) so nobody
//! else can be first. A value that does not pass is logged and skipped,
//! and the registry in force stays.

use std::sync::{Arc, RwLock};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use moira_client::signing::{self, Signer};
use moira_client::Client;

use crate::Registry;

pub use moira_protocol::wire::REGISTRY_BUCKET as BUCKET;
pub const KEY: &str = "approvers";
/// The SSH signature namespace of registry updates.
pub const NAMESPACE: &str = "moira-registry";
/// The role whose keys may change the registry (and cancel any run).
pub const ADMIN_ROLE: &str = "admin";

/// One stored registry version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRegistry {
    /// The registry's TOML text, exactly as signed.
    pub toml: String,
    /// The admin who signed it.
    pub signer: String,
    /// SSHSIG armor over `toml`, namespace `moira-registry`.
    pub signature: String,
}

impl SignedRegistry {
    /// Signs `toml` as admin `signer`.
    pub fn sign(toml: &str, signer: &str, key: &Signer) -> Result<Self, String> {
        Registry::parse(toml)?;
        let signature = key
            .sign_in(NAMESPACE, toml.as_bytes())
            .map_err(|e| e.to_string())?;
        Ok(SignedRegistry {
            toml: toml.to_string(),
            signer: signer.to_string(),
            signature,
        })
    }

    /// The registry this value makes, if it may replace `current` (`None`:
    /// the first value, which must be signed by an admin it lists).
    pub fn accept(&self, current: Option<&Registry>) -> Result<Registry, String> {
        let next = Registry::parse(&self.toml)?;
        let key = signing::verify_in(NAMESPACE, self.toml.as_bytes(), &self.signature)
            .map_err(|e| e.to_string())?;
        let authority = current.unwrap_or(&next);
        if !authority.has_key(&self.signer, &key) {
            return Err(format!(
                "signed by {}, which is not one of {}'s keys",
                signing::fingerprint(&key),
                self.signer
            ));
        }
        if !authority
            .roles_of(&self.signer)
            .iter()
            .any(|r| r == ADMIN_ROLE)
        {
            return Err(format!(
                "{} does not have the '{ADMIN_ROLE}' role",
                self.signer
            ));
        }
        Ok(next)
    }
}

/// The registry in force, from a file (fixed) or followed from the bucket.
#[derive(Debug, Clone)]
pub struct LiveRegistry(Arc<RwLock<Arc<Registry>>>);

impl LiveRegistry {
    pub fn fixed(r: Registry) -> LiveRegistry {
        LiveRegistry(Arc::new(RwLock::new(Arc::new(r))))
    }

    /// The registry in force now.
    pub fn current(&self) -> Arc<Registry> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, r: Registry) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(r);
    }

    /// The registry a service was told to use: `--approvers FILE`, the
    /// shared bucket (`--approvers-kv`), or none (nobody has a role).
    pub async fn open(
        client: &Client,
        file: Option<&std::path::Path>,
        kv: bool,
    ) -> anyhow::Result<LiveRegistry> {
        Ok(match (file, kv) {
            (Some(_), true) => anyhow::bail!("give --approvers FILE or --approvers-kv, not both"),
            (_, true) => LiveRegistry::follow(client, CancellationToken::new()).await?,
            (Some(path), false) => {
                let live = LiveRegistry::fixed(Registry::load(path)?);
                live.reload_on_hangup(path.to_path_buf());
                live
            }
            (None, false) => LiveRegistry::fixed(Registry::default()),
        })
    }

    /// Reads the approvers file again on each SIGHUP; a file that does not
    /// parse is refused with the reason, and the registry in force stays.
    fn reload_on_hangup(&self, path: std::path::PathBuf) {
        let live = self.clone();
        crate::signals::on_hangup(CancellationToken::new(), move || {
            match Registry::load(&path) {
                Ok(r) => {
                    tracing::info!(
                        file = %path.display(),
                        users = r.len(),
                        digest = r.revision(),
                        "approvers file reloaded"
                    );
                    live.set(r);
                }
                Err(e) => tracing::error!(
                    "the new approvers file is refused, the registry in force stays: {e}"
                ),
            }
        });
    }

    /// Loads the newest valid registry from the bucket (creating the bucket
    /// if needed), then follows updates until `shutdown`.
    pub async fn follow(
        client: &Client,
        shutdown: CancellationToken,
    ) -> anyhow::Result<LiveRegistry> {
        let kv = bucket(client).await?;
        let latest = kv
            .entry(KEY)
            .await
            .map_err(|e| anyhow::anyhow!("reading the registry: {e}"))?
            .map(|e| e.revision);
        let live = LiveRegistry::fixed(Registry::default());
        let mut watch = kv
            .watch_from_revision(KEY, 1)
            .await
            .map_err(|e| anyhow::anyhow!("following the registry: {e}"))?;
        let mut accepted: Option<Registry> = None;
        // The history up to the newest value, before this service is ready.
        if let Some(latest) = latest {
            while let Some(entry) = watch.next().await {
                let entry = entry.map_err(|e| anyhow::anyhow!("reading the registry: {e}"))?;
                let rev = entry.revision;
                consider(&live, &mut accepted, &entry.value, rev);
                if rev >= latest {
                    break;
                }
            }
        }
        if accepted.is_none() {
            tracing::warn!("the registry bucket holds no valid registry yet: nobody has a role or a key (write one with `moira approvers apply`)");
        }
        let follower = live.clone();
        tokio::spawn(async move {
            loop {
                let entry = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    e = watch.next() => e,
                };
                match entry {
                    Some(Ok(e)) => consider(&follower, &mut accepted, &e.value, e.revision),
                    Some(Err(e)) => tracing::warn!("following the registry: {e}"),
                    None => break,
                }
            }
        });
        Ok(live)
    }
}

/// Takes a stored value into force if it passes; logs either way.
fn consider(live: &LiveRegistry, accepted: &mut Option<Registry>, value: &[u8], rev: u64) {
    let parsed: Result<SignedRegistry, String> =
        serde_json::from_slice(value).map_err(|e| format!("not a signed registry: {e}"));
    match parsed.and_then(|s| s.accept(accepted.as_ref()).map(|r| (s, r))) {
        Ok((s, r)) => {
            tracing::info!(
                revision = rev,
                digest = r.revision(),
                signer = s.signer,
                users = r.len(),
                "approvers registry in force"
            );
            *accepted = Some(r.clone());
            live.set(r);
        }
        Err(e) => tracing::error!(
            revision = rev,
            "approvers registry update refused, the previous one stays: {e}"
        ),
    }
}

/// Where a service reads the approvers registry from: the two flags every
/// service that checks people takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RegistryArgs {
    /// Approvers registry (TOML): `[users.<name>]` with their roles, keys,
    /// and `email` and `slack` for messages of their own; `[services.<name>]`
    /// for service keys. Reloaded on SIGHUP.
    #[arg(long, env = "MOIRA_APPROVERS")]
    pub approvers: Option<std::path::PathBuf>,
    /// Follow the registry shared in the MOIRA_REGISTRY KV bucket instead
    /// (written with `moira approvers apply`), picking up changes live.
    #[arg(long, env = "MOIRA_APPROVERS_KV", conflicts_with = "approvers")]
    pub approvers_kv: bool,
}

/// The registry bucket, created if missing.
pub async fn bucket(client: &Client) -> anyhow::Result<async_nats::jetstream::kv::Store> {
    let js = async_nats::jetstream::new(client.nats().clone());
    moira_client::streams::patiently("opening the registry bucket", || async {
        match js.get_key_value(BUCKET).await {
            Ok(kv) => Ok(kv),
            Err(_) => js
                .create_key_value(moira_protocol::wire::streams::registry_bucket_config(
                    moira_client::streams::replicas_in_use(&js).await,
                ))
                .await
                .map_err(|e| anyhow::anyhow!("cannot create the registry bucket {BUCKET}: {e}")),
        }
    })
    .await
}

/// The newest valid registry in the bucket: the registry, the value that
/// made it and its revision; and the newest revision of the key (0 if none).
async fn newest(
    kv: &async_nats::jetstream::kv::Store,
) -> anyhow::Result<(Option<(Registry, SignedRegistry, u64)>, u64)> {
    let Some(latest) = kv.entry(KEY).await.map_err(|e| anyhow::anyhow!("{e}"))? else {
        return Ok((None, 0));
    };
    let mut watch = kv
        .watch_from_revision(KEY, 1)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut current: Option<(Registry, SignedRegistry, u64)> = None;
    while let Some(e) = watch.next().await {
        let e = e.map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Ok(s) = serde_json::from_slice::<SignedRegistry>(&e.value) {
            if let Ok(r) = s.accept(current.as_ref().map(|c| &c.0)) {
                current = Some((r, s, e.revision));
            }
        }
        if e.revision >= latest.revision {
            break;
        }
    }
    Ok((current, latest.revision))
}

/// Writes a signed registry if it may replace the newest valid one (as
/// the services will check it); returns its revision in the bucket.
pub async fn apply(client: &Client, signed: &SignedRegistry) -> anyhow::Result<u64> {
    let kv = bucket(client).await?;
    let (current, last) = newest(&kv).await?;
    signed
        .accept(current.as_ref().map(|c| &c.0))
        .map_err(|e| anyhow::anyhow!("the registry would refuse this update: {e}"))?;
    let body = serde_json::to_vec(signed)?;
    let rev = if last == 0 {
        kv.create(KEY, body.into())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
    } else {
        kv.update(KEY, body.into(), last)
            .await
            .map_err(|e| anyhow::anyhow!("the registry changed meanwhile, try again: {e}"))?
    };
    Ok(rev)
}

/// The newest valid registry in the bucket, and its revision.
pub async fn show(client: &Client) -> anyhow::Result<Option<(SignedRegistry, u64)>> {
    let kv = bucket(client).await?;
    Ok(newest(&kv).await?.0.map(|(_, s, rev)| (s, rev)))
}

/// Every registry the bucket ever put in force, oldest first, with the
/// newest last: what an auditor checks old events against.
pub async fn history(client: &Client) -> anyhow::Result<Vec<Registry>> {
    let js = async_nats::jetstream::new(client.nats().clone());
    // Reading must not create the bucket.
    let Ok(kv) = js.get_key_value(BUCKET).await else {
        return Ok(Vec::new());
    };
    let Some(latest) = kv.entry(KEY).await.map_err(|e| anyhow::anyhow!("{e}"))? else {
        return Ok(Vec::new());
    };
    let mut watch = kv
        .watch_from_revision(KEY, 1)
        .await
        .map_err(|e| anyhow::anyhow!("reading the registry history: {e}"))?;
    let mut out: Vec<Registry> = Vec::new();
    while let Some(e) = watch.next().await {
        let e = e.map_err(|e| anyhow::anyhow!("reading the registry history: {e}"))?;
        if let Ok(s) = serde_json::from_slice::<SignedRegistry>(&e.value) {
            if let Ok(r) = s.accept(out.last()) {
                out.push(r);
            }
        }
        if e.revision >= latest.revision {
            break;
        }
    }
    Ok(out)
}
