//! Containment properties, attacked from inside real sandboxes (as root, as an ordinary
//! user, and as that user inside `unshare -Ur`), each asserting what the host sees: bytes
//! and inodes on the host disk, a host budget untouched, a host process not blocked, no
//! host fact shown. Where it makes sense, the same script run by the bare host python
//! shows the effect, so each test can fail.

#[macro_use]
mod common;

use common::*;
use serde_json::Value;
use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn report(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e})\n--- stdout\n{}\n--- stderr\n{}",
            stdout(o),
            stderr(o)
        )
    })
}

fn json_script(who: Who, body: &str, extra: &[&str]) -> (Value, WorkDir) {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let (o, dir) = run_script(who, body, &args);
    (report(&o), dir)
}

/// Runs `body` with the bare host python, as the host user `who` stands for, in `dir`.
fn bare(who: Who, dir: &Path, body: &str) -> Output {
    let mut c = if matches!(who, Who::Root) {
        Command::new("/usr/bin/python3")
    } else {
        user_command("/usr/bin/python3")
    };
    c.arg("-c").arg(body).current_dir(dir);
    c.stdin(Stdio::null()).output().unwrap()
}

/// What a folder tree takes on the host: allocated bytes of each distinct inode, and at
/// least one 4 KiB block per entry (the merge's accounting, measured independently).
fn host_cost(dir: &Path) -> (u64, u64) {
    fn walk(p: &Path, seen: &mut HashSet<u64>, bytes: &mut u64, entries: &mut u64) {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            let m = e.path().symlink_metadata().unwrap();
            *entries += 1;
            if seen.insert(m.ino()) {
                *bytes += (m.blocks() * 512).max(4096);
            }
            if m.is_dir() {
                walk(&e.path(), seen, bytes, entries);
            }
        }
    }
    let (mut bytes, mut entries) = (0, 0);
    walk(dir, &mut HashSet::new(), &mut bytes, &mut entries);
    (bytes, entries)
}

const MIB: u64 = 1 << 20;

each_mode!(
    sparse_files_and_hard_links_land_as_the_host_counts_them,
    |who| {
        // Four 64 MiB files of holes and a 20 MiB file with five more names: 276 MiB of
        // apparent size, 20 MiB of data.
        let (r, dir) = json_script(
            who,
            "import os\n\
         for i in range(4):\n    open(f'output/s{i}', 'wb').truncate(64 << 20)\n\
         open('output/big', 'wb').write(os.urandom(20 << 20))\n\
         for i in range(5):\n    os.link('output/big', f'output/link{i}')\n\
         print('done')\n",
            &["--output-limit", "64M"],
        );
        assert_eq!(r["stdout"]["text"], "done\n", "{r}");
        assert_eq!(r["status"], "ok", "{r}");
        let out = dir.path().join("output");
        let (bytes, entries) = host_cost(&out);
        assert_eq!(entries, 10);
        assert!(bytes <= 64 * MIB, "{bytes} bytes on the host for a 64M cap");
        for i in 0..4 {
            let m = std::fs::metadata(out.join(format!("s{i}"))).unwrap();
            assert_eq!(m.len(), 64 * MIB);
            assert!(m.blocks() * 512 < MIB, "s{i} lost its holes");
        }
        let big = std::fs::metadata(out.join("big")).unwrap();
        assert_eq!(big.nlink(), 6, "the links are links on the host");
        for i in 0..5 {
            assert_eq!(
                std::fs::metadata(out.join(format!("link{i}")))
                    .unwrap()
                    .ino(),
                big.ino()
            );
        }
    }
);

