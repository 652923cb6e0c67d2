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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Bytes that do not compress to nothing: a few MiB of a simple generator.
    fn noise(len: usize) -> Vec<u8> {
        let mut x: u32 = 0x1234_5678;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x % 251) as u8
            })
            .collect()
    }

    fn no_caps() -> Caps {
        Caps {
            budget: u64::MAX,
            max_ratio: 0,
            ratio_floor: 0,
        }
    }

    /// The blob's format, what a consumer reading to the end got, and how it went.
    fn unpack(blob: &[u8], caps: Caps) -> (Format, io::Result<Vec<u8>>, Done) {
        let mut b = Blob::new(blob);
        let format = b.format().unwrap();
        let gzip = format == Format::Gzip;
        let (got, done) = b.decompress(gzip, caps, |r| {
            let mut v = Vec::new();
            r.read_to_end(&mut v).map(|_| v)
        });
        (format, got, done)
    }

    #[test]
    fn gzip_round_trip_over_several_chunks() {
        let data = noise(3 * CHUNK + 12345);
        let blob = gzip(&data);
        let (format, got, done) = unpack(&blob, no_caps());
        assert_eq!(format, Format::Gzip);
        assert!(got.unwrap() == data, "the stream differs from the input");
        assert!(done.stop.is_none(), "{:?}", done.stop);
        assert_eq!(done.produced, data.len() as u64);
        assert_eq!(done.compressed, blob.len() as u64);
    }

    #[test]
    fn gzip_members_follow_each_other_and_padding_is_read() {
        let (a, b) = (noise(5000), b"second member".to_vec());
        let mut blob = gzip(&a);
        blob.extend(gzip(&b));
        blob.extend_from_slice(&[0; 700]);
        let (_, got, done) = unpack(&blob, no_caps());
        assert_eq!(got.unwrap(), [a, b].concat());
        assert!(done.stop.is_none(), "{:?}", done.stop);
        assert_eq!(
            done.compressed,
            blob.len() as u64,
            "the padding must be read"
        );
    }

    #[test]
    fn an_uncompressed_blob_passes_through() {
        let data = noise(CHUNK + 1);
        let (format, got, done) = unpack(&data, no_caps());
        assert_eq!(format, Format::Tar);
        assert!(got.unwrap() == data);
        assert_eq!(
            (done.produced, done.compressed),
            (data.len() as u64, data.len() as u64)
        );
        let (format, got, _) = unpack(b"", no_caps());
        assert_eq!(format, Format::Tar);
        assert!(got.unwrap().is_empty());
    }

    #[test]
    fn other_compressions_are_named() {
        for (head, name) in [
            (&[0x28, 0xb5, 0x2f, 0xfd, 0, 0][..], "zstd"),
            (&[0xfd, b'7', b'z', b'X', b'Z', 0, 0][..], "xz"),
            (&b"BZh91AY&SY"[..], "bzip2"),
        ] {
            assert_eq!(Blob::new(head).format().unwrap(), Format::Refused(name));
        }
    }

    #[test]
    fn corrupt_gzip_fails_the_stream_and_names_the_cause() {
        let data = noise(200_000);
        let mut blob = gzip(&data);
        let mid = blob.len() / 2;
        for b in &mut blob[mid..mid + 64] {
            *b ^= 0x5a;
        }
        let (_, got, done) = unpack(&blob, no_caps());
        assert!(got.is_err(), "a corrupt gzip stream was read whole");
        assert!(matches!(done.stop, Some(Stop::Read(_))), "{:?}", done.stop);
    }

    #[test]
    fn a_bad_gzip_checksum_fails() {
        let mut blob = gzip(b"some layer");
        let crc = blob.len() - 8;
        blob[crc] ^= 1;
        let (_, got, done) = unpack(&blob, no_caps());
        assert!(got.is_err());
        assert!(matches!(done.stop, Some(Stop::Read(_))), "{:?}", done.stop);
    }

    #[test]
    fn truncated_gzip_fails() {
        let blob = gzip(&noise(100_000));
        for cut in [blob.len() / 2, blob.len() - 4] {
            let (_, got, done) = unpack(&blob[..cut], no_caps());
            assert!(got.is_err(), "a gzip cut at {cut} was read whole");
            assert!(done.stop.is_some());
        }
    }

    #[test]
    fn the_byte_budget_stops_the_decompressor() {
        let blob = gzip(&noise(3 * CHUNK));
        let caps = Caps {
            budget: CHUNK as u64 + 1,
            ..no_caps()
        };
        let (_, got, done) = unpack(&blob, caps);
        assert!(got.is_err());
        match done.stop {
            Some(Stop::Limit(why)) => assert!(why.contains("max_bytes"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(
            done.produced <= 2 * CHUNK as u64,
            "it went on after the cap"
        );
    }

    #[test]
    fn the_ratio_cap_stops_a_bomb_but_not_a_plain_tar() {
        let zeros = vec![0u8; 4 * CHUNK];
        let caps = || Caps {
            budget: u64::MAX,
            max_ratio: 10,
            ratio_floor: CHUNK as u64,
        };
        let (_, got, done) = unpack(&gzip(&zeros), caps());
        assert!(got.is_err());
        match done.stop {
            Some(Stop::Limit(why)) => assert!(why.contains("max_ratio"), "{why}"),
            other => panic!("{other:?}"),
        }
        let (_, got, done) = unpack(&zeros, caps());
        assert_eq!(got.unwrap().len(), zeros.len());
        assert!(done.stop.is_none());
    }

    #[test]
    fn a_consumer_that_quits_stops_the_decompressor() {
        // More than the channel holds, so the decompressor is still sending.
        let blob = gzip(&vec![7u8; 16 * CHUNK]);
        let b = Blob::new(&blob[..]);
        let (first, done) = b.decompress(true, no_caps(), |r| {
            let mut v = [0u8; 10];
            r.read_exact(&mut v).map(|_| v)
        });
        assert_eq!(first.unwrap(), [7u8; 10]);
        assert!(matches!(done.stop, Some(Stop::Stopped)), "{:?}", done.stop);
        assert!(done.produced < 16 * CHUNK as u64);
    }

    #[test]
    fn the_cap_reader_counts_and_refuses_past_its_cap() {
        let mut r = CapReader {
            inner: &[1u8; 100][..],
            n: 0,
            cap: 60,
        };
        let mut v = Vec::new();
        assert!(r.read_to_end(&mut v).is_err());
        assert!(r.n > 60 && r.n <= 100, "{}", r.n);
        let mut r = CapReader {
            inner: &[1u8; 100][..],
            n: 0,
            cap: 100,
        };
        assert_eq!(io::copy(&mut r, &mut io::sink()).unwrap(), 100);
    }
}
