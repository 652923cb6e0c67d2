//! The seccomp policy, tested from inside real sandboxes. The policy file is the test
//! table: every syscall the kernel knows and `seccomp/<arch>.json` does not allow is
//! called inside a sandbox and must fail with the filter's errno; `--seccomp-log` must
//! name each of them (so the refusal came from the filter, not from the kernel lacking a
//! capability); the conditional rules are probed argument by argument; and a broad CPython
//! workload must pass, so the filter is neither too loose nor too tight.

#[macro_use]
mod common;

use common::*;
use std::collections::BTreeSet;

fn policy_allowed() -> (BTreeSet<String>, BTreeSet<String>) {
    let arch = std::env::consts::ARCH;
    let path = format!("{}/seccomp/{arch}.json", env!("CARGO_MANIFEST_DIR"));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut plain = BTreeSet::new();
    let mut conditional = BTreeSet::new();
    for rule in v["sandbox"]["filter"].as_array().unwrap() {
        let name = rule["syscall"].as_str().unwrap().to_string();
        if rule.get("args").is_some() {
            conditional.insert(name);
        } else {
            plain.insert(name);
        }
    }
    (plain, conditional)
}

/// Every syscall outside the allow-list (conditional rules are probed separately).
fn denied() -> Vec<(u32, &'static str)> {
    let (plain, conditional) = policy_allowed();
    let table = pysandbox::seccomp::syscall_table();
    assert!(
        !table.is_empty(),
        "no syscall table: install the kernel headers (linux-libc-dev) before building"
    );
    table
        .iter()
        .copied()
        .filter(|(_, n)| !plain.contains(*n) && !conditional.contains(*n))
        .collect()
}

fn probe_script(list: &[(u32, &str)]) -> String {
    let entries: Vec<String> = list
        .iter()
        .map(|(nr, n)| format!("({nr}, {n:?})"))
        .collect();
    format!(
        r#"
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
for nr, name in [{}]:
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), 0, 0, 0, 0, 0, 0)
    print(name, r, ctypes.get_errno())
"#,
        entries.join(", ")
    )
}

each_mode!(every_denied_syscall_is_refused_by_the_filter, |who| {
    let list = denied();
    for must in [
        "mount",
        "umount2",
        "pivot_root",
        "unshare",
        "setns",
        "keyctl",
        "add_key",
        "request_key",
        "bpf",
        "perf_event_open",
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "userfaultfd",
        "kexec_load",
        "init_module",
        "finit_module",
        "delete_module",
        "reboot",
        "swapon",
        "swapoff",
        "acct",
        "open_by_handle_at",
        "name_to_handle_at",
        "clock_settime",
        "settimeofday",
        "adjtimex",
        "syslog",
        "io_uring_setup",
        "io_uring_enter",
        "quotactl",
        "iopl",
        "ioperm",
        "kcmp",
        "clone3",
        "fsopen",
        "move_mount",
        "open_tree",
        "chroot",
    ] {
        assert!(
            list.iter().any(|(_, n)| *n == must)
                || !pysandbox::seccomp::syscall_table()
                    .iter()
                    .any(|(_, n)| *n == must),
            "{must} must be denied by the policy"
        );
    }
    let (o, _d) = run_script(who, &probe_script(&list), &["--seccomp-log"]);
    assert_code(&o, 0, "probe");
    let out = stdout(&o);
    let mut seen = 0;
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (name, ret, errno) = (f[0], f[1], f[2].parse::<i32>().unwrap());
        let want = if name == "clone3" {
            libc::ENOSYS
        } else {
            libc::EPERM
        };
        assert_eq!(
            (ret, errno),
            ("-1", want),
            "{name}: returned {ret}, errno {errno}"
        );
        seen += 1;
    }
    assert_eq!(seen, list.len(), "every probe ran:\n{out}");
    // The filter itself refused each one (a missing capability would also give EPERM).
    let log = stderr(&o);
    let line = log
        .lines()
        .find(|l| l.starts_with("pysandbox: seccomp refused:"))
        .unwrap_or_else(|| panic!("no refusal log: {log}"));
    for (_, name) in &list {
        if *name != "clone3" {
            assert!(
                line.contains(&format!(" {name} (x1)")),
                "{name} not logged: {line}"
            );
        }
    }
});

each_mode!(conditional_rules, |who| {
    let (o, _d) = run_script(
        who,
        r#"
import ctypes, errno, os, socket, fcntl, termios
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *a):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(x) for x in a])
    return r, ctypes.get_errno()
