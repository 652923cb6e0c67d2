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

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::unpack::{UnpackError, UnpackOptions, UnpackStats, Unpacker};
use crate::{dirs, sys};

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

/// Reports the progress of long operations (downloads, unpacking).
pub trait Progress {
    fn start(&self, what: &str, total: Option<u64>);
    fn advance(&self, n: u64);
    fn finish(&self);
}

/// A `Progress` that shows nothing.
pub struct NoProgress;

/// A reader that reports the bytes read through it to a [`Progress`].
pub(crate) struct ProgressReader<'a, R> {
    pub inner: R,
    pub progress: &'a dyn Progress,
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

impl Progress for NoProgress {
    fn start(&self, _what: &str, _total: Option<u64>) {}
    fn advance(&self, _n: u64) {}
    fn finish(&self) {}
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Dirs(#[from] dirs::DirsError),
    #[error("image store: {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("reading {what}: {source}")]
    Read { what: String, source: io::Error },
    #[error("{0:?} is not a sha256 digest (expected sha256:<64 lowercase hex digits>)")]
    BadDigest(String),
    #[error(
        "{what} {digest} is missing from the image store. Hint: pysandbox image rm NAME and pull/import it again"
    )]
    MissingBlob { what: String, digest: String },
    #[error(
        "blob {digest} is corrupt: {why}. Hint: pysandbox image rm NAME and pull/import it again"
    )]
    Corrupt { digest: String, why: String },
    #[error(
        "{what}: expected {expected} ({expected_size} bytes), got {actual} ({actual_size} bytes): the source is corrupt or was tampered with"
    )]
    Mismatch {
        what: String,
        expected: String,
        expected_size: u64,
        actual: String,
        actual_size: u64,
    },
    #[error("{what} is larger than {max} bytes; refusing it")]
    TooLarge { what: String, max: u64 },
    #[error(
        "image {0:?} not found. Hint: pysandbox image ls lists the images; pull or import it first"
    )]
    NotFound(String),
    #[error("invalid image name {name:?}: {why}")]
    BadName { name: String, why: String },
    #[error("{what} {digest} is not valid: {why}")]
    BadJson {
        what: String,
        digest: String,
        why: String,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error("cannot import {path}: {why}")]
    Import { path: PathBuf, why: String },
    #[error("pulling {reference}: {why}")]
    Pull { reference: String, why: String },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One line of `image ls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageSummary {
    pub name: String,
    /// Manifest digest.
    pub digest: String,
    /// Compressed size: manifest, config and layers.
    pub size: u64,
    /// `created` of the image config.
    pub created: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerInfo {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

/// The unpacked root file system of an image, when there is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnpackedInfo {
    pub path: PathBuf,
    /// Bytes of regular files.
    pub bytes: u64,
    pub files: u64,
}

/// `image inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageDetails {
    pub name: String,
    pub digest: String,
    pub media_type: String,
    pub config_digest: String,
    pub layers: Vec<LayerInfo>,
    /// Compressed size: manifest, config and layers.
    pub size: u64,
    pub architecture: Option<String>,
    pub os: Option<String>,
    pub created: Option<String>,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Manifest annotations.
    pub annotations: BTreeMap<String, String>,
    /// The `org.pysandbox.packages` label.
    pub packages: Option<String>,
    pub unpacked: Option<UnpackedInfo>,
}

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

/// An unpacked root file system in use: the shared lock keeps prune away until dropped.
#[derive(Debug)]
pub struct RootfsGuard {
    pub path: PathBuf,
    _lock: File,
}

