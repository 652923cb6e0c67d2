//! The output folder, capped. The sandbox writes into an overlay whose lower layer is a
//! read-only view of the host folder (so existing files are visible) and whose upper
//! layer is a tmpfs of `--output-limit` bytes (so the script cannot fill the host's disk:
//! it gets ENOSPC). When the sandbox is gone, pysandbox merges the upper layer into the
//! host folder: new and changed files, removals (overlay whiteouts), replaced folders.
//!
//! The merge runs after every process of the sandbox is dead, so nothing races it; on the
//! host side it never follows a symlink (every step is `*at()` on directory descriptors
//! opened with `O_NOFOLLOW`, files land through a temporary name and `renameat`).

use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};

use super::RuntimeError;
use super::host::{self, Staging};
use crate::spec::HostIds;

/// A staged, capped output folder.
pub struct OutputOverlay {
    /// The tmpfs holding upper/ and work/.
    area: PathBuf,
    /// The host folder, opened without following a symlink.
    host: OwnedFd,
    /// Overlay xattr namespace: `user.` in a user namespace, `trusted.` as real root.
    xattr_prefix: &'static str,
    /// Who new host files belong to (a sudo caller), when not pysandbox's own ids.
    owner: Option<HostIds>,
}

/// What the merge did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Merged {
    pub files: u64,
    pub bytes: u64,
    pub removed: u64,
    pub failed: u64,
    /// The upper layer was full: the script hit `--output-limit`.
    pub full: bool,
}

fn stage_err(path: &Path) -> impl FnOnce(io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Stage {
        path: path.to_owned(),
        source,
    }
}

