//! "What works in plain Python works in the sandbox, or fails with a clear reason."
//!
//! Each test runs one standard-library idiom inside a real sandbox (as root, as an
//! ordinary user, and as that user inside `unshare -Ur`) AND with bare host python run
//! as the ordinary user (uid 65534 when the tests run as root), and compares: the bare
//! run proves the test itself is right (STYLE 13). Where the sandbox must differ on purpose (it refuses
//! something), the test says so and checks the refusal is the clear one.

#[macro_use]
mod common;

use common::*;
use std::process::{Command, Output};

/// The host interpreter for bare runs: Debian's, never a shim.
const HOST_PYTHON: &str = "/usr/bin/python3";

/// Runs `body` with bare host python as the ordinary user (a scrubbed environment), in a
/// fresh folder that user owns.
fn bare(body: &str) -> Output {
    let dir = workdir(Who::User);
    put(dir.path(), "t.py", body);
    let prefix = as_user();
    Command::new(&prefix[0])
        .args(&prefix[1..])
        .args([HOST_PYTHON, "-I", "t.py"])
        .current_dir(dir.path())
        .output()
        .expect("run bare host python")
}

/// Runs `body` bare and in the sandbox as `who`; both must exit 0. Returns both
/// outputs (bare, sandbox).
fn both(who: Who, body: &str, extra: &[&str]) -> (String, String) {
    let b = bare(body);
    assert_code(&b, 0, "bare host python");
    let (s, _d) = run_script(who, body, extra);
    assert_code(&s, 0, "sandbox");
    (stdout(&b), stdout(&s))
}

each_mode!(relocated_interpreter_finds_its_stdlib, |who| {
    // Started by a bare name, from another folder, with or without PATH: CPython finds
    // its stdlib from its own path, else from the prefix compiled into it.
    let body = r#"
import os, subprocess, sys
code = "import encodings, json, sysconfig; sysconfig.get_paths(); print('ok')"
def show(what, r):
    print(what, r.returncode, r.stdout.strip(), r.stderr.strip()[-300:].replace("\n", " | "))
show("by-name", subprocess.run(["python3", "-c", code], cwd="/tmp", capture_output=True, text=True))
show("no-path", subprocess.run(["python3", "-c", code], executable=sys.executable, env={}, cwd="/tmp", capture_output=True, text=True))
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r); os.dup2(w, 1); os.dup2(w, 2); os.chdir("/tmp")
    os.execve(sys.executable, ["python3", "-c", code], {})
os.close(w)
out = os.read(r, 65536).decode()
_, st = os.waitpid(pid, 0)
print("execve-bare-argv0", os.waitstatus_to_exitcode(st), out.strip()[-300:].replace("\n", " | "))
"#;
    let (b, s) = both(who, body, &[]);
    let want = "by-name 0 ok \nno-path 0 ok \nexecve-bare-argv0 0 ok\n";
    assert_eq!(b, want, "bare host python");
    assert_eq!(s, want, "sandbox");
});

