//! The egress proxy of `--allow-net`: the only way out of a sandbox whose network
//! namespace has nothing but its loopback.
//!
//! Where it listens: the sandbox's init binds [`PROXY_PORT`] on 127.0.0.1 *in the
//! sandbox's network namespace* before the script starts and hands the listening socket
//! to pysandbox. The proxy process accepts on it from outside: it is reachable from the
//! sandbox's loopback only, never from the host's (no other process of the host can use
//! it), and its outgoing connections are made in pysandbox's own network namespace.
//!
//! What it speaks: HTTP CONNECT, plain HTTP (absolute-form requests, forwarded with
//! `Connection: close` and the Host header set to the checked target), and SOCKS5 with
//! names (`socks5h`). It resolves names itself, checks every *resolved* address against
//! the allow-list ([`super::allow`]: names reach public addresses only; loopback,
//! private, link-local, metadata... only when an address rule names them), and connects
//! to the very address it checked, so a DNS answer that changes between the check and
//! the connection (rebinding) changes nothing. Every attempt is logged.
//!
//! How it runs: a process forked from pysandbox (single-threaded there) after the
//! container exists. In it, before anything is read from the sandbox: every descriptor
//! but its three is closed, stdio is /dev/null, job-control and terminal signals are
//! ignored (pysandbox stops it), it dies with pysandbox (PR_SET_PDEATHSIG), it is not
//! dumpable, has no new privileges and no capabilities (as root it becomes the sandbox's
//! unprivileged host ids first), and installs its own seccomp filter (`proxy` in
//! `seccomp/<arch>.json`: no exec, no file writes, no listening sockets, no ptrace).
//! Then it uses threads: one per direction of each connection, at most
//! [`MAX_CONNECTIONS`] connections, 64 KiB per direction, a request head of at most
//! [`MAX_HEAD`] bytes read within [`HEAD_TIMEOUT`], a log of at most [`MAX_LOG`] entries
//! (more are counted). pysandbox closes the stop pipe when the
//! sandbox is gone; the proxy writes its log as JSON on the log pipe and exits.
//!
//! Must not: be started before the container exists (pysandbox forks), or outlive the
//! run.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::allow::{AllowList, Dest, canonical};
use super::{NetError, io_err};
use crate::report::{NetConnection, NetReport};

/// The port the proxy listens on, in the sandbox's loopback.
pub const PROXY_PORT: u16 = 3128;
/// Concurrent connections; more are refused (and logged).
pub const MAX_CONNECTIONS: usize = 64;
/// Largest request head (HTTP request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Time a client has to send its request (head, SOCKS greeting).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to connect to an allowed address.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Entries kept in the log; later attempts are only counted.
pub const MAX_LOG: usize = 1000;
/// Addresses tried per name.
const MAX_ADDRS: usize = 16;
const RELAY_BUF: usize = 64 * 1024;

/// The proxy's address as the script sees it.
pub fn address() -> String {
    format!("127.0.0.1:{PROXY_PORT}")
}

/// The environment that points clients at the proxy (both spellings: curl reads only
/// the lower-case `http_proxy`). NO_PROXY is empty so that every connection is logged.
pub fn environment() -> Vec<(String, String)> {
    let http = format!("http://{}", address());
    let socks = format!("socks5h://{}", address());
    let mut env = Vec::new();
    for (k, v) in [
        ("HTTP_PROXY", &http),
        ("HTTPS_PROXY", &http),
        ("ALL_PROXY", &socks),
        ("NO_PROXY", &String::new()),
    ] {
        env.push((k.to_string(), v.clone()));
        env.push((k.to_ascii_lowercase(), v.clone()));
    }
    env.push(("PIP_PROXY".into(), http));
    env
}

/// A running proxy process. Dropping it kills it; [`Proxy::finish`] collects its log.
pub struct Proxy {
    pid: libc::pid_t,
    stop: Option<OwnedFd>,
    log: OwnedFd,
    allow: Vec<String>,
}

