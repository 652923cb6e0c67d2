//! The last steps inside the sandbox, run by libcontainer's init process through its
//! `Executor` hook (after namespaces, mounts, pivot_root, libcontainer's own capability
//! drop and `no_new_privs`).
//!
//! `validate()` runs before the start signal, and its errors reach `build()`; so every
//! step that can fail for a host reason happens there:
//!   1. scrub pysandbox's argv/environment from this process's memory (they would show
//!      in `/proc/1/cmdline`);
//!   2. bring `lo` up (with CAP_NET_ADMIN, which the spec left us for this); with
//!      `--network`, send pysandbox this init's network and pid namespaces (SCM_RIGHTS
//!      on the status socket) so it can attach pasta before the start;
//!   3. enter a nested user namespace mapping `mambauser` (1000) to the container's root,
//!      so the script is not root even inside (mapping the parent's uid 0 needs the
//!      CAP_SETFCAP the spec left us); drop the bounding set, lock securebits, clear every
//!      capability set and verify they are empty;
//!   4. die with pysandbox (PR_SET_PDEATHSIG, set after the last credential change,
//!      which would clear it).
//!
//! `exec()` runs after the start signal: this process stays as a tiny init (pid 1:
//! reaps zombies, forwards SIGTERM/SIGINT/... to every process of the sandbox, reports
//! the script's wait status on the status socket) and starts the interpreter's process
//! as posix_spawn does (sharing the init's memory until it execs: see `spawn_python`),
//! which resets signals and execs.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use libcontainer::oci_spec::runtime::Spec;
use libcontainer::workload::{
    Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError,
};

use crate::spec::{SANDBOX_GID, SANDBOX_UID};

/// What the init sends first on the status socket, with a pidfd of itself.
pub(super) const INIT_TAG: &[u8] = b"init 0\n";

/// Signals the init forwards to every process of the sandbox.
const FORWARDED: &[libc::c_int] = &[
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// What the executor needs; cloned into libcontainer's init process.
#[derive(Debug)]
pub struct ExecPlan {
    pub python: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    /// Bring the loopback interface up (private network namespace).
    pub loopback: bool,
    /// Send pysandbox this init's network and pid namespaces (`netns`/`pidns` lines with
    /// a descriptor each), for the user-mode network it attaches before the start. The
    /// init is not dumpable, so pysandbox could not open them through /proc as an
    /// ordinary user.
    pub send_namespaces: bool,
    /// `--allow-net`: listen on this port of 127.0.0.1 and send pysandbox the listening
    /// socket (`proxy` line), for the proxy it runs outside the sandbox.
    pub proxy_port: Option<u16>,
    /// `run -i`: the window size (rows, columns) of a terminal to open in the sandbox's
    /// own devpts. The init sends pysandbox the master (`pty` line) and keeps no copy;
    /// the interpreter gets the slave as its controlling terminal and stdio.
    pub pty: Option<(u16, u16)>,
    /// The slave of that terminal, between `prepare` and the interpreter's start (-1: none).
    pub pty_slave: std::sync::atomic::AtomicI32,
    /// pysandbox's end is the other side of this socket: status lines (see [`Status`])
    /// and, with `--seccomp-log`, the seccomp listener (SCM_RIGHTS).
    pub status_fd: RawFd,
    /// A pidfd of pysandbox itself: the init leaves at once if pysandbox died before the
    /// init's parent-death signal was set.
    pub parent_pidfd: RawFd,
    /// The syscall filter, installed right before the interpreter is forked.
    pub seccomp: crate::seccomp::Policy,
    /// Send `time <step> <CLOCK_MONOTONIC ns>` lines at each step (`--log-level
    /// pysandbox::timing=debug`), which pysandbox logs with its own phases.
    pub timing: bool,
}

#[derive(Clone)]
pub struct SandboxExecutor {
    plan: Arc<ExecPlan>,
}

impl SandboxExecutor {
    pub fn new(plan: ExecPlan) -> Self {
        SandboxExecutor {
            plan: Arc::new(plan),
        }
    }
}

/// What the init reports on the status socket, one line each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The script exited with this code.
    Exited(i32),
    /// The script was killed by this signal.
    Signaled(i32),
    /// execve of the interpreter failed with this errno.
    ExecFailed(i32),
    /// The seccomp filter could not be installed (errno); nothing ran.
    SeccompFailed(i32),
}

