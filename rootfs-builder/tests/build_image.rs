//! End-to-end test: builds images from the host interpreters (`python3` on
//! PATH, and Debian's `/usr/bin/python3` when it is a different one), checks
//! the tree, and — when running as root — `chroot`s into each image and runs
//! its Python. Set `PYSANDBOX_MUST_WORK=1` to turn skips into failures.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, UNIX_EPOCH};

use rootfs_builder::{BUILDER_VERSION, HostPython, IMAGE_PYTHON, build_rootfs, probe_python};

fn must_work() -> bool {
    std::env::var_os("PYSANDBOX_MUST_WORK").is_some_and(|v| v == "1")
}

fn skip(why: &str) {
    assert!(!must_work(), "PYSANDBOX_MUST_WORK=1 but: {why}");
    eprintln!("SKIPPED: {why}");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Python run inside the image. argv[1] is "1" if a CA bundle is expected.
const CHECK_SCRIPT: &str = r#"
import sys
assert sys.prefix == "/opt/conda", sys.prefix
assert sys.exec_prefix == "/opt/conda", sys.exec_prefix
assert sys.executable == "/opt/conda/bin/python", sys.executable
assert all(p == "" or p.startswith("/opt/conda/") for p in sys.path), sys.path
import ssl, sqlite3, ctypes, decimal, lzma, hashlib, json, uuid, multiprocessing, asyncio, bz2, zlib
for optional in ("readline", "curses", "_dbm", "_gdbm"):
    try:
        __import__(optional)
    except ImportError:
        pass
import pwd, grp, socket, importlib.util, sysconfig, threading, time, zoneinfo
ctx = ssl.create_default_context()
if sys.argv[1] == "1":
    assert ctx.cert_store_stats()["x509_ca"] > 0, ctx.cert_store_stats()
ctypes.CDLL(None)
libc = ctypes.CDLL("libc.so.6")
assert libc.getpid() > 0
assert pwd.getpwuid(1000).pw_name == "mambauser"
assert pwd.getpwnam("nobody").pw_uid == 65534
assert grp.getgrgid(65534).gr_name == "nogroup"
assert socket.gethostbyname("localhost") == "127.0.0.1"
for banned in ("pip", "ensurepip", "setuptools", "idlelib", "tkinter", "test", "turtle"):
    assert importlib.util.find_spec(banned) is None, banned
assert sqlite3.connect(":memory:").execute("select 41 + 1").fetchone() == (42,)
assert hashlib.sha256(b"x").hexdigest().startswith("2d711642")
assert lzma.decompress(lzma.compress(b"x")) == b"x"
assert bz2.decompress(bz2.compress(b"x")) == b"x"
assert zlib.decompress(zlib.compress(b"x")) == b"x"
assert str(decimal.Decimal("1.1") + 1) == "2.1"
uuid.uuid4()
asyncio.run(asyncio.sleep(0))
sysconfig.get_paths()
# A daemon thread still running at exit makes CPython call pthread_exit,
# which needs libgcc_s (dlopen'ed by glibc, invisible to ldd).
def spin():
    while True:
        time.sleep(0.0005)
for _ in range(4):
    threading.Thread(target=spin, daemon=True).start()
print("IMAGE-OK")
"#;

struct Built {
    manifest_bytes: u64,
    elapsed: Duration,
}

fn build_and_check(python: &Path) -> Option<(HostPython, Built)> {
    let host = match probe_python(python) {
        Ok(h) => h,
        Err(e) => {
            skip(&format!("cannot probe {}: {e}", python.display()));
            return None;
        }
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dest = tmp.path().join("rootfs");
    let start = Instant::now();
    let manifest = build_rootfs(&host, &dest)
        .unwrap_or_else(|e| panic!("build from {}: {e}", python.display()));
    let elapsed = start.elapsed();
    let du = Command::new("du")
        .arg("-sh")
        .arg(&dest)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .unwrap_or("?")
                .to_string()
        })
        .unwrap_or_else(|_| "?".into());
    eprintln!(
        "built image for {} ({} -> {}): {:.2?}, {} files, {} bytes, du -sh {}",
        python.display(),
        host.version,
        host.executable.display(),
        elapsed,
        manifest.file_count,
        manifest.total_bytes,
        du
    );

    assert_eq!(manifest.builder_version, BUILDER_VERSION);
    assert_eq!(manifest.image_python, Path::new(IMAGE_PYTHON));
    assert_eq!(manifest.host_executable, host.executable);
    assert_eq!(manifest.python_version, host.version);
    assert!(manifest.rebuild_triggers.contains(&host.executable));
    assert!(
        manifest
            .rebuild_triggers
            .contains(&host.stdlib.join("os.py"))
    );
    if let Some(lp) = &host.libpython {
        assert!(manifest.rebuild_triggers.contains(lp));
    }
    assert!(manifest.file_count > 500, "{manifest:?}");
    assert!(
        fs::read_dir(tmp.path()).expect("ls").count() == 1,
        "nothing may be written next to the rootfs"
    );

    check_tree(&dest, &host);
    if is_root() {
        run_in_chroot(&dest, manifest.ca_bundle);
    } else {
        skip("not root: chroot checks of the image skipped");
    }
    Some((
        host,
        Built {
            manifest_bytes: manifest.total_bytes,
            elapsed,
        },
    ))
}

