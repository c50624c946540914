//! The approvers registry: which roles each user holds, and the SSH public
//! keys (OpenSSH `authorized_keys` form) that sign for them.
//!
//! ```toml
//! [users.alice]
//! roles = ["owner", "release"]
//! keys = ["ssh-ed25519 AAAAC3Nza… alice@laptop"]
//!
//! [users.bob]
//! roles = ["owner"]
//! slack = "U024BE7LH"      # the Slack user id whose buttons decide as bob
//! attested = ["link", "slack"]   # decisions moira-web signs for bob count
//! email = "bob@example.com"      # the notifier's messages for bob alone
//!
//! [services.web]
//! keys = ["ssh-ed25519 AAAAC3Nza… moira-web"]
//! attests = true           # may sign decisions for the people it authenticates
//! ```
//!
//! A decision moira-web makes for a person is signed with moira-web's key
//! and says how it authenticated them (`via`: `proxy`, `link`, `slack`).
//! It counts only if the key is a service's that `attests`, and the
//! person's `attested` lists that way; otherwise only the person's own
//! signature does. `dev` (anyone picks a name) can never be listed.
//!
//! A user may let a deputy decide for them with an OpenSSH certificate
//! over the deputy's key, signed with one of the user's own keys:
//! `ssh-keygen -s alice -I bob-covers -n moira:alice -V +7d bob.pub`. A
//! principal `moira:alice` lets the deputy act as alice; `moira:alice:role=owner`
//! only in alice's role owner. The deputy must be a user here, and the
//! certificate must be over one of the deputy's own keys. `revoked` ends a
//! certificate before it expires, by serial, key id or the deputy key's
//! fingerprint:
//!
//! ```toml
//! [users.alice]
//! revoked = ["serial:7", "id:bob-covers", "SHA256:…"]
//! ```
//!
//! A file without keys is valid; it only cannot back `--signatures require`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

#[derive(Debug, Clone, Default)]
pub struct Registry {
    users: BTreeMap<String, User>,
    /// moira's own services (runners), by name, with the keys they sign with.
    services: BTreeMap<String, Vec<ssh_key::PublicKey>>,
    /// The services that may sign decisions for people (moira-web).
    attesting: std::collections::BTreeSet<String>,
    /// The hex SHA-256 of the text it was read from: the revision each
    /// decision records.
    revision: String,
}

#[derive(Debug, Clone, Default)]
struct User {
    roles: Vec<String>,
    keys: Vec<ssh_key::PublicKey>,
    slack: Option<String>,
    /// The ways moira-web may authenticate this user for a decision it signs.
    attested: Vec<String>,
    /// Where the notifier mails this user's own messages.
    email: Option<String>,
    /// Certificates this user made that no longer count.
    revoked: Vec<Revoked>,
}

/// One way to revoke a delegation certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Revoked {
    Serial(u64),
    KeyId(String),
    /// The SHA-256 fingerprint of the deputy's key: every certificate over it.
    Key(String),
}

impl Revoked {
    fn parse(text: &str) -> Option<Revoked> {
        if let Some(n) = text.strip_prefix("serial:") {
            return n.parse().ok().map(Revoked::Serial);
        }
        if let Some(id) = text.strip_prefix("id:") {
            return (!id.is_empty()).then(|| Revoked::KeyId(id.to_string()));
        }
        text.parse::<ssh_key::Fingerprint>()
            .ok()
            .filter(|f| f.algorithm() == ssh_key::HashAlg::Sha256)
            .map(|f| Revoked::Key(f.to_string()))
    }

    fn matches(&self, cert: &ssh_key::Certificate) -> bool {
        match self {
            Revoked::Serial(n) => cert.serial() == *n,
            Revoked::KeyId(id) => cert.key_id() == id,
            Revoked::Key(fp) => {
                cert.public_key()
                    .fingerprint(ssh_key::HashAlg::Sha256)
                    .to_string()
                    == *fp
            }
        }
    }
}

/// The principal prefix of a delegation certificate: `moira:<user>` or
/// `moira:<user>:role=<role>`.
pub const DEPUTY_PRINCIPAL: &str = "moira:";

