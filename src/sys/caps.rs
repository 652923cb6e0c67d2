//! Capabilities: emptying every set of this process.

use std::io;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}
const CAP_V3: u32 = 0x2008_0522;

// securebits: NOROOT, NO_SETUID_FIXUP (we clear by hand), KEEP_CAPS off, ambient raise
// forbidden; every one locked.
const SECUREBITS: libc::c_ulong = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80;

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Empties every capability set of this process (bounding and ambient included, with
/// securebits locked so uid 0 cannot regain them) and checks the result. Allocation-free:
/// the sandbox's init calls it between fork and exec.
pub fn drop_all_capabilities() -> io::Result<()> {
    // SAFETY: prctl/capset/capget with properly laid out buffers.
    unsafe {
        for cap in 0..64 {
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        check(libc::prctl(libc::PR_SET_SECUREBITS, SECUREBITS, 0, 0, 0))?;
        let hdr = CapHeader {
            version: CAP_V3,
            pid: 0,
        };
        let data = [CapData::default(); 2];
        check(libc::syscall(libc::SYS_capset, &hdr, data.as_ptr()) as libc::c_int)?;
        let mut hdr = CapHeader {
            version: CAP_V3,
            pid: 0,
        };
        let mut got = [CapData::default(); 2];
        check(libc::syscall(libc::SYS_capget, &mut hdr, got.as_mut_ptr()) as libc::c_int)?;
        let any = got
            .iter()
            .any(|d| d.effective | d.permitted | d.inheritable != 0);
        let bset_left = (0..64).any(|c| libc::prctl(libc::PR_CAPBSET_READ, c, 0, 0, 0) == 1);
        if any || bset_left {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
    }
    Ok(())
}
