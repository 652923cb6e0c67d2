//! Safe layer unpacking: applies image layers (tar streams, gzip-compressed or not) one on
//! top of the other in a directory, as whoever runs pysandbox, and never writes outside
//! that directory whatever the layers contain. Owns the rules for what a layer may do:
//!
//! - Paths are cleaned lexically: `/etc/x` is `etc/x` (Docker's rule), `a/../b` is `b`,
//!   and a `..` that would climb above the root is refused.
//! - Every name is reached from a descriptor of the root, one component at a time with
//!   `O_NOFOLLOW`; the final component is created with `*at` calls that never follow it.
//!   A symlink met on the way (an earlier entry or layer made it) is followed only by
//!   `openat2(RESOLVE_BENEATH)`, which the kernel refuses for absolute targets and for
//!   `..` that leaves the root: such an entry is refused.
//! - Hardlink targets are resolved the same way and linked with `linkat` without
//!   following; device nodes are skipped (and noted), FIFOs allowed; set-id bits are
//!   stripped and the owner always gets `rw` (files) or `rwx` (directories); tar owners
//!   and xattrs are ignored (everything belongs to the caller); mtimes are kept.
//! - Whiteouts `.wh.NAME` remove NAME from lower layers; `.wh..wh..opq` empties its
//!   directory of what lower layers put there, wherever it appears in the layer.
//! - Caps: decompressed bytes of all layers, entries, and the expansion ratio of a
//!   compressed layer (a decompression bomb stops early), extension headers of 1 MiB.
//!
//! Speed: entries stream straight into files through a 1 MiB buffer; a compressed layer
//! is decompressed (and its digest checked, by the reader the caller passes) on a second
//! thread; the chain of directory descriptors of the previous entry is kept, so most
//! entries cost one `openat` and no lookup from the root; nothing is fsynced.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use serde::{Deserialize, Serialize};

use super::store::Progress;
use crate::sys::fs::{
    RESOLVE_BENEATH, RESOLVE_NO_MAGICLINKS, create_file, cvt, fchmod, fchmodat, fstatat, linkat,
    list_dir, mkdirat, mkfifoat, open_dir_at, open_path_dir, openat2, remove_tree, symlinkat,
    unlinkat,
};

/// Longest path (after PAX/GNU long names) an entry may have.
const MAX_PATH_BYTES: usize = 4096;
/// Deepest path an entry may have.
const MAX_DEPTH: usize = 256;
/// Largest PAX or GNU long-name header read into memory.
const MAX_EXT_HEADER: u64 = 1 << 20;
/// Copy buffer and decompressed chunk size.
const CHUNK: usize = 1 << 20;
/// Deepest directory tree `remove_tree` walks (one descriptor per level).
/// At most this many skip notes are kept in the stats (all are counted).
const MAX_NOTES: usize = 100;

/// Limits of one unpack (all layers of an image together).
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Cap on the decompressed size of all layers (tar stream bytes). Default 16 GiB.
    pub max_bytes: u64,
    /// Cap on the number of tar entries of all layers. Default 2,000,000.
    pub max_entries: u64,
    /// Cap on decompressed / compressed bytes of one compressed layer (0: no cap),
    /// checked once it has produced `ratio_floor` bytes. Default 100.
    pub max_ratio: u64,
    /// Default 256 MiB: small layers may compress very well.
    pub ratio_floor: u64,
    /// Threads creating small files (creating files is what an unpack spends its time
    /// on; files of different directories are created in parallel). 0: none, all on the
    /// calling thread. Default: the number of CPUs, 2 to 4.
    pub writers: usize,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            max_bytes: 16 << 30,
            max_entries: 2_000_000,
            max_ratio: 100,
            ratio_floor: 256 << 20,
            writers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .clamp(2, 4),
        }
    }
}

/// What an unpack did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnpackStats {
    pub layers: u32,
    /// Tar entries read, extension headers included.
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub fifos: u64,
    pub whiteouts: u64,
    /// Bytes written into regular files.
    pub bytes: u64,
    /// Decompressed tar bytes read.
    pub stream_bytes: u64,
    /// Compressed bytes read (equal to `stream_bytes` for uncompressed layers).
    pub compressed_bytes: u64,
    /// Entries skipped (device nodes, unknown types), counted.
    pub skipped: u64,
    /// One note per skipped entry (the first 100).
    pub notes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("cannot unpack into {path}: {source}")]
    Dest { path: PathBuf, source: io::Error },
    #[error("layer {layer}: entry {entry:?} refused: {why}")]
    Refused {
        layer: String,
        entry: String,
        why: String,
    },
    #[error("layer {layer}: entry {entry:?}: {op} failed: {source}")]
    Io {
        layer: String,
        entry: String,
        op: &'static str,
        source: io::Error,
    },
    #[error(
        "layer {layer} is corrupt or truncated: {why}. Hint: pysandbox image rm the image and pull/import it again"
    )]
    Corrupt { layer: String, why: String },
    #[error(
        "layer {layer}: {why}; unpacking stopped (a decompression bomb?). Hint: raise the limit only for an image you trust"
    )]
    Limit { layer: String, why: String },
    #[error("layer {layer}: {why}")]
    Unsupported { layer: String, why: String },
}

#[derive(Debug, Clone, Copy)]
struct Time {
    sec: i64,
    nsec: i64,
}

#[derive(Debug, Clone, Copy)]
struct DirAttrs {
    mode: u32,
    mtime: Option<Time>,
}

/// Overrides carried by PAX and GNU extension headers for the next entry.
#[derive(Default)]
struct Ext {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    mtime: Option<Time>,
    size: Option<u64>,
    sparse: bool,
}

