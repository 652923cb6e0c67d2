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

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::policy::Limits;
use crate::sys;

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

/// Whether systemd unit `unit` (a service or scope) has `Delegate=yes`, asked over
/// D-Bus: the system manager for root, the caller's user manager otherwise.
fn unit_delegates(unit: &str, root: bool) -> bool {
    let iface = match unit.rsplit_once('.') {
        Some((_, "service")) => "org.freedesktop.systemd1.Service",
        Some((_, "scope")) => "org.freedesktop.systemd1.Scope",
        _ => return false,
    };
    let out = busctl(root)
        .args(["get-property", "org.freedesktop.systemd1"])
        .arg(format!(
            "/org/freedesktop/systemd1/unit/{}",
            bus_escape(unit)
        ))
        .args([iface, "Delegate"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    matches!(out, Ok(o) if o.status.success() && o.stdout.trim_ascii() == b"b true")
}

/// A unit name as a D-Bus object path element (systemd's escaping: every byte that is
/// not an ASCII letter or digit, and a leading digit, as `_xx`).
fn bus_escape(name: &str) -> String {
    let mut out = String::new();
    for (i, b) in name.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (b.is_ascii_digit() && i > 0) {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

/// `busctl` on the system bus (root) or the caller's user bus, with a timeout.
fn busctl(root: bool) -> Command {
    let mut cmd = Command::new("busctl");
    if !root {
        cmd.arg("--user");
        // busctl finds the user bus through XDG_RUNTIME_DIR, which `su`, `sudo -u` or
        // setpriv may not have set.
        if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none()
            && std::env::var_os("XDG_RUNTIME_DIR").is_none()
        {
            cmd.env("XDG_RUNTIME_DIR", format!("/run/user/{}", sys::euid()));
        }
    }
    // A bus that does not answer must not hang the run.
    cmd.arg("--timeout=10");
    cmd
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

/// Asks systemd (the caller's user manager, or the system manager for root) for a
/// transient scope with `Delegate=yes` and moves this process into it. Returns the
/// scope as a parent, or why not (one line).
pub fn transient_scope(id: &str, root: bool) -> Result<Parent, String> {
    let unit = format!("pysandbox-{id}.scope");
    let pid = std::process::id().to_string();
    let mut cmd = busctl(root);
    cmd.args([
        "call",
        "--quiet",
        "org.freedesktop.systemd1",
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
        "StartTransientUnit",
        "ssa(sv)a(sa(sv))",
        &unit,
        "fail",
    ]);
    let mut props: Vec<&str> = vec![
        "PIDs",
        "au",
        "1",
        &pid,
        "Delegate",
        "b",
        "true",
        "CollectMode",
        "s",
        "inactive-or-failed",
    ];
    if root {
        props.extend(["Slice", "s", SLICE]);
    }
    // Every property is name, signature, value; PIDs' array value is a count and a pid.
    let count = ((props.len() - 1) / 3).to_string();
    cmd.arg(&count).args(&props).arg("0");
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("busctl: {e}"))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "systemd refused a delegated scope: {}",
            msg.lines().next().unwrap_or("").trim()
        ));
    }
    // The scope's start job moves us; wait for it.
    let t0 = Instant::now();
    let path = loop {
        match own_path() {
            Some(p) if p.ends_with(&format!("/{unit}")) => break p,
            _ if t0.elapsed() > Duration::from_secs(3) => {
                return Err(format!("systemd did not move pysandbox into {unit}"));
            }
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    };
    let dir = Path::new(ROOT).join(path.trim_start_matches('/'));
    let ctl = controllers(&dir);
    if !["memory", "pids"]
        .iter()
        .all(|c| ctl.iter().any(|x| x == c))
    {
        return Err(format!(
            "systemd's scope {unit} has no memory and pids controllers (it offers: {})",
            ctl.join(" ")
        ));
    }
    let parent = Parent {
        cpu: ctl.iter().any(|c| c == "cpu"),
        dir,
        origin: Origin::Scope(unit),
    };
    prepare(&parent).map_err(|e| format!("preparing {}: {e}", parent.dir.display()))?;
    Ok(parent)
}

/// A run's own cgroup. Reached through a descriptor of its parent: pysandbox later
/// bind-mounts that parent over `/sys/fs/cgroup` in its private mount namespace, where
/// the path no longer leads there.
#[derive(Debug)]
pub struct RunCgroup {
    /// Its path on the host (for the lock file and messages).
    pub path: PathBuf,
    parent: OwnedFd,
    name: String,
    /// The top of the hierarchy, when the parent is root's shared `/pysandbox` (removed
    /// once empty).
    shared_root: Option<OwnedFd>,
}

fn open_dir(p: &Path) -> io::Result<OwnedFd> {
    Ok(OwnedFd::from(fs::File::open(p)?))
}

fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

impl RunCgroup {
    fn at(path: &Path, shared: bool) -> io::Result<RunCgroup> {
        let parent = path.parent().ok_or(io::ErrorKind::InvalidInput)?;
        let name = path
            .file_name()
            .ok_or(io::ErrorKind::InvalidInput)?
            .to_string_lossy()
            .into_owned();
        Ok(RunCgroup {
            path: path.to_path_buf(),
            parent: open_dir(parent)?,
            name,
            shared_root: if shared {
                Some(open_dir(Path::new(ROOT))?)
            } else {
                None
            },
        })
    }

    /// The run's cgroup directory, through the parent's descriptor.
    fn dir(&self) -> PathBuf {
        fd_path(&self.parent).join(&self.name)
    }

    /// Creates `<parent>/<id>` with the run's limits: memory (and no swap), pids, the
    /// CPU quota, and the OOM killer taking the whole run at once.
    pub fn create(parent: &Parent, id: &str, l: &Limits) -> io::Result<RunCgroup> {
        let path = parent.dir.join(id);
        fs::create_dir(&path)?;
        let cg = RunCgroup::at(&path, parent.origin == Origin::Shared)?;
        let set = |f: &str, v: String| {
            sys::write_existing(&cg.dir().join(f), v.as_bytes())
                .map_err(|e| io::Error::new(e.kind(), format!("{f}: {e}")))
        };
        let r = (|| {
            set("memory.max", l.memory.to_string())?;
            // Absent without swap accounting (no swap configured): nothing to cap then.
            if cg.dir().join("memory.swap.max").exists() {
                set("memory.swap.max", "0".into())?;
            }
            set("memory.oom.group", "1".into())?;
            set("pids.max", l.pids.to_string())?;
            if let Some(c) = l.cpus {
                set("cpu.max", cpu_max(c))?;
            }
            Ok(())
        })();
        match r {
            Ok(()) => Ok(cg),
            Err(e) => {
                cg.remove();
                Err(e)
            }
        }
    }

    /// How many times the kernel's OOM killer killed in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        oom_kills_in(&self.dir())
    }

    /// Kills what is left inside and removes the cgroup (and root's shared parent when
    /// it is left empty). Returns whether the run's cgroup is gone.
    pub fn remove(&self) -> bool {
        let gone = remove_dir(&self.dir());
        if let Some(root) = &self.shared_root {
            let _ = fs::remove_dir(fd_path(root).join(SHARED_PARENT)); // busy while in use
        }
        gone
    }

    /// The cgroup of a dead run, from the path its lock file recorded (only a directory
    /// named after the run under a cgroup2 mount is accepted; `None` when it is gone).
    pub fn recorded(id: &str, path: &Path) -> Option<RunCgroup> {
        if !valid_record(id, path) {
            return None;
        }
        let shared = path.parent() == Some(&Path::new(ROOT).join(SHARED_PARENT));
        RunCgroup::at(path, shared).ok()
    }
}

/// Whether a lock file's record names run `id`'s cgroup.
fn valid_record(id: &str, path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == id)
        && path.starts_with(ROOT)
        && !path
            .components()
            .any(|c| c == std::path::Component::ParentDir)
}