impl Status {
    /// Parses everything the init wrote. A setup failure wins over the exit status the
    /// init reports after it; otherwise the last line wins.
    pub fn parse(buf: &[u8]) -> Option<Status> {
        let text = String::from_utf8_lossy(buf);
        let mut out = None;
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let (Some(kind), Some(n)) = (it.next(), it.next().and_then(|x| x.parse().ok())) else {
                continue;
            };
            if let Some(Status::ExecFailed(_) | Status::SeccompFailed(_)) = out {
                continue;
            }
            out = match kind {
                "exit" => Some(Status::Exited(n)),
                "signal" => Some(Status::Signaled(n)),
                "exec" => Some(Status::ExecFailed(n)),
                "seccomp" => Some(Status::SeccompFailed(n)),
                _ => out,
            };
        }
        out
    }
}

fn err(step: &str) -> String {
    format!("{step}: {}", io::Error::last_os_error())
}

fn check(r: libc::c_int, step: &str) -> Result<(), String> {
    if r < 0 { Err(err(step)) } else { Ok(()) }
}

fn write_file(path: &str, data: &str) -> Result<(), String> {
    crate::sys::write_existing(std::path::Path::new(path), data.as_bytes())
        .map_err(|e| format!("writing {path}: {e}"))
}

impl ExecPlan {
    fn prepare(&self) -> Result<(), String> {
        // This process itself, first: libcontainer names it by its pid in the namespace
        // where its intermediate process ran, not in pysandbox's (see
        // sys::PidNamespace).
        // SAFETY: pidfd_open of this process (pid 1 of its namespace); owned below.
        let me = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
        if me < 0 {
            return Err(err("opening a pidfd of the sandbox's init"));
        }
        // SAFETY: a fresh descriptor, owned (and closed) here.
        let me =
            unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(me as RawFd) };
        crate::sys::send_fd(self.status_fd, INIT_TAG, &me);
        drop(me);
        // Stamped once the descriptors below are sent: pysandbox reads them one by one
        // before the status text, so no text may come between them.
        let hooked = crate::sys::monotonic_ns();
        scrub_own_cmdline();
        // SAFETY: PR_SET_NAME with a NUL-terminated buffer.
        unsafe { libc::prctl(libc::PR_SET_NAME, c"pysandbox-init".as_ptr(), 0, 0, 0) };
        if self.loopback {
            loopback_up()?;
        }
        if self.send_namespaces {
            for (tag, path) in [
                (&b"netns 0\n"[..], c"/proc/self/ns/net"),
                (&b"pidns 0\n"[..], c"/proc/self/ns/pid"),
            ] {
                // SAFETY: open of a NUL-terminated path; the result is owned below.
                let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
                if fd < 0 {
                    return Err(err("opening the sandbox's namespaces"));
                }
                // SAFETY: a fresh descriptor, owned (and closed) here.
                let fd =
                    unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                crate::sys::send_fd(self.status_fd, tag, &fd);
            }
        }
        if let Some(port) = self.proxy_port {
            let fd = listen_on_loopback(port)?;
            crate::sys::send_fd(self.status_fd, b"proxy 0\n", &fd);
        }
        if let Some(size) = self.pty {
            let slave = self.open_pty(size)?;
            self.pty_slave
                .store(slave, std::sync::atomic::Ordering::Relaxed);
        }
        self.stamp_at(b"init-hook", hooked);
        self.enter_unprivileged_userns()?;
        crate::sys::drop_all_capabilities().map_err(|e| format!("dropping capabilities: {e}"))?;
        // Set after the last credential change (which clears it): when pysandbox dies,
        // so does this init, and with it the whole pid namespace.
        check(
            // SAFETY: plain prctl.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) },
            "PR_SET_PDEATHSIG",
        )?;
        // The parent-death signal only fires for a death after it is set: if pysandbox
        // died before (a SIGKILL during build()), nobody would ever start or kill this
        // init, blocked on the start signal. Its pidfd says whether it is gone.
        if crate::sys::exited(self.parent_pidfd) {
            // SAFETY: terminating this process.
            unsafe { libc::_exit(137) };
        }
        Ok(())
    }

    /// A terminal of the sandbox's devpts: sends the master to pysandbox (and closes it
    /// here), returns the slave. Ctrl-Z is disabled on it: no shell in the sandbox would
    /// ever continue a stopped interpreter.
    fn open_pty(&self, (rows, cols): (u16, u16)) -> Result<RawFd, String> {
        const TIOCGPTPEER: libc::c_ulong = 0x5441; // _IO('T', 0x41)
        // SAFETY: open/ioctl/tc*attr on descriptors owned here; `ws` and `t` are valid,
        // properly sized buffers.
        unsafe {
            let m = libc::open(
                c"/dev/pts/ptmx".as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            );
            if m < 0 {
                return Err(err("opening the sandbox's /dev/pts/ptmx"));
            }
            let master = <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(m);
            let unlock: libc::c_int = 0;
            check(
                libc::ioctl(m, libc::TIOCSPTLCK, &unlock),
                "unlocking the terminal",
            )?;
            let ws = libc::winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            check(libc::ioctl(m, libc::TIOCSWINSZ, &ws), "sizing the terminal")?;
            let slave = libc::ioctl(
                m,
                TIOCGPTPEER,
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            );
            if slave < 0 {
                return Err(err("opening the terminal's slave"));
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(slave, &mut t) == 0 {
                t.c_cc[libc::VSUSP] = 0; // _POSIX_VDISABLE
                libc::tcsetattr(slave, libc::TCSANOW, &t);
            }
            crate::sys::send_fd(self.status_fd, b"pty 0\n", &master);
            Ok(slave)
        }
    }

    /// Nested user namespace: `mambauser` (1000) inside = the container's root outside.
    /// The script can then never be uid 0, in any namespace it can see.
    fn enter_unprivileged_userns(&self) -> Result<(), String> {
        // The uid_map of a non-dumpable process is owned by the global root: writable only
        // while dumpable. Nothing else runs in the sandbox yet.
        check(
            // SAFETY: plain prctl calls.
            unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) },
            "PR_SET_DUMPABLE",
        )?;
        check(
            // SAFETY: unshare has no memory arguments; the process is single-threaded.
            unsafe { libc::unshare(libc::CLONE_NEWUSER) },
            "creating the script's user namespace",
        )?;
        write_file("/proc/self/setgroups", "deny")?;
        write_file("/proc/self/uid_map", &format!("{SANDBOX_UID} 0 1"))?;
        write_file("/proc/self/gid_map", &format!("{SANDBOX_GID} 0 1"))?;
        check(
            // SAFETY: plain prctl.
            unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) },
            "PR_SET_DUMPABLE",
        )?;
        check(
            // SAFETY: plain credential syscalls.
            unsafe { libc::setresgid(SANDBOX_GID, SANDBOX_GID, SANDBOX_GID) },
            "setresgid",
        )?;
        check(
            // SAFETY: as above.
            unsafe { libc::setresuid(SANDBOX_UID, SANDBOX_UID, SANDBOX_UID) },
            "setresuid",
        )?;
        Ok(())
    }

    /// After the start signal: start the interpreter, stay as init.
    fn run_init(&self) -> ! {
        self.stamp(b"start-signal");
        // SAFETY: signal-mask and disposition setup on our own single-threaded process.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::sigprocmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
            // The init of a pid namespace only receives signals it has a handler for,
            // even from outside: install a no-op one for the forwarded signals.
            for sig in 1..libc::SIGRTMAX() {
                if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                    continue;
                }
                let handler = if FORWARDED.contains(&sig) || sig == libc::SIGCHLD {
                    noop_handler as *const () as libc::sighandler_t
                } else {
                    libc::SIG_DFL
                };
                libc::signal(sig, handler);
            }
        }
        // The filter goes on last, after every privilege is gone (no_new_privs is set, so
        // no capability is needed), on this init and inherited by the interpreter. It
        // fails closed: no filter, no script.
        match crate::seccomp::install(&self.seccomp) {
            Ok(None) => {}
            Ok(Some(listener)) => {
                crate::sys::send_fd(self.status_fd, b"notify 0\n", &listener);
                drop(listener);
            }
            Err(e) => {
                self.report(b"seccomp ", e.raw_os_error().unwrap_or(0));
                // SAFETY: terminating this process.
                unsafe { libc::_exit(126) };
            }
        }
        self.stamp(b"seccomp-on");
        let pid = self.spawn_python();
        if pid < 0 {
            self.report(b"exec ", errno());
            // SAFETY: terminating this process.
            unsafe { libc::_exit(126) };
        }
        self.reap(pid)
    }

    /// Starts the interpreter's process the way posix_spawn does: a child that shares
    /// this init's memory (CLONE_VM) on a stack of its own until it execs, while this
    /// init waits (CLONE_VFORK). Nothing of the init is copied (a fork would copy its
    /// page tables, and the exec would then tear the copy down). The child allocates
    /// nothing (its argv arrays are built here) and no handler can run on the shared
    /// memory: every signal is blocked until the child has reset them all. Returns the
    /// child's pid, or -1 (errno set).
    fn spawn_python(&self) -> libc::pid_t {
        let mut argv: Vec<*const libc::c_char> = self.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = self.envp.iter().map(|a| a.as_ptr()).collect();
        envp.push(std::ptr::null());
        let job = Spawn {
            plan: self,
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
        };
        // SAFETY: CLONE_VFORK: the call returns once the child has exec'd or exited, so
        // its stack and `job` outlive it; `spawn_child` never returns, allocates nothing
        // and makes only async-signal-safe calls (see exec_python).
        let spawned = unsafe {
            crate::sys::clone_sharing_memory(
                spawn_child,
                &job as *const Spawn as *mut libc::c_void,
                libc::CLONE_VFORK | libc::SIGCHLD,
                256 << 10,
            )
        };
        spawned.map_or(-1, |(pid, _stack)| pid)
    }

    fn exec_python(&self, argv: *const *const libc::c_char, envp: *const *const libc::c_char) -> ! {
        // SAFETY: only async-signal-safe calls on data prepared before the clone.
        unsafe {
            for sig in 1..libc::SIGRTMAX() {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            // `run -i`: a session of its own with the terminal as controlling terminal
            // (its process group in the foreground: Ctrl-C is a SIGINT for it) and stdio.
            let slave = self.pty_slave.load(std::sync::atomic::Ordering::Relaxed);
            if slave >= 0 {
                libc::setsid();
                libc::ioctl(slave, libc::TIOCSCTTY, 0);
                for fd in 0..3 {
                    libc::dup2(slave, fd);
                }
                libc::close(slave);
            }
            // The status socket (and anything else) must not survive into Python.
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            self.stamp(b"execve");
            libc::execve(self.python.as_ptr(), argv, envp);
            self.report(b"exec ", errno());
            libc::_exit(127);
        }
    }

    fn reap(&self, main: libc::pid_t) -> ! {
        // Only the status socket stays open in the init.
        close_all_but(self.status_fd);
        // SAFETY: sigwaitinfo/waitpid/kill on our own process and children.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGCHLD);
            for &s in FORWARDED {
                libc::sigaddset(&mut set, s);
            }
            loop {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                let sig = libc::sigwaitinfo(&set, &mut info);
                if sig < 0 {
                    continue;
                }
                if sig != libc::SIGCHLD {
                    // kill(-1) from the namespace's init reaches every other process in it.
                    libc::kill(-1, sig);
                    continue;
                }
                loop {
                    let mut st: libc::c_int = 0;
                    let p = libc::waitpid(-1, &mut st, libc::WNOHANG);
                    if p <= 0 {
                        break;
                    }
                    if p != main {
                        continue;
                    }
                    self.stamp(b"python-exited");
                    let code = if libc::WIFEXITED(st) {
                        let c = libc::WEXITSTATUS(st);
                        self.report(b"exit ", c);
                        c
                    } else if libc::WIFSIGNALED(st) {
                        let s = libc::WTERMSIG(st);
                        self.report(b"signal ", s);
                        128 + s
                    } else {
                        continue;
                    };
                    // Leaving takes the rest of the namespace with us (the kernel kills it).
                    libc::_exit(code);
                }
            }
        }
    }

    /// With `timing`: `time <step> <ns>\n` (CLOCK_MONOTONIC), without allocating.
    fn stamp(&self, step: &[u8]) {
        self.stamp_at(step, crate::sys::monotonic_ns());
    }

    /// As [`ExecPlan::stamp`], for a time taken earlier.
    fn stamp_at(&self, step: &[u8], ns: i64) {
        if !self.timing {
            return;
        }
        let mut tag = [0u8; 40];
        let n = step.len().min(tag.len() - 6);
        tag[..5].copy_from_slice(b"time ");
        tag[5..5 + n].copy_from_slice(&step[..n]);
        tag[5 + n] = b' ';
        self.report(&tag[..6 + n], ns);
    }

    /// Writes `<tag><n>\n` to the status socket without allocating.
    fn report(&self, tag: &[u8], n: impl Into<i64>) {
        let n: i64 = n.into();
        let mut buf = [0u8; 72];
        let mut len = 0;
        for &b in tag {
            buf[len] = b;
            len += 1;
        }
        let mut digits = [0u8; 20];
        let mut d = 0;
        let neg = n < 0;
        let mut v = n.unsigned_abs();
        loop {
            digits[d] = b'0' + (v % 10) as u8;
            d += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        if neg {
            buf[len] = b'-';
            len += 1;
        }
        while d > 0 {
            d -= 1;
            buf[len] = digits[d];
            len += 1;
        }
        buf[len] = b'\n';
        len += 1;
        // SAFETY: writing a stack buffer to our status descriptor.
        unsafe { libc::write(self.status_fd, buf.as_ptr().cast(), len) };
    }
}

