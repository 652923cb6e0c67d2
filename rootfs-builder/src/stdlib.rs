//! The image's standard library: which host files are kept (exclusion rules),
//! copying them (in parallel, mtimes preserved), and byte-compiling whatever
//! the host did not already have a valid level-0 `.pyc` for.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::UNIX_EPOCH;

use crate::HostPython;
use crate::error::{BuildError, io_err, tail};
use crate::fsops::{copy_file, ensure_dir};

/// Directory names dropped wherever they appear in the stdlib.
const EXCLUDED_DIRS: &[&str] = &[
    "test",
    "tests",
    "site-packages",
    "dist-packages",
    "idlelib",
    "tkinter",
    "turtledemo",
    // Bundles pip and setuptools wheels: the image must not be able to get pip.
    "ensurepip",
    "__phello__",
];

/// Files dropped from the top level of the stdlib. `sitecustomize.py` and
/// `usercustomize.py` are distro hooks (Debian's is a symlink into /etc that
/// installs apport's crash handler), not part of CPython.
const EXCLUDED_TOP_FILES: &[&str] = &["turtle.py", "sitecustomize.py", "usercustomize.py"];

/// Prefixes of extension modules dropped from `lib-dynload`: GUI and
/// test-only modules.
const EXCLUDED_DYNLOAD_PREFIXES: &[&str] = &[
    "_tkinter",
    "_test",
    "xxlimited",
    "_xxtestfuzz",
    "_ctypes_test",
];

/// The exclusion rules for one interpreter version.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    /// `config-3.11` (static libpython, Makefile, ...): matched as a prefix at top level.
    config_prefix: String,
    /// `.cpython-311.pyc`: the only bytecode suffix kept in `__pycache__`.
    pyc_suffix: String,
}

impl Rules {
    pub(crate) fn new(major: u32, minor: u32, cache_tag: &str) -> Self {
        Rules {
            config_prefix: format!("config-{major}.{minor}"),
            pyc_suffix: format!(".{cache_tag}.pyc"),
        }
    }

    /// Whether the directory at `rel` (relative to the stdlib root) is dropped.
    pub(crate) fn exclude_dir(&self, rel: &Path) -> bool {
        let Some(name) = rel.file_name().and_then(OsStr::to_str) else {
            return false;
        };
        if EXCLUDED_DIRS.contains(&name) {
            return true;
        }
        let top_level = rel.parent().is_none_or(|p| p.as_os_str().is_empty());
        top_level && name.starts_with(&self.config_prefix)
    }

    /// Whether the (non-`__pycache__`) file at `rel` is dropped.
    pub(crate) fn exclude_file(&self, rel: &Path) -> bool {
        let Some(name) = rel.file_name().and_then(OsStr::to_str) else {
            return false;
        };
        if name.ends_with(".exe") {
            // Windows installer stubs shipped by old distutils.
            return true;
        }
        let parent = rel.parent().unwrap_or(Path::new(""));
        if parent.as_os_str().is_empty() {
            return EXCLUDED_TOP_FILES.contains(&name);
        }
        if parent == Path::new("lib-dynload") {
            return EXCLUDED_DYNLOAD_PREFIXES
                .iter()
                .any(|p| name.starts_with(p));
        }
        false
    }

    /// Whether `__pycache__/<name>` is kept, given the `.py` files kept in
    /// the parent directory: only level-0 bytecode of this interpreter for a
    /// kept source (no `.opt-1`/`.opt-2`, no stale or foreign-version files).
    pub(crate) fn keep_pyc(&self, name: &OsStr, kept_sources: &HashSet<OsString>) -> bool {
        let Some(name) = name.to_str() else {
            return false;
        };
        match name.strip_suffix(&self.pyc_suffix) {
            Some(stem) if !stem.is_empty() => {
                kept_sources.contains(OsStr::new(&format!("{stem}.py")))
            }
            _ => false,
        }
    }

    /// `__pycache__/<stem>.<tag>.pyc` for the source file name `name.py`.
    fn pyc_name(&self, source: &OsStr) -> Option<String> {
        let stem = source.to_str()?.strip_suffix(".py")?;
        Some(format!("{stem}{}", self.pyc_suffix))
    }
}

