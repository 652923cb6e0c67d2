//! Minimal ELF reader: just enough to find a binary's program interpreter
//! (`PT_INTERP`, e.g. `/lib64/ld-linux-x86-64.so.2`). Handles 32/64-bit and
//! both byte orders, so it works for every architecture glibc supports.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{BuildError, io_err};

const PT_INTERP: u32 = 3;
/// Upper bound for the interpreter path; real ones are < 64 bytes.
const MAX_INTERP_LEN: u64 = 4096;

/// Returns the `PT_INTERP` path of the ELF file at `path`, or `None` for a
/// static binary (or a shared library) that has none.
pub(crate) fn interpreter(path: &Path) -> Result<Option<PathBuf>, BuildError> {
    let file = File::open(path).map_err(io_err("cannot open ELF file", path))?;
    let bad = |detail: &str| BuildError::Elf {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    };
    let read = |offset: u64, buf: &mut [u8]| -> Result<(), BuildError> {
        file.read_exact_at(buf, offset)
            .map_err(io_err("cannot read ELF file", path))
    };

    let mut ident = [0u8; 64];
    read(0, &mut ident[..16])?;
    if &ident[..4] != b"\x7fELF" {
        return Err(bad("not an ELF file"));
    }
    let is64 = match ident[4] {
        1 => false,
        2 => true,
        _ => return Err(bad("unknown ELF class")),
    };
    let le = match ident[5] {
        1 => true,
        2 => false,
        _ => return Err(bad("unknown ELF byte order")),
    };
    let header_len = if is64 { 64 } else { 52 };
    read(0, &mut ident[..header_len])?;
    let h = Reader { le };
    let (phoff, phentsize, phnum) = if is64 {
        (
            h.u64(&ident[32..40]),
            h.u16(&ident[54..56]),
            h.u16(&ident[56..58]),
        )
    } else {
        (
            u64::from(h.u32(&ident[28..32])),
            h.u16(&ident[42..44]),
            h.u16(&ident[44..46]),
        )
    };
    let min_entsize = if is64 { 56 } else { 32 };
    if phnum == 0 {
        return Ok(None);
    }
    if usize::from(phentsize) < min_entsize {
        return Err(bad("program header entries are too small"));
    }
    let mut table = vec![0u8; usize::from(phentsize) * usize::from(phnum)];
    read(phoff, &mut table)?;
    for entry in table.chunks_exact(usize::from(phentsize)) {
        if h.u32(&entry[0..4]) != PT_INTERP {
            continue;
        }
        let (offset, size) = if is64 {
            (h.u64(&entry[8..16]), h.u64(&entry[32..40]))
        } else {
            (
                u64::from(h.u32(&entry[4..8])),
                u64::from(h.u32(&entry[16..20])),
            )
        };
        if size == 0 || size > MAX_INTERP_LEN {
            return Err(bad("PT_INTERP has an implausible size"));
        }
        let mut name = vec![0u8; size as usize];
        read(offset, &mut name)?;
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        name.truncate(end);
        let text = String::from_utf8(name).map_err(|_| bad("PT_INTERP is not UTF-8"))?;
        if !text.starts_with('/') {
            return Err(bad("PT_INTERP is not an absolute path"));
        }
        return Ok(Some(PathBuf::from(text)));
    }
    Ok(None)
}

struct Reader {
    le: bool,
}

impl Reader {
    fn u16(&self, b: &[u8]) -> u16 {
        let a = [b[0], b[1]];
        if self.le {
            u16::from_le_bytes(a)
        } else {
            u16::from_be_bytes(a)
        }
    }
    fn u32(&self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        if self.le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    }
    fn u64(&self, b: &[u8]) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[..8]);
        if self.le {
            u64::from_le_bytes(a)
        } else {
            u64::from_be_bytes(a)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_interpreter_of_running_test_binary() {
        let exe = std::fs::read_link("/proc/self/exe").expect("/proc/self/exe");
        let interp = interpreter(&exe).expect("parse own ELF headers");
        // Rust test binaries are dynamically linked against glibc or musl.
        if let Some(interp) = interp {
            assert!(interp.is_absolute());
            assert!(interp.to_string_lossy().contains("ld"), "{interp:?}");
            assert!(interp.exists(), "{interp:?}");
        }
    }

    #[test]
    fn rejects_non_elf() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("script");
        std::fs::write(&path, "#!/bin/sh\necho hi\n").expect("write");
        assert!(matches!(interpreter(&path), Err(BuildError::Elf { .. })));
    }
}
