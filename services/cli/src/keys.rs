//! `moira nkey new FILE`: makes an NKey for a user of the locked-down
//! broker. The seed (the secret) goes to FILE, readable by its owner only;
//! the public key, which goes into the broker's users.conf, is printed.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum NkeyCmd {
    /// Make a user NKey: write its seed to FILE (mode 0600, never
    /// overwritten) and print its public key
    New { file: PathBuf },
}

pub fn run(cmd: &NkeyCmd) -> anyhow::Result<u8> {
    match cmd {
        NkeyCmd::New { file } => {
            let kp = nkeys::KeyPair::new_user();
            let seed = kp
                .seed()
                .map_err(|e| anyhow::anyhow!("cannot make an NKey seed: {e}"))?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(file)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot create {}: {e} (an existing file is never overwritten)",
                        file.display()
                    )
                })?;
            f.write_all(seed.as_bytes())?;
            f.write_all(b"\n")?;
            errln!(
                "seed written to {} (keep it secret); public key:",
                file.display()
            );
            outln!("{}", kp.public_key());
            Ok(0)
        }
    }
}
