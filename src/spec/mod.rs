//! Pure translation of a run plan into an OCI runtime `Spec`: namespaces, mounts, masked
//! paths, capabilities, rlimits, cgroup resources. No kernel, no file system: every
//! decision about *what* the container looks like is here and unit-tested; *how* it is
//! started lives in `runtime/`.

use std::collections::HashSet;
use std::path::PathBuf;

use libcontainer::oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxIdMappingBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use crate::policy::Limits;

/// Inside the sandbox.
pub const SRC_DIR: &str = "/usr/app/src";
pub const DATA_DIR: &str = "/usr/app/data";
pub const OUTPUT_DIR: &str = "/usr/app/data/output";
pub const HOME_DIR: &str = "/home/mambauser";
pub const HOSTNAME: &str = "sandbox";
/// The unprivileged user the script runs as (`mambauser` in the image's /etc/passwd).
pub const SANDBOX_UID: u32 = 1000;
pub const SANDBOX_GID: u32 = 1000;

/// Mount points every image must have (the root file system is mounted read-only, so
/// nothing can be created in it at run time).
pub const REQUIRED_MOUNT_POINTS: &[&str] = &["/proc", "/dev", "/tmp", HOME_DIR, SRC_DIR, DATA_DIR];

/// A host directory (already staged by `runtime/`) bound into the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub source: PathBuf,
    pub dest: &'static str,
    pub writable: bool,
}

/// Root mode: the container's uid/gid 0 is this unprivileged host id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostIds {
    pub uid: u32,
    pub gid: u32,
}

/// One resource limit applied with setrlimit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub kind: PosixRlimitType,
    pub soft: u64,
    pub hard: u64,
}

/// Everything the spec depends on, decided by the caller.
#[derive(Debug, Clone)]
pub struct SpecInput {
    pub rootfs: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub binds: Vec<Bind>,
    /// Share the host network namespace (`--network=host`); otherwise the sandbox has
    /// its own (loopback only, or connected by pasta with `--network`).
    pub host_network: bool,
    /// `Some` when pysandbox runs as real root: libcontainer creates the user namespace.
    /// `None` when pysandbox already entered its own user namespace (rootless).
    pub userns: Option<HostIds>,
    pub cgroups_path: PathBuf,
    /// Put memory and pids limits into cgroups (root on a host that allows it).
    pub cgroup_limits: bool,
    /// The cgroup can also cap swap (memory+swap = memory).
    pub limit_swap: bool,
    /// The cgroup (v1) must be told to count TCP buffer memory.
    pub limit_kernel_tcp: bool,
    pub limits: Limits,
    pub rlimits: Vec<Rlimit>,
}

#[derive(Debug, thiserror::Error)]
#[error("building the OCI spec failed: {0}")]
pub struct SpecError(String);

fn e<E: std::fmt::Display>(err: E) -> SpecError {
    SpecError(err.to_string())
}

fn mount(dest: &str, typ: &str, source: &str, opts: &[&str]) -> Result<Mount, SpecError> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(e)
}

fn tmpfs(dest: &str, size: u64, mode: &str, extra: &[&str]) -> Result<Mount, SpecError> {
    let size = format!("size={}k", size.div_ceil(1024));
    let mode = format!("mode={mode}");
    let mut opts = vec!["nosuid", "nodev", size.as_str(), mode.as_str()];
    opts.extend_from_slice(extra);
    mount(dest, "tmpfs", "tmpfs", &opts)
}

