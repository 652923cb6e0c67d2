//! `--network`: a network namespace of the sandbox's own, connected by pasta. It reaches
//! the outside, never the host's loopback services nor its abstract unix sockets;
//! `--network=host` shares the host's (with a warning); without the flag there is only
//! `lo`; pasta never outlives its sandbox.
//!
//! Traffic goes only to loopback and to network namespaces made here: a "server" netns
//! behind a veth pair with addresses from 198.51.100.0/24 and 2001:db8::/32. Where a test
//! must see what pasta does with the gateway or the host's own addresses, pysandbox runs
//! inside a second netns made here, a stand-in "host" whose default route leads to the
//! server netns, so nothing ever leaves for a real network. Every namespace and veth is
//! removed by a guard, panics included.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;

/// Whether the user `who` runs as can use --network here (rootless pasta needs a
/// /dev/net/tun it may open; root gets a private one from pysandbox).
fn network_available(who: Who) -> bool {
    if !available(who) {
        return false;
    }
    let tun = who == Who::Root
        || user_command("sh")
            .args(["-c", "test -r /dev/net/tun -a -w /dev/net/tun"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    if tun && pysandbox::net::pasta_path().is_some() {
        return true;
    }
    skip(
        who.name(),
        "--network needs pasta (apt-get install passt) and, for an ordinary user, a /dev/net/tun it may open (chmod 0666 /dev/net/tun, as udev does)",
    )
}

/// Whether this test can make network namespaces and veth pairs of its own (root only).
fn test_netns_available(who: Who) -> bool {
    needs_root(who.name(), "to make the test's own network namespaces")
}

fn sh(args: &[&str]) {
    let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        o.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A short name unique to this test process and call (veth names: 15 bytes at most).
fn short(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{tag}{}x{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A network namespace made by this test; deleted (with what lives in it) on drop.
struct Netns {
    name: String,
    /// A host-side veth to delete.
    host_link: Option<String>,
    /// A folder holding the resolv.conf this namespace's processes see.
    etc: Option<tempfile::TempDir>,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = short(tag);
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns {
            name,
            host_link: None,
            etc: None,
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        sh(&v);
    }

    /// Runs `f` on a thread inside this namespace: sockets made there stay in it.
    fn inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(path).unwrap();
            // SAFETY: setns on this thread only (a network namespace may be joined by one
            // thread of a multi-threaded process).
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns");
            f()
        })
        .join()
        .unwrap()
    }

    /// `cmd` run inside this namespace (nsenter: the mounts stay the host's, cgroups
    /// included), with `resolv` shown over /etc/resolv.conf if given.
    fn exec(&self, cmd: &Command) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{}", self.name));
        if let Some(r) = &self.etc {
            c.args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
                .arg(r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#)
                .arg(r.path().join("resolv.conf"));
        }
        c.arg(cmd.get_program()).args(cmd.get_args());
        if let Some(d) = cmd.get_current_dir() {
            c.current_dir(d);
        }
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(l) = &self.host_link {
            let _ = Command::new("ip").args(["link", "del", l]).output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// The 198.51.100.0/24 block split into /30s, one per veth to the real host (tests
/// run in parallel): (host side, server side, prefix).
fn host_subnet() -> (String, String) {
    static N: AtomicUsize = AtomicUsize::new(1);
    let k = N.fetch_add(1, Ordering::SeqCst);
    assert!(k < 63, "out of test subnets");
    (
        format!("198.51.100.{}", 4 * k + 1),
        format!("198.51.100.{}", 4 * k + 2),
    )
}

/// A server netns behind a veth from the real host (host side has the address, so the
/// host has the route): returns it and the server's address.
fn server_on_host() -> (Netns, String) {
    let mut srv = Netns::new("pss");
    let (h, s) = host_subnet();
    let hl = short("vh");
    let sl = short("vs");
    sh(&[
        "ip", "link", "add", &hl, "type", "veth", "peer", "name", &sl,
    ]);
    srv.host_link = Some(hl.clone());
    sh(&["ip", "link", "set", &sl, "netns", &srv.name]);
    sh(&["ip", "addr", "add", &format!("{h}/30"), "dev", &hl]);
    sh(&["ip", "link", "set", &hl, "up"]);
    srv.ip(&["addr", "add", &format!("{s}/30"), "dev", &sl]);
    srv.ip(&["link", "set", &sl, "up"]);
    srv.ip(&["route", "add", "default", "via", &h]);
    (srv, s)
}

/// A stand-in host netns H whose only way out is a veth to a server netns S:
/// H 198.51.100.1 / 2001:db8:1::1 (plus 203.0.113.7, an extra "external" address),
/// S 198.51.100.2 / 2001:db8:1::2 (H's default gateway). Returns (H, S, H's link-local
/// address, the name of H's interface, which pasta gives the sandbox's too).
fn fake_host() -> (Netns, Netns, String, String) {
    let host = Netns::new("psh");
    let srv = Netns::new("pss");
    let hl = short("vh");
    let sl = short("vs");
    host.ip(&["link", "add", &hl, "type", "veth", "peer", "name", &sl]);
    host.ip(&["link", "set", &sl, "netns", &srv.name]);
    host.ip(&["addr", "add", "198.51.100.1/24", "dev", &hl]);
    host.ip(&["addr", "add", "203.0.113.7/32", "dev", &hl]);
    host.ip(&["-6", "addr", "add", "2001:db8:1::1/64", "dev", &hl, "nodad"]);
    host.ip(&["link", "set", &hl, "up"]);
    srv.ip(&["addr", "add", "198.51.100.2/24", "dev", &sl]);
    srv.ip(&["-6", "addr", "add", "2001:db8:1::2/64", "dev", &sl, "nodad"]);
    srv.ip(&["link", "set", &sl, "up"]);
    host.ip(&["route", "add", "default", "via", "198.51.100.2"]);
    host.ip(&["-6", "route", "add", "default", "via", "2001:db8:1::2"]);
    // Wait for the kernel to give H's veth its link-local address.
    let mut ll = String::new();
    for _ in 0..100 {
        let o2 = Command::new("ip")
            .args([
                "-n", &host.name, "-6", "-o", "addr", "show", "dev", &hl, "scope", "link",
            ])
            .output()
            .unwrap();
        let t = String::from_utf8_lossy(&o2.stdout).into_owned();
        if let Some(a) = t
            .split_whitespace()
            .find(|w| w.starts_with("fe80::"))
            .map(|w| w.split('/').next().unwrap().to_string())
        {
            ll = a;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!ll.is_empty(), "no link-local address on H's veth");
    (host, srv, ll, hl)
}

/// A TCP listener answering every connection with `banner`; `hit` records that one came.
fn serve_tcp(l: TcpListener, banner: &'static str, hit: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            hit.store(true, Ordering::SeqCst);
            let _ = c.write_all(banner.as_bytes());
        }
    });
}

/// A UDP socket answering every datagram with `banner`; `hit` records that one came.
fn serve_udp(u: UdpSocket, banner: &'static str, hit: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let mut b = [0u8; 64];
        while let Ok((_, from)) = u.recv_from(&mut b) {
            hit.store(true, Ordering::SeqCst);
            let _ = u.send_to(banner.as_bytes(), from);
        }
    });
}

fn serve_unix(l: UnixListener, banner: &'static str, hit: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            hit.store(true, Ordering::SeqCst);
            let _ = c.write_all(banner.as_bytes());
        }
    });
}

