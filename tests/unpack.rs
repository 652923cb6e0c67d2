//! The layer unpacker against hostile layers (built here, with raw header fields so the
//! tar crate's own checks do not stop them) and against the layer semantics images rely
//! on (whiteouts, opaque directories, replacements, links, modes).
//!
//! Every hostile case asserts the error AND that nothing appeared or changed outside the
//! target: each fixture has a `sentinel/` directory next to the root that must stay
//! empty, and an `outside/` directory with a victim file that must stay as it was.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use pysandbox::image::store::{NoProgress, Store};
use pysandbox::image::unpack::{UnpackError, UnpackOptions, UnpackStats, Unpacker};
use tar::EntryType;

struct Fixture {
    _dir: tempfile::TempDir,
    top: PathBuf,
    root: PathBuf,
    sentinel: PathBuf,
    outside: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().to_path_buf();
    let root = top.join("root");
    let sentinel = top.join("sentinel");
    let outside = top.join("outside");
    for d in [&root, &sentinel, &outside] {
        fs::create_dir(d).unwrap();
    }
    fs::write(outside.join("victim"), b"precious").unwrap();
    Fixture {
        _dir: dir,
        top,
        root,
        sentinel,
        outside,
    }
}

impl Fixture {
    /// Nothing outside the root was created, changed or removed.
    fn assert_outside_untouched(&self) {
        let mut top: Vec<String> = fs::read_dir(&self.top)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        top.sort();
        assert_eq!(
            top,
            ["outside", "root", "sentinel"],
            "new entries next to the root"
        );
        let s: Vec<_> = fs::read_dir(&self.sentinel).unwrap().collect();
        assert!(s.is_empty(), "the sentinel directory got {s:?}");
        let o: Vec<String> = fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(o, ["victim"]);
        let v = self.outside.join("victim");
        assert_eq!(fs::read(&v).unwrap(), b"precious");
        assert_eq!(
            fs::metadata(&v).unwrap().nlink(),
            1,
            "victim got a hardlink"
        );
        assert_eq!(fs::metadata(&v).unwrap().mode() & 0o7777, 0o644);
    }

    fn abs(&self, p: &Path) -> String {
        p.to_string_lossy().into_owned()
    }
}

/// A tar built entry by entry with raw names (no sanitizing).
struct Tar {
    b: tar::Builder<Vec<u8>>,
}

impl Tar {
    fn new() -> Tar {
        Tar {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn entry(
        &mut self,
        kind: EntryType,
        path: &str,
        link: &str,
        mode: u32,
        data: &[u8],
    ) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        if path.len() >= 100 || link.len() >= 100 {
            if path.len() >= 100 {
                self.long(EntryType::GNULongName, path);
            }
            if link.len() >= 100 {
                self.long(EntryType::GNULongLink, link);
            }
        }
        {
            let g = h.as_gnu_mut().unwrap();
            let p = path.as_bytes();
            let n = p.len().min(99);
            g.name[..n].copy_from_slice(&p[..n]);
            let l = link.as_bytes();
            let n = l.len().min(99);
            g.linkname[..n].copy_from_slice(&l[..n]);
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_mtime(1_600_000_000);
        h.set_uid(12345);
        h.set_gid(12345);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    fn long(&mut self, kind: EntryType, value: &str) {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(kind);
        h.set_mode(0o644);
        let mut data = value.as_bytes().to_vec();
        data.push(0);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.b.append(&h, &data[..]).unwrap();
    }

    fn pax(&mut self, records: &[(&str, &str)]) -> &mut Self {
        let mut data = Vec::new();
        for (k, v) in records {
            // "LEN key=value\n", LEN counting its own digits.
            let body = format!(" {k}={v}\n");
            let mut len = body.len() + 1;
            while len.to_string().len() + body.len() != len {
                len = len.to_string().len() + body.len();
            }
            data.extend_from_slice(format!("{len}{body}").as_bytes());
        }
        let mut h = tar::Header::new_ustar();
        h.set_path("PaxHeaders/x").unwrap();
        h.set_entry_type(EntryType::XHeader);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        self.b.append(&h, &data[..]).unwrap();
        self
    }

    fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.entry(EntryType::Regular, path, "", 0o644, data)
    }
    fn file_mode(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.entry(EntryType::Regular, path, "", mode, data)
    }
    fn dir(&mut self, path: &str) -> &mut Self {
        self.entry(EntryType::Directory, path, "", 0o755, b"")
    }
    fn dir_mode(&mut self, path: &str, mode: u32) -> &mut Self {
        self.entry(EntryType::Directory, path, "", mode, b"")
    }
    fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entry(EntryType::Symlink, path, target, 0o777, b"")
    }
    fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entry(EntryType::Link, path, target, 0o644, b"")
    }