each_mode!(entries_and_depth_are_charged_and_bounded, |who| {
    // 900 KiB of data, then empty files until ENOSPC, then folders 200 deep: the merge
    // takes what fits in 1 MiB as the host counts it, and says the rest was left out.
    let (r, dir) = json_script(
        who,
        "import os\n\
         open('output/data', 'wb').write(os.urandom(900 << 10))\n\
         n = 0\n\
         try:\n    for i in range(100000):\n        open(f'output/e{i}', 'w').close(); n += 1\n\
         except OSError as e:\n    print('files', n, e.errno)\n\
         d = 'output/deep'\n\
         try:\n    for i in range(200):\n        os.mkdir(d); d += '/d'\n\
         except OSError as e:\n    print('deep', i, e.errno)\n",
        &["--output-limit", "1M"],
    );
    let text = r["stdout"]["text"].as_str().unwrap();
    assert!(text.contains("files ") && text.contains(" 28\n"), "{r}"); // ENOSPC
    assert_eq!(r["status"], "output_limit", "{r}");
    let warnings = r["warnings"].to_string();
    assert!(warnings.contains("not written back"), "{r}");
    let out = dir.path().join("output");
    let (bytes, entries) = host_cost(&out);
    assert!(
        bytes <= MIB,
        "{bytes} bytes ({entries} entries) for a 1M cap"
    );
    for e in std::fs::read_dir(&out).unwrap().flatten() {
        assert!(
            !e.file_name().to_string_lossy().starts_with(".pysandbox"),
            "a temporary name was left behind"
        );
    }

    // Depth alone: 100 folders, one file at the bottom; at most 64 levels land.
    let (r, dir) = json_script(
        who,
        "import os\nd = 'output'\nfor i in range(100):\n    d += '/d'; os.mkdir(d)\nopen(d + '/f', 'w').write('x')\n",
        &[],
    );
    assert_eq!(r["status"], "output_limit", "{r}");
    let mut depth = 0;
    let mut p = dir.path().join("output");
    while p.join("d").is_dir() {
        p = p.join("d");
        depth += 1;
    }
    assert!(depth <= 64 && depth > 0, "{depth} levels landed");
});

each_mode!(merged_modes_are_safe_for_the_caller, |who| {
    let (r, dir) = json_script(
        who,
        "import os\n\
         open('output/open', 'w').write('x'); os.chmod('output/open', 0o777)\n\
         open('output/none', 'w').write('x'); os.chmod('output/none', 0o000)\n\
         os.mkdir('output/closed'); open('output/closed/f', 'w').write('x'); os.chmod('output/closed', 0o000)\n",
        &[],
    );
    assert_eq!(r["status"], "ok", "{r}");
    let out = dir.path().join("output");
    let mode = |n: &str| std::fs::metadata(out.join(n)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("open"), 0o755);
    assert_eq!(mode("none"), 0o600);
    assert_eq!(mode("closed"), 0o700);
    assert_eq!(
        std::fs::metadata(out.join("none")).unwrap().uid(),
        host_uid(who)
    );
});

const HOLD_INOTIFY: &str = "import ctypes, sys, time\n\
libc = ctypes.CDLL(None, use_errno=True)\n\
fds = []\n\
while len(fds) < 200:\n    fd = libc.inotify_init1(0)\n    if fd < 0:\n        break\n    fds.append(fd)\n\
print(len(fds), ctypes.get_errno(), flush=True)\n\
sys.stdin.read(1)\n";

/// Whether the host user `who` stands for can still make an inotify instance.
fn host_user_inotify_works(who: Who) -> bool {
    let probe = "import ctypes; print(ctypes.CDLL(None).inotify_init1(0) >= 0)";
    let o = bare(who, Path::new("/"), probe);
    stdout(&o).trim() == "True"
}

/// Starts `argv` with `HOLD_INOTIFY`'s protocol and returns it with the count it got.
fn hold(mut cmd: Command) -> (std::process::Child, u64) {
    use std::io::BufRead;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let n = line
        .split_whitespace()
        .next()
        .unwrap_or("0")
        .parse()
        .unwrap();
    (child, n)
}

/// The inotify tests of all modes share the ordinary user's budget: one at a time.
static INOTIFY: std::sync::Mutex<()> = std::sync::Mutex::new(());

