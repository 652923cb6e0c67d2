//! On cgroup v2 the sandbox is born in its run's cgroup: no process is moved into it.
//!
//! A move (a write to `cgroup.procs`) takes the kernel's threadgroup lock for writing,
//! which waits for an RCU grace period, milliseconds on every run. libcontainer moves the
//! process it clones (the intermediate, which clones the init) into the cgroup; instead:
//! - a short-lived *driver*, made with `clone3(CLONE_INTO_CGROUP)` directly in the run's
//!   cgroup, calls libcontainer's `build()`, so the intermediate and the init it clones
//!   are born there;
//! - libcontainer's write to `cgroup.procs` lands on `/dev/null` (see
//!   `host::enter_namespaces`);
//! - the driver first makes the pid namespace that every later process of the run lives
//!   in (`sys::PidNamespace`, which dies with pysandbox): its `unshare(CLONE_NEWPID)`, and
//!   the namespace's init as pysandbox's child (`CLONE_PARENT`), born in pysandbox's own
//!   cgroup (it shares pysandbox's memory: in the run's, the OOM killer, which kills every
//!   process sharing its victim's memory, would reach pysandbox). The driver's own pid
//!   stays in pysandbox's namespace, where libcontainer's main side names its
//!   intermediate in `/proc` (pysandbox enters the new namespace for its later children
//!   once the driver is gone, `PidNamespaceSeed::adopt`);
//! - `as_sibling`: the intermediate and the init are pysandbox's children, not the
//!   driver's, so the init's parent-death signal (set before `build()` returns) is tied
//!   to pysandbox, and pysandbox reaps both;
//! - the driver reports the namespace's init and the outcome on a pipe and exits: a dead
//!   process needs no migration, and is not charged to the sandbox afterwards.
//!
//! The driver shares pysandbox's memory, on a stack of its own, and pysandbox is
//! suspended until it has exited, as after `vfork` (`sys::process::run_child`): making it
//! copies nothing (a fork of pysandbox copies its page tables: about 1 ms natively, 12-22
//! ms under qemu's TCG, more than the move it replaces there). So it is done on x86_64 and
//! aarch64, where pysandbox has the instructions that start such a child, and where
//! `clone3` is not filtered (some container runtimes' seccomp profiles answer `ENOSYS`):
//! elsewhere libcontainer moves the sandbox in, as on cgroup v1. What sharing asks:
//! - pysandbox is single-threaded (the runtime's rule; checked before the driver is
//!   made): no other thread can hold an allocator lock the driver needs;
//! - `build` owns no descriptor (the builder gets copies of pysandbox's pipe ends): the
//!   driver's drops close only its own copies, and pysandbox never drops `build`;
//! - no handler of pysandbox's runs in the driver (its caught signals are reset by the
//!   kernel; pysandbox's mask, with the relayed signals blocked, is restored for it);
//! - while the driver lives, the run's cgroup has no memory limit: the OOM killer kills
//!   every process that shares its victim's memory, pysandbox included (`RunCgroup::limit`
//!   sets it once the driver is gone, before the script starts);
//! - a driver killed by a signal may have left pysandbox's heap mid-update: pysandbox
//!   then ends at once, allocating nothing (status 125, no report; the next run removes
//!   the cgroup). A panic in the driver is such a death in release builds, which abort
//!   on panic (`SIGABRT` also comes from the allocator's own checks, its lock held).
//!
//! While the driver lives, it counts in `pids.max` (one above the run's limit during
//! the build, the limit again before the script starts).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use crate::limits::Placement;
use crate::limits::cgroup2::RunCgroup;
use crate::policy::Limits;
use crate::sys::{self, PidNamespace, PidNamespaceSeed, process};

/// Longest report of the driver (one pipe write, so it is whole once the driver is gone).
const MAX_REPORT: usize = 4000;

