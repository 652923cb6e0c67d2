//! Resource limits: which rlimits a run gets, whether cgroups can enforce memory, pids
//! and CPU on this host and where a run's cgroup goes (`cgroup2`: delegated subtrees,
//! systemd scopes), and removal of cgroups that a killed pysandbox left behind. Owns no
//! process: cgroup v1 values are handed to the spec and applied by libcontainer; a
//! cgroup v2 run's cgroup is made and filled here, before the sandbox is born in it
//! (`runtime::born`).

pub mod cgroup2;

use std::fs;
use std::path::{Path, PathBuf};

use libcontainer::oci_spec::runtime::PosixRlimitType;

use crate::policy::Limits;
use crate::report::{self, Limit, Mechanism};
use crate::spec::Rlimit;

/// The parent of a cgroup v1 run's cgroups (`/pysandbox/<id>` in each controller; on
/// cgroup v2 see `cgroup2`).
pub const CGROUP_PARENT: &str = "pysandbox";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// How the host lets us limit a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupSupport {
    /// cgroup v1 memory + pids controllers are mounted and writable (real root).
    V1 { memsw: bool },
    /// cgroup v2: memory and pids (and CPU when `cpu`) in a cgroup pysandbox may make
    /// (real root, or a subtree delegated to the caller).
    V2 { cpu: bool },
    /// No usable cgroups: rlimits only.
    None,
}

impl CgroupSupport {
    /// Detects what real root can use here. Call only as real root.
    pub fn detect_for_root() -> Self {
        let root = Path::new(CGROUP_ROOT);
        let v1_mem = root.join("memory");
        // The v1 root cgroups have no pids.max; cgroup.procs shows the controller is there.
        if v1_mem.join("memory.limit_in_bytes").exists()
            && root.join("pids").join("cgroup.procs").exists()
        {
            return CgroupSupport::V1 {
                memsw: v1_mem.join("memory.memsw.limit_in_bytes").exists(),
            };
        }
        if let Ok(c) = fs::read_to_string(root.join("cgroup.controllers")) {
            let has = |n: &str| c.split_whitespace().any(|x| x == n);
            if has("memory") && has("pids") {
                return CgroupSupport::V2 { cpu: has("cpu") };
            }
        }
        CgroupSupport::None
    }

    pub fn enforces_memory(self) -> bool {
        !matches!(self, CgroupSupport::None)
    }

    /// Whether `--cpus` is enforced (v1 root mounts the cpu controller with the others).
    pub fn enforces_cpu(self) -> bool {
        match self {
            CgroupSupport::V1 { .. } => true,
            CgroupSupport::V2 { cpu } => cpu,
            CgroupSupport::None => false,
        }
    }

