//! Low-level filesystem operations on the image being built: creating
//! directories and files without ever following a symlink inside the image,
//! copying host files (data via `copy_file_range`, mode masked to 0o777,
//! mtime preserved), and mirroring a host path component by component with
//! its symlinks.
//!
//! Symlinks inside the image are never followed on the host side: image
//! symlinks often have absolute targets (`/usr/lib64/ld-linux-x86-64.so.2 ->
//! /lib/x86_64-linux-gnu/...`) which, followed from outside the image, would
//! point into the host.

use std::fs::{self, File, FileTimes, Metadata, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

use crate::error::{BuildError, io_err};

/// Linux's limit on symlinks followed while resolving one path.
const MAX_SYMLINK_HOPS: u32 = 40;

/// The image root being built.
#[derive(Debug, Clone)]
pub(crate) struct Image {
    root: PathBuf,
}

impl Image {
    /// `root` must be an absolute, existing directory.
    pub(crate) fn new(root: PathBuf) -> Self {
        Image { root }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Host location of the absolute image path `image_path`.
    pub(crate) fn host(&self, image_path: &Path) -> PathBuf {
        let mut out = self.root.clone();
        for c in image_path.components() {
            if let Component::Normal(name) = c {
                out.push(name);
            }
        }
        out
    }

    /// Creates the directory `image_path` and its missing parents with `mode`
    /// (parents get 0o755). Fails if any component exists as a non-directory,
    /// in particular a symlink.
    pub(crate) fn mkdir_p(&self, image_path: &Path, mode: u32) -> Result<(), BuildError> {
        let mut cur = self.root.clone();
        let comps: Vec<_> = image_path
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        for (i, c) in comps.iter().enumerate() {
            cur.push(c);
            let m = if i + 1 == comps.len() { mode } else { 0o755 };
            ensure_dir(&cur, m)?;
        }
        Ok(())
    }

    /// Writes a new regular file at `image_path` (parent must exist).
    pub(crate) fn write_file(
        &self,
        image_path: &Path,
        contents: &[u8],
        mode: u32,
    ) -> Result<(), BuildError> {
        let path = self.host(image_path);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("cannot create image file", &path))?;
        f.write_all(contents)
            .map_err(io_err("cannot write image file", &path))?;
        f.set_permissions(Permissions::from_mode(mode))
            .map_err(io_err("cannot set mode of image file", &path))?;
        Ok(())
    }

    /// Creates the symlink `image_path -> target` (or accepts an identical one).
    pub(crate) fn symlink(&self, image_path: &Path, target: &Path) -> Result<(), BuildError> {
        ensure_symlink(&self.host(image_path), target)
    }

    /// Reproduces the absolute host path `host_path` inside the image,
    /// component by component: directories are created (empty, 0o755),
    /// every symlink met on the way is recreated with the same target and
    /// then followed on the host, and a final regular file is copied.
    /// A final directory is created empty (its content is not copied).
    pub(crate) fn mirror(&self, host_path: &Path) -> Result<(), BuildError> {
        self.mirror_inner(host_path, host_path, 0)
    }

    fn mirror_inner(&self, original: &Path, path: &Path, hops: u32) -> Result<(), BuildError> {
        if hops > MAX_SYMLINK_HOPS {
            return Err(BuildError::SymlinkLoop {
                path: original.to_path_buf(),
            });
        }
        if !path.is_absolute() {
            return Err(BuildError::UnsupportedFile {
                path: path.to_path_buf(),
                detail: "is not an absolute path".into(),
            });
        }
        let comps: Vec<Component> = path.components().collect();
        // `cur` is always a real (non-symlink) host directory that already
        // exists, mirrored, in the image.
        let mut cur = PathBuf::from("/");
        for (i, c) in comps.iter().enumerate() {
            let name = match c {
                Component::Normal(name) => name,
                Component::ParentDir => {
                    cur.pop();
                    continue;
                }
                _ => continue,
            };
            let next = cur.join(name);
            let meta =
                fs::symlink_metadata(&next).map_err(io_err("cannot inspect host path", &next))?;
            let in_image = self.host(&next);
            let ft = meta.file_type();
            if ft.is_symlink() {
                let target = fs::read_link(&next).map_err(io_err("cannot read symlink", &next))?;
                ensure_symlink(&in_image, &target)?;
                let mut resolved = if target.is_absolute() {
                    target
                } else {
                    cur.join(target)
                };
                for rest in &comps[i + 1..] {
                    resolved.push(rest);
                }
                return self.mirror_inner(original, &resolved, hops + 1);
            } else if ft.is_dir() {
                ensure_dir(&in_image, 0o755)?;
                cur = next;
            } else if ft.is_file() && i + 1 == comps.len() {
                copy_file_if_absent(&next, &in_image, &meta)?;
                return Ok(());
            } else {
                return Err(BuildError::UnsupportedFile {
                    path: next,
                    detail: if ft.is_file() {
                        "is a file used as a directory".into()
                    } else {
                        "is not a regular file, directory or symlink".into()
                    },
                });
            }
        }
        Ok(())
    }
}

/// Creates directory `path` with `mode` unless it already is a directory.
pub(crate) fn ensure_dir(path: &Path, mode: u32) -> Result<(), BuildError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_dir() => Ok(()),
        Ok(_) => Err(BuildError::Conflict {
            path: path.to_path_buf(),
            detail: "exists but is not a directory".into(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir(path).map_err(io_err("cannot create image directory", path))?;
            // Explicit chmod: the process umask must not matter, and sticky
            // bits (e.g. /tmp 1777) are not applied by mkdir on every fs.
            fs::set_permissions(path, Permissions::from_mode(mode))
                .map_err(io_err("cannot set mode of image directory", path))
        }
        Err(e) => Err(io_err("cannot inspect image path", path)(e)),
    }
}

/// Creates symlink `path -> target` unless an identical one exists.
fn ensure_symlink(path: &Path, target: &Path) -> Result<(), BuildError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            let existing = fs::read_link(path).map_err(io_err("cannot read symlink", path))?;
            if existing == target {
                Ok(())
            } else {
                Err(BuildError::Conflict {
                    path: path.to_path_buf(),
                    detail: format!(
                        "symlink points to `{}`, wanted `{}`",
                        existing.display(),
                        target.display()
                    ),
                })
            }
        }
        Ok(_) => Err(BuildError::Conflict {
            path: path.to_path_buf(),
            detail: format!("exists but should be a symlink to `{}`", target.display()),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            symlink(target, path).map_err(io_err("cannot create image symlink", path))
        }
        Err(e) => Err(io_err("cannot inspect image path", path)(e)),
    }
}

