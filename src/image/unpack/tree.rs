//! The destination tree: paths cleaned lexically into components, directories reached
//! from the root's descriptor one component at a time (`O_NOFOLLOW`; a symlink only through
//! `openat2(RESOLVE_BENEATH)`), the chain of the previous entry's directory descriptors kept
//! for the next, and what is in an entry's way removed.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use super::{DirAttrs, MAX_DEPTH, MAX_PATH_BYTES, UnpackError, Unpacker};
use crate::sys::fs::{
    RESOLVE_BENEATH, RESOLVE_NO_MAGICLINKS, fstatat, mkdirat, open_dir_at, openat2, remove_tree,
    unlinkat,
};

impl Unpacker {
    /// Records `key` and its ancestors as written by this layer.
    pub(super) fn touch(&mut self, key: &[u8]) {
        if !self.touched.insert(key.to_vec()) {
            return;
        }
        let mut end = key.len();
        while let Some(p) = key[..end].iter().rposition(|&b| b == b'/') {
            if !self.touched.insert(key[..p].to_vec()) {
                break;
            }
            end = p;
        }
    }

    /// The directory `comps` (created with its missing ancestors, 0755).
    pub(super) fn parent_dir(
        &mut self,
        raw: &[u8],
        comps: &[&[u8]],
    ) -> Result<Arc<OwnedFd>, UnpackError> {
        match self.walk(raw, comps, true)? {
            Some(fd) => Ok(fd),
            None => Err(self.refuse(raw, "its parent directory could not be created")),
        }
    }

    /// Opens the directory `comps` from the root, reusing the descriptors of the previous
    /// walk for the common prefix. `None` when a component is missing and `!create`.
    pub(super) fn walk(
        &mut self,
        raw: &[u8],
        comps: &[&[u8]],
        create: bool,
    ) -> Result<Option<Arc<OwnedFd>>, UnpackError> {
        let mut k = 0;
        while k < self.stack.len() && k < comps.len() && self.stack[k].0 == comps[k] {
            k += 1;
        }
        self.stack.truncate(k);
        for i in k..comps.len() {
            let cur = if i == 0 {
                self.root.clone()
            } else {
                self.stack[i - 1].1.clone()
            };
            let name = cstring(comps[i]).map_err(|why| self.refuse(raw, why))?;
            let fd = match open_dir_at(cur.as_fd(), &name) {
                Ok(fd) => fd,
                Err(e) => match e.raw_os_error() {
                    Some(libc::ENOENT) if create => {
                        match mkdirat(cur.as_fd(), &name, 0o755) {
                            Ok(()) => {}
                            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                            Err(e) => return Err(self.io(raw, "create parent directory", e)),
                        }
                        self.dirs.insert(
                            join(&comps[..=i]),
                            DirAttrs {
                                mode: 0o755,
                                mtime: None,
                            },
                        );
                        self.stats.dirs += 1;
                        open_dir_at(cur.as_fd(), &name)
                            .map_err(|e| self.io(raw, "open parent directory", e))?
                    }
                    Some(libc::ENOENT) => return Ok(None),
                    Some(libc::ELOOP) | Some(libc::ENOTDIR) => {
                        match self.through_symlink(raw, cur.as_fd(), &name, &comps[..=i], create)? {
                            Some(fd) => fd,
                            None => return Ok(None),
                        }
                    }
                    _ => return Err(self.io(raw, "open parent directory", e)),
                },
            };
            self.stack.push((comps[i].to_vec(), Arc::new(fd)));
        }
        Ok(Some(match comps.len() {
            0 => self.root.clone(),
            n => self.stack[n - 1].1.clone(),
        }))
    }

