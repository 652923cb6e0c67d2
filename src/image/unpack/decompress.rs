//! The decompression pipeline of a layer blob: the blob is read (and counted: the caller's
//! reader verifies its digest as it goes) and gunzipped on a second thread, which hands
//! 1 MiB chunks to the unpacking thread over a bounded channel and gets the buffers back.
//! The caps on decompressed bytes and on the expansion ratio are checked here, as the
//! bytes are produced, so a decompression bomb stops early. Recognizes gzip (one or more
//! members) and uncompressed tar; zstd, xz and bzip2 are named, to be refused.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use super::CHUNK;

/// What a blob holds, from its first bytes.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Format {
    Gzip,
    /// Anything else is read as an uncompressed tar.
    Tar,
    /// A compression pysandbox does not read (its name).
    Refused(&'static str),
}

/// The caps the decompressor enforces.
pub(super) struct Caps {
    /// Decompressed bytes this blob may produce.
    pub(super) budget: u64,
    /// Decompressed / compressed bytes of a gzip blob (0: no cap), checked past
    /// `ratio_floor` decompressed bytes.
    pub(super) max_ratio: u64,
    pub(super) ratio_floor: u64,
}

/// How a decompression went.
pub(super) struct Done {
    /// Decompressed bytes handed on.
    pub(super) produced: u64,
    /// Blob bytes read.
    pub(super) compressed: u64,
    /// Why the decompressor stopped before the end, if it did: the cause to report (the
    /// consumer only saw a broken stream).
    pub(super) stop: Option<Stop>,
}

/// A layer blob, read through a buffer that counts its bytes.
pub(super) struct Blob<R> {
    input: BufReader<CountReader<R>>,
    read: Arc<AtomicU64>,
}

impl<R: Read + Send> Blob<R> {
    pub(super) fn new(blob: R) -> Blob<R> {
        let read = Arc::new(AtomicU64::new(0));
        let input = BufReader::with_capacity(
            256 << 10,
            CountReader {
                inner: blob,
                n: read.clone(),
            },
        );
        Blob { input, read }
    }

    /// The count of blob bytes read so far, live while `decompress` runs.
    pub(super) fn counter(&self) -> Arc<AtomicU64> {
        self.read.clone()
    }

    /// Peeks at the first bytes (they are read again by `decompress`).
    pub(super) fn format(&mut self) -> io::Result<Format> {
        let head = self.input.fill_buf()?;
        Ok(if head.starts_with(&[0x1f, 0x8b]) {
            Format::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Format::Refused("zstd")
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Format::Refused("xz")
        } else if head.starts_with(b"BZh") {
            Format::Refused("bzip2")
        } else {
            Format::Tar
        })
    }

    /// Runs `consume` on this thread over the decompressed stream (gunzipped when `gzip`)
    /// while a second thread reads and decompresses the blob under `caps`. The stream
    /// fails where the decompressor failed; when `consume` returns, the decompressor
    /// stops too.
    pub(super) fn decompress<T>(
        self,
        gzip: bool,
        caps: Caps,
        consume: impl FnOnce(&mut dyn Read) -> T,
    ) -> (T, Done) {
        let Blob { input, read } = self;
        let produced = AtomicU64::new(0);
        let (tx, rx) = mpsc::sync_channel::<io::Result<Chunk>>(4);
        let (back_tx, back_rx) = mpsc::channel::<Vec<u8>>();
        let (consumed, producer) = std::thread::scope(|s| {
            let producer = s.spawn(|| {
                let p = Producer {
                    tx,
                    back: back_rx,
                    produced: &produced,
                    compressed: &read,
                    budget: caps.budget,
                    max_ratio: if gzip { caps.max_ratio } else { 0 },
                    ratio_floor: caps.ratio_floor,
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
            let consumed = consume(&mut reader);
            // The producer's next send fails: it stops.
            drop(reader);
            (consumed, producer.join())
        });
        let stop = match producer {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(Stop::Panicked),
        };
        let done = Done {
            produced: produced.load(Ordering::Relaxed),
            compressed: read.load(Ordering::Relaxed),
            stop,
        };
        (consumed, done)
    }
}

enum Chunk {
    Data(Vec<u8>),
    Done,
}

#[derive(Debug)]
pub(super) enum Stop {
    /// The consumer went away (it failed; its error is the one to report).
    Stopped,
    Limit(String),
    Read(io::Error),
    /// The decompressor thread panicked.
    Panicked,
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Stopped => write!(f, "stopped"),
            Stop::Limit(s) => write!(f, "{s}"),
            Stop::Read(e) => write!(f, "{e}"),
            Stop::Panicked => write!(f, "panicked"),
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
    fn run<B: BufRead>(&self, mut input: B, gzip: bool) -> Result<(), Stop> {
        if gzip {
            loop {
                self.pump(&mut flate2::bufread::GzDecoder::new(&mut input))?;
                let more = input.fill_buf().map_err(Stop::Read)?;
                if more.is_empty() {
                    break;
                }
                if more.starts_with(&[0x1f, 0x8b]) {
                    continue;
                }
                // Not another gzip member: padding. Read it anyway so the blob verifies.
                io::copy(&mut input, &mut io::sink()).map_err(Stop::Read)?;
                break;
            }
        } else {
            self.pump(&mut input)?;
        }
        self.tx.send(Ok(Chunk::Done)).map_err(|_| Stop::Stopped)
    }

    fn pump(&self, r: &mut dyn Read) -> Result<(), Stop> {
        loop {
            let mut buf = self.back.try_recv().unwrap_or_default();
            buf.resize(CHUNK, 0);
            let mut filled = 0;
            while filled < CHUNK {
                match r.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Stop::Read(e)),
                }
            }
            if filled == 0 {
                return Ok(());
            }
            buf.truncate(filled);
            let total = self.produced.fetch_add(filled as u64, Ordering::Relaxed) + filled as u64;
            if total > self.budget {
                return Err(Stop::Limit(format!(
                    "the image unpacks to more than the cap on decompressed bytes (max_bytes); stopped at {total} bytes"
                )));
            }
            let comp = self.compressed.load(Ordering::Relaxed).max(1);
            if self.max_ratio > 0 && total > self.ratio_floor && total / comp > self.max_ratio {
                return Err(Stop::Limit(format!(
                    "{comp} compressed bytes expanded to {total} (more than {}x, max_ratio)",
                    self.max_ratio
                )));
            }
            self.tx
                .send(Ok(Chunk::Data(buf)))
                .map_err(|_| Stop::Stopped)?;
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

/// Counts bytes and fails past `cap` (an uncompressed layer's share of `max_bytes`).
pub(super) struct CapReader<R> {
    pub(super) inner: R,
    pub(super) n: u64,
    pub(super) cap: u64,
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
