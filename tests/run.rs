//! `pysandbox run` end to end, in every mode: as root, as an unprivileged user, and as
//! that user from inside a user namespace (`unshare -Ur`). Real sandboxes, real kernel.

#[macro_use]
mod common;

use common::*;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

each_mode!(exit_status_and_streams, |who| {
    let (o, _d) = run_script(
        who,
        "import sys\nprint('out', sys.argv[1:])\nprint('err', file=sys.stderr)\nsys.exit(3)\n",
        &["--flag", "x"],
    );
    assert_code(&o, 3, "benign script");
    assert_eq!(stdout(&o), "out ['--flag', 'x']\n");
    assert_eq!(stderr(&o), "err\n");
});

each_mode!(same_result_as_host_python, |who| {
    // The test is right if plain python on the host agrees (STYLE: same test, two runtimes).
    let body = "import json, hashlib, decimal\nprint(json.dumps({'h': hashlib.sha256(b'x').hexdigest(), 'd': str(decimal.Decimal(1) / 7)}))\n";
    let (o, d) = run_script(who, body, &[]);
    assert_code(&o, 0, "script");
    let host = std::process::Command::new("python3")
        .arg(d.path().join("t.py"))
        .output()
        .unwrap();
    assert_eq!(stdout(&o), String::from_utf8_lossy(&host.stdout));
});

each_mode!(folders, |who| {
    let dir = workdir(who);
    put(dir.path(), "data.txt", "some data\n");
    put(
        dir.path(),
        "t.py",
        r#"
import os, sys
assert os.getcwd() == '/usr/app/data', os.getcwd()
assert open('data.txt').read() == 'some data\n'
assert os.path.exists('/usr/app/src/t.py')
with open('output/result.txt', 'w') as f:
    f.write('result')
for p in ['/usr/app/data/new.txt', '/x', '/usr/x', '/opt/conda/x', '/usr/app/src/x', '/etc/passwd']:
    try:
        open(p, 'a').write('x')
        print('WROTE', p)
    except OSError as e:
        pass
for p in ['/tmp/x', os.path.expanduser('~/x')]:
    open(p, 'w').write('ok')
print('done')
"#,
    );
    let o = run_in(who, dir.path(), &["run", "t.py"], b"");
    assert_code(&o, 0, "folders");
    assert_eq!(stdout(&o), "done\n");
    let res = dir.path().join("output/result.txt");
    assert_eq!(std::fs::read_to_string(&res).unwrap(), "result");
    let m = std::fs::metadata(&res).unwrap();
    assert_eq!(m.uid(), host_uid(who), "output owned by the caller");
    assert!(!dir.path().join("new.txt").exists());
});

each_mode!(identity_and_privileges, |who| {
    let (o, _d) = run_script(
        who,
        r#"
import os, socket
st = dict(l.split(':\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\t' in l)
for k in ['CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb']:
    assert int(st[k], 16) == 0, (k, st[k])
assert st['NoNewPrivs'].strip() == '1'
assert os.getuid() != 0 and os.geteuid() != 0 and os.getgid() != 0
import pwd
assert pwd.getpwuid(os.getuid()).pw_name == 'mambauser'
assert socket.gethostname() == 'sandbox'
# A pid namespace of our own: only our init and us (and what we start).
pids = [p for p in os.listdir('/proc') if p.isdigit()]
assert len(pids) <= 3, pids
assert os.getpid() < 10
# The executor's steps ran before the script (they live in libcontainer's validate()
# hook, so a libcontainer that stopped calling it would show here): a nested user
# namespace mapping mambauser to the sandbox's root, locked securebits, the named init.
assert open('/proc/self/uid_map').read().split() == ['1000', '0', '1'], open('/proc/self/uid_map').read()
assert open('/proc/self/setgroups').read().strip() == 'deny'
import ctypes
PR_GET_SECUREBITS = 27
bits = ctypes.CDLL(None).prctl(PR_GET_SECUREBITS, 0, 0, 0, 0)
assert bits & 0xef == 0xef, hex(bits)
assert open('/proc/1/comm').read().strip() == 'pysandbox-init'
print('ok')
"#,
        &[],
    );
    assert_code(&o, 0, "identity");
    assert_eq!(stdout(&o), "ok\n");
});

each_mode!(environment_is_scrubbed, |who| {
    let dir = workdir(who);
    put(
        dir.path(),
        "t.py",
        r#"
import os
leak = [k for k in os.environ if 'SECRET' in k or 'SECRET' in os.environ[k]]
assert not leak, leak
assert os.environ['GIVEN'] == 'yes'
for pid in [p for p in os.listdir('/proc') if p.isdigit()]:
    for f in ['cmdline', 'environ']:
        try:
            data = open(f'/proc/{pid}/{f}', 'rb').read()
        except OSError:
            continue
        assert b'SECRET' not in data and b'/tmp/pysandbox-work' not in data, (pid, f, data[:200])
print('ok')
"#,
    );
    let mut cmd = command(who, dir.path(), &["run", "-e", "GIVEN=yes", "t.py"]);
    // setpriv's `env -i` would drop it for the unprivileged modes: put it after.
    cmd.env("PYSANDBOX_TEST_SECRET", "SECRET-value");
    if matches!(who, Who::User | Who::UserInUserns) {
        let mut args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into()).collect();
        let i = args.iter().position(|a| a == "-i").unwrap();
        args.insert(i + 1, "SECRET_TOKEN=SECRET-value".into());
        let prog = cmd.get_program().to_owned();
        cmd = std::process::Command::new(prog);
        cmd.args(args).current_dir(dir.path());
    }
    let o = cmd.output().unwrap();
    assert_code(&o, 0, "environment");
});