fn abstract_listener(name: &str) -> UnixListener {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    UnixListener::bind_addr(&addr).unwrap()
}

/// The probe: connects to every target given as `tcp:HOST:PORT`, `udp:HOST:PORT` (a
/// datagram and its answer) or `abstract:NAME` and prints `REACHED <target> <banner>` or `blocked <target> <error>`. The same script
/// runs in the sandbox and on the bare host, so a test that sees "blocked" knows the
/// target was there to be reached.
const PROBE: &str = r#"
import socket, sys
for t in sys.argv[1:]:
    kind, _, rest = t.partition(":")
    try:
        if kind == "abstract":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(2)
            s.connect("\0" + rest)
        elif kind == "udp":
            host, _, port = rest.rpartition(":")
            host = host.strip("[]")
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            u = socket.socket(fam, socket.SOCK_DGRAM)
            u.settimeout(2)
            u.sendto(b"probe", socket.getaddrinfo(host, int(port), fam)[0][4])
            print("REACHED", t, u.recvfrom(100)[0].decode(errors="replace"), flush=True)
            continue
        else:
            host, _, port = rest.rpartition(":")
            host = host.strip("[]")
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.settimeout(2)
            s.connect(socket.getaddrinfo(host, int(port), fam)[0][4])
        print("REACHED", t, s.recv(100).decode(errors="replace").strip(), flush=True)
    except Exception as e:
        print("blocked", t, repr(e), flush=True)