fn at(what: &'static str) -> impl Fn(io::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// The run's cgroup, if the sandbox is born in it: on cgroup v2, where a driver can be
/// made as pysandbox makes it (see `sys::process::available`) and pysandbox's own cgroup
/// is open for the pid namespace's init. Otherwise libcontainer moves the sandbox in.
pub fn target(placement: &Placement) -> Option<&RunCgroup> {
    placement
        .run
        .as_ref()
        .filter(|cg| cg.home().is_some() && process::available())
}

/// Runs `build` (libcontainer's `build()`, returning the error's cause chain if it fails)
/// in a driver born in `cg`, whose limits are `limits`, which first makes the pid
/// namespace of `seed` (see `sys::PidNamespace`) for the processes `build` makes.
/// Returns that namespace, held here, a pidfd of the init (which the init sends on
/// `status`, the status socket's two ends: pysandbox's copy of the write end is closed
/// once the driver is gone, so that an init that died says so by an end of file) and
/// what `build` returned (made on pysandbox's heap,
/// which the driver shares); the init is then pysandbox's child, waiting in the run's
/// cgroup for the start signal, and nothing else of the build is left (driver and
/// intermediate reaped). Neither `build` nor what it returns may own a descriptor (see
/// `sys::process::run_child`): the driver's are its own.
pub fn create<T>(
    cg: &RunCgroup,
    limits: &Limits,
    (status_sock, status_w): (&OwnedFd, OwnedFd),
    mut seed: PidNamespaceSeed,
    build: impl FnOnce() -> Result<T, String>,
) -> Result<(PidNamespace, OwnedFd, T), String> {
    let home = cg.home().ok_or("pysandbox's own cgroup is not open")?;
    let dir = cg.open().map_err(at("opening the run's cgroup"))?;
    // Non-blocking: the driver's one write fits, and the read must not wait for an end
    // of file (the write end lives on in the init until it execs).
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
        .map_err(|e| at("creating a pipe")(e.into()))?;
    let me = seed.parent().as_raw_fd();
    // libcontainer's procfs library keeps one descriptor of a private procfs for the
    // process, made by its first user; made in the driver, it would be the driver's
    // alone, and pysandbox's copy of that number another file (the library then makes
    // and unmounts a procfs at every use). Made here first, it is both's.
    // (A cached one is made only with the privilege to mount a procfs; otherwise each
    // use makes its own anyway.)
    let _ = pathrs::procfs::ProcfsHandle::new();
    // Written by the driver, on the memory it shares with pysandbox.
    let mut built: Option<T> = None;
    let driver = || drive(me, w.as_fd(), home, &mut seed, &mut built, build);
    // SAFETY: pysandbox is single-threaded (see the module docs of runtime); the driver
    // borrows every descriptor it uses.
    let driver = match unsafe { process::run_child(Some(dir.as_fd()), driver) } {
        Ok(pid) => pid,
        Err((e, _)) => return Err(at("starting the sandbox's driver")(e)),
    };
    super::mark("driver released");
    drop(status_w);
    drop(w);
    drop(dir);
    let status = process::wait_exit(driver).map_err(at("waiting for the sandbox's driver"))?;
    if libc::WIFSIGNALED(status) {
        // It may have left pysandbox's heap mid-update: nothing more may be allocated.
        process::abandon(
            "pysandbox: error: the sandbox's driver, which shares pysandbox's memory, was killed by a signal; pysandbox ends at once (the next run removes what is left)\n",
            125,
        );
    }
    super::mark("driver reaped");
    let report = read_report(&r).unwrap_or_default();
    let report = String::from_utf8_lossy(&report);
    let (holder, outcome) = report.split_once(' ').unwrap_or(("0", ""));
    let holder: libc::pid_t = holder.parse().unwrap_or(0);
    // Held from here (whatever the outcome), so that an error kills what the build left.
    let pid_ns = match holder {
        0 => None,
        pid => Some(
            seed.adopt(pid)
                .map_err(at("entering the sandbox's pid namespace"))?,
        ),
    };
    super::mark("pid namespace joined");
    let (pid_ns, built) = match (outcome, pid_ns, built) {
        ("ok", Some(pid_ns), Some(built)) => (pid_ns, built),
        _ => {
            return Err(match outcome.strip_prefix("err ") {
                Some(msg) => without_cleanup(msg).to_string(),
                None => format!("the sandbox's driver died (wait status {status:#x})"),
            });
        }
    };
    // libcontainer names the init by its pid in the pid namespace of its intermediate;
    // the init sent a pidfd of itself.
    let pidfd = super::attach::receive_fd(status_sock, super::executor::INIT_TAG)
        .map_err(|e| e.to_string())?;
    let init = sys::pidfd_pid(&pidfd).map_err(at("naming the sandbox's init"))?;
    // libcontainer's intermediate, a sibling of the init in its pid namespace: gone by
    // now or about to be.
    match process::reap_one_below(&[init, holder]) {
        Ok(Some(_)) => {}
        Ok(None) => return Err("the sandbox's init died while it was created".into()),
        Err(e) => return Err(at("reaping libcontainer's intermediate process")(e)),
    }
    super::mark("intermediate reaped");
    // (pysandbox is non-dumpable, as the caller of build() is: libcontainer set it in
    // the driver, on the memory both share, whose flag it is.)
    cg.limit(limits).map_err(at("setting the run's limits"))?;
    if !cg.holds(init) {
        return Err(format!(
            "the sandbox's init is not in its cgroup {}",
            cg.path.display()
        ));
    }
    Ok((pid_ns, pidfd, built))
}

/// A failed create's error without libcontainer's failed cleanup: it cannot remove the
/// run's cgroup, which holds the driver (pysandbox removes it once the driver is gone).
fn without_cleanup(msg: &str) -> &str {
    msg.split_once(". error during cleanup: ")
        .map_or(msg, |(e, _)| e)
}

/// The driver: dies with pysandbox, makes the pid namespace, builds, reports (`<pid of
/// the namespace's init, or 0> ok` or `... err <why>`); returns its exit status.
fn drive<T>(
    parent: RawFd,
    w: BorrowedFd<'_>,
    home: BorrowedFd<'_>,
    seed: &mut PidNamespaceSeed,
    built: &mut Option<T>,
    build: impl FnOnce() -> Result<T, String>,
) -> i32 {
    // Logged from the driver: pysandbox itself waits until the driver has exited.
    super::mark("driver forked");
    // SAFETY: plain prctl; the check catches a parent that died before.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    if sys::exited(parent) {
        return 1;
    }
    // SAFETY: this is a run_child child of the seed's owner, which waits; once.
    let made = unsafe { seed.make_in_child(home) };
    let mut msg = match made {
        Err(e) => format!("0 err creating a pid namespace for the sandbox's processes: {e}"),
        Ok(holder) => {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(build))
                .unwrap_or_else(|_| Err("libcontainer panicked".into()))
            {
                Ok(value) => {
                    *built = Some(value);
                    format!("{holder} ok")
                }
                Err(e) => format!("{holder} err {e}"),
            }
        }
    }
    .into_bytes();
    super::mark("driver done");
    if msg.len() > MAX_REPORT {
        msg.truncate(MAX_REPORT);
    }
    let _ = nix::unistd::write(w, &msg);
    0
}

/// What the (dead) driver wrote.
fn read_report(r: &OwnedFd) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; MAX_REPORT + 1];
    match nix::unistd::read(r.as_raw_fd(), &mut buf) {
        Ok(n) if n > 0 => {
            buf.truncate(n);
            Some(buf)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_expected_cleanup_failure_is_not_reported() {
        let e =
            "failed to create container: failed to fork. error during cleanup: could not delete";
        assert_eq!(
            super::without_cleanup(e),
            "failed to create container: failed to fork"
        );
        assert_eq!(super::without_cleanup("plain"), "plain");
    }
}