/// The image store. Cheap to open; safe to use from several threads and processes.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    unpack_opts: UnpackOptions,
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
            unpack_opts: UnpackOptions::default(),
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
        self.unpack_opts = opts;
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

    /// Keeps prune from running until dropped: take it before writing blobs that a later
    /// `tag` will reference (import and pull do so themselves).
    pub fn write_guard(&self) -> Result<WriteGuard, StoreError> {
        Ok(WriteGuard {
            _lock: self.lock(".gc.lock", libc::LOCK_SH)?,
        })
    }

    /// Path of a blob (which may not exist).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        Ok(self.root.join("blobs/sha256").join(digest_hex(digest)?))
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    /// Writes a blob, verifying sha256 (and size) when `expected` is given; returns
    /// (digest "sha256:<hex>", size). Atomic (tmp + rename), idempotent: a blob already
    /// stored with the expected size is not read again.
    pub fn put_blob(
        &self,
        r: &mut dyn Read,
        expected: Option<(&str, u64)>,
    ) -> Result<(String, u64), StoreError> {
        let _gc = self.lock(".gc.lock", libc::LOCK_SH)?;
        if let Some((d, size)) = expected {
            let p = self.blob_path(d)?;
            if fs::symlink_metadata(&p).is_ok_and(|m| m.is_file() && m.len() == size) {
                return Ok((d.to_string(), size));
            }
        }
        let tmp = TmpPath(
            self.root
                .join("tmp")
                .join(sys::random_id("put-").map_err(io_err(&self.root))?),
        );
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp.0)
            .map_err(io_err(&tmp.0))?;
        let what = match expected {
            Some((d, _)) => format!("blob {d}"),
            None => "blob".to_string(),
        };
        let mut h = Sha256::new();
        let mut n = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let k = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(StoreError::Read { what, source }),
            };
            n += k as u64;
            if let Some((d, size)) = expected
                && n > size
            {
                return Err(StoreError::Mismatch {
                    what,
                    expected: d.to_string(),
                    expected_size: size,
                    actual: "more data".into(),
                    actual_size: n,
                });
            }
            h.update(&buf[..k]);
            f.write_all(&buf[..k]).map_err(io_err(&tmp.0))?;
        }
        drop(f);
        let digest = format!("sha256:{}", hex(&h.finalize()));
        if let Some((d, size)) = expected
            && (d != digest || n != size)
        {
            return Err(StoreError::Mismatch {
                what,
                expected: d.to_string(),
                expected_size: size,
                actual: digest,
                actual_size: n,
            });
        }
        let dest = self.blob_path(&digest)?;
        fs::set_permissions(&tmp.0, fs::Permissions::from_mode(0o444)).map_err(io_err(&tmp.0))?;
        fs::rename(&tmp.0, &dest).map_err(io_err(&dest))?;
        tmp.disarm();
        Ok((digest, n))
    }

    /// Moves a file its writer hashed (`digest`), written under the store's `tmp/` (the
    /// same file system), into the blobs; no copy. The caller holds `write_guard`.
    pub fn adopt_blob(&self, file: &Path, digest: &str) -> Result<(), StoreError> {
        let dest = self.blob_path(digest)?;
        fs::set_permissions(file, fs::Permissions::from_mode(0o444)).map_err(io_err(file))?;
        fs::rename(file, &dest).map_err(io_err(&dest))
    }

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

    /// Writes a small blob held in memory.
    pub fn put_bytes(&self, data: &[u8]) -> Result<(String, u64), StoreError> {
        let digest = sha256_digest(data);
        self.put_blob(&mut &data[..], Some((&digest, data.len() as u64)))
    }

    /// Opens a blob; the reader verifies the sha256 as it is read and fails at EOF on a
    /// mismatch (the error's message says "blob sha256:... is corrupt").
    pub fn open_blob(&self, digest: &str) -> Result<BlobReader, StoreError> {
        let p = self.blob_path(digest)?;
        let file = match File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::MissingBlob {
                    what: "blob".into(),
                    digest: digest.to_string(),
                });
            }
            Err(e) => return Err(io_err(&p)(e)),
        };
        Ok(BlobReader {
            file,
            hasher: Sha256::new(),
            digest: digest.to_string(),
            bad: None,
            done: false,
        })
    }

    /// Reads a small blob (JSON), verified; refused when larger than `max`.
    pub fn read_blob(&self, digest: &str, max: u64) -> Result<Vec<u8>, StoreError> {
        let mut r = self.open_blob(digest)?;
        let len = r.file.metadata().map(|m| m.len()).unwrap_or(0);
        if len > max {
            return Err(StoreError::TooLarge {
                what: format!("blob {digest}"),
                max,
            });
        }
        let mut v = Vec::with_capacity(len as usize);
        r.read_to_end(&mut v)
            .map_err(|e| blob_read_err(digest, e))?;
        Ok(v)
    }

    /// The image manifest `digest` (an index is refused).
    pub fn manifest(&self, digest: &str) -> Result<ImageManifest, StoreError> {
        let raw = self.read_blob(digest, MAX_JSON)?;
        parse_manifest(&raw, digest)
    }

    /// The image config of `manifest`, as JSON.
    pub fn config(&self, manifest: &ImageManifest) -> Result<serde_json::Value, StoreError> {
        let d = manifest.config().digest().to_string();
        let raw = self.read_blob(&d, MAX_JSON)?;
        serde_json::from_slice(&raw).map_err(|e| StoreError::BadJson {
            what: "image config".into(),
            digest: d,
            why: e.to_string(),
        })
    }

    /// Points `name` (like "numpy" or "localhost:5000/py:3.11") at a stored manifest.
    pub fn tag(&self, name: &str, manifest_digest: &str) -> Result<(), StoreError> {
        check_name(name)?;
        let raw = self.read_blob(manifest_digest, MAX_JSON)?;
        let m = parse_manifest(&raw, manifest_digest)?;
        let media_type = m.media_type().clone().unwrap_or(MediaType::ImageManifest);
        let mut desc =
            Descriptor::new(media_type, raw.len() as u64, parse_digest(manifest_digest)?);
        desc.set_annotations(Some(
            [(REF_NAME.to_string(), name.to_string())]
                .into_iter()
                .collect(),
        ));
        let _l = self.lock(".index.lock", libc::LOCK_EX)?;
        let mut tags = self.load_index()?;
        tags.retain(|d| ref_name(d) != Some(name));
        tags.push(desc);
        tags.sort_by(|a, b| ref_name(a).cmp(&ref_name(b)));
        self.save_index(&tags)
    }

    /// The manifest digest `name_or_digest` stands for: a tag (exact, then with
    /// `:latest`, then in Docker's normalized form: `python:3.11` is
    /// `docker.io/library/python:3.11`), a full digest of a stored manifest, or a unique
    /// prefix (6+ hex digits) of a tagged one.
    pub fn resolve(&self, name_or_digest: &str) -> Result<Option<String>, StoreError> {
        Ok(self.find(name_or_digest)?.map(|(_, d)| d))
    }

    /// `(tag, digest)` of `name_or_digest` (the tag is None for a bare digest).
    fn find(&self, q: &str) -> Result<Option<(Option<String>, String)>, StoreError> {
        let q = q.trim();
        if q.is_empty() {
            return Ok(None);
        }
        if let Some(h) = q.strip_prefix("sha256:")
            && h.len() == 64
        {
            return Ok(self.stored_manifest(q).map(|d| (None, d)));
        }
        let tags: Vec<(String, String)> = self
            .load_index()?
            .iter()
            .filter_map(|d| Some((ref_name(d)?.to_string(), d.digest().to_string())))
            .collect();
        if let Some((n, d)) = tags.iter().find(|(n, _)| n == q) {
            return Ok(Some((Some(n.clone()), d.clone())));
        }
        let last = q.rsplit('/').next().unwrap_or(q);
        if !last.contains(':') && !q.contains('@') {
            let with = format!("{q}:latest");
            if let Some((n, d)) = tags.iter().find(|(n, _)| *n == with) {
                return Ok(Some((Some(n.clone()), d.clone())));
            }
        }
        if let Some(c) = super::registry::canonical_name(q) {
            let hits: Vec<_> = tags
                .iter()
                .filter(|(n, _)| super::registry::canonical_name(n).as_deref() == Some(&c))
                .collect();
            if let [(n, d)] = hits[..] {
                return Ok(Some((Some(n.clone()), d.clone())));
            }
        }
        let h = q.strip_prefix("sha256:").unwrap_or(q);
        if h.len() >= 6 && h.bytes().all(|b| b.is_ascii_hexdigit()) {
            let h = h.to_ascii_lowercase();
            let hits: HashSet<&String> = tags
                .iter()
                .filter(|(_, d)| d.strip_prefix("sha256:").is_some_and(|x| x.starts_with(&h)))
                .map(|(_, d)| d)
                .collect();
            if hits.len() == 1 {
                return Ok(hits.into_iter().next().map(|d| (None, d.clone())));
            }
        }
        Ok(None)
    }

    /// The manifest `digest` names, if stored: itself, or for a stored image index, its
    /// manifest for this machine (a layer or config digest is not an image).
    fn stored_manifest(&self, digest: &str) -> Option<String> {
        let raw = self.read_blob(digest, MAX_JSON).ok()?;
        match doc_kind(&raw, digest).ok()? {
            DocKind::Manifest => Some(digest.to_string()),
            DocKind::Index => {
                let idx = parse_index(&raw, digest).ok()?;
                let m = pick_platform(&idx, digest).ok()?.digest().to_string();
                self.has_blob(&m).then_some(m)
            }
        }
    }

    /// Tagged images, by name.
    pub fn list(&self) -> Result<Vec<ImageSummary>, StoreError> {
        let mut out = Vec::new();
        for d in self.load_index()? {
            let Some(name) = ref_name(&d) else { continue };
            let digest = d.digest().to_string();
            let (size, created) = match self.manifest(&digest) {
                Ok(m) => {
                    let created = self
                        .config(&m)
                        .ok()
                        .and_then(|c| c.get("created").and_then(|v| v.as_str()).map(String::from));
                    (compressed_size(&m, d.size()), created)
                }
                Err(_) => (d.size(), None),
            };
            out.push(ImageSummary {
                name: name.to_string(),
                digest,
                size,
                created,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Everything about one image.
    pub fn inspect(&self, name: &str) -> Result<ImageDetails, StoreError> {
        let (tag, digest) = self
            .find(name)?
            .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
        let raw = self.read_blob(&digest, MAX_JSON)?;
        let m = parse_manifest(&raw, &digest)?;
        let cfg = self.config(&m)?;
        let strs = |v: Option<&serde_json::Value>| -> Vec<String> {
            v.and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let str_of = |v: Option<&serde_json::Value>| -> Option<String> {
            v.and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
                .map(String::from)
        };
        let c = cfg.get("config");
        let labels: BTreeMap<String, String> = c
            .and_then(|c| c.get("Labels"))
            .and_then(|l| l.as_object())
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let annotations: BTreeMap<String, String> = m
            .annotations()
            .as_ref()
            .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let packages = labels
            .get(PACKAGES_LABEL)
            .or_else(|| annotations.get(PACKAGES_LABEL))
            .cloned();
        let hexd = digest_hex(&digest)?.to_string();
        let dir = self.root.join("rootfs").join(&hexd);
        let unpacked = if dir.join("rootfs").is_dir() {
            let stats: Option<UnpackStats> = fs::read(dir.join("unpack.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            Some(UnpackedInfo {
                path: dir.join("rootfs"),
                bytes: stats.as_ref().map(|s| s.bytes).unwrap_or(0),
                files: stats.as_ref().map(|s| s.files).unwrap_or(0),
            })
        } else {
            None
        };
        Ok(ImageDetails {
            name: tag.unwrap_or_else(|| name.to_string()),
            digest: digest.clone(),
            media_type: m
                .media_type()
                .as_ref()
                .map(|t| t.to_string())
                .unwrap_or_else(|| OCI_MANIFEST.to_string()),
            config_digest: m.config().digest().to_string(),
            layers: m
                .layers()
                .iter()
                .map(|l| LayerInfo {
                    digest: l.digest().to_string(),
                    size: l.size(),
                    media_type: l.media_type().to_string(),
                })
                .collect(),
            size: compressed_size(&m, raw.len() as u64),
            architecture: str_of(cfg.get("architecture")),
            os: str_of(cfg.get("os")),
            created: str_of(cfg.get("created")),
            env: strs(c.and_then(|c| c.get("Env"))),
            entrypoint: strs(c.and_then(|c| c.get("Entrypoint"))),
            cmd: strs(c.and_then(|c| c.get("Cmd"))),
            working_dir: str_of(c.and_then(|c| c.get("WorkingDir"))),
            user: str_of(c.and_then(|c| c.get("User"))),
            labels,
            annotations,
            packages,
            unpacked,
        })
    }

    /// Untags `name` (with a digest: every tag of that manifest). Blobs stay until prune.
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        let found = self
            .find(name)?
            .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
        let _l = self.lock(".index.lock", libc::LOCK_EX)?;
        let mut tags = self.load_index()?;
        let before = tags.len();
        match &found {
            (Some(tag), _) => tags.retain(|d| ref_name(d) != Some(tag.as_str())),
            (None, digest) => tags.retain(|d| d.digest().to_string() != *digest),
        }
        if tags.len() == before {
            return Err(StoreError::NotFound(name.to_string()));
        }
        self.save_index(&tags)
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
        let mut stats = PruneStats::default();
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
        // Blob temp files (put-*) belong to writers, which hold the gc lock: none runs now.
        // Other temp paths (tmp_path) are removed once a day old.
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
        Ok(stats)
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
        let mut u = Unpacker::new(dest, self.unpack_opts.clone())?;
        for l in m.layers() {
            let d = l.digest().to_string();
            let blob = self.open_blob(&d)?;
            let len = blob.file.metadata().map(|m| m.len()).unwrap_or(0);
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

    /// Writes an OCI layout (oci-layout, index.json, blobs/) holding the image
    /// `name_or_digest` under the reference name `ref_name` into `dest` (created if
    /// missing, must be empty). Returns the manifest digest.
    pub fn export_layout(
        &self,
        name_or_digest: &str,
        dest: &Path,
        ref_name: &str,
    ) -> Result<String, StoreError> {
        let digest = self
            .resolve(name_or_digest)?
            .ok_or_else(|| StoreError::NotFound(name_or_digest.to_string()))?;
        let raw = self.read_blob(&digest, MAX_JSON)?;
        let m = parse_manifest(&raw, &digest)?;
        let blobs = dest.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
        let mut all = vec![digest.clone(), m.config().digest().to_string()];
        all.extend(m.layers().iter().map(|l| l.digest().to_string()));
        for d in &all {
            let to = blobs.join(digest_hex(d)?);
            if to.exists() {
                continue;
            }
            let from = self.blob_path(d)?;
            if fs::hard_link(&from, &to).is_err() {
                let mut r = self.open_blob(d)?;
                let mut w = File::create(&to).map_err(io_err(&to))?;
                io::copy(&mut r, &mut w).map_err(|e| blob_read_err(d, e))?;
            }
        }
        fs::write(
            dest.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .map_err(io_err(dest))?;
        let media_type = m
            .media_type()
            .as_ref()
            .map(|t| t.to_string())
            .unwrap_or_else(|| OCI_MANIFEST.to_string());
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{
                "mediaType": media_type,
                "digest": digest,
                "size": raw.len(),
                "annotations": { REF_NAME: ref_name },
            }],
        });
        let p = dest.join("index.json");
        fs::write(&p, index.to_string()).map_err(io_err(&p))?;
        Ok(digest)
    }

    // ---- internals ----

    /// Takes a flock on a store-wide lock file.
    pub(crate) fn lock(&self, name: &str, how: libc::c_int) -> Result<File, StoreError> {
        let p = self.root.join(name);
        sys::lock::lock_file(&p, how).map_err(io_err(&p))
    }

    fn load_index(&self) -> Result<Vec<Descriptor>, StoreError> {
        let p = self.root.join("index.json");
        let raw = match fs::read(&p) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&p)(e)),
        };
        let idx = ImageIndex::from_reader(&raw[..]).map_err(|e| StoreError::BadJson {
            what: "store index".into(),
            digest: p.display().to_string(),
            why: format!(
                "{e}. Hint: fix or remove the file (images are re-tagged by importing them again)"
            ),
        })?;
        Ok(idx.manifests().clone())
    }

    fn save_index(&self, tags: &[Descriptor]) -> Result<(), StoreError> {
        let idx = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": tags,
        });
        let body = serde_json::to_vec_pretty(&idx).map_err(|e| StoreError::Io {
            path: self.root.join("index.json"),
            source: io::Error::other(e),
        })?;
        write_atomic(&self.root.join("index.json"), &body)
    }
}