"#;

/// The default gateways the sandbox was given (read from /proc, no tools needed).
const GATEWAYS: &str = r#"
import socket, struct
for line in open("/proc/net/route").read().splitlines()[1:]:
    f = line.split()
    if f[1] == "00000000":
        print("gw4", socket.inet_ntoa(struct.pack("<I", int(f[2], 16))))
for line in open("/proc/net/ipv6_route").read().splitlines():
    f = line.split()
    if f[0] == "0" * 32 and f[1] == "00" and f[4] != "0" * 32:
        print("gw6", socket.inet_ntop(socket.AF_INET6, bytes.fromhex(f[4])))
"#;

fn run_sandbox_in(ns: &Netns, who: Who, dir: &std::path::Path, args: &[&str]) -> Output {
    ns.exec(&command(who, dir, args))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn bare_python_in(ns: &Netns, script: &str, args: &[String]) -> String {
    let mut py = Command::new("/usr/bin/python3");
    py.args(["-c", script]).args(args);
    let o = ns.exec(&py).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn lines_with<'a>(out: &'a str, prefix: &str) -> Vec<&'a str> {
    out.lines().filter(|l| l.starts_with(prefix)).collect()
}

each_mode!(network_reaches_a_server_in_a_test_netns, |who| {
    if !test_netns_available(who) || !network_available(who) {
        return;
    }
    let (srv, addr) = server_on_host();
    let (tcp, udp) = srv.inside(|| {
        (
            TcpListener::bind("0.0.0.0:0").unwrap(),
            UdpSocket::bind("0.0.0.0:0").unwrap(),
        )
    });
    let (tport, uport) = (
        tcp.local_addr().unwrap().port(),
        udp.local_addr().unwrap().port(),
    );
    std::thread::spawn(move || {
        for c in tcp.incoming() {
            let Ok(mut c) = c else { continue };
            let mut b = [0u8; 64];
            let n = c.read(&mut b).unwrap_or(0);
            let _ = c.write_all(&[b"tcp-pong:", &b[..n]].concat());
        }
    });
    std::thread::spawn(move || {
        let mut b = [0u8; 64];
        while let Ok((n, from)) = udp.recv_from(&mut b) {
            let _ = udp.send_to(&[b"udp-pong:", &b[..n]].concat(), from);
        }
    });
    let script = format!(
        r#"
import socket
s = socket.create_connection(("{addr}", {tport}), timeout=5)
s.sendall(b"ping")
print(s.recv(100).decode())
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(5)
u.sendto(b"ping", ("{addr}", {uport}))
print(u.recvfrom(100)[0].decode())
"#
    );
    let (o, _d) = run_script(who, &script, &["--network"]);
    assert_code(&o, 0, "sandbox with --network");
    assert_eq!(stdout(&o), "tcp-pong:ping\nudp-pong:ping\n");
    drop(srv);
});

