//! `peercm secret generate [--out FILE] [--force]`: writes a cluster secret strong enough for
//! `secret_file` (random bytes from the operating system, as hex).
//!
//! Without `--out` the secret goes to standard output. With it, the file is created with mode
//! 0600, and an existing file is replaced only with `--force` (a secret silently overwritten on
//! one node of a running pair locks it out of the cluster).

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use peercm_cm_manager::{ClusterSecret, GENERATED_SECRET_BYTES};
use rand::rngs::OsRng;
use rand::RngCore;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Options of `peercm secret`.
#[derive(Debug, Args)]
pub struct SecretArgs {
    #[command(subcommand)]
    command: SecretCommand,
}

#[derive(Debug, Subcommand)]
enum SecretCommand {
    /// Generate a new cluster secret (32 random bytes as 64 hex characters). Copy the same file
    /// to both nodes of a pair and point `secret_file` at it.
    Generate {
        /// Write the secret to this file (mode 0600) instead of standard output.
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
}

/// Runs `peercm secret ...`.
pub fn run(args: SecretArgs) -> anyhow::Result<bool> {
    match args.command {
        SecretCommand::Generate { out, force } => {
            let secret = generate()?;
            match out {
                None => println!("{secret}"),
                Some(path) => {
                    write_secret(&path, &secret, force)?;
                    eprintln!("wrote a new cluster secret to {}", path.display());
                }
            }
            Ok(true)
        }
    }
}

/// A fresh secret, checked against the same rule `secret_file` is.
fn generate() -> anyhow::Result<String> {
    let mut bytes = [0u8; GENERATED_SECRET_BYTES];
    OsRng
        .try_fill_bytes(&mut bytes)
        .context("reading randomness from the operating system")?;
    let secret = hex::encode(bytes);
    ClusterSecret::new(secret.as_bytes()).context("the generated secret failed its own check")?;
    Ok(secret)
}

fn write_secret(path: &Path, secret: &str, force: bool) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(0o600);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut file = match opts.open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
            "{} exists; pass --force to replace it (both nodes of a pair need the same secret)",
            path.display()
        ),
        other => other.with_context(|| format!("creating {}", path.display()))?,
    };
    // A replaced file keeps its old mode through open(): tighten it explicitly.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting mode 0600 on {}", path.display()))?;
    writeln!(file, "{secret}").with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
