//! Shared helpers of the integration tests: run the real `pysandbox` binary as root, as
//! an unprivileged user (uid 65534 through `setpriv`), and from inside
//! `unshare --user --map-root-user --mount`, in throw-away folders owned by that user.
//!
//! A mode the host cannot run is skipped with a message, unless PYSANDBOX_MUST_WORK=1
//! (set by CI), which turns every skip into a failure.

#![allow(dead_code)]

pub mod schema;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Generates one #[test] per mode (root, unprivileged user, that user inside
/// `unshare -Ur`) from a body taking `who: Who`; modes the host cannot run are skipped.
#[macro_export]
macro_rules! each_mode {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            fn body(who: Who) {
                if !available(who) {
                    return;
                }
                let f: fn(Who) = $body;
                f(who)
            }
            #[test]
            fn root() {
                body(Who::Root)
            }
            #[test]
            fn user() {
                body(Who::User)
            }
            #[test]
            fn user_in_userns() {
                body(Who::UserInUserns)
            }
        }
    };
}

pub const NOBODY: u32 = 65534;

/// Who runs pysandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// Real root.
    Root,
    /// uid/gid 65534, no supplementary groups, a scrubbed environment.
    User,
    /// uid 65534 inside `unshare --user --map-root-user --mount`.
    UserInUserns,
    /// root inside `unshare --user --map-root-user --mount` (refused: see tests/run.rs).
    RootInUserns,
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub fn must_work() -> bool {
    std::env::var("PYSANDBOX_MUST_WORK").as_deref() == Ok("1")
}

/// Whether `who` can run here; prints why not (or panics under PYSANDBOX_MUST_WORK=1).
pub fn available(who: Who) -> bool {
    if is_root() {
        return true;
    }
    let msg = format!("SKIP {who:?}: the tests must run as root to switch users");
    if must_work() {
        panic!("{msg} (PYSANDBOX_MUST_WORK=1)");
    }
    eprintln!("{msg}");
    false
}

struct Shared {
    bin: PathBuf,
    user_home: PathBuf,
    _dir: tempfile::TempDir,
}

/// The binary copied where an unprivileged user can execute it, and a HOME for that user
/// shared by all tests of this process (one image build).
fn shared() -> &'static Shared {
    static S: OnceLock<Shared> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("pysandbox-it-")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.path().join("pysandbox");
        std::fs::copy(env!("CARGO_BIN_EXE_pysandbox"), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let user_home = dir.path().join("home");
        std::fs::create_dir(&user_home).unwrap();
        if is_root() {
            std::os::unix::fs::chown(&user_home, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        Shared {
            bin,
            user_home,
            _dir: dir,
        }
    })
}

pub fn bin() -> &'static Path {
    &shared().bin
}

pub fn user_home() -> &'static Path {
    &shared().user_home
}

/// A fresh folder owned by the user `who` runs as.
pub fn workdir(who: Who) -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("pysandbox-work-")
        .tempdir_in("/tmp")
        .unwrap();
    if matches!(who, Who::User | Who::UserInUserns) {
        std::os::unix::fs::chown(d.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    }
    d
}

/// Writes a file into a work folder, owned like the folder.
pub fn put(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    let m = std::fs::metadata(dir).unwrap();
    std::os::unix::fs::chown(&p, Some(m.uid()), Some(m.gid())).unwrap();
    p
}

/// The uid that owns files `who` creates, on the host.
pub fn host_uid(who: Who) -> u32 {
    match who {
        Who::Root | Who::RootInUserns => 0,
        Who::User | Who::UserInUserns => NOBODY,
    }
}

/// The argv prefix that runs a program as uid/gid 65534, with no groups and a scrubbed
/// environment (HOME the shared test home).
pub fn as_nobody() -> Vec<String> {
    let mut v: Vec<String> = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "env",
        "-i",
        "PATH=/usr/local/bin:/usr/bin:/bin",
        "LANG=C.UTF-8",
    ]
    .map(String::from)
    .to_vec();
    v.push(format!("HOME={}", user_home().display()));
    v
}

/// The command that runs pysandbox as `who`, in `dir`, with `args`.
pub fn command(who: Who, dir: &Path, args: &[&str]) -> Command {
    let bin = bin().to_str().unwrap();
    let mut prefix: Vec<String> = Vec::new();
    if matches!(who, Who::User | Who::UserInUserns) {
        prefix.extend(as_nobody());
    }
    if matches!(who, Who::UserInUserns | Who::RootInUserns) {
        prefix.extend(["unshare", "--user", "--map-root-user", "--mount"].map(String::from));
    }
    let mut cmd = if prefix.is_empty() {
        Command::new(bin)
    } else {
        let mut c = Command::new(&prefix[0]);
        c.args(&prefix[1..]).arg(bin);
        c
    };
    cmd.args(args).current_dir(dir);
    cmd
}

/// As [`command`], with environment variables for pysandbox (placed after `env -i` for
/// the unprivileged modes, whose environment is scrubbed).
pub fn command_with_env(who: Who, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = command(who, dir, args);
    if matches!(who, Who::User | Who::UserInUserns) {
        let mut a: Vec<String> = cmd.get_args().map(|x| x.to_string_lossy().into()).collect();
        let i = a.iter().position(|x| x == "-i").unwrap();
        for (k, v) in env {
            a.insert(i + 1, format!("{k}={v}"));
        }
        let prog = cmd.get_program().to_owned();
        cmd = Command::new(prog);
        cmd.args(a).current_dir(dir);
    } else {
        cmd.envs(env.iter().copied());
    }
    cmd
}

