//! SSH signatures over command statements (the SSHSIG format of
//! `ssh-keygen -Y sign` and git, namespace `moira`), with RustCrypto's
//! `ssh-key` and, for keys held by an agent, `ssh-agent-client-rs`.
//!
//! Ed25519 and ECDSA P-256 keys are accepted; the statement is hashed with
//! SHA-512, as `ssh-keygen` does.

use std::path::{Path, PathBuf};

use ssh_key::{Algorithm, EcdsaCurve, HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

use moira_protocol::statement::NAMESPACE;

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("cannot read the key {0}: {1}")]
    Read(PathBuf, String),
    #[error("{0} is passphrase-protected: add it to ssh-agent (`ssh-add {0}`) and pass its public key (`--key {0}.pub`) instead")]
    Encrypted(PathBuf),
    #[error("{0} is neither an OpenSSH private key nor a public key")]
    NotAKey(PathBuf),
    #[error(
        "{0} is an OpenSSH private key that cannot be read ({1}). About 1 in 256 ECDSA keys made by \
         ssh-keygen (a secret that starts with a zero byte) hits a limit of the ssh-key library in \
         this build: add the key to ssh-agent (`ssh-add {0}`) and pass its public key \
         (`--key {0}.pub`), or use an Ed25519 key"
    )]
    Unreadable(PathBuf, String),
    #[error(
        "no ssh-agent: SSH_AUTH_SOCK is not set (start one with `eval $(ssh-agent)` and `ssh-add`)"
    )]
    NoAgent,
    #[error("the ssh-agent at {0} failed: {1}")]
    Agent(PathBuf, String),
    #[error("the ssh-agent holds no key{0}")]
    NoAgentKey(String),
    #[error("{0} keys are not accepted; use Ed25519 or ECDSA P-256")]
    Algorithm(String),
    #[error("signing failed: {0}")]
    Sign(String),
}

/// Why a signature does not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the signature is not an SSH signature (SSHSIG armor): {0}")]
    Malformed(String),
    #[error("the signature's namespace is '{0}', not the one expected")]
    Namespace(String),
    #[error("{0} keys are not accepted; use Ed25519 or ECDSA P-256")]
    Algorithm(String),
    #[error("the signature does not match the statement: {0}")]
    Mismatch(String),
}

fn accepted(alg: &Algorithm) -> bool {
    matches!(
        alg,
        Algorithm::Ed25519
            | Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256
            }
    )
}

/// Where signatures come from.
#[derive(Debug, Clone)]
pub enum Signer {
    /// An unencrypted private key file.
    Key(Box<PrivateKey>),
    /// A key held by an ssh-agent.
    Agent { socket: PathBuf, public: PublicKey },
}

impl Signer {
    /// A key file: a private key is used directly; a public key (`.pub`)
    /// names the agent key to sign with.
    pub fn from_file(path: &Path) -> Result<Signer, SignError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SignError::Read(path.to_path_buf(), e.to_string()))?;
        match PrivateKey::from_openssh(&text) {
            Ok(key) => {
                if key.is_encrypted() {
                    return Err(SignError::Encrypted(path.to_path_buf()));
                }
                if !accepted(&key.algorithm()) {
                    return Err(SignError::Algorithm(key.algorithm().to_string()));
                }
                return Ok(Signer::Key(Box::new(key)));
            }
            Err(e)
                if text
                    .trim_start()
                    .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----") =>
            {
                return Err(SignError::Unreadable(path.to_path_buf(), e.to_string()));
            }
            Err(_) => {}
        }
        match PublicKey::from_openssh(text.trim()) {
            Ok(public) => {
                if !accepted(&public.algorithm()) {
                    return Err(SignError::Algorithm(public.algorithm().to_string()));
                }
                Ok(Signer::Agent {
                    socket: agent_socket()?,
                    public,
                })
            }
            Err(_) => Err(SignError::NotAKey(path.to_path_buf())),
        }
    }

    /// The first accepted key of the agent at `SSH_AUTH_SOCK`.
    pub fn agent() -> Result<Signer, SignError> {
        let socket = agent_socket()?;
        let mut agent = ssh_agent_client_rs::Client::connect(&socket)
            .map_err(|e| SignError::Agent(socket.clone(), e.to_string()))?;
        let ids = agent
            .list_all_identities()
            .map_err(|e| SignError::Agent(socket.clone(), e.to_string()))?;
        let public = ids
            .into_iter()
            .filter_map(|id| match id {
                ssh_agent_client_rs::Identity::PublicKey(pk) => Some(pk.into_owned()),
                _ => None,
            })
            .find(|pk| accepted(&pk.algorithm()))
            .ok_or_else(|| SignError::NoAgentKey(" of type Ed25519 or ECDSA P-256".into()))?;
        Ok(Signer::Agent { socket, public })
    }

    pub fn public_key(&self) -> PublicKey {
        match self {
            Signer::Key(k) => k.public_key().clone(),
            Signer::Agent { public, .. } => public.clone(),
        }
    }

    /// Signs `msg` in the `moira` namespace; returns the armored signature
    /// (`-----BEGIN SSH SIGNATURE-----`).
    pub fn sign(&self, msg: &[u8]) -> Result<String, SignError> {
        self.sign_in(NAMESPACE, msg)
    }

    /// Signs `msg` in `namespace`.
    pub fn sign_in(&self, namespace: &str, msg: &[u8]) -> Result<String, SignError> {
        let sig = match self {
            Signer::Key(k) => k
                .sign(namespace, HashAlg::Sha512, msg)
                .map_err(|e| SignError::Sign(e.to_string()))?,
            Signer::Agent { socket, public } => {
                let data = SshSig::signed_data(namespace, HashAlg::Sha512, msg)
                    .map_err(|e| SignError::Sign(e.to_string()))?;
                let mut agent = ssh_agent_client_rs::Client::connect(socket)
                    .map_err(|e| SignError::Agent(socket.clone(), e.to_string()))?;
                let raw = agent
                    .sign(public.clone(), &data)
                    .map_err(|e| SignError::Agent(socket.clone(), e.to_string()))?;
                SshSig::new(public.key_data().clone(), namespace, HashAlg::Sha512, raw)
                    .map_err(|e| SignError::Sign(e.to_string()))?
            }
        };
        sig.to_pem(LineEnding::LF)
            .map_err(|e| SignError::Sign(e.to_string()))
    }
}