    fn mechanism(self) -> Mechanism {
        match self {
            CgroupSupport::V1 { .. } => Mechanism::CgroupV1,
            CgroupSupport::V2 { .. } => Mechanism::CgroupV2,
            CgroupSupport::None => Mechanism::None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("--strict-limits: {0}")]
pub struct StrictError(String);

/// `--strict-limits`: refuses limits this host can only approximate.
pub fn check_strict(l: &Limits, cg: CgroupSupport) -> Result<(), StrictError> {
    if !cg.enforces_memory() {
        return Err(StrictError(
            "memory could only be approximated here (RLIMIT_AS counts address space, and tmpfs is outside it). Hint: run as root, or on a host whose cgroup v2 is delegated to you; or drop --strict-limits".into(),
        ));
    }
    if l.cpus.is_some() && !cg.enforces_cpu() {
        return Err(StrictError(format!(
            "--cpus needs the cgroup CPU controller, which this host does not give pysandbox. Hint: {}",
            CPU_HINT
        )));
    }
    Ok(())
}

/// What enforces each limit, for the report.
pub fn describe(l: &Limits, cg: CgroupSupport, rl: &[Rlimit]) -> report::Limits {
    let rlimit = |k: PosixRlimitType| {
        rl.iter().find(|r| r.kind == k).map(|r| Limit {
            value: Some(r.hard as f64),
            mechanism: Mechanism::Rlimit,
        })
    };
    let none = Limit {
        value: None,
        mechanism: Mechanism::None,
    };
    let by_cgroup = |v: f64| Limit {
        value: Some(v),
        mechanism: cg.mechanism(),
    };
    report::Limits {
        memory_bytes: if cg.enforces_memory() {
            by_cgroup(l.memory as f64)
        } else {
            rlimit(PosixRlimitType::RlimitAs).unwrap_or(none)
        },
        pids: if cg.enforces_memory() {
            by_cgroup(l.pids as f64)
        } else {
            rlimit(PosixRlimitType::RlimitNproc).unwrap_or(none)
        },
        cpus: match (l.cpus, cg.enforces_cpu()) {
            (Some(c), true) => by_cgroup(c),
            (Some(c), false) => Limit {
                value: Some(c),
                mechanism: Mechanism::None,
            },
            (None, _) => none,
        },
        cpu_time_s: rlimit(PosixRlimitType::RlimitCpu).unwrap_or(none),
        timeout_ms: Limit {
            value: Some(l.timeout.as_millis() as f64),
            mechanism: Mechanism::WallClock,
        },
        file_size_bytes: rlimit(PosixRlimitType::RlimitFsize).unwrap_or(none),
        open_files: rlimit(PosixRlimitType::RlimitNofile).unwrap_or(none),
        output_folder_bytes: Limit {
            value: Some(l.output_cap() as f64),
            mechanism: Mechanism::Tmpfs,
        },
        stream_bytes: Limit {
            value: Some(l.max_output as f64),
            mechanism: Mechanism::Pipe,
        },
    }
}

/// How many times the kernel's OOM killer killed inside a cgroup v1 run's memory cgroup
/// (a cgroup v2 run asks its [`cgroup2::RunCgroup`]).
pub fn oom_kills_v1(id: &str) -> u64 {
    let own = Path::new(CGROUP_PARENT).join(id);
    let file = Path::new(CGROUP_ROOT)
        .join("memory")
        .join(&own)
        .join("memory.oom_control");
    cgroup2::counter(&file, "oom_kill")
}

/// What `--cpus` (and a precise memory limit) need, for hints.
pub const CPU_HINT: &str = "run as root, or in a cgroup v2 subtree delegated to you: `systemd-run --user --scope -p Delegate=yes pysandbox ...` (with `loginctl enable-linger $USER` if you have no user session)";

/// Where a run's limits come from: the cgroup support and, on cgroup v2, the parent of
/// its cgroup. `why_not` says (one line) why an ordinary user gets no cgroups; `notes`
/// become report warnings.
#[derive(Debug)]
pub struct Placement {
    pub support: CgroupSupport,
    pub parent: Option<cgroup2::Parent>,
    pub why_not: Option<String>,
    pub notes: Vec<String>,
    /// The run's own cgroup, once [`Placement::create_run`] made it (cgroup v2).
    pub run: Option<cgroup2::RunCgroup>,
}

impl Placement {
    fn none(why: String) -> Placement {
        Placement {
            support: CgroupSupport::None,
            parent: None,
            why_not: Some(why),
            notes: Vec::new(),
            run: None,
        }
    }

    /// Makes the run's cgroup under the cgroup v2 parent, with its limits.
    pub fn create_run(&mut self, id: &str, l: &Limits) -> std::io::Result<()> {
        for _ in 0..10 {
            let Some(p) = &self.parent else {
                return Ok(());
            };
            match cgroup2::RunCgroup::create(p, id, l) {
                Ok(run) => {
                    self.run = Some(run);
                    return Ok(());
                }
                // Root's shared parent, removed by a run that found it empty between our
                // making it and our mkdir in it: make it again.
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        && p.origin == cgroup2::Origin::Shared =>
                {
                    self.parent = Some(cgroup2::shared_parent()?);
                }
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other(
            "the shared parent cgroup kept disappearing",
        ))
    }

    /// OOM kills in the run's cgroup.
    pub fn oom_kills(&self, id: &str) -> u64 {
        match (&self.run, self.support) {
            (Some(r), _) => r.oom_kills(),
            (None, CgroupSupport::V1 { .. }) => oom_kills_v1(id),
            _ => 0,
        }
    }

    /// Removes the run's cgroups; returns those that could not be removed.
    pub fn remove(&self, id: &str) -> Vec<PathBuf> {
        let mut left = match &self.run {
            Some(r) if !r.remove() => vec![r.path.clone()],
            _ => Vec::new(),
        };
        if matches!(self.support, CgroupSupport::V1 { .. }) {
            left.extend(remove_stale_cgroups(id));
        }
        left
    }
}

/// Finds (and prepares) where run `id`'s cgroup goes; see `cgroup2` for the order. May
/// move this process: into a leaf of its delegated cgroup, or into a transient systemd
/// scope. `real_root`: root in the initial user namespace.
pub fn place(real_root: bool, id: &str) -> Placement {
    if !cgroup2::is_unified() {
        if real_root {
            return Placement {
                support: CgroupSupport::detect_for_root(),
                parent: None,
                why_not: None,
                notes: Vec::new(),
                run: None,
            };
        }
        return Placement::none(
            "this host's memory and pids controllers are on cgroup v1, which only root can use"
                .into(),
        );
    }
    let Some(own) = cgroup2::own_path() else {
        return Placement::none("/proc/self/cgroup has no cgroup v2 line".into());
    };
    let systemd = cgroup2::systemd_booted();
    let view = cgroup2::View {
        root: Path::new(cgroup2::ROOT),
        own: &own,
        euid: crate::sys::euid(),
        real_root,
        systemd,
        ask_systemd: true,
    };
    let v2 = |p: cgroup2::Parent| Placement {
        support: CgroupSupport::V2 { cpu: p.cpu },
        parent: Some(p),
        why_not: None,
        notes: Vec::new(),
        run: None,
    };
    let own_why = match cgroup2::find_delegated(&view) {
        Ok(p) => {
            return match cgroup2::prepare(&p) {
                Ok(()) => v2(p),
                Err(e) => Placement::none(format!(
                    "your delegated cgroup {} could not be prepared: {e}",
                    p.dir.display()
                )),
            };
        }
        Err(why) => why,
    };
    let scope_why = if systemd {
        match cgroup2::transient_scope(id, real_root) {
            Ok(p) => return v2(p),
            Err(e) => Some(e),
        }
    } else {
        None
    };
    if real_root {
        return match cgroup2::shared_parent() {
            Ok(p) => {
                let mut pl = v2(p);
                if let Some(e) = scope_why {
                    pl.notes.push(format!(
                        "the run's cgroup is outside systemd's tree ({}/{}): {e}",
                        cgroup2::ROOT,
                        cgroup2::SHARED_PARENT
                    ));
                }
                pl
            }
            Err(e) => Placement::none(format!("creating {}: {e}", cgroup2::SHARED_PARENT)),
        };
    }
    Placement::none(match scope_why {
        Some(e) => format!("your cgroup: {own_why}; {e}"),
        None => format!("your cgroup: {own_why}"),
    })
}

/// The cgroup path of a run (never empty: an empty cgroupsPath on v1 makes libcontainer
/// kill everything in the caller's own cgroup on cleanup).
pub fn cgroup_path(id: &str) -> PathBuf {
    PathBuf::from(format!("/{CGROUP_PARENT}/{id}"))
}

/// The rlimits of a run. `cgroup_memory` says whether a cgroup already caps memory (then
/// RLIMIT_AS, which also counts untouched address-space reservations, is not used).
/// Values never exceed the hard limit pysandbox inherited: without CAP_SYS_RESOURCE a
/// higher value fails, and it would not be a limit anyway.
pub fn rlimits(l: &Limits, cgroup_memory: bool) -> Vec<Rlimit> {
    use crate::sys::getrlimit;
    let mut out = Vec::new();
    let mut push = |kind: PosixRlimitType, res: libc::__rlimit_resource_t, soft: u64, hard: u64| {
        let (_, inherited_hard) = getrlimit(res);
        let hard = hard.min(inherited_hard);
        out.push(Rlimit {
            kind,
            soft: soft.min(hard),
            hard,
        });
    };
    if !cgroup_memory {
        push(
            PosixRlimitType::RlimitAs,
            libc::RLIMIT_AS,
            l.memory,
            l.memory,
        );
    }
    push(
        PosixRlimitType::RlimitNproc,
        libc::RLIMIT_NPROC,
        l.pids,
        l.pids,
    );
    let cpu = l.cpu_seconds();
    push(PosixRlimitType::RlimitCpu, libc::RLIMIT_CPU, cpu, cpu + 1);
    push(
        PosixRlimitType::RlimitFsize,
        libc::RLIMIT_FSIZE,
        l.file_size(),
        l.file_size(),
    );
    push(
        PosixRlimitType::RlimitNofile,
        libc::RLIMIT_NOFILE,
        l.open_files,
        l.open_files,
    );
    // No core files: they would land in the host's core_pattern handler.
    push(PosixRlimitType::RlimitCore, libc::RLIMIT_CORE, 0, 0);
    // Queued signals and POSIX message-queue bytes are counted per host user, across
    // every user namespace: the sandbox gets a small share, never the host user's all.
    push(
        PosixRlimitType::RlimitSigpending,
        libc::RLIMIT_SIGPENDING,
        SIGPENDING,
        SIGPENDING,
    );
    push(PosixRlimitType::RlimitMsgqueue, libc::RLIMIT_MSGQUEUE, 0, 0);
    // Locked System V shared memory counts against the host user's memlock budget.
    push(
        PosixRlimitType::RlimitMemlock,
        libc::RLIMIT_MEMLOCK,
        MEMLOCK,
        MEMLOCK,
    );
    out
}

/// Signals the sandbox may have queued at once (the host's default is ~1/4 of a million
/// per user; this is what the sandbox can take of that).
pub const SIGPENDING: u64 = 1024;
/// Bytes the sandbox may lock in memory (mlock, SHM_LOCK).
pub const MEMLOCK: u64 = 64 << 10;
/// inotify instances the sandbox may hold (the host's default per user is 128).
pub const INOTIFY_INSTANCES: u64 = 8;
/// inotify watches the sandbox may hold (the host's default per user is 8192 or more).
pub const INOTIFY_WATCHES: u64 = 1024;

/// Sysctls (under /proc/sys) of the sandbox's IPC namespace: System V shared memory,
/// message queues and semaphores are capped inside the memory limit (a fresh IPC
/// namespace allows terabytes of shared memory that no rlimit sees), and segments die
/// with their last user.
pub fn ipc_sysctls(l: &Limits) -> Vec<(&'static str, String)> {
    let shm = l.shm_size();
    vec![
        ("kernel/shmmax", shm.to_string()),
        ("kernel/shmall", (shm / 4096).max(1).to_string()),
        ("kernel/shmmni", "64".into()),
        ("kernel/shm_rmid_forced", "1".into()),
        // 16 queues of 16 KiB.
        ("kernel/msgmni", "16".into()),
        ("kernel/msgmnb", "16384".into()),
        ("kernel/msgmax", "8192".into()),
        // semmsl semmns semopm semmni
        ("kernel/sem", "250 8000 32 64".into()),
        ("fs/mqueue/queues_max", "0".into()),
    ]
}

/// Sysctls (under /proc/sys) of the sandbox's outermost user namespace: per-user kernel
/// budgets are counted in every user namespace up to the host's, against the host user
/// who made the namespace; capping them here leaves the host user's own budget alone.
pub fn user_sysctls() -> Vec<(&'static str, String)> {
    vec![
        ("user/max_inotify_instances", INOTIFY_INSTANCES.to_string()),
        ("user/max_inotify_watches", INOTIFY_WATCHES.to_string()),
    ]
}

/// Every cgroup directory a run with this id may have created.
fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let root = Path::new(CGROUP_ROOT);
    let own = Path::new(CGROUP_PARENT).join(id);
    if let Ok(rd) = fs::read_dir(root) {
        for ent in rd.flatten() {
            let p = ent.path().join(&own);
            if p.is_dir() {
                dirs.push(p);
            }
        }
    }
    let v2 = root.join(&own);
    if v2.is_dir() {
        dirs.push(v2);
    }
    dirs
}

/// Removes the cgroups of a dead run: kills what is still inside (nothing should be: the
/// sandbox dies with pysandbox) and removes the directories. Best effort; returns what
/// could not be removed.
pub fn remove_stale_cgroups(id: &str) -> Vec<PathBuf> {
    let mut left = Vec::new();
    for dir in cgroup_dirs(id) {
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // A pid read from this run's own cgroup.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let mut ok = false;
        for _ in 0..50 {
            if fs::remove_dir(&dir).is_ok() || !dir.exists() {
                ok = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if !ok {
            left.push(dir);
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rlimits_without_cgroups_cap_address_space() {
        let l = Limits::default();
        let r = rlimits(&l, false);
        let find = |k| r.iter().find(|x| x.kind == k).copied();
        let as_ = find(PosixRlimitType::RlimitAs).unwrap();
        assert!(as_.soft <= l.memory && as_.hard <= l.memory);
        assert_eq!(find(PosixRlimitType::RlimitCore).unwrap().hard, 0);
        for x in &r {
            assert!(x.soft <= x.hard);
        }
        let with_cg = rlimits(&l, true);
        assert!(with_cg.iter().all(|x| x.kind != PosixRlimitType::RlimitAs));
        assert!(
            with_cg
                .iter()
                .any(|x| x.kind == PosixRlimitType::RlimitNproc)
        );
    }

    #[test]
    fn cgroup_path_is_never_empty() {
        let p = cgroup_path("abc");
        assert_eq!(p, PathBuf::from("/pysandbox/abc"));
    }
}
