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

#[cfg(test)]
mod tests {
    use super::*;

    /// One PAX record, its length prefix counting itself.
    fn record(key: &str, value: &[u8]) -> Vec<u8> {
        let body = 1 + key.len() + 1 + value.len() + 1; // ' ' key '=' value '\n'
        let mut digits = body.to_string().len();
        if (body + digits).to_string().len() != digits {
            digits += 1;
        }
        let mut r = format!("{} {key}=", body + digits).into_bytes();
        r.extend_from_slice(value);
        r.push(b'\n');
        r
    }

    /// A ustar header block, its checksum computed as tar readers check it.
    fn header(name: &[u8], kind: u8, size: u64) -> [u8; 512] {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name);
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        h[136..148].copy_from_slice(b"14524722400\0");
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    /// Header and data of one member, the data padded to whole blocks.
    fn member(out: &mut Vec<u8>, name: &[u8], kind: u8, data: &[u8]) {
        out.extend_from_slice(&header(name, kind, data.len() as u64));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    fn end(mut out: Vec<u8>) -> Vec<u8> {
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    /// What a layer's entries look like after their extension headers: (type, overrides,
    /// data), or the first error, read as the unpacker reads (raw entries).
    fn entries(bytes: &[u8]) -> Result<Vec<(u8, Ext, Vec<u8>)>, String> {
        let mut ar = tar::Archive::new(bytes);
        let mut ext = Ext::default();
        let mut out = Vec::new();
        for e in ar.entries().map_err(|e| e.to_string())?.raw(true) {
            let mut e = e.map_err(|e| format!("read: {e}"))?;
            match absorb(&mut e, &mut ext) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(HeaderError::TooLarge(n)) => return Err(format!("too large: {n}")),
                Err(HeaderError::Read(e)) => return Err(format!("read: {e}")),
                Err(HeaderError::Malformed(why)) => return Err(why),
            }
            let mut data = Vec::new();
            e.read_to_end(&mut data).map_err(|e| format!("read: {e}"))?;
            out.push((
                e.header().entry_type().as_byte(),
                std::mem::take(&mut ext),
                data,
            ));
        }
        Ok(out)
    }

    #[test]
    fn pax_long_path_and_link_apply_to_the_next_entry_only() {
        let long = "d/".repeat(150) + "file";
        let link = "t/".repeat(120) + "target";
        let mut pax = record("path", long.as_bytes());
        pax.extend(record("linkpath", link.as_bytes()));
        pax.extend(record("mtime", b"1700000000.25"));
        pax.extend(record("uname", b"ignored"));
        let mut a = Vec::new();
        member(&mut a, b"PaxHeaders/x", b'x', &pax);
        member(&mut a, b"short", b'2', b"");
        member(&mut a, b"plain", b'0', b"hello");
        let got = entries(&end(a)).unwrap();
        assert_eq!(got.len(), 2, "the PAX header is not an entry of its own");
        let (kind, ext, _) = &got[0];
        assert_eq!(*kind, b'2');
        assert_eq!(ext.path.as_deref(), Some(long.as_bytes()));
        assert_eq!(ext.link.as_deref(), Some(link.as_bytes()));
        let t = ext.mtime.unwrap();
        assert_eq!((t.sec, t.nsec), (1_700_000_000, 250_000_000));
        let (kind, ext, data) = &got[1];
        assert_eq!((*kind, data.as_slice()), (b'0', &b"hello"[..]));
        assert!(ext.path.is_none() && ext.link.is_none() && ext.mtime.is_none());
    }

    #[test]
    fn gnu_long_name_and_link_lose_their_trailing_nuls() {
        let long = "n".repeat(300);
        let mut name = long.clone().into_bytes();
        name.extend_from_slice(b"\0\0");
        let target = "l".repeat(200);
        let mut link = target.clone().into_bytes();
        link.push(0);
        let mut a = Vec::new();
        member(&mut a, b"././@LongLink", b'L', &name);
        member(&mut a, b"././@LongLink", b'K', &link);
        member(&mut a, b"truncated-name", b'1', b"");
        let got = entries(&end(a)).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.path.as_deref(), Some(long.as_bytes()));
        assert_eq!(got[0].1.link.as_deref(), Some(target.as_bytes()));
    }