/// Reads a blob and verifies its sha256 at EOF.
pub struct BlobReader {
    file: File,
    hasher: Sha256,
    digest: String,
    bad: Option<String>,
    done: bool,
}

impl BlobReader {
    /// Size of the blob file.
    pub fn len(&self) -> u64 {
        self.file.metadata().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A blob whose content does not match its digest (inside an `io::Error`).
#[derive(Debug)]
pub struct BlobCorrupt {
    pub digest: String,
    pub why: String,
}

impl std::fmt::Display for BlobCorrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "blob {} is corrupt: {}", self.digest, self.why)
    }
}

impl std::error::Error for BlobCorrupt {}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(why) = &self.bad {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                BlobCorrupt {
                    digest: self.digest.clone(),
                    why: why.clone(),
                },
            ));
        }
        if self.done {
            return Ok(0);
        }
        let n = self.file.read(buf)?;
        if n > 0 {
            self.hasher.update(&buf[..n]);
            return Ok(n);
        }
        self.done = true;
        let got = format!(
            "sha256:{}",
            hex(&std::mem::take(&mut self.hasher).finalize())
        );
        if got != self.digest {
            self.bad = Some(format!("its content hashes to {got}"));
            return self.read(buf);
        }
        Ok(0)
    }
}

/// The typed error of a failed blob read.
fn blob_read_err(digest: &str, e: io::Error) -> StoreError {
    if let Some(c) = e.get_ref().and_then(|i| i.downcast_ref::<BlobCorrupt>()) {
        return StoreError::Corrupt {
            digest: c.digest.clone(),
            why: c.why.clone(),
        };
    }
    StoreError::Read {
        what: format!("blob {digest}"),
        source: e,
    }
}

