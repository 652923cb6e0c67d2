//! The interpreter moved: it was configured for a prefix on the host (`/usr` for
//! Debian's python, `~/.pyenv/versions/3.X.Y` for pyenv's) and lives at
//! [`IMAGE_PREFIX`] in the image. This module makes both views agree:
//!
//! - links at the configure-time prefix (`<prefix>/lib/python3.X` and
//!   `<prefix>/include/python3.X`) pointing at the relocated copies. CPython finds
//!   its stdlib from its own path; when it cannot (started by a bare name with no
//!   `PATH`, e.g. `subprocess.run(["python3", ...], executable=sys.executable, env={})`)
//!   it falls back to the prefix compiled into it, which must then resolve too;
//! - `sysconfig`'s build files: the `Makefile` and `pyconfig.h` copied where the image's
//!   interpreter looks for them (`sysconfig.get_makefile_filename()`,
//!   `get_config_h_filename()`), and the installation paths of `_sysconfigdata_*.py`
//!   (`prefix`, `LIBDIR`, `INCLUDEPY`, `LIBPL`...) moved to [`IMAGE_PREFIX`], so they
//!   agree with the paths Python computes from `sys.prefix`.
//!
//! It never writes outside the image and never follows a symlink of the image.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use crate::error::{BuildError, io_err, tail};
use crate::fsops::{Image, copy_file};
use crate::{HostPython, IMAGE_PREFIX};

/// `sysconfig` variables that name installation directories (or, for
/// `INCLDIRSTOMAKE`, a list of them): moved with the prefix. Tools the build used
/// (`INSTALL`, `DTRACE`) and system data (`TZPATH`) stay as they are.
const PATH_VARS: &[&str] = &[
    "prefix",
    "exec_prefix",
    "datarootdir",
    "BINDIR",
    "BINLIBDEST",
    "CONFINCLUDEDIR",
    "CONFINCLUDEPY",
    "DESTLIB",
    "DESTSHARED",
    "INCLDIRSTOMAKE",
    "INCLUDEDIR",
    "INCLUDEPY",
    "LIBDEST",
    "LIBDIR",
    "LIBPC",
    "LIBPL",
    "MACHDESTLIB",
    "MANDIR",
    "SCRIPTDIR",
];

/// Rewrites a `_sysconfigdata_*.py` read from argv[1]: each path variable under the old
/// prefixes (argv[2], argv[3]) moves to argv[4]. Prints the new module (as sysconfig
/// itself writes it: `build_time_vars = <pprint>`).
const REWRITE_SCRIPT: &str = r##"
import pprint, runpy, sys
src, olds, new, keys = sys.argv[1], sys.argv[2:4], sys.argv[4], sys.argv[5].split(",")
olds = sorted({o for o in olds if o and o != "/"}, key=len, reverse=True)
v = dict(runpy.run_path(src)["build_time_vars"])
def move(p):
    for o in olds:
        if p == o or p.startswith(o + "/"):
            return new + p[len(o):]
    return p
for k in keys:
    if isinstance(v.get(k), str):
        v[k] = " ".join(move(p) for p in v[k].split(" "))
print("# system configuration generated and used by the sysconfig module")
print("# (installation paths moved from %s to %s by pysandbox's image builder)" % (" and ".join(olds), new))
print("build_time_vars = " + pprint.pformat(v))
"##;

/// The configure-time prefixes that differ from the image's, deduplicated.
fn old_prefixes(host: &HostPython) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = [&host.config_prefix, &host.config_exec_prefix]
        .into_iter()
        .flatten()
        .filter(|p| p.is_absolute() && *p != Path::new(IMAGE_PREFIX) && *p != Path::new("/"))
        .cloned()
        .collect();
    v.dedup();
    v
}

/// Whether `image_path` can be created as a link without passing through (or
/// replacing) anything the image already has other than plain directories.
fn free_for_link(image: &Image, image_path: &Path) -> bool {
    let mut cur = image.root().to_path_buf();
    let comps: Vec<_> = image_path
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    for (i, c) in comps.iter().enumerate() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if i + 1 < comps.len() && m.is_dir() => {}
            Ok(_) => return false,
            Err(_) => return true,
        }
    }
    false
}

/// Links `<old prefix>/<platlibdir>/python3.X` and `<old prefix>/include/python3.X`
/// to the image's copies. Directories made on the way are 0o755 (and so is an
/// existing `/root` the way leads through: pyenv's prefix lives in root's home, and
/// the sandbox user must be able to traverse it; the image's `/root` holds nothing
/// else).
pub(crate) fn prefix_links(image: &Image, host: &HostPython) -> Result<(), BuildError> {
    let version = format!("python{}.{}", host.major, host.minor);
    let image_prefix = Path::new(IMAGE_PREFIX);
    for old in old_prefixes(host) {
        for (dir, target) in [
            (
                old.join(&host.platlibdir).join(&version),
                image_prefix.join(&host.platlibdir).join(&version),
            ),
            (
                old.join("include").join(&version),
                image_prefix.join("include").join(&version),
            ),
        ] {
            if !image.host(&target).exists() || !free_for_link(image, &dir) {
                continue;
            }
            if let Some(parent) = dir.parent() {
                image.mkdir_p(parent, 0o755)?;
                let mut p = PathBuf::from("/");
                for c in parent.components().skip(1) {
                    p.push(c);
                    let h = image.host(&p);
                    let m = fs::symlink_metadata(&h).map_err(io_err("cannot inspect", &h))?;
                    if m.is_dir() && m.permissions().mode() & 0o055 != 0o055 {
                        fs::set_permissions(&h, fs::Permissions::from_mode(0o755))
                            .map_err(io_err("cannot set mode of image directory", &h))?;
                    }
                }
            }
            image.symlink(&dir, &target)?;
        }
    }
    Ok(())
}