/// Starts the proxy on `listener` (bound in the sandbox's namespace). `run_as`: as real
/// root, the host ids it switches to. Call only from a single-threaded process.
pub fn start(
    listener: OwnedFd,
    allow: &AllowList,
    run_as: Option<(u32, u32)>,
) -> Result<Proxy, NetError> {
    let pipe = || {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| io_err("creating the proxy's pipes")(e.into()))
    };
    let (stop_r, stop_w) = pipe()?;
    let (log_r, log_w) = pipe()?;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: pysandbox is single-threaded (runtime's contract), so the child may
    // allocate and start threads; it never returns from `serve_in_child`.
    match unsafe { libc::fork() } {
        -1 => Err(io_err("starting the proxy")(io::Error::last_os_error())),
        0 => {
            let keep = [listener.as_raw_fd(), stop_r.as_raw_fd(), log_w.as_raw_fd()];
            let code = match confine(&keep, parent, run_as) {
                Ok(()) => {
                    serve(listener, stop_r, log_w, allow.clone());
                    0
                }
                Err(_) => 1,
            };
            // SAFETY: leaving the child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        pid => Ok(Proxy {
            pid,
            stop: Some(stop_w),
            log: log_r,
            allow: allow.rules.iter().map(|r| r.to_string()).collect(),
        }),
    }
}

