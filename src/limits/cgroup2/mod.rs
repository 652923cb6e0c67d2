//! cgroup v2 for real root and for ordinary users: where a run's cgroup may go, preparing
//! that place, and the run's own cgroup (limits, OOM count, removal).
//!
//! The place (the *parent*) is, in order:
//! 1. the cgroup pysandbox runs in, when it is delegated to the caller: an ordinary user
//!    owns it and may write its `cgroup.procs` and `cgroup.subtree_control`; real root
//!    needs it marked delegated by systemd (`trusted.delegate`, a unit with
//!    `Delegate=yes`), since root may write anywhere. Under a running systemd an
//!    ordinary user's cgroup must be marked too (`user.delegate` or `trusted.delegate`):
//!    the user manager owns every cgroup of its tree, delegated or not.
//! 2. on a systemd host, a transient scope with `Delegate=yes` that pysandbox asks the
//!    caller's systemd (the user manager for an ordinary user, the system manager, in
//!    `pysandbox.slice`, for root) to move it into, as podman and crun's systemd driver
//!    do; systemd removes the scope, and everything pysandbox made in it, once empty.
//! 3. real root without systemd: `/pysandbox` at the top of the hierarchy, removed again
//!    by the last run that leaves it empty.
//!
//! cgroup v2 allows controllers to be handed to children only by a cgroup that has no
//! processes of its own (the no-internal-process rule). When the parent still has
//! processes (pysandbox itself, the shell that started it), they are moved into a leaf
//! child, [`LEAF`], first; podman's `--cgroups=split` does the same.
//!
//! Owns no process; touches only cgroupfs and asks systemd through `busctl`.
//!
//! This file finds and prepares the parent; `systemd` asks systemd (delegation, transient
//! scopes); `run` is the run's own cgroup.

mod run;
mod systemd;

pub use run::{RunCgroup, counter, cpu_max, oom_kills_in};
pub use systemd::transient_scope;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::sys;
use systemd::unit_delegates;

/// Where cgroup2 is mounted on every host pysandbox uses it on.
pub const ROOT: &str = "/sys/fs/cgroup";
/// The leaf child that takes the processes of a parent whose controllers pysandbox
/// enables (not a systemd unit name, so systemd never mistakes it for one).
pub const LEAF: &str = "pysandbox-leaf";
/// Root's shared parent on a host without systemd.
pub const SHARED_PARENT: &str = "pysandbox";
/// The slice of root's transient scopes on a systemd host.
pub const SLICE: &str = "pysandbox.slice";

const CGROUP2_MAGIC: i64 = 0x6367_7270;

/// Whether `/sys/fs/cgroup` is a cgroup2 mount (a pure cgroup v2 host).
pub fn is_unified() -> bool {
    nix::sys::statfs::statfs(ROOT)
        .map(|s| s.filesystem_type().0 == CGROUP2_MAGIC)
        .unwrap_or(false)
}

/// Whether systemd runs this host (sd_booted(3)'s test).
pub fn systemd_booted() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// The cgroup v2 path of this process (`0::/...` in `/proc/self/cgroup`).
pub fn own_path() -> Option<String> {
    parse_proc_cgroup(&fs::read_to_string("/proc/self/cgroup").ok()?)
}

/// The unified hierarchy's line of a `/proc/<pid>/cgroup` file.
pub fn parse_proc_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end().to_string())
        .filter(|p| p.starts_with('/'))
}

/// The controllers a cgroup directory offers its children (`cgroup.controllers`).
pub fn controllers(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join("cgroup.controllers"))
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// A parent cgroup the runs of this process may be created in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    /// The directory in cgroupfs.
    pub dir: PathBuf,
    /// Whether the CPU controller is available (`--cpus` can be enforced).
    pub cpu: bool,
    pub origin: Origin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The cgroup pysandbox was started in, delegated to the caller.
    Own,
    /// A transient scope systemd made for this run (its unit name).
    Scope(String),
    /// Root's `/pysandbox` on a host without systemd.
    Shared,
}

/// What the host's cgroup tree looks like to a process (inputs of [`find_delegated`]).
pub struct View<'a> {
    /// Where cgroup2 is mounted (a temporary tree in unit tests).
    pub root: &'a Path,
    /// This process's cgroup path (`/user.slice/...`).
    pub own: &'a str,
    /// The effective uid, as this process's user namespace shows it.
    pub euid: u32,
    /// Real root (in the initial user namespace), who may write any cgroup.
    pub real_root: bool,
    pub systemd: bool,
    /// Whether to ask systemd (busctl) about a unit it did not mark: the user manager of
    /// systemd 252 (Debian 12) sets no `user.delegate`.
    pub ask_systemd: bool,
}

