//! pysandbox's own side of the isolation, before libcontainer runs: which mode the host
//! allows (real root, or an ordinary user), entering pysandbox's private namespaces, and
//! staging every host path the sandbox will see as a mount inside a private tmpfs.
//!
//! Staging is what makes the rest safe and tidy:
//! - host paths are opened here with `O_NOFOLLOW` and cloned with `open_tree`, so a
//!   symlink planted as `output` cannot redirect a writable mount elsewhere;
//! - as root, data/src/output are id-mapped (host root <-> the sandbox's unprivileged id),
//!   so root's 0700 folders are readable by the sandbox and its output is owned by root;
//! - the image is mounted read-only before libcontainer sees it, so nothing can write into
//!   the shared image cache;
//! - everything lives in a tmpfs mounted in pysandbox's private mount namespace: when
//!   pysandbox exits, however it exits, the mounts and the state vanish with it.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

use super::RuntimeError;
use crate::spec::HostIds;
use crate::sys;

/// The unprivileged host id a real-root run maps the sandbox to when there is no
/// `SUDO_UID` (the sandbox never runs as host uid 0).
pub const NOBODY: u32 = 65534;

/// The oldest kernel pysandbox runs on: `mount_setattr` and id-mapped mounts (5.12),
/// overlayfs and `open_tree` in user namespaces.
pub const MIN_KERNEL: (u32, u32) = (5, 12);

/// Fails fast, before any image work, on a kernel that cannot run a sandbox.
pub fn check_kernel() -> Result<(), RuntimeError> {
    let (rel, v) = sys::kernel_release();
    if v >= MIN_KERNEL {
        return Ok(());
    }
    Err(RuntimeError::Host {
        step: "checking the kernel",
        source: io::Error::other(format!(
            "Linux {rel} is older than {}.{}, which pysandbox needs (mount_setattr, id-mapped mounts)",
            MIN_KERNEL.0, MIN_KERNEL.1
        )),
        hint: "run pysandbox on Linux 5.12 or newer",
    })
}

/// How this pysandbox process may isolate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Real root in the initial user namespace. The sandbox runs as `sandbox` ids on the
    /// host; `caller` owns the output; `idmap` when the two differ.
    Root {
        sandbox: HostIds,
        caller: HostIds,
        idmap: bool,
    },
    /// An ordinary user, or root inside a user namespace: pysandbox enters a user
    /// namespace of its own that maps the caller to root.
    Rootless,
}

impl Mode {
    pub fn detect() -> Result<Mode, RuntimeError> {
        if sys::euid() != 0 {
            return Ok(Mode::Rootless);
        }
        if !sys::in_initial_userns() {
            // Root of a user namespace: fine when it is an ordinary user outside; not when
            // it is the parent's root (`unshare -r` run by root): the sandbox would run as
            // host uid 0, and the kernel exempts uid 0 from RLIMIT_NPROC, so a fork bomb
            // would be unbounded. Fail closed.
            if sys::outer_uid(0) == 0 {
                return Err(RuntimeError::Input(
                    "refusing to run: pysandbox is root in a user namespace whose root is its parent's root, so the sandbox would run as host uid 0 and its process limit could not hold. Hint: run pysandbox as root outside the namespace (it then maps the sandbox to an unprivileged id), or as an ordinary user".into(),
                ));
            }
            return Ok(Mode::Rootless);
        }
        let env_id = |k: &str| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse::<u32>().ok())
                .filter(|&v| v != 0)
        };
        match (env_id("SUDO_UID"), env_id("SUDO_GID")) {
            (Some(uid), Some(gid)) => {
                let ids = HostIds { uid, gid };
                Ok(Mode::Root {
                    sandbox: ids,
                    caller: ids,
                    idmap: false,
                })
            }
            _ => Ok(Mode::Root {
                sandbox: HostIds {
                    uid: NOBODY,
                    gid: NOBODY,
                },
                caller: HostIds { uid: 0, gid: 0 },
                idmap: true,
            }),
        }
    }

    pub fn is_root(self) -> bool {
        matches!(self, Mode::Root { .. })
    }
}

fn host_err(step: &'static str, hint: &'static str) -> impl FnOnce(io::Error) -> RuntimeError {
    move |source| RuntimeError::Host { step, source, hint }
}

