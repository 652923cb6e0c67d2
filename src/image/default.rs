//! The default image: made from the host's Python by `rootfs-builder` on first use and
//! kept in the OCI store as an ordinary image tagged `default` (one plain tar layer, its
//! root file system adopted as the store's unpacked tree, so nothing is unpacked). What
//! it was made from is in its config's labels (builder version, host interpreter, the
//! host files whose change triggers a rebuild, the Python version); a run checks them
//! with a few `stat`s and rebuilds when one changed. Concurrent first runs build once
//! (a lock in the store), the others wait and reuse it.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::labels::{
    LABEL_DEFAULT_BUILDER, LABEL_DEFAULT_HOST_PYTHON, LABEL_DEFAULT_TRIGGERS, LABEL_PYTHON,
};
use super::store::{self, Store};
use super::{ImageError, ResolvedImage, from_store_config};
use crate::dirs;
use crate::sys;
use std::os::fd::AsRawFd;

/// The default image's tag in the store.
pub const DEFAULT_TAG: &str = "default";

/// Identity of a host file: if any of these change, the image is stale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileStamp {
    path: PathBuf,
    size: u64,
    mtime_ns: i128,
    ino: u64,
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        let m = fs::metadata(path).ok()?;
        Some(FileStamp {
            path: path.to_owned(),
            size: m.size(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ino: m.ino(),
        })
    }
    fn still_valid(&self) -> bool {
        FileStamp::of(&self.path).as_ref() == Some(self)
    }
}

/// The host interpreter the default image is made from: `$PYSANDBOX_PYTHON`, else
/// `python3` on PATH.
pub fn host_python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PYSANDBOX_PYTHON") {
        return Some(PathBuf::from(p));
    }
    // Without PATH (e.g. `env -i`), the conventional system directories, as execvp does.
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| std::ffi::OsString::from("/usr/local/bin:/usr/bin:/bin"));
    std::env::split_paths(&path)
        .map(|dir| dir.join("python3"))
        .find(|cand| fs::metadata(cand).is_ok_and(|m| m.is_file()) && sys::executable(cand))
}

/// The stored default image's manifest digest and Python version, if it is current
/// for `python`.
fn current(store: &Store, python: &Path) -> Option<Current> {
    let digest = store.resolve(DEFAULT_TAG).ok()??;
    let config = store.config(&store.manifest(&digest).ok()?).ok()?;
    let label = |k: &str| config["config"]["Labels"][k].as_str().map(str::to_string);
    let builder = label(LABEL_DEFAULT_BUILDER)?;
    let host = label(LABEL_DEFAULT_HOST_PYTHON)?;
    let stamps: Vec<FileStamp> = serde_json::from_str(&label(LABEL_DEFAULT_TRIGGERS)?).ok()?;
    let fresh = builder == rootfs_builder::BUILDER_VERSION.to_string()
        && Path::new(&host) == python
        && stamps.iter().all(FileStamp::still_valid);
    let version = label(LABEL_PYTHON).unwrap_or_default();
    fresh.then_some(Current {
        digest,
        version,
        config,
    })
}

/// The stored default image, current for the host's interpreter.
struct Current {
    digest: String,
    version: String,
    config: serde_json::Value,
}

fn display_name(version: &str) -> String {
    format!("default (Python {version})")
}

/// One line on the default image for `pysandbox doctor` (never builds it).
pub fn describe() -> Result<String, ImageError> {
    let python = host_python().ok_or(ImageError::NoHostPython)?;
    let store = Store::open_default()?;
    Ok(match current(&store, &python) {
        Some(c) => format!(
            "{} in the image store ({}, tagged `{DEFAULT_TAG}`)",
            display_name(&c.version),
            &c.digest[..c.digest.len().min(19)]
        ),
        None => format!(
            "not built yet (or stale): the next run builds it from {}",
            python.display()
        ),
    })
}

/// The default image, built first if it is missing or stale; complete (tagged) when this
/// returns.
pub fn resolve() -> Result<ResolvedImage, ImageError> {
    resolve_with(false)
}

