//! Thin, checked wrappers over the Linux system calls pysandbox needs and `nix` 0.29
//! lacks (the new mount API, `openat2`, pidfds, `close_range`), plus a few helpers that
//! read kernel state. Each wrapper turns `-1/errno` into `io::Error`; nothing here holds
//! policy.

mod caps;
pub mod fs;
pub mod lock;
pub mod mount;
pub mod process;
pub use caps::drop_all_capabilities;
pub use mount::{
    MOUNT_ATTR_IDMAP, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY,
    attach_mount, clone_mount, set_mount_attr,
};

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `openat2(root, path, flags, RESOLVE_IN_ROOT)`: opens `path` as if `root` were `/`, so
/// absolute symlinks and `..` cannot leave it. Used to look inside image trees.
pub fn open_in_root(root: &OwnedFd, path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let p = cstr(path)?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: `how` is a valid `struct open_how`, `p` a valid C string.
    let r = check(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            p.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    })?;
    // SAFETY: fresh descriptor from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// Opens a directory as `O_PATH`, refusing a symlink in the last component.
pub fn open_dir_nofollow(path: &Path) -> io::Result<OwnedFd> {
    let p = cstr(path)?;
    // SAFETY: valid C string; the returned descriptor is owned below.
    let r = unsafe {
        libc::open(
            p.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// Waits up to `limit` for `fd` to become readable (a pidfd: the process exited; a pipe:
/// data or end of file). `false` when the time ran out.
pub fn wait_readable(fd: &impl AsRawFd, limit: std::time::Duration) -> io::Result<bool> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        if n > 0 {
            return Ok(true);
        }
        if n == 0 {
            return Ok(false);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `pidfd_open(pid, 0)`.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let r = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// The pid, in this process's `/proc`, of the process a pidfd refers to (its fdinfo).
pub fn pidfd_pid(pidfd: &OwnedFd) -> io::Result<i32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))?;
    match info
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse::<i32>().ok())
    {
        Some(pid) if pid > 0 => Ok(pid),
        _ => Err(io::Error::other(
            "the process is gone or not visible in this /proc",
        )),
    }
}

/// Fills `buf` from the kernel's random pool.
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut off = 0;
    while off < buf.len() {
        // SAFETY: the pointer/length pair describes the unfilled tail of `buf`.
        let r = unsafe { libc::getrandom(buf[off..].as_mut_ptr().cast(), buf.len() - off, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        off += r as usize;
    }
    Ok(())
}

/// A fresh identifier: `prefix` + 16 hex digits.
pub fn random_id(prefix: &str) -> io::Result<String> {
    let mut b = [0u8; 8];
    random_bytes(&mut b)?;
    let mut s = String::with_capacity(prefix.len() + 16);
    s.push_str(prefix);
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    Ok(s)
}

/// Forks a child that nobody waits for: its stdio is /dev/null, it has a session of its
/// own (no terminal signal reaches it) and keeps no descriptor but `keep`. Returns
/// `Ok(true)` in the child, which must end with [`exit_now`], `Ok(false)` here. Only
/// for single-threaded callers.
pub fn fork_detached(keep: &[std::os::fd::RawFd]) -> io::Result<bool> {
    // SAFETY: fork in a single-threaded process (the caller's promise).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid > 0 {
        return Ok(false);
    }
    let mut keep: Vec<u32> = keep
        .iter()
        .filter(|&&fd| fd > 2)
        .map(|&fd| fd as u32)
        .collect();
    keep.sort_unstable();
    let mut from = 3u32;
    for fd in keep.into_iter().chain([u32::MAX]) {
        if fd > from {
            // SAFETY: closing descriptor ranges of this (new) process.
            unsafe { libc::syscall(libc::SYS_close_range, from, fd - 1, 0u32) };
        }
        from = fd.saturating_add(1);
    }
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            // SAFETY: dup2 of a descriptor we own onto the standard ones.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
    // SAFETY: setsid has no arguments.
    unsafe { libc::setsid() };
    Ok(true)
}