/// Removes a temporary file unless disarmed.
struct TmpPath(PathBuf);

impl TmpPath {
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for TmpPath {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// `<hex>` of `sha256:<hex>`, validated (it becomes a file name).
pub fn digest_hex(digest: &str) -> Result<&str, StoreError> {
    match digest.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => {
            Ok(h)
        }
        _ => Err(StoreError::BadDigest(digest.to_string())),
    }
}

pub(crate) fn parse_digest(d: &str) -> Result<oci_spec::image::Digest, StoreError> {
    digest_hex(d)?;
    d.parse().map_err(|_| StoreError::BadDigest(d.to_string()))
}

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

pub(crate) fn hex(b: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(H[(x >> 4) as usize] as char);
        s.push(H[(x & 15) as usize] as char);
    }
    s
}

fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations()
        .as_ref()
        .and_then(|a| a.get(REF_NAME))
        .map(String::as_str)
}

fn compressed_size(m: &ImageManifest, manifest_size: u64) -> u64 {
    manifest_size + m.config().size() + m.layers().iter().map(|l| l.size()).sum::<u64>()
}

/// Tag names: printable ASCII without spaces, at most 255 characters, not a digest.
fn check_name(name: &str) -> Result<(), StoreError> {
    let bad = |why: &str| StoreError::BadName {
        name: name.to_string(),
        why: why.to_string(),
    };
    if name.is_empty() || name.len() > 255 {
        return Err(bad("it must have 1 to 255 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-/:@+".contains(&b))
    {
        return Err(bad(
            "use letters, digits and . _ - / : @ + only (like numpy or localhost:5000/py:3.11)",
        ));
    }
    if name.starts_with("sha256:") || name.starts_with(['.', '-', '/', ':']) {
        return Err(bad("it must not look like a digest or start with . - / :"));
    }
    Ok(())
}

/// What a manifest-ish JSON document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DocKind {
    Manifest,
    Index,
}

/// Classifies a manifest or index by its media type (or, without one, its fields).
pub(crate) fn doc_kind(raw: &[u8], digest: &str) -> Result<DocKind, StoreError> {
    let v: serde_json::Value = serde_json::from_slice(raw).map_err(|e| StoreError::BadJson {
        what: "manifest".into(),
        digest: digest.to_string(),
        why: e.to_string(),
    })?;
    if v.get("schemaVersion").and_then(|s| s.as_u64()) == Some(1) {
        return Err(StoreError::Unsupported(format!(
            "manifest {digest} is a Docker schema 1 manifest, which pysandbox does not support. Hint: push the image again with a current docker or skopeo"
        )));
    }
    let mt = v.get("mediaType").and_then(|m| m.as_str()).unwrap_or("");
    Ok(match mt {
        OCI_INDEX | DOCKER_LIST => DocKind::Index,
        OCI_MANIFEST | DOCKER_MANIFEST => DocKind::Manifest,
        "" if v.get("manifests").is_some() => DocKind::Index,
        "" if v.get("config").is_some() && v.get("layers").is_some() => DocKind::Manifest,
        other => {
            return Err(StoreError::Unsupported(format!(
                "{digest} has media type {other:?}, not an image manifest or index"
            )));
        }
    })
}

pub(crate) fn parse_manifest(raw: &[u8], digest: &str) -> Result<ImageManifest, StoreError> {
    if doc_kind(raw, digest)? == DocKind::Index {
        return Err(StoreError::Unsupported(format!(
            "{digest} is an image index, not an image manifest"
        )));
    }
    ImageManifest::from_reader(raw).map_err(|e| StoreError::BadJson {
        what: "manifest".into(),
        digest: digest.to_string(),
        why: e.to_string(),
    })
}

pub(crate) fn parse_index(raw: &[u8], digest: &str) -> Result<ImageIndex, StoreError> {
    ImageIndex::from_reader(raw).map_err(|e| StoreError::BadJson {
        what: "image index".into(),
        digest: digest.to_string(),
        why: e.to_string(),
    })
}

/// The OCI architecture name of this machine.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86" => "386",
        other => other,
    }
}

