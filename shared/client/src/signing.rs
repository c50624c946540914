//! SSH signatures over command statements (the SSHSIG format of
//! `ssh-keygen -Y sign` and git, namespace `moira`), with RustCrypto's
//! `ssh-key` and, for keys held by an agent, `ssh-agent-client-rs`.
//!
//! Ed25519 and ECDSA P-256 keys are accepted; the statement is hashed with
//! SHA-512, as `ssh-keygen` does.
//!
//! A deputy signs with their own key and an OpenSSH user certificate
//! another user made for it (`ssh-keygen -s alice -n moira:alice bob.pub`).
//! `ssh-keygen -Y sign -f bob-cert.pub` then puts the certificate where the
//! public key would be. ssh-key's `SshSig` cannot hold a certificate, so
//! such a signature is read here with ssh-key's own encoding crate, and
//! checked with ssh-key against the certificate's subject key.

use std::path::{Path, PathBuf};

use ssh_encoding::{CheckedSum, Decode, DecodePem, Encode, EncodePem, Reader, Writer};
use ssh_key::certificate::CertType;
use ssh_key::{
    Algorithm, Certificate, EcdsaCurve, HashAlg, LineEnding, PrivateKey, PublicKey, Signature,
    SshSig,
};

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
    #[error("{0} is not an OpenSSH certificate: {1}")]
    NotACertificate(PathBuf, String),
    #[error("the certificate {0} is for another key than {1}")]
    CertificateKey(PathBuf, PathBuf),
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
    #[error("the signature's certificate is not valid: {0}")]
    Certificate(String),
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
    /// A deputy's key with the certificate another user made for it: the
    /// signature carries the certificate.
    Certified {
        key: Box<Signer>,
        certificate: Box<Certificate>,
    },
}

impl Signer {
    /// A key file: a private key is used directly; a public key (`.pub`)
    /// names the agent key to sign with; a certificate (`-cert.pub`) signs
    /// with the private key beside it (the same name without `-cert.pub`)
    /// or, if there is none, with the agent's key it certifies.
    pub fn from_file(path: &Path) -> Result<Signer, SignError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SignError::Read(path.to_path_buf(), e.to_string()))?;
        if is_certificate_text(&text) {
            return Self::certified(path, &text);
        }
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

    fn certified(path: &Path, text: &str) -> Result<Signer, SignError> {
        let certificate = Certificate::from_openssh(text.trim())
            .map_err(|e| SignError::NotACertificate(path.to_path_buf(), e.to_string()))?;
        let name = path.to_string_lossy();
        let beside = name
            .strip_suffix("-cert.pub")
            .map(PathBuf::from)
            .filter(|p| p.exists());
        let key = match &beside {
            Some(private) => Signer::from_file(private)?,
            None => Signer::Agent {
                socket: agent_socket()?,
                public: PublicKey::new(certificate.public_key().clone(), ""),
            },
        };
        if matches!(key, Signer::Certified { .. })
            || key.public_key().key_data() != certificate.public_key()
        {
            return Err(SignError::CertificateKey(
                path.to_path_buf(),
                beside.unwrap_or_default(),
            ));
        }
        if !accepted(&key.public_key().algorithm()) {
            return Err(SignError::Algorithm(
                key.public_key().algorithm().to_string(),
            ));
        }
        Ok(Signer::Certified {
            key: Box::new(key),
            certificate: Box::new(certificate),
        })
    }

    /// The key that makes the signatures (a certificate's subject key).
    pub fn public_key(&self) -> PublicKey {
        match self {
            Signer::Key(k) => k.public_key().clone(),
            Signer::Agent { public, .. } => public.clone(),
            Signer::Certified { key, .. } => key.public_key(),
        }
    }

    /// Signs `msg` in the `moira` namespace; returns the armored signature
    /// (`-----BEGIN SSH SIGNATURE-----`).
    pub fn sign(&self, msg: &[u8]) -> Result<String, SignError> {
        self.sign_in(NAMESPACE, msg)
    }

    /// Signs `msg` in `namespace`.
    pub fn sign_in(&self, namespace: &str, msg: &[u8]) -> Result<String, SignError> {
        if let Signer::Certified { key, certificate } = self {
            let plain = key.sign_in(namespace, msg)?;
            let plain =
                SshSig::from_pem(plain.trim()).map_err(|e| SignError::Sign(e.to_string()))?;
            let sig = CertSig {
                certificate: (**certificate).clone(),
                namespace: namespace.to_string(),
                reserved: Vec::new(),
                hash_alg: plain.hash_alg(),
                signature: plain.signature().clone(),
            };
            return sig
                .encode_pem_string(LineEnding::LF)
                .map_err(|e| SignError::Sign(e.to_string()));
        }
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
            Signer::Certified { .. } => unreachable!("handled above"),
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

/// Whether a key file's text is an OpenSSH certificate.
fn is_certificate_text(text: &str) -> bool {
    text.split_whitespace()
        .next()
        .is_some_and(|alg| alg.ends_with("-cert-v01@openssh.com"))
}

/// A signature made with a certificate: the SSHSIG layout (PROTOCOL.sshsig)
/// with the certificate in the public key's place.
struct CertSig {
    certificate: Certificate,
    namespace: String,
    reserved: Vec<u8>,
    hash_alg: HashAlg,
    signature: Signature,
}

const SSHSIG_MAGIC: &[u8; 6] = b"SSHSIG";

impl Decode for CertSig {
    type Error = ssh_key::Error;

    fn decode(reader: &mut impl Reader) -> Result<Self, ssh_key::Error> {
        let mut magic = [0u8; 6];
        reader.read(&mut magic)?;
        if &magic != SSHSIG_MAGIC {
            return Err(ssh_key::Error::FormatEncoding);
        }
        let version = u32::decode(reader)?;
        if version != SshSig::VERSION {
            return Err(ssh_key::Error::Version { number: version });
        }
        let certificate = reader.read_prefixed(Certificate::decode)?;
        let namespace = String::decode(reader)?;
        let reserved = Vec::decode(reader)?;
        let hash_alg = HashAlg::decode(reader)?;
        let signature = reader.read_prefixed(Signature::decode)?;
        Ok(CertSig {
            certificate,
            namespace,
            reserved,
            hash_alg,
            signature,
        })
    }
}

impl Encode for CertSig {
    fn encoded_len(&self) -> ssh_encoding::Result<usize> {
        [
            SSHSIG_MAGIC.len(),
            SshSig::VERSION.encoded_len()?,
            self.certificate.encoded_len_prefixed()?,
            self.namespace.encoded_len()?,
            self.reserved.encoded_len()?,
            self.hash_alg.encoded_len()?,
            self.signature.encoded_len_prefixed()?,
        ]
        .checked_sum()
    }

    fn encode(&self, writer: &mut impl Writer) -> ssh_encoding::Result<()> {
        writer.write(SSHSIG_MAGIC)?;
        SshSig::VERSION.encode(writer)?;
        self.certificate.encode_prefixed(writer)?;
        self.namespace.encode(writer)?;
        self.reserved.encode(writer)?;
        self.hash_alg.encode(writer)?;
        self.signature.encode_prefixed(writer)
    }
}

impl ssh_encoding::pem::PemLabel for CertSig {
    const PEM_LABEL: &'static str = "SSH SIGNATURE";
}

/// Who made a signature: the key, and the certificate it came with.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The key that made the signature (a certificate's subject key).
    pub key: PublicKey,
    /// The certificate the signature carried. Nothing of it is checked
    /// here: the caller validates it (`Certificate::validate_at` with the
    /// CA keys it trusts, then its principals and options).
    pub certificate: Option<Certificate>,
}