each_mode!(per_user_inotify_budget_of_the_host_stays_untouched, |who| {
    let _one_at_a_time = INOTIFY.lock().unwrap_or_else(|e| e.into_inner());
    let dir = workdir(who);
    put(dir.path(), "t.py", HOLD_INOTIFY);
    let (mut child, n) = hold(command(who, dir.path(), &["run", "t.py"]));
    // While the sandbox holds every instance it could get, the host user still has some.
    let host_ok = host_user_inotify_works(who);
    drop(child.stdin.take());
    child.wait().unwrap();
    assert!(n <= 8, "the sandbox got {n} inotify instances");
    assert!(host_ok, "the host user's inotify budget was exhausted");
    // The bare interpreter, as an ordinary user, exhausts that user's budget (the test
    // can fail). Not as root: root's budget is the whole host's daemons'.
    if who == Who::User {
        let mut c = user_command("/usr/bin/python3");
        c.args(["-c", HOLD_INOTIFY]);
        let (mut bare_child, bare_n) = hold(c);
        let host_ok = host_user_inotify_works(who);
        drop(bare_child.stdin.take());
        bare_child.wait().unwrap();
        assert!(bare_n > 8 && !host_ok, "bare python got {bare_n}");
    }
});

each_mode!(memory_pools_outside_rlimits_are_capped, |who| {
    let body = "import ctypes, os, resource\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        libc.shmget.restype = ctypes.c_int\n\
        print('shm32', libc.shmget(0, ctypes.c_size_t(32 << 20), 0o1600) >= 0)\n\
        print('shm8', libc.shmget(0, ctypes.c_size_t(8 << 20), 0o1600) >= 0)\n\
        try:\n    os.memfd_create('x'); print('memfd True')\n\
        except OSError as e:\n    print('memfd False', e.errno)\n\
        print('sigpending', resource.getrlimit(resource.RLIMIT_SIGPENDING)[1])\n\
        print('msgqueue', resource.getrlimit(resource.RLIMIT_MSGQUEUE)[1])\n\
        ptys = []\n\
        try:\n    for _ in range(200):\n        ptys.append(os.openpty())\n\
        except OSError:\n    pass\n\
        print('ptys', len(ptys))\n";
    // --memory 64M: /dev/shm and SysV shared memory are capped at a quarter of it.
    let (r, dir) = json_script(who, body, &["--memory", "64M"]);
    let text = r["stdout"]["text"].as_str().unwrap().to_string();
    assert!(text.contains("shm32 False"), "{r}");
    assert!(text.contains("shm8 True"), "{r}");
    assert!(text.contains("memfd False 1"), "{r}");
    let get = |k: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.trim().parse().ok())
            .unwrap()
    };
    assert!(get("sigpending") <= 1024);
    assert_eq!(get("msgqueue"), 0);
    // The host's kernel.pty.max counts every devpts instance's terminals.
    assert!(get("ptys") <= 64, "{r}");
    // The host has none of these caps.
    let o = bare(who, dir.path(), body);
    let bare_text = stdout(&o);
    assert!(bare_text.contains("shm32 True"), "{bare_text}");
    assert!(bare_text.contains("memfd True"), "{bare_text}");
});