/// Applies layers to a directory. `new`, then `apply_blob`/`apply_tar` per layer, bottom
/// first, then `finish` (which sets directory modes and mtimes).
pub struct Unpacker {
    dest: PathBuf,
    root: Arc<OwnedFd>,
    opts: UnpackOptions,
    stats: UnpackStats,
    /// Final mode/mtime of every directory, applied by `finish` (creating entries inside
    /// a directory changes its mtime).
    dirs: HashMap<Vec<u8>, DirAttrs>,
    /// Descriptors of the directories of the previous entry's parent path.
    stack: Vec<(Vec<u8>, Arc<OwnedFd>)>,
    /// Paths (and their ancestors) the current layer has written: whiteouts only hide
    /// what lower layers put there.
    touched: HashSet<Vec<u8>>,
    buf: Vec<u8>,
    layer: String,
    /// Small-file writers, and the paths handed to them since the last barrier: an
    /// entry touching one of these (or below it) waits for the writers first.
    pool: Option<Pool>,
    pending: HashSet<Vec<u8>>,
}

impl Unpacker {
    /// Prepares to unpack into `dest`, an existing directory (normally empty).
    pub fn new(dest: &Path, opts: UnpackOptions) -> Result<Unpacker, UnpackError> {
        let root = open_path_dir(dest).map_err(|source| UnpackError::Dest {
            path: dest.to_owned(),
            source,
        })?;
        let opts_writers = opts.writers;
        Ok(Unpacker {
            dest: dest.to_owned(),
            root: Arc::new(root),
            opts,
            stats: UnpackStats::default(),
            dirs: HashMap::new(),
            stack: Vec::new(),
            touched: HashSet::new(),
            buf: vec![0; CHUNK],
            layer: String::new(),
            pool: (opts_writers > 0).then(|| Pool::new(opts_writers)),
            pending: HashSet::new(),
        })
    }

    /// Applies one layer given as an uncompressed tar stream. `layer` names it in errors.
    pub fn apply_tar(&mut self, layer: &str, tar: impl Read) -> Result<(), UnpackError> {
        self.begin(layer);
        let budget = self.opts.max_bytes.saturating_sub(self.stats.stream_bytes);
        let mut limited = CapReader {
            inner: tar,
            n: 0,
            cap: budget,
        };
        let r = self.apply_stream(&mut limited, &mut || {});
        let r = r.and(self.barrier());
        self.stats.stream_bytes += limited.n;
        self.stats.compressed_bytes += limited.n;
        if limited.n > budget {
            return Err(self.limit_err());
        }
        r?;
        // Read what follows the end-of-archive marker, so a caller's verifying reader
        // sees the whole blob.
        let drained = io::copy(&mut limited, &mut io::sink()).map_err(|e| self.corrupt(e));
        self.stats.stream_bytes += limited.n;
        drained?;
        Ok(())
    }

