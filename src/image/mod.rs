//! Images: turns an [`ImageRef`] into a [`ResolvedImage`] (a root file system directory,
//! the interpreter inside it, its config's `Env`, its digest). Every image but a plain
//! root file system directory lives in the OCI store (`store.rs`), the default image
//! included (`default.rs`). Never mounts anything: `runtime/` stages what this module
//! returns.

use std::fs;
use std::path::{Path, PathBuf};

pub mod archive;
pub mod build;
pub mod default;
pub mod labels;
pub mod progress;
pub mod reference;
pub mod registry;
pub mod store;
pub mod unpack;

pub use default::host_python;

/// The PATH of the images pysandbox makes (the default image, `image build`'s).
pub const IMAGE_PATH: &str = "/opt/conda/bin:/usr/local/bin:/usr/bin:/bin";

use crate::dirs;
use crate::policy::ImageRef;
use crate::spec::REQUIRED_MOUNT_POINTS;
use crate::sys;

/// A root file system ready to be staged.
#[derive(Debug)]
pub struct ResolvedImage {
    /// Host directory holding the root file system.
    pub rootfs: PathBuf,
    /// Absolute path of the Python interpreter inside it.
    pub python: String,
    /// Human name for messages ("default (Python 3.11.7)" or the path).
    pub name: String,
    /// sha256 of the image's manifest, when it has one.
    pub digest: Option<String>,
    /// The image config's `Env`, in order (empty for a plain root file system). The run's
    /// environment starts from it (see README: which config fields are honoured).
    pub env: Vec<(String, String)>,
    /// A lock held while a run uses the image, so a rebuild or prune never deletes it.
    _in_use: Option<Box<dyn std::any::Any>>,
    /// Work left once the runtime has staged the root file system (the default image's
    /// first run stores the image then); run in the background by [`Self::staged`], here
    /// and now when the image is dropped without it.
    finish: std::cell::RefCell<Option<Finish>>,
}

/// See [`ResolvedImage::staged`]; its argument says whether it may go to the background.
struct Finish(Box<dyn FnOnce(bool)>);

impl std::fmt::Debug for Finish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Finish")
    }
}

impl ResolvedImage {
    fn set_finish(&mut self, f: Box<dyn FnOnce(bool)>) {
        self.finish = std::cell::RefCell::new(Some(Finish(f)));
    }

    /// Called by the runtime once the root file system is mounted where the sandbox
    /// will see it (its path is not used again): work left on the image goes on in a
    /// detached process. The caller must be single-threaded (it forks).
    pub fn staged(&self) {
        if let Some(Finish(f)) = self.finish.borrow_mut().take() {
            f(true);
        }
    }
}

impl Drop for ResolvedImage {
    fn drop(&mut self) {
        if let Some(Finish(f)) = self.finish.get_mut().take() {
            f(false);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Dirs(#[from] dirs::DirsError),
    #[error(
        "no Python interpreter to build the default image from: `python3` is not on PATH. Hint: install python3, or set PYSANDBOX_PYTHON=/path/to/python3, or pass --image DIR"
    )]
    NoHostPython,
    #[error("building the default image from {python} failed: {source}")]
    Build {
        python: PathBuf,
        source: rootfs_builder::BuildError,
    },
    #[error(
        "image {0:?} not found: it is neither a path nor an image in the store. Hint: pysandbox image ls; or pull, import or build it"
    )]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("image {path} is not usable: {why}")]
    Invalid { path: PathBuf, why: String },
}

/// Resolves the image of a run, building the default image if needed (then the runtime
/// calls [`ResolvedImage::staged`] once it has mounted it).
pub fn resolve(image: &ImageRef) -> Result<ResolvedImage, ImageError> {
    match image {
        ImageRef::Default => default::resolve_for_run(),
        ImageRef::Path(p) if p.is_dir() && !p.join("oci-layout").exists() => rootfs_dir(p),
        ImageRef::Path(p) => imported(p),
        ImageRef::Name(n) => stored(n),
    }
}