/// A child that shares this process's memory (CLONE_VM, added to `flags`) and runs
/// `f(arg)` on a zeroed stack of its own, `stack` bytes, as glibc's clone() does. Returns
/// its pid and that stack.
///
/// # Safety
/// The returned stack must outlive the child's use of it (drop it only once the child
/// has exec'd, exited or been reaped: CLONE_VFORK makes this call return after its exec
/// or exit); `f` must not return, must make only async-signal-safe calls and must not
/// allocate or touch memory this process may be changing meanwhile (with CLONE_VFORK
/// this process is stopped until then); `arg` must stay valid as long as `f` reads it.
pub unsafe fn clone_sharing_memory(
    f: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
    flags: libc::c_int,
    stack: usize,
) -> io::Result<(libc::pid_t, Vec<u8>)> {
    let mut stack = vec![0u8; stack];
    // The stack grows down from its 16-byte aligned top.
    let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
    // SAFETY: the caller's promises above.
    let pid = unsafe { libc::clone(f, top as *mut libc::c_void, flags | libc::CLONE_VM, arg) };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((pid, stack))
}

/// The body of a child made by [`clone_sharing_memory`] that only holds something (a
/// namespace it was born in) until it is killed: it dies with this process, even one
/// that died before it could set that up, else waits. `arg` is a pidfd of this process
/// (its parent), which the child's copy of the descriptor table holds.
pub extern "C" fn hold(parent_pidfd: *mut libc::c_void) -> libc::c_int {
    // SAFETY: async-signal-safe calls only, on this frame.
    unsafe {
        // Its own name: it shows pysandbox's command line (their memory is one).
        libc::prctl(libc::PR_SET_NAME, c"pysandbox-hold".as_ptr(), 0, 0, 0);
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        // Its copies of this process's descriptors closed but the pidfd: none keeps a
        // pipe's end (the sandbox's output...) or a lock open behind pysandbox's back.
        let keep = parent_pidfd as usize as libc::c_uint;
        if keep > 0 {
            libc::syscall(libc::SYS_close_range, 0 as libc::c_uint, keep - 1, 0);
        }
        libc::syscall(libc::SYS_close_range, keep + 1, libc::c_uint::MAX, 0);
        if exited(parent_pidfd as usize as RawFd) {
            libc::_exit(1);
        }
        loop {
            libc::pause();
        }
    }
}

/// Whether the process of `pidfd` has exited (a pidfd is readable then), without
/// waiting or allocating. A child that sets its parent-death signal checks its parent
/// this way: the signal only covers a death after it is set, and `getppid()` says 0
/// when the parent is outside the child's pid namespace (see [`PidNamespace`]).
pub fn exited(pidfd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd: pidfd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one pollfd on this frame, without waiting.
    unsafe { libc::poll(&mut p, 1, 0) != 0 }
}

/// A pid namespace for this process's later children, whose init is a child that dies
/// with this process ([`hold`]). However pysandbox ends, SIGKILL included, the kernel
/// then kills every process of the namespace: libcontainer's intermediate and init
/// (which otherwise outlive a pysandbox killed while it creates them, blocked forever on
/// channels whose other end they hold themselves), the helpers, the sandbox. Dropping it
/// kills and reaps the init, and with it whatever is left in the namespace; this
/// process cannot make children after that (the kernel refuses a fork into a pid
/// namespace whose init is gone), so it is the last step of a run. Single-threaded
/// callers only. Made by this process ([`PidNamespaceSeed::enter`]), or by a child that
/// makes processes in it before this process joins it (`runtime::born`'s driver,
/// [`PidNamespaceSeed::make_in_child`]).
pub struct PidNamespace {
    init: libc::pid_t,
    _stack: Vec<u8>,
    /// The pidfd its init watches (a copy of it, in the init's descriptor table).
    _pidfd: OwnedFd,
}

/// The stack of a [`PidNamespace`]'s init ([`hold`] needs little).
const HOLDER_STACK: usize = 64 << 10;

impl PidNamespace {
    /// What a pid namespace needs from this process, before it is made here
    /// ([`PidNamespaceSeed::enter`]) or by a child ([`PidNamespaceSeed::make_in_child`]).
    pub fn prepare() -> io::Result<PidNamespaceSeed> {
        Ok(PidNamespaceSeed {
            pidfd: pidfd_open(std::process::id() as i32)?,
            stack: Vec::new(),
        })
    }
}

/// A pidfd of this process, and the stack of a [`PidNamespace`]'s init made by a child.
pub struct PidNamespaceSeed {
    pidfd: OwnedFd,
    stack: Vec<u8>,
}