/// One regular file to copy.
struct CopyJob {
    src: PathBuf,
    dst: PathBuf,
    meta: Metadata,
}

/// A kept `.py` source (as it will appear in the image) and whether the host
/// already had a valid bytecode file for it.
struct Source {
    dst: PathBuf,
    has_valid_pyc: bool,
}

/// The stdlib to copy: directories and internal symlinks already exist in
/// the image, regular files are listed in `jobs`.
pub(crate) struct StdlibPlan {
    jobs: Vec<CopyJob>,
    sources: Vec<Source>,
    /// Host paths of the kept extension modules (inputs for `ldd`).
    pub extension_modules: Vec<PathBuf>,
}

/// What copying the stdlib left to do.
pub(crate) struct CopiedStdlib {
    /// Image-side paths (host paths under the image root) of kept `.py`
    /// files without a valid host `.pyc`: they still need byte-compiling.
    pub stale_sources: Vec<PathBuf>,
    /// Number of kept `.py` files.
    pub source_count: usize,
}

struct Walker<'a> {
    rules: &'a Rules,
    host: &'a HostPython,
    magic: [u8; 4],
    jobs: Vec<CopyJob>,
    sources: Vec<Source>,
    extension_modules: Vec<PathBuf>,
}

/// Walks the host stdlib (and lib-dynload, wherever it lives) applying the
/// exclusion rules, creating directories and internal symlinks under `dst`
/// (the host path of the image's `lib/python3.X`, which must exist) and
/// listing the files to copy.
pub(crate) fn plan_stdlib(host: &HostPython, dst: &Path) -> Result<StdlibPlan, BuildError> {
    let rules = Rules::new(host.major, host.minor, &host.cache_tag);
    let mut magic = [0u8; 4];
    for (i, byte) in magic.iter_mut().enumerate() {
        *byte = host
            .pyc_magic
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or_else(|| BuildError::UnsupportedPython {
                python: host.executable.clone(),
                detail: format!("bad pyc magic `{}`", host.pyc_magic),
            })?;
    }
    let mut w = Walker {
        rules: &rules,
        host,
        magic,
        jobs: Vec::new(),
        sources: Vec::new(),
        extension_modules: Vec::new(),
    };
    w.walk(&host.stdlib, Path::new(""), dst)?;
    let dynload_dst = dst.join("lib-dynload");
    ensure_dir(&dynload_dst, 0o755)?;
    w.walk(&host.lib_dynload, Path::new("lib-dynload"), &dynload_dst)?;
    Ok(StdlibPlan {
        jobs: w.jobs,
        sources: w.sources,
        extension_modules: w.extension_modules,
    })
}

impl StdlibPlan {
    /// Copies the listed files (in parallel).
    pub(crate) fn copy(self) -> Result<CopiedStdlib, BuildError> {
        run_parallel(&self.jobs)?;
        let source_count = self.sources.len();
        let stale_sources = self
            .sources
            .into_iter()
            .filter(|s| !s.has_valid_pyc)
            .map(|s| s.dst)
            .collect();
        Ok(CopiedStdlib {
            stale_sources,
            source_count,
        })
    }
}

/// An entry of a host directory after resolving symlinks.
enum Entry {
    File(Metadata),
    Dir,
    /// A relative symlink to a file inside the stdlib: recreated as is.
    InternalLink(PathBuf, Metadata),
    /// Dangling or special: skipped.
    Skip,
}

