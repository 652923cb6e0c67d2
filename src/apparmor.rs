//! The AppArmor profile `pysandbox setup apparmor` installs. Ubuntu (24.04 by default,
//! `kernel.apparmor_restrict_unprivileged_userns=1`) refuses unprivileged user
//! namespaces to programs without a profile that allows them; pysandbox needs one for
//! every rootless run. The profile is unconfined apart from that rule, like the ones
//! Ubuntu ships for browsers and container runtimes. Writes only where it is told and
//! loads through `apparmor_parser`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where AppArmor reads profiles from at boot.
pub const PROFILE_DIR: &str = "/etc/apparmor.d";
/// The profile's name and file name.
pub const PROFILE_NAME: &str = "pysandbox";

#[derive(Debug, thiserror::Error)]
pub enum AppArmorError {
    #[error(
        "cannot name {0} in an AppArmor profile (it holds a quote, backslash or control character). Hint: install pysandbox under a plain path"
    )]
    BadPath(PathBuf),
    #[error(
        "`pysandbox setup apparmor` must run as root (it writes {0}). Hint: sudo pysandbox setup apparmor"
    )]
    NotRoot(String),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("apparmor_parser could not load {path}: {msg}. Hint: {hint}")]
    Load {
        path: PathBuf,
        msg: String,
        hint: &'static str,
    },
}

/// The profile for the binary at `exe` (an absolute path).
pub fn profile(exe: &Path) -> Result<String, AppArmorError> {
    let s = exe.to_str().filter(|s| {
        s.starts_with('/') && !s.chars().any(|c| c == '"' || c == '\\' || c.is_control())
    });
    let Some(s) = s else {
        return Err(AppArmorError::BadPath(exe.to_path_buf()));
    };
    Ok(format!(
        "# Written by `pysandbox setup apparmor` for {s}.\n\
         # Lets it create the user namespaces every rootless run needs where\n\
         # kernel.apparmor_restrict_unprivileged_userns=1 (Ubuntu 24.04's default).\n\
         # Local additions go in {PROFILE_DIR}/local/{PROFILE_NAME}.\n\
         abi <abi/4.0>,\n\
         include <tunables/global>\n\
         \n\
         profile {PROFILE_NAME} \"{s}\" flags=(unconfined) {{\n  userns,\n\n  include if exists <local/{PROFILE_NAME}>\n}}\n"
    ))
}

/// Writes the profile for `exe` into `dir` and loads it (replacing an older one).
/// Returns the file written.
pub fn install(exe: &Path, dir: &Path) -> Result<PathBuf, AppArmorError> {
    let text = profile(exe)?;
    let path = dir.join(PROFILE_NAME);
    if crate::sys::euid() != 0 || !crate::sys::in_initial_userns() {
        return Err(AppArmorError::NotRoot(path.display().to_string()));
    }
    fs::write(&path, text).map_err(|source| AppArmorError::Write {
        path: path.clone(),
        source,
    })?;
    let out = Command::new("apparmor_parser")
        .arg("--replace")
        .arg(&path)
        .output();
    let fail = |msg: String, hint| AppArmorError::Load {
        path: path.clone(),
        msg,
        hint,
    };
    match out {
        Ok(o) if o.status.success() => Ok(path),
        Ok(o) => Err(fail(
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
                .trim()
                .to_string(),
            "AppArmor 4.0 or newer is needed for the `userns,` rule (Ubuntu 24.04+)",
        )),
        Err(e) => Err(fail(e.to_string(), "apt-get install apparmor")),
    }
}

/// Whether a profile named `pysandbox` is loaded (root can read the list).
pub fn loaded() -> Option<bool> {
    let list = fs::read_to_string("/sys/kernel/security/apparmor/profiles").ok()?;
    Some(
        list.lines()
            .any(|l| l.split_whitespace().next() == Some(PROFILE_NAME)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_names_the_binary_and_allows_userns() {
        let p = profile(Path::new("/usr/local/bin/pysandbox")).unwrap();
        assert!(p.contains("profile pysandbox \"/usr/local/bin/pysandbox\" flags=(unconfined) {"));
        assert!(p.contains("\n  userns,\n"));
        assert!(p.starts_with("# Written by"));
        // A space is fine (quoted); quotes and relative paths are refused.
        assert!(profile(Path::new("/opt/my tools/pysandbox")).is_ok());
        assert!(profile(Path::new("/opt/a\"b/pysandbox")).is_err());
        assert!(profile(Path::new("pysandbox")).is_err());
    }
}