/// Checks an armored signature over `msg`, made with a plain key or with a
/// key and its certificate, in the `moira` namespace.
pub fn verify_signed(msg: &[u8], armored: &str) -> Result<Signed, VerifyError> {
    // Most signatures are a plain key's: one parse. Only what ssh-key
    // cannot read as one is tried as a certificate's.
    let plain_err = match verify_in(NAMESPACE, msg, armored) {
        Err(VerifyError::Malformed(e)) => e,
        other => {
            return other.map(|key| Signed {
                key,
                certificate: None,
            })
        }
    };
    let Ok(sig) = CertSig::decode_pem(armored.trim()) else {
        return Err(VerifyError::Malformed(plain_err));
    };
    if sig.namespace != NAMESPACE {
        return Err(VerifyError::Namespace(
            sig.namespace.chars().take(64).collect(),
        ));
    }
    let cert = sig.certificate;
    if cert.cert_type() != CertType::User {
        return Err(VerifyError::Certificate(
            "it is a host certificate; a deputy needs a user certificate (ssh-keygen -s without -h)"
                .into(),
        ));
    }
    let key = PublicKey::new(cert.public_key().clone(), "");
    if !accepted(&key.algorithm()) {
        return Err(VerifyError::Algorithm(key.algorithm().to_string()));
    }
    let ca = PublicKey::new(cert.signature_key().clone(), "");
    if !accepted(&ca.algorithm()) {
        return Err(VerifyError::Algorithm(ca.algorithm().to_string()));
    }
    let plain = SshSig::new(
        cert.public_key().clone(),
        NAMESPACE,
        sig.hash_alg,
        sig.signature,
    )
    .map_err(|e| VerifyError::Malformed(e.to_string()))?;
    key.verify(NAMESPACE, msg, &plain)
        .map_err(|e| VerifyError::Mismatch(e.to_string()))?;
    Ok(Signed {
        key,
        certificate: Some(cert),
    })
}

/// Checks an armored signature over `msg` and returns the key that made it.
/// Whether that key belongs to the actor is the caller's check. A
/// signature that carries a certificate is refused here ([`verify_signed`]
/// takes those).
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
    fn a_certificate_signature_carries_the_certificate_and_verifies_over_its_own_bytes_only() {
        let ca = key();
        let deputy = key();
        let mut b = ssh_key::certificate::Builder::new_with_random_nonce(
            &mut rand_core::OsRng,
            deputy.public_key().key_data().clone(),
            0,
            u64::MAX / 2,
        )
        .expect("builder");
        b.valid_principal("moira:alice").expect("principal");
        b.key_id("bob-covers").expect("key id");
        let cert = b.sign(&ca).expect("certify");
        let signer = Signer::Certified {
            key: Box::new(Signer::Key(Box::new(deputy.clone()))),
            certificate: Box::new(cert.clone()),
        };
        let sig = signer.sign(b"statement").expect("sign");
        let signed = verify_signed(b"statement", &sig).expect("verifies");
        assert_eq!(signed.key.key_data(), deputy.public_key().key_data());
        let carried = signed.certificate.expect("the certificate came along");
        assert_eq!(carried, cert);
        carried
            .validate_at(1, [&ca.public_key().fingerprint(HashAlg::Sha256)])
            .expect("signed by the CA key");
        assert!(matches!(
            verify_signed(b"statemenT", &sig),
            Err(VerifyError::Mismatch(_))
        ));
        // The plain check takes no certificate; a plain signature has none.
        assert!(verify(b"statement", &sig).is_err());
        let plain = Signer::Key(Box::new(deputy))
            .sign(b"statement")
            .expect("sign");
        assert!(verify_signed(b"statement", &plain)
            .expect("verifies")
            .certificate
            .is_none());
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