impl PidNamespaceSeed {
    /// A pidfd of this process (the init's parent), for other children that must check
    /// whether it is gone.
    pub fn parent(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.pidfd.as_fd()
    }

    /// The namespace, made by this process: `unshare(CLONE_NEWPID)` and its first child.
    pub fn enter(self) -> io::Result<PidNamespace> {
        // SAFETY: unshare with a constant flag; only this process's later children are
        // affected.
        check(unsafe { libc::unshare(libc::CLONE_NEWPID) } as libc::c_long)?;
        // The first child is the namespace's init. SAFETY: the stack and the pidfd live
        // in the returned value until the child is killed and reaped (drop); `hold`
        // never returns and touches nothing but its own frame.
        let (init, stack) = unsafe {
            clone_sharing_memory(
                hold,
                self.pidfd.as_raw_fd() as usize as *mut libc::c_void,
                libc::SIGCHLD,
                HOLDER_STACK,
            )?
        };
        Ok(PidNamespace {
            init,
            _stack: stack,
            _pidfd: self.pidfd,
        })
    }

    /// Made by a child of this process that shares its memory and makes the processes
    /// that must live in the namespace (`runtime::born`'s driver), as that child's
    /// `unshare(CLONE_NEWPID)`; its init ([`hold`]) is made here as the child's sibling
    /// (this process's child, so that it dies with this process), born in the cgroup v2
    /// directory `home` (not the child's: the init shares this process's memory). Returns
    /// the init's pid, which this process then [`adopt`](Self::adopt)s.
    ///
    /// # Safety
    /// Called in a `process::run_child` child of the process that owns `self` (memory
    /// shared, that process suspended), once.
    pub unsafe fn make_in_child(
        &mut self,
        home: std::os::fd::BorrowedFd<'_>,
    ) -> io::Result<libc::pid_t> {
        // SAFETY: as in enter; in the child only.
        check(unsafe { libc::unshare(libc::CLONE_NEWPID) } as libc::c_long)?;
        // Allocated here on the shared heap, owned by `self`, which the parent keeps.
        self.stack = vec![0u8; HOLDER_STACK];
        // SAFETY: the stack is the init's alone until it is reaped (the adopted value
        // frees it then); `hold` touches nothing but its own frame and makes only
        // async-signal-safe calls.
        unsafe {
            process::clone_sibling(
                home,
                &mut self.stack,
                hold_sibling,
                self.pidfd.as_raw_fd() as usize as *mut libc::c_void,
            )
        }
    }

    /// This process's hold on the namespace whose init `init` (this process's child) a
    /// child made with [`make_in_child`](Self::make_in_child): from now on this
    /// process's own children are born in it too (`setns`).
    pub fn adopt(self, init: libc::pid_t) -> io::Result<PidNamespace> {
        // Made first, so that a failure below kills and reaps the init.
        let ns = PidNamespace {
            init,
            _stack: self.stack,
            _pidfd: self.pidfd,
        };
        // Not reaped yet, so its pid cannot name another process.
        let init_fd = pidfd_open(init)?;
        let enter = || nix::sched::setns(&init_fd, nix::sched::CloneFlags::CLONE_NEWPID);
        match enter() {
            // setns asks for ptrace's read access to the init, whose memory is this
            // process's: made non-dumpable by libcontainer's build, that needs
            // CAP_SYS_PTRACE where this process's program was started (only root has
            // it). Dumpable again for the call alone (to its own user, as any process).
            Err(nix::Error::EPERM) => {
                // SAFETY: plain prctl calls.
                unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
                let r = enter();
                // SAFETY: as above.
                unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
                r?
            }
            r => r?,
        }
        Ok(ns)
    }
}

/// [`hold`] started by `process::clone_sibling`.
extern "C" fn hold_sibling(parent_pidfd: *mut libc::c_void) -> ! {
    hold(parent_pidfd);
    process::exit_child(1)
}

impl Drop for PidNamespace {
    fn drop(&mut self) {
        // SAFETY: killing our own child.
        unsafe { libc::kill(self.init, libc::SIGKILL) };
        process::reap_namespace(self.init);
    }
}

/// Ends this process at once (no destructors, no atexit handlers): the end of a
/// [`fork_detached`] child.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns.
    unsafe { libc::_exit(code) }
}