each_mode!(without_network_only_lo_and_nothing_outside, |who| {
    if !test_netns_available(who) {
        return;
    }
    let (srv, addr) = server_on_host();
    let tcp = srv.inside(|| TcpListener::bind("0.0.0.0:0").unwrap());
    let port = tcp.local_addr().unwrap().port();
    let hit = Arc::new(AtomicBool::new(false));
    serve_tcp(tcp, "outside", hit.clone());
    let script = format!(
        r#"
import socket
print(sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:]))
try:
    socket.create_connection(("{addr}", {port}), timeout=3)
    print("REACHED")
except OSError as e:
    print("blocked", e.errno)
"#
    );
    let (o, _d) = run_script(who, &script, &[]);
    assert_code(&o, 0, "sandbox without --network");
    let out = stdout(&o);
    assert!(out.starts_with("['lo']\n"), "{out}");
    assert!(out.contains("blocked"), "{out}");
    assert!(!hit.load(Ordering::SeqCst), "the server saw a connection");
    // The same connection from the host works: the server was there to be reached.
    let bare = Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&bare.stdout).contains("REACHED"),
        "bare python: {}",
        String::from_utf8_lossy(&bare.stdout)
    );
});

each_mode!(network_cannot_reach_host_loopback, |who| {
    if !test_netns_available(who) || !network_available(who) {
        return;
    }
    let (host, srv, host_ll, ifname) = fake_host();
    // H's loopback-only listeners: what must stay out of reach.
    let hit = Arc::new(AtomicBool::new(false));
    let (l4, l6) = host.inside(|| {
        let l4 = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l4.local_addr().unwrap().port();
        (l4, TcpListener::bind(("::1", port)).unwrap())
    });
    let port = l4.local_addr().unwrap().port();
    serve_tcp(l4, "HOST-LOOPBACK", hit.clone());
    serve_tcp(l6, "HOST-LOOPBACK", hit.clone());
    let (u4, u6) = host.inside(move || {
        (
            UdpSocket::bind(("127.0.0.1", port)).unwrap(),
            UdpSocket::bind(("::1", port)).unwrap(),
        )
    });
    serve_udp(u4, "HOST-LOOPBACK", hit.clone());
    serve_udp(u6, "HOST-LOOPBACK", hit.clone());
    // The "outside" answers on the same port, so reaching it is told apart.
    let (outside, outside_udp) = srv.inside(move || {
        (
            TcpListener::bind(("::", port)).unwrap(),
            UdpSocket::bind(("::", port)).unwrap(),
        )
    });
    serve_tcp(outside, "outside", Arc::new(AtomicBool::new(false)));
    serve_udp(outside_udp, "outside", Arc::new(AtomicBool::new(false)));

    let dir = workdir(who);
    put(dir.path(), "gw.py", GATEWAYS);
    let o = run_sandbox_in(&host, who, dir.path(), &["run", "--network", "gw.py"]);
    assert_code(&o, 0, "gateways");
    let gws = stdout(&o);
    let gw4 = lines_with(&gws, "gw4 ");
    let gw6 = lines_with(&gws, "gw6 ");
    assert_eq!(gw4, ["gw4 198.51.100.2"], "pasta's IPv4 gateway: {gws}");
    assert_eq!(gw6.len(), 1, "pasta's IPv6 gateway: {gws}");

    let mut targets: Vec<String> = vec![
        format!("tcp:127.0.0.1:{port}"),
        format!("tcp:[::1]:{port}"),
        format!("udp:127.0.0.1:{port}"),
        format!("udp:[::1]:{port}"),
        // The gateways (--no-map-gw: the real ones, not aliases of H's loopback).
        format!("tcp:198.51.100.2:{port}"),
        format!("tcp:[{}]:{port}", &gw6[0][4..]),
        // H's own addresses: the sandbox's copy, an extra one, its link-local.
        format!("tcp:198.51.100.1:{port}"),
        format!("tcp:[2001:db8:1::1]:{port}"),
        format!("tcp:203.0.113.7:{port}"),
        format!("tcp:[{host_ll}%{ifname}]:{port}"),
        // pasta's DNS forwarder address, on another port.
        format!("tcp:{}:{port}", pysandbox::net::DNS_ADDR),
    ];
    // UDP, through every address pasta could map to H's loopback.
    for a in [
        "198.51.100.2".to_string(),
        format!("[{}]", &gw6[0][4..]),
        "198.51.100.1".into(),
        "203.0.113.7".into(),
        format!("[{host_ll}%{ifname}]"),
        pysandbox::net::DNS_ADDR.into(),
    ] {
        targets.push(format!("udp:{a}:{port}"));
    }
    put(dir.path(), "probe.py", PROBE);
    let mut args = vec!["run", "--network", "probe.py"];
    args.extend(targets.iter().map(String::as_str));
    let o = run_sandbox_in(&host, who, dir.path(), &args);
    assert_code(&o, 0, "probe in the sandbox");
    let out = stdout(&o);
    eprintln!("{who:?} probe:\n{out}");
    assert_eq!(out.lines().count(), targets.len(), "{out}");
    assert!(
        !out.contains("HOST-LOOPBACK"),
        "host loopback reached:\n{out}"
    );
    assert!(
        !hit.load(Ordering::SeqCst),
        "host loopback saw a connection:\n{out}"
    );
    // The network itself works: the gateway (the outside) answers.
    for proto in ["tcp", "udp"] {
        assert!(
            out.contains(&format!("REACHED {proto}:198.51.100.2:{port} outside")),
            "{out}"
        );
    }

    // Bare python on H reaches the loopback listeners: they were there.
    targets.truncate(4);
    let bare = bare_python_in(&host, PROBE, &targets);
    assert_eq!(
        lines_with(&bare, "REACHED").len(),
        4,
        "bare python:\n{bare}"
    );
    assert!(hit.load(Ordering::SeqCst));
    drop((host, srv));
});