/// What the interpreter's process starts from (see `spawn_python`).
struct Spawn<'a> {
    plan: &'a ExecPlan,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
}

extern "C" fn spawn_child(job: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `spawn_python` passes a `Spawn` that outlives this child's use of it.
    let job = unsafe { &*(job as *const Spawn) };
    job.plan.exec_python(job.argv, job.envp)
}

extern "C" fn noop_handler(_: libc::c_int) {}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn close_all_but(keep: RawFd) {
    // SAFETY: closing descriptor ranges of our own process.
    unsafe {
        if keep > 3 {
            libc::syscall(libc::SYS_close_range, 3u32, (keep - 1) as u32, 0u32);
        }
        libc::syscall(libc::SYS_close_range, (keep + 1) as u32, u32::MAX, 0u32);
        if keep != 0 {
            libc::close(0);
        }
    }
}

/// Overwrites this process's argv and environment block (inherited from pysandbox by
/// clone) with zeros: `/proc/<pid>/cmdline` is world-readable and would show the host
/// command line, with its paths, to the script.
fn scrub_own_cmdline() {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return;
    };
    // Fields after "(comm)": index 0 is field 3 (state); arg_start is field 48.
    let f: Vec<usize> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    if f.len() < 49 {
        return;
    }
    for (start, end) in [(f[45], f[46]), (f[47], f[48])] {
        if start != 0 && end > start && end - start < (1 << 24) {
            // SAFETY: [start, end) is this process's own argv/env area on its stack, as
            // reported by the kernel; nothing reads it any more (std's args/env were
            // copied at startup or are not used in this process).
            unsafe { std::ptr::write_bytes(start as *mut u8, 0, end - start) };
        }
    }
}