/// The manifest of an index for linux on this machine's architecture.
pub(crate) fn pick_platform(index: &ImageIndex, digest: &str) -> Result<Descriptor, StoreError> {
    let arch = host_arch();
    let manifests: Vec<&Descriptor> = index
        .manifests()
        .iter()
        .filter(|d| {
            matches!(
                d.media_type().to_string().as_str(),
                OCI_MANIFEST | DOCKER_MANIFEST
            )
        })
        .collect();
    let matching: Vec<&&Descriptor> = manifests
        .iter()
        .filter(|d| {
            d.platform().as_ref().is_some_and(|p| {
                p.os().to_string() == "linux" && p.architecture().to_string() == arch
            })
        })
        .collect();
    // arm64: prefer variant v8 (or none) over others.
    let best = matching
        .iter()
        .find(|d| {
            d.platform()
                .as_ref()
                .and_then(|p| p.variant().as_deref())
                .is_none_or(|v| v == "v8")
        })
        .or(matching.first());
    if let Some(d) = best {
        return Ok((**d).clone());
    }
    if manifests.len() == 1 && manifests[0].platform().is_none() {
        return Ok(manifests[0].clone());
    }
    let have: Vec<String> = manifests
        .iter()
        .filter_map(|d| d.platform().as_ref())
        .map(|p| format!("{}/{}", p.os(), p.architecture()))
        .collect();
    Err(StoreError::Unsupported(format!(
        "image index {digest} has no linux/{arch} image (it has: {})",
        if have.is_empty() {
            "none".to_string()
        } else {
            have.join(", ")
        }
    )))
}

