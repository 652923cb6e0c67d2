//! `pysandbox setup`: one-time host setup (root), e.g. the AppArmor profile.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

#[derive(Subcommand)]
pub(super) enum SetupCommand {
    /// Write and load an AppArmor profile that lets this binary create user namespaces
    /// (needed where kernel.apparmor_restrict_unprivileged_userns=1, e.g. Ubuntu 24.04).
    Apparmor {
        /// Print the profile instead of writing and loading it.
        #[arg(long)]
        print: bool,
        /// The folder to write the profile into.
        #[arg(long, value_name = "DIR", default_value = pysandbox::apparmor::PROFILE_DIR)]
        dir: PathBuf,
    },
}

pub(super) fn setup(c: SetupCommand) -> Result<i32> {
    match c {
        SetupCommand::Apparmor { print, dir } => {
            let exe = std::env::current_exe()
                .and_then(std::fs::canonicalize)
                .context("finding the pysandbox binary")?;
            if print {
                print!("{}", pysandbox::apparmor::profile(&exe)?);
                return Ok(0);
            }
            let path = pysandbox::apparmor::install(&exe, &dir)?;
            println!(
                "pysandbox: wrote and loaded {} (user namespaces allowed for {})",
                path.display(),
                exe.display()
            );
            Ok(0)
        }
    }
}