/// Copies regular file `src` (whose metadata is `meta`) to `dst` unless
/// `dst` already exists as a regular file with the same size.
pub(crate) fn copy_file_if_absent(
    src: &Path,
    dst: &Path,
    meta: &Metadata,
) -> Result<(), BuildError> {
    match fs::symlink_metadata(dst) {
        Ok(m) if m.file_type().is_file() && m.len() == meta.len() => Ok(()),
        Ok(_) => Err(BuildError::Conflict {
            path: dst.to_path_buf(),
            detail: format!("a different file is already there than `{}`", src.display()),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => copy_file(src, dst, meta),
        Err(e) => Err(io_err("cannot inspect image path", dst)(e)),
    }
}

/// Mode of an image file copied from a host file with `host_mode`: 0o755 if
/// the host file is executable by anyone, else 0o644. Never setuid, setgid or
/// sticky; always world-readable, because the sandbox user is not the
/// builder (a host file installed under a umask of 027 must still load).
pub(crate) fn image_file_mode(host_mode: u32) -> u32 {
    if host_mode & 0o111 != 0 { 0o755 } else { 0o644 }
}

/// Copies regular file `src` to the new file `dst`: the data with
/// `copy_file_range` (via `io::copy`), the mode normalized by
/// [`image_file_mode`], and the modification time (so the host's
/// timestamp-based `.pyc` files stay valid).
pub(crate) fn copy_file(src: &Path, dst: &Path, meta: &Metadata) -> Result<(), BuildError> {
    let mut input = File::open(src).map_err(io_err("cannot open host file", src))?;
    let mut output = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)
        .map_err(io_err("cannot create image file", dst))?;
    io::copy(&mut input, &mut output).map_err(io_err("cannot copy host file", src))?;
    output
        .set_permissions(Permissions::from_mode(image_file_mode(meta.mode())))
        .map_err(io_err("cannot set mode of image file", dst))?;
    let mtime = meta
        .modified()
        .map_err(io_err("cannot read modification time of", src))?;
    output
        .set_times(FileTimes::new().set_modified(mtime))
        .map_err(io_err("cannot set modification time of image file", dst))?;
    Ok(())
}

/// Counts regular files and their bytes below `root` (symlinks not followed).
pub(crate) fn count_files(root: &Path) -> Result<(u64, u64), BuildError> {
    let mut files = 0u64;
    let mut bytes = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(io_err("cannot list image directory", &dir))? {
            let entry = entry.map_err(io_err("cannot list image directory", &dir))?;
            let ft = entry
                .file_type()
                .map_err(io_err("cannot inspect image path", &entry.path()))?;
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                let m = entry
                    .metadata()
                    .map_err(io_err("cannot inspect image path", &entry.path()))?;
                files += 1;
                bytes += m.len();
            }
        }
    }
    Ok((files, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, PathBuf, Image) {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = dir.path().join("host");
        let root = dir.path().join("root");
        fs::create_dir_all(host.join("usr/lib/multi")).expect("mkdir");
        fs::create_dir(&root).expect("mkdir");
        (dir, host, Image::new(root))
    }

    #[test]
    fn mirror_recreates_symlink_chain() {
        let (_dir, host, image) = setup();
        // host/lib -> usr/lib ; usr/lib/multi/libz.so.1 -> libz.so.1.2 ;
        // host/lib64 -> usr/lib64 ; usr/lib64/ld.so -> <abs>/lib/multi/ld.so.real
        symlink("usr/lib", host.join("lib")).expect("symlink");
        fs::write(host.join("usr/lib/multi/libz.so.1.2"), b"zlib").expect("write");
        fs::set_permissions(
            host.join("usr/lib/multi/libz.so.1.2"),
            Permissions::from_mode(0o4755),
        )
        .expect("chmod");
        symlink("libz.so.1.2", host.join("usr/lib/multi/libz.so.1")).expect("symlink");
        fs::create_dir(host.join("usr/lib64")).expect("mkdir");
        symlink("usr/lib64", host.join("lib64")).expect("symlink");
        fs::write(host.join("usr/lib/multi/ld.so.real"), b"ld").expect("write");
        let abs_target = host.join("lib/multi/ld.so.real");
        symlink(&abs_target, host.join("usr/lib64/ld.so")).expect("symlink");

        image
            .mirror(&host.join("lib/multi/libz.so.1"))
            .expect("mirror libz");
        image
            .mirror(&host.join("lib64/ld.so"))
            .expect("mirror ld.so");
        // Mirroring twice is fine.
        image
            .mirror(&host.join("lib64/ld.so"))
            .expect("mirror again");

        let r = |p: &Path| image.host(p);
        assert_eq!(
            fs::read_link(r(&host.join("lib"))).expect("link"),
            Path::new("usr/lib")
        );
        assert_eq!(
            fs::read_link(r(&host.join("usr/lib/multi/libz.so.1"))).expect("link"),
            Path::new("libz.so.1.2")
        );
        let real = r(&host.join("usr/lib/multi/libz.so.1.2"));
        let m = fs::symlink_metadata(&real).expect("copied");
        assert!(m.file_type().is_file());
        assert_eq!(m.mode() & 0o7777, 0o755, "setuid bit must be dropped");
        assert_eq!(image_file_mode(0o4750), 0o755);
        assert_eq!(image_file_mode(0o2640), 0o644);
        assert_eq!(image_file_mode(0o600), 0o644);
        assert_eq!(image_file_mode(0o700), 0o755);
        assert_eq!(fs::read(&real).expect("read"), b"zlib");
        assert_eq!(
            fs::read_link(r(&host.join("usr/lib64/ld.so"))).expect("link"),
            abs_target
        );
        assert!(
            fs::symlink_metadata(r(&host.join("usr/lib/multi/ld.so.real")))
                .expect("copied")
                .is_file()
        );
    }

    #[test]
    fn mirror_final_directory_is_created_empty() {
        let (_dir, host, image) = setup();
        fs::write(host.join("usr/lib/multi/a"), b"a").expect("write");
        symlink(host.join("usr/lib/multi"), host.join("usr/lib/certs")).expect("symlink");
        image.mirror(&host.join("usr/lib/certs")).expect("mirror");
        let d = image.host(&host.join("usr/lib/multi"));
        assert!(d.is_dir());
        assert_eq!(fs::read_dir(d).expect("ls").count(), 0);
    }

    #[test]
    fn mirror_detects_loops_and_conflicts() {
        let (_dir, host, image) = setup();
        symlink("b", host.join("a")).expect("symlink");
        symlink("a", host.join("b")).expect("symlink");
        assert!(matches!(
            image.mirror(&host.join("a")),
            Err(BuildError::SymlinkLoop { .. })
        ));
        let (_dir2, host2, image2) = setup();
        fs::write(host2.join("f"), b"1").expect("write");
        image2.mkdir_p(&host2.join("f"), 0o755).expect("mkdir");
        assert!(matches!(
            image2.mirror(&host2.join("f")),
            Err(BuildError::Conflict { .. })
        ));
    }

    #[test]
    fn copy_preserves_mtime() {
        let (_dir, host, image) = setup();
        let src = host.join("mod.py");
        fs::write(&src, b"x = 1\n").expect("write");
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
        File::options()
            .write(true)
            .open(&src)
            .expect("open")
            .set_modified(old)
            .expect("set mtime");
        let dst = image.root().join("mod.py");
        copy_file(&src, &dst, &fs::metadata(&src).expect("meta")).expect("copy");
        assert_eq!(
            fs::metadata(&dst).expect("meta").modified().expect("mtime"),
            old
        );
    }

    #[test]
    fn mkdir_p_refuses_symlinked_components() {
        let (_dir, _host, image) = setup();
        symlink("/", image.root().join("escape")).expect("symlink");
        assert!(image.mkdir_p(Path::new("/escape/x"), 0o755).is_err());
        image.mkdir_p(Path::new("/tmp"), 0o1777).expect("mkdir");
        let m = fs::metadata(image.root().join("tmp")).expect("meta");
        assert_eq!(m.mode() & 0o7777, 0o1777);
    }
}
