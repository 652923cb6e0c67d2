//! The shared-library closure of the interpreter and its extension modules,
//! placed so that the image's dynamic loader finds every library through its
//! built-in default search path alone (no `/etc/ld.so.cache`, no
//! `LD_LIBRARY_PATH`, no host RUNPATH directories).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{BuildError, io_err};
use crate::fsops::{Image, copy_file_if_absent};
use crate::ldd::FileDeps;

/// Used when the loader cannot tell us its search path (glibc < 2.33).
const FALLBACK_SYSTEM_DIRS: &[&str] = &[
    "/lib",
    "/usr/lib",
    "/lib64",
    "/usr/lib64",
    "/lib32",
    "/usr/lib32",
];

/// Libraries glibc `dlopen`s itself, which `ldd` therefore never reports.
/// Copied from the libc directory when present:
/// - `libgcc_s.so.1`: needed by `pthread_exit`/`pthread_cancel` unwinding
///   (CPython calls `pthread_exit` for daemon threads at shutdown; without it
///   glibc aborts with "libgcc_s.so.1 must be installed").
/// - `libnss_files.so.2`, `libnss_dns.so.2`: the NSS backends named in the
///   image's nsswitch.conf (built into libc since glibc 2.34, where these are
///   tiny stubs; required on older glibc).
///
/// And the non-graphical part of the manylinux baseline (PEP 599/600): binary
/// wheels (numpy, pandas...) link these from the system instead of bundling them,
/// so an image without them cannot import them (`libstdc++.so.6: cannot open
/// shared object file`).
const DLOPENED_EXTRAS: &[&str] = &[
    "libgcc_s.so.1",
    "libnss_files.so.2",
    "libnss_dns.so.2",
    "libstdc++.so.6",
    "libdl.so.2",
    "librt.so.1",
    "libpthread.so.0",
    "libutil.so.1",
    "libresolv.so.2",
    "libnsl.so.1",
];

/// The loader's default library directories, as it reports them.
#[derive(Debug, Clone)]
pub(crate) struct SearchPath {
    pub dirs: Vec<PathBuf>,
}

/// Asks the dynamic loader (`ld.so --help`, glibc >= 2.33) for its system
/// search directories; falls back to a conventional list.
pub(crate) fn loader_search_path(loader: Option<&Path>) -> SearchPath {
    if let Some(loader) = loader
        && let Ok(out) = Command::new(loader)
            .arg("--help")
            .env("LC_ALL", "C")
            .output()
        && out.status.success()
    {
        let dirs = parse_search_path(&String::from_utf8_lossy(&out.stdout));
        if !dirs.is_empty() {
            return SearchPath { dirs };
        }
    }
    SearchPath {
        dirs: FALLBACK_SYSTEM_DIRS.iter().map(PathBuf::from).collect(),
    }
}