impl Proxy {
    /// Stops the proxy (the sandbox is gone) and returns its log.
    pub fn finish(mut self) -> NetReport {
        self.stop = None; // EOF on the stop pipe
        let mut data = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut buf = [0u8; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut p = libc::pollfd {
                fd: self.log.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one valid pollfd.
            if left.is_zero() || unsafe { libc::poll(&mut p, 1, left.as_millis() as i32) } <= 0 {
                break;
            }
            // SAFETY: reading into a live buffer.
            let n = unsafe { libc::read(self.log.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            data.extend_from_slice(&buf[..n as usize]);
            if data.len() > 64 << 20 {
                break;
            }
        }
        let (connections, connections_dropped) =
            serde_json::from_slice::<(Vec<NetConnection>, u64)>(&data).unwrap_or_default();
        NetReport {
            proxy: address(),
            allow: std::mem::take(&mut self.allow),
            connections,
            connections_dropped,
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // SAFETY: our own child: kill, then reap it.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// In the child, before it reads anything from the sandbox.
fn confine(keep: &[RawFd], parent: libc::pid_t, run_as: Option<(u32, u32)>) -> io::Result<()> {
    let check = |r: libc::c_int| {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: plain system calls on this process; `sa` is a valid, zeroed sigaction.
    unsafe {
        // pysandbox stops it; Ctrl-C on the terminal goes to the whole process group.
        for sig in [
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGTSTP,
            libc::SIGTTIN,
            libc::SIGTTOU,
            libc::SIGPIPE,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
        if libc::getppid() != parent {
            libc::_exit(1);
        }
        // stdio: /dev/null (the caller's terminal or pipes are none of its business).
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        check(null)?;
        for fd in 0..3 {
            check(libc::dup2(null, fd))?;
        }
        libc::close(null);
        // Every other descriptor of pysandbox (the sandbox's stdin pipe, its pidfd...).
        let mut keep = keep.to_vec();
        keep.sort_unstable();
        let mut from = 3u32;
        for &k in &keep {
            if (k as u32) > from {
                check(libc::syscall(libc::SYS_close_range, from, k as u32 - 1, 0) as i32)?;
            }
            from = k as u32 + 1;
        }
        check(libc::syscall(libc::SYS_close_range, from, u32::MAX, 0) as i32)?;
        check(libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0))?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        match run_as {
            Some((uid, gid)) => {
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setresgid(gid, gid, gid))?;
                // From uid 0 to another, without KEEP_CAPS: every capability is gone.
                check(libc::setresuid(uid, uid, uid))?;
            }
            None => crate::sys::drop_all_capabilities()?,
        }
        // A bounded number of descriptors: the connections, their servers, a margin.
        let n = (4 * MAX_CONNECTIONS + 32) as libc::rlim_t;
        let lim = libc::rlimit {
            rlim_cur: n,
            rlim_max: n,
        };
        check(libc::setrlimit(libc::RLIMIT_NOFILE, &lim))?;
    }
    // The syscall filter (no exec, no file writes, no listening, no ptrace...), then the
    // name, which says the proxy is confined (tests wait for it).
    crate::seccomp::install_proxy_filter()?;
    // SAFETY: PR_SET_NAME with a NUL-terminated string.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"pysandbox-proxy".as_ptr(), 0, 0, 0) };
    Ok(())
}

/// One entry of the log, updated while its connection lives.
struct Entry {
    conn: Mutex<NetConnection>,
    sent: AtomicU64,
    received: AtomicU64,
}

#[derive(Default)]
struct Log {
    entries: Vec<Arc<Entry>>,
    dropped: u64,
}

struct Shared {
    allow: AllowList,
    log: Mutex<Log>,
    active: AtomicUsize,
}

impl Shared {
    fn entry(&self, protocol: &str) -> Arc<Entry> {
        let e = Arc::new(Entry {
            conn: Mutex::new(NetConnection {
                protocol: protocol.into(),
                host: String::new(),
                port: 0,
                address: None,
                allowed: false,
                reason: None,
                bytes_sent: 0,
                bytes_received: 0,
            }),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
        });
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if log.entries.len() < MAX_LOG {
            log.entries.push(e.clone());
        } else {
            log.dropped += 1;
        }
        e
    }

    fn snapshot(&self) -> (Vec<NetConnection>, u64) {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let list = log
            .entries
            .iter()
            .map(|e| {
                let mut c = e.conn.lock().unwrap_or_else(|p| p.into_inner()).clone();
                c.bytes_sent = e.sent.load(Ordering::Relaxed);
                c.bytes_received = e.received.load(Ordering::Relaxed);
                c
            })
            .collect();
        (list, log.dropped)
    }
}

impl Entry {
    fn update(&self, f: impl FnOnce(&mut NetConnection)) {
        f(&mut self.conn.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// The accept loop; returns when the stop pipe closes, after writing the log.
fn serve(listener: OwnedFd, stop: OwnedFd, log: OwnedFd, allow: AllowList) {
    let listener = TcpListener::from(listener);
    let _ = listener.set_nonblocking(true);
    let shared = Arc::new(Shared {
        allow,
        log: Mutex::new(Log::default()),
        active: AtomicUsize::new(0),
    });
    loop {
        let mut fds = [
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll on a valid array of two pollfds.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            continue;
        }
        if fds[1].revents != 0 {
            break;
        }
        while let Ok((client, _)) = listener.accept() {
            if shared.active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                shared.entry("unknown").update(|c| {
                    c.reason = Some(format!(
                        "more than {MAX_CONNECTIONS} connections at once through the proxy"
                    ))
                });
                continue; // dropped: the client sees the connection closed
            }
            shared.active.fetch_add(1, Ordering::SeqCst);
            let s = shared.clone();
            let spawned = std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    handle(client, &s);
                    s.active.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                shared.active.fetch_sub(1, Ordering::SeqCst);
                shared
                    .entry("unknown")
                    .update(|c| c.reason = Some(format!("the proxy could not take it: {e}")));
            }
        }
    }
    let out = serde_json::to_vec(&shared.snapshot()).unwrap_or_default();
    let mut log = std::fs::File::from(log);
    let _ = log.write_all(&out);
}

/// What went wrong with a request, and how to tell the client.
enum Failure {
    /// Malformed request (400 / SOCKS general failure).
    Bad(String),
    /// Refused by the allow-list (403 / SOCKS 0x02).
    Refused(String),
    /// Allowed but unreachable (502 / SOCKS 0x04 or 0x05).
    Unreachable(String, bool),
}

impl Failure {
    fn reason(&self) -> &str {
        match self {
            Failure::Bad(r) | Failure::Refused(r) | Failure::Unreachable(r, _) => r,
        }
    }
}

fn handle(client: TcpStream, shared: &Shared) {
    let _ = client.set_read_timeout(Some(HEAD_TIMEOUT));
    let _ = client.set_nodelay(true);
    let mut first = [0u8; 1];
    match client.peek(&mut first) {
        Ok(1) => {}
        _ => return, // closed without a request: nothing to log
    }
    match first[0] {
        5 => socks5(client, shared),
        b'A'..=b'Z' => http(client, shared),
        _ => {
            shared
                .entry("unknown")
                .update(|c| c.reason = Some("not HTTP nor SOCKS5".into()));
        }
    }
}

/// What the script sent, as it goes into the log (and onto the user's terminal with
/// `--log-net`): at most 256 characters, anything but printable ASCII escaped, so no
/// control sequence or look-alike character of the script's reaches a terminal.
fn printable(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_graphic() && c != '\\' {
            out.push(c);
        } else {
            out.extend(c.escape_default());
        }
        if out.len() >= 256 {
            break;
        }
    }
    out
}

/// Resolves `dest`, checks each address, connects to the first allowed one.
fn open(shared: &Shared, entry: &Entry, dest: &Dest, port: u16) -> Result<TcpStream, Failure> {
    let allow = &shared.allow;
    if !allow.may_match(dest, port) {
        return Err(Failure::Refused(format!(
            "no --allow-net rule allows {dest}:{port}"
        )));
    }
    let addrs: Vec<IpAddr> = match dest {
        Dest::Addr(a) => vec![*a],
        Dest::Name(n) => {
            let mut v: Vec<IpAddr> = (n.as_str(), port)
                .to_socket_addrs()
                .map_err(|e| Failure::Unreachable(format!("cannot resolve {n}: {e}"), false))?
                .map(|a| a.ip())
                .collect();
            v.dedup();
            v.truncate(MAX_ADDRS);
            v
        }
    };
    let mut refused = None;
    let mut failed = None;
    for ip in addrs {
        let ip = canonical(ip);
        match allow.check(dest, port, ip) {
            Ok(()) => match TcpStream::connect_timeout(&SocketAddr::new(ip, port), CONNECT_TIMEOUT)
            {
                Ok(s) => {
                    entry.update(|c| {
                        c.address = Some(ip.to_string());
                        c.allowed = true;
                    });
                    return Ok(s);
                }
                Err(e) => {
                    let refused = e.kind() == io::ErrorKind::ConnectionRefused;
                    failed.get_or_insert((ip, format!("{ip}:{port}: {e}"), refused));
                }
            },
            Err(why) => {
                refused.get_or_insert((ip, why));
            }
        }
    }
    if let Some((ip, why, conn_refused)) = failed {
        entry.update(|c| {
            c.address = Some(ip.to_string());
            c.allowed = true;
        });
        return Err(Failure::Unreachable(why, conn_refused));
    }
    match refused {
        Some((ip, why)) => {
            entry.update(|c| c.address = Some(ip.to_string()));
            Err(Failure::Refused(why))
        }
        None => Err(Failure::Unreachable(
            format!("{dest} has no address"),
            false,
        )),
    }
}

/// Reads up to the end of an HTTP head; returns the head and the bytes after it.
fn read_head(client: &mut TcpStream) -> Result<(String, Vec<u8>), Failure> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + HEAD_TIMEOUT;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n")
            && end + 4 <= MAX_HEAD
        {
            let rest = buf.split_off(end + 4);
            let head = String::from_utf8(buf)
                .map_err(|_| Failure::Bad("the request head is not UTF-8".into()))?;
            return Ok((head, rest));
        }
        if buf.len() >= MAX_HEAD {
            return Err(Failure::Bad(format!(
                "the request head is over {MAX_HEAD} bytes"
            )));
        }
        if Instant::now() >= deadline {
            return Err(Failure::Bad("the request head took too long".into()));
        }
        match client.read(&mut chunk) {
            Ok(0) => return Err(Failure::Bad("closed before the end of the request".into())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(Failure::Bad(format!(
                    "no complete request within {} s",
                    HEAD_TIMEOUT.as_secs()
                )));
            }
            Err(e) => return Err(Failure::Bad(format!("reading the request: {e}"))),
        }
    }
}

/// `host:port` (IPv6 in brackets); `default` when the port is missing.
fn split_authority(auth: &str, default: Option<u16>) -> Option<(Dest, u16)> {
    if auth.contains('@') {
        return None; // no user info: one meaning for every client
    }
    let (host, port) = if let Some(rest) = auth.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        let port = match after {
            "" => default?,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        (format!("[{h}]"), port)
    } else {
        match auth.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()?),
            None => (auth.to_string(), default?),
        }
    };
    if port == 0 {
        return None;
    }
    Some((Dest::parse(&host)?, port))
}

fn http(mut client: TcpStream, shared: &Shared) {
    let (head, rest) = match read_head(&mut client) {
        Ok(h) => h,
        Err(f) => {
            let e = shared.entry("unknown");
            e.update(|c| c.reason = Some(f.reason().into()));
            reply_http(&mut client, &f);
            return;
        }
    };
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, target, version) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let connect = method == "CONNECT";
    let entry = shared.entry(if connect { "connect" } else { "http" });
    let fail = |client: &mut TcpStream, f: Failure| {
        entry.update(|c| c.reason = Some(f.reason().into()));
        reply_http(client, &f);
    };
    if parts.next().is_some() || !version.starts_with("HTTP/1.") {
        return fail(&mut client, Failure::Bad("malformed request line".into()));
    }
    let (authority, path) = if connect {
        (target, "")
    } else if let Some(rest) = target
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case("http://"))
        .map(|_| &target[7..])
    {
        match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        }
    } else {
        entry.update(|c| c.host = printable(target));
        return fail(
            &mut client,
            Failure::Bad(
                "only CONNECT and absolute http:// requests go through the proxy (https: use CONNECT)"
                    .into(),
            ),
        );
    };
    entry.update(|c| c.host = printable(authority));
    let Some((dest, port)) = split_authority(authority, (!connect).then_some(80)) else {
        return fail(
            &mut client,
            Failure::Bad(format!("not a host[:port]: {}", printable(authority))),
        );
    };
    entry.update(|c| {
        c.host = dest.to_string();
        c.port = port;
    });
    let mut server = match open(shared, &entry, &dest, port) {
        Ok(s) => s,
        Err(f) => return fail(&mut client, f),
    };
    if connect {
        if client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .is_err()
        {
            return;
        }
    } else {
        // One request per connection, to the checked server, for the checked host.
        let mut out = format!("{method} {path} {version}\r\n");
        out.push_str(&format!("Host: {authority}\r\n"));
        for h in lines.filter(|l| !l.is_empty()) {
            let name = h.split(':').next().unwrap_or_default().trim();
            let drop = ["host", "connection", "proxy-connection", "keep-alive"]
                .iter()
                .any(|d| name.eq_ignore_ascii_case(d))
                || name.to_ascii_lowercase().starts_with("proxy-");
            if !drop {
                out.push_str(h);
                out.push_str("\r\n");
            }
        }
        out.push_str("Connection: close\r\n\r\n");
        if server.write_all(out.as_bytes()).is_err() {
            return;
        }
        entry.sent.fetch_add(out.len() as u64, Ordering::Relaxed);
    }
    if !rest.is_empty() {
        if server.write_all(&rest).is_err() {
            return;
        }
        entry.sent.fetch_add(rest.len() as u64, Ordering::Relaxed);
    }
    relay(client, server, &entry);
}