/// Enters pysandbox's private namespaces (the sandbox keeps the IPC one) and caps their
/// per-namespace kernel budgets: `ipc` always, `user` (the per-host-user ones) in the
/// user namespace of its own that pysandbox enters when rootless. Must run
/// single-threaded. Returns what could not be capped (older kernels), for the report.
///
/// `run_cgroup`, the cgroup v2 run's cgroup (made by pysandbox), shapes what libcontainer
/// sees in the private mount namespace:
/// - its parent is bind-mounted over `/sys/fs/cgroup`: libcontainer, which enables
///   controllers on every level from the top of the hierarchy down to the run's cgroup,
///   then touches nothing above the parent (systemd's slices, the caller's own cgroup);
/// - when `born`, the run's `cgroup.procs` and `cgroup.kill` are covered with
///   `/dev/null`: the sandbox is born in its cgroup (see `born`), and libcontainer's move
///   into it would only cost
///   an RCU grace period (any write to `cgroup.procs` takes the kernel's threadgroup
///   lock for writing); its cleanup after a failed create would kill the process that
///   reports the failure. pysandbox reaches the real files through a descriptor.
pub fn enter_namespaces(
    mode: Mode,
    ipc: &[(&str, String)],
    user: &[(&str, String)],
    run_cgroup: Option<&Path>,
    born: bool,
) -> Result<Vec<String>, RuntimeError> {
    match mode {
        Mode::Rootless => {
            let (uid, gid) = (sys::euid(), sys::egid());
            unshare(
                CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC,
            )
            .map_err(|e| {
                host_err(
                    "creating a user namespace",
                    "unprivileged user namespaces must be enabled: sysctl user.max_user_namespaces>0 (and kernel.apparmor_restrict_unprivileged_userns=0 on Ubuntu); under `unshare -U`, add --map-root-user",
                )(io::Error::from(e))
            })?;
            let w = |p: &str, d: String| {
                sys::write_existing(Path::new(p), d.as_bytes()).map_err(host_err(
                    "writing the id map of pysandbox's user namespace",
                    "your uid must be mapped in the current user namespace (use unshare --map-root-user)",
                ))
            };
            w("/proc/self/setgroups", "deny".into())?;
            w("/proc/self/uid_map", format!("0 {uid} 1"))?;
            w("/proc/self/gid_map", format!("0 {gid} 1"))?;
        }
        Mode::Root { .. } => {
            unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC).map_err(|e| {
                host_err(
                    "creating a mount namespace",
                    "run as root with CAP_SYS_ADMIN",
                )(io::Error::from(e))
            })?;
        }
    }
    // Nothing we mount may leak back to the host, nor host mount events in.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| host_err("making mounts private", "")(e.into()))?;
    match run_cgroup {
        Some(run) => show_run_cgroup(run, born)?,
        None if mode == Mode::Rootless => expose_cgroup2()?,
        None => {}
    }
    let mut not_capped = write_sysctls(ipc);
    if mode == Mode::Rootless {
        not_capped.extend(write_sysctls(user));
    }
    Ok(not_capped)
}

/// See [`enter_namespaces`]: the parent of `run` over `/sys/fs/cgroup`; when `born`,
/// `/dev/null` over the run's `cgroup.procs` and `cgroup.kill` (absent before 5.14).
fn show_run_cgroup(run: &Path, born: bool) -> Result<(), RuntimeError> {
    let err = |e: nix::Error| host_err("showing the run's cgroup to libcontainer", "")(e.into());
    let (Some(parent), Some(name)) = (run.parent(), run.file_name()) else {
        return Err(host_err("showing the run's cgroup to libcontainer", "")(
            io::Error::from(io::ErrorKind::InvalidInput),
        ));
    };
    let bind = |from: &Path, to: &Path| {
        mount(Some(from), to, None::<&str>, MsFlags::MS_BIND, None::<&str>)
    };
    let top = Path::new("/sys/fs/cgroup");
    bind(parent, top).map_err(err)?;
    for f in ["cgroup.procs", "cgroup.kill"].iter().filter(|_| born) {
        let target = top.join(name).join(f);
        if target.exists() {
            bind(Path::new("/dev/null"), &target).map_err(err)?;
        }
    }
    Ok(())
}

/// Writes sysctls of the current namespaces; returns one line per failure.
fn write_sysctls(values: &[(&str, String)]) -> Vec<String> {
    values
        .iter()
        .filter_map(|(k, v)| {
            let p = Path::new("/proc/sys").join(k);
            sys::write_existing(&p, v.as_bytes())
                .err()
                .map(|e| format!("{} could not be capped at {v}: {e}", k.replace('/', ".")))
        })
        .collect()
}