fn agent_socket() -> Result<PathBuf, SignError> {
    std::env::var_os("SSH_AUTH_SOCK")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .ok_or(SignError::NoAgent)
}

/// Checks an armored signature over `msg` and returns the key that made it.
/// Whether that key belongs to the actor is the caller's check.
pub fn verify(msg: &[u8], armored: &str) -> Result<PublicKey, VerifyError> {
    verify_in(NAMESPACE, msg, armored)
}

/// [`verify`] in another namespace.
pub fn verify_in(namespace: &str, msg: &[u8], armored: &str) -> Result<PublicKey, VerifyError> {
    let sig =
        SshSig::from_pem(armored.trim()).map_err(|e| VerifyError::Malformed(e.to_string()))?;
    if sig.namespace() != namespace {
        return Err(VerifyError::Namespace(
            sig.namespace().chars().take(64).collect(),
        ));
    }
    let public = PublicKey::new(sig.public_key().clone(), "");
    if !accepted(&public.algorithm()) {
        return Err(VerifyError::Algorithm(public.algorithm().to_string()));
    }
    public
        .verify(namespace, msg, &sig)
        .map_err(|e| VerifyError::Mismatch(e.to_string()))?;
    Ok(public)
}

/// A key's SHA-256 fingerprint as `ssh-keygen -l` shows it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PrivateKey {
        PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519).expect("key")
    }

    #[test]
    fn a_signature_verifies_only_over_its_own_bytes() {
        let k = key();
        let signer = Signer::Key(Box::new(k.clone()));
        let sig = signer.sign(b"statement").expect("sign");
        assert!(sig.starts_with("-----BEGIN SSH SIGNATURE-----"));
        let who = verify(b"statement", &sig).expect("verifies");
        assert_eq!(who.key_data(), k.public_key().key_data());
        assert!(matches!(
            verify(b"statemenT", &sig),
            Err(VerifyError::Mismatch(_))
        ));
        assert!(matches!(
            verify(b"statement", "garbage"),
            Err(VerifyError::Malformed(_))
        ));
        let other = k
            .sign("git", HashAlg::Sha512, b"statement")
            .expect("sign")
            .to_pem(LineEnding::LF)
            .expect("pem");
        assert!(matches!(
            verify(b"statement", &other),
            Err(VerifyError::Namespace(_))
        ));
    }

    #[test]
    fn an_ecdsa_key_the_library_cannot_read_gets_an_error_that_says_what_to_do() {
        let dir = std::env::temp_dir().join(format!("moira-ecdsa-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        // About 1 in 256 keys: try until one turns up (bounded).
        let mut found = None;
        for i in 0..4000 {
            let path = dir.join(format!("k{i}"));
            let made = std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ecdsa", "-b", "256", "-N", "", "-f"])
                .arg(&path)
                .status()
                .expect("ssh-keygen is installed (./just tools installs openssh-client)");
            assert!(made.success());
            match Signer::from_file(&path) {
                Ok(_) => {}
                Err(e) => {
                    found = Some(e);
                    break;
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        let e = found.expect("an unreadable key within 4000");
        assert!(matches!(e, SignError::Unreadable(..)), "{e}");
        let text = e.to_string();
        assert!(text.contains("ssh-add") && text.contains(".pub"), "{text}");
    }
}