    fn bytes(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.b, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }
}

fn unpack_with(
    root: &Path,
    opts: UnpackOptions,
    layers: &[Vec<u8>],
) -> Result<UnpackStats, UnpackError> {
    let mut u = Unpacker::new(root, opts)?;
    for (i, l) in layers.iter().enumerate() {
        u.apply_tar(&format!("layer{i}"), &l[..])?;
    }
    u.finish()
}

fn unpack(root: &Path, layers: &[Vec<u8>]) -> Result<UnpackStats, UnpackError> {
    unpack_with(root, UnpackOptions::default(), layers)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[track_caller]
fn assert_refused(r: Result<UnpackStats, UnpackError>, entry: &str, why: &str) {
    match r {
        Err(UnpackError::Refused {
            entry: e, why: w, ..
        }) => {
            assert_eq!(e, entry, "refused the wrong entry ({w})");
            assert!(w.contains(why), "refusal {w:?} does not mention {why:?}");
        }
        other => panic!("expected entry {entry:?} to be refused, got {other:?}"),
    }
}

// ---- hostile layers ----

#[test]
fn dotdot_climbing_out_is_refused() {
    let f = fixture();
    let l = Tar::new().file("../sentinel/pwned", b"x").bytes();
    assert_refused(unpack(&f.root, &[l]), "../sentinel/pwned", "climbs above");
    f.assert_outside_untouched();
}

#[test]
fn dotdot_in_the_middle_climbing_out_is_refused() {
    let f = fixture();
    let l = Tar::new()
        .dir("a/")
        .file("a/../../sentinel/pwned", b"x")
        .bytes();
    assert_refused(
        unpack(&f.root, &[l]),
        "a/../../sentinel/pwned",
        "climbs above",
    );
    f.assert_outside_untouched();
}

#[test]
fn dotdot_staying_inside_is_cleaned() {
    let f = fixture();
    let l = Tar::new().file("a/b/../../c", b"x").bytes();
    unpack(&f.root, &[l]).unwrap();
    assert_eq!(fs::read(f.root.join("c")).unwrap(), b"x");
    f.assert_outside_untouched();
}

#[test]
fn absolute_paths_land_inside_the_root() {
    let f = fixture();
    let abs = format!("{}/pwned", f.abs(&f.sentinel));
    let l = Tar::new()
        .file("/etc/issue", b"hi")
        .file(&abs, b"x")
        .bytes();
    unpack(&f.root, &[l]).unwrap();
    assert_eq!(fs::read(f.root.join("etc/issue")).unwrap(), b"hi");
    assert!(f.root.join(abs.trim_start_matches('/')).is_file());
    f.assert_outside_untouched();
}

#[test]
fn long_gnu_name_climbing_out_is_refused() {
    let f = fixture();
    let long = format!("{}../sentinel/pwned", "./".repeat(60));
    assert!(long.len() >= 100, "needs a GNU long name entry");
    let l = Tar::new().file(&long, b"x").bytes();
    assert_refused(unpack(&f.root, &[l]), &long, "climbs above");
    f.assert_outside_untouched();
}

#[test]
fn pax_path_climbing_out_is_refused() {
    let f = fixture();
    let l = Tar::new()
        .pax(&[("path", "../sentinel/pwned")])
        .file("harmless", b"x")
        .bytes();
    assert_refused(unpack(&f.root, &[l]), "../sentinel/pwned", "climbs above");
    assert!(!f.root.join("harmless").exists());
    f.assert_outside_untouched();
}

#[test]
fn write_through_relative_symlink_out_is_refused() {
    let f = fixture();
    let l = Tar::new()
        .symlink("evil", "../sentinel")
        .file("evil/pwned", b"x")
        .bytes();
    assert_refused(
        unpack(&f.root, &[l]),
        "evil/pwned",
        "outside the image root",
    );
    f.assert_outside_untouched();
}

#[test]
fn write_through_absolute_symlink_is_refused() {
    let f = fixture();
    let l = Tar::new()
        .symlink("evil", &f.abs(&f.sentinel))
        .file("evil/pwned", b"x")
        .bytes();
    assert_refused(
        unpack(&f.root, &[l]),
        "evil/pwned",
        "outside the image root",
    );
    f.assert_outside_untouched();
}

#[test]
fn write_through_symlink_from_a_lower_layer_is_refused() {
    let f = fixture();
    let l1 = Tar::new()
        .dir("usr/")
        .symlink("usr/evil", "../../sentinel")
        .bytes();
    let l2 = Tar::new().file("usr/evil/pwned", b"x").bytes();
    assert_refused(
        unpack(&f.root, &[l1, l2]),
        "usr/evil/pwned",
        "outside the image root",
    );
    f.assert_outside_untouched();
}

#[test]
fn write_through_a_symlink_chain_out_is_refused() {
    let f = fixture();
    // Each link looks harmless alone; together they climb out.
    let l1 = Tar::new()
        .dir("sub/")
        .symlink("a", "sub/b")
        .symlink("sub/b", "../..")
        .bytes();
    let l2 = Tar::new().file("a/sentinel/pwned", b"x").bytes();
    assert_refused(
        unpack(&f.root, &[l1, l2]),
        "a/sentinel/pwned",
        "outside the image root",
    );
    f.assert_outside_untouched();
}

#[test]
fn directory_entry_through_symlink_out_is_refused() {
    let f = fixture();
    let l = Tar::new()
        .symlink("evil", "../sentinel")
        .dir("evil/newdir/")
        .bytes();
    assert_refused(
        unpack(&f.root, &[l]),
        "evil/newdir/",
        "outside the image root",
    );
    f.assert_outside_untouched();
}

#[test]
fn symlink_through_symlink_out_is_refused() {
    let f = fixture();
    let l = Tar::new()
        .symlink("evil", "../sentinel")
        .symlink("evil/link", "/etc/passwd")
        .bytes();
    assert_refused(unpack(&f.root, &[l]), "evil/link", "outside the image root");
    f.assert_outside_untouched();
}

#[test]
fn file_over_a_symlink_replaces_the_symlink() {
    // The last component is never followed: the symlink is replaced, its target untouched.
    let f = fixture();
    let victim = f.outside.join("victim");
    let l1 = Tar::new()
        .symlink("evil", &f.abs(&victim))
        .symlink("rel", "../outside/victim")
        .bytes();
    let l2 = Tar::new()
        .file("evil", b"overwritten?")
        .file("rel", b"overwritten?")
        .bytes();
    unpack(&f.root, &[l1, l2]).unwrap();
    assert!(fs::symlink_metadata(f.root.join("evil")).unwrap().is_file());
    assert!(fs::symlink_metadata(f.root.join("rel")).unwrap().is_file());
    f.assert_outside_untouched();
}

#[test]
fn hardlink_to_outside_is_refused() {
    let f = fixture();
    let l = Tar::new().hardlink("h", "../outside/victim").bytes();
    assert_refused(unpack(&f.root, &[l]), "h", "climbs above");
    f.assert_outside_untouched();
}

#[test]
fn hardlink_to_absolute_host_path_stays_inside() {
    // `/abs/outside/victim` means ROOT/abs/outside/victim, which does not exist.
    let f = fixture();
    let l = Tar::new()
        .hardlink("h", &f.abs(&f.outside.join("victim")))
        .bytes();
    assert_refused(unpack(&f.root, &[l]), "h", "does not exist");
    assert!(!f.root.join("h").exists());
    f.assert_outside_untouched();
}

#[test]
fn hardlink_through_symlink_out_is_refused() {
    let f = fixture();
    let l = Tar::new()
        .symlink("s", &f.abs(&f.outside))
        .hardlink("h", "s/victim")
        .bytes();
    assert_refused(unpack(&f.root, &[l]), "h", "outside the image root");
    assert!(!f.root.join("h").exists());
    f.assert_outside_untouched();
}

#[test]
fn hardlink_to_a_symlink_links_the_symlink_itself() {
    let f = fixture();
    let l = Tar::new()
        .symlink("s", &f.abs(&f.outside.join("victim")))
        .hardlink("h", "s")
        .bytes();
    unpack(&f.root, &[l]).unwrap();
    let h = fs::symlink_metadata(f.root.join("h")).unwrap();
    assert!(
        h.file_type().is_symlink(),
        "the link must not follow the symlink"
    );
    f.assert_outside_untouched();
}

#[test]
fn whiteout_through_symlink_out_is_refused() {
    let f = fixture();
    let l1 = Tar::new().symlink("evil", "../outside").bytes();
    let l2 = Tar::new().file("evil/.wh.victim", b"").bytes();
    assert_refused(
        unpack(&f.root, &[l1, l2]),
        "evil/.wh.victim",
        "outside the image root",
    );
    f.assert_outside_untouched();
}

#[test]
fn opaque_whiteout_through_symlink_out_is_refused() {
    let f = fixture();
    let l1 = Tar::new().symlink("evil", &f.abs(&f.outside)).bytes();
    let l2 = Tar::new().file("evil/.wh..wh..opq", b"").bytes();
    assert_refused(
        unpack(&f.root, &[l1, l2]),
        "evil/.wh..wh..opq",
        "outside the image root",
    );
    f.assert_outside_untouched();
}

#[test]
fn whiteout_climbing_out_is_refused() {
    let f = fixture();
    let l = Tar::new().file("../outside/.wh.victim", b"").bytes();
    assert_refused(
        unpack(&f.root, &[l]),
        "../outside/.wh.victim",
        "climbs above",
    );
    f.assert_outside_untouched();
}

#[test]
fn device_nodes_are_skipped() {
    let f = fixture();
    let mut t = Tar::new();
    t.entry(EntryType::Char, "dev/mem", "", 0o666, b"");
    t.entry(EntryType::Block, "dev/sda", "", 0o660, b"");
    t.file("after", b"ok");
    let s = unpack(&f.root, &[t.bytes()]).unwrap();
    assert!(!f.root.join("dev/mem").exists());
    assert!(!f.root.join("dev/sda").exists());
    assert_eq!(fs::read(f.root.join("after")).unwrap(), b"ok");
    assert_eq!(s.skipped, 2);
    assert!(
        s.notes
            .iter()
            .any(|n| n.contains("dev/mem") && n.contains("character device"))
    );
    assert!(
        s.notes
            .iter()
            .any(|n| n.contains("dev/sda") && n.contains("block device"))
    );
    f.assert_outside_untouched();
}

#[test]
fn setuid_and_setgid_are_stripped() {
    let f = fixture();
    let l = Tar::new()
        .file_mode("bin/su", 0o4755, b"#!")
        .file_mode("bin/wall", 0o2755, b"#!")
        .file_mode("bin/ro", 0o444, b"ro")
        .dir_mode("shared/", 0o3775)
        .dir_mode("locked/", 0o500)
        .bytes();
    unpack(&f.root, &[l]).unwrap();
    let mode = |p: &str| fs::symlink_metadata(f.root.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("bin/su"), 0o755);
    assert_eq!(mode("bin/wall"), 0o755);
    assert_eq!(mode("bin/ro"), 0o644, "the owner can always read and write");
    assert_eq!(mode("shared"), 0o1775, "sticky kept, setgid stripped");
    assert_eq!(
        mode("locked"),
        0o700,
        "the owner can always enter and write"
    );
    f.assert_outside_untouched();
}

#[test]
fn ownership_is_the_callers() {
    let f = fixture();
    let l = Tar::new().file("f", b"x").dir("d/").bytes();
    unpack(&f.root, &[l]).unwrap();
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    assert_eq!(fs::metadata(f.root.join("f")).unwrap().uid(), me);
    assert_eq!(fs::metadata(f.root.join("d")).unwrap().uid(), me);
}

#[test]
fn decompression_bomb_stops_at_the_cap() {
    // 64 MiB of zeros in a file, gzip-compressed to ~64 KiB; the cap is 8 MiB.
    let f = fixture();
    let mut h = tar::Header::new_gnu();
    h.set_path("zeros").unwrap();
    h.set_size(64 << 20);
    h.set_mode(0o644);
    h.set_cksum();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(h.as_bytes()).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        e.write_all(&zeros).unwrap();
    }
    e.write_all(&[0u8; 1024]).unwrap();
    let gz = e.finish().unwrap();
    assert!(gz.len() < 1 << 20);
    let opts = UnpackOptions {
        max_bytes: 8 << 20,
        ..Default::default()
    };
    let mut u = Unpacker::new(&f.root, opts).unwrap();
    let r = u.apply_blob("bomb", &gz[..], &NoProgress);
    match r {
        Err(UnpackError::Limit { why, .. }) => assert!(why.contains("max_bytes"), "{why}"),
        other => panic!("expected the size cap, got {other:?}"),
    }
    let written = fs::metadata(f.root.join("zeros"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(written <= 8 << 20, "wrote {written} bytes past the cap");
    f.assert_outside_untouched();
}

#[test]
fn too_many_entries_stop_at_the_cap() {
    let f = fixture();
    let mut t = Tar::new();
    for i in 0..50 {
        t.file(&format!("f{i}"), b"");
    }
    let opts = UnpackOptions {
        max_entries: 20,
        ..Default::default()
    };
    match unpack_with(&f.root, opts, &[t.bytes()]) {
        Err(UnpackError::Limit { why, .. }) => assert!(why.contains("max_entries"), "{why}"),
        other => panic!("expected the entry cap, got {other:?}"),
    }
    assert!(!f.root.join("f30").exists());
    f.assert_outside_untouched();
}

#[test]
fn huge_extension_header_is_refused() {
    let f = fixture();
    let mut h = tar::Header::new_ustar();
    h.set_path("PaxHeaders/x").unwrap();
    h.set_entry_type(EntryType::XHeader);
    h.set_size(8 << 20);
    h.set_mode(0o644);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &vec![b'a'; 8 << 20][..]).unwrap();
    let l = b.into_inner().unwrap();
    assert!(matches!(
        unpack(&f.root, &[l]),
        Err(UnpackError::Limit { .. })
    ));
    f.assert_outside_untouched();
}

#[test]
fn truncated_gzip_fails() {
    let f = fixture();
    let l = Tar::new()
        .file("a", &vec![7u8; 300_000])
        .file("b", b"bb")
        .bytes();
    let gz = gzip(&l);
    for cut in [gz.len() / 2, gz.len() - 4] {
        let dest = f.root.join(format!("cut{cut}"));
        fs::create_dir(&dest).unwrap();
        let mut u = Unpacker::new(&dest, UnpackOptions::default()).unwrap();
        match u.apply_blob("truncated", &gz[..cut], &NoProgress) {
            Err(UnpackError::Corrupt { why, .. }) => {
                assert!(
                    why.contains("end of file") || why.contains("incomplete"),
                    "{why}"
                )
            }
            other => panic!("expected a corrupt layer at cut {cut}, got {other:?}"),
        }
    }
    f.assert_outside_untouched();
}

#[test]
fn truncated_tar_fails() {
    let f = fixture();
    let l = Tar::new().file("a", &vec![7u8; 10_000]).bytes();
    match unpack(&f.root, &[l[..5000].to_vec()]) {
        Err(UnpackError::Corrupt { .. }) => {}
        other => panic!("expected a corrupt layer, got {other:?}"),
    }
}

#[test]
fn zstd_layers_are_refused_clearly() {
    let f = fixture();
    let mut u = Unpacker::new(&f.root, UnpackOptions::default()).unwrap();
    let blob = [0x28u8, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0];
    match u.apply_blob("z", &blob[..], &NoProgress) {
        Err(UnpackError::Unsupported { why, .. }) => assert!(why.contains("zstd"), "{why}"),
        other => panic!("expected zstd to be refused, got {other:?}"),
    }
}

/// A store holding one image whose only layer is `blob`; returns the manifest digest.
fn store_with_layer(dir: &Path, blob: &[u8]) -> (Store, String) {
    let store = Store::open(dir).unwrap();
    let (ld, ls) = store.put_bytes(blob).unwrap();
    let cfg = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let (cd, cs) = store.put_bytes(cfg).unwrap();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{cs}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{ld}","size":{ls}}}]}}"#
    );
    let (md, _) = store.put_bytes(manifest.as_bytes()).unwrap();
    (store, md)
}