/// Refuses layers the unpacker cannot apply, with the reason.
pub(crate) fn check_layer_type(l: &Descriptor) -> Result<(), StoreError> {
    let mt = l.media_type().to_string();
    if mt.contains("zstd") {
        return Err(StoreError::Unsupported(format!(
            "layer {} is zstd-compressed ({mt}); pysandbox unpacks gzip and uncompressed layers. Hint: convert the image, e.g. skopeo copy --dest-compress-format gzip",
            l.digest()
        )));
    }
    if mt.contains("encrypted") {
        return Err(StoreError::Unsupported(format!(
            "layer {} is encrypted ({mt}), which pysandbox does not support",
            l.digest()
        )));
    }
    if mt.starts_with("application/vnd.oci.image.layer.")
        || mt.starts_with("application/vnd.docker.image.rootfs.")
        || mt == "application/x-tar"
    {
        return Ok(());
    }
    Err(StoreError::Unsupported(format!(
        "layer {} has media type {mt:?}, not a file system layer (is this an artifact rather than a container image?)",
        l.digest()
    )))
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
fn clean_tmp_dirs(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for ent in rd.flatten() {
        if ent.file_name().to_string_lossy().starts_with(".tmp-") {
            let _ = sys::fs::remove_path(&ent.path());
        }
    }
}

/// A serializable manifest for writers (import of docker archives, layouts).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RawDescriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

/// Builds and stores an OCI manifest from a config and layer descriptors; returns its
/// digest.
pub(crate) fn put_manifest(
    store: &Store,
    config: RawDescriptor,
    layers: Vec<RawDescriptor>,
) -> Result<String, StoreError> {
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": layers,
    });
    let body = serde_json::to_vec(&m).map_err(|e| StoreError::Io {
        path: store.root.clone(),
        source: io::Error::other(e),
    })?;
    Ok(store.put_bytes(&body)?.0)
}