/// Interpreters looked for in a plain root file system, in order.
const PYTHON_CANDIDATES: &[&str] = &[
    rootfs_builder::IMAGE_PYTHON,
    "/usr/local/bin/python3",
    "/usr/bin/python3",
];

fn rootfs_dir(p: &Path) -> Result<ResolvedImage, ImageError> {
    rootfs_with(p, None, Tree::Given)
}

/// Where a root file system directory comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tree {
    /// Named by the user: resolved to its real path and checked for mount points.
    Given,
    /// Made by the store (unpacked or adopted): an absolute path under the store, its
    /// mount points added before it got its place (`add_mount_points`). Every run of a
    /// store image passes here: no checks it would repeat.
    Store,
}

/// A root file system directory; its interpreter looked for along `path_var` (the
/// image's PATH) first.
fn rootfs_with(p: &Path, path_var: Option<&str>, tree: Tree) -> Result<ResolvedImage, ImageError> {
    let invalid = |why: String| ImageError::Invalid {
        path: p.to_owned(),
        why,
    };
    let real = match tree {
        Tree::Store => p.to_owned(),
        Tree::Given => {
            let meta =
                fs::metadata(p).map_err(|_| ImageError::NotFound(p.display().to_string()))?;
            if !meta.is_dir() {
                return Err(invalid(
                    "not a directory (OCI layouts and archives arrive with the image store)".into(),
                ));
            }
            fs::canonicalize(p).map_err(|e| invalid(e.to_string()))?
        }
    };
    let root = sys::open_dir_nofollow(&real).map_err(|e| invalid(e.to_string()))?;
    let python = find_python(&root, path_var).ok_or_else(|| {
        invalid(format!(
            "no Python interpreter at any of {}",
            PYTHON_CANDIDATES.join(", ")
        ))
    })?;
    let missing: Vec<&str> = REQUIRED_MOUNT_POINTS
        .iter()
        .copied()
        .filter(|m| tree == Tree::Given && !is_dir_in(&root, m))
        .collect();
    if !missing.is_empty() {
        return Err(invalid(format!(
            "missing mount point directories {} (the root file system is mounted read-only, so they must exist); create them",
            missing.join(", ")
        )));
    }
    Ok(ResolvedImage {
        rootfs: real,
        python,
        name: p.display().to_string(),
        digest: None,
        env: Vec::new(),
        _in_use: None,
        finish: Default::default(),
    })
}

/// The interpreter of a root file system (`root`, opened): `python3`, then `python`,
/// along the image's `PATH` (its config's, when it has one), then the usual places.
fn find_python(root: &std::os::fd::OwnedFd, path_var: Option<&str>) -> Option<String> {
    let along_path = path_var
        .into_iter()
        .flat_map(|p| p.split(':'))
        .filter(|d| d.starts_with('/'));
    let mut names = Vec::new();
    for name in ["python3", "python"] {
        for dir in along_path.clone() {
            names.push(format!("{}/{name}", dir.trim_end_matches('/')));
        }
    }
    names.extend(PYTHON_CANDIDATES.iter().map(|c| c.to_string()));
    names.into_iter().find(|c| is_executable_in(root, c))
}