impl Walker<'_> {
    fn classify(&self, path: &Path, meta: &Metadata) -> Result<Entry, BuildError> {
        let ft = meta.file_type();
        if ft.is_file() {
            return Ok(Entry::File(meta.clone()));
        }
        if ft.is_dir() {
            return Ok(Entry::Dir);
        }
        if !ft.is_symlink() {
            return Ok(Entry::Skip);
        }
        let target = fs::read_link(path).map_err(io_err("cannot read symlink", path))?;
        let Ok(resolved) = fs::canonicalize(path) else {
            return Ok(Entry::Skip);
        };
        let Ok(target_meta) = fs::metadata(&resolved) else {
            return Ok(Entry::Skip);
        };
        if target_meta.is_dir() {
            // Walked like a real directory, unless it would recurse forever.
            if path.starts_with(&resolved) {
                return Ok(Entry::Skip);
            }
            return Ok(Entry::Dir);
        }
        if !target_meta.is_file() {
            return Ok(Entry::Skip);
        }
        let internal = target.is_relative()
            && (resolved.starts_with(&self.host.stdlib)
                || resolved.starts_with(&self.host.lib_dynload));
        if internal {
            Ok(Entry::InternalLink(target, target_meta))
        } else {
            // Points outside the stdlib: copy the content.
            Ok(Entry::File(target_meta))
        }
    }

    fn walk(&mut self, src: &Path, rel: &Path, dst: &Path) -> Result<(), BuildError> {
        let mut entries = Vec::new();
        for entry in fs::read_dir(src).map_err(io_err("cannot list host directory", src))? {
            let entry = entry.map_err(io_err("cannot list host directory", src))?;
            let path = entry.path();
            let meta =
                fs::symlink_metadata(&path).map_err(io_err("cannot inspect host path", &path))?;
            let kind = self.classify(&path, &meta)?;
            entries.push((entry.file_name(), path, kind));
        }

        // Files first, so `__pycache__` knows which sources are kept.
        let mut kept_sources = HashSet::new();
        let in_dynload = rel == Path::new("lib-dynload");
        for (name, path, kind) in &entries {
            let rel_child = rel.join(name);
            let (meta, link) = match kind {
                Entry::File(m) => (m, None),
                Entry::InternalLink(t, m) => (m, Some(t)),
                Entry::Dir | Entry::Skip => continue,
            };
            if self.rules.exclude_file(&rel_child) {
                continue;
            }
            let dst_child = dst.join(name);
            match link {
                Some(target) => symlink(target, &dst_child)
                    .map_err(io_err("cannot create image symlink", &dst_child))?,
                None => self.jobs.push(CopyJob {
                    src: path.clone(),
                    dst: dst_child.clone(),
                    meta: meta.clone(),
                }),
            }
            if in_dynload && name.as_bytes().ends_with(b".so") {
                self.extension_modules.push(path.clone());
            }
            if name.as_bytes().ends_with(b".py") {
                kept_sources.insert(name.clone());
                let has_valid_pyc = self.host_pyc_is_valid(src, name, meta);
                self.sources.push(Source {
                    dst: dst_child,
                    has_valid_pyc,
                });
            }
        }

        for (name, path, kind) in &entries {
            if !matches!(kind, Entry::Dir) {
                continue;
            }
            let rel_child = rel.join(name);
            if name == "__pycache__" {
                let dst_child = dst.join(name);
                ensure_dir(&dst_child, 0o755)?;
                self.copy_pycache(path, &dst_child, &kept_sources)?;
                continue;
            }
            if self.rules.exclude_dir(&rel_child) {
                continue;
            }
            // lib-dynload is copied by its own walk, wherever it lives.
            if rel_child == Path::new("lib-dynload") || *path == self.host.lib_dynload {
                continue;
            }
            let dst_child = dst.join(name);
            ensure_dir(&dst_child, 0o755)?;
            self.walk(path, &rel_child, &dst_child)?;
        }
        Ok(())
    }

    fn copy_pycache(
        &mut self,
        src: &Path,
        dst: &Path,
        kept_sources: &HashSet<OsString>,
    ) -> Result<(), BuildError> {
        for entry in fs::read_dir(src).map_err(io_err("cannot list host directory", src))? {
            let entry = entry.map_err(io_err("cannot list host directory", src))?;
            let name = entry.file_name();
            if !self.rules.keep_pyc(&name, kept_sources) {
                continue;
            }
            let path = entry.path();
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            if meta.is_file() {
                self.jobs.push(CopyJob {
                    src: path,
                    dst: dst.join(&name),
                    meta,
                });
            }
        }
        Ok(())
    }

    /// Whether the host has a level-0 timestamp `.pyc` for `dir/name` that
    /// the image's importer will accept: magic, flags 0, and source mtime and
    /// size as recorded (we preserve the source mtime when copying).
    fn host_pyc_is_valid(&self, dir: &Path, name: &OsStr, source: &Metadata) -> bool {
        let Some(pyc) = self.rules.pyc_name(name) else {
            return false;
        };
        let mut header = [0u8; 16];
        let ok = File::open(dir.join("__pycache__").join(pyc))
            .and_then(|mut f| f.read_exact(&mut header))
            .is_ok();
        if !ok {
            return false;
        }
        let Ok(mtime) = source.modified() else {
            return false;
        };
        let secs = match mtime.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs(),
            Err(_) => return false,
        };
        let word =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        header[..4] == self.magic
            && word(4) == 0
            && word(8) == secs as u32
            && word(12) == source.size() as u32
    }
}

