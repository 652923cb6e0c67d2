//! Tar extension headers: GNU long names and long link targets, PAX extended headers
//! (`path`, `linkpath`, `mtime`, `size`, GNU sparse markers) and PAX global headers (read
//! and ignored). Each is read into memory under a 1 MiB cap and folded into the overrides
//! of the entry that follows. Owns the parsing only: what an entry may do with its path is
//! the unpacker's business.

use std::io::{self, Read};

use super::Time;

/// Largest PAX or GNU long-name header read into memory.
pub(super) const MAX_EXT_HEADER: u64 = 1 << 20;

/// Overrides carried by PAX and GNU extension headers for the next entry.
#[derive(Debug, Default)]
pub(super) struct Ext {
    pub(super) path: Option<Vec<u8>>,
    pub(super) link: Option<Vec<u8>>,
    pub(super) mtime: Option<Time>,
    pub(super) size: Option<u64>,
    pub(super) sparse: bool,
}

/// Why an extension header could not be taken.
#[derive(Debug)]
pub(super) enum HeaderError {
    /// Larger than [`MAX_EXT_HEADER`] (its size).
    TooLarge(u64),
    /// The archive could not be read.
    Read(io::Error),
    /// A PAX header that does not follow the record format.
    Malformed(String),
}

/// Folds `e` into `ext` when it is an extension header (`true`: the caller moves on to the
/// next entry); `false` for an entry of the layer itself, which `ext` then describes.
pub(super) fn absorb<R: Read>(e: &mut tar::Entry<R>, ext: &mut Ext) -> Result<bool, HeaderError> {
    match e.header().entry_type() {
        tar::EntryType::GNULongName => ext.path = Some(trim_nul(read_ext(e)?)),
        tar::EntryType::GNULongLink => ext.link = Some(trim_nul(read_ext(e)?)),
        tar::EntryType::XHeader => {
            let data = read_ext(e)?;
            parse_pax(&data, ext).map_err(HeaderError::Malformed)?;
        }
        tar::EntryType::XGlobalHeader => {
            read_ext(e)?;
        }
        _ => return Ok(false),
    }
    Ok(true)
}

fn read_ext<R: Read>(e: &mut tar::Entry<R>) -> Result<Vec<u8>, HeaderError> {
    let size = e.size();
    if size > MAX_EXT_HEADER {
        return Err(HeaderError::TooLarge(size));
    }
    let mut v = Vec::with_capacity(size as usize);
    e.read_to_end(&mut v).map_err(HeaderError::Read)?;
    Ok(v)
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

/// `(path, linkpath)` of a PAX header.
pub(crate) type PaxPaths = (Option<Vec<u8>>, Option<Vec<u8>>);

/// The `path` and `linkpath` records of a PAX extended header, for other readers of
/// image archives (`archive`).
pub(crate) fn pax_paths(data: &[u8]) -> Result<PaxPaths, String> {
    let mut ext = Ext::default();
    parse_pax(data, &mut ext)?;
    Ok((ext.path, ext.link))
}
