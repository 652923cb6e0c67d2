//! A run's own cgroup: created with the run's limit files (memory, no swap, pids, CPU
//! quota, the OOM killer taking the whole run), its OOM count, and its removal (kill what
//! is left, remove the directory, and root's shared parent once empty).

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Origin, Parent, ROOT, SHARED_PARENT};
use crate::policy::Limits;
use crate::sys;

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
    /// The cgroup pysandbox was in when it made this one (see [`RunCgroup::home`]).
    home: Option<OwnedFd>,
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
            home: None,
        })
    }

    /// The run's cgroup directory, through the parent's descriptor.
    fn dir(&self) -> PathBuf {
        fd_path(&self.parent).join(&self.name)
    }

    /// Creates `<parent>/<id>` with the run's limits: no swap, pids, the CPU quota, and
    /// the OOM killer taking the whole run at once; [`RunCgroup::limit`] completes them.
    /// Until then they leave room for the driver that creates the sandbox in the cgroup
    /// (`runtime::born`): one more process, and no memory limit, as the driver may share
    /// pysandbox's memory and the kernel's OOM killer kills every process that shares
    /// its victim's memory (here every process of the cgroup, `memory.oom.group`):
    /// pysandbox with it. Nothing of the script runs before.
    pub fn create(parent: &Parent, id: &str, l: &Limits) -> io::Result<RunCgroup> {
        let path = parent.dir.join(id);
        fs::create_dir(&path)?;
        let mut cg = RunCgroup::at(&path, parent.origin == Origin::Shared)?;
        cg.home = super::own_path()
            .and_then(|own| open_dir(&Path::new(ROOT).join(own.trim_start_matches('/'))).ok());
        let set = |f: &str, v: String| cg.set(f, &v);
        let r = (|| {
            // Absent without swap accounting (no swap configured): nothing to cap then.
            if cg.dir().join("memory.swap.max").exists() {
                set("memory.swap.max", "0".into())?;
            }
            set("memory.oom.group", "1".into())?;
            set("pids.max", l.pids.saturating_add(1).to_string())?;
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

    /// A directory descriptor of the run's cgroup, to create a process directly in it
    /// (`clone3` with `CLONE_INTO_CGROUP`).
    pub fn open(&self) -> io::Result<OwnedFd> {
        open_dir(&self.dir())
    }

    /// The cgroup pysandbox was in when it made this one, for a process that shares
    /// pysandbox's memory and must not be counted in the run's (see `runtime::born`).
    pub fn home(&self) -> Option<BorrowedFd<'_>> {
        self.home.as_ref().map(|h| h.as_fd())
    }

    /// Sets the run's memory limit and its own pids limit: once the process that creates
    /// the sandbox in this cgroup (`runtime::born`'s driver) is gone, before the script
    /// starts (a sandbox already over its memory limit meets the OOM killer here); at
    /// once when the sandbox is not born there.
    pub fn limit(&self, l: &Limits) -> io::Result<()> {
        self.set("memory.max", &l.memory.to_string())?;
        self.set("pids.max", &l.pids.to_string())
    }

    fn set(&self, file: &str, value: &str) -> io::Result<()> {
        sys::write_existing(&self.dir().join(file), value.as_bytes())
            .map_err(|e| io::Error::new(e.kind(), format!("{file}: {e}")))
    }

    /// Whether process `pid` is in this cgroup (by its `/proc/PID/cgroup`).
    pub fn holds(&self, pid: i32) -> bool {
        fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|t| super::parse_proc_cgroup(&t))
            .is_some_and(|p| Path::new(ROOT).join(p.trim_start_matches('/')) == self.path)
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
