//! The egress proxy of `--allow-net`: the only way out of a sandbox whose network
//! namespace has nothing but its loopback.
//!
//! Where it listens: the sandbox's init binds [`PROXY_PORT`] on 127.0.0.1 *in the
//! sandbox's network namespace* before the script starts and hands the listening socket
//! to pysandbox. The proxy process accepts on it from outside: it is reachable from the
//! sandbox's loopback only, never from the host's (no other process of the host can use
//! it), and its outgoing connections are made in pysandbox's own network namespace.
//!
//! What it speaks: HTTP CONNECT, plain HTTP (absolute-form requests, forwarded with
//! `Connection: close` and the Host header set to the checked target), and SOCKS5 with
//! names (`socks5h`). It resolves names itself, checks every *resolved* address against
//! the allow-list ([`super::allow`]: names reach public addresses only; loopback,
//! private, link-local, metadata... only when an address rule names them), and connects
//! to the very address it checked, so a DNS answer that changes between the check and
//! the connection (rebinding) changes nothing. Every attempt is logged.
//!
//! How it runs: a process forked from pysandbox (single-threaded there) after the
//! container exists. In it, before anything is read from the sandbox: every descriptor
//! but its three is closed, stdio is /dev/null, job-control and terminal signals are
//! ignored (pysandbox stops it), it dies with pysandbox (PR_SET_PDEATHSIG), it is not
//! dumpable, has no new privileges and no capabilities (as root it becomes the sandbox's
//! unprivileged host ids first), and installs its own seccomp filter (`proxy` in
//! `seccomp/<arch>.json`: no exec, no file writes, no listening sockets, no ptrace).
//! Then it uses threads: one per direction of each connection, at most
//! [`MAX_CONNECTIONS`] connections, 64 KiB per direction, a request head of at most
//! [`MAX_HEAD`] bytes read within [`HEAD_TIMEOUT`], a log of at most [`MAX_LOG`] entries
//! (more are counted). pysandbox closes the stop pipe when the
//! sandbox is gone; the proxy writes its log as JSON on the log pipe and exits.
//!
//! Must not: be started before the container exists (pysandbox forks), or outlive the
//! run.
//!
//! This file starts and confines the proxy process; `accept` is its accept loop, `conn`
//! holds its connections (log, allow-list check, relay), `request` what clients ask
//! (HTTP, SOCKS5).

mod accept;
mod conn;
mod request;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::allow::AllowList;
use super::{NetError, io_err};
use crate::report::{NetConnection, NetReport};

/// The port the proxy listens on, in the sandbox's loopback.
pub const PROXY_PORT: u16 = 3128;
/// Concurrent connections; more are refused (and logged).
pub const MAX_CONNECTIONS: usize = 64;
/// Largest request head (HTTP request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Time a client has to send its request (head, SOCKS greeting).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to connect to an allowed address.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Entries kept in the log; later attempts are only counted.
pub const MAX_LOG: usize = 1000;
/// Addresses tried per name.
const MAX_ADDRS: usize = 16;
const RELAY_BUF: usize = 64 * 1024;

/// The proxy's address as the script sees it.
pub fn address() -> String {
    format!("127.0.0.1:{PROXY_PORT}")
}

/// The environment that points clients at the proxy (both spellings: curl reads only
/// the lower-case `http_proxy`). NO_PROXY is empty so that every connection is logged.
pub fn environment() -> Vec<(String, String)> {
    let http = format!("http://{}", address());
    let socks = format!("socks5h://{}", address());
    let mut env = Vec::new();
    for (k, v) in [
        ("HTTP_PROXY", &http),
        ("HTTPS_PROXY", &http),
        ("ALL_PROXY", &socks),
        ("NO_PROXY", &String::new()),
    ] {
        env.push((k.to_string(), v.clone()));
        env.push((k.to_ascii_lowercase(), v.clone()));
    }
    env.push(("PIP_PROXY".into(), http));
    env
}

/// A running proxy process. Dropping it kills it; [`Proxy::finish`] collects its log.
pub struct Proxy {
    pid: libc::pid_t,
    stop: Option<OwnedFd>,
    log: OwnedFd,
    allow: Vec<String>,
}