/// Runs pysandbox to completion with `stdin` as input.
pub fn run_in(who: Who, dir: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = command(who, dir, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pysandbox");
    let mut sin = child.stdin.take().unwrap();
    let input = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = sin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    out
}

/// Runs a script body (saved as `t.py` in a fresh work folder) with extra args.
pub fn run_script(who: Who, body: &str, extra: &[&str]) -> (Output, tempfile::TempDir) {
    let dir = workdir(who);
    put(dir.path(), "t.py", body);
    let mut args = vec!["run", "t.py"];
    args.extend_from_slice(extra);
    (run_in(who, dir.path(), &args, b""), dir)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts an exit status, showing both streams on failure.
pub fn assert_code(o: &Output, code: i32, what: &str) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}: unexpected exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

/// A data folder (XDG_DATA_HOME) of its own under `dir`, owned like `dir`: a private
/// image store and kept-run store for one test. Returns its path.
pub fn private_data_home(dir: &Path) -> String {
    let data = dir.join("xdg");
    if !data.exists() {
        std::fs::create_dir(&data).unwrap();
        let m = std::fs::metadata(dir).unwrap();
        std::os::unix::fs::chown(&data, Some(m.uid()), Some(m.gid())).unwrap();
    }
    data.to_string_lossy().into_owned()
}

/// The id `run --keep` printed on stderr (`pysandbox: kept as ID ...`).
pub fn kept_id(o: &Output) -> String {
    let err = stderr(o);
    err.split("pysandbox: kept as ")
        .nth(1)
        .map(|r| r.chars().take(19).collect())
        .unwrap_or_else(|| panic!("no kept id in {err}"))
}

/// Asserts that pysandbox refused bad input: status 125, one line on stderr naming
/// `expect`, nothing on stdout.
pub fn assert_refused(o: &Output, what: &str, expect: &str) {
    assert_code(o, 125, what);
    let err = stderr(o);
    assert!(err.contains(expect), "{what}: {err}");
    assert_eq!(err.lines().count(), 1, "{what}: {err}");
    assert!(o.stdout.is_empty(), "{what}: {}", stdout(o));
}

/// Pids of every process whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<i32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(c) = std::fs::read(e.path().join("cmdline"))
            && String::from_utf8_lossy(&c).contains(marker)
        {
            v.push(pid);
        }
    }
    v
}

/// Waits up to `limit` for no process to carry `marker`.
pub fn wait_gone(marker: &str, limit: Duration) -> Vec<i32> {
    let t = Instant::now();
    loop {
        let p = processes_with(marker);
        if p.is_empty() || t.elapsed() > limit {
            return p;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn unique(tag: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}-{}-{n}", std::process::id())
}

/// Writes an OCI layout at `layout` holding one image, tagged `tag`: a python root file
/// system built by rootfs-builder from Debian's python3, as a single layer.
pub fn python_layout(layout: &Path, tag: &str) {
    let host = rootfs_builder::probe_python(Path::new("/usr/bin/python3")).unwrap();
    let rootfs = layout.with_extension("rootfs");
    rootfs_builder::build_rootfs(&host, &rootfs).unwrap();
    let l = rootfs_builder::oci::Layout::create(layout).unwrap();
    let layer = l
        .put_layer(&rootfs, "", rootfs_builder::layer::Source::Tree)
        .unwrap();
    l.finish(&[layer], &Default::default(), tag).unwrap();
    std::fs::remove_dir_all(&rootfs).unwrap();
}

/// Starts pysandbox running a script that prints "ready" and sleeps, with `marker` as its
/// argument; returns once the script is running.
pub fn start_sleeper(who: Who, dir: &Path, marker: &str) -> std::process::Child {
    start_sleeper_with(who, dir, marker, &[])
}

/// As [`start_sleeper`], with `extra` options for `pysandbox run`.
pub fn start_sleeper_with(
    who: Who,
    dir: &Path,
    marker: &str,
    extra: &[&str],
) -> std::process::Child {
    use std::io::Read;
    put(
        dir,
        "t.py",
        "import time\nprint('ready', flush=True)\ntime.sleep(60)\n",
    );
    let mut args = vec!["run"];
    args.extend_from_slice(extra);
    args.extend(["t.py", marker]);
    let mut child = command(who, dir, &args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 6];
    child.stdout.as_mut().unwrap().read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    child
}

/// Whether the tests must do without a package index (PYSANDBOX_TEST_NO_INDEX=1): then
/// those that need one say so and are skipped.
pub fn no_index() -> bool {
    if std::env::var("PYSANDBOX_TEST_NO_INDEX").as_deref() == Ok("1") {
        eprintln!("SKIP: PYSANDBOX_TEST_NO_INDEX=1 says there is no package index here");
        return true;
    }
    false
}

/// A Python venv made at `dir` from Debian's python3, with `packages` (pip arguments)
/// installed from the package index; returns its interpreter.
pub fn venv_with(dir: &Path, packages: &[&str]) -> PathBuf {
    let ok = Command::new("/usr/bin/python3")
        .args(["-m", "venv"])
        .arg(dir)
        .status()
        .unwrap()
        .success()
        && Command::new(dir.join("bin/pip"))
            .args(["install", "-q"])
            .args(packages)
            .status()
            .unwrap()
            .success();
    assert!(ok, "installing {packages:?} from the package index failed");
    dir.join("bin/python")
}

/// Runs `script` (fed on stdin) with `python`, with `args`.
pub fn python_script(python: &Path, script: &str, args: &[&str]) -> Output {
    let mut child = Command::new(python)
        .arg("-")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}
