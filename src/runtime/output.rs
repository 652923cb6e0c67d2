//! The output folder, capped. The sandbox writes into an overlay whose lower layer is a
//! read-only view of the host folder (so existing files are visible) and whose upper
//! layer is a tmpfs of `--output-limit` bytes (so the script cannot fill the host's disk:
//! it gets ENOSPC). When the sandbox is gone, pysandbox merges the upper layer into the
//! host folder: new and changed files, removals (overlay whiteouts), replaced folders.
//!
//! The merge runs after every process of the sandbox is dead, so nothing races it; on the
//! host side it never follows a symlink (every step is `*at()` on directory descriptors
//! opened with `O_NOFOLLOW`, files land through a temporary name and `renameat`).

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};

use super::RuntimeError;
use super::host::{self, Staging};
use crate::spec::HostIds;
use crate::sys::{
    self,
    fs::{open_at, open_dir_at, remove_tree},
};

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
    /// `--output-limit`: what the merge may put on the host.
    limit: u64,
}

/// What the merge did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Merged {
    pub files: u64,
    /// What the merged entries take on the host file system, as it counts them (allocated
    /// blocks, and at least [`ENTRY_COST`] per entry).
    pub bytes: u64,
    pub removed: u64,
    pub failed: u64,
    /// Entries left out because merging them would have put more than `--output-limit`
    /// on the host, or they lie deeper than [`MAX_DEPTH`].
    pub dropped: u64,
    /// The script hit `--output-limit` (the upper layer filled up, or entries were dropped).
    pub full: bool,
    /// Symbolic links left out because they point outside the output folder.
    pub escaping_links: u64,
}

/// What one entry costs at least on the host, whatever its size: its inode and its name
/// in a folder. The output tmpfs holds at most `limit / ENTRY_COST` inodes, so the script
/// meets ENOSPC for entries at the point the merge would stop taking them.
pub const ENTRY_COST: u64 = 4096;
/// Entries nested deeper than this below output/ are not merged.
pub const MAX_DEPTH: usize = 64;
/// Hard-linked files remembered (one open descriptor each) so that their further names
/// become links on the host too; past this, further names are copies (and charged).
const MAX_LINKED: usize = 256;

/// The output tmpfs's inode cap for `limit` bytes (see [`ENTRY_COST`]).
pub fn inode_cap(limit: u64) -> u64 {
    (limit / ENTRY_COST).clamp(64, 1 << 20)
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
    pub fn stage(
        stage: &Staging,
        host_out: &Path,
        target: &Path,
        area: &Path,
        limit: u64,
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
        let size = format!("size={limit},nr_inodes={},mode=0711", inode_cap(limit));
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
        stage.dir(host_out, &lower, false, true)?;
        writable_overlay(stage, &lower, &upper, &work, target, upper_owner)?;
        Ok(OutputOverlay {
            area: area.to_owned(),
            host,
            xattr_prefix: if stage.rootless { "user." } else { "trusted." },
            owner: new_file_owner,
            limit,
        })
    }

    /// Merges the upper layer into the host folder. Call only once the sandbox is dead.
    ///
    /// Bounded by `--output-limit` as the host's file system counts it: holes stay holes,
    /// hard links stay links, and every entry is charged what it takes on the host
    /// (measured after it is written, at least [`ENTRY_COST`]). An entry that would cross
    /// the limit is left out whole (files land under a temporary name and are renamed
    /// only when complete), and so is anything deeper than [`MAX_DEPTH`].
    pub fn merge(&self) -> Merged {
        self.merge_to(self.host.as_fd(), false)
    }

    /// As [`OutputOverlay::merge`], files without execute bits (a kept run's state).
    pub fn merge_data_only(&self) -> Merged {
        self.merge_to(self.host.as_fd(), true)
    }

    /// As [`OutputOverlay::merge`], into another host folder (a kept run's copy of the
    /// output); `data_only`: files land without execute bits.
    pub fn merge_to(&self, host: BorrowedFd, data_only: bool) -> Merged {
        let mut run = MergeRun {
            overlay: self,
            data_only,
            m: Merged::default(),
            links: HashMap::new(),
            tmp: cstr(format!(".pysandbox-merge-{}", std::process::id()).as_bytes())
                .expect("no NUL in a number"),
        };
        if let Ok(st) = nix::sys::statvfs::statvfs(&self.area) {
            // Full in blocks or inodes (tmpfs keeps nothing in reserve).
            run.m.full = st.blocks_available() == 0 || st.files_available() == 0;
        }
        let upper = cstr(self.area.join("upper").as_os_str().as_bytes());
        match upper.and_then(|u| sys::fs::open_path_dir(Path::new(OsStr::from_bytes(u.as_bytes()))))
        {
            Ok(upper) => run.dir(&upper, host, 0),
            Err(_) => run.m.failed += 1,
        }
        if run.m.dropped > 0 {
            run.m.full = true;
        }
        run.m
    }
}