impl View<'_> {
    /// The directory of cgroup path `p`.
    pub fn dir(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }
}

/// The delegated cgroup this process runs in, or why there is none (one line).
///
/// A process inside [`LEAF`] belongs to the parent of that leaf: an earlier run made the
/// leaf and moved it there.
pub fn find_delegated(v: &View) -> Result<Parent, String> {
    let own = v.own.trim_end_matches('/');
    let own = match own.rsplit_once('/') {
        Some((up, LEAF)) => up,
        _ => own,
    };
    let display = if own.is_empty() { "/" } else { own };
    let dir = v.dir(own);
    if own.is_empty() {
        return Err("it is the root of the cgroup hierarchy".into());
    }
    let ctl = controllers(&dir);
    let missing: Vec<&str> = ["memory", "pids"]
        .into_iter()
        .filter(|c| !ctl.iter().any(|x| x == c))
        .collect();
    let meta = fs::metadata(&dir).map_err(|e| format!("{display}: {e}"))?;
    use std::os::unix::fs::MetadataExt;
    // Asked only once the cheaper checks passed (the D-Bus question costs a process).
    let marked = || {
        ["trusted.delegate", "user.delegate"]
            .iter()
            .any(|x| sys::getxattr(&dir, x).as_deref() == Some(b"1"))
            || (v.systemd
                && v.ask_systemd
                && own
                    .rsplit('/')
                    .next()
                    .is_some_and(|unit| unit_delegates(unit, v.real_root)))
    };
    if v.real_root {
        if !marked() {
            return Err(format!(
                "{display} is not delegated (systemd marks a unit with Delegate=yes)"
            ));
        }
    } else {
        if meta.uid() != v.euid {
            return Err(format!(
                "{display} belongs to uid {}, not to you (uid {})",
                meta.uid(),
                v.euid
            ));
        }
        if v.systemd && !marked() {
            return Err(format!(
                "{display} is yours but systemd did not delegate it (no Delegate=yes)"
            ));
        }
        for f in ["cgroup.procs", "cgroup.subtree_control"] {
            if !sys::may_write(&dir.join(f)) {
                return Err(format!("you may not write {display}/{f}"));
            }
        }
    }
    if !missing.is_empty() {
        return Err(format!(
            "{display} is delegated without the {} controller{}",
            missing.join(" and "),
            if missing.len() > 1 { "s" } else { "" }
        ));
    }
    Ok(Parent {
        cpu: ctl.iter().any(|c| c == "cpu"),
        dir,
        origin: Origin::Own,
    })
}

/// The controllers pysandbox enables for its runs' cgroups.
fn wanted(cpu: bool) -> &'static [&'static str] {
    if cpu {
        &["memory", "pids", "cpu"]
    } else {
        &["memory", "pids"]
    }
}

/// Makes `parent` able to hold run cgroups: its processes (if any) go into [`LEAF`], then
/// the memory, pids (and cpu) controllers are enabled for its children.
pub fn prepare(parent: &Parent) -> io::Result<()> {
    let dir = &parent.dir;
    let want = wanted(parent.cpu);
    let enabled = fs::read_to_string(dir.join("cgroup.subtree_control"))?;
    if want
        .iter()
        .all(|c| enabled.split_whitespace().any(|x| x == *c))
    {
        return Ok(());
    }
    move_into_leaf(dir)?;
    let line: Vec<String> = want.iter().map(|c| format!("+{c}")).collect();
    sys::write_existing(
        &dir.join("cgroup.subtree_control"),
        line.join(" ").as_bytes(),
    )
}

/// Moves every process of `dir` into `dir/LEAF` (new ones may be forked while we move:
/// repeat until none is left).
fn move_into_leaf(dir: &Path) -> io::Result<()> {
    let leaf = dir.join(LEAF);
    for _ in 0..100 {
        let procs = fs::read_to_string(dir.join("cgroup.procs"))?;
        if procs.trim().is_empty() {
            return Ok(());
        }
        // Only when there is something to move: an empty parent stays removable.
        match fs::create_dir(&leaf) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        for pid in procs.lines().map(str::trim).filter(|p| !p.is_empty()) {
            match sys::write_existing(&leaf.join("cgroup.procs"), pid.as_bytes()) {
                Ok(()) => {}
                // Exited meanwhile.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Err(io::Error::other(format!(
        "{} keeps gaining processes",
        dir.display()
    )))
}

