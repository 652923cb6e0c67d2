//! Mounting: the new mount API (`open_tree`, `mount_setattr`, `move_mount`) that stages a
//! host folder as a detached mount, read-only or id-mapped, before it is attached; the
//! user namespace an id-mapped mount takes its mapping from; and overlays whose layers are
//! named relative to a base folder.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};

use super::{check, cstr};

const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
pub const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `open_tree(fd, "", OPEN_TREE_CLONE|AT_EMPTY_PATH)`: a detached copy of the mount at
/// `fd` (an `O_PATH` directory), recursive when `recursive`.
pub fn clone_mount(fd: &OwnedFd, recursive: bool) -> io::Result<OwnedFd> {
    let mut flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: the path is a valid empty C string, fd is a live descriptor; the kernel
    // returns a new descriptor that we own.
    let r = check(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags as libc::c_ulong,
        )
    })?;
    // SAFETY: r is a fresh descriptor returned by the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// `mount_setattr` on a detached mount: set `set` flags (MOUNT_ATTR_*), optionally an
/// id-mapping taken from the user namespace `userns`.
pub fn set_mount_attr(
    mnt: &OwnedFd,
    set: u64,
    recursive: bool,
    userns: Option<&OwnedFd>,
) -> io::Result<()> {
    let mut attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    if let Some(ns) = userns {
        attr.attr_set |= MOUNT_ATTR_IDMAP;
        attr.userns_fd = ns.as_raw_fd() as u64;
    }
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: attr is a properly laid out `struct mount_attr` living for the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            flags as libc::c_ulong,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    Ok(())
}

/// `move_mount(mnt, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)`: attach a detached
/// mount at `target`.
pub fn attach_mount(mnt: &OwnedFd, target: &Path) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: both strings are valid C strings for the duration of the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH as libc::c_ulong,
        )
    })?;
    Ok(())
}

/// A user namespace whose root is `uid`/`gid` on the host, as a descriptor for id-mapped
/// mounts ([`set_mount_attr`]'s `userns`). Made by a short-lived child born in it: call
/// only from a single-threaded process.
pub fn idmap_userns(uid: u32, gid: u32) -> io::Result<OwnedFd> {
    let own = super::pidfd_open(std::process::id() as i32)?;
    // The child only waits to be killed: it shares this process's memory (nothing is
    // copied) on a small stack of its own.
    // SAFETY: the stack and the pidfd are dropped only after the child is killed and
    // reaped below; `hold` never returns and touches nothing but its own frame.
    let (pid, stack) = unsafe {
        super::clone_sharing_memory(
            super::hold,
            own.as_raw_fd() as usize as *mut libc::c_void,
            libc::CLONE_NEWUSER | libc::SIGCHLD,
            64 << 10,
        )?
    };
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let result = (|| {
        super::write_existing(&proc.join("uid_map"), format!("0 {uid} 1").as_bytes())?;
        super::write_existing(&proc.join("gid_map"), format!("0 {gid} 1").as_bytes())?;
        let f = fs::File::open(proc.join("ns/user"))?;
        Ok(OwnedFd::from(f))
    })();
    // SAFETY: reaping our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), libc::__WALL);
    }
    drop(stack);
    drop(own);
    result
}

/// Mounts an overlay at `target` (nosuid, nodev) from layers inside `base`, named
/// relative to it: the options the sandbox sees in /proc/self/mountinfo then hold no
/// host path (and no caller's runtime directory). `upper` is (upperdir, workdir); with
/// none the overlay is read-only. In a user namespace of pysandbox's own its whiteouts
/// and opaque markers use `user.` xattrs (`userxattr`).
pub fn mount_overlay(
    base: &Path,
    lowers: &[&Path],
    upper: Option<(&Path, &Path)>,
    target: &Path,
    rootless: bool,
) -> io::Result<()> {
    let rel = |p: &Path| -> io::Result<String> {
        // A layer outside `base` (an image build's layer on disk) keeps its full path.
        let s = p
            .strip_prefix(base)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned();
        // Overlay's option syntax: ',' separates options, ':' layers, '\\' escapes.
        if s.is_empty() || s.contains([',', ':', '\\']) {
            return Err(io::Error::other("unusable layer name"));
        }
        Ok(s)
    };
    let lower: Vec<String> = lowers.iter().map(|p| rel(p)).collect::<Result<_, _>>()?;
    let mut opts = format!("lowerdir={}", lower.join(":"));
    if let Some((up, work)) = upper {
        // No redirects or metadata-only copy-ups: whatever the script changes is whole
        // in the upper layer (a renamed folder is copied up), which is what the output
        // merge and an image build's layer read.
        opts.push_str(&format!(
            ",upperdir={},workdir={},redirect_dir=nofollow,metacopy=off",
            rel(up)?,
            rel(work)?
        ));
    }
    if rootless {
        opts.push_str(",userxattr");
    }
    // Relative layer names resolve against the working directory at mount time.
    let cwd = nix::fcntl::open(
        ".",
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: a descriptor nix just returned, owned here.
    let cwd = unsafe { OwnedFd::from_raw_fd(cwd) };
    nix::unistd::chdir(base)?;
    let r = mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts.as_str()),
    );
    nix::unistd::fchdir(cwd.as_raw_fd())?;
    r.map_err(io::Error::from)
}