/// Caps the per-host-user budgets of the sandbox's user namespace (real root: the one
/// libcontainer made for the init `pid`), from a short-lived child that joins it: a
/// process must be inside a user namespace to write its `/proc/sys/user` values. Call
/// with the init blocked before the script starts.
pub fn cap_user_namespace(pid: i32, user: &[(&str, String)]) -> Vec<String> {
    let ns = match fs::File::open(format!("/proc/{pid}/ns/user")) {
        Ok(f) => f,
        Err(e) => return vec![format!("the sandbox's user namespace: {e}")],
    };
    let (r, w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => return vec![format!("a pipe for the sysctl helper: {e}")],
    };
    // SAFETY: pysandbox is single-threaded here; the child only calls setns, open, write
    // and _exit (the formatting of failures happens in the parent).
    let child = unsafe { libc::fork() };
    if child < 0 {
        return vec![format!(
            "forking the sysctl helper: {}",
            io::Error::last_os_error()
        )];
    }
    if child == 0 {
        drop(r);
        // SAFETY: setns on a namespace descriptor; _exit ends the child.
        unsafe {
            let mut failed: u8 = 0;
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWUSER) != 0 {
                failed = u8::MAX;
            } else {
                for (i, (k, v)) in user.iter().enumerate() {
                    let p = Path::new("/proc/sys").join(k);
                    if sys::write_existing(&p, v.as_bytes()).is_err() {
                        failed |= 1 << i.min(7);
                    }
                }
            }
            libc::write(w.as_raw_fd(), (&failed as *const u8).cast(), 1);
            libc::_exit(0);
        }
    }
    drop(w);
    let mut b = [0u8; 1];
    let n = nix::unistd::read(r.as_raw_fd(), &mut b).unwrap_or(0);
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
    if n != 1 {
        return vec!["the sysctl helper died".into()];
    }
    user.iter()
        .enumerate()
        .filter(|(i, _)| b[0] & (1 << (*i).min(7)) != 0)
        .map(|(_, (k, v))| format!("{} could not be capped at {v}", k.replace('/', ".")))
        .collect()
}

/// libcgroups picks its v1 manager on a v1/hybrid host, which cannot work without root.
/// In our own mount namespace, show it the cgroup2 hierarchy instead: its v2 manager
/// tolerates a hierarchy it may not write to (limits then come from rlimits).
fn expose_cgroup2() -> Result<(), RuntimeError> {
    const CGROUP2_MAGIC: i64 = 0x6367_7270;
    let is_cg2 = |p: &str| {
        nix::sys::statfs::statfs(p)
            .map(|s| s.filesystem_type().0 == CGROUP2_MAGIC)
            .unwrap_or(false)
    };
    if is_cg2("/sys/fs/cgroup") {
        return Ok(());
    }
    if is_cg2("/sys/fs/cgroup/unified") {
        return mount(
            Some("/sys/fs/cgroup/unified"),
            "/sys/fs/cgroup",
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| host_err("binding cgroup2 for the sandbox", "")(e.into()));
    }
    Err(RuntimeError::Host {
        step: "finding a cgroup2 hierarchy",
        source: io::Error::from(io::ErrorKind::NotFound),
        hint: "this host mounts only cgroup v1; run pysandbox as root, or mount cgroup2 at /sys/fs/cgroup/unified",
    })
}

/// Mounts the run's private tmpfs at `at` (mode 0711: as root, the sandbox's ids must
/// traverse it to reach the staged mounts, and nothing else).
pub fn mount_private_tmpfs(at: &Path) -> Result<(), RuntimeError> {
    mount(
        Some("tmpfs"),
        at,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0711,size=16m"),
    )
    .map_err(|e| host_err("mounting the private state tmpfs", "")(e.into()))
}

pub fn mkdir(p: &Path, mode: u32) -> Result<(), RuntimeError> {
    fs::DirBuilder::new()
        .mode(mode)
        .create(p)
        .map_err(host_err("creating a staging directory", ""))
}

/// A user namespace whose root is `ids` on the host, as a descriptor for id-mapped mounts.
pub fn userns_fd(ids: HostIds) -> Result<OwnedFd, RuntimeError> {
    sys::mount::idmap_userns(ids.uid, ids.gid).map_err(host_err(
        "creating the id mapping for the sandbox's mounts",
        "run as root with CAP_SYS_ADMIN",
    ))
}

/// What to stage and how.
pub struct Staging<'a> {
    pub idmap: Option<&'a OwnedFd>,
    /// The private tmpfs every staged path lies in; overlays name their layers relative
    /// to it.
    pub base: &'a Path,
    /// In pysandbox's own user namespace (overlays then keep their markers in `user.`
    /// xattrs).
    pub rootless: bool,
}