/// Root's shared parent on a host without systemd: `/pysandbox`, with the controllers
/// enabled on the way down. Another run that finds it empty may remove it meanwhile:
/// then it is made again.
pub fn shared_parent() -> io::Result<Parent> {
    let mut last = io::Error::from(io::ErrorKind::NotFound);
    for _ in 0..10 {
        match shared_parent_once() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => last = e,
            r => return r,
        }
    }
    Err(last)
}

fn shared_parent_once() -> io::Result<Parent> {
    let root = Path::new(ROOT);
    let ctl = controllers(root);
    let cpu = ctl.iter().any(|c| c == "cpu");
    let want: Vec<String> = wanted(cpu).iter().map(|c| format!("+{c}")).collect();
    // The root cgroup may hold processes and still enable controllers.
    sys::write_existing(
        &root.join("cgroup.subtree_control"),
        want.join(" ").as_bytes(),
    )?;
    let dir = root.join(SHARED_PARENT);
    match fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let parent = Parent {
        dir,
        cpu,
        origin: Origin::Shared,
    };
    prepare(&parent)?;
    Ok(parent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn parses_the_unified_line() {
        let hybrid =
            "12:pids:/x\n1:name=systemd:/\n0::/user.slice/user-1000.slice/session-2.scope\n";
        assert_eq!(
            parse_proc_cgroup(hybrid).as_deref(),
            Some("/user.slice/user-1000.slice/session-2.scope")
        );
        assert_eq!(parse_proc_cgroup("0::/\n").as_deref(), Some("/"));
        assert_eq!(parse_proc_cgroup("5:memory:/a\n"), None);
        assert_eq!(parse_proc_cgroup("0::garbage\n"), None);
    }

    /// A fake cgroupfs: directories with `cgroup.controllers` and friends.
    fn fake(root: &Path, path: &str, controllers: &str) -> PathBuf {
        let d = root.join(path.trim_start_matches('/'));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("cgroup.controllers"), controllers).unwrap();
        fs::write(d.join("cgroup.procs"), "").unwrap();
        fs::write(d.join("cgroup.subtree_control"), "").unwrap();
        d
    }

    fn view<'a>(root: &'a Path, own: &'a str, euid: u32, systemd: bool) -> View<'a> {
        View {
            root,
            own,
            euid,
            real_root: false,
            systemd,
            ask_systemd: false,
        }
    }

    #[test]
    fn delegation_needs_ownership_and_controllers() {
        let t = tempfile::tempdir().unwrap();
        let me = sys::euid();
        let app = "/u.slice/user@1.service/app";
        let d = fake(t.path(), app, "cpu memory pids");
        fake(t.path(), &format!("{app}/pysandbox-leaf"), "");
        let p = find_delegated(&view(t.path(), app, me, false)).unwrap();
        assert_eq!(p.dir, d);
        assert!(p.cpu);
        assert_eq!(p.origin, Origin::Own);
        // A process in the leaf uses the leaf's parent.
        let in_leaf = format!("{app}/pysandbox-leaf");
        assert_eq!(
            find_delegated(&view(t.path(), &in_leaf, me, false))
                .unwrap()
                .dir,
            d
        );
        // Real root needs systemd's mark, which a temporary tree does not have.
        let mut as_root = view(t.path(), app, 0, false);
        as_root.real_root = true;
        assert!(
            find_delegated(&as_root)
                .unwrap_err()
                .contains("not delegated")
        );
        // Under systemd an unmarked cgroup of one's own is not a delegation.
        let e = find_delegated(&view(t.path(), app, me, true)).unwrap_err();
        assert!(e.contains("did not delegate"), "{e}");
        // Someone else's cgroup.
        let e = find_delegated(&view(t.path(), app, me + 1, false)).unwrap_err();
        assert!(e.contains("not to you"), "{e}");
        // No memory controller: say which one is missing.
        fake(t.path(), "/nomem", "cpu pids");
        let e = find_delegated(&view(t.path(), "/nomem", me, false)).unwrap_err();
        assert!(e.contains("memory controller"), "{e}");
        // No cpu controller: usable, without --cpus.
        fake(t.path(), "/nocpu", "memory pids");
        assert!(
            !find_delegated(&view(t.path(), "/nocpu", me, false))
                .unwrap()
                .cpu
        );
        // A read-only cgroup.procs (root may write it anyway).
        if me != 0 {
            let ro = fake(t.path(), "/ro", "memory pids");
            fs::set_permissions(ro.join("cgroup.procs"), fs::Permissions::from_mode(0o444))
                .unwrap();
            let e = find_delegated(&view(t.path(), "/ro", me, false)).unwrap_err();
            assert!(e.contains("cgroup.procs"), "{e}");
        }
        // The root of the hierarchy is never a delegation.
        assert!(find_delegated(&view(t.path(), "/", me, false)).is_err());
    }
}
