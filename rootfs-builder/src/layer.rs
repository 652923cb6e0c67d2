//! Reproducible OCI layers: a directory tree in, a gzip'd tar out, byte-for-byte the same
//! for the same tree. Entries are sorted, owned by 0:0 with no user/group names, stamped
//! with one fixed mtime, set-id bits stripped, the gzip header carries no name and no
//! time. Overlay upper directories are understood: a whiteout (character device 0:0)
//! becomes `.wh.NAME`, an opaque directory gets `.wh..wh..opq`.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The mtime of every entry (the epoch: "no time").
pub const FIXED_MTIME: u64 = 0;

/// Digests of a written layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDigests {
    /// `sha256:` of the gzip'd blob (the layer's digest).
    pub digest: String,
    /// Size of the gzip'd blob.
    pub size: u64,
    /// `sha256:` of the uncompressed tar (the config's diff_id).
    pub diff_id: String,
    /// Regular files in the layer.
    pub files: u64,
    /// Whether the blob is gzip'd (else a plain tar: `digest` is `diff_id`).
    pub gzip: bool,
}

/// A writer that hashes (and counts) what passes through it.
struct Hashing<W: Write> {
    inner: W,
    hash: Sha256,
    n: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// How the source directory should be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A plain tree.
    Tree,
    /// An overlayfs upper directory; `xattr_prefix` is `trusted.` or `user.`.
    OverlayUpper { xattr_prefix: &'static str },
}

fn is_opaque(dir: &Path, prefix: &str) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let (Ok(p), Ok(n)) = (
        std::ffi::CString::new(dir.as_os_str().as_bytes()),
        std::ffi::CString::new(format!("{prefix}overlay.opaque")),
    ) else {
        return false;
    };
    let mut v = [0u8; 4];
    // SAFETY: lgetxattr into a stack buffer of the given length.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
    r == 1 && v[0] == b'y'
}

/// The gzip + two-hash pipeline every layer goes through.
fn layer_pipeline<W: Write>(out: W) -> Hashing<flate2::write::GzEncoder<Hashing<W>>> {
    let gz = flate2::GzBuilder::new().mtime(0).write(
        Hashing {
            inner: out,
            hash: Sha256::new(),
            n: 0,
        },
        flate2::Compression::new(6),
    );
    Hashing {
        inner: gz,
        hash: Sha256::new(),
        n: 0,
    }
}

fn close_pipeline<W: Write>(
    tar_out: Hashing<flate2::write::GzEncoder<Hashing<W>>>,
    files: u64,
) -> io::Result<LayerDigests> {
    let diff_id = format!("sha256:{}", hex(&tar_out.hash.finalize()));
    let gz_out = tar_out.inner.finish()?;
    Ok(LayerDigests {
        digest: format!("sha256:{}", hex(&gz_out.hash.finalize())),
        size: gz_out.n,
        diff_id,
        files,
        gzip: true,
    })
}

/// Gzips an uncompressed tar stream into `out` as a layer (test fixtures, imports).
pub fn write_layer_tar(tar: &mut dyn io::Read, out: impl Write) -> io::Result<LayerDigests> {
    let mut p = layer_pipeline(out);
    io::copy(tar, &mut p)?;
    close_pipeline(p, 0)
}

/// Writes `src` as a gzip'd tar into `out`, every path under `prefix` (e.g. `opt/conda`,
/// or empty for a whole root file system).
pub fn write_layer(
    src: &Path,
    prefix: &str,
    source: Source,
    out: impl Write,
) -> io::Result<LayerDigests> {
    let (pipeline, files) = write_tar(src, prefix, source, layer_pipeline(out))?;
    close_pipeline(pipeline, files)
}

/// Writes `src` as a plain (uncompressed) tar layer into `out`: for a layer that is
/// written on the critical path of a first run and kept locally (the default image),
/// where gzip would cost seconds.
pub fn write_plain_layer(src: &Path, source: Source, out: impl Write) -> io::Result<LayerDigests> {
    let hashing = Hashing {
        inner: out,
        hash: Sha256::new(),
        n: 0,
    };
    let (mut out, files) = write_tar(src, "", source, hashing)?;
    out.flush()?;
    let digest = format!("sha256:{}", hex(&out.hash.finalize()));
    Ok(LayerDigests {
        diff_id: digest.clone(),
        digest,
        size: out.n,
        files,
        gzip: false,
    })
}

/// The tar of `src` (paths under `prefix`) into `out`; returns `out` and the number of
/// regular files.
fn write_tar<W: Write>(src: &Path, prefix: &str, source: Source, out: W) -> io::Result<(W, u64)> {
    let mut b = tar::Builder::new(out);
    b.mode(tar::HeaderMode::Deterministic);
    b.follow_symlinks(false);
    let mut w = Walker {
        builder: &mut b,
        links: HashMap::new(),
        source,
        files: 0,
    };
    let prefix = prefix.trim_matches('/');
    let root = PathBuf::from(prefix);
    if !prefix.is_empty() {
        // The prefix's own directories, so the layer unpacks alone.
        let mut acc = PathBuf::new();
        for c in root.components() {
            acc.push(c);
            w.dir(&acc, 0o755)?;
        }
    }
    w.walk(src, &root)?;
    let files = w.files;
    Ok((b.into_inner()?, files))
}