res = {}
# socket(): AF_UNIX, AF_INET/AF_INET6 stream and datagram, AF_NETLINK with NETLINK_ROUTE
# (0) only. Netlink: 4 sock_diag, 6 xfrm, 9 audit, 12 netfilter, 15 kobject_uevent,
# 16 generic, 2 usersock.
for fam, typ, proto in [(1, 1, 0), (1, 2, 0), (1, 5, 0), (2, 1, 0), (2, 2, 0), (10, 1, 0), (10, 2, 0), (2, 3, 1), (10, 3, 58), (2, 3, 255), (17, 3, 0), (16, 3, 0), (16, 2, 0), (16, 3, 4), (16, 3, 6), (16, 3, 9), (16, 3, 12), (16, 2, 15), (16, 3, 16), (16, 2, 2), (40, 1, 0), (38, 5, 0), (15, 3, 2), (21, 5, 0), (17, 2, 0), (31, 5, 0), (44, 3, 0)]:
    try:
        socket.socket(fam, typ | socket.SOCK_CLOEXEC, proto).close()
        res[f"socket {fam} {typ} {proto}"] = 0
    except OSError as e:
        res[f"socket {fam} {typ} {proto}"] = e.errno
# set*id and chown: to the sandbox's own ids (1000) or -1 only; EPERM otherwise, as an
# unprivileged process on a host gets (not the EINVAL of an unmapped id).
ids = {
    "setuid 1000": lambda: os.setuid(1000), "setuid 0": lambda: os.setuid(0),
    "setgid 1000": lambda: os.setgid(1000), "setgid 65534": lambda: os.setgid(65534),
    "setreuid -1 1000": lambda: os.setreuid(-1, 1000), "setreuid 0 -1": lambda: os.setreuid(0, -1),
    "setresgid -1 -1 1000": lambda: os.setresgid(-1, -1, 1000), "setresgid 1000 1000 0": lambda: os.setresgid(1000, 1000, 0),
    "chown 1000 1000": lambda: os.chown("/tmp/f", 1000, 1000), "chown -1 0": lambda: os.chown("/tmp/f", -1, 0),
    "fchownat 0 -1": lambda: os.chown("f", 0, -1, dir_fd=os.open("/tmp", os.O_RDONLY)),
    "setgroups": lambda: os.setgroups([1000]),
}
open("/tmp/f", "w").close()
for k, f in ids.items():
    try:
        f(); res[k] = 0
    except OSError as e:
        res[k] = e.errno
for fam in [1, 2]:
    try:
        a, b = socket.socketpair(fam, 1); a.close(); b.close(); res[f"socketpair {fam}"] = 0
    except OSError as e:
        res[f"socketpair {fam}"] = e.errno
# clone(): fork is fine, namespace flags are not.
SYS_clone = {SYS_clone}
for flag in [0x10000000, 0x20000000, 0x40000000, 0x00020000, 0x08000000, 0x04000000, 0x02000000]:
    r, e = call(SYS_clone, flag | 17, 0, 0, 0, 0)
    if r == 0:
        os._exit(0)
    res[f"clone {flag:#x}"] = e if r < 0 else 0
pid = os.fork()
if pid == 0:
    os._exit(7)
res["fork"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
# ioctl(): terminal ioctls fine, TIOCSTI/TIOCLINUX not.
m, s = os.openpty()
try:
    fcntl.ioctl(m, termios.TIOCSTI, b"x"); res["TIOCSTI"] = 0
except OSError as e:
    res["TIOCSTI"] = e.errno
try:
    fcntl.ioctl(m, termios.TIOCGWINSZ, b"\0" * 8); res["TIOCGWINSZ"] = 0
except OSError as e:
    res["TIOCGWINSZ"] = e.errno
# personality(): query only.
res["personality query"] = call({SYS_personality}, 0xffffffff)[1]
res["personality PER_LINUX32"] = call({SYS_personality}, 8)[1]
for k, v in res.items():
    print(k, v)
"#
        .replace("{SYS_clone}", &libc::SYS_clone.to_string())
        .replace("{SYS_personality}", &libc::SYS_personality.to_string())
        .as_str(),
        &[],
    );
    assert_code(&o, 0, "conditional probes");
    let out = stdout(&o);
    let get = |k: &str| -> i32 {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k} ")))
            .unwrap_or_else(|| panic!("{k} missing:\n{out}"))
            .parse()
            .unwrap()
    };
    let eperm = libc::EPERM;
    for ok in [
        "socket 1 1 0",
        "socket 1 2 0",
        "socket 1 5 0",
        "socket 2 1 0",
        "socket 2 2 0",
        "socket 10 1 0",
        "socket 10 2 0",
        "socket 16 3 0",
        "socket 16 2 0",
        "socketpair 1",
        "TIOCGWINSZ",
        "setuid 1000",
        "setgid 1000",
        "setreuid -1 1000",
        "setresgid -1 -1 1000",
        "chown 1000 1000",
    ] {
        assert_eq!(get(ok), 0, "{ok} must work:\n{out}");
    }
    // Raw sockets and netlink protocols other than NETLINK_ROUTE: the allow-list's EPERM.
    for no in [
        "socket 2 3 1",
        "socket 10 3 58",
        "socket 2 3 255",
        "socket 16 3 4",
        "socket 16 3 6",
        "socket 16 3 9",
        "socket 16 3 12",
        "socket 16 2 15",
        "socket 16 3 16",
        "socket 16 2 2",
        "socketpair 2",
        "TIOCSTI",
        "personality PER_LINUX32",
        "setuid 0",
        "setgid 65534",
        "setreuid 0 -1",
        "setresgid 1000 1000 0",
        "chown -1 0",
        "fchownat 0 -1",
        "setgroups",
    ] {
        assert_eq!(get(no), eperm, "{no} must be refused:\n{out}");
    }
    // Families the allow-list never allows: EAFNOSUPPORT, as from a kernel without them.
    for no in [
        "socket 17 3 0",
        "socket 17 2 0",
        "socket 40 1 0",
        "socket 38 5 0",
        "socket 15 3 2",
        "socket 21 5 0",
        "socket 31 5 0",
        "socket 44 3 0",
    ] {
        assert_eq!(get(no), libc::EAFNOSUPPORT, "{no} must be refused:\n{out}");
    }
    for flag in [
        "0x10000000",
        "0x20000000",
        "0x40000000",
        "0x20000",
        "0x8000000",
        "0x4000000",
        "0x2000000",
    ] {
        assert_eq!(get(&format!("clone {flag}")), eperm, "clone {flag}:\n{out}");
    }
    assert_eq!(get("fork"), 7);
    assert_eq!(get("personality query"), 0);
});

