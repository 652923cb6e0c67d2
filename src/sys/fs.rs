//! File-system system calls, all relative to a directory descriptor and never following
//! a symlink unless asked: the one home of the `*at` helpers the image unpacker and the
//! output merge share (open a directory, create, link, list, remove a tree...).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// Directory trees deeper than this are not removed (an error, not a deep recursion).
pub(crate) const MAX_REMOVE_DEPTH: usize = 1024;

pub(crate) const RESOLVE_BENEATH: u64 = 0x08;
pub(crate) const RESOLVE_NO_MAGICLINKS: u64 = 0x02;

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

pub(crate) fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

pub(crate) fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: callers pass a descriptor the kernel just returned, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Opens a directory (not a symlink to one) for `*at` calls.
pub(crate) fn open_path_dir(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let p = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: valid C string; the descriptor is owned below.
    let fd = cvt(unsafe {
        libc::open(
            p.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    Ok(owned(fd))
}

/// Opens `name` in `dir` with `flags` (plus `O_NOFOLLOW | O_CLOEXEC`) and `mode`.
pub(crate) fn open_at(
    dir: BorrowedFd,
    name: &CStr,
    flags: libc::c_int,
    mode: u32,
) -> io::Result<OwnedFd> {
    // SAFETY: `dir` is a live descriptor, `name` a valid C string.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })?;
    Ok(owned(fd))
}

pub(crate) fn open_dir_at(dir: BorrowedFd, name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `dir` is a live descriptor, `name` a valid C string.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    Ok(owned(fd))
}

pub(crate) fn openat2(
    dir: BorrowedFd,
    path: &CStr,
    flags: libc::c_int,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve,
    };
    // SAFETY: `how` is a valid `struct open_how` and `path` a valid C string for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned(r as RawFd))
}

pub(crate) fn create_file(dir: BorrowedFd, name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: live descriptor, valid C string; O_EXCL|O_NOFOLLOW never opens an existing
    // file or follows a symlink.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    })?;
    Ok(owned(fd))
}

pub(crate) fn mkdirat(dir: BorrowedFd, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: live descriptor, valid C string.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) })?;
    Ok(())
}

pub(crate) fn mkfifoat(dir: BorrowedFd, name: &CStr) -> io::Result<()> {
    // SAFETY: live descriptor, valid C string.
    cvt(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), libc::S_IFIFO | 0o600, 0) })?;
    Ok(())
}

pub(crate) fn symlinkat(target: &CStr, dir: BorrowedFd, name: &CStr) -> io::Result<()> {
    // SAFETY: live descriptor, valid C strings.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })?;
    Ok(())
}

pub(crate) fn linkat(
    odir: BorrowedFd,
    oname: &CStr,
    ndir: BorrowedFd,
    nname: &CStr,
) -> io::Result<()> {
    // SAFETY: live descriptors, valid C strings; flags 0: a symlink target is linked
    // itself, never followed.
    cvt(unsafe {
        libc::linkat(
            odir.as_raw_fd(),
            oname.as_ptr(),
            ndir.as_raw_fd(),
            nname.as_ptr(),
            0,
        )
    })?;
    Ok(())
}

pub(crate) fn unlinkat(dir: BorrowedFd, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: live descriptor, valid C string.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })?;
    Ok(())
}

pub(crate) fn fstatat(dir: BorrowedFd, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: zeroed stat is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: live descriptor, valid C string, valid out-pointer.
    cvt(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

pub(crate) fn fchmod(fd: BorrowedFd, mode: u32) -> io::Result<()> {
    // SAFETY: live descriptor.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) })?;
    Ok(())
}

pub(crate) fn fchmodat(dir: BorrowedFd, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: live descriptor, valid C string.
    cvt(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t, 0) })?;
    Ok(())
}