/// Docker's masked paths, plus what identifies the host or shows its other processes:
/// kernel addresses and loaded modules; the boot command line and boot id; the locks of
/// every host process (pids, devices, inodes); the host's disks, swap devices and RAID
/// arrays; which host users hold keys.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/cmdline",
    "/proc/config.gz",
    "/proc/diskstats",
    "/proc/interrupts",
    "/proc/kallsyms",
    "/proc/kcore",
    "/proc/key-users",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/locks",
    "/proc/mdstat",
    "/proc/modules",
    "/proc/partitions",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/swaps",
    "/proc/sys/kernel/random/boot_id",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/vmallocinfo",
    "/sys/firmware",
];
/// Docker's read-only paths.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Builds the spec. Pure: same input, same spec.
pub fn build(input: &SpecInput) -> Result<Spec, SpecError> {
    let l = &input.limits;
    // Every tmpfs is capped in bytes and in inodes: an inode (and its dentry) is about a
    // KiB of kernel memory that `size=` does not count, so each may have one per 4 KiB
    // of its size. /dev belongs to the sandbox's root, which is the script's user (the
    // nested user namespace maps it), so it is capped too.
    let inodes = |size: u64| format!("nr_inodes={}", (size / 4096).max(64));
    let (tmp, shm, home) = (l.tmp_size(), l.shm_size(), l.home_size());
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        tmpfs(
            "/dev",
            64 << 10,
            "755",
            &["strictatime", "noexec", "nr_inodes=256"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                // The host's kernel.pty.max counts every instance's terminals.
                "max=64",
            ],
        )?,
        tmpfs("/dev/shm", shm, "1777", &["noexec", &inodes(shm)])?,
        // No /dev/mqueue: the sandbox shares pysandbox's private IPC namespace (see
        // below), which its user namespace may not mount, and POSIX message queues are
        // refused anyway (their bytes count against the host user's RLIMIT_MSGQUEUE).
        tmpfs("/tmp", tmp, "1777", &[&inodes(tmp)])?,
        tmpfs(HOME_DIR, home, "700", &[&inodes(home)])?,
    ];
    for b in &input.binds {
        let src = b.source.to_string_lossy();
        let rw = if b.writable { "rw" } else { "ro" };
        mounts.push(mount(
            b.dest,
            "bind",
            &src,
            &["bind", rw, "nosuid", "nodev"],
        )?);
    }

    // What libcontainer leaves the init holding, only until the executor enters the
    // nested user namespace and clears every set (bounding included) before exec:
    // - CAP_SETFCAP: the kernel lets a process map its parent namespace's uid 0 into a
    //   namespace it creates only if it held CAP_SETFCAP when creating it (since 5.12,
    //   against file capabilities that would be valid in the parent);
    // - CAP_NET_ADMIN, with a private network, to bring `lo` up.
    let mut caps: HashSet<Capability> = [Capability::Setfcap].into_iter().collect();
    if !input.host_network {
        caps.insert(Capability::NetAdmin);
    }
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()
        .map_err(e)?;

    let rlimits = input
        .rlimits
        .iter()
        .map(|r| {
            PosixRlimitBuilder::default()
                .typ(r.kind)
                .soft(r.soft)
                .hard(r.hard)
                .build()
                .map_err(e)
        })
        .collect::<Result<Vec<_>, _>>()?;

    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(0u32)
                .gid(0u32)
                .umask(0o022u32)
                .build()
                .map_err(e)?,
        )
        .args(input.argv.clone())
        .env(input.env.clone())
        .cwd(DATA_DIR)
        .capabilities(capabilities)
        .rlimits(rlimits)
        .no_new_privileges(true)
        .build()
        .map_err(e)?;

    // No IPC namespace of libcontainer's: the sandbox keeps the private one pysandbox
    // entered and capped (SysV shared memory, queues and semaphore sysctls are per IPC
    // namespace; a fresh one would allow terabytes).
    let mut ns_types = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Cgroup,
    ];
    if !input.host_network {
        ns_types.push(LinuxNamespaceType::Network);
    }
    if input.userns.is_some() {
        ns_types.push(LinuxNamespaceType::User);
    }
    let namespaces = ns_types
        .into_iter()
        .map(|t| LinuxNamespaceBuilder::default().typ(t).build().map_err(e))
        .collect::<Result<Vec<_>, _>>()?;

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(input.cgroups_path.clone())
        .masked_paths(
            MASKED_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        );
    if let Some(ids) = input.userns {
        let map = |host: u32| {
            LinuxIdMappingBuilder::default()
                .container_id(0u32)
                .host_id(host)
                .size(1u32)
                .build()
                .map_err(e)
        };
        linux = linux
            .uid_mappings(vec![map(ids.uid)?])
            .gid_mappings(vec![map(ids.gid)?]);
    }
    let mut linux = linux.build().map_err(e)?;
    // LinuxBuilder fills unset fields from Linux::default(), whose `resources` is an empty
    // Some(..): that alone makes libcontainer write v1 device rules (EPERM when not root).
    if input.cgroup_limits {
        let mut memory = LinuxMemoryBuilder::default().limit(l.memory as i64);
        if input.limit_swap {
            // memory+swap = memory: swapping does not buy a script more memory.
            memory = memory.swap(l.memory as i64);
        }
        if input.limit_kernel_tcp {
            // cgroup v1 counts TCP buffers only once this is set, and apart from
            // memory.usage: a quarter of the memory limit (v2 counts them in memory).
            memory = memory.kernel_tcp(l.kernel_tcp_memory() as i64);
        }
        let memory = memory.build().map_err(e)?;
        let pids = LinuxPidsBuilder::default()
            .limit(l.pids as i64)
            .build()
            .map_err(e)?;
        let mut resources = LinuxResourcesBuilder::default().memory(memory).pids(pids);
        if let Some(cpus) = l.cpus {
            const PERIOD: u64 = 100_000;
            resources = resources.cpu(
                LinuxCpuBuilder::default()
                    .period(PERIOD)
                    .quota((cpus * PERIOD as f64).round() as i64)
                    .build()
                    .map_err(e)?,
            );
        }
        linux.set_resources(Some(resources.build().map_err(e)?));
    } else {
        linux.set_resources(None);
    }

    SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(input.rootfs.clone())
                .readonly(true)
                .build()
                .map_err(e)?,
        )
        .hostname(HOSTNAME)
        .mounts(mounts)
        .process(process)
        .linux(linux)
        .build()
        .map_err(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> SpecInput {
        SpecInput {
            rootfs: "/r/rootfs".into(),
            argv: vec!["/opt/conda/bin/python".into(), "/usr/app/src/x.py".into()],
            env: vec!["PATH=/opt/conda/bin".into()],
            binds: vec![
                Bind {
                    source: "/r/data".into(),
                    dest: DATA_DIR,
                    writable: false,
                },
                Bind {
                    source: "/r/output".into(),
                    dest: OUTPUT_DIR,
                    writable: true,
                },
            ],
            host_network: false,
            userns: None,
            cgroups_path: "/pysandbox/x".into(),
            cgroup_limits: false,
            limit_swap: false,
            limit_kernel_tcp: false,
            limits: Limits::default(),
            rlimits: vec![Rlimit {
                kind: PosixRlimitType::RlimitNproc,
                soft: 128,
                hard: 128,
            }],
        }
    }

    fn ns_types(s: &Spec) -> Vec<LinuxNamespaceType> {
        s.linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect()
    }

    #[test]
    fn isolated_by_default() {
        let s = build(&input()).unwrap();
        let ns = ns_types(&s);
        for t in [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Cgroup,
            LinuxNamespaceType::Network,
        ] {
            assert!(ns.contains(&t), "{t:?} missing");
        }
        assert!(!ns.contains(&LinuxNamespaceType::User));
        // pysandbox's own, capped IPC namespace is kept.
        assert!(!ns.contains(&LinuxNamespaceType::Ipc));
        assert!(s.root().as_ref().unwrap().readonly().unwrap());
        assert_eq!(s.hostname().as_deref(), Some(HOSTNAME));
        let p = s.process().as_ref().unwrap();
        assert_eq!(p.no_new_privileges(), Some(true));
        let caps = p.capabilities().as_ref().unwrap();
        // Only what the executor needs before it clears everything; never more.
        let allowed: HashSet<Capability> = [Capability::NetAdmin, Capability::Setfcap]
            .into_iter()
            .collect();
        for set in [caps.bounding(), caps.effective(), caps.permitted()] {
            assert_eq!(set.as_ref().unwrap(), &allowed);
        }
        assert!(caps.ambient().as_ref().unwrap().is_empty());
        assert!(caps.inheritable().as_ref().unwrap().is_empty());
        let linux = s.linux().as_ref().unwrap();
        assert!(linux.resources().is_none());
        assert!(
            !linux
                .cgroups_path()
                .as_ref()
                .unwrap()
                .as_os_str()
                .is_empty()
        );
        assert!(
            linux
                .masked_paths()
                .as_ref()
                .unwrap()
                .contains(&"/proc/kcore".to_string())
        );
    }

    #[test]
    fn mounts_are_read_only_except_output() {
        let s = build(&input()).unwrap();
        let mounts = s.mounts().as_ref().unwrap();
        let find = |d: &str| {
            mounts
                .iter()
                .find(|m| m.destination().to_str() == Some(d))
                .unwrap()
                .options()
                .clone()
                .unwrap()
        };
        assert!(find(DATA_DIR).contains(&"ro".to_string()));
        assert!(find(OUTPUT_DIR).contains(&"rw".to_string()));
        for m in mounts {
            let o = m.options().as_ref().unwrap();
            if m.destination().to_str() != Some("/dev") {
                assert!(o.contains(&"nosuid".to_string()), "{:?}", m.destination());
            }
        }
        // Every tmpfs is capped, in bytes and in inodes.
        for m in mounts
            .iter()
            .filter(|m| m.typ().as_deref() == Some("tmpfs"))
        {
            let o = m.options().as_ref().unwrap();
            assert!(o.iter().any(|o| o.starts_with("size=")), "{m:?}");
            assert!(o.iter().any(|o| o.starts_with("nr_inodes=")), "{m:?}");
        }
        // Output comes after data, so it is mounted on top of it.
        let pos = |d: &str| {
            mounts
                .iter()
                .position(|m| m.destination().to_str() == Some(d))
                .unwrap()
        };
        assert!(pos(DATA_DIR) < pos(OUTPUT_DIR));
    }

    #[test]
    fn host_network_and_root_mode() {
        let mut i = input();
        i.host_network = true;
        i.userns = Some(HostIds {
            uid: 65534,
            gid: 65534,
        });
        i.cgroup_limits = true;
        let s = build(&i).unwrap();
        let ns = ns_types(&s);
        assert!(!ns.contains(&LinuxNamespaceType::Network));
        assert!(ns.contains(&LinuxNamespaceType::User));
        let linux = s.linux().as_ref().unwrap();
        let m = &linux.uid_mappings().as_ref().unwrap()[0];
        assert_eq!((m.container_id(), m.host_id(), m.size()), (0, 65534, 1));
        let r = linux.resources().as_ref().unwrap();
        assert_eq!(
            r.memory().as_ref().unwrap().limit(),
            Some(Limits::default().memory as i64)
        );
        assert_eq!(r.pids().as_ref().unwrap().limit(), 128);
        let caps = s
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap();
        let only: HashSet<Capability> = [Capability::Setfcap].into_iter().collect();
        assert_eq!(caps.bounding().as_ref().unwrap(), &only);
    }
}