/// `cpu.max` for a share of CPUs over a 100 ms period.
pub fn cpu_max(cpus: f64) -> String {
    const PERIOD: u64 = 100_000;
    let quota = ((cpus * PERIOD as f64).round() as u64).max(1000);
    format!("{quota} {PERIOD}")
}

/// `oom_kill` of `dir/memory.events`.
pub fn oom_kills_in(dir: &Path) -> u64 {
    counter(&dir.join("memory.events"), "oom_kill")
}

/// The value of `key` in a cgroup file of `key value` lines (`memory.events`, v1's
/// `memory.oom_control`); 0 when absent.
pub fn counter(file: &Path, key: &str) -> u64 {
    fs::read_to_string(file)
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let mut it = l.split_whitespace();
                (it.next() == Some(key)).then(|| it.next()?.parse().ok())?
            })
        })
        .unwrap_or(0)
}

/// Kills every process in cgroup `dir` (and below) and removes it. Best effort.
fn remove_dir(dir: &Path) -> bool {
    if !dir.exists() {
        return true;
    }
    // cgroup.kill (5.14+) takes the whole subtree at once, forks included.
    if sys::write_existing(&dir.join("cgroup.kill"), b"1").is_err()
        && let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs"))
    {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: plain kill(2) on a pid read from this run's own cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    for _ in 0..100 {
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
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

    #[test]
    fn unit_names_are_escaped_as_systemd_does() {
        assert_eq!(bus_escape("run-u12.service"), "run_2du12_2eservice");
        assert_eq!(bus_escape("user@1000.service"), "user_401000_2eservice");
        assert_eq!(bus_escape("0x.scope"), "_30x_2escope");
    }

    #[test]
    fn cpu_max_is_quota_over_period() {
        assert_eq!(cpu_max(0.5), "50000 100000");
        assert_eq!(cpu_max(2.0), "200000 100000");
        assert_eq!(cpu_max(0.0001), "1000 100000");
    }

    #[test]
    fn oom_kill_is_read_from_memory_events() {
        let t = tempfile::tempdir().unwrap();
        fs::write(
            t.path().join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\noom_group_kill 1\n",
        )
        .unwrap();
        assert_eq!(oom_kills_in(t.path()), 2);
        assert_eq!(oom_kills_in(&t.path().join("missing")), 0);
    }

    #[test]
    fn only_a_run_named_cgroup_is_taken_from_a_lock_file() {
        let id = "ps-0123456789abcdef";
        assert!(valid_record(
            id,
            &Path::new(ROOT).join("user.slice/x.scope").join(id)
        ));
        assert!(valid_record(
            id,
            &Path::new(ROOT).join(SHARED_PARENT).join(id)
        ));
        assert!(!valid_record(id, Path::new("/etc")));
        assert!(!valid_record(id, &Path::new(ROOT).join("a/../..").join(id)));
        assert!(!valid_record(id, &Path::new("/tmp").join(id)));
        assert!(!valid_record(id, Path::new("")));
    }
}