    /// Applies one layer blob: gzip or plain tar (recognized by its first bytes; zstd,
    /// xz and bzip2 are refused). The blob is read and decompressed on a second thread;
    /// a read error of `blob` (e.g. a digest mismatch at EOF) fails the layer.
    /// `progress.advance` is told the compressed bytes read (the caller starts and
    /// finishes it).
    pub fn apply_blob<R: Read + Send>(
        &mut self,
        layer: &str,
        blob: R,
        progress: &dyn Progress,
    ) -> Result<(), UnpackError> {
        self.begin(layer);
        let comp = Arc::new(AtomicU64::new(0));
        let mut input = BufReader::with_capacity(
            256 << 10,
            CountReader {
                inner: blob,
                n: comp.clone(),
            },
        );
        let head = input.fill_buf().map_err(|e| self.corrupt(e))?;
        let gzip = head.starts_with(&[0x1f, 0x8b]);
        let refuse = |what: &str| UnpackError::Unsupported {
            layer: layer.to_string(),
            why: format!(
                "{what}-compressed layers are not supported (gzip and uncompressed tar are). Hint: convert the image, e.g. skopeo copy --dest-compress-format gzip"
            ),
        };
        if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            return Err(refuse("zstd"));
        }
        if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            return Err(refuse("xz"));
        }
        if head.starts_with(b"BZh") {
            return Err(refuse("bzip2"));
        }
        let budget = self.opts.max_bytes.saturating_sub(self.stats.stream_bytes);
        let max_ratio = self.opts.max_ratio;
        let ratio_floor = self.opts.ratio_floor;
        let produced = AtomicU64::new(0);
        let (tx, rx) = mpsc::sync_channel::<io::Result<Chunk>>(4);
        let (back_tx, back_rx) = mpsc::channel::<Vec<u8>>();
        let mut last_reported = 0u64;
        let (consumer, producer) = std::thread::scope(|s| {
            let producer = s.spawn(|| {
                let p = Producer {
                    tx,
                    back: back_rx,
                    produced: &produced,
                    compressed: &comp,
                    budget,
                    max_ratio: if gzip { max_ratio } else { 0 },
                    ratio_floor,
                };
                let r = p.run(input, gzip);
                if let Err(e) = &r {
                    let _ = p.tx.send(Err(io::Error::other(e.to_string())));
                }
                r
            });
            let mut reader = ChanReader {
                rx,
                back: back_tx,
                cur: Vec::new(),
                pos: 0,
                done: false,
            };
            let comp2 = comp.clone();
            let mut tick = || {
                let now = comp2.load(Ordering::Relaxed);
                if now > last_reported {
                    progress.advance(now - last_reported);
                    last_reported = now;
                }
            };
            let mut r = self.apply_stream(&mut reader, &mut tick);
            r = r.and(self.barrier());
            if r.is_ok() {
                // Past the end-of-archive marker: the rest still counts and must verify.
                if let Err(e) = io::copy(&mut reader, &mut io::sink()) {
                    r = Err(self.corrupt(e));
                }
            }
            tick();
            drop(reader);
            let p = producer.join();
            (r, p)
        });
        self.stats.stream_bytes += produced.load(Ordering::Relaxed);
        self.stats.compressed_bytes += comp.load(Ordering::Relaxed);
        // The producer's error is the cause when there is one (the consumer only saw a
        // broken stream).
        match producer {
            Ok(Ok(())) => consumer,
            Ok(Err(ProduceError::Stopped)) => consumer.and(Err(UnpackError::Corrupt {
                layer: layer.to_string(),
                why: "the decompressor stopped early".into(),
            })),
            Ok(Err(ProduceError::Limit(why))) => Err(UnpackError::Limit {
                layer: layer.to_string(),
                why,
            }),
            Ok(Err(ProduceError::Read(e))) => Err(self.corrupt(e)),
            Err(_) => Err(UnpackError::Corrupt {
                layer: layer.to_string(),
                why: "the decompressor thread panicked".into(),
            }),
        }
    }

    /// Sets directory modes and mtimes, and returns what was done.
    pub fn finish(mut self) -> Result<UnpackStats, UnpackError> {
        self.barrier()?;
        self.stack.clear();
        let mut dirs = std::mem::take(&mut self.dirs);
        // A root the layers did not describe is 0755 whatever the umask: the sandbox
        // runs as another user.
        dirs.entry(Vec::new()).or_insert(DirAttrs {
            mode: 0o755,
            mtime: None,
        });
        for (key, a) in &dirs {
            let opened;
            let fd: BorrowedFd = if key.is_empty() {
                self.root.as_fd()
            } else {
                let Ok(p) = CString::new(key.clone()) else {
                    continue;
                };
                // A directory a later layer removed or replaced is skipped.
                match openat2(
                    self.root.as_fd(),
                    &p,
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
                ) {
                    Ok(fd) => {
                        opened = fd;
                        opened.as_fd()
                    }
                    Err(_) => continue,
                }
            };
            let entry = String::from_utf8_lossy(key).into_owned();
            fchmod(fd, a.mode).map_err(|source| UnpackError::Io {
                layer: self.layer.clone(),
                entry: entry.clone(),
                op: "chmod",
                source,
            })?;
            if let Some(t) = a.mtime {
                set_times(fd, None, t).map_err(|source| UnpackError::Io {
                    layer: self.layer.clone(),
                    entry,
                    op: "set mtime",
                    source,
                })?;
            }
        }
        Ok(self.stats)
    }

    /// The directory being unpacked into.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    fn begin(&mut self, layer: &str) {
        self.layer = layer.to_string();
        self.stats.layers += 1;
        self.touched.clear();
        self.stack.clear();
    }

    fn corrupt(&self, e: io::Error) -> UnpackError {
        UnpackError::Corrupt {
            layer: self.layer.clone(),
            why: e.to_string(),
        }
    }

    fn limit_err(&self) -> UnpackError {
        UnpackError::Limit {
            layer: self.layer.clone(),
            why: format!(
                "the image unpacks to more than {} bytes (max_bytes)",
                self.opts.max_bytes
            ),
        }
    }

    fn refuse(&self, raw: &[u8], why: impl Into<String>) -> UnpackError {
        UnpackError::Refused {
            layer: self.layer.clone(),
            entry: String::from_utf8_lossy(raw).into_owned(),
            why: why.into(),
        }
    }

    fn io(&self, raw: &[u8], op: &'static str, source: io::Error) -> UnpackError {
        UnpackError::Io {
            layer: self.layer.clone(),
            entry: String::from_utf8_lossy(raw).into_owned(),
            op,
            source,
        }
    }

    fn note(&mut self, raw: &[u8], what: &str) {
        self.stats.skipped += 1;
        if self.stats.notes.len() < MAX_NOTES {
            self.stats
                .notes
                .push(format!("{}: {what}", String::from_utf8_lossy(raw)));
        }
    }

    fn apply_stream(
        &mut self,
        r: &mut dyn Read,
        tick: &mut dyn FnMut(),
    ) -> Result<(), UnpackError> {
        let mut ar = tar::Archive::new(r);
        // Raw mode: extension headers are read here, with a size cap.
        let entries = ar.entries().map_err(|e| self.corrupt(e))?.raw(true);
        let mut ext = Ext::default();
        for e in entries {
            let mut e = e.map_err(|e| self.corrupt(e))?;
            self.stats.entries += 1;
            if self.stats.entries > self.opts.max_entries {
                return Err(UnpackError::Limit {
                    layer: self.layer.clone(),
                    why: format!(
                        "the image has more than {} tar entries (max_entries)",
                        self.opts.max_entries
                    ),
                });
            }
            tick();
            match e.header().entry_type() {
                tar::EntryType::GNULongName => {
                    ext.path = Some(trim_nul(self.read_ext(&mut e)?));
                    continue;
                }
                tar::EntryType::GNULongLink => {
                    ext.link = Some(trim_nul(self.read_ext(&mut e)?));
                    continue;
                }
                tar::EntryType::XHeader => {
                    let data = self.read_ext(&mut e)?;
                    parse_pax(&data, &mut ext).map_err(|why| UnpackError::Corrupt {
                        layer: self.layer.clone(),
                        why,
                    })?;
                    continue;
                }
                tar::EntryType::XGlobalHeader => {
                    self.read_ext(&mut e)?;
                    continue;
                }
                _ => {}
            }
            let ext = std::mem::take(&mut ext);
            self.entry(&mut e, ext)?;
            if self.pool.as_ref().is_some_and(|p| p.failed()) {
                self.barrier()?;
            }
        }
        Ok(())
    }

    fn read_ext<R: Read>(&self, e: &mut tar::Entry<R>) -> Result<Vec<u8>, UnpackError> {
        let size = e.size();
        if size > MAX_EXT_HEADER {
            return Err(UnpackError::Limit {
                layer: self.layer.clone(),
                why: format!("an extension header of {size} bytes (the cap is {MAX_EXT_HEADER})"),
            });
        }
        let mut v = Vec::with_capacity(size as usize);
        e.read_to_end(&mut v).map_err(|e| self.corrupt(e))?;
        Ok(v)
    }

    fn entry<R: Read>(&mut self, e: &mut tar::Entry<R>, ext: Ext) -> Result<(), UnpackError> {
        let kind = e.header().entry_type();
        let raw: Vec<u8> = match ext.path {
            Some(p) => p,
            None => e.path_bytes().into_owned(),
        };
        if ext.sparse || kind == tar::EntryType::GNUSparse {
            return Err(self.refuse(&raw, "sparse files are not supported"));
        }
        if let Some(size) = ext.size
            && size != e.size()
        {
            return Err(self.refuse(
                &raw,
                "a PAX size override (files over 8 GiB) is not supported",
            ));
        }
        let comps = clean_path(&raw).map_err(|why| self.refuse(&raw, why))?;
        let is_dir = kind == tar::EntryType::Directory
            || (kind == tar::EntryType::Regular && raw.ends_with(b"/"));
        let mode = e.header().mode().map_err(|e| self.corrupt(e))?;
        let mtime = match ext.mtime {
            Some(t) => t,
            None => Time {
                sec: e.header().mtime().map_err(|e| self.corrupt(e))? as i64,
                nsec: 0,
            },
        };
        let Some((name, parent)) = comps.split_last() else {
            if is_dir {
                self.dirs.insert(
                    Vec::new(),
                    DirAttrs {
                        mode: dir_mode(mode),
                        mtime: Some(mtime),
                    },
                );
                self.stats.dirs += 1;
                return Ok(());
            }
            return Err(self.refuse(&raw, "it names the image root itself"));
        };
        if name.starts_with(b".wh.") {
            self.barrier()?;
            return self.whiteout(&raw, parent, name);
        }
        let key = join(&comps);
        if !self.pending.is_empty() {
            let link_key = match (kind, &ext.link) {
                (tar::EntryType::Link, Some(l)) => clean_path(l).ok().map(|c| join(&c)),
                (tar::EntryType::Link, None) => e
                    .link_name_bytes()
                    .and_then(|l| clean_path(&l).ok().map(|c| join(&c))),
                _ => None,
            };
            if self.is_pending(&key) || link_key.is_some_and(|k| self.is_pending(&k)) {
                self.barrier()?;
            }
        }
        self.touch(&key);
        let cname = cstring(name).map_err(|why| self.refuse(&raw, why))?;
        if is_dir {
            return self.dir(&raw, parent, &cname, key, mode, mtime);
        }
        let link_target = |e: &tar::Entry<'_, R>| match &ext.link {
            Some(l) => l.clone(),
            None => e
                .link_name_bytes()
                .map(|c| c.into_owned())
                .unwrap_or_default(),
        };
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                self.file(e, &raw, &key, parent, &cname, mode, mtime)
            }
            tar::EntryType::Symlink => {
                let target = link_target(e);
                self.symlink(&raw, parent, &cname, &target, mtime)
            }
            tar::EntryType::Link => {
                let target = link_target(e);
                self.hardlink(&raw, &comps, &cname, &target)
            }
            tar::EntryType::Fifo => self.fifo(&raw, parent, &cname, mode, mtime),
            tar::EntryType::Char => {
                self.note(&raw, "character device skipped");
                Ok(())
            }
            tar::EntryType::Block => {
                self.note(&raw, "block device skipped");
                Ok(())
            }
            other => {
                self.note(
                    &raw,
                    &format!("entry type {:?} skipped", other.as_byte() as char),
                );
                Ok(())
            }
        }
    }

    /// Records `key` and its ancestors as written by this layer.
    fn touch(&mut self, key: &[u8]) {
        if !self.touched.insert(key.to_vec()) {
            return;
        }
        let mut end = key.len();
        while let Some(p) = key[..end].iter().rposition(|&b| b == b'/') {
            if !self.touched.insert(key[..p].to_vec()) {
                break;
            }
            end = p;
        }
    }

    /// The directory `comps` (created with its missing ancestors, 0755).
    fn parent_dir(&mut self, raw: &[u8], comps: &[&[u8]]) -> Result<Arc<OwnedFd>, UnpackError> {
        match self.walk(raw, comps, true)? {
            Some(fd) => Ok(fd),
            None => Err(self.refuse(raw, "its parent directory could not be created")),
        }
    }

    /// Opens the directory `comps` from the root, reusing the descriptors of the previous
    /// walk for the common prefix. `None` when a component is missing and `!create`.
    fn walk(
        &mut self,
        raw: &[u8],
        comps: &[&[u8]],
        create: bool,
    ) -> Result<Option<Arc<OwnedFd>>, UnpackError> {
        let mut k = 0;
        while k < self.stack.len() && k < comps.len() && self.stack[k].0 == comps[k] {
            k += 1;
        }
        self.stack.truncate(k);
        for i in k..comps.len() {
            let cur = if i == 0 {
                self.root.clone()
            } else {
                self.stack[i - 1].1.clone()
            };
            let name = cstring(comps[i]).map_err(|why| self.refuse(raw, why))?;
            let fd = match open_dir_at(cur.as_fd(), &name) {
                Ok(fd) => fd,
                Err(e) => match e.raw_os_error() {
                    Some(libc::ENOENT) if create => {
                        match mkdirat(cur.as_fd(), &name, 0o755) {
                            Ok(()) => {}
                            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                            Err(e) => return Err(self.io(raw, "create parent directory", e)),
                        }
                        self.dirs.insert(
                            join(&comps[..=i]),
                            DirAttrs {
                                mode: 0o755,
                                mtime: None,
                            },
                        );
                        self.stats.dirs += 1;
                        open_dir_at(cur.as_fd(), &name)
                            .map_err(|e| self.io(raw, "open parent directory", e))?
                    }
                    Some(libc::ENOENT) => return Ok(None),
                    Some(libc::ELOOP) | Some(libc::ENOTDIR) => {
                        match self.through_symlink(raw, cur.as_fd(), &name, &comps[..=i], create)? {
                            Some(fd) => fd,
                            None => return Ok(None),
                        }
                    }
                    _ => return Err(self.io(raw, "open parent directory", e)),
                },
            };
            self.stack.push((comps[i].to_vec(), Arc::new(fd)));
        }
        Ok(Some(match comps.len() {
            0 => self.root.clone(),
            n => self.stack[n - 1].1.clone(),
        }))
    }

    /// A parent component that is not a directory: follow it when it is a symlink that
    /// stays inside the root (the kernel checks, with `RESOLVE_BENEATH`), refuse otherwise.
    fn through_symlink(
        &self,
        raw: &[u8],
        dir: BorrowedFd,
        name: &CStr,
        prefix: &[&[u8]],
        create: bool,
    ) -> Result<Option<OwnedFd>, UnpackError> {
        let shown = String::from_utf8_lossy(&join(prefix)).into_owned();
        let st = fstatat(dir, name).map_err(|e| self.io(raw, "stat parent", e))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
            return Err(self.refuse(
                raw,
                format!("its parent {shown:?} is not a directory (a file of this or a lower layer is in the way)"),
            ));
        }
        let path = CString::new(join(prefix)).map_err(|_| self.refuse(raw, "NUL byte"))?;
        match openat2(
            self.root.as_fd(),
            &path,
            libc::O_RDONLY | libc::O_DIRECTORY,
            RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
        ) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) => match e.raw_os_error() {
                Some(libc::EXDEV) | Some(libc::ELOOP) => Err(self.refuse(
                    raw,
                    format!(
                        "its parent {shown:?} is a symlink that leads outside the image root (absolute, or climbing with `..`) or loops; pysandbox never writes through such a link"
                    ),
                )),
                Some(libc::ENOENT) if !create => Ok(None),
                Some(libc::ENOENT) => Err(self.refuse(
                    raw,
                    format!("its parent {shown:?} is a symlink to a missing directory"),
                )),
                Some(libc::ENOTDIR) => Err(self.refuse(
                    raw,
                    format!("its parent {shown:?} is a symlink to something that is not a directory"),
                )),
                _ => Err(self.io(raw, "resolve parent symlink", e)),
            },
        }
    }

    /// Removes whatever is at `name` in `dir` (a directory recursively).
    fn remove_existing(
        &mut self,
        raw: &[u8],
        dir: BorrowedFd,
        name: &CStr,
    ) -> Result<(), UnpackError> {
        // What goes away may hold files the writers have not created yet.
        self.barrier()?;
        let st = match fstatat(dir, name) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(self.io(raw, "stat existing", e)),
        };
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                // Cached descriptors may point inside what goes away.
                self.stack.clear();
                remove_tree(dir, name)
                    .map(|_| ())
                    .map_err(|e| self.io(raw, "remove existing directory", e))
            }
            fmt => {
                if fmt == libc::S_IFLNK {
                    // A cached descriptor may have been reached through this symlink.
                    self.stack.clear();
                }
                unlinkat(dir, name, 0).map_err(|e| self.io(raw, "remove existing", e))
            }
        }
    }

    fn dir(
        &mut self,
        raw: &[u8],
        parent: &[&[u8]],
        name: &CStr,
        key: Vec<u8>,
        mode: u32,
        mtime: Time,
    ) -> Result<(), UnpackError> {
        let pfd = self.parent_dir(raw, parent)?;
        let mode = dir_mode(mode);
        match mkdirat(pfd.as_fd(), name, mode) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                let st =
                    fstatat(pfd.as_fd(), name).map_err(|e| self.io(raw, "stat existing", e))?;
                if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                    self.remove_existing(raw, pfd.as_fd(), name)?;
                    mkdirat(pfd.as_fd(), name, mode).map_err(|e| self.io(raw, "mkdir", e))?;
                }
            }
            Err(e) => return Err(self.io(raw, "mkdir", e)),
        }
        self.dirs.insert(
            key,
            DirAttrs {
                mode,
                mtime: Some(mtime),
            },
        );
        self.stats.dirs += 1;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn file<R: Read>(
        &mut self,
        e: &mut tar::Entry<R>,
        raw: &[u8],
        key: &[u8],
        parent: &[&[u8]],
        name: &CStr,
        mode: u32,
        mtime: Time,
    ) -> Result<(), UnpackError> {
        let pfd = self.parent_dir(raw, parent)?;
        let size = e.size();
        if self.pool.is_some() && size <= PARALLEL_MAX {
            match fstatat(pfd.as_fd(), name) {
                // Nothing there (and no writer has it pending, see `entry`): a writer
                // creates it with O_EXCL while this thread reads on.
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {
                    let mut data = Vec::with_capacity(size as usize);
                    e.read_to_end(&mut data).map_err(|err| self.corrupt(err))?;
                    if data.len() as u64 != size {
                        return Err(self.corrupt(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the archive ends inside a file",
                        )));
                    }
                    let job = Job {
                        dir: pfd,
                        name: name.to_owned(),
                        data,
                        mode: file_mode(mode),
                        mtime,
                        raw: raw.to_vec(),
                        layer: self.layer.clone(),
                    };
                    // Files of one directory go to one writer: creating entries in a
                    // directory is serialized by the kernel anyway.
                    let which = dir_hash(parent);
                    if let Some(pool) = &self.pool {
                        pool.send(which, job)?;
                    }
                    self.pending.insert(key.to_vec());
                    self.stats.files += 1;
                    self.stats.bytes += size;
                    return Ok(());
                }
                Err(err) => return Err(self.io(raw, "stat existing", err)),
                Ok(_) => {}
            }
        }
        let fd = match create_file(pfd.as_fd(), name) {
            Ok(fd) => fd,
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
                self.remove_existing(raw, pfd.as_fd(), name)?;
                create_file(pfd.as_fd(), name).map_err(|e| self.io(raw, "create", e))?
            }
            Err(err) => return Err(self.io(raw, "create", err)),
        };
        let mut f = File::from(fd);
        let mut buf = std::mem::take(&mut self.buf);
        let mut written = 0u64;
        let res = loop {
            let n = match e.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => break Err(self.corrupt(err)),
            };
            if let Err(err) = f.write_all(&buf[..n]) {
                break Err(self.io(raw, "write", err));
            }
            written += n as u64;
        };
        self.buf = buf;
        res?;
        if written != e.size() {
            return Err(self.corrupt(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside a file",
            )));
        }
        fchmod(f.as_fd(), file_mode(mode)).map_err(|e| self.io(raw, "chmod", e))?;
        set_times(f.as_fd(), None, mtime).map_err(|e| self.io(raw, "set mtime", e))?;
        self.stats.files += 1;
        self.stats.bytes += written;
        Ok(())
    }

    /// Whether `key`, or a directory above it, is a file handed to the writers.
    fn is_pending(&self, key: &[u8]) -> bool {
        if self.pending.contains(key) {
            return true;
        }
        let mut end = key.len();
        while let Some(p) = key[..end].iter().rposition(|&b| b == b'/') {
            if self.pending.contains(&key[..p]) {
                return true;
            }
            end = p;
        }
        false
    }

    /// Waits until the writers have created every file handed to them; their first
    /// error, if any.
    fn barrier(&mut self) -> Result<(), UnpackError> {
        let Some(pool) = &self.pool else {
            return Ok(());
        };
        let r = pool.wait();
        self.pending.clear();
        r
    }

    fn symlink(
        &mut self,
        raw: &[u8],
        parent: &[&[u8]],
        name: &CStr,
        target: &[u8],
        mtime: Time,
    ) -> Result<(), UnpackError> {
        if target.is_empty() {
            return Err(self.refuse(raw, "a symlink with an empty target"));
        }
        let target = CString::new(target)
            .map_err(|_| self.refuse(raw, "a symlink target with a NUL byte"))?;
        let pfd = self.parent_dir(raw, parent)?;
        match symlinkat(&target, pfd.as_fd(), name) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                self.remove_existing(raw, pfd.as_fd(), name)?;
                symlinkat(&target, pfd.as_fd(), name).map_err(|e| self.io(raw, "symlink", e))?;
            }
            Err(e) => return Err(self.io(raw, "symlink", e)),
        }
        set_times(pfd.as_fd(), Some(name), mtime).map_err(|e| self.io(raw, "set mtime", e))?;
        self.stats.symlinks += 1;
        Ok(())
    }

    fn hardlink(
        &mut self,
        raw: &[u8],
        comps: &[&[u8]],
        name: &CStr,
        target: &[u8],
    ) -> Result<(), UnpackError> {
        let shown = String::from_utf8_lossy(target).into_owned();
        let tcomps = clean_path(target)
            .map_err(|why| self.refuse(raw, format!("hardlink target {shown:?}: {why}")))?;
        let Some((tname, tparent)) = tcomps.split_last() else {
            return Err(self.refuse(raw, "a hardlink to the image root"));
        };
        if tcomps == comps {
            return Ok(());
        }
        let tname = cstring(tname).map_err(|why| self.refuse(raw, why))?;
        let missing =
            || format!("hardlink target {shown:?} does not exist in this or a lower layer");
        let Some(tfd) = self.walk(raw, tparent, false)? else {
            return Err(self.refuse(raw, missing()));
        };
        let parent = &comps[..comps.len() - 1];
        let pfd = self.parent_dir(raw, parent)?;
        let r = match linkat(tfd.as_fd(), &tname, pfd.as_fd(), name) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                self.remove_existing(raw, pfd.as_fd(), name)?;
                linkat(tfd.as_fd(), &tname, pfd.as_fd(), name)
            }
            r => r,
        };
        match r {
            Ok(()) => {
                self.stats.hardlinks += 1;
                Ok(())
            }
            Err(e) => Err(match e.raw_os_error() {
                Some(libc::ENOENT) => self.refuse(raw, missing()),
                Some(libc::EPERM) => {
                    self.refuse(raw, format!("hardlink target {shown:?} is a directory"))
                }
                _ => self.io(raw, "hardlink", e),
            }),
        }
    }

    fn fifo(
        &mut self,
        raw: &[u8],
        parent: &[&[u8]],
        name: &CStr,
        mode: u32,
        mtime: Time,
    ) -> Result<(), UnpackError> {
        let pfd = self.parent_dir(raw, parent)?;
        match mkfifoat(pfd.as_fd(), name) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                self.remove_existing(raw, pfd.as_fd(), name)?;
                mkfifoat(pfd.as_fd(), name).map_err(|e| self.io(raw, "mkfifo", e))?;
            }
            Err(e) => return Err(self.io(raw, "mkfifo", e)),
        }
        // Opening a FIFO would block: chmod it by name (we just created it; nothing else
        // writes in the destination).
        fchmodat(pfd.as_fd(), name, file_mode(mode)).map_err(|e| self.io(raw, "chmod", e))?;
        set_times(pfd.as_fd(), Some(name), mtime).map_err(|e| self.io(raw, "set mtime", e))?;
        self.stats.fifos += 1;
        Ok(())
    }

    fn whiteout(&mut self, raw: &[u8], parent: &[&[u8]], name: &[u8]) -> Result<(), UnpackError> {
        self.stats.whiteouts += 1;
        if name == b".wh..wh..opq" {
            let Some(dfd) = self.walk(raw, parent, false)? else {
                return Ok(());
            };
            let key = join(parent);
            self.stack.clear();
            self.opaque(raw, dfd.as_fd(), &key, 0)?;
            self.touch(&key);
            return Ok(());
        }
        if name.starts_with(b".wh..wh.") {
            // aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs): not content.
            self.note(raw, "aufs metadata skipped");
            return Ok(());
        }
        let target = &name[4..];
        if target.is_empty() || target == b"." || target == b".." {
            return Err(self.refuse(raw, "a whiteout without a valid name"));
        }
        let Some(dfd) = self.walk(raw, parent, false)? else {
            return Ok(());
        };
        let mut key = join(parent);
        if !key.is_empty() {
            key.push(b'/');
        }
        key.extend_from_slice(target);
        if self.touched.contains(&key) {
            // Whiteouts hide lower layers only.
            return Ok(());
        }
        let cname = cstring(target).map_err(|why| self.refuse(raw, why))?;
        self.stack.clear();
        match remove_tree(dfd.as_fd(), &cname) {
            Ok(_) => Ok(()),
            Err(e) => Err(self.io(raw, "apply whiteout", e)),
        }
    }

    /// Empties `dir` (path `key`) of what lower layers put there, keeping what this
    /// layer wrote.
    fn opaque(
        &self,
        raw: &[u8],
        dir: BorrowedFd,
        key: &[u8],
        depth: usize,
    ) -> Result<(), UnpackError> {
        if depth > MAX_DEPTH {
            return Err(self.refuse(raw, "opaque directory nested too deep"));
        }
        let names = list_dir(dir).map_err(|e| self.io(raw, "list opaque directory", e))?;
        for (child, _) in names {
            let mut ckey = key.to_vec();
            if !ckey.is_empty() {
                ckey.push(b'/');
            }
            ckey.extend_from_slice(child.as_bytes());
            if self.touched.contains(&ckey) {
                if let Ok(sub) = open_dir_at(dir, &child) {
                    self.opaque(raw, sub.as_fd(), &ckey, depth + 1)?;
                }
                continue;
            }
            remove_tree(dir, &child).map_err(|e| self.io(raw, "apply opaque whiteout", e))?;
        }
        Ok(())
    }
}