struct Walker<'a, W: Write> {
    builder: &'a mut tar::Builder<W>,
    /// (dev, ino) of regular files with several links -> their first path in the layer.
    links: HashMap<(u64, u64), PathBuf>,
    source: Source,
    files: u64,
}

impl<W: Write> Walker<'_, W> {
    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode & 0o1777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(FIXED_MTIME);
        h.set_size(size);
        h
    }

    fn dir(&mut self, path: &Path, mode: u32) -> io::Result<()> {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0);
        self.builder.append_data(&mut h, path, io::empty())
    }

    fn walk(&mut self, dir: &Path, at: &Path) -> io::Result<()> {
        let mut names: Vec<_> = fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        if let Source::OverlayUpper { xattr_prefix } = self.source
            && !at.as_os_str().is_empty()
            && is_opaque(dir, xattr_prefix)
        {
            let mut h = Self::header(tar::EntryType::Regular, 0o644, 0);
            self.builder
                .append_data(&mut h, at.join(".wh..wh..opq"), io::empty())?;
        }
        for name in names {
            let p = dir.join(&name);
            let rel = at.join(&name);
            let m = fs::symlink_metadata(&p)?;
            let ft = m.file_type();
            let mode = m.mode();
            if ft.is_dir() {
                self.dir(&rel, mode)?;
                self.walk(&p, &rel)?;
            } else if ft.is_symlink() {
                let target = fs::read_link(&p)?;
                let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
                self.builder.append_link(&mut h, &rel, &target)?;
            } else if ft.is_file() {
                if m.nlink() > 1 {
                    if let Some(first) = self.links.get(&(m.dev(), m.ino())) {
                        let mut h = Self::header(tar::EntryType::Link, mode, 0);
                        self.builder.append_link(&mut h, &rel, first)?;
                        continue;
                    }
                    self.links.insert((m.dev(), m.ino()), rel.clone());
                }
                let mut h = Self::header(tar::EntryType::Regular, mode, m.len());
                self.builder
                    .append_data(&mut h, &rel, fs::File::open(&p)?)?;
                self.files += 1;
            } else if ft.is_char_device()
                && m.rdev() == 0
                && matches!(self.source, Source::OverlayUpper { .. })
            {
                let mut wh = name.clone();
                wh = std::ffi::OsString::from(format!(".wh.{}", wh.to_string_lossy()));
                let mut h = Self::header(tar::EntryType::Regular, 0o644, 0);
                self.builder.append_data(&mut h, at.join(wh), io::empty())?;
            }
            // Sockets, FIFOs and device nodes are not image content.
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("lib/python3.11/site-packages/pkg")).unwrap();
        fs::write(
            d.path()
                .join("lib/python3.11/site-packages/pkg/__init__.py"),
            "x = 1\n",
        )
        .unwrap();
        fs::write(d.path().join("bin-tool"), "#!/opt/conda/bin/python\n").unwrap();
        std::os::unix::fs::symlink("pkg", d.path().join("lib/python3.11/site-packages/alias"))
            .unwrap();
        fs::hard_link(d.path().join("bin-tool"), d.path().join("bin-tool2")).unwrap();
        d
    }

    #[test]
    fn same_tree_same_digests() {
        let a = tree();
        let b = tree();
        // Different mtimes and inode numbers must not matter.
        std::thread::sleep(std::time::Duration::from_millis(10));
        fs::write(b.path().join("bin-tool"), "#!/opt/conda/bin/python\n").unwrap();
        let mut va = Vec::new();
        let mut vb = Vec::new();
        let da = write_layer(a.path(), "opt/conda", Source::Tree, &mut va).unwrap();
        let db = write_layer(b.path(), "opt/conda", Source::Tree, &mut vb).unwrap();
        assert_eq!(da, db);
        assert_eq!(va, vb);
        assert_eq!(da.size, va.len() as u64);
        // Readable, prefixed, owned by root, epoch mtime.
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&va[..]));
        let mut names = Vec::new();
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            assert_eq!(e.header().uid().unwrap(), 0);
            assert_eq!(e.header().mtime().unwrap(), FIXED_MTIME);
            names.push(e.path().unwrap().to_string_lossy().into_owned());
        }
        assert!(
            names.contains(&"opt/conda/lib/python3.11/site-packages/pkg/__init__.py".to_string())
        );
        assert!(names.iter().all(|n| n.starts_with("opt")));
    }
}
