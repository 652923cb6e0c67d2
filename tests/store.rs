//! The image store on real files: blobs verified on write and on read, tags, listing,
//! inspect, remove and prune, imports of OCI layouts and of archives made by skopeo
//! (docker-archive, oci-archive), unpacking (idempotent, shared by concurrent runs).
//!
//! Tests that need skopeo are skipped with a message when it is missing, unless
//! PYSANDBOX_MUST_WORK=1.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use pysandbox::image::archive;
use pysandbox::image::store::{NoProgress, Progress, Store, StoreError};

fn tool(name: &str) -> bool {
    let ok = Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let msg = format!("SKIP: {name} is not installed");
        if std::env::var("PYSANDBOX_MUST_WORK").as_deref() == Ok("1") {
            panic!("{msg} (PYSANDBOX_MUST_WORK=1)");
        }
        eprintln!("{msg}");
    }
    ok
}

/// A layer tar from (path, content) pairs; paths ending in '/' are directories.
fn layer(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, data) in entries {
        let mut h = tar::Header::new_gnu();
        if p.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
        } else {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
        }
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, p, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// An OCI layout holding one image with these layers; returns its manifest digest.
fn make_layout(dir: &Path, name: &str, layers: &[Vec<u8>], packages: &str) -> String {
    let w = rootfs_builder::oci::Layout::create(dir).unwrap();
    let layers: Vec<_> = layers
        .iter()
        .map(|l| w.put_layer_tar(&mut &l[..]).unwrap())
        .collect();
    w.finish_with_config(
        &layers,
        serde_json::json!({
            "created": "2024-05-01T10:00:00Z",
            "config": {
                "Env": ["PATH=/opt/conda/bin:/usr/bin"],
                "Cmd": ["python"],
                "Labels": {"org.pysandbox.packages": packages},
            }
        }),
        name,
    )
    .unwrap()
}

fn two_layers() -> Vec<Vec<u8>> {
    vec![
        layer(&[
            ("etc/", b""),
            ("etc/os-release", b"ID=test\n"),
            ("opt/conda/bin/python", b"#!python"),
            ("gone", b"x"),
        ]),
        layer(&[
            ("opt/conda/lib/numpy.py", b"pi = 3.14\n"),
            (".wh.gone", b""),
        ]),
    ]
}

struct Counting(Arc<AtomicUsize>);

impl Progress for Counting {
    fn start(&self, _what: &str, _total: Option<u64>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn advance(&self, _n: u64) {}
    fn finish(&self) {}
}

/// path -> (kind, mode, content or link target) of every entry under `root`.
fn tree(root: &Path) -> BTreeMap<String, (char, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        for e in fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let md = fs::symlink_metadata(e.path()).unwrap();
            let key = r.to_string_lossy().into_owned();
            let mode = md.mode() & 0o7777;
            if md.is_dir() {
                out.insert(key, ('d', mode, Vec::new()));
                todo.push(r);
            } else if md.file_type().is_symlink() {
                let t = fs::read_link(e.path()).unwrap();
                out.insert(key, ('l', 0, t.to_string_lossy().as_bytes().to_vec()));
            } else {
                out.insert(key, ('f', mode, fs::read(e.path()).unwrap()));
            }
        }
    }
    out
}