    #[test]
    fn a_global_header_changes_nothing() {
        let mut a = Vec::new();
        member(
            &mut a,
            b"global",
            b'g',
            &record("path", b"../../etc/passwd"),
        );
        member(&mut a, b"f", b'0', b"x");
        let got = entries(&end(a)).unwrap();
        assert_eq!(got.len(), 1);
        assert!(got[0].1.path.is_none());
    }

    #[test]
    fn size_and_sparse_records_are_reported() {
        let mut pax = record("size", b"42");
        pax.extend(record("GNU.sparse.major", b"1"));
        let mut ext = Ext::default();
        parse_pax(&pax, &mut ext).unwrap();
        assert_eq!(ext.size, Some(42));
        assert!(ext.sparse);
        let mut ext = Ext::default();
        assert!(parse_pax(&record("size", b"lots"), &mut ext).is_err());
    }

    #[test]
    fn malformed_records_are_refused() {
        for bad in [
            &b"30 path=short\n"[..], // the length is not the record's
            b"5 path=x\n",           // shorter than its own prefix
            b"13 pathnoequal\n",     // no `=`
            b"12 path=abc!",         // no final newline
            b"x1 path=a\n",          // no number
            b"1 ",                   // a length that cannot hold a record
            b"no space at all",
        ] {
            let mut ext = Ext::default();
            assert!(
                parse_pax(bad, &mut ext).is_err(),
                "{:?} was accepted",
                String::from_utf8_lossy(bad)
            );
        }
        // NUL padding after the last record is fine.
        let mut ok = record("path", b"a/b");
        ok.extend_from_slice(&[0; 20]);
        assert_eq!(pax_paths(&ok).unwrap(), (Some(b"a/b".to_vec()), None));
    }

    #[test]
    fn a_malformed_pax_header_in_an_archive_is_an_error() {
        let mut a = Vec::new();
        member(&mut a, b"PaxHeaders/x", b'x', b"99 path=x\n");
        member(&mut a, b"f", b'0', b"");
        assert_eq!(
            entries(&end(a)).unwrap_err(),
            "malformed PAX extended header"
        );
    }

    #[test]
    fn pax_times_split_into_seconds_and_nanoseconds() {
        let t = |s: &str| parse_pax_time(s.as_bytes()).map(|t| (t.sec, t.nsec));
        assert_eq!(t("1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(t("1.5"), Some((1, 500_000_000)));
        assert_eq!(t("1.1234567899"), Some((1, 123_456_789)), "beyond ns");
        assert_eq!(t("-1.25"), Some((-2, 750_000_000)));
        assert_eq!(t("-3"), Some((-3, 0)));
        assert_eq!(t("1.2x"), None);
        assert_eq!(t("soon"), None);
    }

    #[test]
    fn an_oversized_extension_header_is_refused_before_it_is_read() {
        // Its header claims 2 MiB; none of it is there, and none is needed to refuse.
        let mut a = header(b"PaxHeaders/x", b'x', 2 << 20).to_vec();
        a.extend_from_slice(&[0u8; 1024]);
        assert_eq!(
            entries(&a).unwrap_err(),
            format!("too large: {}", 2u64 << 20)
        );
    }

    #[test]
    fn a_bad_header_checksum_is_an_error() {
        let mut a = Vec::new();
        member(&mut a, b"PaxHeaders/x", b'x', &record("path", b"p"));
        let at = a.len();
        member(&mut a, b"f", b'0', b"x");
        a[at] = b'g'; // the name changes after the checksum was computed
        let err = entries(&end(a)).unwrap_err();
        assert!(err.contains("checksum"), "{err}");
    }

    #[test]
    fn truncated_input_is_an_error() {
        let mut pax = record("path", "p".repeat(600).as_bytes());
        pax.extend(record("mtime", b"1"));
        let mut whole = Vec::new();
        member(&mut whole, b"PaxHeaders/x", b'x', &pax);
        member(&mut whole, b"f", b'0', b"x");
        let whole = end(whole);
        assert!(entries(&whole).is_ok());
        // The PAX header, its data (two blocks), the file's header, its data (one block).
        assert_eq!(whole.len(), 5 * 512 + 1024);
        // Cut inside the PAX data, in its padding, inside the file's header, before and
        // inside the file's data.
        for cut in [512 + 300, 3 * 512 - 1, 3 * 512 + 100, 4 * 512, 4 * 512 + 1] {
            assert!(
                entries(&whole[..cut]).is_err(),
                "an archive cut at {cut} was read whole"
            );
        }
    }
}
