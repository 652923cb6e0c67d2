//! The network of a sandbox beyond its loopback. `--allow-net`: the egress proxy
//! ([`proxy`], with its allow-list in [`allow`]), the only way out of a sandbox that has
//! nothing but its loopback. `--network`: its own network namespace, connected
//! to the outside by `pasta` (from the passt project), a user-mode TCP/IP stack that
//! needs neither root nor iptables. The host's local IPC stays out of reach:
//! - every port forwarding is off in both directions (`-t none -u none -T none -U none`),
//!   so nothing the host binds on its loopback is mirrored into the sandbox;
//! - the gateway address is not mapped to the host's loopback (`--no-map-gw`), so
//!   127.0.0.1 of the host cannot be reached through the gateway either;
//! - abstract unix sockets belong to a network namespace: the host's are not visible.
//!
//! DNS: pasta forwards queries sent to [`DNS_ADDR`] to the host's first resolver
//! (`--dns-forward`), and the sandbox's resolv.conf names only that address.
//!
//! Lifecycle: [`start`] runs after the container is built (its init is blocked before the
//! script starts) and returns once pasta has configured the interface (it writes its pid
//! file only after that). pasta is placed in the sandbox's pid namespace, as an orphan
//! adopted by the sandbox's init: when that init ends (script done, timeout, or pysandbox
//! killed, which kills the init through its parent-death signal), the kernel kills pasta
//! with the rest of the namespace. Nothing is left on disk: pasta's log and the device
//! node live in pysandbox's private tmpfs. As root, pasta runs with the sandbox's own
//! credentials (root of the sandbox's user namespace, an unprivileged id on the host),
//! never as host root.
//!
//! Must not: touch libcontainer (runtime/ hands over the init's namespaces and the
//! proxy's listening socket), or add a thread to pysandbox's process (it forks; the
//! proxy's threads live in its own forked process).

pub mod allow;
pub mod proxy;

use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns};
use nix::sys::stat::{Mode as FileMode, SFlag, makedev, mknod};

/// The address the sandbox sends DNS queries to; pasta forwards them to the host's
/// resolver. Link-local, like podman's: it belongs to no real network.
pub const DNS_ADDR: &str = "169.254.1.1";

/// The tun device pasta opens (as the sandbox's user when pysandbox is root).
const TUN: &str = "/dev/net/tun";

/// How long pasta may take to connect the sandbox.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(
        "--network needs `pasta` (the user-mode network of the passt project), which was not found (on PATH, or at $PYSANDBOX_PASTA). Hint: apt-get install passt (or use --network=host to share the host's network)"
    )]
    NoPasta,
    #[error(
        "--network needs {TUN}, which this host does not have. Hint: modprobe tun (or use --network=host)"
    )]
    NoTun,
    #[error(
        "--network needs read-write access to {TUN}, which this user does not have (mode {mode:o}). Hint: chmod 0666 {TUN} (what udev does on most distributions), or run pysandbox as root"
    )]
    TunDenied { mode: u32 },
    #[error("setting up the sandbox's network: {step}: {source}")]
    Io {
        step: &'static str,
        source: io::Error,
    },
    #[error(
        "pasta could not connect the sandbox's network: {0}. Hint: pasta needs a host interface with an address and a default route (see `ip route`); --network=host shares the host's network instead"
    )]
    Pasta(String),
}

fn io_err(step: &'static str) -> impl FnOnce(io::Error) -> NetError {
    move |source| NetError::Io { step, source }
}

/// Finds pasta and checks the host lets this caller use it, before anything is set up
/// (so a refusal leaves nothing half-done). `as_root`: pysandbox runs as real root and
/// will give pasta a private tun device node; otherwise the caller's own access counts.
pub fn preflight(as_root: bool) -> Result<PathBuf, NetError> {
    let pasta = pasta_path().ok_or(NetError::NoPasta)?;
    let meta = fs::metadata(TUN).map_err(|_| NetError::NoTun)?;
    if !std::os::unix::fs::FileTypeExt::is_char_device(&meta.file_type()) {
        return Err(NetError::NoTun);
    }
    if !as_root {
        use nix::unistd::{AccessFlags, access};
        // access(2) checks the real ids, i.e. the caller.
        if access(Path::new(TUN), AccessFlags::R_OK | AccessFlags::W_OK).is_err() {
            return Err(NetError::TunDenied {
                mode: meta.mode() & 0o7777,
            });
        }
    }
    Ok(pasta)
}