/// A delegation principal read: `moira:alice` is `("alice", None)`,
/// `moira:alice:role=owner` is `("alice", Some("owner"))`; anything else
/// is not one.
pub fn deputy_principal(p: &str) -> Option<(&str, Option<&str>)> {
    let rest = p.strip_prefix(DEPUTY_PRINCIPAL)?;
    Some(match rest.split_once(":role=") {
        Some((user, role)) => (user, Some(role)),
        None => (rest, None),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    users: BTreeMap<String, UserFile>,
    #[serde(default)]
    services: BTreeMap<String, ServiceFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceFile {
    #[serde(default)]
    keys: Vec<String>,
    /// It may sign decisions for the people it authenticates.
    #[serde(default)]
    attests: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserFile {
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    keys: Vec<String>,
    /// The user's Slack user id (`U…` or `W…`).
    #[serde(default)]
    slack: Option<String>,
    /// Which decisions moira-web signs for this user count: any of
    /// `proxy`, `link`, `slack`.
    #[serde(default)]
    attested: Vec<String>,
    /// The user's e-mail address, for messages of their own.
    #[serde(default)]
    email: Option<String>,
    /// Delegation certificates of this user's that no longer count:
    /// `serial:N`, `id:KEY-ID`, or a deputy key's `SHA256:` fingerprint.
    #[serde(default)]
    revoked: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read the approvers file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("the approvers file {path} is not valid: {error}\nexpected tables like:\n[users.alice]\nroles = [\"owner\"]")]
    Parse { path: String, error: String },
}

impl Registry {
    pub fn load(path: &Path) -> Result<Self, RegistryError> {
        let text = std::fs::read_to_string(path).map_err(|error| RegistryError::Read {
            path: path.display().to_string(),
            error,
        })?;
        Self::parse(&text).map_err(|error| RegistryError::Parse {
            path: path.display().to_string(),
            error,
        })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let parse_keys = |table: &str, name: &str, keys: &[String]| {
            if !moira_protocol::ids::is_valid_name(name) {
                return Err(moira_protocol::gate::bad_name(table, name));
            }
            keys.iter()
                .map(|k| {
                    ssh_key::PublicKey::from_openssh(k.trim()).map_err(|e| {
                        format!("{table}s.{name}: a key is not an OpenSSH public key ({e})")
                    })
                })
                .collect::<Result<Vec<_>, String>>()
        };
        let mut users = BTreeMap::new();
        let mut slack_ids = std::collections::BTreeSet::new();
        for (name, u) in file.users {
            let keys = parse_keys("user", &name, &u.keys)?;
            if let Some(id) = &u.slack {
                if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_alphanumeric())
                {
                    return Err(format!("users.{name}.slack: '{id}' is not a Slack user id"));
                }
                // One Slack account decides as one moira user.
                if !slack_ids.insert(id.clone()) {
                    return Err(format!(
                        "users.{name}.slack: {id} is already another user's"
                    ));
                }
            }
            for way in &u.attested {
                match way.as_str() {
                    "proxy" | "link" | "slack" => {}
                    "dev" => {
                        return Err(format!(
                            "users.{name}.attested: dev cannot be listed: with --auth dev anyone picks any name"
                        ))
                    }
                    other => {
                        return Err(format!(
                            "users.{name}.attested: '{other}' is not one of proxy, link, slack"
                        ))
                    }
                }
            }
            if let Some(e) = &u.email {
                let ok = e.len() <= 254
                    && e.split_once('@')
                        .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
                    && !e
                        .chars()
                        .any(|c| c.is_whitespace() || c.is_control() || "<>,;\"".contains(c));
                if !ok {
                    return Err(format!(
                        "users.{name}.email: '{e}' is not an e-mail address"
                    ));
                }
            }
            let revoked = u
                .revoked
                .iter()
                .map(|r| {
                    Revoked::parse(r).ok_or_else(|| {
                        format!(
                            "users.{name}.revoked: '{r}' is not serial:N, id:KEY-ID or a SHA256: key fingerprint"
                        )
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            users.insert(
                name,
                User {
                    roles: u.roles,
                    keys,
                    slack: u.slack,
                    attested: u.attested,
                    email: u.email,
                    revoked,
                },
            );
        }
        let mut services = BTreeMap::new();
        let mut attesting = std::collections::BTreeSet::new();
        for (name, s) in file.services {
            let keys = parse_keys("service", &name, &s.keys)?;
            if s.attests {
                attesting.insert(name.clone());
            }
            services.insert(name, keys);
        }
        Ok(Registry {
            users,
            services,
            attesting,
            revision: moira_protocol::statement::sha256_hex(text.as_bytes()),
        })
    }

    /// Whether a decision `key` signed for `user`, saying it authenticated
    /// them `via` some way, counts: the key is a service's that attests,
    /// and the user accepts that way. The error says what is missing.
    pub fn check_attested(
        &self,
        user: &str,
        via: &str,
        key: &ssh_key::PublicKey,
    ) -> Result<(), String> {
        let fp = || key.fingerprint(ssh_key::HashAlg::Sha256).to_string();
        let Some(service) = self.service_of(key) else {
            return Err(format!(
                "the key {} that signed this {via} decision is not a service's key in the registry",
                fp()
            ));
        };
        if !self.attesting.contains(service) {
            return Err(format!(
                "the service {service} may not sign decisions for people (attests = true under [services.{service}])"
            ));
        }
        let accepted = self
            .users
            .get(user)
            .is_some_and(|u| u.attested.iter().any(|w| w == via));
        if !accepted {
            return Err(format!(
                "{user} does not accept decisions moira-web makes through {via} (attested in [users.{user}]); only {user}'s own signature counts"
            ));
        }
        Ok(())
    }

    /// What a delegation certificate lets `actor` do for `user`, for a
    /// decision signed at `at_secs` with the certificate's subject key
    /// (`key`). It counts only if: one of `user`'s keys signed it, it is a
    /// user certificate in its window, it has no critical options, it
    /// names `moira:<user>` or `moira:<user>:role=<r>` for a role `user`
    /// holds, `user` has not revoked it, and `key` is one of `actor`'s own
    /// keys. The error says which of these fails.
    pub fn check_deputy(
        &self,
        actor: &str,
        user: &str,
        key: &ssh_key::PublicKey,
        cert: &ssh_key::Certificate,
        at_secs: u64,
    ) -> Result<moira_protocol::gate::Deputy, String> {
        let fp = |k: &ssh_key::public::KeyData| k.fingerprint(ssh_key::HashAlg::Sha256);
        let Some(owner) = self.users.get(user) else {
            return Err(format!(
                "{user} is not in the approvers registry, so no one can act for them"
            ));
        };
        let cas: Vec<ssh_key::Fingerprint> = owner.keys.iter().map(|k| fp(k.key_data())).collect();
        let ca = fp(cert.signature_key());
        if !cas.contains(&ca) {
            return Err(format!(
                "the certificate was signed by the key {ca}, which is not one of {user}'s keys in the registry"
            ));
        }
        if cert.valid_after() > at_secs || at_secs >= cert.valid_before() {
            return Err(format!(
                "the certificate is valid from {} until {}, not at {}",
                moira_protocol::time::rfc3339(cert.valid_after().saturating_mul(1000)),
                moira_protocol::time::rfc3339(cert.valid_before().saturating_mul(1000)),
                moira_protocol::time::rfc3339(at_secs.saturating_mul(1000)),
            ));
        }
        // The CA's signature over the certificate, its window and its CA, by
        // ssh-key (the checks above only name what fails).
        cert.validate_at(at_secs, &cas)
            .map_err(|_| format!("the certificate's signature by {user}'s key does not verify"))?;
        if let Some((name, _)) = cert.critical_options().iter().next() {
            return Err(format!(
                "the certificate has the critical option {}, which moira does not apply; make it without -O",
                name.chars().take(64).collect::<String>()
            ));
        }
        let mut as_user = false;
        let mut scoped = Vec::new();
        for p in cert.valid_principals() {
            match deputy_principal(p) {
                Some((u, None)) if u == user => as_user = true,
                Some((u, Some(role))) if u == user => scoped.push(role.to_string()),
                _ => {}
            }
        }
        if !as_user && scoped.is_empty() {
            return Err(format!(
                "the certificate names neither {DEPUTY_PRINCIPAL}{user} nor {DEPUTY_PRINCIPAL}{user}:role=ROLE as a principal (-n)"
            ));
        }
        if let Some(r) = owner.revoked.iter().find(|r| r.matches(cert)) {
            let how = match r {
                Revoked::Serial(n) => format!("serial:{n}"),
                Revoked::KeyId(id) => format!("id:{id}"),
                Revoked::Key(k) => k.clone(),
            };
            return Err(format!(
                "{user} revoked this certificate ({how} in [users.{user}] revoked)"
            ));
        }
        if !self.has_key(actor, key) {
            return Err(format!(
                "the certificate is over the key {}, which is not one of {actor}'s keys in the registry; a deputy signs with their own key",
                fp(key.key_data())
            ));
        }
        let roles = if as_user {
            owner.roles.clone()
        } else {
            let held: Vec<String> = scoped
                .into_iter()
                .filter(|r| owner.roles.contains(r))
                .collect();
            if held.is_empty() {
                return Err(format!(
                    "the certificate covers only roles {user} does not hold in the registry"
                ));
            }
            held
        };
        Ok(moira_protocol::gate::Deputy {
            user: user.to_string(),
            as_user,
            roles,
        })
    }

    /// The `allowed_signers` line that lets `ssh-keygen -Y verify` accept
    /// what `user`'s deputies signed: `user`'s keys as `cert-authority`
    /// for the principals `moira:<user>` and `moira:<user>:role=*`.
    pub fn deputy_signers(&self, user: &str) -> Vec<String> {
        self.keys_of(user)
            .into_iter()
            .map(|k| {
                format!(
                    "{DEPUTY_PRINCIPAL}{user},{DEPUTY_PRINCIPAL}{user}:role=* cert-authority,namespaces=\"moira\" {k}"
                )
            })
            .collect()
    }

    /// The users who may approve for `users` and `roles`: those named, and
    /// every user holding one of the roles, in name order.
    pub fn approvers_of(&self, users: &[String], roles: &[String]) -> Vec<String> {
        let mut out: std::collections::BTreeSet<String> = users.iter().cloned().collect();
        for (name, u) in &self.users {
            if u.roles.iter().any(|r| roles.contains(r)) {
                out.insert(name.clone());
            }
        }
        out.into_iter().collect()
    }

    /// The user's e-mail address, if the registry has one.
    pub fn email_of(&self, user: &str) -> Option<&str> {
        self.users.get(user).and_then(|u| u.email.as_deref())
    }

    /// The user's Slack user id, if linked.
    pub fn slack_of(&self, user: &str) -> Option<&str> {
        self.users.get(user).and_then(|u| u.slack.as_deref())
    }

    /// The revision decisions record: the digest of the registry's text.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// The service whose key `key` is, if any.
    pub fn service_of(&self, key: &ssh_key::PublicKey) -> Option<&str> {
        self.services
            .iter()
            .find(|(_, keys)| keys.iter().any(|k| k.key_data() == key.key_data()))
            .map(|(n, _)| n.as_str())
    }

    /// Whether any service is listed with a key.
    pub fn has_services(&self) -> bool {
        self.services.values().any(|k| !k.is_empty())
    }

    /// `user`'s keys in OpenSSH form.
    /// Every service key in OpenSSH form, with the service's name.
    pub fn service_keys(&self) -> Vec<(String, String)> {
        self.services
            .iter()
            .flat_map(|(name, keys)| {
                keys.iter()
                    .filter_map(move |k| k.to_openssh().ok().map(|k| (name.clone(), k)))
            })
            .collect()
    }

    pub fn keys_of(&self, user: &str) -> Vec<String> {
        self.users
            .get(user)
            .map(|u| u.keys.iter().filter_map(|k| k.to_openssh().ok()).collect())
            .unwrap_or_default()
    }

    /// Whether `key` is one of `user`'s keys.
    pub fn has_key(&self, user: &str, key: &ssh_key::PublicKey) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.keys.iter().any(|k| k.key_data() == key.key_data()))
    }

    /// Users whose keys include `key` (a key listed for two users is a
    /// mistake the gate-keeper refuses to count twice).
    pub fn owners_of(&self, key: &ssh_key::PublicKey) -> Vec<&str> {
        self.users
            .iter()
            .filter(|(_, u)| u.keys.iter().any(|k| k.key_data() == key.key_data()))
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// The moira user a Slack user id belongs to.
    pub fn user_for_slack(&self, slack_id: &str) -> Option<&str> {
        self.users
            .iter()
            .find(|(_, u)| u.slack.as_deref() == Some(slack_id))
            .map(|(name, _)| name.as_str())
    }

    pub fn roles_of(&self, user: &str) -> Vec<String> {
        self.users
            .get(user)
            .map(|u| u.roles.clone())
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_and_unknown_ways_cannot_be_attested_for_a_user() {
        let e = Registry::parse("[users.bob]\nattested = [\"dev\"]\n").expect_err("dev");
        assert!(e.contains("anyone picks any name"), "{e}");
        let e = Registry::parse("[users.bob]\nattested = [\"sso\"]\n").expect_err("sso");
        assert!(e.contains("not one of proxy, link, slack"), "{e}");
        Registry::parse("[users.bob]\nattested = [\"proxy\", \"link\", \"slack\"]\n")
            .expect("valid");
    }

    #[test]
    fn parses_users_and_roles() {
        let r =
            Registry::parse("[users.alice]\nroles = [\"owner\"]\n[users.bob]\n").expect("parse");
        assert_eq!(r.roles_of("alice"), vec!["owner".to_string()]);
        assert!(r.roles_of("bob").is_empty());
        assert!(r.roles_of("nobody").is_empty());
    }

    #[test]
    fn refuses_typos() {
        assert!(Registry::parse("[users.alice]\nrole = [\"owner\"]\n").is_err());
        assert!(Registry::parse("[user.alice]\n").is_err());
    }

    #[test]
    fn a_slack_id_links_one_user_and_must_look_like_one() {
        let r = Registry::parse("[users.bob]\nslack = \"U0BOB\"\n[users.carol]\n").expect("valid");
        assert_eq!(r.user_for_slack("U0BOB"), Some("bob"));
        assert_eq!(r.user_for_slack("U0CAROL"), None);
        let twice = "[users.bob]\nslack = \"U1\"\n[users.eve]\nslack = \"U1\"\n";
        assert!(Registry::parse(twice)
            .expect_err("refused")
            .contains("already another user's"));
        assert!(Registry::parse("[users.bob]\nslack = \"<!channel>\"\n").is_err());
    }
}