#[test]
fn blobs_are_verified_on_write() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let (digest, size) = store.put_blob(&mut &b"hello"[..], None).unwrap();
    assert_eq!(
        digest,
        "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    );
    assert_eq!(size, 5);
    // Idempotent.
    let again = store
        .put_blob(&mut &b"hello"[..], Some((&digest, 5)))
        .unwrap();
    assert_eq!(again, (digest.clone(), 5));
    // Wrong content for the digest it claims.
    let other = format!("sha256:{}", "0".repeat(64));
    match store.put_blob(&mut &b"tampered"[..], Some((&other, 8))) {
        Err(StoreError::Mismatch { actual, .. }) => assert_ne!(actual, other),
        r => panic!("expected a mismatch, got {r:?}"),
    }
    assert!(!store.has_blob(&other));
    // Right content, wrong size; more data than announced.
    let (d2, _) = store.put_bytes(b"abc").unwrap();
    fs::remove_file(store.blob_path(&d2).unwrap()).unwrap();
    assert!(store.put_blob(&mut &b"abc"[..], Some((&d2, 4))).is_err());
    assert!(store.put_blob(&mut &b"abc"[..], Some((&d2, 2))).is_err());
    assert!(!store.has_blob(&d2));
    // Nothing left behind by the failures.
    let tmp: Vec<_> = fs::read_dir(d.path().join("tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "{tmp:?}");
    // Not a digest.
    assert!(matches!(
        store.put_blob(&mut &b"x"[..], Some(("sha256:../../etc", 1))),
        Err(StoreError::BadDigest(_))
    ));
    // Blobs are read-only files.
    let mode = fs::metadata(store.blob_path(&digest).unwrap())
        .unwrap()
        .mode();
    assert_eq!(mode & 0o777, 0o444);
}

#[test]
fn corrupt_blob_is_detected_on_read() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let (digest, _) = store.put_bytes(br#"{"some":"json"}"#).unwrap();
    assert!(store.read_blob(&digest, 1024).is_ok());
    assert!(matches!(
        store.read_blob(&digest, 4),
        Err(StoreError::TooLarge { .. })
    ));
    let p = store.blob_path(&digest).unwrap();
    let mut b = fs::read(&p).unwrap();
    b[3] ^= 0x20;
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&p, &b).unwrap();
    let err = store.read_blob(&digest, 1024).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("blob {digest} is corrupt")), "{msg}");
    assert!(msg.contains("Hint: pysandbox image rm"), "{msg}");
    // The streaming reader fails at EOF too.
    let mut r = store.open_blob(&digest).unwrap();
    let mut v = Vec::new();
    let e = r.read_to_end(&mut v).unwrap_err();
    assert!(e.to_string().contains("is corrupt"), "{e}");
    // Missing.
    let missing = format!("sha256:{}", "1".repeat(64));
    assert!(matches!(
        store.open_blob(&missing),
        Err(StoreError::MissingBlob { .. })
    ));
}