/// Copies all jobs using a few threads (the data moves in-kernel; the cost is
/// per-file syscalls, which parallelize well).
fn run_parallel(jobs: &[CopyJob]) -> Result<(), BuildError> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    let next = AtomicUsize::new(0);
    let failure: Mutex<Option<BuildError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    if let Err(e) = copy_file(&job.src, &job.dst, &job.meta) {
                        next.store(jobs.len(), Ordering::Relaxed);
                        if let Ok(mut slot) = failure.lock() {
                            slot.get_or_insert(e);
                        }
                        break;
                    }
                }
            });
        }
    });
    match failure.into_inner() {
        Ok(Some(e)) => Err(e),
        Ok(None) => Ok(()),
        Err(poisoned) => match poisoned.into_inner() {
            Some(e) => Err(e),
            None => Ok(()),
        },
    }
}

/// Byte-compiles `stale` sources of the image stdlib at `stdlib_dst` with
/// the host interpreter (timestamp invalidation, optimization level 0).
///
/// If many files are stale the whole directory is compiled in parallel
/// (`compileall -j0 DIR`, which itself skips up-to-date files); otherwise only
/// the stale files are passed on stdin. Nothing runs if nothing is stale.
pub(crate) fn compile(
    host: &HostPython,
    image_root: &Path,
    stdlib_dst: &Path,
    stale: &[PathBuf],
    total_sources: usize,
) -> Result<(), BuildError> {
    if stale.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new(&host.executable);
    cmd.args(["-I", "-m", "compileall", "-q"])
        .args(["--invalidation-mode", "timestamp"])
        .env_remove("SOURCE_DATE_EPOCH")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if host.minor >= 9 {
        // Record image paths, not build paths, in co_filename.
        cmd.arg("-s").arg(image_root).args(["-p", "/"]);
    }
    let whole_tree = stale.len() > 64 && stale.len() * 4 > total_sources;
    let mut list = Vec::new();
    if whole_tree {
        cmd.arg("-j0").arg(stdlib_dst).stdin(Stdio::null());
    } else {
        // -f: our header check is stricter than compileall's (it also
        // compares the source size), so make compileall rewrite these.
        cmd.args(["-f", "-i", "-"]).stdin(Stdio::piped());
        for path in stale {
            list.extend_from_slice(path.as_os_str().as_bytes());
            list.push(b'\n');
        }
    }
    let spawn_err = |source| BuildError::PythonSpawn {
        python: host.executable.clone(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&list).map_err(io_err(
            "cannot write file list to compileall of",
            &host.executable,
        ))?;
    }
    let output = child.wait_with_output().map_err(spawn_err)?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        return Err(BuildError::Compileall {
            python: host.executable.clone(),
            status: output.status.to_string(),
            output: tail(&text, 800),
        });
    }
    // compileall creates `__pycache__` and `.pyc` subject to the builder's
    // umask; the sandbox user must be able to read them.
    normalize_pycache_modes(stdlib_dst)
}