/// Extracts the `  /dir (system search path)` lines of `ld.so --help`.
pub(crate) fn parse_search_path(help: &str) -> Vec<PathBuf> {
    help.lines()
        .filter_map(|l| l.trim().strip_suffix("(system search path)"))
        .map(str::trim)
        .filter(|d| d.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

impl SearchPath {
    /// Whether a library in `dir` is found by the loader without a cache:
    /// `dir` is a search directory or one of its `glibc-hwcaps/<level>` subdirs.
    pub(crate) fn covers(&self, dir: &Path) -> bool {
        if self.dirs.iter().any(|d| d == dir) {
            return true;
        }
        let (Some(level_parent), Some(_)) = (dir.parent(), dir.file_name()) else {
            return false;
        };
        level_parent
            .file_name()
            .is_some_and(|n| n == "glibc-hwcaps")
            && level_parent
                .parent()
                .is_some_and(|base| self.dirs.iter().any(|d| d == base))
    }
}

/// Where the closure went; for the manifest and for tests.
#[derive(Debug, Default)]
pub(crate) struct Placement {
    /// Host paths mirrored at the same path in the image.
    pub mirrored: BTreeSet<PathBuf>,
    /// Libraries from non-system directories: image path -> host real path.
    pub relocated: BTreeMap<PathBuf, PathBuf>,
}

/// Places the ELF interpreter, the whole `ldd` closure and the dlopen'ed
/// extras into `image`.
pub(crate) fn place(
    image: &Image,
    loader: Option<&Path>,
    closure: &[FileDeps],
) -> Result<Placement, BuildError> {
    let search = loader_search_path(loader);
    let mut placement = Placement::default();
    if let Some(loader) = loader {
        mirror_once(image, loader, &mut placement)?;
    }

    // Libraries from elsewhere (e.g. pyenv's libpython next to a RUNPATH
    // into the builder's home) go into the directory libc itself lives in:
    // glibc's slibdir is by construction on its default search path.
    let libc_dir = closure
        .iter()
        .flat_map(|f| f.deps.iter())
        .find(|d| d.name == "libc.so.6" || d.name.starts_with("libc.so"))
        .and_then(|d| d.path.as_ref())
        .and_then(|p| p.parent())
        .map(Path::to_path_buf);
    let relocation_dir = libc_dir
        .clone()
        .filter(|d| search.covers(d))
        .or_else(|| search.dirs.iter().find(|d| d.is_dir()).cloned());

    for file in closure {
        for dep in &file.deps {
            let Some(path) = dep.path.as_deref() else {
                return Err(BuildError::LibraryNotFound {
                    library: dep.name.clone(),
                    needed_by: file.file.clone(),
                });
            };
            let system = dep.is_loader || path.parent().is_some_and(|d| search.covers(d));
            if system {
                mirror_once(image, path, &mut placement)?;
                continue;
            }
            let Some(dir) = relocation_dir.as_deref() else {
                return Err(BuildError::UnsupportedFile {
                    path: path.to_path_buf(),
                    detail: "is outside the loader's default search path and no default library directory exists on the host".into(),
                });
            };
            relocate(image, dir, &dep.name, path, &mut placement)?;
        }
    }

    if let Some(dir) = libc_dir {
        for extra in DLOPENED_EXTRAS {
            let path = dir.join(extra);
            if fs::symlink_metadata(&path).is_ok() {
                mirror_once(image, &path, &mut placement)?;
            }
        }
    }
    Ok(placement)
}

fn mirror_once(image: &Image, path: &Path, placement: &mut Placement) -> Result<(), BuildError> {
    if placement.mirrored.insert(path.to_path_buf()) {
        image.mirror(path)?;
    }
    Ok(())
}

/// Copies the library found at `host_path` into the image as `dir/soname`
/// (`dir` is mirrored first, then resolved to its real host path so the
/// file lands in a real directory of the image).
fn relocate(
    image: &Image,
    dir: &Path,
    soname: &str,
    host_path: &Path,
    placement: &mut Placement,
) -> Result<(), BuildError> {
    if soname.is_empty() || soname.contains('/') {
        return Err(BuildError::UnsupportedFile {
            path: host_path.to_path_buf(),
            detail: format!("has an unusable library name `{soname}`"),
        });
    }
    let real = fs::canonicalize(host_path).map_err(io_err("cannot resolve library", host_path))?;
    let real_dir =
        fs::canonicalize(dir).map_err(io_err("cannot resolve library directory", dir))?;
    let image_path = real_dir.join(soname);
    if let Some(existing) = placement.relocated.get(&image_path) {
        if *existing == real {
            return Ok(());
        }
        return Err(BuildError::Conflict {
            path: image_path,
            detail: format!(
                "both `{}` and `{}` would be installed there",
                existing.display(),
                real.display()
            ),
        });
    }
    mirror_once(image, dir, placement)?;
    let meta = fs::metadata(&real).map_err(io_err("cannot inspect library", &real))?;
    copy_file_if_absent(&real, &image.host(&image_path), &meta)?;
    placement.relocated.insert(image_path, real);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELP: &str = "Usage: ld.so [OPTION]... EXECUTABLE-FILE [ARGS-FOR-PROGRAM...]

This program interpreter self-identifies as: /lib64/ld-linux-x86-64.so.2

Shared library search path:
  (libraries located via /etc/ld.so.cache)
  /lib/x86_64-linux-gnu (system search path)
  /usr/lib/x86_64-linux-gnu (system search path)
  /lib (system search path)
  /usr/lib (system search path)

Subdirectories of glibc-hwcaps directories, in priority order:
  x86-64-v4
";

    #[test]
    fn parses_loader_help() {
        let dirs = parse_search_path(HELP);
        assert_eq!(
            dirs,
            [
                "/lib/x86_64-linux-gnu",
                "/usr/lib/x86_64-linux-gnu",
                "/lib",
                "/usr/lib"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn search_path_covers_hwcaps_but_not_other_subdirs() {
        let s = SearchPath {
            dirs: parse_search_path(HELP),
        };
        assert!(s.covers(Path::new("/usr/lib/x86_64-linux-gnu")));
        assert!(s.covers(Path::new("/lib")));
        assert!(s.covers(Path::new(
            "/usr/lib/x86_64-linux-gnu/glibc-hwcaps/x86-64-v3"
        )));
        assert!(!s.covers(Path::new("/usr/lib/x86_64-linux-gnu/openblas-pthread")));
        assert!(!s.covers(Path::new("/lib64")));
        assert!(!s.covers(Path::new("/usr/local/lib")));
        assert!(!s.covers(Path::new("/root/.pyenv/versions/3.11.7/lib")));
    }

    #[test]
    fn search_path_of_this_host_loader() {
        let exe = std::fs::read_link("/proc/self/exe").expect("exe");
        let loader = crate::elf::interpreter(&exe).expect("elf");
        let s = loader_search_path(loader.as_deref());
        assert!(!s.dirs.is_empty());
        assert!(s.dirs.iter().all(|d| d.is_absolute()));
    }
}