/// Where pasta is: `$PYSANDBOX_PASTA` if set, else the first `pasta` on PATH (or in
/// /usr/bin, /usr/sbin, /usr/local/bin).
pub fn pasta_path() -> Option<PathBuf> {
    match std::env::var_os("PYSANDBOX_PASTA") {
        Some(p) => Some(PathBuf::from(p)).filter(|p| is_executable(p)),
        None => locate("pasta"),
    }
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p)
        .map(|m| m.is_file() && m.mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn locate(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/sbin", "/usr/local/bin"].map(PathBuf::from))
        .filter(|d| d.is_absolute())
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// The sandbox's resolv.conf with pasta's DNS forwarder as its only name server; the
/// host's `search` and `options` lines are kept (they name no address).
pub fn resolv_conf(host: &str) -> String {
    let mut out = format!(
        "# pysandbox --network: pasta forwards to the host's resolver\nnameserver {DNS_ADDR}\n"
    );
    for line in host.lines() {
        let t = line.trim_start();
        if t.starts_with("search") || t.starts_with("options") {
            out.push_str(t);
            out.push('\n');
        }
    }
    out
}

/// Where and as whom pasta runs.
pub struct Target<'a> {
    /// The network namespace of the sandbox (its init is blocked before the script).
    pub netns: OwnedFd,
    /// The pid namespace of the sandbox: pasta lives and dies in it.
    pub pidns: OwnedFd,
    /// A folder in pysandbox's private tmpfs for pasta's log and, as root, its tun node.
    pub run_dir: &'a Path,
    /// As real root: the host ids of the sandbox's root, which pasta runs as. The tun
    /// node it opens is then made for it (mode 0600, owned by those ids) and bound over
    /// /dev/net/tun in pysandbox's private mount namespace only.
    pub sandbox_ids: Option<(u32, u32)>,
}

/// Starts pasta on the sandbox's network namespace and returns once the interface is
/// configured. On error the caller kills the sandbox, which takes a live pasta with it.
pub fn start(pasta: &Path, t: &Target) -> Result<(), NetError> {
    let (netns, pidns) = (&t.netns, &t.pidns);
    // The user namespace owning the network namespace: the init itself has already
    // moved on into the script's nested one, where only the script's user exists.
    let userns = owner_userns(netns)?;
    let own_userns = fs::metadata("/proc/self/ns/user")
        .map_err(io_err("reading pysandbox's user namespace"))?
        .ino();
    let join_userns = fs::File::from(
        userns
            .try_clone()
            .map_err(io_err("reading the sandbox's user namespace"))?,
    )
    .metadata()
    .map_err(io_err("reading the sandbox's user namespace"))?
    .ino()
        != own_userns;

    fs::create_dir(t.run_dir).map_err(io_err("creating pasta's folder"))?;
    if let Some((uid, gid)) = t.sandbox_ids {
        private_tun(t.run_dir, uid, gid)?;
    }
    // Its log (size-capped by pasta), and its stderr for what it says before the log
    // is open (both in the private tmpfs).
    let log = t.run_dir.join("pasta.log");
    let err_log = t.run_dir.join("pasta.stderr");
    let new_file = |p: &Path| {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(p)
            .map_err(io_err("creating pasta's log"))
    };
    new_file(&log)?;
    let stderr = new_file(&err_log)?;
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| io_err("creating a pipe")(e.into()))?;
    if let Some((uid, gid)) = t.sandbox_ids {
        // pasta reopens both through /proc/self/fd as the sandbox's user.
        std::os::unix::fs::chown(&log, Some(uid), Some(gid))
            .map_err(io_err("handing pasta its log"))?;
        nix::unistd::fchown(ready_w.as_raw_fd(), Some(uid.into()), Some(gid.into()))
            .map_err(|e| io_err("handing pasta its pipe")(e.into()))?;
    }

    let (net_fd, pid_fd, user_fd, w_fd) = (
        netns.as_raw_fd(),
        pidns.as_raw_fd(),
        userns.as_raw_fd(),
        ready_w.as_raw_fd(),
    );
    let mut cmd = Command::new(pasta);
    cmd.args(["-f", "-q", "--netns"])
        .arg(format!("/proc/self/fd/{net_fd}"))
        .args(["--netns-only", "--config-net"])
        // No port forwarding in either direction: nothing of the host's loopback.
        .args(["-t", "none", "-u", "none", "-T", "none", "-U", "none"])
        // The gateway is the real gateway, not an alias of the host's loopback.
        .arg("--no-map-gw")
        .args(["--dns-forward", DNS_ADDR])
        // The interface is configured directly: no DHCP/DHCPv6/RA server to talk to.
        .args(["--no-dhcp", "--no-dhcpv6", "--no-ra"])
        .arg("-P")
        .arg(format!("/proc/self/fd/{w_fd}"))
        .arg("-l")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr));
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (setns, set*id, close_range, fcntl, fork, waitpid,
    // _exit) on descriptors that stay open in this process until spawn() returns; it
    // allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if join_userns {
                enter_userns(user_fd)?;
            }
            // Nothing pysandbox holds or inherited (its caller's descriptors) reaches
            // pasta but the two it is told about.
            if libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            for fd in [net_fd, w_fd] {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            into_pid_namespace(pid_fd)
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| NetError::Pasta(format!("starting {}: {e}", pasta.display())))?;
    drop(ready_w);
    let _ = child.wait(); // the first intermediate process; pasta itself runs on
    wait_ready(&ready_r, &[&log, &err_log])
}