each_mode!(network_cannot_reach_host_abstract_sockets, |who| {
    if !test_netns_available(who) || !network_available(who) {
        return;
    }
    let (host, srv, _, _) = fake_host();
    let name = format!("pysandbox-test-{}", short("a"));
    let hit = Arc::new(AtomicBool::new(false));
    let n = name.clone();
    let l = host.inside(move || abstract_listener(&n));
    serve_unix(l, "HOST-ABSTRACT", hit.clone());
    let dir = workdir(who);
    put(dir.path(), "probe.py", PROBE);
    let target = format!("abstract:{name}");
    let o = run_sandbox_in(
        &host,
        who,
        dir.path(),
        &["run", "--network", "probe.py", &target],
    );
    assert_code(&o, 0, "probe in the sandbox");
    let out = stdout(&o);
    assert!(out.starts_with(&format!("blocked {target}")), "{out}");
    assert!(!hit.load(Ordering::SeqCst));
    let bare = bare_python_in(&host, PROBE, std::slice::from_ref(&target));
    assert!(
        bare.starts_with(&format!("REACHED {target} HOST-ABSTRACT")),
        "{bare}"
    );
    drop((host, srv));
});

/// A DNS server for one name: answers A queries with 198.51.100.99, others empty.
fn serve_dns(sock: UdpSocket) {
    std::thread::spawn(move || {
        let mut b = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut b) {
            if n < 17 {
                continue;
            }
            let mut end = 12;
            while end < n && b[end] != 0 {
                end += b[end] as usize + 1;
            }
            let qend = end + 5; // root label, qtype, qclass
            if qend > n {
                continue;
            }
            let qtype = u16::from_be_bytes([b[end + 1], b[end + 2]]);
            let mut r = Vec::from(&b[..qend]);
            r[2] = 0x81;
            r[3] = 0x80;
            r[6] = 0;
            r[7] = u8::from(qtype == 1);
            r[8..12].fill(0);
            if qtype == 1 {
                r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 51, 100, 99]);
            }
            let _ = sock.send_to(&r, from);
        }
    });
}