each_mode!(filter_and_capabilities_from_inside, |who| {
    let (o, _d) = run_script(
        who,
        r#"
st = dict(l.split(':\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\t' in l)
print(st['Seccomp'].strip(), st['Seccomp_filters'].strip(), st['NoNewPrivs'].strip())
print(*[int(st[k], 16) for k in ['CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb']])
st1 = dict(l.split(':\t', 1) for l in open('/proc/1/status').read().splitlines() if ':\t' in l)
print(st1['Seccomp'].strip(), *[int(st1[k], 16) for k in ['CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb']])
"#,
        &[],
    );
    assert_code(&o, 0, "status");
    // Filter mode 2 with the three filters; every capability set of the script and of the
    // sandbox's init is empty.
    assert_eq!(stdout(&o), "2 3 1\n0 0 0 0 0\n2 0 0 0 0 0\n");
});

each_mode!(broad_cpython_workload_passes, |who| {
    let (o, _d) = run_script(
        who,
        r#"
import asyncio, concurrent.futures, hashlib, json, mmap, multiprocessing, os, select, signal
import socket, sqlite3, ssl, subprocess, sys, tempfile, threading, time, zipfile, shutil, resource
import getpass, locale, decimal, uuid, selectors, pty

def square(x):
    return x * x

def main():
    # threads
    out = []
    ts = [threading.Thread(target=out.append, args=(i,)) for i in range(8)]
    [t.start() for t in ts]; [t.join() for t in ts]
    assert sorted(out) == list(range(8))
    # multiprocessing: fork and spawn
    for method in ['fork', 'spawn', 'forkserver']:
        with multiprocessing.get_context(method).Pool(2) as p:
            assert p.map(square, range(5)) == [0, 1, 4, 9, 16], method
    q = multiprocessing.Queue(); pr = multiprocessing.Process(target=q.put, args=(42,)); pr.start()
    assert q.get(timeout=10) == 42; pr.join()
    # concurrent.futures, both pools
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        assert list(ex.map(square, range(4))) == [0, 1, 4, 9]
    with concurrent.futures.ProcessPoolExecutor(2) as ex:
        assert list(ex.map(square, range(4))) == [0, 1, 4, 9]
    # subprocess of the interpreter itself
    r = subprocess.run([sys.executable, '-c', 'import sys; print(sys.argv[1])', 'x'], capture_output=True, text=True, check=True)
    assert r.stdout == 'x\n'
    # asyncio with a loopback server
    async def serve():
        async def handle(r, w):
            w.write((await r.readline()).upper()); await w.drain(); w.close()
        srv = await asyncio.start_server(handle, '127.0.0.1', 0)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection('127.0.0.1', port)
        w.write(b'ping\n'); await w.drain()
        assert await r.readline() == b'PING\n'
        w.close(); srv.close(); await srv.wait_closed()
    asyncio.run(serve())
    # sqlite3, ssl, hashlib, uuid, decimal
    db = sqlite3.connect(os.path.join(tempfile.gettempdir(), 't.db'))
    db.execute('create table t(x)'); db.execute('insert into t values (1)'); db.commit()
    assert db.execute('select sum(x) from t').fetchone() == (1,)
    ctx = ssl.create_default_context(); assert ctx.verify_mode == ssl.CERT_REQUIRED
    hashlib.sha256(b'x').hexdigest(); uuid.uuid4(); uuid.uuid1(); decimal.Decimal(1) / 3
    # mmap (file and anonymous)
    with tempfile.TemporaryFile() as f:
        f.write(b'hello'); f.flush()
        m = mmap.mmap(f.fileno(), 0); assert m[:5] == b'hello'; m.close()
    a = mmap.mmap(-1, 1 << 20); a[0] = 1; a.close()
    # signals
    got = []
    signal.signal(signal.SIGUSR1, lambda *a: got.append(1)); os.kill(os.getpid(), signal.SIGUSR1)
    signal.signal(signal.SIGALRM, lambda *a: got.append(2)); signal.setitimer(signal.ITIMER_REAL, 0.01); time.sleep(0.1)
    assert got == [1, 2], got
    # tempfile, zipfile, shutil
    d = tempfile.mkdtemp()
    with zipfile.ZipFile(os.path.join(d, 'a.zip'), 'w', zipfile.ZIP_DEFLATED) as z:
        z.writestr('a.txt', 'data')
    with zipfile.ZipFile(os.path.join(d, 'a.zip')) as z:
        assert z.read('a.txt') == b'data'
    shutil.rmtree(d)
    # select/selectors, pipes, socketpair, pty
    r, w = os.pipe(); os.write(w, b'x'); assert select.select([r], [], [], 1)[0] == [r]
    sel = selectors.DefaultSelector(); a, b = socket.socketpair(); sel.register(a, selectors.EVENT_READ)
    b.send(b'y'); assert sel.select(1)
    m, s = pty.openpty(); os.write(s, b'z'); assert os.read(m, 1) == b'z'
    # misc
    resource.getrlimit(resource.RLIMIT_NOFILE); getpass.getuser(); locale.getpreferredencoding()
    os.cpu_count(); os.sched_getaffinity(0); time.monotonic(); os.urandom(16)
    print('workload ok')

if __name__ == '__main__':
    main()
"#,
        &["--timeout", "60s", "--seccomp-log"],
    );
    assert_code(&o, 0, "workload");
    assert_eq!(stdout(&o), "workload ok\n");
    // Nothing legitimate was refused.
    assert!(
        stderr(&o).contains("pysandbox: seccomp refused no syscall"),
        "{}",
        stderr(&o)
    );
});

each_mode!(no_set_id_files_reach_the_host, |who| {
    // A setuid file in the output folder would be a set-id executable on the host (owned
    // by root when root runs pysandbox): every way to make one is refused.
    let (o, d) = run_script(
        who,
        r#"
import os, shutil, stat
res = []
def attempt(name, f):
    try:
        f(); res.append(f"{name} 0")
    except OSError as e:
        res.append(f"{name} {e.errno}")
attempt("open", lambda: os.close(os.open("output/a", os.O_CREAT | os.O_WRONLY, 0o4755)))
attempt("open-plain", lambda: os.close(os.open("output/b", os.O_CREAT | os.O_WRONLY, 0o755)))
attempt("chmod", lambda: os.chmod("output/b", 0o4755))
attempt("chmod-sgid", lambda: os.chmod("output/b", 0o2755))
attempt("fchmod", lambda: os.fchmod(os.open("output/b", os.O_RDONLY), 0o6755))
attempt("chmod-plain", lambda: os.chmod("output/b", 0o700))
attempt("mkdir", lambda: os.mkdir("output/d", 0o2775))
attempt("mknod", lambda: os.mknod("output/n", stat.S_IFREG | 0o4755))
attempt("copy", lambda: shutil.copy("/opt/conda/bin/python", "output/py"))
print(*res, sep="\n")
"#,
        &[],
    );
    assert_code(&o, 0, "set-id probes");
    let out = stdout(&o);
    for (name, want) in [
        ("open", libc::EPERM),
        ("open-plain", 0),
        ("chmod", libc::EPERM),
        ("chmod-sgid", libc::EPERM),
        ("fchmod", libc::EPERM),
        ("chmod-plain", 0),
        ("mkdir", libc::EPERM),
        ("mknod", libc::EPERM),
        ("copy", 0),
    ] {
        assert!(
            out.contains(&format!("{name} {want}\n")),
            "{name}: want {want}\n{out}"
        );
    }
    for e in std::fs::read_dir(d.path().join("output"))
        .unwrap()
        .flatten()
    {
        let mode = std::os::unix::fs::PermissionsExt::mode(&e.metadata().unwrap().permissions());
        assert_eq!(mode & 0o6000, 0, "{} has mode {mode:o}", e.path().display());
    }
});
