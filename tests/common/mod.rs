//! Shared helpers of the integration tests: run the real `pysandbox` binary as root, as
//! an ordinary user, and as that user from inside
//! `unshare --user --map-root-user --mount`, in throw-away folders owned by that user.
//!
//! Run as root, the tests take uid 65534 (through `setpriv`) as the ordinary user. Run as
//! an ordinary user, they are that user: the rootless modes run as it, and what needs
//! real root (the root mode, namespaces or cgroups the test itself makes) says
//! `SKIP ...: needs root` and passes.
//!
//! Any other mode or test the host cannot run is skipped with a message, unless
//! PYSANDBOX_MUST_WORK=1 (set by CI), which turns such a skip into a failure. A skip for
//! want of root is never a failure: as root it does not happen.

#![allow(dead_code)]

pub mod schema;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Generates one #[test] per mode (root, the ordinary user, that user inside
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

/// The ordinary user of a root test process.
pub const NOBODY: u32 = 65534;

/// Who runs pysandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// Real root.
    Root,
    /// The ordinary user ([`user_uid`]) with a scrubbed environment: uid/gid 65534 with
    /// no supplementary groups when the tests run as root, else the tests' own user.
    User,
    /// The ordinary user inside `unshare --user --map-root-user --mount`.
    UserInUserns,
    /// root inside `unshare --user --map-root-user --mount` (refused: see tests/run.rs).
    RootInUserns,
}

impl Who {
    /// The mode's name as its generated test is named.
    pub fn name(self) -> &'static str {
        match self {
            Who::Root => "root",
            Who::User => "user",
            Who::UserInUserns => "user_in_userns",
            Who::RootInUserns => "root_in_userns",
        }
    }
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The uid the ordinary user's files have on the host.
pub fn user_uid() -> u32 {
    if is_root() {
        NOBODY
    } else {
        // SAFETY: geteuid cannot fail.
        unsafe { libc::geteuid() }
    }
}

pub fn must_work() -> bool {
    std::env::var("PYSANDBOX_MUST_WORK").as_deref() == Ok("1")
}

/// Skips what the host cannot run: prints `SKIP what: why`, or panics under
/// PYSANDBOX_MUST_WORK=1. Returns false (not available).
pub fn skip(what: &str, why: &str) -> bool {
    let msg = format!("SKIP {what}: {why}");
    if must_work() {
        panic!("{msg} (PYSANDBOX_MUST_WORK=1)");
    }
    eprintln!("{msg}");
    false
}

/// Whether the tests run as root; if not, says that `what` was skipped because it needs
/// root `to` do something (or, with `to` empty, to run at all). Never a failure: as root
/// it runs.
pub fn needs_root(what: &str, to: &str) -> bool {
    if is_root() {
        return true;
    }
    let to = if to.is_empty() {
        String::new()
    } else {
        format!(" {to}")
    };
    eprintln!(
        "SKIP {what}: needs root{to} (the tests run as uid {})",
        user_uid()
    );
    false
}

/// Whether `who` can run here; prints why not.
pub fn available(who: Who) -> bool {
    match who {
        Who::Root | Who::RootInUserns => needs_root(who.name(), ""),
        Who::User | Who::UserInUserns => true,
    }
}

/// The mode of the test process's own identity: root, or the ordinary user the tests
/// run as. For what every identity must do alike (refusals of bad arguments).
pub fn me() -> Who {
    if is_root() { Who::Root } else { Who::User }
}