/// The user namespace that owns the namespace `ns` (ioctl NS_GET_USERNS).
fn owner_userns(ns: &OwnedFd) -> Result<OwnedFd, NetError> {
    const NS_GET_USERNS: libc::c_ulong = 0xb701; // _IO(0xb7, 0x1)
    // SAFETY: an ioctl without arguments on an open namespace file; it returns a new
    // descriptor, owned here.
    let fd = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_USERNS) };
    if fd < 0 {
        return Err(io_err("finding the owner of the sandbox's network")(
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: a fresh descriptor from the kernel (close-on-exec, as every nsfs fd).
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// In the forked child, as root: join the user namespace owning the sandbox's network
/// as its root, i.e. as the sandbox's unprivileged ids on the host.
fn enter_userns(user_fd: RawFd) -> io::Result<()> {
    // SAFETY: the descriptor is an open namespace file owned by the parent.
    let user_ns = unsafe { std::os::fd::BorrowedFd::borrow_raw(user_fd) };
    setns(user_ns, CloneFlags::CLONE_NEWUSER).map_err(io::Error::from)?;
    let root = nix::unistd::Gid::from_raw(0);
    nix::unistd::setresgid(root, root, root).map_err(io::Error::from)?;
    let root = nix::unistd::Uid::from_raw(0);
    nix::unistd::setresuid(root, root, root).map_err(io::Error::from)
}

/// In the forked child (A, in pysandbox's pid namespace): make pasta a process of the
/// sandbox's pid namespace whose parent is the sandbox's init. Only children are born in
/// a joined pid namespace, so A forks B there, B forks pasta and leaves at once: the
/// orphan is adopted by the init of B's namespace, which reaps it and, when it ends
/// (script done, timeout, pysandbox killed), takes pasta with it. A reaps B itself:
/// the init's exit waits until every process of its namespace is reaped, and nothing of
/// pysandbox's may be left there unreaped.
/// Returns in pasta's process only.
///
/// # Safety
/// Call only between fork and exec: it forks and `_exit`s.
unsafe fn into_pid_namespace(pid_fd: RawFd) -> io::Result<()> {
    // SAFETY: the descriptor is an open namespace file owned by the parent.
    let pid_ns = unsafe { std::os::fd::BorrowedFd::borrow_raw(pid_fd) };
    setns(pid_ns, CloneFlags::CLONE_NEWPID).map_err(io::Error::from)?;
    // SAFETY: fork/waitpid/_exit between fork and exec (async-signal-safe).
    unsafe {
        match libc::fork() {
            -1 => return Err(io::Error::last_os_error()),
            0 => {}
            b => {
                let mut st = 0;
                while libc::waitpid(b, &mut st, 0) < 0
                    && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
                {
                }
                libc::_exit(if libc::WIFEXITED(st) {
                    libc::WEXITSTATUS(st)
                } else {
                    1
                });
            }
        }
        match libc::fork() {
            -1 => libc::_exit(1),
            0 => Ok(()),
            _ => libc::_exit(0),
        }
    }
}

/// A tun device node owned by the sandbox's ids, bound over /dev/net/tun in pysandbox's
/// private mount namespace (the host's node is root's, often 0600). The node lives on
/// a tiny tmpfs of its own: the run's state tmpfs is `nodev`.
fn private_tun(run_dir: &Path, uid: u32, gid: u32) -> Result<(), NetError> {
    let dev = run_dir.join("dev");
    fs::create_dir(&dev).map_err(io_err("creating the tun folder"))?;
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0711,size=4k,nr_inodes=4"),
    )
    .map_err(|e| io_err("mounting the tun folder")(e.into()))?;
    let node = dev.join("tun");
    mknod(
        &node,
        SFlag::S_IFCHR,
        FileMode::from_bits_truncate(0o600),
        makedev(10, 200),
    )
    .map_err(|e| io_err("creating the tun device node")(e.into()))?;
    std::os::unix::fs::chown(&node, Some(uid), Some(gid))
        .map_err(io_err("handing the tun device node to the sandbox"))?;
    mount(
        Some(&node),
        TUN,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| io_err("binding the tun device node")(e.into()))
}

/// Waits for pasta's pid file (written once the interface is configured); on EOF
/// without it, pasta failed: its log says why.
fn wait_ready(ready: &OwnedFd, logs: &[&Path]) -> Result<(), NetError> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let t0 = Instant::now();
    let mut got = Vec::new();
    loop {
        let left = READY_TIMEOUT.saturating_sub(t0.elapsed());
        if left.is_zero() {
            return Err(NetError::Pasta(format!(
                "not ready after {} s",
                READY_TIMEOUT.as_secs()
            )));
        }
        let mut fds = [PollFd::new(ready.as_fd(), PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32)
            .unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, ms) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(io_err("waiting for pasta")(e.into())),
        }
        let mut buf = [0u8; 64];
        let n = nix::unistd::read(ready.as_raw_fd(), &mut buf)
            .map_err(|e| io_err("waiting for pasta")(e.into()))?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.contains(&b'\n') {
            return Ok(());
        }
    }
    if !got.is_empty() {
        return Ok(());
    }
    let mut text = String::new();
    for log in logs {
        let _ = fs::File::open(log).and_then(|mut f| f.read_to_string(&mut text));
    }
    let why = text
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("it exited without saying why")
        .to_string();
    Err(NetError::Pasta(why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_names_only_the_forwarder() {
        let r = resolv_conf(
            "nameserver 10.0.0.1\nsearch example.org\n  options ndots:2\nnameserver ::1\n",
        );
        assert_eq!(
            r.lines()
                .filter(|l| l.starts_with("nameserver"))
                .collect::<Vec<_>>(),
            vec![format!("nameserver {DNS_ADDR}")]
        );
        assert!(r.contains("search example.org\n"));
        assert!(r.contains("options ndots:2\n"));
    }
}