/// Resolves `path` (absolute, as seen inside the image) within `root`,
/// following symlinks as the kernel would after chroot.
fn resolve_in_image(root: &Path, path: &Path) -> Option<PathBuf> {
    fn push_reversed(todo: &mut Vec<OsString>, p: &Path) {
        let names: Vec<OsString> = p
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some(OsString::from("..")),
                _ => None,
            })
            .collect();
        todo.extend(names.into_iter().rev());
    }
    let mut todo = Vec::new();
    push_reversed(&mut todo, path);
    let mut cur = PathBuf::from("/");
    let mut hops = 0;
    while let Some(name) = todo.pop() {
        if name == ".." {
            cur.pop();
            continue;
        }
        let next = cur.join(&name);
        let on_host = root.join(next.strip_prefix("/").expect("abs"));
        let meta = fs::symlink_metadata(&on_host).ok()?;
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return None;
            }
            let target = fs::read_link(&on_host).ok()?;
            if target.is_absolute() {
                cur = PathBuf::from("/");
            }
            push_reversed(&mut todo, &target);
        } else {
            cur = next;
        }
    }
    Some(root.join(cur.strip_prefix("/").expect("abs")))
}

fn check_tree(root: &Path, host: &HostPython) {
    let stdlib = root.join(format!("opt/conda/lib/python{}.{}", host.major, host.minor));
    assert!(stdlib.join("os.py").is_file());
    assert!(stdlib.join("lib-dynload").is_dir());
    for banned in [
        "bin/sh",
        "usr/bin/sh",
        "bin/bash",
        "usr/bin/bash",
        "bin/ls",
        "usr/bin/ls",
        "sbin/nologin",
    ] {
        assert!(
            fs::symlink_metadata(root.join(banned)).is_err(),
            "{banned} must not exist"
        );
    }
    let banned_names: HashSet<&str> = [
        "sh",
        "bash",
        "dash",
        "ls",
        "busybox",
        "pip",
        "pip3",
        "ensurepip",
        "apt",
        "apt-get",
        "dpkg",
        "mamba",
        "micromamba",
        "site-packages",
        "dist-packages",
        "idlelib",
        "tkinter",
        "turtledemo",
        "test",
        "tests",
        "nologin",
        "ldd",
        "ldconfig",
        "ld.so.cache",
    ]
    .into_iter()
    .collect();

    // The only host paths allowed: the links at the interpreter's configure-time prefix
    // (to the relocated stdlib and headers) and the directories leading to them.
    let version = format!("python{}.{}", host.major, host.minor);
    let relocation: Vec<PathBuf> = [&host.config_prefix, &host.config_exec_prefix]
        .into_iter()
        .flatten()
        .flat_map(|p| {
            [
                p.join(&host.platlibdir).join(&version),
                p.join("include").join(&version),
            ]
        })
        .filter_map(|p| p.strip_prefix("/").ok().map(Path::to_path_buf))
        .collect();
    let on_relocation_path = |rel: &Path| relocation.iter().any(|l| l.starts_with(rel));

    let cache_tag = &host.cache_tag;
    let mut stack = vec![root.to_path_buf()];
    let mut py_count = 0;
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("ls") {
            let entry = entry.expect("entry");
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = fs::symlink_metadata(&path).expect("meta");
            let rel = path.strip_prefix(root).expect("under root");
            assert!(
                !banned_names.contains(name.as_str()),
                "banned entry {}",
                rel.display()
            );
            assert!(
                !rel.to_string_lossy().contains(".pyenv") || on_relocation_path(rel),
                "host path leaked: {}",
                rel.display()
            );
            if on_relocation_path(rel) && relocation.iter().any(|l| l == rel) {
                let target = fs::read_link(&path).expect("a relocation link");
                assert!(
                    target.starts_with("/opt/conda/"),
                    "{} -> {target:?}",
                    rel.display()
                );
            }
            assert!(
                !name.contains(".opt-1.pyc") && !name.contains(".opt-2.pyc"),
                "{}",
                rel.display()
            );
            let ft = meta.file_type();
            if ft.is_symlink() {
                let target = fs::read_link(&path).expect("readlink");
                assert!(
                    !target.to_string_lossy().contains(".pyenv"),
                    "{} -> {target:?}",
                    rel.display()
                );
                let image_path = Path::new("/").join(rel);
                let resolved = resolve_in_image(root, &image_path);
                assert!(
                    resolved
                        .as_ref()
                        .is_some_and(|p| fs::symlink_metadata(p).is_ok()),
                    "dangling symlink {} -> {}",
                    rel.display(),
                    target.display()
                );
                continue;
            }
            if rel != Path::new("root") || on_relocation_path(rel) {
                let need = if ft.is_dir() { 0o005 } else { 0o004 };
                assert_eq!(
                    meta.mode() & need,
                    need,
                    "{} is not world-readable",
                    rel.display()
                );
            }
            if ft.is_dir() {
                stack.push(path);
                continue;
            }
            assert!(ft.is_file(), "{} is not a regular file", rel.display());
            assert_eq!(
                meta.mode() & 0o7000,
                0,
                "setuid/setgid/sticky file {}",
                rel.display()
            );
            if path.starts_with(&stdlib) && name.ends_with(".py") {
                py_count += 1;
                let stem = name.trim_end_matches(".py");
                let pyc = dir
                    .join("__pycache__")
                    .join(format!("{stem}.{cache_tag}.pyc"));
                let mut header = [0u8; 16];
                fs::File::open(&pyc)
                    .and_then(|mut f| f.read_exact(&mut header))
                    .unwrap_or_else(|e| panic!("missing pyc {}: {e}", pyc.display()));
                let word = |i: usize| {
                    u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]])
                };
                let src = fs::metadata(&path).expect("meta");
                let mtime = src
                    .modified()
                    .expect("mtime")
                    .duration_since(UNIX_EPOCH)
                    .expect("epoch")
                    .as_secs();
                assert_eq!(word(4), 0, "{} is not a timestamp pyc", pyc.display());
                assert_eq!(word(8), mtime as u32, "{} is stale (mtime)", pyc.display());
                assert_eq!(
                    word(12),
                    src.size() as u32,
                    "{} is stale (size)",
                    pyc.display()
                );
            }
        }
    }
    assert!(py_count > 400, "only {py_count} .py files");

    // Python's landmark for sys.prefix, and the interpreter links.
    assert!(
        root.join("opt/conda/bin")
            .join(format!("python{}.{}", host.major, host.minor))
            .is_file()
    );
    for link in ["python", "python3"] {
        let t = fs::read_link(root.join("opt/conda/bin").join(link)).expect("python symlink");
        assert_eq!(
            t,
            Path::new(&format!("python{}.{}", host.major, host.minor))
        );
    }

    // /etc and mount points.
    let passwd = fs::read_to_string(root.join("etc/passwd")).expect("passwd");
    assert!(passwd.contains("mambauser:x:1000:1000:mambauser:/home/mambauser:/sbin/nologin"));
    assert!(
        fs::read_to_string(root.join("etc/group"))
            .expect("group")
            .contains("nogroup:x:65534:")
    );
    assert!(
        fs::read_to_string(root.join("etc/nsswitch.conf"))
            .expect("nss")
            .contains("hosts: files dns")
    );
    assert_eq!(
        fs::read_to_string(root.join("etc/hostname"))
            .expect("hostname")
            .trim(),
        "sandbox"
    );
    for f in ["etc/services", "etc/protocols"] {
        let m = fs::symlink_metadata(root.join(f)).expect(f);
        assert!(
            m.is_file() && m.len() > 0 && m.mode() & 0o777 == 0o644,
            "{f}"
        );
    }
    let resolv = fs::symlink_metadata(root.join("etc/resolv.conf")).expect("resolv.conf");
    assert!(resolv.is_file() && resolv.len() == 0);
    let mode = |p: &str| {
        fs::symlink_metadata(root.join(p))
            .expect(p)
            .permissions()
            .mode()
            & 0o7777
    };
    // /root is 0o700, unless the interpreter's configure-time prefix (pyenv's) lies under
    // it: then the sandbox user must traverse it to the relocation links.
    let root_mode = if relocation.iter().any(|l| l.starts_with("root")) {
        0o755
    } else {
        0o700
    };
    for (dir, want) in [
        ("proc", 0o755),
        ("dev", 0o755),
        ("tmp", 0o1777),
        ("root", root_mode),
        ("home/mambauser", 0o755),
        ("usr/app/src", 0o755),
        ("usr/app/data", 0o755),
        ("run", 0o755),
        ("var/tmp", 0o1777),
    ] {
        assert!(root.join(dir).is_dir(), "{dir}");
        assert_eq!(mode(dir), want, "{dir}");
    }
    for dir in [
        "proc",
        "dev",
        "tmp",
        "root",
        "home/mambauser",
        "usr/app/src",
        "usr/app/data",
        "run",
        "var/tmp",
    ] {
        if dir == "root" && root_mode == 0o755 {
            // Only the relocation links (checked with the whole tree above).
            continue;
        }
        assert_eq!(
            fs::read_dir(root.join(dir)).expect(dir).count(),
            0,
            "{dir} must be empty"
        );
    }
}