#[test]
fn tag_resolve_list_inspect_remove() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(&d.path().join("store")).unwrap();
    let layout = d.path().join("layout");
    let digest = make_layout(&layout, "latest", &two_layers(), "numpy==1.26");
    assert!(archive::is_importable(&layout));
    let got = archive::import(&store, &layout, Some("numpy"), &NoProgress).unwrap();
    assert_eq!(got, vec![("numpy:latest".to_string(), digest.clone())]);
    store.tag("localhost:5000/py:3.11", &digest).unwrap();
    store.tag("numpy", &digest).unwrap();

    assert_eq!(store.resolve("numpy").unwrap(), Some(digest.clone()));
    assert_eq!(store.resolve("numpy:latest").unwrap(), Some(digest.clone()));
    assert_eq!(store.resolve(&digest).unwrap(), Some(digest.clone()));
    assert_eq!(store.resolve(&digest[7..19]).unwrap(), Some(digest.clone()));
    assert_eq!(
        store.resolve("localhost:5000/py:3.11").unwrap(),
        Some(digest.clone())
    );
    assert_eq!(store.resolve("nothing").unwrap(), None);
    assert!(matches!(
        store.tag("bad name", &digest),
        Err(StoreError::BadName { .. })
    ));
    assert!(
        store
            .tag("x", &format!("sha256:{}", "2".repeat(64)))
            .is_err()
    );

    let list = store.list().unwrap();
    let names: Vec<&str> = list.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["localhost:5000/py:3.11", "numpy", "numpy:latest"]);
    assert!(list.iter().all(|i| i.digest == digest && i.size > 0));
    assert_eq!(list[0].created.as_deref(), Some("2024-05-01T10:00:00Z"));

    let info = store.inspect("numpy").unwrap();
    assert_eq!(info.digest, digest);
    assert_eq!(info.layers.len(), 2);
    assert!(
        info.layers
            .iter()
            .all(|l| l.media_type.ends_with("tar+gzip"))
    );
    assert_eq!(info.packages.as_deref(), Some("numpy==1.26"));
    assert_eq!(info.cmd, ["python"]);
    assert_eq!(info.os.as_deref(), Some("linux"));
    assert!(info.unpacked.is_none());
    let sum: u64 = info.layers.iter().map(|l| l.size).sum();
    assert!(info.size > sum);
    let guard = store.rootfs(&digest, &NoProgress).unwrap();
    let info = store.inspect("numpy").unwrap();
    let u = info.unpacked.unwrap();
    assert_eq!(u.path, guard.path);
    assert_eq!(u.files, 4, "written, whiteouts applied after");
    drop(guard);

    store.remove("numpy").unwrap();
    assert_eq!(
        store.resolve("numpy").unwrap(),
        Some(digest.clone()),
        "numpy:latest remains"
    );
    store.remove("numpy:latest").unwrap();
    assert_eq!(store.resolve("numpy").unwrap(), None);
    assert!(matches!(
        store.remove("numpy"),
        Err(StoreError::NotFound(_))
    ));
    let err = store.inspect("numpy").unwrap_err().to_string();
    assert!(err.contains("not found") && err.contains("Hint"), "{err}");
    assert_eq!(store.list().unwrap().len(), 1);
    // The store is itself an OCI layout.
    assert!(d.path().join("store/oci-layout").is_file());
}

#[test]
fn prune_keeps_what_is_tagged_or_in_use() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(&d.path().join("store")).unwrap();
    let a = make_layout(&d.path().join("a"), "a", &two_layers(), "");
    let b = make_layout(&d.path().join("b"), "b", &[layer(&[("only-b", b"b")])], "");
    let c = make_layout(&d.path().join("c"), "c", &[layer(&[("only-c", b"c")])], "");
    for x in ["a", "b", "c"] {
        archive::import(&store, &d.path().join(x), None, &NoProgress).unwrap();
    }
    let ma = store.manifest(&a).unwrap();
    let mb = store.manifest(&b).unwrap();
    let rb = store.rootfs(&b, &NoProgress).unwrap();
    drop(rb);
    let rc = store.rootfs(&c, &NoProgress).unwrap(); // held: a run uses it
    store.remove("b:b").unwrap();
    store.remove("c:c").unwrap();
    // A stray temp file of a writer that died.
    fs::write(d.path().join("store/tmp/put-deadbeef"), b"junk").unwrap();
    let s = store.prune().unwrap();
    assert_eq!(s.rootfs_removed, 1);
    assert_eq!(s.rootfs_in_use, 1);
    assert!(s.blobs_removed >= 6, "{s:?}"); // manifest, config, layer of b and of c
    assert!(s.bytes_freed > 0);
    assert!(!s.to_string().is_empty());
    assert!(store.has_blob(&a));
    assert!(store.has_blob(ma.config().digest().as_ref()));
    for l in ma.layers() {
        assert!(store.has_blob(l.digest().as_ref()));
    }
    assert!(!store.has_blob(&b));
    for l in mb.layers() {
        assert!(!store.has_blob(l.digest().as_ref()));
    }
    assert!(!d.path().join("store/tmp/put-deadbeef").exists());
    assert!(!store.root().join("rootfs").join(&b[7..]).exists());
    assert!(rc.path.join("only-c").is_file(), "a held tree stays");
    drop(rc);
    let s = store.prune().unwrap();
    assert_eq!(s.rootfs_removed, 1);
    assert!(!store.root().join("rootfs").join(&c[7..]).exists());
    // What is tagged still unpacks.
    let r = store.rootfs(&a, &NoProgress).unwrap();
    assert_eq!(
        fs::read(r.path.join("opt/conda/lib/numpy.py")).unwrap(),
        b"pi = 3.14\n"
    );
}