each_mode!(netlink_route_lists_interfaces_and_changes_nothing, |who| {
    // socket.if_nameindex() and getaddrinfo(AI_ADDRCONFIG) read NETLINK_ROUTE. With no
    // CAP_NET_ADMIN, setting a link down, adding an address or a route must fail with
    // EPERM in the netlink answer, on the host as in the sandbox.
    let body = r#"
import errno, os, socket, struct
assert os.getuid() != 0, "must not run as root: the probes below would change the network"
names = [n for _, n in socket.if_nameindex()]
print("if_nameindex", "lo" in names)
print("addrconfig", bool(socket.getaddrinfo("127.0.0.1", 80, flags=socket.AI_ADDRCONFIG)))
lo = socket.if_nametoindex("lo")
def request(kind, flags, payload):
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
    s.bind((0, 0))
    s.send(struct.pack("=LHHLL", 16 + len(payload), kind, flags, 1, 0) + payload)
    data = s.recv(65536)
    s.close()
    length, typ = struct.unpack("=LH", data[:6])
    return -struct.unpack("=i", data[16:20])[0] if typ == 2 else "no-ack"
REQ, ACK, EXCL, CREATE = 1, 4, 0x200, 0x400
ip = socket.inet_aton("10.9.8.7")
attr = lambda kind, val: struct.pack("=HH", 4 + len(val), kind) + val
# ip link set lo down (RTM_NEWLINK, change IFF_UP to 0)
print("link-down", errno.errorcode.get(request(16, REQ | ACK, struct.pack("=BxHiII", 0, 0, lo, 0, 1)), "?"))
# ip addr add 10.9.8.7/8 dev lo (RTM_NEWADDR)
print("addr-add", errno.errorcode.get(request(20, REQ | ACK | CREATE | EXCL, struct.pack("=BBBBI", 2, 8, 0, 0, lo) + attr(2, ip) + attr(1, ip)), "?"))
# ip route add 10.9.8.7/32 dev lo (RTM_NEWROUTE)
print("route-add", errno.errorcode.get(request(24, REQ | ACK | CREATE | EXCL, struct.pack("=BBBBBBBBI", 2, 32, 0, 0, 254, 4, 0, 1, 0) + attr(1, ip) + attr(4, struct.pack("=i", lo))), "?"))
# ip link add dummy0 type dummy (RTM_NEWLINK with CREATE)
print("link-add", errno.errorcode.get(request(16, REQ | ACK | CREATE | EXCL, struct.pack("=BxHiII", 0, 0, 0, 0, 0) + attr(3, b"pysbx0\0") + attr(18, attr(1, b"dummy\0"))), "?"))
"#;
    let (b, s) = both(who, body, &[]);
    let want = "if_nameindex True\naddrconfig True\nlink-down EPERM\naddr-add EPERM\nroute-add EPERM\nlink-add EPERM\n";
    assert_eq!(b, want, "bare host python");
    assert_eq!(s, want, "sandbox");

    // Sandbox only, on purpose: every other netlink protocol stays refused (EPERM), and
    // families the sandbox never allows answer EAFNOSUPPORT so code falls back.
    let (o, _d) = run_script(
        who,
        r#"
import errno, socket
for name, fam, typ, proto in [("NETLINK_AUDIT", 16, 3, 9), ("NETLINK_KOBJECT_UEVENT", 16, 2, 15),
        ("NETLINK_SOCK_DIAG", 16, 3, 4), ("NETLINK_XFRM", 16, 3, 6), ("NETLINK_NETFILTER", 16, 3, 12),
        ("NETLINK_GENERIC", 16, 3, 16), ("AF_INET-SOCK_RAW", 2, 3, 1), ("AF_PACKET", 17, 3, 0),
        ("AF_VSOCK", 40, 1, 0), ("AF_ALG", 38, 5, 0), ("AF_BLUETOOTH", 31, 5, 0)]:
    try:
        socket.socket(fam, typ, proto).close()
        print(name, "allowed")
    except OSError as e:
        print(name, errno.errorcode[e.errno])
"#,
        &[],
    );
    assert_code(&o, 0, "families");
    assert_eq!(
        stdout(&o),
        "NETLINK_AUDIT EPERM\nNETLINK_KOBJECT_UEVENT EPERM\nNETLINK_SOCK_DIAG EPERM\n\
         NETLINK_XFRM EPERM\nNETLINK_NETFILTER EPERM\nNETLINK_GENERIC EPERM\n\
         AF_INET-SOCK_RAW EPERM\nAF_PACKET EAFNOSUPPORT\nAF_VSOCK EAFNOSUPPORT\n\
         AF_ALG EAFNOSUPPORT\nAF_BLUETOOTH EAFNOSUPPORT\n"
    );
});

each_mode!(changing_ids_fails_like_on_a_host, |who| {
    // An unprivileged process on a host gets EPERM for another id, and succeeds with its
    // own ids (and -1, "unchanged"). The sandbox maps only its own id, where the kernel
    // would say EINVAL.
    let body = r#"
import errno, os, tempfile
p = os.path.join(tempfile.mkdtemp(), "f")
open(p, "w").close()
fd = os.open(p, os.O_RDONLY)
os.symlink(p, p + ".link")
u, g = os.getuid(), os.getgid()
cases = [
    ("setuid-self", lambda: os.setuid(u)), ("setuid-0", lambda: os.setuid(0)),
    ("setuid-4242", lambda: os.setuid(4242)), ("setgid-self", lambda: os.setgid(g)),
    ("setgid-0", lambda: os.setgid(0)), ("setreuid--1-0", lambda: os.setreuid(-1, 0)),
    ("setreuid-self", lambda: os.setreuid(u, u)), ("setregid-0-own", lambda: os.setregid(0, g)),
    ("setresuid-self", lambda: os.setresuid(u, u, u)), ("setresuid-unchanged", lambda: os.setresuid(-1, -1, -1)),
    ("setresuid-0", lambda: os.setresuid(0, 0, 0)), ("setresgid--1--1-0", lambda: os.setresgid(-1, -1, 0)),
    ("setgroups-empty", lambda: os.setgroups([])), ("setgroups-0", lambda: os.setgroups([0])),
    ("setgroups-own", lambda: os.setgroups([g])),
    ("chown-self", lambda: os.chown(p, u, g)), ("chown-unchanged", lambda: os.chown(p, -1, -1)),
    ("chown-0-0", lambda: os.chown(p, 0, 0)), ("chown--1-0", lambda: os.chown(p, -1, 0)),
    ("chown-4242", lambda: os.chown(p, 4242, -1)),
    ("fchown-self", lambda: os.fchown(fd, u, -1)), ("fchown-0", lambda: os.fchown(fd, 0, -1)),
    ("lchown-self", lambda: os.lchown(p + ".link", -1, g)), ("lchown-0", lambda: os.lchown(p + ".link", 0, 0)),
    ("chown-dirfd-0", lambda: os.chown("f", 0, -1, dir_fd=os.open(os.path.dirname(p), os.O_RDONLY))),
]
for name, f in cases:
    try:
        f()
        print(name, "ok")
    except OSError as e:
        print(name, errno.errorcode[e.errno])
"#;
    let (b, s) = both(who, body, &[]);
    assert_eq!(s, b, "the sandbox answers like the host");
    for line in b.lines() {
        let (name, res) = line.split_once(' ').unwrap();
        let own = name.ends_with("-self") || name.ends_with("-unchanged");
        assert_eq!(res, if own { "ok" } else { "EPERM" }, "{line}\n{b}");
    }
});

