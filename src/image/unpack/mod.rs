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
//!
//! The files: `pax` (extension headers), `decompress` (the second thread), `tree` (paths
//! and directory descriptors), `entries` (one function per entry type), `whiteout`,
//! `writers` (the small-file writer threads).

mod decompress;
mod entries;
mod pax;
mod tree;
mod whiteout;
mod writers;

pub(crate) use pax::pax_paths;

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::progress::Progress;
use crate::sys::fs::{RESOLVE_BENEATH, RESOLVE_NO_MAGICLINKS, fchmod, open_path_dir, openat2};
use decompress::{Blob, CapReader, Caps, Format, Stop};
use entries::dir_mode;
use pax::{Ext, HeaderError, MAX_EXT_HEADER};
use tree::{clean_path, cstring, join};
use writers::Pool;

/// Longest path (after PAX/GNU long names) an entry may have.
const MAX_PATH_BYTES: usize = 4096;
/// Deepest path an entry may have.
const MAX_DEPTH: usize = 256;
/// Copy buffer and decompressed chunk size.
const CHUNK: usize = 1 << 20;
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
        let mut blob = Blob::new(blob);
        let gzip = match blob.format().map_err(|e| self.corrupt(e))? {
            Format::Gzip => true,
            Format::Tar => false,
            Format::Refused(what) => {
                return Err(UnpackError::Unsupported {
                    layer: layer.to_string(),
                    why: format!(
                        "{what}-compressed layers are not supported (gzip and uncompressed tar are). Hint: convert the image, e.g. skopeo copy --dest-compress-format gzip"
                    ),
                });
            }
        };
        let caps = Caps {
            budget: self.opts.max_bytes.saturating_sub(self.stats.stream_bytes),
            max_ratio: self.opts.max_ratio,
            ratio_floor: self.opts.ratio_floor,
        };
        let read = blob.counter();
        let mut last_reported = 0u64;
        let (consumer, done) = blob.decompress(gzip, caps, |reader| {
            let mut tick = || {
                let now = read.load(Ordering::Relaxed);
                if now > last_reported {
                    progress.advance(now - last_reported);
                    last_reported = now;
                }
            };
            let mut r = self.apply_stream(reader, &mut tick);
            r = r.and(self.barrier());
            if r.is_ok() {
                // Past the end-of-archive marker: the rest still counts and must verify.
                if let Err(e) = io::copy(reader, &mut io::sink()) {
                    r = Err(self.corrupt(e));
                }
            }
            tick();
            r
        });
        self.stats.stream_bytes += done.produced;
        self.stats.compressed_bytes += done.compressed;
        // The producer's error is the cause when there is one (the consumer only saw a
        // broken stream).
        match done.stop {
            None => consumer,
            Some(Stop::Stopped) => consumer.and(Err(UnpackError::Corrupt {
                layer: layer.to_string(),
                why: "the decompressor stopped early".into(),
            })),
            Some(Stop::Limit(why)) => Err(UnpackError::Limit {
                layer: layer.to_string(),
                why,
            }),
            Some(Stop::Read(e)) => Err(self.corrupt(e)),
            Some(Stop::Panicked) => Err(UnpackError::Corrupt {
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
            if pax::absorb(&mut e, &mut ext).map_err(|e| self.header_err(e))? {
                continue;
            }
            let ext = std::mem::take(&mut ext);
            self.entry(&mut e, ext)?;
            if self.pool.as_ref().is_some_and(|p| p.failed()) {
                self.barrier()?;
            }
        }
        Ok(())
    }

    fn header_err(&self, e: HeaderError) -> UnpackError {
        match e {
            HeaderError::TooLarge(size) => UnpackError::Limit {
                layer: self.layer.clone(),
                why: format!("an extension header of {size} bytes (the cap is {MAX_EXT_HEADER})"),
            },
            HeaderError::Read(e) => self.corrupt(e),
            HeaderError::Malformed(why) => UnpackError::Corrupt {
                layer: self.layer.clone(),
                why,
            },
        }
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
}

/// Sets atime and mtime to `t`: of `fd` itself, or of `name` in directory `fd` (never
/// following a symlink).
fn set_times(fd: BorrowedFd, name: Option<&CStr>, t: Time) -> io::Result<()> {
    crate::sys::fs::set_times(fd, name, t.sec, t.nsec)
}
