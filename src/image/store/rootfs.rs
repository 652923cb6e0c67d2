//! Unpacked root file systems: one per manifest, unpacked once under an exclusive lock,
//! held shared by the runs that use it.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{
    NoProgress, Progress, Store, StoreError, check_layer_type, digest_hex, io_err, write_atomic,
};
use crate::image::unpack::{UnpackStats, Unpacker};
use crate::sys;

/// An unpacked root file system in use: the shared lock keeps prune away until dropped.
#[derive(Debug)]
pub struct RootfsGuard {
    pub path: PathBuf,
    _lock: File,
}

impl Store {
    /// Makes `tree`, a root file system built under the store's `tmp/` from exactly the
    /// layers of `manifest_digest`, the image's unpacked tree (unless one is there
    /// already), and holds it as [`Store::rootfs`] does: nothing is unpacked.
    pub fn adopt_rootfs(
        &self,
        manifest_digest: &str,
        tree: &Path,
    ) -> Result<RootfsGuard, StoreError> {
        let dir = self.root.join("rootfs").join(digest_hex(manifest_digest)?);
        let dest = dir.join("rootfs");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        // A prune that removes `dir` meanwhile makes lock_here fail: then `rootfs`
        // unpacks the layers instead, which gives the same tree.
        if let Some(_lock) = lock_here(&dir.join(".lock"), libc::LOCK_EX)?
            && !dest.is_dir()
        {
            crate::image::add_mount_points(tree).map_err(io_err(tree))?;
            fs::rename(tree, &dest).map_err(io_err(&dest))?;
        }
        self.rootfs(manifest_digest, &NoProgress)
    }

    /// The unpacked root file system of an image, unpacked on first use (cached by manifest
    /// digest, shared read-only by all runs). Concurrent calls wait for one unpack. The
    /// guard holds a shared lock on it: prune leaves it alone until the guard is dropped.
    pub fn rootfs(
        &self,
        manifest_digest: &str,
        progress: &dyn Progress,
    ) -> Result<RootfsGuard, StoreError> {
        let hexd = digest_hex(manifest_digest)?;
        let dir = self.root.join("rootfs").join(hexd);
        let tree = dir.join("rootfs");
        let lock_path = dir.join(".lock");
        loop {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            let Some(lock) = lock_here(&lock_path, libc::LOCK_SH)? else {
                continue;
            };
            if tree.is_dir() {
                return Ok(RootfsGuard {
                    path: tree,
                    _lock: lock,
                });
            }
            sys::lock::flock(&lock, libc::LOCK_UN).map_err(io_err(&lock_path))?;
            drop(lock);
            let Some(lock) = lock_here(&lock_path, libc::LOCK_EX)? else {
                continue;
            };
            if !tree.is_dir() {
                clean_tmp_dirs(&dir);
                let tmp = dir.join(sys::random_id(".tmp-").map_err(io_err(&dir))?);
                fs::create_dir(&tmp).map_err(io_err(&tmp))?;
                let stats = match self.unpack_to(manifest_digest, &tmp, progress) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = sys::fs::remove_path(&tmp);
                        return Err(e);
                    }
                };
                if let Ok(j) = serde_json::to_vec_pretty(&stats) {
                    let _ = write_atomic(&dir.join("unpack.json"), &j);
                }
                // pysandbox mounts the root file system read-only: its mount points must
                // exist before any run sees it.
                if let Err(e) = crate::image::add_mount_points(&tmp) {
                    let _ = sys::fs::remove_path(&tmp);
                    return Err(io_err(&tmp)(e));
                }
                fs::rename(&tmp, &tree).map_err(io_err(&tree))?;
            }
            // Downgrade. Not atomic: prune may take the tree in between; then start over.
            sys::lock::flock(&lock, libc::LOCK_SH).map_err(io_err(&lock_path))?;
            if tree.is_dir() && same_file(&lock, &lock_path) {
                return Ok(RootfsGuard {
                    path: tree,
                    _lock: lock,
                });
            }
        }
    }

    /// Unpacks an image's layers into `dest` (created if missing; must be empty).
    pub fn unpack_to(
        &self,
        manifest_digest: &str,
        dest: &Path,
        progress: &dyn Progress,
    ) -> Result<UnpackStats, StoreError> {
        let m = self.manifest(manifest_digest)?;
        for l in m.layers() {
            check_layer_type(l)?;
        }
        fs::create_dir_all(dest).map_err(io_err(dest))?;
        if fs::read_dir(dest).map_err(io_err(dest))?.next().is_some() {
            return Err(StoreError::Io {
                path: dest.to_owned(),
                source: io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "the destination of an unpack must be empty",
                ),
            });
        }
        let mut u = Unpacker::new(dest, self.unpack_opts.clone().unwrap_or_default())?;
        for l in m.layers() {
            let d = l.digest().to_string();
            let blob = self.open_blob(&d)?;
            let len = blob.len();
            if len != l.size() {
                return Err(StoreError::Corrupt {
                    digest: d,
                    why: format!("{len} bytes where the manifest says {}", l.size()),
                });
            }
            let short = &d[..d.len().min(19)];
            progress.start(&format!("unpacking {short}"), Some(l.size()));
            let r = u.apply_blob(&d, blob, progress);
            progress.finish();
            r?;
        }
        Ok(u.finish()?)
    }
}

/// Locks `path`, or `None` when the file was removed or replaced meanwhile (prune renamed
/// its directory away): the caller starts over.
fn lock_here(path: &Path, how: libc::c_int) -> Result<Option<File>, StoreError> {
    let f = match sys::lock::lock_file(path, how) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    Ok(same_file(&f, path).then_some(f))
}

fn same_file(f: &File, path: &Path) -> bool {
    match (f.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

/// Removes unpacks a dead process left in `dir` (the caller holds its exclusive lock).
pub(super) fn clean_tmp_dirs(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for ent in rd.flatten() {
        if ent.file_name().to_string_lossy().starts_with(".tmp-") {
            let _ = sys::fs::remove_path(&ent.path());
        }
    }
}