/// Copies the `Makefile` and `pyconfig.h` where the image's interpreter looks for them,
/// and moves the paths of every top-level `_sysconfigdata_*.py` of the image's stdlib
/// (`stdlib_dst`, a host path). Returns the rewritten sources (to byte-compile).
pub(crate) fn sysconfig_files(
    image: &Image,
    host: &HostPython,
    stdlib_dst: &Path,
) -> Result<Vec<PathBuf>, BuildError> {
    let olds = old_prefixes(host);
    if let Some(makefile) = &host.makefile
        && let (Some(dir), Some(name)) = (
            makefile.parent().and_then(Path::file_name),
            makefile.file_name(),
        )
    {
        let dst_dir = stdlib_dst.join(dir);
        crate::fsops::ensure_dir(&dst_dir, 0o755)?;
        let text = fs::read_to_string(makefile).map_err(io_err("cannot read", makefile))?;
        write_new(
            &dst_dir.join(name),
            move_makefile_prefix(&text, &olds).as_bytes(),
        )?;
    }
    if let Some(config_h) = &host.config_h {
        let include = Path::new(IMAGE_PREFIX)
            .join("include")
            .join(format!("python{}.{}", host.major, host.minor));
        image.mkdir_p(&include, 0o755)?;
        let meta = fs::metadata(config_h).map_err(io_err("cannot inspect", config_h))?;
        copy_file(config_h, &image.host(&include.join("pyconfig.h")), &meta)?;
    }
    let mut rewritten = Vec::new();
    if olds.is_empty() {
        return Ok(rewritten);
    }
    let mut entries: Vec<PathBuf> = fs::read_dir(stdlib_dst)
        .map_err(io_err("cannot list image directory", stdlib_dst))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("_sysconfigdata_") && n.ends_with(".py"))
                && p.symlink_metadata().is_ok_and(|m| m.is_file())
        })
        .collect();
    entries.sort();
    for path in entries {
        let old = |i: usize| {
            olds.get(i)
                .or(olds.first())
                .map(|p| p.as_os_str().to_owned())
        };
        let out = Command::new(&host.executable)
            .args(["-I", "-B", "-c", REWRITE_SCRIPT])
            .arg(&path)
            .arg(old(0).unwrap_or_default())
            .arg(old(1).unwrap_or_default())
            .arg(IMAGE_PREFIX)
            .arg(PATH_VARS.join(","))
            .output()
            .map_err(|source| BuildError::PythonSpawn {
                python: host.executable.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(BuildError::ProbeFailed {
                python: host.executable.clone(),
                status: out.status.to_string(),
                stderr: tail(&String::from_utf8_lossy(&out.stderr), 600),
            });
        }
        fs::remove_file(&path).map_err(io_err("cannot replace image file", &path))?;
        write_new(&path, &out.stdout)?;
        rewritten.push(path);
    }
    Ok(rewritten)
}

/// `prefix=` and `exec_prefix=` of a Makefile moved to the image's prefix (every other
/// variable of the installation derives from them, or is left as configured).
fn move_makefile_prefix(text: &str, olds: &[PathBuf]) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let moved = ["prefix=", "exec_prefix="].iter().find_map(|k| {
            let value = line.strip_prefix(k)?.trim();
            olds.iter()
                .any(|o| Path::new(value) == o.as_path())
                .then(|| format!("{k}\t\t{IMAGE_PREFIX}\n"))
        });
        out.push_str(moved.as_deref().unwrap_or(line));
    }
    out
}

fn write_new(path: &Path, data: &[u8]) -> Result<(), BuildError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .map_err(io_err("cannot create image file", path))?;
    f.write_all(data)
        .map_err(|e: io::Error| io_err("cannot write image file", path)(e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
        .map_err(io_err("cannot set mode of image file", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makefile_prefix_moves() {
        let olds = vec![PathBuf::from("/usr")];
        let text = "x=1\nprefix=\t\t/usr\nexec_prefix=\t${prefix}\nLIBDIR=\t\t/usr/lib\n";
        assert_eq!(
            move_makefile_prefix(text, &olds),
            "x=1\nprefix=\t\t/opt/conda\nexec_prefix=\t${prefix}\nLIBDIR=\t\t/usr/lib\n"
        );
    }
}