/// `chroot` from coreutils, looked up on the test's PATH (the child gets a
/// cleared environment, so Command must not search its PATH).
fn chroot_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join("chroot"))
        .find(|p| p.is_file())
}

fn run_in_chroot(root: &Path, ca_bundle: bool) {
    let Some(chroot) = chroot_binary() else {
        skip("no chroot binary (coreutils): chroot checks of the image skipped");
        return;
    };
    // As the sandbox user (files must be world-readable), then as root.
    for userspec in ["--userspec=1000:1000", "--userspec=0:0"] {
        let out = Command::new(&chroot)
            .arg(userspec)
            .arg(root)
            .arg(IMAGE_PYTHON)
            .arg("-c")
            .arg(CHECK_SCRIPT)
            .arg(if ca_bundle { "1" } else { "0" })
            .env_clear()
            .env("PATH", "/opt/conda/bin")
            .env("HOME", "/home/mambauser")
            .current_dir("/")
            .output()
            .expect("run chroot (coreutils)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("IMAGE-OK") && stderr.trim().is_empty(),
            "python in image ({userspec}) failed: {}\nstdout: {stdout}\nstderr: {stderr}",
            out.status
        );
    }
}

#[test]
fn image_from_python3_on_path() {
    build_and_check(Path::new("python3"));
}

#[test]
fn image_from_debian_system_python() {
    let system = Path::new("/usr/bin/python3");
    if !system.exists() {
        skip("/usr/bin/python3 does not exist");
        return;
    }
    let on_path = probe_python(Path::new("python3"))
        .ok()
        .map(|h| h.executable);
    let system_real = fs::canonicalize(system).expect("realpath /usr/bin/python3");
    if on_path.as_deref() == Some(system_real.as_path()) {
        eprintln!("SKIPPED: /usr/bin/python3 is the python3 on PATH (already tested)");
        return;
    }
    if let Some((host, built)) = build_and_check(system) {
        assert!(host.libpython.is_none() || host.executable.starts_with("/usr"));
        eprintln!(
            "system python image: {} bytes in {:.2?}",
            built.manifest_bytes, built.elapsed
        );
    }
}

#[test]
fn refuses_non_empty_destination() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fs::write(tmp.path().join("x"), b"").expect("write");
    let Ok(host) = probe_python(Path::new("python3")) else {
        skip("no python3 on PATH");
        return;
    };
    let err = build_rootfs(&host, tmp.path()).expect_err("must refuse");
    assert!(err.to_string().contains("not an empty directory"), "{err}");
}