/// The folder this process shares among its tests, removed when the process exits.
struct Shared {
    dir: PathBuf,
    bin: PathBuf,
    user_home: PathBuf,
    /// Held (flock) while this process lives: a later process that can take it knows the
    /// folder was left by one that died, and removes it.
    _lock: std::fs::File,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

const SHARED_PREFIX: &str = "pysandbox-it-";

/// The pysandbox binary where the ordinary user can execute it (a copy, when the tests
/// run as root), and a HOME for that user shared by all tests of this process (one
/// image build). Removed at exit, and by a later process if this one dies first.
fn shared() -> &'static Shared {
    SHARED.get_or_init(|| {
        sweep_shared();
        let dir = tempfile::Builder::new()
            .prefix(SHARED_PREFIX)
            .tempdir_in("/tmp")
            .unwrap()
            .keep();
        let lock = std::fs::File::create(dir.join("lock")).unwrap();
        assert!(flock(&lock, libc::LOCK_EX | libc::LOCK_NB), "lock {dir:?}");
        // SAFETY: registers a plain function; it runs once, at exit.
        assert_eq!(unsafe { libc::atexit(remove_shared) }, 0);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = if is_root() {
            let bin = dir.join("pysandbox");
            std::fs::copy(env!("CARGO_BIN_EXE_pysandbox"), &bin).unwrap();
            std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
            bin
        } else {
            PathBuf::from(env!("CARGO_BIN_EXE_pysandbox"))
        };
        let user_home = dir.join("home");
        std::fs::create_dir(&user_home).unwrap();
        chown_to_user(&user_home);
        Shared {
            dir,
            bin,
            user_home,
            _lock: lock,
        }
    })
}

fn flock(f: &std::fs::File, op: i32) -> bool {
    // SAFETY: flock on a live descriptor.
    unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(f), op) == 0 }
}

extern "C" fn remove_shared() {
    if let Some(s) = SHARED.get() {
        remove_tree(&s.dir);
    }
}

/// Removes the shared folders of earlier processes of this uid that died without
/// removing theirs: their lock is free (or, left by tests before the lock, an hour old).
fn sweep_shared() {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(SHARED_PREFIX) {
            continue;
        }
        let p = e.path();
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if !m.is_dir() || m.uid() != me {
            continue;
        }
        let stale = match std::fs::File::open(p.join("lock")) {
            Ok(f) => flock(&f, libc::LOCK_EX | libc::LOCK_NB),
            Err(_) => m
                .modified()
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(3600)),
        };
        if stale {
            remove_tree(&p);
        }
    }
}

/// Removes `p` and everything below it, making read-only folders (an image's tree)
/// writable on the way. Never follows a symlink; errors are ignored.
pub fn remove_tree(p: &Path) {
    let Ok(m) = std::fs::symlink_metadata(p) else {
        return;
    };
    if m.is_dir() {
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            remove_tree(&e.path());
        }
        let _ = std::fs::remove_dir(p);
    } else {
        let _ = std::fs::remove_file(p);
    }
}

pub fn bin() -> &'static Path {
    &shared().bin
}

pub fn user_home() -> &'static Path {
    &shared().user_home
}

/// Gives `p` to the ordinary user (when the tests run as root; else it is theirs).
pub fn chown_to_user(p: &Path) {
    if is_root() {
        std::os::unix::fs::lchown(p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
}

/// The lock files of runs this process starts with its own environment (the library's
/// runs): root's `/run/pysandbox/locks`, else under XDG_RUNTIME_DIR or
/// `/tmp/pysandbox-UID/run` (src/dirs.rs).
pub fn process_locks_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/run/pysandbox/locks");
    }
    let uid = user_uid();
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(x) if x.is_absolute() && std::fs::metadata(&x).is_ok_and(|m| m.uid() == uid) => {
            x.join("pysandbox/locks")
        }
        _ => PathBuf::from(format!("/tmp/pysandbox-{uid}/run/locks")),
    }
}

/// A fresh folder owned by the user `who` runs as; removed on drop, read-only folders
/// (a private image store's trees) included.
pub fn workdir(who: Who) -> WorkDir {
    let d = tempfile::Builder::new()
        .prefix("pysandbox-work-")
        .tempdir_in("/tmp")
        .unwrap()
        .keep();
    if matches!(who, Who::User | Who::UserInUserns) {
        chown_to_user(&d);
    }
    WorkDir(d)
}

/// A folder of [`workdir`].
pub struct WorkDir(PathBuf);

impl WorkDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        remove_tree(&self.0);
    }
}