each_mode!(network_resolves_names_through_the_host_resolver, |who| {
    if !test_netns_available(who) || !network_available(who) {
        return;
    }
    let (mut host, srv, _, _) = fake_host();
    // H's resolv.conf names S.
    let etc = tempfile::tempdir().unwrap();
    std::fs::write(
        etc.path().join("resolv.conf"),
        "nameserver 198.51.100.2\nsearch example.test\n",
    )
    .unwrap();
    host.etc = Some(etc);
    let dns = srv.inside(|| UdpSocket::bind("0.0.0.0:53").unwrap());
    serve_dns(dns);
    let dir = workdir(who);
    put(
        dir.path(),
        "dns.py",
        "import socket\nprint(open('/etc/resolv.conf').read())\nprint(socket.gethostbyname('sandbox.example.test'))\n",
    );
    let o = run_sandbox_in(&host, who, dir.path(), &["run", "--network", "dns.py"]);
    assert_code(&o, 0, "resolving in the sandbox");
    let out = stdout(&o);
    assert!(out.ends_with("198.51.100.99\n"), "{out}");
    assert!(
        out.contains(&format!("nameserver {}\n", pysandbox::net::DNS_ADDR)),
        "{out}"
    );
    assert!(
        !out.contains("198.51.100.2"),
        "the host's resolver leaked: {out}"
    );
    assert!(out.contains("search example.test"), "{out}");
    drop((host, srv));
});

each_mode!(network_host_warns_and_reaches_host_loopback, |who| {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hit = Arc::new(AtomicBool::new(false));
    serve_tcp(l, "HOST-LOOPBACK", hit.clone());
    let dir = workdir(who);
    put(dir.path(), "probe.py", PROBE);
    let target = format!("tcp:127.0.0.1:{port}");
    let o = run_in(
        who,
        dir.path(),
        &["run", "--json", "--network=host", "probe.py", &target],
        b"",
    );
    assert_code(&o, 0, "--network=host");
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let warnings = report["warnings"].as_array().unwrap();
    assert!(
        warnings.iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("can reach the host's loopback services")),
        "{report}"
    );
    assert!(stderr(&o).contains("--network=host"), "{}", stderr(&o));
    let out = report["stdout"]["text"].as_str().unwrap();
    assert!(
        out.starts_with(&format!("REACHED {target} HOST-LOOPBACK")),
        "{out}"
    );
    assert!(hit.load(Ordering::SeqCst));
});

/// Pids of the pasta processes in the pid namespace whose inode is `pidns`.
fn pastas_in(pidns: u64) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let in_ns = std::fs::metadata(e.path().join("ns/pid"))
            .map(|m| m.ino() == pidns)
            .unwrap_or(false);
        if in_ns && (comm.starts_with("pasta") || comm.starts_with("passt")) {
            v.push(pid);
        }
    }
    v
}

each_mode!(network_pasta_ends_with_the_run, |who| {
    if !network_available(who) {
        return;
    }
    let script = r#"
import os
names = [open(f"/proc/{p}/comm").read().strip() for p in os.listdir("/proc") if p.isdigit()]
print(os.stat("/proc/self/ns/pid").st_ino, any(n.startswith(("pasta", "passt")) for n in names))
"#;
    let (o, _d) = run_script(who, script, &["--network"]);
    assert_code(&o, 0, "run");
    let out = stdout(&o);
    let (ino, seen) = out.trim().split_once(' ').unwrap();
    assert_eq!(
        seen, "True",
        "pasta runs in the sandbox's pid namespace: {out}"
    );
    let left = pastas_in(ino.parse().unwrap());
    assert!(left.is_empty(), "pasta outlived its run: {left:?}");
    // A timeout ends it too.
    let (o, _d) = run_script(
        who,
        "import os, time\nprint(os.stat('/proc/self/ns/pid').st_ino, flush=True)\ntime.sleep(30)\n",
        &["--network", "--timeout", "1s"],
    );
    assert_code(&o, 124, "timeout");
    let left = pastas_in(stdout(&o).trim().parse().unwrap());
    assert!(left.is_empty(), "pasta outlived a timed-out run: {left:?}");
});