/// The failed unpack left nothing that a later run could use.
fn assert_no_half_written_tree(store: &Store, md: &str) {
    let dir = store.root().join("rootfs").join(&md[7..]);
    assert!(!dir.join("rootfs").exists());
    let leftovers: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".lock")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn digest_mismatch_of_a_layer_fails_and_leaves_nothing() {
    let f = fixture();
    let sdir = tempfile::tempdir().unwrap();
    let layer = gzip(&Tar::new().file("hello", b"world").bytes());
    let (store, md) = store_with_layer(sdir.path(), &layer);
    let ld = store.manifest(&md).unwrap().layers()[0]
        .digest()
        .to_string();
    // Change the gzip header's mtime: the layer still decompresses fine, only the
    // digest tells.
    let p = store.blob_path(&ld).unwrap();
    let mut b = fs::read(&p).unwrap();
    b[4] ^= 0xff;
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&p, &b).unwrap();
    let err = store.rootfs(&md, &NoProgress).unwrap_err().to_string();
    assert!(err.contains(&format!("blob {ld} is corrupt")), "{err}");
    assert_no_half_written_tree(&store, &md);
    f.assert_outside_untouched();
}

#[test]
fn truncated_gzip_in_the_store_discards_the_temp_dir() {
    // The blob's digest matches (it was stored truncated): the gzip itself is short.
    let sdir = tempfile::tempdir().unwrap();
    let layer = gzip(
        &Tar::new()
            .file("a", &vec![3u8; 200_000])
            .file("b", b"b")
            .bytes(),
    );
    let (store, md) = store_with_layer(sdir.path(), &layer[..layer.len() - 10]);
    let err = store.rootfs(&md, &NoProgress).unwrap_err().to_string();
    assert!(err.contains("corrupt or truncated"), "{err}");
    assert_no_half_written_tree(&store, &md);
    // And again: still an error, never a half tree.
    assert!(store.rootfs(&md, &NoProgress).is_err());
    assert_no_half_written_tree(&store, &md);
}

