//! `pull` against a real registry (`docker-registry serve`, on a loopback port, storage
//! in a temporary directory) fed by `skopeo copy`: digests, tags, an image index, Docker
//! schema 2 media types, a tampered blob, a missing tag, and the Bearer-token flow and
//! blob redirects through a small proxy written here.
//!
//! Skipped with a message when docker-registry or skopeo is missing, unless
//! PYSANDBOX_MUST_WORK=1.

#[allow(unused_macros)]
#[macro_use]
mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pysandbox::image::registry;
use pysandbox::image::store::{NoProgress, Store, StoreError};

fn tools() -> bool {
    for t in ["docker-registry", "skopeo"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
            .unwrap_or(false);
        if !found {
            let msg =
                format!("SKIP: {t} is not installed (apt-get install docker-registry skopeo)");
            if std::env::var("PYSANDBOX_MUST_WORK").as_deref() == Ok("1") {
                panic!("{msg} (PYSANDBOX_MUST_WORK=1)");
            }
            eprintln!("{msg}");
            return false;
        }
    }
    true
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A registry process, killed when dropped.
struct Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let r = Registry { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if http_get(port, "/v2/").is_some_and(|s| s.split_whitespace().nth(1) == Some("200")) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "the registry did not answer GET /v2/"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Where the registry keeps a blob's bytes.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let h = &digest[7..];
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&h[..2])
            .join(h)
            .join("data")
    }

    fn push(&self, layout: &Path, tag: &str, dest: &str, extra: &[&str]) {
        let o = Command::new("skopeo")
            .args(["--insecure-policy", "copy", "-q", "--dest-tls-verify=false"])
            .args(extra)
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{dest}", self.host()))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "skopeo push: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn layer(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, p, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// An OCI layout with one image; returns its manifest digest.
fn image(dir: &Path, tag: &str, content: &[u8]) -> String {
    let l = rootfs_builder::oci::Layout::create(dir).unwrap();
    let a = l
        .put_layer_tar(&mut &layer(&[("app/hello.py", content)])[..])
        .unwrap();
    let b = l
        .put_layer_tar(&mut &layer(&[("app/second.txt", b"2")])[..])
        .unwrap();
    l.finish_with_config(
        &[a, b],
        serde_json::json!({"config": {"Cmd": ["python"]}}),
        tag,
    )
    .unwrap()
}

fn manifest_layers(store: &Store, digest: &str) -> Vec<String> {
    store
        .manifest(digest)
        .unwrap()
        .layers()
        .iter()
        .map(|l| l.digest().to_string())
        .collect()
}

#[test]
fn pull_by_tag_and_digest() {
    if !tools() {
        return;
    }
    let reg = Registry::start();
    let d = tempfile::tempdir().unwrap();
    let layout = d.path().join("layout");
    let digest = image(&layout, "1.0", b"print('hi')\n");
    reg.push(&layout, "1.0", "team/py:1.0", &[]);

    let store = Store::open(&d.path().join("store")).unwrap();
    let reference = format!("{}/team/py:1.0", reg.host());
    let got = registry::pull(&store, &reference, false, &NoProgress).unwrap();
    assert_eq!(got, digest, "skopeo kept the OCI manifest as is");
    assert_eq!(store.resolve(&reference).unwrap(), Some(digest.clone()));
    for l in manifest_layers(&store, &digest) {
        assert!(store.has_blob(&l));
    }
    let r = store.rootfs(&digest, &NoProgress).unwrap();
    assert_eq!(
        fs::read(r.path.join("app/hello.py")).unwrap(),
        b"print('hi')\n"
    );
    drop(r);

    // By digest, into another store.
    let other = Store::open(&d.path().join("other")).unwrap();
    let by_digest = format!("{}/team/py@{digest}", reg.host());
    assert_eq!(
        registry::pull(&other, &by_digest, false, &NoProgress).unwrap(),
        digest
    );
    assert_eq!(other.resolve(&by_digest).unwrap(), Some(digest.clone()));
    // Again: nothing to download, same answer.
    assert_eq!(
        registry::pull(&store, &reference, false, &NoProgress).unwrap(),
        digest
    );
}

#[test]
fn missing_tag_and_repository_are_clear_errors() {
    if !tools() {
        return;
    }
    let reg = Registry::start();
    let d = tempfile::tempdir().unwrap();
    let layout = d.path().join("layout");
    image(&layout, "1.0", b"x");
    reg.push(&layout, "1.0", "team/py:1.0", &[]);
    let store = Store::open(&d.path().join("store")).unwrap();

    let err = registry::pull(
        &store,
        &format!("{}/team/py:nope", reg.host()),
        false,
        &NoProgress,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("manifest unknown") && err.contains("\"nope\""),
        "{err}"
    );
    assert!(err.contains("Hint"), "{err}");
    let err = registry::pull(
        &store,
        &format!("{}/no/such:1.0", reg.host()),
        false,
        &NoProgress,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("HTTP 404"), "{err}");
    assert!(store.list().unwrap().is_empty());

    // Nothing listens there.
    let err = registry::pull(
        &store,
        &format!("127.0.0.1:{}/x:1", free_port()),
        false,
        &NoProgress,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("cannot reach"), "{err}");
    // Not a reference.
    assert!(registry::pull(&store, "UPPER/case", false, &NoProgress).is_err());
}

#[test]
fn tampered_blob_is_refused() {
    if !tools() {
        return;
    }
    let reg = Registry::start();
    let d = tempfile::tempdir().unwrap();
    let layout = d.path().join("layout");
    let digest = image(&layout, "1.0", &vec![b'a'; 100_000]);
    reg.push(&layout, "1.0", "team/py:1.0", &[]);
    // Flip a byte of the first layer where the registry stores it.
    let probe = Store::open(&d.path().join("probe")).unwrap();
    pysandbox::image::archive::import(&probe, &layout, None, &NoProgress).unwrap();
    let first = manifest_layers(&probe, &digest)[0].clone();
    let f = reg.blob_file(&first);
    let mut b = fs::read(&f).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0xff;
    fs::write(&f, &b).unwrap();

    let store = Store::open(&d.path().join("store")).unwrap();
    let reference = format!("{}/team/py:1.0", reg.host());
    let err = registry::pull(&store, &reference, false, &NoProgress).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Pull { .. }), "{err:?}");
    assert!(msg.contains(&first) && msg.contains("tampered"), "{msg}");
    assert!(!store.has_blob(&first));
    assert_eq!(store.resolve(&reference).unwrap(), None);
    let tmp: Vec<_> = fs::read_dir(store.root().join("tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "{tmp:?}");
}

#[test]
fn image_index_pulls_this_platform() {
    if !tools() {
        return;
    }
    let reg = Registry::start();
    let d = tempfile::tempdir().unwrap();
    let amd = image(&d.path().join("amd"), "x", b"amd64");
    let arm = image(&d.path().join("arm"), "x", b"arm64");
    // One layout: both images' blobs and an index of them.
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
    let entry = |dg: &str, arch: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": dg, "size": size(dg),
            "platform": {"architecture": arch, "os": "linux"},
        })
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry(&arm, "arm64"), entry(&amd, "amd64")],
    });
    let ib = serde_json::to_vec(&index).unwrap();
    let idig = {
        use sha2::Digest;
        let h: String = sha2::Sha256::digest(&ib)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect();
        format!("sha256:{h}")
    };
    fs::write(multi.join("blobs/sha256").join(&idig[7..]), &ib).unwrap();
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": idig,
                       "size": ib.len(), "annotations": {"org.opencontainers.image.ref.name": "multi"}}],
    });
    fs::write(multi.join("index.json"), top.to_string()).unwrap();
    fs::write(
        multi.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    reg.push(&multi, "multi", "team/multi:1", &["--all"]);

    let store = Store::open(&d.path().join("store")).unwrap();
    let got = registry::pull(
        &store,
        &format!("{}/team/multi:1", reg.host()),
        false,
        &NoProgress,
    )
    .unwrap();
    let want = if std::env::consts::ARCH == "aarch64" {
        &arm
    } else {
        &amd
    };
    assert_eq!(&got, want);
    let r = store.rootfs(&got, &NoProgress).unwrap();
    let expect: &[u8] = if want == &amd { b"amd64" } else { b"arm64" };
    assert_eq!(fs::read(r.path.join("app/hello.py")).unwrap(), expect);
    assert!(store.has_blob(&idig), "the index is kept");
}

