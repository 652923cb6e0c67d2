//! flock-based locks: the one helper every lock file of pysandbox goes through (the image
//! store, the default image, the per-run lock files).

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Takes a flock (`LOCK_SH`, `LOCK_EX`, with or without `LOCK_NB`, or `LOCK_UN`) on `f`,
/// retrying when a signal interrupts the wait. Released when the file is closed.
pub fn flock(f: &File, how: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock on a live descriptor.
        if unsafe { libc::flock(f.as_raw_fd(), how) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Opens (creating, mode 0600) the lock file `path` and flocks it.
pub fn lock_file(path: &Path, how: libc::c_int) -> io::Result<File> {
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)?;
    flock(&f, how)?;
    Ok(f)
}