#[test]
fn expansion_ratio_cap_stops_a_bomb_early() {
    let f = fixture();
    let mut t = Tar::new();
    t.file("zeros", &vec![0u8; 16 << 20]);
    let gz = gzip(&t.bytes());
    let opts = UnpackOptions {
        max_ratio: 50,
        ratio_floor: 1 << 20,
        ..Default::default()
    };
    let mut u = Unpacker::new(&f.root, opts).unwrap();
    match u.apply_blob("bomb", &gz[..], &NoProgress) {
        Err(UnpackError::Limit { why, .. }) => assert!(why.contains("max_ratio"), "{why}"),
        other => panic!("expected the ratio cap, got {other:?}"),
    }
    let written = fs::metadata(f.root.join("zeros"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(written < 8 << 20, "wrote {written} bytes");
    f.assert_outside_untouched();
}

// ---- layer semantics ----

#[test]
fn whiteouts_and_opaque_directories_across_layers() {
    let f = fixture();
    let l1 = Tar::new()
        .dir("d/")
        .file("d/a", b"a")
        .file("d/b", b"b")
        .dir("d/sub/")
        .file("d/sub/c", b"c")
        .dir("e/")
        .file("e/x", b"x")
        .dir("keep/")
        .file("keep/y", b"y")
        .file("keep/z", b"z")
        .bytes();
    // The opaque marker comes AFTER this layer's own entries of d/: they stay.
    let l2 = Tar::new()
        .dir("d/")
        .file("d/new", b"new")
        .dir("d/sub/")
        .file("d/sub/mine", b"m")
        .file("d/.wh..wh..opq", b"")
        .file(".wh.e", b"")
        .file("keep/.wh.y", b"")
        .file("keep/.wh.absent", b"")
        .bytes();
    let s = unpack(&f.root, &[l1, l2]).unwrap();
    let mut d: Vec<String> = fs::read_dir(f.root.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    d.sort();
    assert_eq!(d, ["new", "sub"]);
    let sub: Vec<_> = fs::read_dir(f.root.join("d/sub")).unwrap().collect();
    assert_eq!(sub.len(), 1, "lower d/sub/c must be gone");
    assert!(f.root.join("d/sub/mine").is_file());
    assert!(!f.root.join("e").exists());
    assert!(!f.root.join("keep/y").exists());
    assert!(f.root.join("keep/z").is_file());
    assert!(
        !f.root.join("keep/.wh.y").exists(),
        "whiteout files are not content"
    );
    assert_eq!(s.whiteouts, 4);
    f.assert_outside_untouched();
}

#[test]
fn opaque_marker_first_then_entries() {
    let f = fixture();
    let l1 = Tar::new().dir("d/").file("d/old", b"o").bytes();
    let l2 = Tar::new()
        .dir("d/")
        .file("d/.wh..wh..opq", b"")
        .file("d/new", b"n")
        .bytes();
    unpack(&f.root, &[l1, l2]).unwrap();
    assert!(!f.root.join("d/old").exists());
    assert!(f.root.join("d/new").exists());
}

#[test]
fn whiteout_does_not_hide_its_own_layer() {
    let f = fixture();
    let l = Tar::new().file("same", b"s").file(".wh.same", b"").bytes();
    unpack(&f.root, &[l]).unwrap();
    assert!(f.root.join("same").exists());
}

#[test]
fn file_and_directory_replace_each_other() {
    let f = fixture();
    let l1 = Tar::new()
        .dir("x/")
        .file("x/f", b"f")
        .dir("x/deep/")
        .file("x/deep/g", b"g")
        .file("y", b"file")
        .symlink("z", "x")
        .bytes();
    let l2 = Tar::new()
        .file("x", b"now a file")
        .dir("y/")
        .file("y/g", b"g")
        .dir("z/")
        .file("z/real", b"r")
        .bytes();
    unpack(&f.root, &[l1, l2]).unwrap();
    assert_eq!(fs::read(f.root.join("x")).unwrap(), b"now a file");
    assert_eq!(fs::read(f.root.join("y/g")).unwrap(), b"g");
    let z = fs::symlink_metadata(f.root.join("z")).unwrap();
    assert!(z.is_dir(), "a directory entry replaces a symlink");
    assert!(f.root.join("z/real").is_file());
    f.assert_outside_untouched();
}

#[test]
fn hardlinks_inside_work() {
    let f = fixture();
    let l1 = Tar::new().file("a", b"shared").hardlink("b", "a").bytes();
    let l2 = Tar::new().hardlink("c", "/a").bytes();
    let s = unpack(&f.root, &[l1, l2]).unwrap();
    let ino = |p: &str| fs::metadata(f.root.join(p)).unwrap().ino();
    assert_eq!(ino("a"), ino("b"));
    assert_eq!(ino("a"), ino("c"));
    assert_eq!(s.hardlinks, 2);
    f.assert_outside_untouched();
}

#[test]
fn overwriting_a_hardlink_does_not_change_the_other_name() {
    let f = fixture();
    let l1 = Tar::new().file("a", b"original").hardlink("b", "a").bytes();
    let l2 = Tar::new().file("b", b"replaced").bytes();
    unpack(&f.root, &[l1, l2]).unwrap();
    assert_eq!(fs::read(f.root.join("a")).unwrap(), b"original");
    assert_eq!(fs::read(f.root.join("b")).unwrap(), b"replaced");
}

#[test]
fn symlinks_inside_are_kept_and_not_followed() {
    let f = fixture();
    let l1 = Tar::new()
        .dir("usr/")
        .dir("usr/lib/")
        .symlink("lib", "usr/lib")
        .symlink("abs", "/etc/passwd")
        .symlink("dangling", "nowhere/at/all")
        .bytes();
    // usrmerge: writing through a relative symlink that stays inside is fine.
    let l2 = Tar::new().file("lib/libx.so", b"elf").bytes();
    let s = unpack(&f.root, &[l1, l2]).unwrap();
    assert_eq!(
        fs::read_link(f.root.join("abs")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert!(!f.root.join("etc").exists());
    assert_eq!(
        fs::read_link(f.root.join("dangling")).unwrap(),
        Path::new("nowhere/at/all")
    );
    assert_eq!(fs::read(f.root.join("usr/lib/libx.so")).unwrap(), b"elf");
    assert_eq!(s.symlinks, 3);
    f.assert_outside_untouched();
}

#[test]
fn fifos_mtimes_and_implied_directories() {
    let f = fixture();
    let mut t = Tar::new();
    t.entry(EntryType::Fifo, "run/pipe", "", 0o620, b"");
    t.file("deep/er/file", b"x");
    t.dir_mode("timed/", 0o750);
    t.file("timed/f", b"t");
    let s = unpack(&f.root, &[t.bytes()]).unwrap();
    let p = fs::symlink_metadata(f.root.join("run/pipe")).unwrap();
    assert!(p.file_type().is_fifo());
    assert_eq!(p.mode() & 0o7777, 0o620);
    assert_eq!(s.fifos, 1);
    let implied = fs::metadata(f.root.join("deep/er")).unwrap();
    assert_eq!(implied.mode() & 0o7777, 0o755);
    assert_eq!(
        fs::metadata(f.root.join("deep/er/file")).unwrap().mtime(),
        1_600_000_000
    );
    let timed = fs::metadata(f.root.join("timed")).unwrap();
    assert_eq!(
        timed.mtime(),
        1_600_000_000,
        "directory mtimes survive their children"
    );
    assert_eq!(timed.mode() & 0o7777, 0o750);
}

#[test]
fn pax_long_paths_and_gnu_long_names_work() {
    let f = fixture();
    let long = format!("{}/file", "longdirectoryname".repeat(8));
    let l = Tar::new()
        .pax(&[("path", "pax/named/file"), ("mtime", "1500000000.5")])
        .file("ignored", b"p")
        .file(&long, b"g")
        .bytes();
    unpack(&f.root, &[l]).unwrap();
    assert_eq!(fs::read(f.root.join("pax/named/file")).unwrap(), b"p");
    assert_eq!(
        fs::metadata(f.root.join("pax/named/file")).unwrap().mtime(),
        1_500_000_000
    );
    assert_eq!(fs::read(f.root.join(&long)).unwrap(), b"g");
    assert!(!f.root.join("ignored").exists());
}

#[test]
fn gzip_and_plain_blobs_give_the_same_tree() {
    let f = fixture();
    let l = Tar::new()
        .dir("a/")
        .file("a/b", &vec![1u8; 3 << 20])
        .symlink("c", "a/b")
        .bytes();
    let (d1, d2) = (f.root.join("one"), f.root.join("two"));
    fs::create_dir(&d1).unwrap();
    fs::create_dir(&d2).unwrap();
    let mut u = Unpacker::new(&d1, UnpackOptions::default()).unwrap();
    u.apply_blob("gz", &gzip(&l)[..], &NoProgress).unwrap();
    let s1 = u.finish().unwrap();
    let mut u = Unpacker::new(&d2, UnpackOptions::default()).unwrap();
    u.apply_blob("plain", &l[..], &NoProgress).unwrap();
    let s2 = u.finish().unwrap();
    assert_eq!(
        fs::read(d1.join("a/b")).unwrap(),
        fs::read(d2.join("a/b")).unwrap()
    );
    assert_eq!((s1.files, s1.bytes), (s2.files, s2.bytes));
    assert_eq!(s1.bytes, 3 << 20);
    assert!(s1.compressed_bytes < s2.compressed_bytes);
}

#[test]
fn serial_and_parallel_writers_give_the_same_tree() {
    let f = fixture();
    let mut l1 = Tar::new();
    for i in 0..300 {
        l1.file(&format!("d{}/f{i}", i % 7), format!("{i}").as_bytes());
    }
    l1.file("big", &vec![9u8; 3 << 20])
        .hardlink("d0/link", "d0/f0");
    let mut l2 = Tar::new();
    l2.file("d1/.wh..wh..opq", b"")
        .file("d1/f1", b"again")
        .file("d0/f0", b"replaced")
        .file("d2", b"a file now")
        .file(".wh.d3", b"");
    let layers = [l1.bytes(), l2.bytes()];
    let mut trees = Vec::new();
    for writers in [0, 1, 4] {
        let dest = f.root.join(format!("w{writers}"));
        fs::create_dir(&dest).unwrap();
        let opts = UnpackOptions {
            writers,
            ..Default::default()
        };
        let s = unpack_with(&dest, opts, &layers).unwrap();
        let mut t: Vec<(String, Vec<u8>)> = Vec::new();
        let mut todo = vec![dest.clone()];
        while let Some(d) = todo.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let rel = p
                    .strip_prefix(&dest)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                if p.is_dir() {
                    todo.push(p);
                    t.push((rel, Vec::new()));
                } else {
                    t.push((rel, fs::read(&p).unwrap()));
                }
            }
        }
        t.sort();
        trees.push((t, s.files, s.whiteouts));
    }
    assert_eq!(trees[0], trees[1]);
    assert_eq!(trees[0], trees[2]);
    let t = &trees[0].0;
    assert!(t.iter().any(|(p, c)| p == "d0/f0" && c == b"replaced"));
    assert!(
        t.iter().any(|(p, c)| p == "d0/link" && c == b"0"),
        "the link keeps the old inode"
    );
    assert!(t.iter().any(|(p, c)| p == "d2" && c == b"a file now"));
    assert!(!t.iter().any(|(p, _)| p.starts_with("d3")));
    assert_eq!(t.iter().filter(|(p, _)| p.starts_with("d1/")).count(), 1);
}
