//! `pysandbox doctor`: checks what this host gives pysandbox (user namespaces, cgroups,
//! seccomp, overlayfs, pasta for `--network`, the default image) and ends with a real
//! sandbox run. Each problem comes with the one-line fix. Read-only apart from that final
//! run.

use std::path::Path;

use crate::limits::CgroupSupport;
use crate::sys;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub detail: String,
    pub fix: Option<String>,
}

fn check(name: &'static str, level: Level, detail: impl Into<String>, fix: Option<&str>) -> Check {
    Check {
        name,
        level,
        detail: detail.into(),
        fix: fix.map(str::to_string),
    }
}

fn read(p: &str) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

fn kernel() -> Check {
    let (rel, v) = sys::kernel_release();
    if v >= crate::runtime::MIN_KERNEL {
        check("kernel", Level::Ok, format!("Linux {rel}"), None)
    } else {
        check(
            "kernel",
            Level::Fail,
            format!(
                "Linux {rel}: pysandbox needs 5.12+ (openat2, mount_setattr, id-mapped mounts)"
            ),
            Some("upgrade the kernel"),
        )
    }
}

/// Forks a child that creates a user namespace and maps itself, as pysandbox does.
fn try_userns() -> Result<(), String> {
    let uid = sys::euid();
    // SAFETY: the child only calls unshare/open/write/_exit.
    unsafe {
        let pid = libc::fork();
        if pid < 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        if pid == 0 {
            let mut code = 1;
            if libc::unshare(libc::CLONE_NEWUSER) == 0 {
                code = 2;
                let map = format!("0 {uid} 1\0");
                let fd = libc::open(c"/proc/self/uid_map".as_ptr(), libc::O_WRONLY);
                if fd >= 0 && libc::write(fd, map.as_ptr().cast(), map.len() - 1) > 0 {
                    code = 0;
                }
            }
            libc::_exit(code);
        }
        let mut st = 0;
        libc::waitpid(pid, &mut st, 0);
        match libc::WEXITSTATUS(st) {
            0 => Ok(()),
            1 => Err("unshare(CLONE_NEWUSER) was refused".into()),
            _ => Err("the new user namespace could not be mapped".into()),
        }
    }
}

fn user_namespaces() -> Check {
    const NAME: &str = "user namespaces";
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return check(
            NAME,
            Level::Fail,
            "disabled (user.max_user_namespaces = 0)",
            Some("sysctl -w user.max_user_namespaces=15000"),
        );
    }
    if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        return check(
            NAME,
            Level::Fail,
            "disabled for ordinary users (kernel.unprivileged_userns_clone = 0)",
            Some("sysctl -w kernel.unprivileged_userns_clone=1"),
        );
    }
    let apparmor =
        read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1");
    match try_userns() {
        Ok(()) if apparmor && sys::euid() != 0 => check(
            NAME,
            Level::Warn,
            "available, but AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns = 1)",
            Some(
                "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or give pysandbox an AppArmor profile with `userns,`",
            ),
        ),
        Ok(()) => check(NAME, Level::Ok, "available", None),
        Err(e) if apparmor => check(
            NAME,
            Level::Fail,
            format!("{e}: AppArmor restricts unprivileged user namespaces"),
            Some(
                "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or give pysandbox an AppArmor profile with `userns,`",
            ),
        ),
        Err(e) => check(
            NAME,
            Level::Fail,
            e,
            Some("enable unprivileged user namespaces (sysctl user.max_user_namespaces)"),
        ),
    }
}

fn is_cgroup2(p: &str) -> bool {
    nix::sys::statfs::statfs(p)
        .map(|s| s.filesystem_type().0 == 0x6367_7270)
        .unwrap_or(false)
}

fn cgroups() -> Vec<Check> {
    const NAME: &str = "limits";
    let real_root = sys::euid() == 0 && sys::in_initial_userns();
    let hybrid = !is_cgroup2("/sys/fs/cgroup") && is_cgroup2("/sys/fs/cgroup/unified");
    let mut out = Vec::new();
    if real_root {
        match CgroupSupport::detect_for_root() {
            CgroupSupport::V1 { memsw } => {
                out.push(check(
                    NAME,
                    Level::Ok,
                    format!(
                        "cgroup v1 as root: memory{}, pids and CPU limits",
                        if memsw { " (swap included)" } else { " (swap not accounted: boot with swapaccount=1 to cap it)" }
                    ),
                    None,
                ));
                out.push(check(
                    "cgroup v1 speed",
                    Level::Warn,
                    "entering a cgroup waits for an RCU grace period, several milliseconds per run",
                    Some(if hybrid {
                        "mount -o remount,favordynmods /sys/fs/cgroup/unified (or move the host to cgroup v2)"
                    } else {
                        "move the host to cgroup v2 (systemd.unified_cgroup_hierarchy=1)"
                    }),
                ));
            }
            CgroupSupport::V2 => out.push(check(NAME, Level::Ok, "cgroup v2 as root: memory, pids and CPU limits", None)),
            CgroupSupport::None => out.push(check(
                NAME,
                Level::Warn,
                "no usable memory/pids cgroup controllers: rlimits only (memory approximated by RLIMIT_AS)",
                Some("mount the memory and pids cgroup controllers"),
            )),
        }
        return out;
    }
    if !is_cgroup2("/sys/fs/cgroup") && !hybrid {
        out.push(check(
            NAME,
            Level::Fail,
            "no cgroup2 hierarchy: pysandbox cannot run rootless on a cgroup-v1-only host",
            Some("mount cgroup2 (e.g. at /sys/fs/cgroup/unified), or run pysandbox as root"),
        ));
        return out;
    }
    out.push(check(
        NAME,
        Level::Warn,
        "as an ordinary user: rlimits (memory is RLIMIT_AS, address space; --cpus is not available; --strict-limits refuses)",
        Some("run as root for cgroup limits"),
    ));
    out
}