each_mode!(data_folder_locks_sockets_and_fifos_stay_private, |who| {
    let dir = workdir(who);
    let lockme = put(dir.path(), "lockme", "x");
    let sock_path = dir.path().join("host.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    listener.set_nonblocking(true).unwrap();
    chown_to(&sock_path, who);
    let fifo = dir.path().join("host.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    chown_to(&fifo, who);
    let probe = "import fcntl, os, socket, sys\n\
        f = open('lockme'); fcntl.flock(f, fcntl.LOCK_EX)\n\
        fcntl.lockf(open('lockme', 'rb'), fcntl.LOCK_SH)\n\
        try:\n    s = socket.socket(socket.AF_UNIX); s.connect('host.sock'); print('socket reached')\n\
        except OSError as e:\n    print('socket refused', e.errno)\n\
        try:\n    os.open('host.fifo', os.O_WRONLY | os.O_NONBLOCK); print('fifo reached')\n\
        except OSError as e:\n    print('fifo refused', e.errno)\n\
        print('holding', flush=True)\n\
        sys.stdin.read(1)\n";
    put(dir.path(), "t.py", probe);
    // A host reader on the FIFO, so a writer that reached it would succeed.
    let fifo_reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags_nonblock()
        .open(&fifo)
        .unwrap();
    let mut child = command(who, dir.path(), &["run", "t.py"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    {
        use std::io::BufRead;
        let mut rd = std::io::BufReader::new(child.stdout.as_mut().unwrap());
        while !seen.contains("holding") {
            let mut l = String::new();
            if rd.read_line(&mut l).unwrap() == 0 {
                break;
            }
            seen.push_str(&l);
        }
    }
    // The sandbox holds its locks now: a host process takes the same ones at once.
    let f = std::fs::File::open(&lockme).unwrap();
    // SAFETY: flock on a live descriptor.
    let flock_free = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    } == 0;
    let rw = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&lockme)
        .unwrap();
    let whole = libc::flock {
        l_type: libc::F_WRLCK as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    let posix_free = nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&rw),
        nix::fcntl::FcntlArg::F_SETLK(&whole),
    )
    .is_ok();
    let accepted = listener.accept().is_ok();
    drop(child.stdin.take());
    child.wait().unwrap();
    drop(fifo_reader);
    assert!(seen.contains("socket refused"), "{seen}");
    assert!(seen.contains("fifo refused"), "{seen}");
    assert!(flock_free, "a host flock was blocked by the sandbox");
    assert!(posix_free, "a host fcntl lock was blocked by the sandbox");
    assert!(!accepted);
    // Bare python reaches both (the test can fail).
    let o = bare(
        who,
        dir.path(),
        "import os, socket\ns = socket.socket(socket.AF_UNIX); s.connect('host.sock'); print('socket reached')\n",
    );
    assert!(stdout(&o).contains("socket reached"), "{}", stderr(&o));
});

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}
impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::custom_flags(self, libc::O_NONBLOCK)
    }
}

each_mode!(no_host_path_uid_or_boot_facts_inside, |who| {
    let body = "import os\n\
        print(open('/proc/self/mountinfo').read())\n\
        for p in ['/proc/cmdline', '/proc/locks', '/proc/partitions', '/proc/swaps', '/proc/sys/kernel/random/boot_id', '/proc/key-users']:\n    print(p, repr(open(p).read()))\n";
    let (r, dir) = json_script(who, body, &[]);
    let text = r["stdout"]["text"].as_str().unwrap();
    assert!(text.contains(" / / "), "{text}");
    let workdir = dir.path().to_str().unwrap();
    for secret in [
        workdir,
        user_home().to_str().unwrap(),
        bin().parent().unwrap().to_str().unwrap(),
        "/run/user",
        "/root",
    ] {
        assert!(!text.contains(secret), "{secret:?} shows inside:\n{text}");
    }
    for p in [
        "/proc/cmdline",
        "/proc/locks",
        "/proc/sys/kernel/random/boot_id",
    ] {
        assert!(text.contains(&format!("{p} ''")), "{p} not masked:\n{text}");
    }
    let o = bare(who, dir.path(), "print(repr(open('/proc/cmdline').read()))");
    assert_ne!(stdout(&o).trim(), "''");
});

each_mode!(seccomp_log_counts_instead_of_listing, |who| {
    let body = format!(
        "import ctypes\nlibc = ctypes.CDLL(None)\nfor _ in range(20000):\n    libc.syscall({}, 0, 0, 0, 0, 0)\n",
        libc::SYS_mount
    );
    let (r, _dir) = json_script(who, &body, &["--seccomp-log"]);
    let refused = r["seccomp_refused"].as_array().unwrap();
    let mount = refused.iter().find(|e| e["syscall"] == "mount").unwrap();
    assert_eq!(mount["count"], 20000, "{r}");
});