fn reply_http(client: &mut TcpStream, f: &Failure) {
    let status = match f {
        Failure::Bad(_) => "400 Bad Request",
        Failure::Refused(_) => "403 Forbidden",
        Failure::Unreachable(..) => "502 Bad Gateway",
    };
    let body = format!("pysandbox --allow-net: {}\n", f.reason());
    let _ = client.write_all(
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
}

fn socks5(mut client: TcpStream, shared: &Shared) {
    let entry = shared.entry("socks5");
    let fail = |client: &mut TcpStream, f: Failure| {
        entry.update(|c| c.reason = Some(f.reason().into()));
        let code = match &f {
            Failure::Bad(_) => 1,
            Failure::Refused(_) => 2,
            Failure::Unreachable(_, true) => 5,
            Failure::Unreachable(_, false) => 4,
        };
        let _ = client.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]);
    };
    let mut hdr = [0u8; 2];
    if client.read_exact(&mut hdr).is_err() {
        return fail(&mut client, Failure::Bad("short SOCKS5 greeting".into()));
    }
    let mut methods = vec![0u8; hdr[1] as usize];
    if client.read_exact(&mut methods).is_err() {
        return fail(&mut client, Failure::Bad("short SOCKS5 greeting".into()));
    }
    if !methods.contains(&0) {
        let _ = client.write_all(&[5, 0xff]);
        entry.update(|c| c.reason = Some("SOCKS5 without the no-authentication method".into()));
        return;
    }
    if client.write_all(&[5, 0]).is_err() {
        return;
    }
    let mut req = [0u8; 4];
    if client.read_exact(&mut req).is_err() || req[0] != 5 {
        return fail(&mut client, Failure::Bad("malformed SOCKS5 request".into()));
    }
    let host = match req[3] {
        1 => read_ip::<4>(&mut client),
        4 => read_ip::<16>(&mut client),
        3 => {
            let mut len = [0u8; 1];
            let mut name = vec![0u8; 255];
            client.read_exact(&mut len).ok().and_then(|_| {
                client
                    .read_exact(&mut name[..len[0] as usize])
                    .ok()
                    .map(|_| String::from_utf8_lossy(&name[..len[0] as usize]).into_owned())
            })
        }
        _ => None,
    };
    let mut p = [0u8; 2];
    let (Some(host), Ok(())) = (host, client.read_exact(&mut p)) else {
        return fail(&mut client, Failure::Bad("malformed SOCKS5 address".into()));
    };
    let port = u16::from_be_bytes(p);
    entry.update(|c| {
        c.host = printable(&host);
        c.port = port;
    });
    if req[1] != 1 {
        let _ = client.write_all(&[5, 7, 0, 1, 0, 0, 0, 0, 0, 0]);
        entry.update(|c| c.reason = Some("only the SOCKS5 CONNECT command is supported".into()));
        return;
    }
    let Some(dest) = Dest::parse(&host).filter(|_| port != 0) else {
        return fail(
            &mut client,
            Failure::Bad(format!("not a host: {}", printable(&host))),
        );
    };
    let server = match open(shared, &entry, &dest, port) {
        Ok(s) => s,
        Err(f) => return fail(&mut client, f),
    };
    if client.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).is_err() {
        return;
    }
    relay(client, server, &entry);
}