/// One merge in progress.
struct MergeRun<'a> {
    overlay: &'a OutputOverlay,
    /// Files land without execute bits (kept runs: data, never programs for the host).
    data_only: bool,
    m: Merged,
    /// Upper-layer inode -> the host file merged for it (for further hard links).
    links: HashMap<u64, fs::File>,
    /// The temporary name files take in their host folder until complete.
    tmp: CString,
}

impl MergeRun<'_> {
    fn dir(&mut self, upper: &OwnedFd, host: BorrowedFd, depth: usize) {
        // Streamed, not collected: the upper layer does not change during the merge, and
        // a folder of a quarter of a million long names stays out of memory.
        let Ok(rd) = fs::read_dir(format!("/proc/self/fd/{}", upper.as_raw_fd())) else {
            self.m.failed += 1;
            return;
        };
        for ent in rd {
            let done = ent
                .and_then(|e| cstr(e.file_name().as_bytes()))
                .and_then(|name| self.entry(upper, &name, host, depth));
            if done.is_err() {
                self.m.failed += 1;
            }
        }
    }

    /// Charges `cost` bytes if they fit; otherwise counts the entry as dropped.
    fn charge(&mut self, cost: u64) -> bool {
        if self.m.bytes.saturating_add(cost) > self.overlay.limit {
            self.m.dropped += 1;
            false
        } else {
            self.m.bytes += cost;
            true
        }
    }

    fn entry(
        &mut self,
        upper: &OwnedFd,
        name: &CString,
        host: BorrowedFd,
        depth: usize,
    ) -> io::Result<()> {
        let st = nix::sys::stat::fstatat(
            Some(upper.as_raw_fd()),
            name.as_c_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
        let kind = st.st_mode & libc::S_IFMT;
        if kind == libc::S_IFCHR && st.st_rdev == 0 {
            // A whiteout: the script removed this entry.
            if remove_tree(host, name)? {
                self.m.removed += 1;
            }
            return Ok(());
        }
        if kind == libc::S_IFDIR {
            return self.merge_dir(upper, name, host, depth, &st);
        }
        // unlinkat of our own temporary name (leftover of a failed step).
        let _ = sys::fs::unlinkat(host, &self.tmp, 0);
        if kind == libc::S_IFREG {
            self.merge_file(upper, name, host, &st)?;
        } else if kind == libc::S_IFLNK {
            self.merge_symlink(upper, name, host, depth)?;
        }
        // FIFOs, sockets and device nodes are not results: skipped.
        Ok(())
    }

    /// A folder: made on the host if missing (charged as an entry), then merged into.
    fn merge_dir(
        &mut self,
        upper: &OwnedFd,
        name: &CString,
        host: BorrowedFd,
        depth: usize,
        st: &libc::stat,
    ) -> io::Result<()> {
        if depth >= MAX_DEPTH {
            self.m.dropped += 1;
            return Ok(());
        }
        let src = open_dir_at(upper.as_fd(), name)?;
        if self.overlay.is_opaque(&src) {
            remove_tree(host, name)?; // the script replaced the folder wholesale
        }
        let mode = safe_mode(st.st_mode, true);
        let dir = match open_dir_at(host, name) {
            Ok(d) => d,
            Err(_) => {
                if !self.charge(ENTRY_COST) {
                    return Ok(());
                }
                open_or_make_dir(host, name, mode)?
            }
        };
        self.chown(&dir);
        self.dir(&src, dir.as_fd(), depth + 1);
        // SAFETY: fchmod on a live descriptor.
        unsafe { libc::fchmod(dir.as_raw_fd(), mode) };
        Ok(())
    }

    /// A regular file: a further hard link to a file merged already, else a copy.
    fn merge_file(
        &mut self,
        upper: &OwnedFd,
        name: &CString,
        host: BorrowedFd,
        st: &libc::stat,
    ) -> io::Result<()> {
        let host_raw = host.as_raw_fd();
        if st.st_nlink > 1
            && let Some(first) = self.links.get(&st.st_ino).map(|f| f.as_raw_fd())
        {
            if !self.charge(ENTRY_COST) {
                return Ok(());
            }
            let from = cstr(format!("/proc/self/fd/{first}").as_bytes())?;
            // SAFETY: linkat through /proc/self/fd (no capability needed, unlike
            // AT_EMPTY_PATH) to a temporary name in a directory descriptor.
            if unsafe {
                libc::linkat(
                    libc::AT_FDCWD,
                    from.as_ptr(),
                    host_raw,
                    self.tmp.as_ptr(),
                    libc::AT_SYMLINK_FOLLOW,
                )
            } == 0
            {
                self.replace(host_raw, name)?;
                self.m.files += 1;
                return Ok(());
            }
            self.m.bytes -= ENTRY_COST; // fall back to a copy, charged as one
        }
        self.copy_file(upper, name, host, st)
    }

    /// Copies a file under the temporary name, charged first by what the upper layer
    /// holds, then by what the host counts; renamed over `name` only if it fits.
    fn copy_file(
        &mut self,
        upper: &OwnedFd,
        name: &CString,
        host: BorrowedFd,
        st: &libc::stat,
    ) -> io::Result<()> {
        // What the upper layer holds is what the host will hold (holes stay holes).
        let estimate = (st.st_blocks as u64 * 512).max(ENTRY_COST);
        if !self.charge(estimate) {
            return Ok(());
        }
        let from = fs::File::from(open_at(
            upper.as_fd(),
            name,
            libc::O_RDONLY | libc::O_NOFOLLOW,
            0,
        )?);
        let mode = safe_mode(st.st_mode, false) & if self.data_only { 0o666 } else { 0o777 };
        let dst = fs::File::from(open_at(
            host,
            &self.tmp,
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            mode,
        )?);
        let written = copy_sparse(&from, &dst, st.st_size as u64).and_then(|()| {
            let when = std::time::UNIX_EPOCH
                + std::time::Duration::new(st.st_mtime as u64, st.st_mtime_nsec as u32);
            let _ = dst.set_modified(when);
            self.chown(&dst);
            // SAFETY: fchmod on a live descriptor (umask-free final mode).
            unsafe { libc::fchmod(dst.as_raw_fd(), mode) };
            dst.metadata()
        });
        let actual = match written {
            Ok(meta) => (meta.blocks() * 512).max(ENTRY_COST),
            Err(e) => {
                // removing our temporary name.
                let _ = sys::fs::unlinkat(host, &self.tmp, 0);
                self.m.bytes -= estimate;
                return Err(e);
            }
        };
        // The host may count more than the upper layer did (no holes there, say).
        self.m.bytes -= estimate;
        if !self.charge(actual) {
            // removing our temporary name.
            let _ = sys::fs::unlinkat(host, &self.tmp, 0);
            return Ok(());
        }
        self.replace(host.as_raw_fd(), name)?;
        self.m.files += 1;
        if st.st_nlink > 1 && self.links.len() < MAX_LINKED {
            self.links.insert(st.st_ino, dst);
        }
        Ok(())
    }

    /// A symbolic link, unless it points outside the output folder.
    fn merge_symlink(
        &mut self,
        upper: &OwnedFd,
        name: &CString,
        host: BorrowedFd,
        depth: usize,
    ) -> io::Result<()> {
        if !self.charge(ENTRY_COST) {
            return Ok(());
        }
        let target = nix::fcntl::readlinkat(Some(upper.as_raw_fd()), name.as_c_str())?;
        if !stays_inside(Path::new(&target), depth) {
            // A link out of the folder would be a trap for whatever later writes to
            // or reads through it on the host (~/.ssh/authorized_keys...).
            self.m.bytes -= ENTRY_COST;
            self.m.escaping_links += 1;
            return Ok(());
        }
        let t = cstr(target.as_bytes())?;
        sys::fs::symlinkat(&t, host, &self.tmp)?;
        let host_raw = host.as_raw_fd();
        if let Some(ids) = self.overlay.owner {
            // SAFETY: fchownat without following the new link.
            unsafe {
                libc::fchownat(
                    host_raw,
                    self.tmp.as_ptr(),
                    ids.uid,
                    ids.gid,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
        }
        self.replace(host_raw, name)?;
        self.m.files += 1;
        Ok(())
    }

    fn chown(&self, f: &impl AsRawFd) {
        if let Some(ids) = self.overlay.owner {
            // SAFETY: fchown on a live descriptor.
            unsafe { libc::fchown(f.as_raw_fd(), ids.uid, ids.gid) };
        }
    }

    /// Moves the temporary name over `name` in `host`; a folder in the way is removed.
    fn replace(&self, host: RawFd, name: &CString) -> io::Result<()> {
        let tmp = &self.tmp;
        // SAFETY: renameat within one directory descriptor; it never follows `name`.
        let mut r = unsafe { libc::renameat(host, tmp.as_ptr(), host, name.as_ptr()) };
        if r != 0 {
            let e = io::Error::last_os_error();
            if matches!(
                e.raw_os_error(),
                Some(libc::EISDIR) | Some(libc::ENOTEMPTY) | Some(libc::EEXIST)
            ) {
                // SAFETY: `host` is a live directory descriptor of ours.
                remove_tree(unsafe { BorrowedFd::borrow_raw(host) }, name)?;
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
}

impl OutputOverlay {
    fn is_opaque(&self, dir: &OwnedFd) -> bool {
        let Ok(n) = cstr(format!("{}overlay.opaque", self.xattr_prefix).as_bytes()) else {
            return false;
        };
        let mut v = [0u8; 4];
        // SAFETY: fgetxattr into a stack buffer of the given size.
        let r =
            unsafe { libc::fgetxattr(dir.as_raw_fd(), n.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        r == 1 && v[0] == b'y'
    }
}

/// Whether symlink `target`, in a folder `depth` levels below the output folder, points
/// inside it: relative, its `..` only leading (they then climb real folders, never past
/// the output folder; a `..` after a name could climb out of wherever a symlink of that
/// name leads). Every merged link obeys this, so following any chain of them stays inside.
fn stays_inside(target: &Path, depth: usize) -> bool {
    use std::path::Component;
    let mut up = 0;
    let mut named = false;
    for c in target.components() {
        match c {
            Component::Normal(_) => named = true,
            Component::CurDir => {}
            Component::ParentDir if !named => up += 1,
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    up <= depth && !target.as_os_str().is_empty()
}

/// The mode a merged entry gets on the host: the script's permission bits, never set-id,
/// sticky or writable by others than the owner, and always usable by the owner.
fn safe_mode(mode: u32, dir: bool) -> u32 {
    (mode & 0o755) | if dir { 0o700 } else { 0o600 }
}

/// Copies `size` bytes of `from` into the empty `to`, reading and writing only the data
/// extents (a hole in `from` stays a hole in `to`).
fn copy_sparse(from: &fs::File, to: &fs::File, size: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let seek = |whence: libc::c_int, at: u64| -> io::Result<Option<u64>> {
        // SAFETY: lseek on a live descriptor.
        let r = unsafe { libc::lseek(from.as_raw_fd(), at as libc::off_t, whence) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::ENXIO) {
                Ok(None)
            } else {
                Err(e)
            };
        }
        Ok(Some(r as u64))
    };
    let mut buf = vec![0u8; 256 << 10];
    let mut at = 0;
    while at < size {
        let Some(start) = seek(libc::SEEK_DATA, at)? else {
            break;
        };
        let end = seek(libc::SEEK_HOLE, start)?.unwrap_or(size).min(size);
        let mut pos = start;
        while pos < end {
            let want = ((end - pos) as usize).min(buf.len());
            let n = from.read_at(&mut buf[..want], pos)?;
            if n == 0 {
                break;
            }
            to.write_all_at(&buf[..n], pos)?;
            pos += n as u64;
        }
        at = end.max(start + 1);
    }
    to.set_len(size)
}

/// Build mode: mounts a writable overlay at `target` whose lower layer is the image
/// directory `lower_src` (read-only) and whose upper layer is `dir/upper` on disk (the
/// image build turns it into a layer).
pub fn stage_layer(
    stage: &Staging,
    lower_src: &Path,
    dir: &Path,
    target: &Path,
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
    writable_overlay(stage, &lower, &upper, &work, target, upper_owner)
}

/// Mounts a writable overlay of `lower` at `target`; as real root, the upper layer's root
/// first becomes `upper_owner`'s (the sandbox's host ids), so the sandbox may write it.
fn writable_overlay(
    stage: &Staging,
    lower: &Path,
    upper: &Path,
    work: &Path,
    target: &Path,
    upper_owner: Option<HostIds>,
) -> Result<(), RuntimeError> {
    if let Some(ids) = upper_owner {
        std::os::unix::fs::chown(upper, Some(ids.uid), Some(ids.gid)).map_err(stage_err(upper))?;
    }
    sys::mount::mount_overlay(stage.base, &[lower], Some((upper, work)), target, stage.rootless).map_err(
        |e| RuntimeError::Host {
        step: "mounting an overlay",
        source: e,
            hint: "the kernel needs overlayfs (in user namespaces: Linux 5.11+), and the upper layer a file system overlayfs accepts",
        },
    )
}

/// Opens `name` in `dir` as a directory without following a symlink; anything else in
/// the way (file, symlink) is removed and a directory made.
fn open_or_make_dir(dir: BorrowedFd, name: &CStr, mode: u32) -> io::Result<OwnedFd> {
    match open_dir_at(dir, name) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(_) => {
            remove_tree(dir, name)?;
        }
    }
    sys::fs::mkdirat(dir, name, mode)?;
    open_dir_at(dir, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_that_stay_inside() {
        let inside = |t: &str, d| stays_inside(Path::new(t), d);
        assert!(inside("a", 0));
        assert!(inside("./a/b", 0));
        assert!(inside("../a", 1));
        assert!(inside("../../a/b", 2));
        assert!(!inside("../a", 0));
        assert!(!inside("/etc/passwd", 3));
        assert!(!inside("a/../../b", 5)); // `..` after a name: `a` may be a link
        assert!(!inside("s/..", 0));
        assert!(!inside("", 0));
    }

    #[test]
    fn modes_are_the_callers() {
        assert_eq!(safe_mode(0o104777, false), 0o755);
        assert_eq!(safe_mode(0o100000, false), 0o600);
        assert_eq!(safe_mode(0o41777, true), 0o755);
        assert_eq!(safe_mode(0o40000, true), 0o700);
        assert_eq!(inode_cap(1 << 30), 262144);
        assert_eq!(inode_cap(1), 64);
    }
}
