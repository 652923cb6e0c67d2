//! Resource limits: which rlimits a run gets, whether cgroups can enforce memory and pids
//! on this host, and removal of cgroups that a killed pysandbox left behind. Owns no
//! process: the values are handed to the spec and applied by libcontainer.

use std::fs;
use std::path::{Path, PathBuf};

use libcontainer::oci_spec::runtime::PosixRlimitType;

use crate::policy::Limits;
use crate::report::{self, Limit, Mechanism};
use crate::spec::Rlimit;

/// The parent of every cgroup pysandbox creates (`/pysandbox/<id>`).
pub const CGROUP_PARENT: &str = "pysandbox";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// How the host lets us limit a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupSupport {
    /// cgroup v1 memory + pids controllers are mounted and writable (real root).
    V1 { memsw: bool },
    /// cgroup v2 with memory and pids available at the root (real root).
    V2,
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
                return CgroupSupport::V2;
            }
        }
        CgroupSupport::None
    }

    pub fn enforces_memory(self) -> bool {
        !matches!(self, CgroupSupport::None)
    }

    fn mechanism(self) -> Mechanism {
        match self {
            CgroupSupport::V1 { .. } => Mechanism::CgroupV1,
            CgroupSupport::V2 => Mechanism::CgroupV2,
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
    if l.cpus.is_some() && cg == CgroupSupport::None {
        return Err(StrictError(
            "--cpus needs cgroups, which this host does not give pysandbox".into(),
        ));
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
        cpus: match (l.cpus, cg.enforces_memory()) {
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

/// How many times the kernel's OOM killer killed inside the run's memory cgroup.
pub fn oom_kills(id: &str, cg: CgroupSupport) -> u64 {
    let own = Path::new(CGROUP_PARENT).join(id);
    let (file, key) = match cg {
        CgroupSupport::V1 { .. } => (
            Path::new(CGROUP_ROOT)
                .join("memory")
                .join(&own)
                .join("memory.oom_control"),
            "oom_kill",
        ),
        CgroupSupport::V2 => (
            Path::new(CGROUP_ROOT).join(&own).join("memory.events"),
            "oom_kill",
        ),
        CgroupSupport::None => return 0,
    };
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
                // SAFETY: plain kill(2) on a pid read from this run's own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
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