#[test]
fn rootfs_from_eight_threads_unpacks_once() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(&d.path().join("store")).unwrap();
    // Enough files that the unpack takes a moment.
    let files: Vec<(String, Vec<u8>)> = (0..400)
        .map(|i| (format!("pkg{}/m{i}.py", i % 20), vec![b'x'; 1000 + i]))
        .collect();
    let entries: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_slice()))
        .collect();
    let digest = make_layout(&d.path().join("l"), "big", &[layer(&entries)], "");
    archive::import(&store, &d.path().join("l"), None, &NoProgress).unwrap();
    let starts = Arc::new(AtomicUsize::new(0));
    let paths: Vec<PathBuf> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                let starts = starts.clone();
                let digest = digest.clone();
                s.spawn(move || {
                    let g = store.rootfs(&digest, &Counting(starts)).unwrap();
                    // Complete whenever it is visible.
                    assert!(g.path.join("pkg19/m399.py").is_file());
                    assert_eq!(fs::read_dir(g.path.join("pkg0")).unwrap().count(), 20);
                    g.path.clone()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(paths.iter().all(|p| *p == paths[0]));
    assert_eq!(
        starts.load(Ordering::SeqCst),
        1,
        "one unpack for eight runs"
    );
    let dir = paths[0].parent().unwrap();
    let names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    assert!(names.is_empty(), "leftover temp dirs {names:?}");
}

#[test]
fn unpack_is_idempotent() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(&d.path().join("store")).unwrap();
    let digest = make_layout(&d.path().join("l"), "x", &two_layers(), "");
    archive::import(&store, &d.path().join("l"), None, &NoProgress).unwrap();
    let s1 = store
        .unpack_to(&digest, &d.path().join("one"), &NoProgress)
        .unwrap();
    let s2 = store
        .unpack_to(&digest, &d.path().join("two"), &NoProgress)
        .unwrap();
    assert_eq!(s1, s2);
    assert_eq!(s1.whiteouts, 1, "{s1:?}");
    let t1 = tree(&d.path().join("one"));
    assert_eq!(t1, tree(&d.path().join("two")));
    assert!(t1.contains_key("opt/conda/lib/numpy.py"));
    assert!(!t1.contains_key("gone"));
    // Into a non-empty directory: refused.
    let err = store
        .unpack_to(&digest, &d.path().join("one"), &NoProgress)
        .unwrap_err();
    assert!(err.to_string().contains("must be empty"), "{err}");
    // rootfs() twice: one unpack.
    let n = Arc::new(AtomicUsize::new(0));
    let g1 = store.rootfs(&digest, &Counting(n.clone())).unwrap();
    let g2 = store.rootfs(&digest, &Counting(n.clone())).unwrap();
    assert_eq!(g1.path, g2.path);
    assert_eq!(
        n.load(Ordering::SeqCst),
        2,
        "one unpack: one start per layer"
    );
    // rootfs() adds the mount points pysandbox mounts over, and nothing else.
    let mut t = tree(&g1.path);
    for added in [
        "dev",
        "proc",
        "tmp",
        "home",
        "home/mambauser",
        "usr",
        "usr/app",
        "usr/app/src",
        "usr/app/data",
        "etc/resolv.conf",
    ] {
        if !t1.contains_key(added) {
            assert!(t.remove(added).is_some(), "{added} missing");
        }
    }
    assert_eq!(t, t1);
}