/// Starts the proxy on `listener` (bound in the sandbox's namespace). `run_as`: as real
/// root, the host ids it switches to. Call only from a single-threaded process.
pub fn start(
    listener: OwnedFd,
    allow: &AllowList,
    run_as: Option<(u32, u32)>,
) -> Result<Proxy, NetError> {
    let pipe = || {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| io_err("creating the proxy's pipes")(e.into()))
    };
    let (stop_r, stop_w) = pipe()?;
    let (log_r, log_w) = pipe()?;
    // The proxy is made in the pid namespace of sys::PidNamespace, where pysandbox has no
    // pid: it checks pysandbox through a pidfd.
    let parent =
        crate::sys::pidfd_open(std::process::id() as i32).map_err(io_err("watching pysandbox"))?;
    // SAFETY: pysandbox is single-threaded (runtime's contract), so the child may
    // allocate and start threads; it never returns from `serve_in_child`.
    match unsafe { libc::fork() } {
        -1 => Err(io_err("starting the proxy")(io::Error::last_os_error())),
        0 => {
            let keep = [listener.as_raw_fd(), stop_r.as_raw_fd(), log_w.as_raw_fd()];
            let code = match confine(&keep, parent.as_raw_fd(), run_as) {
                Ok(()) => {
                    accept::serve(listener, stop_r, log_w, allow.clone());
                    0
                }
                Err(_) => 1,
            };
            // SAFETY: leaving the child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        pid => Ok(Proxy {
            pid,
            stop: Some(stop_w),
            log: log_r,
            allow: allow.rules.iter().map(|r| r.to_string()).collect(),
        }),
    }
}

impl Proxy {
    /// Stops the proxy (the sandbox is gone) and returns its log.
    pub fn finish(mut self) -> NetReport {
        self.stop = None; // EOF on the stop pipe
        let mut data = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut buf = [0u8; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut p = libc::pollfd {
                fd: self.log.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one valid pollfd.
            if left.is_zero() || unsafe { libc::poll(&mut p, 1, left.as_millis() as i32) } <= 0 {
                break;
            }
            // SAFETY: reading into a live buffer.
            let n = unsafe { libc::read(self.log.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            data.extend_from_slice(&buf[..n as usize]);
            if data.len() > 64 << 20 {
                break;
            }
        }
        let (connections, connections_dropped) =
            serde_json::from_slice::<(Vec<NetConnection>, u64)>(&data).unwrap_or_default();
        NetReport {
            proxy: address(),
            allow: std::mem::take(&mut self.allow),
            connections,
            connections_dropped,
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // SAFETY: our own child: kill, then reap it.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// In the child, before it reads anything from the sandbox.
fn confine(keep: &[RawFd], parent: RawFd, run_as: Option<(u32, u32)>) -> io::Result<()> {
    let check = |r: libc::c_int| {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: plain system calls on this process; `sa` is a valid, zeroed sigaction.
    unsafe {
        // pysandbox stops it; Ctrl-C on the terminal goes to the whole process group.
        for sig in [
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGTSTP,
            libc::SIGTTIN,
            libc::SIGTTOU,
            libc::SIGPIPE,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
        if crate::sys::exited(parent) {
            libc::_exit(1);
        }
        // stdio: /dev/null (the caller's terminal or pipes are none of its business).
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        check(null)?;
        for fd in 0..3 {
            check(libc::dup2(null, fd))?;
        }
        libc::close(null);
        // Every other descriptor of pysandbox (the sandbox's stdin pipe, its pidfd...).
        let mut keep = keep.to_vec();
        keep.sort_unstable();
        let mut from = 3u32;
        for &k in &keep {
            if (k as u32) > from {
                check(libc::syscall(libc::SYS_close_range, from, k as u32 - 1, 0) as i32)?;
            }
            from = k as u32 + 1;
        }
        check(libc::syscall(libc::SYS_close_range, from, u32::MAX, 0) as i32)?;
        check(libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0))?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        match run_as {
            Some((uid, gid)) => {
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setresgid(gid, gid, gid))?;
                // From uid 0 to another, without KEEP_CAPS: every capability is gone.
                check(libc::setresuid(uid, uid, uid))?;
            }
            None => crate::sys::drop_all_capabilities()?,
        }
        // A bounded number of descriptors: the connections, their servers, a margin.
        let n = (4 * MAX_CONNECTIONS + 32) as libc::rlim_t;
        let lim = libc::rlimit {
            rlim_cur: n,
            rlim_max: n,
        };
        check(libc::setrlimit(libc::RLIMIT_NOFILE, &lim))?;
    }
    // The syscall filter (no exec, no file writes, no listening, no ptrace...), then the
    // name, which says the proxy is confined (tests wait for it).
    crate::seccomp::install_proxy_filter()?;
    // SAFETY: PR_SET_NAME with a NUL-terminated string.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"pysandbox-proxy".as_ptr(), 0, 0, 0) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_points_at_the_proxy() {
        let env = environment();
        let get = |k: &str| env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.as_str());
        assert_eq!(get("HTTP_PROXY"), Some("http://127.0.0.1:3128"));
        assert_eq!(get("https_proxy"), Some("http://127.0.0.1:3128"));
        assert_eq!(get("ALL_PROXY"), Some("socks5h://127.0.0.1:3128"));
        assert_eq!(get("NO_PROXY"), Some(""));
        assert_eq!(get("PIP_PROXY"), Some("http://127.0.0.1:3128"));
    }
}
