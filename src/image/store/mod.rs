//! The OCI image store: content-addressed blobs, tags, and the unpacked root file systems
//! of images, in one per-user directory. Owns the store's layout and its concurrency
//! rules; importing (`archive`) and pulling (`registry`) feed it, the runtime asks it for
//! a root file system.
//!
//! ```text
//! store/                  an OCI image layout itself (skopeo/umoci can read it)
//!   oci-layout
//!   index.json            one descriptor per tag (org.opencontainers.image.ref.name)
//!   blobs/sha256/<hex>    manifests, configs, layers; written tmp + rename, read-only
//!   tmp/                  blobs being written
//!   rootfs/<hex>/rootfs   unpacked image of manifest <hex>, shared read-only by all runs
//!   rootfs/<hex>/.lock    flock: exclusive while unpacking, shared while a run uses it
//!   .gc.lock .index.lock  flocks: writers (shared) vs prune (exclusive); tag updates
//! ```
//!
//! Every blob is verified against its digest whenever it is read (`open_blob` checks at
//! EOF), so a corrupted store is detected, never used. Writers (put_blob, import, pull)
//! hold `.gc.lock` shared and prune holds it exclusive, so prune never removes a blob an
//! import is about to tag. An unpack happens in a temporary directory renamed into place
//! under the digest's exclusive lock: concurrent runs of the same image wait for one
//! unpack and never see a half-written tree; prune skips a tree a run holds.
//!
//! Here: the `Store` handle, its layout and locks. Beside: `blobs` (put, adopt, open,
//! read), `manifests` (manifests, indexes, configs, platforms, layer types), `tags` (the
//! index: tag, resolve, remove), `inspect` (`image ls` and `image inspect`), `rootfs` (the
//! unpacked trees), `gc` (prune and the lock writers hold), `export` (an OCI layout out),
//! `error`.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::unpack::UnpackOptions;
use crate::{dirs, sys};

mod blobs;
mod error;
mod export;
mod gc;
mod inspect;
mod manifests;
mod rootfs;
mod tags;

pub(crate) use blobs::parse_digest;
pub use blobs::{BlobCorrupt, BlobReader, digest_hex, sha256_digest};
pub use error::StoreError;
pub(crate) use error::io_err;
pub use gc::{PruneStats, WriteGuard};
pub use inspect::{ImageDetails, ImageSummary, LayerInfo, UnpackedInfo};
pub use manifests::host_arch;
pub(crate) use manifests::{
    DocKind, RawDescriptor, check_layer_type, doc_kind, parse_index, parse_manifest, pick_platform,
    put_manifest,
};
pub use rootfs::RootfsGuard;

/// Cap on manifests, indexes and configs read into memory.
pub const MAX_JSON: u64 = 4 << 20;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Label listing the Python packages an image was built with (shown by `inspect`).
pub const PACKAGES_LABEL: &str = "org.pysandbox.packages";

pub(crate) use super::progress::ProgressReader;
pub use super::progress::{NoProgress, Progress};

/// The image store. Cheap to open; safe to use from several threads and processes.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// Limits of `unpack_to` and `rootfs`; the defaults when None (made only when an
    /// unpack happens: they ask how many CPUs the cgroup allows, which costs reads).
    unpack_opts: Option<UnpackOptions>,
}

impl Store {
    /// The per-user store: `dirs::data_dir()/store`.
    pub fn open_default() -> Result<Store, StoreError> {
        Store::open(&dirs::data_dir()?.join("store"))
    }

    /// Opens the store at `root`, creating it if missing.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        for d in ["blobs/sha256", "tmp", "rootfs"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let layout = root.join("oci-layout");
        if !layout.exists() {
            write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let store = Store {
            root: root.to_owned(),
            unpack_opts: None,
        };
        if !root.join("index.json").exists() {
            let _l = store.lock(".index.lock", libc::LOCK_EX)?;
            if !root.join("index.json").exists() {
                store.save_index(&[])?;
            }
        }
        Ok(store)
    }

    /// Limits applied by `unpack_to` and `rootfs`.
    pub fn with_unpack_options(mut self, opts: UnpackOptions) -> Store {
        self.unpack_opts = Some(opts);
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A fresh path under the store's `tmp/` (same file system as the blobs, so a file
    /// written there can be renamed in). Nothing is created. Prune removes leftovers
    /// there only once they are a day old; hold `write_guard` while using it to be safe.
    pub fn tmp_path(&self, what: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let id = sys::random_id("").unwrap_or_else(|_| {
            format!(
                "{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            )
        });
        self.root.join("tmp").join(format!(".{what}-{id}"))
    }

    /// Takes a flock on a store-wide lock file.
    pub(crate) fn lock(&self, name: &str, how: libc::c_int) -> Result<File, StoreError> {
        let p = self.root.join(name);
        sys::lock::lock_file(&p, how).map_err(io_err(&p))
    }
}

pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension(sys::random_id("tmp-").map_err(io_err(path))?);
    let res = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res.map_err(io_err(path))
}