/// A TCP socket listening on 127.0.0.1:`port` of this (the sandbox's) network
/// namespace: the script's way to the `--allow-net` proxy, which accepts from outside.
fn listen_on_loopback(port: u16) -> Result<std::os::fd::OwnedFd, String> {
    // SAFETY: socket/bind/listen with a properly sized sockaddr_in; the descriptor is
    // owned (and closed on error) by the OwnedFd.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return Err(err("socket for the proxy"));
        }
        let fd = <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(s);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        check(
            libc::bind(
                s,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ),
            "binding the proxy's port",
        )?;
        check(libc::listen(s, 128), "listening on the proxy's port")?;
        Ok(fd)
    }
}

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn loopback_up() -> Result<(), String> {
    // SAFETY: socket/ioctl/close on a descriptor we own, with a properly sized ifreq.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return Err(err("socket for lo"));
        }
        let mut req: IfReq = std::mem::zeroed();
        req.name[0] = b'l' as libc::c_char;
        req.name[1] = b'o' as libc::c_char;
        let r = libc::ioctl(s, libc::SIOCGIFFLAGS, &mut req);
        if r < 0 {
            let e = err("reading lo flags");
            libc::close(s);
            return Err(e);
        }
        req.flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        let r = libc::ioctl(s, libc::SIOCSIFFLAGS, &req);
        let e = err("bringing lo up");
        libc::close(s);
        if r < 0 {
            return Err(e);
        }
    }
    Ok(())
}