/// Files up to this size are written by the writer threads (read into memory first).
const PARALLEL_MAX: u64 = 1 << 20;
/// Files queued per writer.
const QUEUE: usize = 32;

fn dir_hash(parent: &[&[u8]]) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parent.hash(&mut h);
    h.finish() as usize
}

/// A small file for a writer thread.
struct Job {
    dir: Arc<OwnedFd>,
    name: CString,
    data: Vec<u8>,
    mode: u32,
    mtime: Time,
    raw: Vec<u8>,
    layer: String,
}

impl Job {
    fn run(&self) -> Result<(), UnpackError> {
        let err = |op: &'static str| {
            move |source: io::Error| UnpackError::Io {
                layer: self.layer.clone(),
                entry: String::from_utf8_lossy(&self.raw).into_owned(),
                op,
                source,
            }
        };
        let fd = create_file(self.dir.as_fd(), &self.name).map_err(err("create"))?;
        let mut f = File::from(fd);
        f.write_all(&self.data).map_err(err("write"))?;
        fchmod(f.as_fd(), self.mode).map_err(err("chmod"))?;
        set_times(f.as_fd(), None, self.mtime).map_err(err("set mtime"))?;
        Ok(())
    }
}

#[derive(Default)]
struct PoolState {
    inflight: usize,
    error: Option<UnpackError>,
}