each_mode!(network_is_loopback_only, |who| {
    // A listener on the host's loopback must be unreachable from the sandbox.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let body = format!(
        r#"
import socket, threading
try:
    socket.create_connection(('127.0.0.1', {port}), timeout=2)
    print('HOST REACHED')
except OSError:
    pass
try:
    socket.create_connection(('10.0.2.2', 80), timeout=1)
    print('OUTSIDE REACHED')
except OSError:
    pass
s = socket.socket()
s.bind(('127.0.0.1', 0)); s.listen()
def serve():
    c, _ = s.accept(); c.sendall(c.recv(10).upper()); c.close()
threading.Thread(target=serve).start()
c = socket.create_connection(s.getsockname())
c.sendall(b'ping'); print(c.recv(10).decode())
"#
    );
    let (o, _d) = run_script(who, &body, &[]);
    assert_code(&o, 0, "network");
    assert_eq!(stdout(&o), "PING\n");
    l.set_nonblocking(true).unwrap();
    assert!(l.accept().is_err(), "the sandbox connected to the host");
});

each_mode!(stdin_sources, |who| {
    let dir = workdir(who);
    put(
        dir.path(),
        "t.py",
        "import sys\nprint(sys.stdin.read().upper(), end='')\n",
    );
    let o = run_in(who, dir.path(), &["run", "t.py"], b"piped in\n");
    assert_code(&o, 0, "stdin passthrough");
    assert_eq!(stdout(&o), "PIPED IN\n");

    put(dir.path(), "in.txt", "from file\n");
    let o = run_in(
        who,
        dir.path(),
        &["run", "--stdin", "in.txt", "t.py"],
        b"ignored",
    );
    assert_code(&o, 0, "--stdin");
    assert_eq!(stdout(&o), "FROM FILE\n");

    // Script from stdin, and --code.
    let o = run_in(
        who,
        dir.path(),
        &["run", "-", "a1"],
        b"import sys\nprint('stdin script', sys.argv[1:])\n",
    );
    assert_code(&o, 0, "script -");
    assert_eq!(stdout(&o), "stdin script ['a1']\n");
    let o = run_in(
        who,
        dir.path(),
        &[
            "run",
            "--code",
            "import sys; print(sys.argv[1:])",
            "x",
            "--y",
        ],
        b"",
    );
    assert_code(&o, 0, "--code");
    assert_eq!(stdout(&o), "['x', '--y']\n");
});

