//! Content-addressed blobs: writing (verified, atomic), adopting a file hashed by its
//! writer, and reading (verified at EOF).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::{Store, StoreError, io_err};
use crate::sys;

impl Store {
    /// Path of a blob (which may not exist).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        Ok(self.root.join("blobs/sha256").join(digest_hex(digest)?))
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    /// Writes a blob, verifying sha256 (and size) when `expected` is given; returns
    /// (digest "sha256:<hex>", size). Atomic (tmp + rename), idempotent: a blob already
    /// stored with the expected size is not read again.
    pub fn put_blob(
        &self,
        r: &mut dyn Read,
        expected: Option<(&str, u64)>,
    ) -> Result<(String, u64), StoreError> {
        let _gc = self.lock(".gc.lock", libc::LOCK_SH)?;
        if let Some((d, size)) = expected {
            let p = self.blob_path(d)?;
            if fs::symlink_metadata(&p).is_ok_and(|m| m.is_file() && m.len() == size) {
                return Ok((d.to_string(), size));
            }
        }
        let tmp = TmpPath(
            self.root
                .join("tmp")
                .join(sys::random_id("put-").map_err(io_err(&self.root))?),
        );
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp.0)
            .map_err(io_err(&tmp.0))?;
        let what = match expected {
            Some((d, _)) => format!("blob {d}"),
            None => "blob".to_string(),
        };
        let mut h = Sha256::new();
        let mut n = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let k = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(StoreError::Read { what, source }),
            };
            n += k as u64;
            if let Some((d, size)) = expected
                && n > size
            {
                return Err(StoreError::Mismatch {
                    what,
                    expected: d.to_string(),
                    expected_size: size,
                    actual: "more data".into(),
                    actual_size: n,
                });
            }
            h.update(&buf[..k]);
            f.write_all(&buf[..k]).map_err(io_err(&tmp.0))?;
        }
        drop(f);
        let digest = format!("sha256:{}", hex(&h.finalize()));
        if let Some((d, size)) = expected
            && (d != digest || n != size)
        {
            return Err(StoreError::Mismatch {
                what,
                expected: d.to_string(),
                expected_size: size,
                actual: digest,
                actual_size: n,
            });
        }
        let dest = self.blob_path(&digest)?;
        fs::set_permissions(&tmp.0, fs::Permissions::from_mode(0o444)).map_err(io_err(&tmp.0))?;
        fs::rename(&tmp.0, &dest).map_err(io_err(&dest))?;
        tmp.disarm();
        Ok((digest, n))
    }

    /// Moves a file its writer hashed (`digest`), written under the store's `tmp/` (the
    /// same file system), into the blobs; no copy. The caller holds `write_guard`.
    pub fn adopt_blob(&self, file: &Path, digest: &str) -> Result<(), StoreError> {
        let dest = self.blob_path(digest)?;
        fs::set_permissions(file, fs::Permissions::from_mode(0o444)).map_err(io_err(file))?;
        fs::rename(file, &dest).map_err(io_err(&dest))
    }

    /// Writes a small blob held in memory.
    pub fn put_bytes(&self, data: &[u8]) -> Result<(String, u64), StoreError> {
        let digest = sha256_digest(data);
        self.put_blob(&mut &data[..], Some((&digest, data.len() as u64)))
    }

    /// Opens a blob; the reader verifies the sha256 as it is read and fails at EOF on a
    /// mismatch (the error's message says "blob sha256:... is corrupt").
    pub fn open_blob(&self, digest: &str) -> Result<BlobReader, StoreError> {
        let p = self.blob_path(digest)?;
        let file = match File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::MissingBlob {
                    what: "blob".into(),
                    digest: digest.to_string(),
                });
            }
            Err(e) => return Err(io_err(&p)(e)),
        };
        Ok(BlobReader {
            file,
            hasher: Sha256::new(),
            digest: digest.to_string(),
            bad: None,
            done: false,
        })
    }

    /// Reads a small blob (JSON), verified; refused when larger than `max`.
    pub fn read_blob(&self, digest: &str, max: u64) -> Result<Vec<u8>, StoreError> {
        let mut r = self.open_blob(digest)?;
        let len = r.file.metadata().map(|m| m.len()).unwrap_or(0);
        if len > max {
            return Err(StoreError::TooLarge {
                what: format!("blob {digest}"),
                max,
            });
        }
        let mut v = Vec::with_capacity(len as usize);
        r.read_to_end(&mut v)
            .map_err(|e| blob_read_err(digest, e))?;
        Ok(v)
    }
}

/// Reads a blob and verifies its sha256 at EOF.
pub struct BlobReader {
    file: File,
    hasher: Sha256,
    digest: String,
    bad: Option<String>,
    done: bool,
}

impl BlobReader {
    /// Size of the blob file.
    pub fn len(&self) -> u64 {
        self.file.metadata().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A blob whose content does not match its digest (inside an `io::Error`).
#[derive(Debug)]
pub struct BlobCorrupt {
    pub digest: String,
    pub why: String,
}

impl std::fmt::Display for BlobCorrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "blob {} is corrupt: {}", self.digest, self.why)
    }
}

impl std::error::Error for BlobCorrupt {}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(why) = &self.bad {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                BlobCorrupt {
                    digest: self.digest.clone(),
                    why: why.clone(),
                },
            ));
        }
        if self.done {
            return Ok(0);
        }
        let n = self.file.read(buf)?;
        if n > 0 {
            self.hasher.update(&buf[..n]);
            return Ok(n);
        }
        self.done = true;
        let got = format!(
            "sha256:{}",
            hex(&std::mem::take(&mut self.hasher).finalize())
        );
        if got != self.digest {
            self.bad = Some(format!("its content hashes to {got}"));
            return self.read(buf);
        }
        Ok(0)
    }
}

/// The typed error of a failed blob read.
pub(super) fn blob_read_err(digest: &str, e: io::Error) -> StoreError {
    if let Some(c) = e.get_ref().and_then(|i| i.downcast_ref::<BlobCorrupt>()) {
        return StoreError::Corrupt {
            digest: c.digest.clone(),
            why: c.why.clone(),
        };
    }
    StoreError::Read {
        what: format!("blob {digest}"),
        source: e,
    }
}

/// Removes a temporary file unless disarmed.
struct TmpPath(PathBuf);

impl TmpPath {
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for TmpPath {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// `<hex>` of `sha256:<hex>`, validated (it becomes a file name).
pub fn digest_hex(digest: &str) -> Result<&str, StoreError> {
    crate::image::reference::sha256_hex(digest)
        .ok_or_else(|| StoreError::BadDigest(digest.to_string()))
}

pub(crate) fn parse_digest(d: &str) -> Result<oci_spec::image::Digest, StoreError> {
    digest_hex(d)?;
    d.parse().map_err(|_| StoreError::BadDigest(d.to_string()))
}

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

fn hex(b: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(H[(x >> 4) as usize] as char);
        s.push(H[(x & 15) as usize] as char);
    }
    s
}