#[derive(Default)]
struct PoolShared {
    state: std::sync::Mutex<PoolState>,
    idle: std::sync::Condvar,
    failed: std::sync::atomic::AtomicBool,
}

impl PoolShared {
    fn state(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Writer threads, each with its own queue.
struct Pool {
    txs: Vec<mpsc::SyncSender<Job>>,
    handles: Vec<std::thread::JoinHandle<()>>,
    shared: Arc<PoolShared>,
}

impl Pool {
    fn new(n: usize) -> Pool {
        let shared = Arc::new(PoolShared::default());
        let mut txs = Vec::new();
        let mut handles = Vec::new();
        for i in 0..n {
            let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE);
            let sh = shared.clone();
            let h = std::thread::Builder::new()
                .name(format!("unpack-writer-{i}"))
                .spawn(move || {
                    for job in rx {
                        if !sh.failed.load(Ordering::Relaxed)
                            && let Err(e) = job.run()
                        {
                            sh.failed.store(true, Ordering::Relaxed);
                            sh.state().error.get_or_insert(e);
                        }
                        drop(job);
                        let mut st = sh.state();
                        st.inflight -= 1;
                        if st.inflight == 0 {
                            sh.idle.notify_all();
                        }
                    }
                });
            // A writer that cannot start: the others (or the calling thread) do its share.
            if let Ok(h) = h {
                txs.push(tx);
                handles.push(h);
            }
        }
        Pool {
            txs,
            handles,
            shared,
        }
    }

    fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Relaxed)
    }

    fn send(&self, which: usize, job: Job) -> Result<(), UnpackError> {
        if self.txs.is_empty() {
            return job.run();
        }
        self.shared.state().inflight += 1;
        let tx = &self.txs[which % self.txs.len()];
        if let Err(mpsc::SendError(job)) = tx.send(job) {
            self.shared.state().inflight -= 1;
            return job.run();
        }
        Ok(())
    }

    fn wait(&self) -> Result<(), UnpackError> {
        let mut st = self.shared.state();
        while st.inflight > 0 {
            st = self.shared.idle.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        match st.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.txs.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// Set-id bits stripped, the owner can read and write.
fn file_mode(mode: u32) -> u32 {
    (mode & 0o1777) | 0o600
}

/// Set-id bits stripped, the owner can list, enter and write.
fn dir_mode(mode: u32) -> u32 {
    (mode & 0o1777) | 0o700
}

/// Splits a tar path into clean components: empty and `.` components dropped, a leading
/// `/` ignored, `..` applied lexically and refused when it would climb above the root.
fn clean_path(raw: &[u8]) -> Result<Vec<&[u8]>, String> {
    if raw.len() > MAX_PATH_BYTES {
        return Err(format!("its path is longer than {MAX_PATH_BYTES} bytes"));
    }
    if raw.contains(&0) {
        return Err("its path contains a NUL byte".into());
    }
    let mut out: Vec<&[u8]> = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err("its `..` climbs above the image root".into());
                }
            }
            c => out.push(c),
        }
    }
    if out.len() > MAX_DEPTH {
        return Err(format!("its path is deeper than {MAX_DEPTH} directories"));
    }
    Ok(out)
}

