//! Builds pysandbox's default image: a distroless, micromamba-style root
//! filesystem directory made from the host's CPython.
//!
//! Layout of the produced directory:
//! - `/opt/conda/bin/python3.X` (the real interpreter) with `python3` and
//!   `python` symlinks; `/opt/conda/lib/python3.X` is the host stdlib minus
//!   tests, GUI modules, `ensurepip` and site-packages, with a valid level-0
//!   `.pyc` for every source, so `sys.prefix` is `/opt/conda`; sysconfig's
//!   `Makefile`, `pyconfig.h` and `_sysconfigdata` with their paths moved there,
//!   and links from the host's configure-time prefix (see `relocate`).
//! - The shared-library closure of the interpreter and its extension modules,
//!   at the host paths (with the host's symlinks) when they live in the
//!   loader's default directories, otherwise copied into libc's directory.
//! - Minimal `/etc` (passwd, group, hosts, nsswitch.conf, hostname, empty
//!   resolv.conf, services and protocols), the CA bundle, and empty mount-point directories.
//!
//! Nothing else: no shell, no coreutils, no pip. Files are owned by the
//! builder, world-readable, 0o644 or 0o755 (never setuid/setgid). Symlinks
//! inside the image are never followed while building (many have absolute
//! targets that would point into the host). See [`build_rootfs`].

mod elf;
pub mod env;
mod error;
mod fsops;
pub mod layer;
mod ldd;
mod libs;
pub mod oci;
mod probe;
mod relocate;
mod skeleton;
mod stdlib;

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use error::BuildError;
pub use probe::{HostPython, probe_python};
pub use skeleton::{BUILTIN_PROTOCOLS, BUILTIN_SERVICES, NETBASE_FILES, netbase_file};

use error::io_err;
use fsops::Image;

/// Bumped whenever the image layout or content rules change (part of the
/// image cache key).
pub const BUILDER_VERSION: u32 = 4;

/// The interpreter's path inside the image.
pub const IMAGE_PYTHON: &str = "/opt/conda/bin/python";

/// The image's `sys.prefix`.
pub const IMAGE_PREFIX: &str = "/opt/conda";

/// Describes a built image. Store it next to (not inside) the rootfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsManifest {
    /// [`BUILDER_VERSION`] of the builder that made the image.
    pub builder_version: u32,
    /// Python version in the image, e.g. `3.11.7`.
    pub python_version: String,
    /// The interpreter inside the image ([`IMAGE_PYTHON`]).
    pub image_python: PathBuf,
    /// The host interpreter the image was made from (real path).
    pub host_executable: PathBuf,
    /// Number of regular files in the image.
    pub file_count: u64,
    /// Total size of the regular files in the image, in bytes.
    pub total_bytes: u64,
    /// Host files whose change (mtime/size/content) must trigger a rebuild:
    /// the interpreter binary, libpython if any, and the stdlib's `os.py`.
    pub rebuild_triggers: Vec<PathBuf>,
    /// Whether a CA bundle was found on the host and put into the image
    /// (if not, `ssl.create_default_context()` has no trust anchors).
    pub ca_bundle: bool,
}

/// Builds the image for `host` into `dest`, which must not exist or be an
/// empty directory (its parent is created if needed).
///
/// On error `dest` is left partially built: build into a temporary sibling
/// and rename it into place to publish images atomically.
pub fn build_rootfs(host: &HostPython, dest: &Path) -> Result<RootfsManifest, BuildError> {
    let root = prepare_dest(dest)?;
    let image = Image::new(root.clone());
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755))
        .map_err(io_err("cannot set mode of rootfs", &root))?;

    let version_dir = format!("python{}.{}", host.major, host.minor);
    let prefix = Path::new(IMAGE_PREFIX);

    // The interpreter.
    let bin = prefix.join("bin");
    image.mkdir_p(&bin, 0o755)?;
    let exe_meta = fs::metadata(&host.executable)
        .map_err(io_err("cannot inspect interpreter", &host.executable))?;
    fsops::copy_file(
        &host.executable,
        &image.host(&bin.join(&version_dir)),
        &exe_meta,
    )?;
    image.symlink(
        &bin.join(format!("python{}", host.major)),
        Path::new(&version_dir),
    )?;
    image.symlink(&bin.join("python"), Path::new(&version_dir))?;

    // The standard library.
    let lib = prefix.join("lib");
    let stdlib_image = lib.join(&version_dir);
    image.mkdir_p(&stdlib_image, 0o755)?;
    if host.platlibdir != "lib" {
        // getpath looks for the landmark under sys.platlibdir (Fedora: lib64).
        image.symlink(&prefix.join(&host.platlibdir), Path::new("lib"))?;
    }
    let stdlib_dst = image.host(&stdlib_image);
    let plan = stdlib::plan_stdlib(host, &stdlib_dst)?;

    // The shared-library closure: one ldd over the interpreter and all kept
    // extension modules, running while the stdlib is copied.
    let mut ldd_inputs = Vec::with_capacity(plan.extension_modules.len() + 1);
    ldd_inputs.push(host.executable.clone());
    ldd_inputs.extend(plan.extension_modules.iter().cloned());
    let pending = ldd::spawn(&ldd_inputs)?;
    let copied = plan.copy();
    let closure = pending.wait()?;
    let mut copied = copied?;
    let loader = elf::interpreter(&host.executable)?;
    libs::place(&image, loader.as_deref(), &closure)?;

    skeleton::write_skeleton(&image)?;
    let ca_bundle = skeleton::copy_ca_certificates(&image, host)?;
    skeleton::copy_zoneinfo(&image)?;

    // The interpreter was configured for another prefix: make that one resolve too,
    // and give sysconfig its build files with the paths moved.
    let rewritten = relocate::sysconfig_files(&image, host, &stdlib_dst)?;
    copied.stale_sources.extend(rewritten);
    relocate::prefix_links(&image, host)?;

    stdlib::compile(
        host,
        &root,
        &stdlib_dst,
        &copied.stale_sources,
        copied.source_count,
    )?;

    let (file_count, total_bytes) = fsops::count_files(&root)?;
    let mut rebuild_triggers = vec![host.executable.clone()];
    rebuild_triggers.extend(host.libpython.iter().cloned());
    rebuild_triggers.push(host.stdlib.join("os.py"));
    Ok(RootfsManifest {
        builder_version: BUILDER_VERSION,
        python_version: host.version.clone(),
        image_python: PathBuf::from(IMAGE_PYTHON),
        host_executable: host.executable.clone(),
        file_count,
        total_bytes,
        rebuild_triggers,
        ca_bundle,
    })
}

/// Creates `dest` (or checks it is an empty directory) and returns its
/// absolute, canonical path.
fn prepare_dest(dest: &Path) -> Result<PathBuf, BuildError> {
    match fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => {
            let mut entries =
                fs::read_dir(dest).map_err(io_err("cannot list rootfs destination", dest))?;
            if entries.next().is_some() {
                return Err(BuildError::DestNotEmpty {
                    path: dest.to_path_buf(),
                });
            }
        }
        Ok(_) => {
            return Err(BuildError::DestNotEmpty {
                path: dest.to_path_buf(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dest).map_err(io_err("cannot create rootfs destination", dest))?;
        }
        Err(e) => return Err(io_err("cannot inspect rootfs destination", dest)(e)),
    }
    fs::canonicalize(dest).map_err(io_err("cannot resolve rootfs destination", dest))
}