/// CLOCK_MONOTONIC in nanoseconds (the same clock in every namespace of the host).
pub fn monotonic_ns() -> i64 {
    // SAFETY: a zeroed timespec is a valid out-buffer.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime into it; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// Effective uid/gid of this process.
pub fn euid() -> u32 {
    // SAFETY: always succeeds.
    unsafe { libc::geteuid() }
}
pub fn egid() -> u32 {
    // SAFETY: always succeeds.
    unsafe { libc::getegid() }
}

/// Whether this process may execute `path` (access(2): ACLs and root's rules included).
pub fn executable(path: &std::path::Path) -> bool {
    nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_ok()
}

/// Whether this process is in the initial user namespace (its uid map is the identity
/// over the whole range). Root in a nested namespace is not real root.
pub fn in_initial_userns() -> bool {
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(s) => {
            let f: Vec<&str> = s.split_whitespace().collect();
            f == ["0", "0", "4294967295"]
        }
        Err(_) => false,
    }
}

/// The uid that `uid` (in our namespace) has in the parent user namespace, from
/// `/proc/self/uid_map`. Identity in the initial namespace.
pub fn outer_uid(uid: u32) -> u32 {
    let Ok(s) = std::fs::read_to_string("/proc/self/uid_map") else {
        return uid;
    };
    for line in s.lines() {
        let f: Vec<u64> = line
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if let [inside, outside, len] = f[..] {
            let u = uid as u64;
            if u >= inside && u < inside + len {
                return (outside + (u - inside)) as u32;
            }
        }
    }
    uid
}

/// Soft and hard limit of an rlimit resource.
pub fn getrlimit(resource: libc::__rlimit_resource_t) -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: r is a valid out-pointer.
    unsafe { libc::getrlimit(resource, &mut r) };
    (r.rlim_cur, r.rlim_max)
}

/// Writes `data` to a file that exists (procfs, cgroupfs): no create, no truncate dance.
pub fn write_existing(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(data)
}

/// The value of extended attribute `name` of `path` (following symlinks), if it has one.
pub fn getxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).ok()?;
    let n = CString::new(name).ok()?;
    let mut buf = [0u8; 64];
    // SAFETY: NUL-terminated strings and a buffer whose length is passed along.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(len).ok().map(|l| buf[..l].to_vec())
}

/// Whether this process may write `path`, judged with its effective ids (as the kernel
/// will when it opens the file), not the real ones `access(2)` uses.
pub fn may_write(path: &Path) -> bool {
    nix::unistd::faccessat(
        None,
        path,
        nix::unistd::AccessFlags::W_OK,
        nix::fcntl::AtFlags::AT_EACCESS,
    )
    .is_ok()
}

/// Sends `data` with descriptor `fd` attached (SCM_RIGHTS) on a unix socket. Does not
/// allocate (used in the sandbox's init); errors are ignored by design: the receiver
/// notices a missing descriptor.
pub fn send_fd(sock: RawFd, data: &[u8], fd: &OwnedFd) {
    // SAFETY: msghdr/cmsg set up over stack buffers that live for the call; CMSG_* macros
    // compute offsets inside `cbuf`, which is sized with CMSG_SPACE.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        let mut cbuf = [0u64; 4]; // CMSG_SPACE(sizeof(int)) = 24 bytes, 8-aligned
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut libc::c_int, fd.as_raw_fd());
        libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL);
    }
}

/// Receives bytes and at most one descriptor (SCM_RIGHTS) from a unix socket.
pub fn recv_with_fd(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    // SAFETY: as in send_fd; a received descriptor is owned by us from here on.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut cbuf = [0u64; 4];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
        let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut fd = None;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if !cmsg.is_null()
            && (*cmsg).cmsg_level == libc::SOL_SOCKET
            && (*cmsg).cmsg_type == libc::SCM_RIGHTS
        {
            let raw = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::c_int);
            fd = Some(OwnedFd::from_raw_fd(raw));
        }
        Ok((n as usize, fd))
    }
}

/// The running kernel's release string and its (major, minor).
pub fn kernel_release() -> (String, (u32, u32)) {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mut it = rel.split(['.', '-']).filter_map(|x| x.parse::<u32>().ok());
    let v = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (rel, v)
}