fn join(comps: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::with_capacity(comps.iter().map(|c| c.len() + 1).sum());
    for (i, c) in comps.iter().enumerate() {
        if i > 0 {
            v.push(b'/');
        }
        v.extend_from_slice(c);
    }
    v
}

fn cstring(b: &[u8]) -> Result<CString, String> {
    CString::new(b).map_err(|_| "its name contains a NUL byte".to_string())
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

/// Applies the PAX records the unpacker cares about (path, linkpath, mtime, size, GNU
/// sparse markers) to `ext`.
fn parse_pax(data: &[u8], ext: &mut Ext) -> Result<(), String> {
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let bad = || "malformed PAX extended header".to_string();
        let sp = rest.iter().position(|&b| b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(bad());
        }
        let rec = &rest[sp + 1..len - 1];
        let eq = rec.iter().position(|&b| b == b'=').ok_or_else(bad)?;
        let (k, v) = (&rec[..eq], &rec[eq + 1..]);
        match k {
            b"path" => ext.path = Some(v.to_vec()),
            b"linkpath" => ext.link = Some(v.to_vec()),
            b"mtime" => ext.mtime = parse_pax_time(v),
            b"size" => {
                ext.size = Some(
                    std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(bad)?,
                )
            }
            k if k.starts_with(b"GNU.sparse.") => ext.sparse = true,
            _ => {}
        }
        rest = &rest[len..];
    }
    Ok(())
}