each_mode!(no_fs, |who| {
    let dir = workdir(who);
    put(dir.path(), "secret.txt", "s");
    put(
        dir.path(),
        "t.py",
        "import os\nassert os.listdir('/usr/app/data') == [], os.listdir('/usr/app/data')\nassert os.listdir('/usr/app/src') == ['t.py']\nprint('isolated')\n",
    );
    let o = run_in(who, dir.path(), &["run", "--no-fs", "t.py"], b"");
    assert_code(&o, 0, "--no-fs");
    assert_eq!(stdout(&o), "isolated\n");
    assert!(
        !dir.path().join("output").exists(),
        "--no-fs must not create output/"
    );
});

each_mode!(stdlib_modules, |who| {
    let (o, _d) = run_script(
        who,
        r#"
import ssl, sqlite3, ctypes, decimal, lzma, hashlib, json, uuid, multiprocessing, asyncio, zlib, bz2
ssl.create_default_context()
sqlite3.connect(':memory:').execute('select 1')
ctypes.CDLL(None)
uuid.uuid4()
with multiprocessing.Pool(2) as p:
    assert p.map(abs, [-1, -2]) == [1, 2]
async def main():
    srv = await asyncio.start_server(lambda r, w: w.close(), '127.0.0.1', 0)
    srv.close()
asyncio.run(main())
try:
    import pip
    print('PIP PRESENT')
except ImportError:
    pass
import shutil
assert shutil.which('sh') is None and shutil.which('ls') is None
print('ok')
"#,
        &[],
    );
    assert_code(&o, 0, "stdlib");
    assert_eq!(stdout(&o), "ok\n");
});

each_mode!(timeout_kills_everything, |who| {
    let marker = unique("tmo");
    let (o, _d) = {
        let dir = workdir(who);
        put(
            dir.path(),
            "t.py",
            "import os, time, sys\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nimport signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('started', flush=True)\ntime.sleep(60)\n",
        );
        let t = Instant::now();
        let o = run_in(
            who,
            dir.path(),
            &["run", "--timeout", "1s", "t.py", &marker],
            b"",
        );
        let took = t.elapsed();
        assert!(took < Duration::from_secs(3), "took {took:?}");
        (o, dir)
    };
    assert_code(&o, 124, "timeout");
    assert_eq!(stdout(&o), "started\n");
    let left = wait_gone(&marker, Duration::from_millis(500));
    assert!(left.is_empty(), "processes left: {left:?}");
});

each_mode!(sigkill_of_pysandbox_leaves_nothing, |who| {
    let marker = unique("kill");
    let dir = workdir(who);
    let mut child = start_sleeper(who, dir.path(), &marker);
    // The pysandbox process itself (setpriv/unshare exec into it: same pid).
    let pysandbox_pid = child.id() as i32;
    // SAFETY: killing our own child.
    unsafe { libc::kill(pysandbox_pid, libc::SIGKILL) };
    child.wait().unwrap();
    let left = wait_gone(&marker, Duration::from_secs(2));
    assert!(left.is_empty(), "sandbox outlived pysandbox: {left:?}");
    // The next run sweeps what the killed one left.
    let o = run_in(who, dir.path(), &["run", "--code", "pass"], b"");
    assert_code(&o, 0, "next run");
    assert_no_stale_state(who, dir.path());
});

/// Every lock file left in the runtime dir must belong to a live run (its flock held),
/// and every pysandbox cgroup to a live run too. Tests of other modes run at the same
/// time as the same uid and SIGKILL their pysandbox too, so a stale lock may appear
/// after this test's sweeping run: one more run must sweep it.
fn assert_no_stale_state(who: Who, dir: &std::path::Path) {
    let stale = stale_locks(who);
    if !stale.is_empty() {
        let o = run_in(who, dir, &["run", "--code", "pass"], b"");
        assert_code(&o, 0, "sweeping run");
        let left = stale_locks(who);
        let kept: Vec<_> = stale.iter().filter(|s| left.contains(s)).collect();
        assert!(kept.is_empty(), "stale lock files not swept: {kept:?}");
    }
    assert_no_stale_cgroups(who);
}

fn locks_dir(who: Who) -> std::path::PathBuf {
    match who {
        Who::Root => std::path::PathBuf::from("/run/pysandbox/locks"),
        Who::RootInUserns => unreachable!("refused"),
        Who::User | Who::UserInUserns => {
            std::path::PathBuf::from(format!("/tmp/pysandbox-{}/run/locks", user_uid()))
        }
    }
}