#[test]
fn docker_schema2_images_pull() {
    if !tools() {
        return;
    }
    let reg = Registry::start();
    let d = tempfile::tempdir().unwrap();
    let layout = d.path().join("layout");
    image(&layout, "1.0", b"docker");
    reg.push(&layout, "1.0", "team/docker:1.0", &["--format", "v2s2"]);
    let store = Store::open(&d.path().join("store")).unwrap();
    let got = registry::pull(
        &store,
        &format!("{}/team/docker:1.0", reg.host()),
        false,
        &NoProgress,
    )
    .unwrap();
    let info = store.inspect(&got).unwrap();
    assert_eq!(
        info.media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert!(
        info.layers
            .iter()
            .all(|l| l.media_type == "application/vnd.docker.image.rootfs.diff.tar.gzip")
    );
    let r = store.rootfs(&got, &NoProgress).unwrap();
    assert_eq!(fs::read(r.path.join("app/hello.py")).unwrap(), b"docker");
}

/// A registry front that wants a Bearer token (served by itself at /token) and
/// redirects blob downloads to the registry behind it, like Docker Hub does.
struct AuthProxy {
    port: u16,
    tokens: Arc<AtomicUsize>,
    redirects: Arc<AtomicUsize>,
}

impl AuthProxy {
    fn start(backend: u16) -> AuthProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let tokens = Arc::new(AtomicUsize::new(0));
        let redirects = Arc::new(AtomicUsize::new(0));
        let (t, r) = (tokens.clone(), redirects.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { continue };
                let (t, r) = (t.clone(), r.clone());
                std::thread::spawn(move || proxy_conn(conn, port, backend, &t, &r));
            }
        });
        AuthProxy {
            port,
            tokens,
            redirects,
        }
    }
}