/// `1700000000.123456789` (or negative) into seconds and nanoseconds.
fn parse_pax_time(v: &[u8]) -> Option<Time> {
    let s = std::str::from_utf8(v).ok()?;
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec: i64 = int.parse().ok()?;
    let mut nsec: i64 = 0;
    let digits: String = frac.chars().take(9).collect();
    if !digits.is_empty() {
        if !digits.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        nsec = format!("{digits:0<9}").parse().ok()?;
    }
    if int.starts_with('-') && nsec > 0 {
        return Some(Time {
            sec: sec - 1,
            nsec: 1_000_000_000 - nsec,
        });
    }
    Some(Time { sec, nsec })
}

// ---- the decompression thread ----

enum Chunk {
    Data(Vec<u8>),
    Done,
}

enum ProduceError {
    /// The consumer went away (it failed; its error is the one to report).
    Stopped,
    Limit(String),
    Read(io::Error),
}

impl std::fmt::Display for ProduceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProduceError::Stopped => write!(f, "stopped"),
            ProduceError::Limit(s) => write!(f, "{s}"),
            ProduceError::Read(e) => write!(f, "{e}"),
        }
    }
}

struct Producer<'a> {
    tx: mpsc::SyncSender<io::Result<Chunk>>,
    back: mpsc::Receiver<Vec<u8>>,
    produced: &'a AtomicU64,
    compressed: &'a AtomicU64,
    budget: u64,
    max_ratio: u64,
    ratio_floor: u64,
}