/// `KEY=VALUE` strings of an image config's `Env` (malformed entries skipped).
fn config_env(config: &serde_json::Value) -> Vec<(String, String)> {
    config["config"]["Env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str()?.split_once('='))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// An image of the store, unpacked (once, cached by digest) and held while in use.
fn stored(name: &str) -> Result<ResolvedImage, ImageError> {
    let store = store::Store::open_default()?;
    let digest = store
        .resolve(name)?
        .ok_or_else(|| ImageError::NotFound(name.to_string()))?;
    from_store(&store, name, &digest)
}

/// An OCI layout or archive on the host: imported into the store, then as [`stored`].
fn imported(path: &Path) -> Result<ResolvedImage, ImageError> {
    if !archive::is_importable(path) {
        return Err(ImageError::Invalid {
            path: path.to_owned(),
            why: "not a root file system directory, an OCI layout, an OCI archive or a `docker save` archive".into(),
        });
    }
    let store = store::Store::open_default()?;
    let fallback = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    let images = archive::import(&store, path, fallback.as_deref(), &store::NoProgress)?;
    match images.as_slice() {
        [(name, digest)] => from_store(&store, name, digest),
        [] => Err(ImageError::Invalid {
            path: path.to_owned(),
            why: "it holds no image".into(),
        }),
        many => Err(ImageError::Invalid {
            path: path.to_owned(),
            why: format!(
                "it holds {} images ({}): import it with `pysandbox image import` and pass one name",
                many.len(),
                many.iter()
                    .map(|m| m.0.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

fn from_store(store: &store::Store, name: &str, digest: &str) -> Result<ResolvedImage, ImageError> {
    let config = store.config(&store.manifest(digest)?)?;
    from_store_config(store, name, digest, &config)
}

/// [`from_store`] with the image's config read already.
fn from_store_config(
    store: &store::Store,
    name: &str,
    digest: &str,
    config: &serde_json::Value,
) -> Result<ResolvedImage, ImageError> {
    let env = config_env(config);
    let guard = store.rootfs(digest, &store::NoProgress)?;
    let path_var = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str());
    let mut img = rootfs_with(&guard.path, path_var, Tree::Store)?;
    img.env = env;
    img.name = name.to_string();
    img.digest = Some(digest.to_string());
    img._in_use = Some(Box::new(guard));
    Ok(img)
}

/// Gives an unpacked image the mount points pysandbox mounts over (its root file system
/// is mounted read-only, so they must exist) and an empty `/etc/resolv.conf` for
/// `--network`. Paths are resolved inside `root` (a symlink in the image can never lead
/// out of it).
pub fn add_mount_points(root: &Path) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    use std::os::unix::ffi::OsStrExt;
    let rootfd = sys::open_dir_nofollow(root)?;
    let dir_in_root = |p: &Path| sys::open_in_root(&rootfd, p, libc::O_PATH | libc::O_DIRECTORY);
    let mut wanted: Vec<&str> = REQUIRED_MOUNT_POINTS.to_vec();
    wanted.push("/etc");
    for m in wanted {
        let mut at = PathBuf::from("/");
        for comp in Path::new(m).components().skip(1) {
            let next = at.join(comp);
            if dir_in_root(&next).is_err() {
                let parent = dir_in_root(&at)?;
                let name = std::ffi::CString::new(comp.as_os_str().as_bytes())
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
                let mode = if m == "/tmp" { 0o1777 } else { 0o755 };
                match sys::fs::mkdirat(parent.as_fd(), &name, mode) {
                    Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
                    _ => {}
                }
            }
            at = next;
        }
    }
    let etc = dir_in_root(Path::new("/etc"))?;
    if sys::fs::fstatat(etc.as_fd(), c"resolv.conf").is_err() {
        // Create-only, never following; one that appeared meanwhile is fine.
        if let Ok(f) = sys::fs::create_file(etc.as_fd(), c"resolv.conf") {
            sys::fs::fchmod(f.as_fd(), 0o644)?;
        }
    }
    Ok(())
}

fn fstat_in(root: &std::os::fd::OwnedFd, path: &str) -> Option<libc::stat> {
    use std::os::fd::AsFd;
    let fd = sys::open_in_root(root, Path::new(path), libc::O_PATH).ok()?;
    sys::fs::fstat(fd.as_fd()).ok()
}

fn is_executable_in(root: &std::os::fd::OwnedFd, path: &str) -> bool {
    fstat_in(root, path)
        .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_mode & 0o111 != 0)
        .unwrap_or(false)
}

fn is_dir_in(root: &std::os::fd::OwnedFd, path: &str) -> bool {
    fstat_in(root, path)
        .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
        .unwrap_or(false)
}