/// Whether run `id`'s lock is held (the run is alive).
fn lock_held(who: Who, id: &str) -> bool {
    let Ok(f) = std::fs::OpenOptions::new()
        .write(true)
        .open(locks_dir(who).join(format!("{id}.lock")))
    else {
        return false;
    };
    // SAFETY: flock on a live descriptor.
    unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::LOCK_EX | libc::LOCK_NB,
        ) != 0
    }
}

fn stale_locks(who: Who) -> Vec<String> {
    let locks = locks_dir(who);
    let live = |id: &str| lock_held(who, id);
    let mut stale = Vec::new();
    for e in std::fs::read_dir(&locks).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(id) = name.strip_suffix(".lock")
            && !live(id)
            && e.path().exists()
        {
            stale.push(name);
        }
    }
    stale
}

fn assert_no_stale_cgroups(who: Who) {
    if who == Who::Root {
        for ctrl in ["memory", "pids", "cpu"] {
            let dir = std::path::Path::new("/sys/fs/cgroup")
                .join(ctrl)
                .join("pysandbox");
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if !e.path().is_dir() {
                    continue;
                }
                let id = e.file_name().to_string_lossy().into_owned();
                assert!(
                    lock_held(who, &id) || !e.path().exists(),
                    "stale cgroup {}",
                    e.path().display()
                );
            }
        }
    }
}

each_mode!(bad_inputs_fail_with_125, |who| {
    let dir = workdir(who);
    for (args, needle) in [
        (vec!["run", "missing.py"], "missing.py"),
        (
            vec!["run", "--image", "/nonexistent/rootfs", "--code", "pass"],
            "/nonexistent/rootfs",
        ),
        (
            vec!["run", "--timeout", "soon", "--code", "pass"],
            "duration",
        ),
        (vec!["run", "--memory", "lots", "--code", "pass"], "size"),
        (
            vec!["run", "--data", "/nonexistent", "--code", "pass"],
            "/nonexistent",
        ),
        (vec!["run"], "no script"),
    ] {
        let o = run_in(who, dir.path(), &args, b"");
        let err = stderr(&o);
        assert_code(&o, 125, &format!("{args:?}"));
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(stdout(&o).is_empty());
    }
    // Nothing half-written: no output folder for a run that never started.
    assert!(!dir.path().join("output").exists());
});

each_mode!(output_symlink_is_refused, |who| {
    let dir = workdir(who);
    let target = workdir(who);
    std::os::unix::fs::symlink(target.path(), dir.path().join("output")).unwrap();
    let o = run_in(
        who,
        dir.path(),
        &["run", "--code", "open('output/x','w')"],
        b"",
    );
    assert_code(&o, 125, "symlinked output");
    assert!(stderr(&o).contains("symbolic link"), "{}", stderr(&o));
    assert!(!target.path().join("x").exists());
});

each_mode!(limits_hold, |who| {
    // Memory: a 2 GiB allocation under --memory 128M fails or gets the script killed.
    let (o, _d) = run_script(
        who,
        "b = bytearray(2 << 30)\nprint('ALLOCATED')\n",
        &["--memory", "128M"],
    );
    assert!(
        !stdout(&o).contains("ALLOCATED"),
        "memory limit not applied"
    );
    assert_ne!(o.status.code(), Some(0));
    // Processes: the_script_has_exactly_its_pids.
});

