//! `pysandbox doctor`: checks what this host gives pysandbox (user namespaces, cgroups,
//! seccomp, overlayfs, pasta for `--network`, the default image) and ends with a real
//! sandbox run. Each problem comes with the one-line fix. Read-only apart from that final
//! run.

use std::path::Path;

use crate::limits::{CgroupSupport, cgroup2};
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
    const AA_FIX: &str = "sudo pysandbox setup apparmor (a profile that allows `userns,` for this binary), or sysctl -w kernel.apparmor_restrict_unprivileged_userns=0";
    let profiled = match crate::apparmor::loaded() {
        Some(true) => " (a `pysandbox` profile is loaded)",
        _ => "",
    };
    match try_userns() {
        Ok(()) if apparmor && sys::euid() != 0 && !profiled.is_empty() => check(
            NAME,
            Level::Ok,
            format!(
                "available: AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns = 1){profiled}"
            ),
            None,
        ),
        Ok(()) if apparmor && sys::euid() != 0 => check(
            NAME,
            Level::Warn,
            "created, but AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns = 1): without a profile the sandbox's mounts are refused",
            Some(AA_FIX),
        ),
        Ok(()) if apparmor => check(
            NAME,
            Level::Warn,
            format!(
                "available to root; AppArmor restricts them for ordinary users (kernel.apparmor_restrict_unprivileged_userns = 1){profiled}"
            ),
            (profiled.is_empty()).then_some(AA_FIX),
        ),
        Ok(()) => check(NAME, Level::Ok, "available", None),
        Err(e) if apparmor => check(
            NAME,
            Level::Fail,
            format!(
                "{e}: AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns = 1)"
            ),
            Some(AA_FIX),
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
    if cgroup2::is_unified() {
        out.push(cgroup_v2(real_root));
        return out;
    }
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
            CgroupSupport::V2 { .. } | CgroupSupport::None => out.push(check(
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
        "as an ordinary user on a cgroup v1 host: rlimits (memory is RLIMIT_AS, address space; --cpus is not enforced; --strict-limits refuses)",
        Some("run as root for cgroup limits, or move the host to cgroup v2 (systemd.unified_cgroup_hierarchy=1)"),
    ));
    out
}

/// A pure cgroup v2 host: which cgroup the caller is in, whether it is delegated, which
/// controllers a run gets, and where runs' cgroups will go. Changes nothing (the final
/// probe run shows what a run really got).
fn cgroup_v2(real_root: bool) -> Check {
    const NAME: &str = "limits";
    let Some(own) = cgroup2::own_path() else {
        return check(
            NAME,
            Level::Warn,
            "cgroup v2, but /proc/self/cgroup has no cgroup v2 line: rlimits only",
            None,
        );
    };
    let systemd = cgroup2::systemd_booted();
    let view = cgroup2::View {
        root: Path::new(cgroup2::ROOT),
        own: &own,
        euid: sys::euid(),
        real_root,
        systemd,
        ask_systemd: true,
    };
    let ctl = |dir: &Path| cgroup2::controllers(dir).join(" ");
    match cgroup2::find_delegated(&view) {
        Ok(p) => check(
            NAME,
            if p.cpu { Level::Ok } else { Level::Warn },
            format!(
                "cgroup v2: you are in {own}, delegated to you (controllers: {}); each run's cgroup goes under {}{}",
                ctl(&p.dir),
                p.dir.display(),
                if p.cpu {
                    ""
                } else {
                    "; no cpu controller: --cpus is not enforced"
                }
            ),
            (!p.cpu)
                .then_some("delegate the cpu controller too (systemd: Delegate=cpu memory pids)"),
        ),
        Err(why) if real_root => check(
            NAME,
            Level::Ok,
            format!(
                "cgroup v2 as root: you are in {own} ({why}); {}",
                if systemd {
                    "each run asks systemd for a delegated scope in pysandbox.slice, removed when the run ends"
                } else {
                    "runs' cgroups go under /sys/fs/cgroup/pysandbox, removed when empty"
                }
            ),
            None,
        ),
        Err(why) if systemd => {
            let bus = Path::new(&format!("/run/user/{}/bus", sys::euid())).exists()
                || std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some();
            if bus {
                check(
                    NAME,
                    Level::Ok,
                    format!(
                        "cgroup v2: you are in {own} ({why}); each run asks your systemd user manager for a delegated scope (see the sandbox line for what it got)"
                    ),
                    Some(
                        "to skip that per run, start pysandbox in a delegated scope: systemd-run --user --scope -p Delegate=yes pysandbox ...",
                    ),
                )
            } else {
                check(
                    NAME,
                    Level::Warn,
                    format!(
                        "cgroup v2: you are in {own} ({why}) and have no systemd user manager to ask for a delegated scope: rlimits only (memory is RLIMIT_AS; --cpus is not enforced)"
                    ),
                    Some("loginctl enable-linger $USER (then log in again), or run as root"),
                )
            }
        }
        Err(why) => check(
            NAME,
            Level::Warn,
            format!(
                "cgroup v2: you are in {own} ({why}): rlimits only (memory is RLIMIT_AS; --cpus is not enforced)"
            ),
            Some(
                "have root delegate a cgroup to you (chown it and its cgroup.procs, cgroup.subtree_control; memory pids cpu enabled in its parent), then start pysandbox from inside it; or run as root",
            ),
        ),
    }
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
    match crate::image::default::describe() {
        Ok(desc) => check("default image", Level::Ok, desc, None),
        Err(e) => check(
            "default image",
            Level::Fail,
            e.to_string(),
            Some("install python3 or set PYSANDBOX_PYTHON; or pass --image DIR"),
        ),
    }
}

fn mechanism(m: &crate::report::Mechanism) -> String {
    serde_json::to_value(m)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{m:?}"))
}

/// Every check, then a real run. Call from a single-threaded process (the final run
/// enters namespaces).
pub fn run_checks() -> Vec<Check> {
    let k = kernel();
    if k.level == Level::Fail {
        // Nothing else can work on it: say so at once, before any image work.
        return vec![k];
    }
    let mut out = vec![k, user_namespaces()];
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
        // A CPU share, so that the report says what would enforce --cpus.
        p.limits.cpus = Some(1.0);
        p.stdin = crate::policy::StdinSource::Null;
        let t = std::time::Instant::now();
        out.push(match crate::run_in_this_process(&p) {
            Ok(r) if r.stdout.text == "ok\n" => check(
                "sandbox",
                Level::Ok,
                format!(
                    "a script ran in a sandbox ({} ms, {}; memory and pids limits by {}, --cpus by {})",
                    t.elapsed().as_millis(),
                    r.image,
                    mechanism(&r.limits.memory_bytes.mechanism),
                    mechanism(&r.limits.cpus.mechanism),
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