/// A SOCKS5 address of N bytes (4: IPv4, 16: IPv6), as text.
fn read_ip<const N: usize>(client: &mut TcpStream) -> Option<String>
where
    IpAddr: From<[u8; N]>,
{
    let mut a = [0u8; N];
    client
        .read_exact(&mut a)
        .ok()
        .map(|_| IpAddr::from(a).to_string())
}

/// Copies both ways until both sides are done; counts the bytes.
fn relay(client: TcpStream, server: TcpStream, entry: &Entry) {
    let _ = client.set_read_timeout(None);
    let _ = server.set_nodelay(true);
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    std::thread::scope(|s| {
        let up = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn_scoped(s, || copy(&client2, &server2, &entry.sent));
        if up.is_err() {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
            return;
        }
        copy(&server, &client, &entry.received);
    });
}

fn copy(mut from: &TcpStream, mut to: &TcpStream, count: &AtomicU64) {
    let mut buf = vec![0u8; RELAY_BUF];
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        let a = |s: &str, d| split_authority(s, d).map(|(h, p)| (h.to_string(), p));
        assert_eq!(
            a("example.com:443", None),
            Some(("example.com".into(), 443))
        );
        assert_eq!(a("example.com", Some(80)), Some(("example.com".into(), 80)));
        assert_eq!(a("example.com", None), None);
        assert_eq!(a("[::1]:8080", None), Some(("::1".into(), 8080)));
        assert_eq!(a("[::1]", Some(80)), Some(("::1".into(), 80)));
        assert_eq!(a("127.0.0.1:0", None), None);
        assert_eq!(a("user@example.com:80", None), None);
        assert_eq!(a("exa mple.com:80", None), None);
        assert_eq!(a("example.com:99999", None), None);
    }

    #[test]
    fn logged_text_is_printable() {
        assert_eq!(printable("example.com"), "example.com");
        assert_eq!(printable("a\u{1b}[2Jb\0"), "a\\u{1b}[2Jb\\u{0}");
        assert_eq!(printable("x\u{202e}y z"), "x\\u{202e}y z");
        assert!(printable(&"a".repeat(1000)).len() <= 256);
    }

    #[test]
    fn environment_points_at_the_proxy() {
        let env = environment();
        let get = |k: &str| env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.as_str());
        assert_eq!(get("HTTP_PROXY"), Some("http://127.0.0.1:3128"));
        assert_eq!(get("https_proxy"), Some("http://127.0.0.1:3128"));
        assert_eq!(get("ALL_PROXY"), Some("socks5h://127.0.0.1:3128"));
        assert_eq!(get("NO_PROXY"), Some(""));
        assert_eq!(get("PIP_PROXY"), Some("http://127.0.0.1:3128"));
    }
}