#[test]
fn root_in_a_root_mapped_userns_is_refused() {
    // `unshare -r` by root: the sandbox would be host uid 0, exempt from RLIMIT_NPROC.
    if !available(Who::RootInUserns) {
        return;
    }
    let dir = workdir(Who::RootInUserns);
    let o = run_in(
        Who::RootInUserns,
        dir.path(),
        &["run", "--code", "print(1)"],
        b"",
    );
    assert_code(&o, 125, "root in userns");
    assert!(stderr(&o).contains("host uid 0"), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
}

each_mode!(sigterm_to_pysandbox_cleans_up, |who| {
    let marker = unique("term");
    let dir = workdir(who);
    let mut child = start_sleeper(who, dir.path(), &marker);
    let t = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    // The script died of the relayed SIGTERM; pysandbox reports it as a shell would.
    assert_eq!(st.code(), Some(128 + libc::SIGTERM), "{st:?}");
    assert!(processes_with(&marker).is_empty());
    if who != Who::Root {
        assert_no_stale_state(who, dir.path());
    }
});

/// CPU time (user + system, in clock ticks) the process `pid` itself has used.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name (in parentheses, may hold spaces): state is field 3, utime 14.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

each_mode!(pysandbox_waits_without_spinning, |who| {
    // While the script sleeps, pysandbox waits in poll(): a loop that woke at once (its
    // stdout, a pipe with room, is always writable) would burn a whole CPU beside the
    // script for the run's length.
    let marker = unique("idle");
    let dir = workdir(who);
    let mut child = start_sleeper(who, dir.path(), &marker);
    let pysandbox = processes_with(&marker)
        .into_iter()
        .find(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c == "pysandbox\n")
        })
        .expect("pysandbox's process");
    let before = cpu_ticks(pysandbox);
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(pysandbox) - before;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    // One second spinning is ~100 ticks; waiting is none.
    assert!(
        used < 20,
        "pysandbox used {used} ticks of CPU in 1 s of waiting"
    );
});

each_mode!(logs_never_mix_into_the_scripts_streams, |who| {
    let dir = workdir(who);
    put(
        dir.path(),
        "t.py",
        "import sys\nprint('out')\nprint('err', file=sys.stderr)\n",
    );
    let log = dir.path().join("pysandbox.log");
    let o = run_in(
        who,
        dir.path(),
        &[
            "--log-level",
            "debug",
            "--log-file",
            log.to_str().unwrap(),
            "run",
            "t.py",
        ],
        b"",
    );
    assert_code(&o, 0, "logging run");
    assert_eq!(stdout(&o), "out\n");
    assert_eq!(stderr(&o), "err\n");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("libcontainer"),
        "libcontainer's logs go to the log file"
    );
    // Logs on stderr: the script's stderr line still arrives whole and unprefixed.
    let o = run_in(
        who,
        dir.path(),
        &["--log-level", "debug", "run", "t.py"],
        b"",
    );
    assert_code(&o, 0, "logging to stderr");
    assert_eq!(stdout(&o), "out\n");
    assert!(stderr(&o).lines().any(|l| l == "err"), "{}", stderr(&o));
});

#[test]
fn default_image_is_built_once_atomically_and_rebuilt_when_python_changes() {
    // Concurrent first runs share one build; a changed interpreter triggers a rebuild.
    if !available(Who::User) {
        return;
    }
    let home = workdir(Who::User);
    let py_dir = workdir(Who::User);
    let py = py_dir.path().join("python3");
    std::fs::copy("/usr/bin/python3", &py).unwrap();
    chown_to_user(&py);
    let run = |tag: &str| {
        let dir = workdir(Who::User);
        let mut cmd = command(
            Who::User,
            dir.path(),
            &["run", "--code", &format!("print('{tag}')")],
        );
        let mut args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into()).collect();
        let i = args.iter().position(|a| a.starts_with("HOME=")).unwrap();
        args[i] = format!("HOME={}", home.path().display());
        args.insert(i + 1, format!("PYSANDBOX_PYTHON={}", py.display()));
        let prog = cmd.get_program().to_owned();
        cmd = std::process::Command::new(prog);
        cmd.args(args).current_dir(dir.path());
        (cmd, dir)
    };
    let kids: Vec<_> = (0..4)
        .map(|i| {
            let (mut c, d) = run(&format!("r{i}"));
            (c.stdout(std::process::Stdio::piped()).spawn().unwrap(), d)
        })
        .collect();
    for (i, (k, _d)) in kids.into_iter().enumerate() {
        let o = k.wait_with_output().unwrap();
        assert_code(&o, 0, "concurrent first run");
        assert_eq!(stdout(&o), format!("r{i}\n"));
    }
    // The default image is an image of the store: one unpacked tree per build.
    let images = home.path().join(".local/share/pysandbox/store/rootfs");
    let builds = || -> Vec<String> {
        std::fs::read_dir(&images)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect()
    };
    let first = builds();
    assert_eq!(
        first.len(),
        1,
        "one build for concurrent first runs: {first:?}"
    );
    // Same interpreter: reused.
    let (mut c, _d) = run("again");
    assert_code(&c.output().unwrap(), 0, "cached run");
    assert_eq!(builds(), first);
    // The interpreter changes (here: its mtime): rebuilt, the old build removed.
    let f = std::fs::File::options().append(true).open(&py).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    drop(f);
    let (mut c, _d) = run("rebuilt");
    let o = c.output().unwrap();
    assert_code(&o, 0, "rebuilt run");
    assert_eq!(stdout(&o), "rebuilt\n");
    // The run that builds stores the image beside itself; the next run waits for that.
    let (mut c, _d) = run("after");
    assert_code(&c.output().unwrap(), 0, "run after the rebuild");
    let second = builds();
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(
        second, first,
        "a changed interpreter must trigger a rebuild"
    );
}