fn cstr(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

impl OutputOverlay {
    /// Mounts the overlay at `target` (an empty dir), with its tmpfs at `area`.
    /// `upper_owner`: who the sandbox is on the host, as real root (the upper layer's root
    /// must be theirs); `None` in a user namespace of pysandbox's own.
    #[allow(clippy::too_many_arguments)]
    pub fn stage(
        stage: &Staging,
        host_out: &Path,
        target: &Path,
        area: &Path,
        limit: u64,
        rootless: bool,
        upper_owner: Option<HostIds>,
        new_file_owner: Option<HostIds>,
    ) -> Result<OutputOverlay, RuntimeError> {
        let host = {
            let p = cstr(host_out.as_os_str().as_bytes()).map_err(stage_err(host_out))?;
            // SAFETY: valid C string; the descriptor is owned below.
            let fd = unsafe {
                libc::open(
                    p.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(stage_err(host_out)(io::Error::last_os_error()));
            }
            // SAFETY: fresh descriptor.
            unsafe { OwnedFd::from_raw_fd(fd) }
        };
        host::mkdir(area, 0o711)?;
        let size = format!("size={},nr_inodes=1048576,mode=0711", limit);
        mount(
            Some("tmpfs"),
            area,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(size.as_str()),
        )
        .map_err(|e| stage_err(area)(e.into()))?;
        let (lower, upper, work) = (area.join("lower"), area.join("upper"), area.join("work"));
        for d in [&lower, &upper, &work] {
            host::mkdir(d, 0o755)?;
        }
        if let Some(ids) = upper_owner {
            std::os::unix::fs::chown(&upper, Some(ids.uid), Some(ids.gid))
                .map_err(stage_err(&upper))?;
        }
        stage.dir(host_out, &lower, false, true)?;
        mount_overlay(&lower, &upper, &work, target, rootless)?;
        Ok(OutputOverlay {
            area: area.to_owned(),
            host,
            xattr_prefix: if rootless { "user." } else { "trusted." },
            owner: new_file_owner,
        })
    }

    /// Merges the upper layer into the host folder. Call only once the sandbox is dead.
    pub fn merge(&self) -> Merged {
        let mut m = Merged::default();
        // SAFETY: zeroed statvfs is a valid out-buffer.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if let Ok(p) = cstr(self.area.as_os_str().as_bytes()) {
            // SAFETY: valid C string and out-pointer.
            if unsafe { libc::statvfs(p.as_ptr(), &mut st) } == 0 {
                // Full in blocks or inodes (tmpfs keeps nothing in reserve).
                m.full = st.f_bavail == 0 || st.f_favail == 0;
            }
        }
        self.merge_dir(&self.area.join("upper"), self.host.as_raw_fd(), &mut m);
        m
    }

    fn merge_dir(&self, upper: &Path, host: RawFd, m: &mut Merged) {
        let Ok(rd) = fs::read_dir(upper) else {
            m.failed += 1;
            return;
        };
        for ent in rd.flatten() {
            let name = ent.file_name();
            let src = ent.path();
            if let Err(_e) = self.merge_entry(&src, &name, host, m) {
                m.failed += 1;
            }
        }
    }

    fn merge_entry(&self, src: &Path, name: &OsStr, host: RawFd, m: &mut Merged) -> io::Result<()> {
        let meta = fs::symlink_metadata(src)?;
        let ft = meta.file_type();
        let cname = cstr(name.as_bytes())?;
        if ft.is_char_device() && meta.rdev() == 0 {
            // A whiteout: the script removed this entry.
            if remove_at(host, &cname)? {
                m.removed += 1;
            }
            return Ok(());
        }
        if ft.is_dir() {
            if self.is_opaque(src) {
                remove_at(host, &cname)?; // the script replaced the folder wholesale
            }
            let mode = meta.permissions().mode() & 0o777;
            let dir = open_or_make_dir(host, &cname, mode)?;
            if let Some(ids) = self.owner {
                // SAFETY: fchown on a live descriptor.
                unsafe { libc::fchown(dir.as_raw_fd(), ids.uid, ids.gid) };
            }
            self.merge_dir(src, dir.as_raw_fd(), m);
            // SAFETY: fchmod on a live descriptor.
            unsafe { libc::fchmod(dir.as_raw_fd(), mode) };
            return Ok(());
        }
        let tmp = cstr(format!(".pysandbox-{}", std::process::id()).as_bytes())?;
        // SAFETY: unlinkat of our own temporary name (leftover of a failed step).
        unsafe { libc::unlinkat(host, tmp.as_ptr(), 0) };
        if ft.is_file() {
            let mode = meta.permissions().mode() & 0o777;
            // SAFETY: openat relative to a directory descriptor, never following.
            let fd = unsafe {
                libc::openat(
                    host,
                    tmp.as_ptr(),
                    libc::O_WRONLY
                        | libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    mode,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: fresh descriptor.
            let mut dst = fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
            let mut from = fs::File::open(src)?;
            let n = io::copy(&mut from, &mut dst)?;
            let _ = dst.set_modified(meta.modified()?);
            if let Some(ids) = self.owner {
                // SAFETY: fchown on a live descriptor.
                unsafe { libc::fchown(dst.as_raw_fd(), ids.uid, ids.gid) };
            }
            // SAFETY: fchmod on a live descriptor (umask-free final mode).
            unsafe { libc::fchmod(dst.as_raw_fd(), mode) };
            drop(dst);
            self.replace(host, &tmp, &cname)?;
            m.files += 1;
            m.bytes += n;
        } else if ft.is_symlink() {
            let target = fs::read_link(src)?;
            let t = cstr(target.as_os_str().as_bytes())?;
            // SAFETY: symlinkat with valid C strings relative to a directory descriptor.
            if unsafe { libc::symlinkat(t.as_ptr(), host, tmp.as_ptr()) } != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(ids) = self.owner {
                // SAFETY: fchownat without following the new link.
                unsafe {
                    libc::fchownat(
                        host,
                        tmp.as_ptr(),
                        ids.uid,
                        ids.gid,
                        libc::AT_SYMLINK_NOFOLLOW,
                    )
                };
            }
            self.replace(host, &tmp, &cname)?;
            m.files += 1;
        }
        // FIFOs, sockets and device nodes are not results: skipped.
        Ok(())
    }

    /// Moves `tmp` over `name` in `host`; a folder in the way is removed first.
    fn replace(&self, host: RawFd, tmp: &CString, name: &CString) -> io::Result<()> {
        // SAFETY: renameat within one directory descriptor; it never follows `name`.
        let mut r = unsafe { libc::renameat(host, tmp.as_ptr(), host, name.as_ptr()) };
        if r != 0 {
            let e = io::Error::last_os_error();
            if matches!(
                e.raw_os_error(),
                Some(libc::EISDIR) | Some(libc::ENOTEMPTY) | Some(libc::EEXIST)
            ) {
                remove_at(host, name)?;
                // SAFETY: as above.
                r = unsafe { libc::renameat(host, tmp.as_ptr(), host, name.as_ptr()) };
            }
            if r != 0 {
                let e = io::Error::last_os_error();
                // SAFETY: removing our temporary name.
                unsafe { libc::unlinkat(host, tmp.as_ptr(), 0) };
                return Err(e);
            }
        }
        Ok(())
    }

    fn is_opaque(&self, dir: &Path) -> bool {
        let (Ok(p), Ok(n)) = (
            cstr(dir.as_os_str().as_bytes()),
            cstr(format!("{}overlay.opaque", self.xattr_prefix).as_bytes()),
        ) else {
            return false;
        };
        let mut v = [0u8; 4];
        // SAFETY: lgetxattr into a stack buffer of the given size.
        let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        r == 1 && v[0] == b'y'
    }
}

/// Build mode: mounts a writable overlay at `target` whose lower layer is the image
/// directory `lower_src` (read-only) and whose upper layer is `dir/upper` on disk (the
/// image build turns it into a layer).
pub fn stage_layer(
    stage: &Staging,
    lower_src: &Path,
    dir: &Path,
    target: &Path,
    rootless: bool,
    upper_owner: Option<HostIds>,
) -> Result<(), RuntimeError> {
    let lower = target.with_extension("lower");
    host::mkdir(&lower, 0o755)?;
    // Id-mapped when the staging has a mapping (root): the image's root-owned files then
    // belong to the sandbox, which may replace them in the upper layer.
    stage.dir(lower_src, &lower, false, true)?;
    let (upper, work) = (dir.join("upper"), dir.join("work"));
    for d in [&upper, &work] {
        match fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(stage_err(d)(e)),
        }
    }
    if let Some(ids) = upper_owner {
        std::os::unix::fs::chown(&upper, Some(ids.uid), Some(ids.gid))
            .map_err(stage_err(&upper))?;
    }
    mount_overlay(&lower, &upper, &work, target, rootless)
}

/// Mounts an overlay at `target` (nosuid, nodev). In a user namespace of pysandbox's own
/// its whiteouts and opaque markers use `user.` xattrs (`userxattr`).
fn mount_overlay(
    lower: &Path,
    upper: &Path,
    work: &Path,
    target: &Path,
    rootless: bool,
) -> Result<(), RuntimeError> {
    let mut opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    if rootless {
        opts.push_str(",userxattr");
    }
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(|e| RuntimeError::Host {
        step: "mounting an overlay",
        source: e.into(),
        hint: "the kernel needs overlayfs (in user namespaces: Linux 5.11+), and the upper layer a file system overlayfs accepts",
    })
}

/// Opens `name` in `dir` as a directory without following a symlink; anything else in
/// the way (file, symlink) is removed and a directory made.
fn open_or_make_dir(dir: RawFd, name: &CString, mode: u32) -> io::Result<OwnedFd> {
    match open_dir_at(dir, name) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(_) => {
            remove_at(dir, name)?;
        }
    }
    // SAFETY: mkdirat relative to a directory descriptor.
    if unsafe { libc::mkdirat(dir, name.as_ptr(), mode) } != 0 {
        return Err(io::Error::last_os_error());
    }
    open_dir_at(dir, name)
}

/// Opens directory `name` in `dir`, never following a symlink.
fn open_dir_at(dir: RawFd, name: &CString) -> io::Result<OwnedFd> {
    // SAFETY: openat relative to a directory descriptor, never following.
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Removes `name` from `dir` (recursively for a folder, never following a symlink).
/// Returns whether something was there.
fn remove_at(dir: RawFd, name: &CString) -> io::Result<bool> {
    // SAFETY: zeroed stat is a valid out-buffer; fstatat does not follow.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENOENT) {
            Ok(false)
        } else {
            Err(e)
        };
    }
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        let sub = open_dir_at(dir, name)?;
        let names: Vec<CString> = fs::read_dir(format!("/proc/self/fd/{}", sub.as_raw_fd()))?
            .flatten()
            .filter_map(|e| cstr(e.file_name().as_bytes()).ok())
            .collect();
        for n in names {
            remove_at(sub.as_raw_fd(), &n)?;
        }
        // SAFETY: unlinkat of an emptied directory.
        if unsafe { libc::unlinkat(dir, name.as_ptr(), libc::AT_REMOVEDIR) } != 0 {
            return Err(io::Error::last_os_error());
        }
    } else {
        // SAFETY: unlinkat of a non-directory.
        if unsafe { libc::unlinkat(dir, name.as_ptr(), 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(true)
}
