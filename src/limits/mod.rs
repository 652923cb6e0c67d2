//! Resource limits: which rlimits a run gets, whether cgroups can enforce memory and pids
//! on this host, and removal of cgroups that a killed pysandbox left behind. Owns no
//! process: the values are handed to the spec and applied by libcontainer.

use std::fs;
use std::path::{Path, PathBuf};

use libcontainer::oci_spec::runtime::PosixRlimitType;

use crate::policy::Limits;
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
        l.file_size,
        l.file_size,
    );
    push(
        PosixRlimitType::RlimitNofile,
        libc::RLIMIT_NOFILE,
        l.open_files,
        l.open_files,
    );
    // No core files: they would land in the host's core_pattern handler.
    push(PosixRlimitType::RlimitCore, libc::RLIMIT_CORE, 0, 0);
    out
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