#[test]
fn read_only_data_folder_runs_without_output() {
    // An ordinary user in a folder it cannot write to: the run goes ahead, output/ is
    // read-only inside, and pysandbox says why; nothing is created.
    if !available(Who::User) {
        return;
    }
    let dir = ReadOnlyDir::new(&[("data.txt", "x")]);
    let o = run_in(
        Who::User,
        dir.path(),
        &[
            "run",
            "--code",
            "print(open('data.txt').read())\ntry:\n    open('output/y', 'w')\nexcept OSError:\n    print('read-only')\n",
        ],
        b"",
    );
    assert_code(&o, 0, "read-only data folder");
    assert_eq!(stdout(&o), "x\nread-only\n");
    assert!(stderr(&o).contains("no output folder"), "{}", stderr(&o));
    assert!(!dir.path().join("output").exists());
}

/// A pysandbox killed between creating its lock file and naming it leaves `.ID.tmp`:
/// the next run removes it once it is unlocked and a few seconds old, not before.
#[test]
fn stale_unnamed_lock_is_swept() {
    // As whoever runs the tests: root's runtime dir, or the ordinary user's.
    let who = me();
    let locks = &locks_dir(who);
    std::fs::create_dir_all(locks).unwrap();
    let old = locks.join(format!(".{}.tmp", unique("ps-test-old")));
    let fresh = locks.join(format!(".{}.tmp", unique("ps-test-fresh")));
    struct Remove(Vec<std::path::PathBuf>);
    impl Drop for Remove {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    let _guard = Remove(vec![old.clone(), fresh.clone()]);
    for p in [&old, &fresh] {
        std::fs::write(p, b"").unwrap();
    }
    let a_minute_ago = std::time::SystemTime::now() - Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(a_minute_ago)
        .unwrap();
    let dir = workdir(who);
    let o = run_in(who, dir.path(), &["run", "--code", "pass"], b"");
    assert_code(&o, 0, "run");
    assert!(!old.exists(), "a stale unnamed lock was not swept");
    assert!(fresh.exists(), "a fresh unnamed lock was swept");
}

each_mode!(
    output_elsewhere_needs_nothing_made_in_the_data_folder,
    |who| {
        // A data folder the caller cannot write to (owned by root, 0755, or the caller's own
        // with mode 0555 when the tests run as an ordinary user), and --output in a
        // folder of the caller's: the sandbox shows output/ inside the data folder without a
        // mount point being made on the host.
        let data = ReadOnlyDir::new(&[("in.txt", "data")]);
        let work = workdir(who);
        let out = work.path().join("results");
        put(
            work.path(),
            "t.py",
            "import os\nprint(os.getcwd(), open('in.txt').read())\nopen('output/r.txt', 'w').write('ok')\n",
        );
        let o = run_in(
            who,
            work.path(),
            &[
                "run",
                "--data",
                data.path().to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
                "t.py",
            ],
            b"",
        );
        assert_code(&o, 0, "--output elsewhere");
        assert_eq!(stdout(&o), "/usr/app/data data\n");
        assert_eq!(std::fs::read_to_string(out.join("r.txt")).unwrap(), "ok");
        assert!(
            !data.path().join("output").exists(),
            "a mount point was made"
        );
    }
);

each_mode!(sigkill_at_any_moment_leaves_no_process, |who| {
    // pysandbox SIGKILLed while it creates the sandbox: libcontainer's intermediate
    // process, blocked on a channel whose other end it holds itself, outlived it (and
    // held the run's lock) until pysandbox made every process after its staging in a pid
    // namespace whose init dies with it. In a session of its own, as from a terminal.
    let marker = unique("killed");
    let dir = workdir(who);
    let code = format!("import time; time.sleep(30)  # {marker}");
    // The image ready first: the kills land in the sandbox's creation, not in a build.
    let o = run_in(who, dir.path(), &["run", "--no-fs", "--code", "pass"], b"");
    assert_code(&o, 0, "warm-up run");
    kill_while_starting(30, Duration::from_millis(5), || {
        let inner = command(who, dir.path(), &["run", "--no-fs", "--code", &code]);
        let mut c = Command::new("setsid");
        c.arg(inner.get_program())
            .args(inner.get_args())
            .current_dir(dir.path());
        c
    });
    let left = wait_gone(&marker, Duration::from_secs(10));
    let described: Vec<String> = left
        .iter()
        .map(|p| {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            format!("{p} {}", comm.trim())
        })
        .collect();
    assert!(left.is_empty(), "left behind: {described:?}");
});

#[test]
fn a_process_limit_reached_while_creating_ends_in_an_error_not_a_hang() {
    // The ordinary user's RLIMIT_NPROC (root is exempt) at 1 to 8 processes: the limit
    // strikes at each step of the sandbox's creation in turn (its pid namespace's init,
    // libcontainer's intermediate, the init...). pysandbox once waited forever there: the
    // pid namespace's init, dying, waited for pysandbox to reap libcontainer's
    // intermediate, while pysandbox waited for the init.
    let who = Who::User;
    let marker = unique("nproc");
    let dir = workdir(who);
    let code = format!("print('ran')  # {marker}");
    let o = run_in(who, dir.path(), &["run", "--no-fs", "--code", "pass"], b"");
    assert_code(&o, 0, "warm-up run");
    for n in 1..=8 {
        let plain = command(who, dir.path(), &["run", "--no-fs", "--code", &code]);
        let mut args: Vec<std::ffi::OsString> = std::iter::once(plain.get_program())
            .chain(plain.get_args())
            .map(Into::into)
            .collect();
        let at = args.iter().position(|a| a == bin().as_os_str()).unwrap();
        args.splice(at..at, ["prlimit".into(), format!("--nproc={n}").into()]);
        let mut child = Command::new(&args[0])
            .args(&args[1..])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if t.elapsed() > Duration::from_secs(60) {
                child.kill().unwrap();
                panic!("with --nproc={n} pysandbox did not end within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let o = child.wait_with_output().unwrap();
        match o.status.code() {
            Some(0) => assert_eq!(stdout(&o), "ran\n", "--nproc={n}"),
            Some(125) => assert!(
                stderr(&o).starts_with("pysandbox: error: ") && stderr(&o).lines().count() == 1,
                "--nproc={n}: {}",
                stderr(&o)
            ),
            _ => panic!("--nproc={n}: {:?} {}", o.status, stderr(&o)),
        }
    }
    let left = wait_gone(&marker, Duration::from_secs(10));
    assert!(left.is_empty(), "left behind: {left:?}");
}

each_mode!(the_script_has_exactly_its_pids, |who| {
    // A fork bomb stops at --pids, exactly. --pids 6: the sandbox's init and the
    // interpreter, and 4 more processes, whatever
    // enforces it (a cgroup, or RLIMIT_NPROC, which rootless also counts pysandbox's own
    // processes in: they are not the script's to use, nor are they taken from it). The
    // image ready first: storing a default image just built goes on beside the first
    // run, in a process of the user's.
    let dir = workdir(who);
    let o = run_in(who, dir.path(), &["run", "--no-fs", "--code", "pass"], b"");
    assert_code(&o, 0, "warm-up run");
    let (o, _d) = run_script(
        who,
        r#"
import os, time
n = 0
try:
    for _ in range(20):
        if os.fork() == 0:
            time.sleep(3); os._exit(0)
        n += 1
except OSError:
    pass
print(n)
"#,
        &["--pids", "6", "--timeout", "20s"],
    );
    assert_code(&o, 0, "forks");
    assert_eq!(stdout(&o).trim(), "4", "processes forked with --pids 6");
});
