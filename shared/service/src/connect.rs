//! The broker connection flags every binary takes. Each is also read from
//! an environment variable, so a systemd unit can keep secrets in an
//! environment file rather than on the command line.

use std::path::PathBuf;

use moira_client::Auth;

/// Credentials and TLS settings for the NATS connection.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConnectArgs {
    /// NATS credentials file (user JWT and NKey seed)
    #[arg(long, global = true, env = "MOIRA_NATS_CREDS", value_name = "FILE")]
    pub creds: Option<PathBuf>,
    /// File holding an NKey seed (SU…)
    #[arg(long, global = true, env = "MOIRA_NATS_NKEY", value_name = "FILE")]
    pub nkey: Option<PathBuf>,
    /// NATS user (with --password)
    #[arg(long, global = true, env = "MOIRA_NATS_USER", value_name = "USER")]
    pub nats_user: Option<String>,
    /// NATS password (prefer the environment variable)
    #[arg(
        long,
        global = true,
        env = "MOIRA_NATS_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// NATS token (prefer the environment variable)
    #[arg(long, global = true, env = "MOIRA_NATS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate(s) to trust, PEM (turns TLS on)
    #[arg(long, global = true, env = "MOIRA_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate, PEM, for mutual TLS (with --tls-key)
    #[arg(long, global = true, env = "MOIRA_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Client key, PEM
    #[arg(long, global = true, env = "MOIRA_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Refuse to connect without TLS
    #[arg(long, global = true, env = "MOIRA_TLS_REQUIRE")]
    pub require_tls: bool,
}

impl ConnectArgs {
    pub fn auth(&self) -> Auth {
        Auth {
            creds: self.creds.clone(),
            nkey_seed: self.nkey.clone(),
            user: self.nats_user.clone(),
            password: self.password.clone(),
            token: self.token.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            require_tls: self.require_tls,
        }
    }
}