fn seccomp() -> Check {
    match read("/proc/sys/kernel/seccomp/actions_avail") {
        Some(a) if a.contains("errno") && a.contains("user_notif") => check(
            "seccomp",
            Level::Ok,
            "filters and user notification available",
            None,
        ),
        Some(a) if a.contains("errno") => check(
            "seccomp",
            Level::Warn,
            "filters available; user notification is not (--seccomp-log will fail)",
            Some("use Linux 5.0+ with CONFIG_SECCOMP_FILTER"),
        ),
        _ => check(
            "seccomp",
            Level::Fail,
            "no seccomp filters: pysandbox refuses to run without its syscall filter",
            Some("use a kernel built with CONFIG_SECCOMP_FILTER=y"),
        ),
    }
}

fn overlay() -> Check {
    let fs = read("/proc/filesystems").unwrap_or_default();
    if fs
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
        || Path::new("/sys/module/overlay").exists()
    {
        check(
            "overlayfs",
            Level::Ok,
            "available (the output folder's size cap)",
            None,
        )
    } else {
        check(
            "overlayfs",
            Level::Fail,
            "not available: the output folder cannot be capped",
            Some("modprobe overlay"),
        )
    }
}

/// `--network` needs pasta and a tun device this user may open (as root, pysandbox
/// makes one for the sandbox); a missing one only disables `--network`.
fn network() -> Check {
    let as_root = sys::euid() == 0 && sys::in_initial_userns();
    match (crate::net::pasta_path(), crate::net::preflight(as_root)) {
        (Some(p), Ok(_)) => check(
            "network",
            Level::Ok,
            format!(
                "--network available (pasta at {}); without it, runs have a loopback only",
                p.display()
            ),
            None,
        ),
        (None, _) => check(
            "network",
            Level::Warn,
            "pasta is not installed: --network will fail (runs without it are unaffected)",
            Some("apt-get install passt"),
        ),
        (Some(_), Err(e)) => check("network", Level::Warn, e.to_string(), None),
    }
}

fn image() -> Check {
    match crate::image::describe_default() {
        Ok(desc) => check("default image", Level::Ok, desc, None),
        Err(e) => check(
            "default image",
            Level::Fail,
            e.to_string(),
            Some("install python3 or set PYSANDBOX_PYTHON; or pass --image DIR"),
        ),
    }
}

/// Every check, then a real run. Call from a single-threaded process (the final run
/// enters namespaces).
pub fn run_checks() -> Vec<Check> {
    let mut out = vec![kernel(), user_namespaces()];
    out.extend(cgroups());
    out.push(seccomp());
    out.push(overlay());
    out.push(network());
    out.push(image());
    if out.iter().all(|c| c.level != Level::Fail) {
        let mut p = crate::policy::RunPolicy::new(crate::policy::Script::Code(
            "import os; assert os.getuid() != 0; print('ok')".into(),
        ));
        p.no_fs = true;
        p.capture = true;
        p.stdin = crate::policy::StdinSource::Null;
        let t = std::time::Instant::now();
        out.push(match crate::run_in_this_process(&p) {
            Ok(r) if r.stdout.text == "ok\n" => check(
                "sandbox",
                Level::Ok,
                format!(
                    "a script ran in a sandbox ({} ms, {})",
                    t.elapsed().as_millis(),
                    r.image
                ),
                None,
            ),
            Ok(r) => check(
                "sandbox",
                Level::Fail,
                format!(
                    "the probe run ended {:?}: {}",
                    r.status,
                    r.error.unwrap_or(r.stderr.text)
                ),
                Some("run with --log-level debug and report it"),
            ),
            Err(e) => check(
                "sandbox",
                Level::Fail,
                e.to_string(),
                Some("see the checks above"),
            ),
        });
    }
    out
}