    /// A parent component that is not a directory: follow it when it is a symlink that
    /// stays inside the root (the kernel checks, with `RESOLVE_BENEATH`), refuse otherwise.
    fn through_symlink(
        &self,
        raw: &[u8],
        dir: BorrowedFd,
        name: &CStr,
        prefix: &[&[u8]],
        create: bool,
    ) -> Result<Option<OwnedFd>, UnpackError> {
        let shown = String::from_utf8_lossy(&join(prefix)).into_owned();
        let st = fstatat(dir, name).map_err(|e| self.io(raw, "stat parent", e))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
            return Err(self.refuse(
                raw,
                format!("its parent {shown:?} is not a directory (a file of this or a lower layer is in the way)"),
            ));
        }
        let path = CString::new(join(prefix)).map_err(|_| self.refuse(raw, "NUL byte"))?;
        match openat2(
            self.root.as_fd(),
            &path,
            libc::O_RDONLY | libc::O_DIRECTORY,
            RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
        ) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) => match e.raw_os_error() {
                Some(libc::EXDEV) | Some(libc::ELOOP) => Err(self.refuse(
                    raw,
                    format!(
                        "its parent {shown:?} is a symlink that leads outside the image root (absolute, or climbing with `..`) or loops; pysandbox never writes through such a link"
                    ),
                )),
                Some(libc::ENOENT) if !create => Ok(None),
                Some(libc::ENOENT) => Err(self.refuse(
                    raw,
                    format!("its parent {shown:?} is a symlink to a missing directory"),
                )),
                Some(libc::ENOTDIR) => Err(self.refuse(
                    raw,
                    format!("its parent {shown:?} is a symlink to something that is not a directory"),
                )),
                _ => Err(self.io(raw, "resolve parent symlink", e)),
            },
        }
    }

    /// Removes whatever is at `name` in `dir` (a directory recursively).
    pub(super) fn remove_existing(
        &mut self,
        raw: &[u8],
        dir: BorrowedFd,
        name: &CStr,
    ) -> Result<(), UnpackError> {
        // What goes away may hold files the writers have not created yet.
        self.barrier()?;
        let st = match fstatat(dir, name) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(self.io(raw, "stat existing", e)),
        };
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                // Cached descriptors may point inside what goes away.
                self.stack.clear();
                remove_tree(dir, name)
                    .map(|_| ())
                    .map_err(|e| self.io(raw, "remove existing directory", e))
            }
            fmt => {
                if fmt == libc::S_IFLNK {
                    // A cached descriptor may have been reached through this symlink.
                    self.stack.clear();
                }
                unlinkat(dir, name, 0).map_err(|e| self.io(raw, "remove existing", e))
            }
        }
    }
}

/// Splits a tar path into clean components: empty and `.` components dropped, a leading
/// `/` ignored, `..` applied lexically and refused when it would climb above the root.
pub(super) fn clean_path(raw: &[u8]) -> Result<Vec<&[u8]>, String> {
    if raw.len() > MAX_PATH_BYTES {
        return Err(format!("its path is longer than {MAX_PATH_BYTES} bytes"));
    }
    if raw.contains(&0) {
        return Err("its path contains a NUL byte".into());
    }
    let mut out: Vec<&[u8]> = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err("its `..` climbs above the image root".into());
                }
            }
            c => out.push(c),
        }
    }
    if out.len() > MAX_DEPTH {
        return Err(format!("its path is deeper than {MAX_DEPTH} directories"));
    }
    Ok(out)
}

/// Components back into a path, `/`-separated.
pub(super) fn join(comps: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::with_capacity(comps.iter().map(|c| c.len() + 1).sum());
    for (i, c) in comps.iter().enumerate() {
        if i > 0 {
            v.push(b'/');
        }
        v.extend_from_slice(c);
    }
    v
}

/// A name as a C string (a NUL byte is refused).
pub(super) fn cstring(b: &[u8]) -> Result<CString, String> {
    CString::new(b).map_err(|_| "its name contains a NUL byte".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(p: &str) -> Result<String, String> {
        clean_path(p.as_bytes()).map(|c| String::from_utf8(join(&c)).unwrap())
    }

    #[test]
    fn paths_are_cleaned_lexically_and_never_climb_out() {
        assert_eq!(clean("/etc/passwd").unwrap(), "etc/passwd");
        assert_eq!(clean("./a//b/./c/").unwrap(), "a/b/c");
        assert_eq!(clean("a/../b").unwrap(), "b");
        assert_eq!(clean("a/b/../../c").unwrap(), "c");
        assert_eq!(clean("/").unwrap(), "");
        assert!(clean("..").is_err());
        assert!(clean("a/../../etc").is_err());
        assert!(clean("/../etc").is_err());
        assert!(clean("a\0b").is_err());
        assert!(clean(&"a".repeat(MAX_PATH_BYTES + 1)).is_err());
        assert!(clean(&"d/".repeat(MAX_DEPTH + 1)).is_err());
        assert!(clean(&"d/".repeat(MAX_DEPTH)).is_ok());
    }
}