/// Sets atime and mtime to `sec`.`nsec`: of `fd` itself, or of `name` in directory `fd`
/// (never following a symlink).
pub(crate) fn set_times(
    fd: BorrowedFd,
    name: Option<&CStr>,
    sec: i64,
    nsec: i64,
) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: nsec as _,
    };
    let times = [ts, ts];
    match name {
        // SAFETY: live descriptor, a two-element timespec array.
        None => cvt(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) })?,
        // SAFETY: as above, plus a valid C string.
        Some(n) => cvt(unsafe {
            libc::utimensat(
                fd.as_raw_fd(),
                n.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?,
    };
    Ok(())
}

/// Names in a directory (without `.` and `..`), with their `d_type`.
pub(crate) fn list_dir(dir: BorrowedFd) -> io::Result<Vec<(CString, u8)>> {
    // A private descriptor: fdopendir takes ownership and closedir closes it.
    let dup = dir.try_clone_to_owned()?;
    // SAFETY: `dup` is a live directory descriptor we own; on success fdopendir owns it.
    let d = unsafe { libc::fdopendir(dup.as_raw_fd()) };
    if d.is_null() {
        return Err(io::Error::last_os_error());
    }
    std::mem::forget(dup);
    // SAFETY: `d` is a valid DIR*; rewinding reads the directory from its start even if
    // the descriptor's offset moved.
    unsafe { libc::rewinddir(d) };
    let mut out = Vec::new();
    let res = loop {
        // SAFETY: errno is thread-local; cleared so that a NULL return can be told apart.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `d` is a valid DIR*; the entry is read before the next readdir call.
        let ent = unsafe { libc::readdir64(d) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            break if e.raw_os_error() == Some(0) {
                Ok(())
            } else {
                Err(e)
            };
        }
        // SAFETY: `ent` points to a valid dirent64 whose d_name is NUL-terminated.
        let (name, ty) = unsafe { (CStr::from_ptr((*ent).d_name.as_ptr()), (*ent).d_type) };
        let b = name.to_bytes();
        if b != b"." && b != b".." {
            out.push((name.to_owned(), ty));
        }
    };
    // SAFETY: `d` is valid and closed exactly once.
    unsafe { libc::closedir(d) };
    res.map(|()| out)
}

/// Removes `name` in `dir`: unlinks a non-directory, empties and removes a directory
/// (never following symlinks; one descriptor per level, at most [`MAX_REMOVE_DEPTH`]).
/// Missing is fine; returns whether something was there.
pub(crate) fn remove_tree(dir: BorrowedFd, name: &CStr) -> io::Result<bool> {
    match unlinkat(dir, name, 0) {
        Ok(()) => return Ok(true),
        Err(e) => match e.raw_os_error() {
            Some(libc::ENOENT) => return Ok(false),
            Some(libc::EISDIR) | Some(libc::EPERM) => {}
            _ => return Err(e),
        },
    }
    struct Level {
        fd: OwnedFd,
        name: CString,
        children: Vec<(CString, u8)>,
    }
    let first = open_dir_at(dir, name)?;
    let children = list_dir(first.as_fd())?;
    let mut stack = vec![Level {
        fd: first,
        name: name.to_owned(),
        children,
    }];
    while let Some(top) = stack.last_mut() {
        if let Some((child, ty)) = top.children.pop() {
            if ty != libc::DT_DIR {
                match unlinkat(top.fd.as_fd(), &child, 0) {
                    Ok(()) => continue,
                    Err(e) => match e.raw_os_error() {
                        Some(libc::ENOENT) => continue,
                        // d_type was unknown or stale: a directory after all.
                        Some(libc::EISDIR) | Some(libc::EPERM) => {}
                        _ => return Err(e),
                    },
                }
            }
            if stack.len() >= MAX_REMOVE_DEPTH {
                return Err(io::Error::other("directory tree too deep to remove"));
            }
            let fd = open_dir_at(stack[stack.len() - 1].fd.as_fd(), &child)?;
            // A directory without write or search permission for us (not made by the
            // unpacker, which always keeps u+rwx): grant it before emptying it.
            if let Ok(st) = fstat(fd.as_fd())
                && st.st_mode & 0o700 != 0o700
            {
                let _ = fchmod(fd.as_fd(), (st.st_mode & 0o7777) | 0o700);
            }
            let children = list_dir(fd.as_fd())?;
            stack.push(Level {
                fd,
                name: child,
                children,
            });
        } else {
            let done = stack.pop().map(|l| l.name);
            if let Some(n) = done {
                let parent = match stack.last() {
                    Some(l) => l.fd.as_fd(),
                    None => dir,
                };
                match unlinkat(parent, &n, libc::AT_REMOVEDIR) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(true)
}

pub(crate) fn fstat(fd: BorrowedFd) -> io::Result<libc::stat> {
    // SAFETY: zeroed stat is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: live descriptor, valid out-pointer.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// Removes a directory tree by path (the last component is never followed).
pub(crate) fn remove_path(path: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let parent = path.parent().unwrap_or(Path::new("/"));
    let Some(name) = path.file_name() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cannot remove a root",
        ));
    };
    let dir = open_path_dir(parent)?;
    let name = CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    remove_tree(dir.as_fd(), &name).map(|_| ())
}