impl Producer<'_> {
    fn run<B: BufRead>(&self, mut input: B, gzip: bool) -> Result<(), ProduceError> {
        if gzip {
            loop {
                self.pump(&mut flate2::bufread::GzDecoder::new(&mut input))?;
                let more = input.fill_buf().map_err(ProduceError::Read)?;
                if more.is_empty() {
                    break;
                }
                if more.starts_with(&[0x1f, 0x8b]) {
                    continue;
                }
                // Not another gzip member: padding. Read it anyway so the blob verifies.
                io::copy(&mut input, &mut io::sink()).map_err(ProduceError::Read)?;
                break;
            }
        } else {
            self.pump(&mut input)?;
        }
        self.tx
            .send(Ok(Chunk::Done))
            .map_err(|_| ProduceError::Stopped)
    }

    fn pump(&self, r: &mut dyn Read) -> Result<(), ProduceError> {
        loop {
            let mut buf = self.back.try_recv().unwrap_or_default();
            buf.resize(CHUNK, 0);
            let mut filled = 0;
            while filled < CHUNK {
                match r.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(ProduceError::Read(e)),
                }
            }
            if filled == 0 {
                return Ok(());
            }
            buf.truncate(filled);
            let total = self.produced.fetch_add(filled as u64, Ordering::Relaxed) + filled as u64;
            if total > self.budget {
                return Err(ProduceError::Limit(format!(
                    "the image unpacks to more than the cap on decompressed bytes (max_bytes); stopped at {total} bytes"
                )));
            }
            let comp = self.compressed.load(Ordering::Relaxed).max(1);
            if self.max_ratio > 0 && total > self.ratio_floor && total / comp > self.max_ratio {
                return Err(ProduceError::Limit(format!(
                    "{comp} compressed bytes expanded to {total} (more than {}x, max_ratio)",
                    self.max_ratio
                )));
            }
            self.tx
                .send(Ok(Chunk::Data(buf)))
                .map_err(|_| ProduceError::Stopped)?;
            if filled < CHUNK {
                return Ok(());
            }
        }
    }
}

struct ChanReader {
    rx: mpsc::Receiver<io::Result<Chunk>>,
    back: mpsc::Sender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Read for ChanReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.cur.len() {
                let n = out.len().min(self.cur.len() - self.pos);
                out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(Chunk::Data(v))) => {
                    let old = std::mem::replace(&mut self.cur, v);
                    let _ = self.back.send(old);
                    self.pos = 0;
                }
                Ok(Ok(Chunk::Done)) => self.done = true,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("the decompressor stopped")),
            }
        }
    }
}

struct CountReader<R> {
    inner: R,
    n: Arc<AtomicU64>,
}

impl<R: Read> Read for CountReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Counts bytes and fails past `cap`.
struct CapReader<R> {
    inner: R,
    n: u64,
    cap: u64,
}

impl<R: Read> Read for CapReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        if self.n > self.cap {
            return Err(io::Error::other("decompressed size cap exceeded"));
        }
        Ok(n)
    }
}

/// Sets atime and mtime to `t`: of `fd` itself, or of `name` in directory `fd` (never
/// following a symlink).
fn set_times(fd: BorrowedFd, name: Option<&CStr>, t: Time) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: t.sec as libc::time_t,
        tv_nsec: t.nsec as _,
    };
    let times = [ts, ts];
    match name {
        // SAFETY: live descriptor, a two-element timespec array.
        None => cvt(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) })?,
        // SAFETY: as above, plus a valid C string.
        Some(n) => cvt(unsafe {
            libc::utimensat(
                fd.as_raw_fd(),
                n.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?,
    };
    Ok(())
}

/// `(path, linkpath)` of a PAX header.
pub(crate) type PaxPaths = (Option<Vec<u8>>, Option<Vec<u8>>);

/// The `path` and `linkpath` records of a PAX extended header, for other readers of
/// image archives (`archive`).
pub(crate) fn pax_paths(data: &[u8]) -> Result<PaxPaths, String> {
    let mut ext = Ext::default();
    parse_pax(data, &mut ext)?;
    Ok((ext.path, ext.link))
}