fn respond(c: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut s = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    let _ = c.write_all(s.as_bytes());
    let _ = c.write_all(body);
}

fn proxy_conn(
    mut c: TcpStream,
    me: u16,
    backend: u16,
    tokens: &AtomicUsize,
    redirects: &AtomicUsize,
) {
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (mut auth, mut accept) = (String::new(), String::new());
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        let (k, v) = h.split_once(':').unwrap_or(("", ""));
        match k.to_ascii_lowercase().as_str() {
            "authorization" => auth = v.trim().to_string(),
            "accept" => accept = v.trim().to_string(),
            _ => {}
        }
    }
    if path.starts_with("/token?") {
        assert!(
            path.contains("scope=repository%3Ateam%2Fpy%3Apull"),
            "{path}"
        );
        assert!(path.contains("service=test-registry"), "{path}");
        tokens.fetch_add(1, Ordering::SeqCst);
        respond(&mut c, "200 OK", &[], br#"{"token":"s3cret"}"#);
        return;
    }
    if auth != "Bearer s3cret" {
        let challenge = format!(
            "Bearer realm=\"http://127.0.0.1:{me}/token\",service=\"test-registry\",scope=\"repository:team/py:pull\""
        );
        respond(
            &mut c,
            "401 Unauthorized",
            &[("WWW-Authenticate", challenge)],
            br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
        );
        return;
    }
    if path.contains("/blobs/") {
        redirects.fetch_add(1, Ordering::SeqCst);
        respond(
            &mut c,
            "307 Temporary Redirect",
            &[("Location", format!("http://127.0.0.1:{backend}{path}"))],
            b"",
        );
        return;
    }
    let Ok(mut b) = TcpStream::connect(("127.0.0.1", backend)) else {
        return;
    };
    let _ = write!(
        b,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    );
    let _ = std::io::copy(&mut b, &mut c);
}

#[test]
fn bearer_token_and_blob_redirects() {
    if !tools() {
        return;
    }
    let reg = Registry::start();
    let d = tempfile::tempdir().unwrap();
    let layout = d.path().join("layout");
    let digest = image(&layout, "1.0", b"behind auth");
    reg.push(&layout, "1.0", "team/py:1.0", &[]);
    let proxy = AuthProxy::start(reg.port);
    let store = Store::open(&d.path().join("store")).unwrap();
    let got = registry::pull(
        &store,
        &format!("localhost:{}/team/py:1.0", proxy.port),
        false,
        &NoProgress,
    )
    .unwrap();
    assert_eq!(got, digest);
    assert_eq!(
        proxy.tokens.load(Ordering::SeqCst),
        1,
        "one token for the pull"
    );
    assert_eq!(
        proxy.redirects.load(Ordering::SeqCst),
        3,
        "config and two layers"
    );
    let r = store.rootfs(&got, &NoProgress).unwrap();
    assert_eq!(
        fs::read(r.path.join("app/hello.py")).unwrap(),
        b"behind auth"
    );
}

#[test]
fn pull_then_run_through_the_command_line() {
    // The whole path a user takes: `pysandbox image pull` from a registry on loopback,
    // then `pysandbox run --image REF`.
    if !tools() {
        return;
    }
    let reg = Registry::start();
    let d = tempfile::tempdir().unwrap();
    let layout = d.path().join("layout");
    common::python_layout(&layout, "3.11");
    reg.push(&layout, "3.11", "lab/python:3.11", &[]);

    let bin = env!("CARGO_BIN_EXE_pysandbox");
    let data = d.path().join("xdg");
    let reference = format!("{}/lab/python:3.11", reg.host());
    let run = |args: &[&str]| {
        Command::new(bin)
            .args(args)
            .env("XDG_DATA_HOME", &data)
            .current_dir(d.path())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let o = run(&["image", "pull", &reference]);
    assert!(
        o.status.success(),
        "pull: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = run(&[
        "run",
        "--no-fs",
        "--image",
        &reference,
        "--code",
        "import sys; print(sys.version_info[:2])",
    ]);
    assert!(
        o.status.success(),
        "run: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "(3, 11)\n");
    // A registry that is not on loopback is HTTPS unless --insecure: refused clearly.
    let o = run(&["image", "pull", "registry.invalid/x:1"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(!o.stderr.is_empty());
}