each_mode!(a_limit_nothing_enforces_is_never_silent, |who| {
    let o = run_script(who, "pass\n", &["--cpus", "0.5", "--json"]).0;
    let r = report(&o);
    let warned = r["warnings"].to_string().contains("--cpus");
    match r["limits"]["cpus"]["mechanism"].as_str() {
        Some("none") => {
            assert!(warned, "{r}");
            assert!(stderr(&o).contains("--cpus"), "{}", stderr(&o));
        }
        _ => assert!(!warned, "{r}"),
    }
});

each_mode!(output_is_merged_consistently_after_a_timeout, |who| {
    // Killed by its timeout in the middle of writing: what landed is whole files only.
    let (r, dir) = json_script(
        who,
        "import os, time\n\
         open('output/first', 'wb').write(b'x' * 100000)\n\
         f = open('output/growing', 'wb')\n\
         print('written', flush=True)\n\
         while True:\n    f.write(b'y' * 4096); time.sleep(0.001)\n",
        &["--timeout", "1s"],
    );
    assert_eq!(r["status"], "timeout", "{r}");
    let out = dir.path().join("output");
    assert_eq!(std::fs::metadata(out.join("first")).unwrap().len(), 100000);
    let grown = std::fs::read(out.join("growing")).unwrap();
    assert!(grown.len() % 4096 == 0 && grown.iter().all(|&b| b == b'y'));
    for e in std::fs::read_dir(&out).unwrap().flatten() {
        assert!(!e.file_name().to_string_lossy().starts_with(".pysandbox"));
    }
});

/// As root on cgroup v1, TCP buffers are charged to the run's memory cgroup only once
/// `memory.kmem.tcp.limit_in_bytes` is set: it must be.
#[test]
fn cgroup_v1_counts_tcp_buffers_as_root() {
    if !available(Who::Root) {
        return;
    }
    if !Path::new("/sys/fs/cgroup/memory/memory.kmem.tcp.limit_in_bytes").exists() {
        eprintln!("SKIP: no cgroup v1 memory controller with kmem.tcp here");
        return;
    }
    let dir = workdir(Who::Root);
    let marker = unique("tcpmem");
    let mut child = start_sleeper(Who::Root, dir.path(), &marker);
    let pids = processes_with(&marker);
    let cg = pids
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/cgroup")).ok())
        .filter_map(|c| {
            c.lines()
                .find_map(|l| l.split_once(":memory:").map(|x| x.1.to_string()))
        })
        .find(|path| path.contains("pysandbox"))
        .expect("the sandbox's memory cgroup");
    let limit = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory{cg}/memory.kmem.tcp.limit_in_bytes"
    ))
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let memory = pysandbox::policy::Limits::default();
    assert_eq!(limit.trim(), memory.kernel_tcp_memory().to_string());
}

each_mode!(renaming_an_existing_output_folder_keeps_its_files, |who| {
    // Without overlay redirects, a renamed host folder is copied up whole, so the merge
    // has everything it needs (with redirects the new name would land empty and the old
    // one be removed).
    let dir = workdir(who);
    let old = dir.path().join("output/old");
    std::fs::create_dir_all(&old).unwrap();
    put(&old, "f", "kept");
    for p in [dir.path().join("output"), old.clone(), old.join("f")] {
        chown_to(&p, who);
    }
    put(
        dir.path(),
        "t.py",
        "import shutil\nshutil.move('output/old', 'output/new')\n",
    );
    let o = run_in(who, dir.path(), &["run", "t.py"], b"");
    assert_code(&o, 0, "rename");
    assert!(!old.exists());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("output/new/f")).unwrap(),
        "kept"
    );
});
