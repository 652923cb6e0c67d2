//! The syscall filter: loads the BPF that `build.rs` compiled from `seccomp/<arch>.json`,
//! installs it (the executor calls [`install`] as the last step before exec), and names
//! syscalls by number. The policy itself is data: see `seccomp/README.md`.
//!
//! Three filters are stacked: `sandbox`, an allow-list whose default is `EPERM`;
//! `clone3_enosys`, which answers `clone3` with `ENOSYS` so glibc falls back to `clone`,
//! whose flags the allow-list can check; and `socket_eafnosupport`, which answers
//! `socket()` of a family the allow-list never allows with `EAFNOSUPPORT` (what a kernel
//! without that family says), so code written for such hosts falls back. The later
//! filters are installed after the allow-list, so their errno wins over its `EPERM`
//! (equal precedence: the newest filter wins); they only ever turn a refusal into another
//! refusal, never allow anything. With `--seccomp-log` the allow-list's default
//! becomes "ask pysandbox" (`SECCOMP_RET_USER_NOTIF`): pysandbox records the syscall and
//! answers `EPERM`, so the script sees exactly what it would have seen.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

static SANDBOX_BPF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seccomp_sandbox.bpf"));
static CLONE3_BPF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seccomp_clone3_enosys.bpf"));
static SOCKET_FAMILY_BPF: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/seccomp_socket_eafnosupport.bpf"));
static PROXY_BPF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seccomp_proxy.bpf"));
static SYSCALL_NAMES: &[(u32, &str)] = include!(concat!(env!("OUT_DIR"), "/syscall_names.rs"));

const RET_ERRNO_EPERM: u32 = 0x0005_0000 | libc::EPERM as u32;
const BPF_RET_K: u16 = 0x06;

/// A BPF program ready for seccomp(2).
#[derive(Debug, Clone)]
pub struct Program(Vec<libc::sock_filter>);

fn decode(bytes: &[u8]) -> Program {
    Program(
        bytes
            .chunks_exact(8)
            .map(|c| libc::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect(),
    )
}

/// The compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub sandbox: Program,
    pub clone3: Program,
    pub socket_family: Program,
    /// The allow-list's default action is a user notification (`--seccomp-log`).
    pub notify: bool,
}

impl Policy {
    /// The embedded policy; with `notify`, refusals go to a listener instead of `EPERM`.
    pub fn load(notify: bool) -> Policy {
        let mut sandbox = decode(SANDBOX_BPF);
        if notify {
            for ins in &mut sandbox.0 {
                if ins.code == BPF_RET_K && ins.k == RET_ERRNO_EPERM {
                    ins.k = libc::SECCOMP_RET_USER_NOTIF;
                }
            }
        }
        Policy {
            sandbox,
            clone3: decode(CLONE3_BPF),
            socket_family: decode(SOCKET_FAMILY_BPF),
            notify,
        }
    }
}

fn seccomp_filter(prog: &Program, flags: libc::c_ulong) -> io::Result<libc::c_long> {
    let fprog = libc::sock_fprog {
        len: prog.0.len() as libc::c_ushort,
        filter: prog.0.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: fprog points at a live, well-formed program for the duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Installs the policy on the calling process (and what it forks). Requires
/// `no_new_privs`. Returns the notification listener when `policy.notify`.
pub fn install(policy: &Policy) -> io::Result<Option<OwnedFd>> {
    let flags = if policy.notify {
        libc::SECCOMP_FILTER_FLAG_NEW_LISTENER
    } else {
        0
    };
    let r = seccomp_filter(&policy.sandbox, flags)?;
    seccomp_filter(&policy.clone3, 0)?;
    seccomp_filter(&policy.socket_family, 0)?;
    // SAFETY: with NEW_LISTENER, the kernel returned a fresh descriptor.
    Ok(policy
        .notify
        .then(|| unsafe { OwnedFd::from_raw_fd(r as libc::c_int) }))
}

/// Installs the `--allow-net` proxy's filter (`proxy` in `seccomp/<arch>.json`) on the
/// calling process and the threads it starts. Requires `no_new_privs`.
pub fn install_proxy_filter() -> io::Result<()> {
    seccomp_filter(&decode(PROXY_BPF), 0).map(|_| ())
}

/// The name of syscall `nr` on this architecture ("syscall 451" if unknown).
pub fn syscall_name(nr: i32) -> String {
    SYSCALL_NAMES
        .binary_search_by_key(&(nr as u32), |e| e.0)
        .map(|i| SYSCALL_NAMES[i].1.to_string())
        .unwrap_or_else(|_| format!("syscall {nr}"))
}

/// Every syscall the kernel headers of the build machine know: `(number, name)`.
pub fn syscall_table() -> &'static [(u32, &'static str)] {
    SYSCALL_NAMES
}

/// Receives one notification from `listener`, answers it with `EPERM`, and returns the
/// syscall number. `Ok(None)` when the notifying task went away meanwhile.
pub fn answer_one(listener: &OwnedFd) -> io::Result<Option<i32>> {
    use std::os::fd::AsRawFd;
    // SAFETY: zeroed plain-old-data structs, as the kernel requires for RECV.
    let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
    // SAFETY: ioctl with a correctly sized out-struct on our listener.
    let r = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_RECV,
            &mut req as *mut libc::seccomp_notif,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::EINTR) => Ok(None),
            _ => Err(e),
        };
    }
    let mut resp = libc::seccomp_notif_resp {
        id: req.id,
        val: 0,
        error: -libc::EPERM,
        flags: 0,
    };
    // SAFETY: ioctl with a correctly sized struct; ENOENT means the task is gone.
    unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_SEND,
            &mut resp as *mut libc::seccomp_notif_resp,
        )
    };
    Ok(Some(req.data.nr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_policy_is_well_formed() {
        let p = Policy::load(false);
        assert!(p.sandbox.0.len() > 100, "allow-list compiled");
        assert!(!p.clone3.0.is_empty());
        assert!(!p.socket_family.0.is_empty());
        // The allow-list's default is EPERM, and nothing else returns it.
        let eperm = p
            .sandbox
            .0
            .iter()
            .filter(|i| i.code == BPF_RET_K && i.k == RET_ERRNO_EPERM)
            .count();
        assert!(eperm >= 1);
        let n = Policy::load(true);
        assert!(
            n.sandbox
                .0
                .iter()
                .all(|i| !(i.code == BPF_RET_K && i.k == RET_ERRNO_EPERM))
        );
        assert_eq!(
            n.sandbox
                .0
                .iter()
                .filter(|i| i.code == BPF_RET_K && i.k == libc::SECCOMP_RET_USER_NOTIF)
                .count(),
            eperm
        );
    }

    #[test]
    fn names() {
        if syscall_table().is_empty() {
            eprintln!("no kernel headers at build time: syscall names unavailable");
            return;
        }
        assert_eq!(syscall_name(libc::SYS_mount as i32), "mount");
        assert_eq!(syscall_name(libc::SYS_unshare as i32), "unshare");
        assert_eq!(syscall_name(100_000), "syscall 100000");
    }
}
