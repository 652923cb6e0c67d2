//! Prune: the gc lock writers hold shared, and removing what no tag references.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;

use serde::Serialize;

use super::rootfs::clean_tmp_dirs;
use super::tags::ref_name;
use super::{Store, StoreError, digest_hex, io_err};
use crate::sys;

/// What `prune` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PruneStats {
    pub blobs_removed: u64,
    pub bytes_freed: u64,
    pub rootfs_removed: u64,
    /// Unpacked trees of untagged images kept because a run uses them.
    pub rootfs_in_use: u64,
}

impl std::fmt::Display for PruneStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "removed {} blobs ({} bytes) and {} unpacked images",
            self.blobs_removed, self.bytes_freed, self.rootfs_removed
        )?;
        if self.rootfs_in_use > 0 {
            write!(f, "; {} unpacked images kept: in use", self.rootfs_in_use)?;
        }
        Ok(())
    }
}

/// Held by writers (see `Store::write_guard`).
#[derive(Debug)]
pub struct WriteGuard {
    _lock: File,
}

impl std::os::fd::AsRawFd for WriteGuard {
    /// The lock's descriptor (a process that inherits it holds the guard too).
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self._lock.as_raw_fd()
    }
}

impl Store {
    /// Keeps prune from running until dropped: take it before writing blobs that a later
    /// `tag` will reference (import and pull do so themselves).
    pub fn write_guard(&self) -> Result<WriteGuard, StoreError> {
        Ok(WriteGuard {
            _lock: self.lock(".gc.lock", libc::LOCK_SH)?,
        })
    }

    /// Removes blobs no tag references, leftovers of interrupted writes, and the unpacked
    /// trees of untagged images that no run holds.
    pub fn prune(&self) -> Result<PruneStats, StoreError> {
        let gc = self.lock(".gc.lock", libc::LOCK_EX)?;
        self.prune_locked(gc)
    }

    /// [`Store::prune`], unless another process writes to the store or prunes it now
    /// (then `None`, at once).
    pub fn try_prune(&self) -> Result<Option<PruneStats>, StoreError> {
        let p = self.root.join(".gc.lock");
        match sys::lock::lock_file(&p, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(gc) => self.prune_locked(gc).map(Some),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(io_err(&p)(e)),
        }
    }

    fn prune_locked(&self, _gc: File) -> Result<PruneStats, StoreError> {
        let _idx = self.lock(".index.lock", libc::LOCK_EX)?;
        let keep = self.referenced_blobs()?;
        let mut stats = PruneStats::default();
        self.remove_blobs_except(&keep, &mut stats)?;
        self.clean_tmp()?;
        self.remove_rootfs_except(&keep, &mut stats)?;
        Ok(stats)
    }

    /// The hex digests of every manifest, config and layer a tag references (the caller
    /// holds the index lock).
    fn referenced_blobs(&self) -> Result<HashSet<String>, StoreError> {
        let mut keep: HashSet<String> = HashSet::new();
        for d in self.load_index()? {
            let digest = d.digest().to_string();
            let m = self.manifest(&digest).map_err(|e| StoreError::Corrupt {
                digest: digest.clone(),
                why: format!(
                    "cannot read the manifest of {:?} ({e}); prune stopped so that its layers are not removed",
                    ref_name(&d).unwrap_or("?")
                ),
            })?;
            keep.insert(digest_hex(&digest)?.to_string());
            keep.insert(digest_hex(m.config().digest().as_ref())?.to_string());
            for l in m.layers() {
                keep.insert(digest_hex(l.digest().as_ref())?.to_string());
            }
        }
        Ok(keep)
    }

    fn remove_blobs_except(
        &self,
        keep: &HashSet<String>,
        stats: &mut PruneStats,
    ) -> Result<(), StoreError> {
        let blobs = self.root.join("blobs/sha256");
        for ent in fs::read_dir(&blobs).map_err(io_err(&blobs))?.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            if keep.contains(&name) {
                continue;
            }
            let size = ent.metadata().map(|m| m.len()).unwrap_or(0);
            let p = ent.path();
            fs::remove_file(&p).map_err(io_err(&p))?;
            stats.blobs_removed += 1;
            stats.bytes_freed += size;
        }
        Ok(())
    }

    /// Blob temp files (put-*) belong to writers, which hold the gc lock: none runs now.
    /// Other temp paths (tmp_path) are removed once a day old.
    fn clean_tmp(&self) -> Result<(), StoreError> {
        let tmp = self.root.join("tmp");
        let day_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(86400);
        for ent in fs::read_dir(&tmp).map_err(io_err(&tmp))?.flatten() {
            let blob_tmp = ent.file_name().to_string_lossy().starts_with("put-");
            let old = ent
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < day_ago);
            if blob_tmp || old {
                let _ = sys::fs::remove_path(&ent.path());
            }
        }
        Ok(())
    }

    /// Removes the unpacked trees of untagged images that no run holds (and leftovers of
    /// earlier removals and unpacks).
    fn remove_rootfs_except(
        &self,
        keep: &HashSet<String>,
        stats: &mut PruneStats,
    ) -> Result<(), StoreError> {
        let rootfs = self.root.join("rootfs");
        for ent in fs::read_dir(&rootfs).map_err(io_err(&rootfs))?.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            let p = ent.path();
            if name.starts_with(".trash-") {
                let _ = sys::fs::remove_path(&p);
                continue;
            }
            let lock_path = p.join(".lock");
            let Ok(lock) = sys::lock::lock_file(&lock_path, libc::LOCK_EX | libc::LOCK_NB) else {
                if !keep.contains(&name) {
                    stats.rootfs_in_use += 1;
                }
                continue;
            };
            if keep.contains(&name) {
                clean_tmp_dirs(&p);
                continue;
            }
            // Renamed away under the lock, so a run that opens the lock afterwards starts
            // afresh; removed after.
            let trash = rootfs.join(sys::random_id(".trash-").map_err(io_err(&rootfs))?);
            fs::rename(&p, &trash).map_err(io_err(&p))?;
            drop(lock);
            sys::fs::remove_path(&trash).map_err(io_err(&trash))?;
            stats.rootfs_removed += 1;
        }
        Ok(())
    }
}
