//! One function per kind of entry (directory, regular file, symlink, hardlink, FIFO):
//! each creates its entry with an `*at` call in its parent's descriptor, never following
//! the final component, replaces what a lower layer had there, and sets mode and mtime
//! (set-id bits stripped, the owner keeps access).

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;

use super::tree::{clean_path, cstring};
use super::writers::{Job, PARALLEL_MAX, dir_hash};
use super::{DirAttrs, Time, UnpackError, Unpacker, set_times};
use crate::sys::fs::{
    create_file, fchmod, fchmodat, fstatat, linkat, mkdirat, mkfifoat, symlinkat,
};

impl Unpacker {
    pub(super) fn dir(
        &mut self,
        raw: &[u8],
        parent: &[&[u8]],
        name: &CStr,
        key: Vec<u8>,
        mode: u32,
        mtime: Time,
    ) -> Result<(), UnpackError> {
        let pfd = self.parent_dir(raw, parent)?;
        let mode = dir_mode(mode);
        match mkdirat(pfd.as_fd(), name, mode) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                let st =
                    fstatat(pfd.as_fd(), name).map_err(|e| self.io(raw, "stat existing", e))?;
                if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                    self.remove_existing(raw, pfd.as_fd(), name)?;
                    mkdirat(pfd.as_fd(), name, mode).map_err(|e| self.io(raw, "mkdir", e))?;
                }
            }
            Err(e) => return Err(self.io(raw, "mkdir", e)),
        }
        self.dirs.insert(
            key,
            DirAttrs {
                mode,
                mtime: Some(mtime),
            },
        );
        self.stats.dirs += 1;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn file<R: Read>(
        &mut self,
        e: &mut tar::Entry<R>,
        raw: &[u8],
        key: &[u8],
        parent: &[&[u8]],
        name: &CStr,
        mode: u32,
        mtime: Time,
    ) -> Result<(), UnpackError> {
        let pfd = self.parent_dir(raw, parent)?;
        let size = e.size();
        if self.pool.is_some() && size <= PARALLEL_MAX {
            match fstatat(pfd.as_fd(), name) {
                // Nothing there (and no writer has it pending, see `entry`): a writer
                // creates it with O_EXCL while this thread reads on.
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {
                    let mut data = Vec::with_capacity(size as usize);
                    e.read_to_end(&mut data).map_err(|err| self.corrupt(err))?;
                    if data.len() as u64 != size {
                        return Err(self.corrupt(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the archive ends inside a file",
                        )));
                    }
                    let job = Job {
                        dir: pfd,
                        name: name.to_owned(),
                        data,
                        mode: file_mode(mode),
                        mtime,
                        raw: raw.to_vec(),
                        layer: self.layer.clone(),
                    };
                    // Files of one directory go to one writer: creating entries in a
                    // directory is serialized by the kernel anyway.
                    let which = dir_hash(parent);
                    if let Some(pool) = &self.pool {
                        pool.send(which, job)?;
                    }
                    self.pending.insert(key.to_vec());
                    self.stats.files += 1;
                    self.stats.bytes += size;
                    return Ok(());
                }
                Err(err) => return Err(self.io(raw, "stat existing", err)),
                Ok(_) => {}
            }
        }
        let fd = match create_file(pfd.as_fd(), name) {
            Ok(fd) => fd,
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
                self.remove_existing(raw, pfd.as_fd(), name)?;
                create_file(pfd.as_fd(), name).map_err(|e| self.io(raw, "create", e))?
            }
            Err(err) => return Err(self.io(raw, "create", err)),
        };
        let mut f = File::from(fd);
        let mut buf = std::mem::take(&mut self.buf);
        let mut written = 0u64;
        let res = loop {
            let n = match e.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => break Err(self.corrupt(err)),
            };
            if let Err(err) = f.write_all(&buf[..n]) {
                break Err(self.io(raw, "write", err));
            }
            written += n as u64;
        };
        self.buf = buf;
        res?;
        if written != e.size() {
            return Err(self.corrupt(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside a file",
            )));
        }
        fchmod(f.as_fd(), file_mode(mode)).map_err(|e| self.io(raw, "chmod", e))?;
        set_times(f.as_fd(), None, mtime).map_err(|e| self.io(raw, "set mtime", e))?;
        self.stats.files += 1;
        self.stats.bytes += written;
        Ok(())
    }

    pub(super) fn symlink(
        &mut self,
        raw: &[u8],
        parent: &[&[u8]],
        name: &CStr,
        target: &[u8],
        mtime: Time,
    ) -> Result<(), UnpackError> {
        if target.is_empty() {
            return Err(self.refuse(raw, "a symlink with an empty target"));
        }
        let target = CString::new(target)
            .map_err(|_| self.refuse(raw, "a symlink target with a NUL byte"))?;
        let pfd = self.parent_dir(raw, parent)?;
        match symlinkat(&target, pfd.as_fd(), name) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                self.remove_existing(raw, pfd.as_fd(), name)?;
                symlinkat(&target, pfd.as_fd(), name).map_err(|e| self.io(raw, "symlink", e))?;
            }
            Err(e) => return Err(self.io(raw, "symlink", e)),
        }
        set_times(pfd.as_fd(), Some(name), mtime).map_err(|e| self.io(raw, "set mtime", e))?;
        self.stats.symlinks += 1;
        Ok(())
    }

    pub(super) fn hardlink(
        &mut self,
        raw: &[u8],
        comps: &[&[u8]],
        name: &CStr,
        target: &[u8],
    ) -> Result<(), UnpackError> {
        let shown = String::from_utf8_lossy(target).into_owned();
        let tcomps = clean_path(target)
            .map_err(|why| self.refuse(raw, format!("hardlink target {shown:?}: {why}")))?;
        let Some((tname, tparent)) = tcomps.split_last() else {
            return Err(self.refuse(raw, "a hardlink to the image root"));
        };
        if tcomps == comps {
            return Ok(());
        }
        let tname = cstring(tname).map_err(|why| self.refuse(raw, why))?;
        let missing =
            || format!("hardlink target {shown:?} does not exist in this or a lower layer");
        let Some(tfd) = self.walk(raw, tparent, false)? else {
            return Err(self.refuse(raw, missing()));
        };
        let parent = &comps[..comps.len() - 1];
        let pfd = self.parent_dir(raw, parent)?;
        let r = match linkat(tfd.as_fd(), &tname, pfd.as_fd(), name) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                self.remove_existing(raw, pfd.as_fd(), name)?;
                linkat(tfd.as_fd(), &tname, pfd.as_fd(), name)
            }
            r => r,
        };
        match r {
            Ok(()) => {
                self.stats.hardlinks += 1;
                Ok(())
            }
            Err(e) => Err(match e.raw_os_error() {
                Some(libc::ENOENT) => self.refuse(raw, missing()),
                Some(libc::EPERM) => {
                    self.refuse(raw, format!("hardlink target {shown:?} is a directory"))
                }
                _ => self.io(raw, "hardlink", e),
            }),
        }
    }

    pub(super) fn fifo(
        &mut self,
        raw: &[u8],
        parent: &[&[u8]],
        name: &CStr,
        mode: u32,
        mtime: Time,
    ) -> Result<(), UnpackError> {
        let pfd = self.parent_dir(raw, parent)?;
        match mkfifoat(pfd.as_fd(), name) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                self.remove_existing(raw, pfd.as_fd(), name)?;
                mkfifoat(pfd.as_fd(), name).map_err(|e| self.io(raw, "mkfifo", e))?;
            }
            Err(e) => return Err(self.io(raw, "mkfifo", e)),
        }
        // Opening a FIFO would block: chmod it by name (we just created it; nothing else
        // writes in the destination).
        fchmodat(pfd.as_fd(), name, file_mode(mode)).map_err(|e| self.io(raw, "chmod", e))?;
        set_times(pfd.as_fd(), Some(name), mtime).map_err(|e| self.io(raw, "set mtime", e))?;
        self.stats.fifos += 1;
        Ok(())
    }
}

/// Set-id bits stripped, the owner can read and write.
pub(super) fn file_mode(mode: u32) -> u32 {
    (mode & 0o1777) | 0o600
}

/// Set-id bits stripped, the owner can list, enter and write.
pub(super) fn dir_mode(mode: u32) -> u32 {
    (mode & 0o1777) | 0o700
}