impl Executor for SandboxExecutor {
    fn exec(&self, _spec: &Spec) -> Result<(), ExecutorError> {
        self.plan.run_init()
    }

    fn validate(&self, _spec: &Spec) -> Result<(), ExecutorValidationError> {
        self.plan
            .prepare()
            .map_err(ExecutorValidationError::ArgValidationError)
    }

    /// The environment goes to execve explicitly; this process's own environment is
    /// irrelevant (and its memory is scrubbed in `prepare`).
    fn setup_envs(
        &self,
        _envs: std::collections::HashMap<String, String>,
    ) -> Result<(), ExecutorSetEnvsError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(Status::parse(b"exit 3\n"), Some(Status::Exited(3)));
        assert_eq!(Status::parse(b"signal 9\n"), Some(Status::Signaled(9)));
        assert_eq!(
            Status::parse(b"exec 2\nexit 127\n"),
            Some(Status::ExecFailed(2))
        );
        assert_eq!(Status::parse(b"exec 2\n"), Some(Status::ExecFailed(2)));
        assert_eq!(Status::parse(b""), None);
        assert_eq!(Status::parse(b"garbage\n"), None);
        assert_eq!(
            Status::parse(b"time init-hook 123\ntime execve 456\nexit 0\ntime python-exited 789\n"),
            Some(Status::Exited(0))
        );
        assert_eq!(
            Status::parse(b"notify 0\nseccomp 22\nexit 126\n"),
            Some(Status::SeccompFailed(22))
        );
    }
}