impl Staging<'_> {
    /// Shows host directory `src` read-only at `target` through an overlay with no upper
    /// layer rather than a bind mount: what the script does to the files it sees there
    /// (flock, fcntl locks, leases, FIFOs, unix sockets, inotify) acts on the overlay's
    /// own inodes, never on the host's, so it cannot block or reach a host process; and
    /// the sandbox's mountinfo shows `overlay` and tmpfs-relative layer names, not the
    /// host path. If the host's file system cannot be an overlay layer, falls back to a
    /// read-only bind mount and says so.
    pub fn read_only_view(
        &self,
        src: &Path,
        target: &Path,
        idmapped: bool,
        mount_point: Option<&str>,
    ) -> Result<Option<String>, RuntimeError> {
        let name = target.file_name().unwrap_or_default().to_string_lossy();
        let lower = target.with_file_name(format!(".{name}.lower"));
        mkdir(&lower, 0o755)?;
        self.dir(src, &lower, false, idmapped)?;
        // Overlay needs two layers when there is no upper one. The second one holds the
        // folder another mount goes on (`output/` for --output elsewhere), so the host
        // folder never needs one made in it; otherwise it is empty.
        let second = match mount_point {
            Some(m) => {
                let extra = target.with_file_name(format!(".{name}.extra"));
                mkdir(&extra, 0o755)?;
                mkdir(&extra.join(m), 0o755)?;
                extra
            }
            None => {
                let empty = self.base.join(".empty");
                match fs::DirBuilder::new().mode(0o555).create(&empty) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(host_err("creating a staging directory", "")(e)),
                }
                empty
            }
        };
        match sys::mount::mount_overlay(self.base, &[&lower, &second], None, target, self.rootless)
        {
            Ok(()) => Ok(None),
            Err(e) => {
                if let Some(m) = mount_point
                    && !src.join(m).is_dir()
                {
                    return Err(RuntimeError::Stage {
                        path: src.join(m),
                        source: io::Error::other(format!(
                            "no folder to mount the output folder on, and none can be shown: {e}"
                        )),
                    });
                }
                self.dir(src, target, false, idmapped)?;
                Ok(Some(format!(
                    "{} is shared as a read-only bind mount, not an overlay ({e}): the script can take locks on its files that host processes see",
                    src.display()
                )))
            }
        }
    }

    /// Mounts host directory `src` at `target` (an empty dir in the private tmpfs).
    /// The last component of `src` must not be a symlink.
    pub fn dir(
        &self,
        src: &Path,
        target: &Path,
        writable: bool,
        idmapped: bool,
    ) -> Result<(), RuntimeError> {
        let fd = sys::open_dir_nofollow(src).map_err(|e| RuntimeError::Stage {
            path: src.to_owned(),
            source: e,
        })?;
        self.attach(&fd, src, target, writable, idmapped)
    }

    /// Mounts the regular host file `src` at the existing file `target`.
    pub fn file(&self, src: &Path, target: &Path) -> Result<(), RuntimeError> {
        let f = fs::File::open(src).map_err(|e| RuntimeError::Stage {
            path: src.to_owned(),
            source: e,
        })?;
        self.attach(&OwnedFd::from(f), src, target, false, false)
    }

    fn attach(
        &self,
        fd: &OwnedFd,
        src: &Path,
        target: &Path,
        writable: bool,
        idmapped: bool,
    ) -> Result<(), RuntimeError> {
        let stage = |source| RuntimeError::Stage {
            path: src.to_owned(),
            source,
        };
        // Non-recursive: submounts under a data folder stay out. A user namespace may not
        // hide mounts it inherited locked, though; then take them along (read-only too).
        let (mnt, recursive) = match sys::clone_mount(fd, false) {
            Ok(m) => (m, false),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                (sys::clone_mount(fd, true).map_err(stage)?, true)
            }
            Err(e) => return Err(stage(e)),
        };
        let mut attr = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
        if !writable {
            attr |= sys::MOUNT_ATTR_RDONLY;
        }
        let idmap = if idmapped { self.idmap } else { None };
        sys::set_mount_attr(&mnt, attr, recursive, idmap).map_err(|e| {
            if idmap.is_some() && e.raw_os_error() == Some(libc::EINVAL) {
                RuntimeError::NoIdmap {
                    path: src.to_owned(),
                }
            } else {
                stage(e)
            }
        })?;
        sys::attach_mount(&mnt, target).map_err(stage)
    }
}
