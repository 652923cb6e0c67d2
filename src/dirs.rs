//! Per-user directories: the image cache (XDG cache dir) and the runtime dir (lock files
//! and the mount point of each run's private tmpfs). Owns the rules for choosing them
//! safely: a directory pysandbox trusts must belong to the caller and not be writable by
//! anyone else, or another user could plant an image or a state file.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum DirsError {
    #[error("cannot create {path}: {source}. Hint: set {var} to a directory you own")]
    Create {
        path: PathBuf,
        var: &'static str,
        source: io::Error,
    },
    #[error(
        "refusing to use {path}: it is owned by uid {owner} (not you) or writable by others. Hint: remove it, or set {var} to a directory you own"
    )]
    Unsafe {
        path: PathBuf,
        owner: u32,
        var: &'static str,
    },
}

fn env_dir(var: &str) -> Option<PathBuf> {
    let v = std::env::var_os(var)?;
    let p = PathBuf::from(v);
    p.is_absolute().then_some(p)
}

/// A base directory is usable when it exists and belongs to us (so `$HOME=/root` inherited
/// through `setpriv` by an ordinary user is skipped instead of failing).
fn owned_by_us(p: &Path) -> bool {
    fs::metadata(p)
        .map(|m| m.is_dir() && m.uid() == sys::euid())
        .unwrap_or(false)
}

/// Creates `path` (mode `mode`) if missing, then checks it is ours and not writable by
/// group or others.
pub fn ensure_private_dir(path: &Path, mode: u32, var: &'static str) -> Result<(), DirsError> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
    {
        Ok(()) => {}
        Err(e) => {
            return Err(DirsError::Create {
                path: path.to_owned(),
                var,
                source: e,
            });
        }
    }
    let m = fs::symlink_metadata(path).map_err(|e| DirsError::Create {
        path: path.to_owned(),
        var,
        source: e,
    })?;
    if !m.is_dir() || m.uid() != sys::euid() || m.permissions().mode() & 0o022 != 0 {
        return Err(DirsError::Unsafe {
            path: path.to_owned(),
            owner: m.uid(),
            var,
        });
    }
    Ok(())
}

/// A fallback under a shared sticky directory, keyed by the uid the caller has outside any
/// user namespace it runs in (so `unshare -r` does not collide with real root).
fn shared_fallback(base: &str, what: &str) -> PathBuf {
    let uid = sys::outer_uid(sys::euid());
    PathBuf::from(format!("{base}/pysandbox-{uid}/{what}"))
}

/// `$XDG_CACHE_HOME/pysandbox`, else `$HOME/.cache/pysandbox`, else
/// `/var/tmp/pysandbox-UID/cache`.
pub fn cache_dir() -> Result<PathBuf, DirsError> {
    let dir = if let Some(x) = env_dir("XDG_CACHE_HOME").filter(|p| owned_by_us(p)) {
        x.join("pysandbox")
    } else if let Some(h) = env_dir("HOME").filter(|p| owned_by_us(p)) {
        h.join(".cache").join("pysandbox")
    } else {
        let fb = shared_fallback("/var/tmp", "cache");
        if let Some(parent) = fb.parent() {
            ensure_private_dir(parent, 0o700, "XDG_CACHE_HOME")?;
        }
        fb
    };
    ensure_private_dir(&dir, 0o700, "XDG_CACHE_HOME")?;
    Ok(dir)
}

/// `$XDG_DATA_HOME/pysandbox`, else `$HOME/.local/share/pysandbox`, else
/// `/var/tmp/pysandbox-UID/data`: the image store.
pub fn data_dir() -> Result<PathBuf, DirsError> {
    let dir = if let Some(x) = env_dir("XDG_DATA_HOME").filter(|p| owned_by_us(p)) {
        x.join("pysandbox")
    } else if let Some(h) = env_dir("HOME").filter(|p| owned_by_us(p)) {
        h.join(".local").join("share").join("pysandbox")
    } else {
        let fb = shared_fallback("/var/tmp", "data");
        if let Some(parent) = fb.parent() {
            ensure_private_dir(parent, 0o700, "XDG_DATA_HOME")?;
        }
        fb
    };
    ensure_private_dir(&dir, 0o700, "XDG_DATA_HOME")?;
    Ok(dir)
}

/// The runtime dir. Real root uses `/run/pysandbox` (mode 0711: the sandbox's unprivileged
/// ids must be able to traverse to the staged mounts); others `$XDG_RUNTIME_DIR/pysandbox`
/// or `/tmp/pysandbox-UID/run`.
pub fn runtime_dir(real_root: bool) -> Result<PathBuf, DirsError> {
    if real_root {
        let d = PathBuf::from("/run/pysandbox");
        ensure_private_dir(&d, 0o711, "XDG_RUNTIME_DIR")?;
        // An older pysandbox or umask may have created it 0700; the sandbox needs +x.
        let _ = fs::set_permissions(&d, fs::Permissions::from_mode(0o711));
        return Ok(d);
    }
    let dir = if let Some(x) = env_dir("XDG_RUNTIME_DIR").filter(|p| owned_by_us(p)) {
        x.join("pysandbox")
    } else {
        let fb = shared_fallback("/tmp", "run");
        if let Some(parent) = fb.parent() {
            ensure_private_dir(parent, 0o700, "XDG_RUNTIME_DIR")?;
        }
        fb
    };
    ensure_private_dir(&dir, 0o700, "XDG_RUNTIME_DIR")?;
    Ok(dir)
}