each_mode!(services_and_protocols_resolve, |who| {
    let body = r#"
import socket
print(socket.getservbyname("http"), socket.getservbyname("https", "tcp"), socket.getservbyport(22))
print(socket.getprotobyname("tcp"), socket.getprotobyname("udp"))
print(sorted({a[4][1] for a in socket.getaddrinfo("localhost", "http", type=socket.SOCK_STREAM)}))
import urllib.parse; print(urllib.parse.urlsplit("https://localhost/").port)
"#;
    let (b, s) = both(who, body, &[]);
    let want = "80 443 ssh\n6 17\n[80]\nNone\n";
    assert_eq!(b, want, "bare host python");
    assert_eq!(s, want, "sandbox");
});

each_mode!(sysconfig_has_its_build_files, |who| {
    // sysconfig's files exist where Python looks for them, and the paths it reads from
    // _sysconfigdata agree with the ones it computes from sys.prefix.
    let body = r#"
import os, sys, sysconfig
v = sysconfig.get_config_var
paths = sysconfig.get_paths()
h = sysconfig.get_config_h_filename()
checks = {
    "CC": bool(v("CC")),
    "makefile": os.path.isfile(sysconfig.get_makefile_filename()),
    "config_h": os.path.isfile(h),
    "prefix": v("prefix") == sys.base_prefix and v("exec_prefix") == sys.base_exec_prefix,
    "LIBDIR": v("LIBDIR").startswith(sys.base_prefix + "/"),
    "INCLUDEPY": v("INCLUDEPY") == paths["include"],
    "LIBDEST": v("LIBDEST") == paths["stdlib"],
    "BINDIR": v("BINDIR") == os.path.dirname(sys.executable),
    "paths": all(p == sys.base_prefix or p.startswith(sys.base_prefix + "/") for p in paths.values()),
    "vars": len(sysconfig.get_config_vars()) > 500,
}
for k, ok in checks.items():
    print(k, ok)
"#;
    let (b, s) = both(who, body, &[]);
    assert!(!b.contains("False"), "bare host python:\n{b}");
    assert_eq!(s, b, "sandbox");
    // The image carries the real header (Debian's is a wrapper including a
    // per-architecture one, which sysconfig cannot follow).
    let (o, _d) = run_script(
        who,
        "import sysconfig\nprint('HAVE_UNISTD_H' in sysconfig.parse_config_h(open(sysconfig.get_config_h_filename())))\n",
        &[],
    );
    assert_code(&o, 0, "parse_config_h");
    assert_eq!(stdout(&o), "True\n");
});

each_mode!(file_size_rlimit_follows_the_writable_mounts, |who| {
    // RLIMIT_FSIZE is the cap of the largest writable mount (here /tmp: half of
    // --memory) plus 1 MiB, and the report says so.
    let (o, _d) = run_script(
        who,
        "import resource\nprint(*resource.getrlimit(resource.RLIMIT_FSIZE))\n",
        &["--output-limit", "8M", "--memory", "64M", "--json"],
    );
    assert_code(&o, 0, "json run");
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON report");
    let fsize = &report["limits"]["file_size_bytes"];
    assert_eq!(
        fsize["value"].as_f64(),
        Some((33u64 << 20) as f64),
        "{fsize}"
    );
    assert_eq!(fsize["mechanism"], "rlimit", "{fsize}");
    assert_eq!(
        report["stdout"]["text"].as_str(),
        Some("34603008 34603008\n"),
        "{report}"
    );

    // A file the output folder allows is never cut short by the rlimit: a 1.5 GiB
    // (sparse) file, as bare host python writes it. Removed before exit, so the output
    // merge copies nothing.
    let body = r#"
import os
if not os.path.isdir("output"):
    os.mkdir("output")
p = os.path.join("output", "big.bin")
with open(p, "wb") as f:
    f.seek(3 << 29)
    f.write(b"x")
    f.truncate((3 << 29) + 4096)
print(os.path.getsize(p))
os.remove(p)
"#;
    let b = bare(body);
    assert_code(&b, 0, "bare host python");
    let (s, _d) = run_script(who, body, &["--output-limit", "3G"]);
    assert_code(&s, 0, "sandbox");
    assert_eq!(stdout(&b), format!("{}\n", (3u64 << 29) + 4096));
    assert_eq!(stdout(&s), stdout(&b));
});