#[test]
fn import_picks_this_platform_from_an_index() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(&d.path().join("store")).unwrap();
    // Two single-image layouts whose blobs are merged into one layout with an index.
    let amd = make_layout(
        &d.path().join("amd"),
        "x",
        &[layer(&[("arch", b"amd64")])],
        "",
    );
    let arm = make_layout(
        &d.path().join("arm"),
        "x",
        &[layer(&[("arch", b"arm64")])],
        "",
    );
    let multi = d.path().join("multi");
    fs::create_dir_all(multi.join("blobs/sha256")).unwrap();
    for src in ["amd", "arm"] {
        for e in fs::read_dir(d.path().join(src).join("blobs/sha256")).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), multi.join("blobs/sha256").join(e.file_name())).unwrap();
        }
    }
    let size = |dg: &str| {
        fs::metadata(multi.join("blobs/sha256").join(&dg[7..]))
            .unwrap()
            .len()
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm, "size": size(&arm),
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd, "size": size(&amd),
             "platform": {"architecture": "amd64", "os": "linux"}},
        ]
    });
    let ib = serde_json::to_vec(&index).unwrap();
    let idig = format!("sha256:{}", sha256_hex(&ib));
    fs::write(multi.join("blobs/sha256").join(&idig[7..]), &ib).unwrap();
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": idig,
                       "size": ib.len(), "annotations": {"org.opencontainers.image.ref.name": "multi:1.0"}}]
    });
    fs::write(multi.join("index.json"), top.to_string()).unwrap();
    fs::write(
        multi.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let got = archive::import(&store, &multi, None, &NoProgress).unwrap();
    let want = match std::env::consts::ARCH {
        "aarch64" => &arm,
        _ => &amd,
    };
    assert_eq!(got, vec![("multi:1.0".to_string(), want.clone())]);
    let r = store.rootfs(want, &NoProgress).unwrap();
    assert!(r.path.join("arch").is_file());
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[test]
fn import_archives_made_by_skopeo() {
    if !tool("skopeo") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(&d.path().join("store")).unwrap();
    let layout = d.path().join("layout");
    let digest = make_layout(&layout, "1.0", &two_layers(), "requests");
    let skopeo = |src: String, dst: String| {
        let o = Command::new("skopeo")
            .args(["--insecure-policy", "copy", "-q", &src, &dst])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "skopeo copy {src} {dst}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let docker = d.path().join("img.docker.tar");
    let oci = d.path().join("img.oci.tar");
    skopeo(
        format!("oci:{}:1.0", layout.display()),
        format!("docker-archive:{}:team/py:3.11", docker.display()),
    );
    skopeo(
        format!("oci:{}:1.0", layout.display()),
        format!("oci-archive:{}:2.0", oci.display()),
    );
    archive::import(&store, &layout, Some("ref"), &NoProgress).unwrap();
    let reference = tree(&{
        let p = d.path().join("ref");
        store.unpack_to(&digest, &p, &NoProgress).unwrap();
        p
    });

    assert!(archive::is_importable(&docker));
    assert!(archive::is_importable(&oci));
    let not = d.path().join("not.tar");
    fs::write(&not, layer(&[("etc/passwd", b"root")])).unwrap();
    assert!(!archive::is_importable(&not));
    assert!(!archive::is_importable(&d.path().join("nothing-here")));

    // docker-archive: named by RepoTags (skopeo qualifies them); a new OCI manifest
    // over the same layers.
    let got = archive::import(&store, &docker, Some("ignored"), &NoProgress).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "docker.io/team/py:3.11");
    let dd = got[0].1.clone();
    assert_eq!(store.resolve("team/py:3.11").unwrap(), Some(dd.clone()));
    let p = d.path().join("from-docker");
    store.unpack_to(&dd, &p, &NoProgress).unwrap();
    assert_eq!(tree(&p), reference);
    assert_eq!(
        store.inspect("team/py:3.11").unwrap().packages.as_deref(),
        Some("requests")
    );

    // The same, gzip-compressed as a whole.
    let gz = d.path().join("img.docker.tar.gz");
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -c {} > {}", docker.display(), gz.display()))
        .status()
        .unwrap();
    assert!(o.success());
    assert!(archive::is_importable(&gz));
    let got = archive::import(&store, &gz, None, &NoProgress).unwrap();
    assert_eq!(
        got,
        vec![("docker.io/team/py:3.11".to_string(), dd.clone())]
    );

    // oci-archive: the bare tag "2.0" becomes FALLBACK:2.0; same manifest as the layout.
    let got = archive::import(&store, &oci, Some("mine"), &NoProgress).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "mine:2.0");
    let p = d.path().join("from-oci");
    store.unpack_to(&got[0].1, &p, &NoProgress).unwrap();
    assert_eq!(tree(&p), reference);
    // Without a fallback: the file name.
    let got = archive::import(&store, &oci, None, &NoProgress).unwrap();
    assert_eq!(got[0].0, "img:2.0");

    // A corrupted archive is refused and tags nothing.
    let mut bytes = fs::read(&oci).unwrap();
    let big = store.manifest(&digest).unwrap().layers()[0]
        .digest()
        .to_string();
    let pos = find(&bytes, format!("blobs/sha256/{}", &big[7..]).as_bytes()).unwrap();
    let data = pos - (pos % 512) + 512 + 12; // inside that blob's data
    bytes[data] ^= 0xff;
    let bad = d.path().join("bad.tar");
    fs::write(&bad, &bytes).unwrap();
    // (A fresh store: a store that has the blob already keeps its verified copy.)
    let fresh = Store::open(&d.path().join("fresh")).unwrap();
    let err = archive::import(&fresh, &bad, Some("bad"), &NoProgress).unwrap_err();
    assert!(matches!(err, StoreError::Mismatch { .. }), "{err:?}");
    assert!(fresh.list().unwrap().is_empty());
    assert!(!fresh.has_blob(&big));
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn export_then_import_round_trips() {
    let d = tempfile::tempdir().unwrap();
    let a = Store::open(&d.path().join("a")).unwrap();
    let b = Store::open(&d.path().join("b")).unwrap();
    let digest = make_layout(&d.path().join("l"), "v1", &two_layers(), "");
    archive::import(&a, &d.path().join("l"), Some("app"), &NoProgress).unwrap();
    let out = d.path().join("exported");
    assert_eq!(a.export_layout("app:v1", &out, "app:v1").unwrap(), digest);
    let got = archive::import(&b, &out, None, &NoProgress).unwrap();
    assert_eq!(got, vec![("app:v1".to_string(), digest)]);
}

#[test]
fn layout_of_a_directory_unpacks_to_the_same_tree() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir_all(src.join("bin")).unwrap();
    fs::write(src.join("bin/tool"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(src.join("bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(src.join("data"), b"d").unwrap();
    fs::hard_link(src.join("data"), src.join("data2")).unwrap();
    std::os::unix::fs::symlink("bin/tool", src.join("link")).unwrap();
    let w = rootfs_builder::oci::Layout::create(&d.path().join("l")).unwrap();
    let layer = w
        .put_layer(&src, "", rootfs_builder::layer::Source::Tree)
        .unwrap();
    let digest = w
        .finish_with_config(&[layer], serde_json::json!({}), "dir")
        .unwrap();
    let store = Store::open(&d.path().join("store")).unwrap();
    archive::import(&store, &d.path().join("l"), None, &NoProgress).unwrap();
    let out = d.path().join("out");
    store.unpack_to(&digest, &out, &NoProgress).unwrap();
    assert_eq!(tree(&out), tree(&src));
    assert_eq!(
        fs::metadata(out.join("data")).unwrap().ino(),
        fs::metadata(out.join("data2")).unwrap().ino()
    );
    let cfg = store.inspect(&digest).unwrap();
    assert_eq!(
        cfg.architecture.as_deref(),
        Some(pysandbox::image::store::host_arch())
    );
}