/// The default image for a run. When it has to be built, the run uses the new tree at
/// once; its layer, config and tag are written once the runtime has staged the tree
/// ([`ResolvedImage::staged`]), by a detached process, off the run's critical path.
/// Until then other runs wait for it (the build's lock stays held). The report of the
/// run that built it has no image digest.
pub fn resolve_for_run() -> Result<ResolvedImage, ImageError> {
    resolve_with(true)
}

fn resolve_with(deferred: bool) -> Result<ResolvedImage, ImageError> {
    let python = host_python().ok_or(ImageError::NoHostPython)?;
    let store = Store::open_default()?;
    // Fast path, every run: three small reads and a few stats.
    let found = match current(&store, &python) {
        Some(found) => found,
        None => {
            // One builder at a time per store; the others wait and reuse its result.
            let lock = store.lock(".default.lock", libc::LOCK_EX)?;
            match current(&store, &python) {
                Some(found) => found,
                None => {
                    let built = build_tree(&store, &python)?;
                    if deferred {
                        return built.into_image(lock);
                    }
                    built.complete()?;
                    current(&store, &python).ok_or_else(|| ImageError::Invalid {
                        path: store.root().to_owned(),
                        why: "the default image just built is not current; report this as a bug"
                            .into(),
                    })?
                }
            }
        }
    };
    let mut img = from_store_config(&store, DEFAULT_TAG, &found.digest, &found.config)?;
    img.name = display_name(&found.version);
    Ok(img)
}

/// A default image whose tree is built (in the store's tmp) but not stored yet.
struct Built {
    store: Store,
    /// The build's folder under the store's tmp (`rootfs/` inside).
    tmp: PathBuf,
    version: String,
    labels: BTreeMap<String, String>,
    /// The default image this one replaces.
    previous: Option<String>,
    /// No prune while the tree and blobs are in tmp but untagged.
    guard: super::store::WriteGuard,
}

/// Builds the default image's tree into the store's tmp.
fn build_tree(store: &Store, python: &Path) -> Result<Built, ImageError> {
    use std::io::IsTerminal;
    let build_err = |source| ImageError::Build {
        python: python.to_owned(),
        source,
    };
    let host = rootfs_builder::probe_python(python).map_err(build_err)?;
    if io::stderr().is_terminal() {
        eprintln!(
            "pysandbox: building the default image from Python {} ({}); this happens once",
            host.version,
            host.executable.display()
        );
    }
    let previous = store.resolve(DEFAULT_TAG).ok().flatten();
    let guard = store.write_guard()?;
    let tmp = store.tmp_path("default");
    let tree = tmp.join("rootfs");
    let t = std::time::Instant::now();
    let built = rootfs_builder::build_rootfs(&host, &tree)
        .map_err(build_err)
        .and_then(|m| {
            // Mounted read-only by the run: its mount points must exist before.
            super::add_mount_points(&tree).map_err(store_io(&tree))?;
            Ok(m)
        });
    let manifest = match built {
        Ok(m) => m,
        Err(e) => {
            let _ = sys::fs::remove_path(&tmp);
            return Err(e);
        }
    };
    tracing::debug!(
        target: "pysandbox::timing",
        "default image: tree {} ms",
        t.elapsed().as_millis()
    );
    let mut stamps: Vec<FileStamp> = manifest
        .rebuild_triggers
        .iter()
        .filter_map(|p| FileStamp::of(p))
        .collect();
    stamps.extend(FileStamp::of(python));
    let labels = BTreeMap::from([
        (
            LABEL_DEFAULT_BUILDER.to_string(),
            rootfs_builder::BUILDER_VERSION.to_string(),
        ),
        (
            LABEL_DEFAULT_HOST_PYTHON.to_string(),
            python.display().to_string(),
        ),
        (
            LABEL_DEFAULT_TRIGGERS.to_string(),
            serde_json::to_string(&stamps).expect("stamps serialize"),
        ),
        (LABEL_PYTHON.to_string(), host.version.clone()),
    ]);
    Ok(Built {
        store: store.clone(),
        tmp,
        version: host.version,
        labels,
        previous,
        guard,
    })
}