each_mode!(network_sigkill_of_pysandbox_leaves_no_pasta, |who| {
    if !network_available(who) {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let marker = unique("netkill");
    let dir = workdir(who);
    let mut child = start_sleeper_with(who, dir.path(), &marker, &["--network"]);
    let script = processes_with(&marker)
        .into_iter()
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| c.starts_with(b"/opt/conda/bin/python"))
                .unwrap_or(false)
        })
        .expect("the script's process");
    let pidns = std::fs::metadata(format!("/proc/{script}/ns/pid"))
        .unwrap()
        .ino();
    let pasta = pastas_in(pidns);
    assert_eq!(pasta.len(), 1, "one pasta while the script runs");
    // SAFETY: killing our own child (setpriv/unshare exec into pysandbox: same pid).
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    let left = wait_gone(&marker, Duration::from_secs(2));
    assert!(left.is_empty(), "sandbox outlived pysandbox: {left:?}");
    let t = std::time::Instant::now();
    while !pastas_in(pidns).is_empty() && t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        pastas_in(pidns).is_empty(),
        "pasta outlived a SIGKILLed pysandbox"
    );
});

#[test]
fn network_refused_without_pasta() {
    let who = me();
    let dir = workdir(who);
    let o = Command::new(bin())
        .args(["run", "--network", "--code", "print(1)"])
        .env("PYSANDBOX_PASTA", "/nonexistent/pasta")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_code(&o, 125, "no pasta");
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("apt-get install passt"), "{err}");
    assert_eq!(stdout(&o), "");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "a refused run created files"
    );
}

each_mode!(network_keeps_the_pids_budget, |who| {
    if !network_available(who) {
        return;
    }
    // pasta runs in the sandbox's pid namespace as its user: it must not take one of
    // the script's --pids. The image ready first: storing a default image just built
    // goes on beside the first run, in a process of the user's, which RLIMIT_NPROC counts.
    let o = run_in(
        who,
        workdir(who).path(),
        &["run", "--no-fs", "--code", "pass"],
        b"",
    );
    assert_code(&o, 0, "warm-up run");
    let forks = r#"
import os, time
n, kids = 0, []
try:
    while n < 50:
        p = os.fork()
        if p == 0:
            time.sleep(5)
            os._exit(0)
        kids.append(p)
        n += 1
except OSError:
    pass
print(n)
for p in kids:
    os.kill(p, 9)
"#;
    let (plain, _d) = run_script(who, forks, &["--pids", "10"]);
    assert_code(&plain, 0, "without --network");
    let (net, _d) = run_script(who, forks, &["--pids", "10", "--network"]);
    assert_code(&net, 0, "with --network");
    assert_eq!(stdout(&net), stdout(&plain));
});

/// Processes whose mounts show `marker` (a sandbox's data folder): a sandbox's init,
/// whatever it left in its command line.
fn sandboxes_of(marker: &str) -> Vec<i32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if std::fs::read_to_string(e.path().join("mountinfo"))
            .map(|m| m.contains(marker))
            .unwrap_or(false)
        {
            v.push(pid);
        }
    }
    v
}

each_mode!(network_sigkill_during_startup_leaves_nothing, |who| {
    if !network_available(who) {
        return;
    }
    // SIGKILL at moments spread over build, pasta's start and the script's: whatever
    // the moment, neither the sandbox's init nor pasta may outlive pysandbox.
    let dir = workdir(who);
    let marker = dir
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    put(dir.path(), "t.py", "import time\ntime.sleep(30)\n");
    kill_while_starting(24, Duration::from_millis(7), || {
        command(who, dir.path(), &["run", "--network", "t.py"])
    });
    // Every process counted, libcontainer's intermediate included (it once outlived a
    // pysandbox killed during build(), waiting forever for a uid map).
    let t = std::time::Instant::now();
    while !sandboxes_of(&marker).is_empty() && t.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<String> = sandboxes_of(&marker)
        .into_iter()
        .map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let wchan = std::fs::read_to_string(format!("/proc/{p}/wchan")).unwrap_or_default();
            format!("{stat} [{wchan}]")
        })
        .collect();
    // Not left for the next test to meet.
    for p in sandboxes_of(&marker) {
        // SAFETY: kill(2) of a process of this test's own (its mounts show our folder).
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    assert!(left.is_empty(), "sandboxes outlived pysandbox: {left:#?}");
});