/// A folder of this process's own (in its shared folder), for what it makes once and
/// keeps until it exits; readable by the ordinary user.
pub fn shared_dir(name: &str) -> PathBuf {
    let p = shared().dir.join(name);
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Gives `p` the owner of `like` (when the tests run as root: otherwise both are theirs).
pub fn chown_like(p: &Path, like: &Path) {
    if is_root() {
        let m = std::fs::metadata(like).unwrap();
        std::os::unix::fs::lchown(p, Some(m.uid()), Some(m.gid())).unwrap();
    }
}

/// A folder the ordinary user can read but not write, holding `files`: root's (mode
/// 0755) when the tests run as root, else the user's own made read-only (mode 0555; made
/// writable again when dropped, to be removed).
pub struct ReadOnlyDir(tempfile::TempDir);

impl ReadOnlyDir {
    pub fn new(files: &[(&str, &str)]) -> ReadOnlyDir {
        let d = tempfile::Builder::new()
            .prefix("pysandbox-ro-data-")
            .tempdir_in("/tmp")
            .unwrap();
        for (name, body) in files {
            let p = d.path().join(name);
            std::fs::write(&p, body).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let mode = if is_root() { 0o755 } else { 0o555 };
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        ReadOnlyDir(d)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for ReadOnlyDir {
    fn drop(&mut self) {
        let _ = std::fs::set_permissions(self.0.path(), std::fs::Permissions::from_mode(0o700));
    }
}

/// Writes a file into a work folder, owned like the folder.
pub fn put(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    chown_like(&p, dir);
    p
}

/// The uid that owns files `who` creates, on the host.
pub fn host_uid(who: Who) -> u32 {
    match who {
        Who::Root | Who::RootInUserns => 0,
        Who::User | Who::UserInUserns => user_uid(),
    }
}

/// Gives `p` to the host user `who` stands for (when the tests run as root; else the
/// tests' files are already the ordinary user's).
pub fn chown_to(p: &Path, who: Who) {
    if is_root() {
        let id = host_uid(who);
        std::os::unix::fs::lchown(p, Some(id), Some(id)).unwrap();
    }
}

/// A command running `program` as the ordinary user, environment kept: as root, through
/// `setpriv` as uid/gid 65534 with no groups.
pub fn user_command(program: &str) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", program]);
        c
    } else {
        Command::new(program)
    }
}

/// The argv prefix that runs a program as the ordinary user with a scrubbed environment
/// (HOME the shared test home): as root, `setpriv` to uid/gid 65534 with no groups.
pub fn as_user() -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    if is_root() {
        v.extend(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ]
            .map(String::from),
        );
    }
    v.extend(
        [
            "env",
            "-i",
            "PATH=/usr/local/bin:/usr/bin:/bin",
            "LANG=C.UTF-8",
        ]
        .map(String::from),
    );
    v.push(format!("HOME={}", user_home().display()));
    v
}

/// The command that runs pysandbox as `who`, in `dir`, with `args`.
pub fn command(who: Who, dir: &Path, args: &[&str]) -> Command {
    let bin = bin().to_str().unwrap();
    let mut prefix: Vec<String> = Vec::new();
    if matches!(who, Who::User | Who::UserInUserns) {
        prefix.extend(as_user());
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
pub fn run_script(who: Who, body: &str, extra: &[&str]) -> (Output, WorkDir) {
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
        chown_like(&data, dir);
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

/// Whether `pid` is not a pid-namespace holder of a pysandbox process (`pysandbox-hold`,
/// which shares its memory, so its command line): to count pysandbox's own processes.
pub fn not_a_holder(pid: &i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() != "pysandbox-hold")
}

/// Starts `cmd()` `runs` times (no stdio) and SIGKILLs run `i` `i * step` after its
/// start: moments spread over a run's start-up.
pub fn kill_while_starting(runs: u32, step: Duration, mut cmd: impl FnMut() -> Command) {
    for i in 0..runs {
        let mut child = cmd()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(step * i);
        // Our own child (setpriv/unshare/setsid exec into pysandbox), not reaped yet.
        child.kill().unwrap();
        child.wait().unwrap();
    }
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