impl Built {
    /// The run's image: the tree where it is. [`ResolvedImage::staged`] (or dropping the
    /// image) stores it, with the build's `lock` held until it is tagged.
    fn into_image(self, lock: fs::File) -> Result<ResolvedImage, ImageError> {
        let tree = self.tmp.join("rootfs");
        let mut img = super::rootfs_with(&tree, Some(super::IMAGE_PATH), super::Tree::Store)?;
        img.env = vec![("PATH".to_string(), super::IMAGE_PATH.to_string())];
        img.name = display_name(&self.version);
        img.set_finish(Box::new(move |background: bool| {
            // The build's lock is held (by whoever holds `lock`) until the image is stored.
            let store = move |built: Built, _lock: fs::File| {
                if let Err(e) = built.complete() {
                    tracing::warn!("storing the default image: {e}");
                }
            };
            if background {
                let keep = [lock.as_raw_fd(), self.guard.as_raw_fd()];
                match sys::fork_detached(&keep) {
                    Ok(true) => {
                        store(self, lock);
                        sys::exit_now(0);
                    }
                    // This process's copies of the lock and the guard close here; the
                    // child's keep them.
                    Ok(false) => return,
                    Err(_) => {} // then here and now
                }
            }
            store(self, lock);
        }));
        Ok(img)
    }

    /// Packs the layer, writes config and manifest, adopts the tree, tags it `default`;
    /// then prunes the image it replaces (when the store is idle) and the old side cache.
    fn complete(self) -> Result<(), ImageError> {
        let tree = self.tmp.join("rootfs");
        let store = self.store.clone();
        let result = (|| -> Result<String, ImageError> {
            let t = std::time::Instant::now();
            let layer_file = self.tmp.join("layer.tar");
            let f = fs::File::create(&layer_file).map_err(store_io(&layer_file))?;
            let layer = rootfs_builder::layer::write_plain_layer(
                &tree,
                rootfs_builder::layer::Source::Tree,
                io::BufWriter::with_capacity(1 << 20, f),
            )
            .map_err(store_io(&layer_file))?;
            store.adopt_blob(&layer_file, &layer.digest)?;
            tracing::debug!(
                target: "pysandbox::timing",
                "default image: layer {} ms",
                t.elapsed().as_millis()
            );
            let settings = rootfs_builder::oci::ImageSettings {
                env: vec![format!("PATH={}", super::IMAGE_PATH)],
                cmd: vec![rootfs_builder::IMAGE_PYTHON.into()],
                user: Some("1000:1000".into()),
                working_dir: Some(crate::spec::DATA_DIR.into()),
                labels: self.labels.clone(),
            };
            let layers = [layer];
            let config = rootfs_builder::oci::config_json(&layers, &settings);
            let (cd, cs) = store.put_bytes(&config)?;
            let (md, _) =
                store.put_bytes(&rootfs_builder::oci::manifest_json((&cd, cs), &layers))?;
            store.adopt_rootfs(&md, &tree)?;
            store.tag(DEFAULT_TAG, &md)?;
            Ok(md)
        })();
        let _ = sys::fs::remove_path(&self.tmp);
        let previous = self.previous.clone();
        drop(self); // the write guard: prune may run now
        let digest = result?;
        if previous.is_some_and(|p| p != digest) {
            // The previous default image is untagged now: free its space unless the store
            // is busy (then `pysandbox image prune` does it later).
            let _ = store.try_prune();
        }
        remove_side_cache();
        Ok(())
    }
}

fn store_io(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |e| ImageError::Store(store::io_err(path)(e))
}

/// Removes the default image of pysandbox versions before the store held it
/// (`CACHE/images/default`), except builds a run of such a version still holds.
fn remove_side_cache() {
    let Ok(cache) = dirs::cache_dir() else { return };
    let dir = cache.join("images").join("default");
    let Ok(rd) = fs::read_dir(&dir) else { return };
    for ent in rd.flatten() {
        let p = ent.path();
        let in_use = ent.file_type().is_ok_and(|t| t.is_dir())
            && p.join(".in-use").exists()
            && sys::lock::lock_file(&p.join(".in-use"), libc::LOCK_EX | libc::LOCK_NB).is_err();
        if !in_use {
            let _ = sys::fs::remove_path(&p);
        }
    }
    let _ = fs::remove_dir(&dir);
    let _ = fs::remove_dir(cache.join("images"));
}
