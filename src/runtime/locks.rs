//! Per-run lock files: a run holds `<id>.lock` flocked while it lives, with the path of
//! its cgroup v2 cgroup in it; the next run sweeps the files and the cgroups of runs
//! whose pysandbox died.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::{RuntimeError, io_err};
use crate::{limits, sys};

/// Removes the lock files and the cgroups of runs whose pysandbox died.
pub(super) fn sweep(locks: &Path) {
    let Ok(rd) = fs::read_dir(locks) else { return };
    // Whether nobody holds the lock (the descriptor keeps it until dropped).
    let free = |p: &Path| {
        fs::OpenOptions::new()
            .write(true)
            .open(p)
            .is_ok_and(|f| sys::lock::flock(&f, libc::LOCK_EX | libc::LOCK_NB).is_ok())
    };
    for ent in rd.flatten() {
        let name = ent.file_name();
        let Some(n) = name.to_str() else { continue };
        // A lock whose run was killed before it got its name (take_lock): no cgroup yet.
        // Not a fresh one, which its run may not have flocked yet.
        if n.starts_with('.') && n.ends_with(".tmp") {
            let old = ent
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|a| a.as_secs() >= 10));
            if old && free(&ent.path()) {
                let _ = fs::remove_file(ent.path());
            }
            continue;
        }
        let Some(id) = n.strip_suffix(".lock") else {
            continue;
        };
        if !free(&ent.path()) {
            continue; // its pysandbox is alive
        }
        let recorded = fs::read(ent.path()).unwrap_or_default();
        let v2_gone = match limits::cgroup2::RunCgroup::recorded(
            id,
            Path::new(std::ffi::OsStr::from_bytes(&recorded)),
        ) {
            Some(cg) => cg.remove(),
            None => true,
        };
        if limits::remove_stale_cgroups(id).is_empty() && v2_gone {
            let _ = fs::remove_file(ent.path());
        }
    }
}

/// Creates `<id>.lock` already flocked (via a temporary name, so a sweeper never sees an
/// unlocked lock file).
pub(super) fn take_lock(locks: &Path, id: &str) -> Result<fs::File, RuntimeError> {
    let tmp = locks.join(format!(".{id}.tmp"));
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err("creating the run's lock file"))?;
    sys::lock::flock(&f, libc::LOCK_EX).map_err(io_err("locking the run's lock file"))?;
    fs::rename(&tmp, locks.join(format!("{id}.lock")))
        .map_err(io_err("creating the run's lock file"))?;
    Ok(f)
}