/// Sets every `__pycache__` directory below `dir` to 0o755 and its files to 0o644.
fn normalize_pycache_modes(dir: &Path) -> Result<(), BuildError> {
    for entry in fs::read_dir(dir).map_err(io_err("cannot list image directory", dir))? {
        let entry = entry.map_err(io_err("cannot list image directory", dir))?;
        let path = entry.path();
        let ft = entry
            .file_type()
            .map_err(io_err("cannot inspect image path", &path))?;
        if !ft.is_dir() {
            continue;
        }
        if entry.file_name() == "__pycache__" {
            set_mode(&path, 0o755)?;
            for pyc in fs::read_dir(&path).map_err(io_err("cannot list image directory", &path))? {
                let pyc = pyc.map_err(io_err("cannot list image directory", &path))?;
                let is_file = pyc
                    .file_type()
                    .map_err(io_err("cannot inspect image path", &pyc.path()))?
                    .is_file();
                if is_file {
                    set_mode(&pyc.path(), 0o644)?;
                }
            }
        } else {
            normalize_pycache_modes(&path)?;
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), BuildError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io_err("cannot set mode of image path", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules::new(3, 11, "cpython-311")
    }

    #[test]
    fn excludes_test_and_gui_directories_anywhere() {
        let r = rules();
        for d in [
            "test",
            "tests",
            "lib2to3/tests",
            "unittest/test",
            "ctypes/test",
            "distutils/tests",
            "idlelib",
            "tkinter",
            "turtledemo",
            "ensurepip",
            "__phello__",
            "site-packages",
            "dist-packages",
            "config-3.11-x86_64-linux-gnu",
            "config-3.11d-aarch64-linux-gnu",
        ] {
            assert!(r.exclude_dir(Path::new(d)), "{d} should be excluded");
        }
        for d in [
            "asyncio",
            "json",
            "lib-dynload",
            "unittest",
            "email/mime",
            "encodings",
            "venv",
            "sqlite3",
            "testing",
            "config",
            "xml/config-3.11-x",
        ] {
            assert!(!r.exclude_dir(Path::new(d)), "{d} should be kept");
        }
    }

    #[test]
    fn excludes_files() {
        let r = rules();
        for f in [
            "turtle.py",
            "sitecustomize.py",
            "lib-dynload/_tkinter.cpython-311-x86_64-linux-gnu.so",
            "lib-dynload/_testcapi.cpython-311-x86_64-linux-gnu.so",
            "lib-dynload/_testinternalcapi.cpython-311-x86_64-linux-gnu.so",
            "lib-dynload/xxlimited.cpython-311-x86_64-linux-gnu.so",
            "lib-dynload/xxlimited_35.cpython-311-x86_64-linux-gnu.so",
            "lib-dynload/_xxtestfuzz.cpython-311-x86_64-linux-gnu.so",
            "lib-dynload/_ctypes_test.cpython-311-x86_64-linux-gnu.so",
            "distutils/command/wininst-10.0.exe",
        ] {
            assert!(r.exclude_file(Path::new(f)), "{f} should be excluded");
        }
        for f in [
            "os.py",
            "configparser.py",
            "json/__init__.py",
            "turtle2.py",
            "foo/turtle.py",
            "lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so",
            "lib-dynload/_xxsubinterpreters.cpython-311-x86_64-linux-gnu.so",
            "lib-dynload/_ctypes.cpython-311-x86_64-linux-gnu.so",
            "lib-dynload/_sqlite3.cpython-311-x86_64-linux-gnu.so",
            "_sysconfigdata__x86_64-linux-gnu.py",
            "LICENSE.txt",
        ] {
            assert!(!r.exclude_file(Path::new(f)), "{f} should be kept");
        }
    }

    #[test]
    fn keeps_only_level0_pyc_of_kept_sources() {
        let r = rules();
        let kept: HashSet<OsString> = ["os.py", "json.py"].iter().map(OsString::from).collect();
        let keep = |n: &str| r.keep_pyc(OsStr::new(n), &kept);
        assert!(keep("os.cpython-311.pyc"));
        assert!(keep("json.cpython-311.pyc"));
        assert!(!keep("os.cpython-311.opt-1.pyc"));
        assert!(!keep("os.cpython-311.opt-2.pyc"));
        assert!(!keep("os.cpython-310.pyc"), "foreign version");
        assert!(!keep("turtle.cpython-311.pyc"), "source not kept");
        assert!(!keep(".cpython-311.pyc"));
        assert!(!keep("os.py"));
        assert_eq!(
            r.pyc_name(OsStr::new("os.py")).as_deref(),
            Some("os.cpython-311.pyc")
        );
        assert_eq!(r.pyc_name(OsStr::new("os.txt")), None);
    }
}
