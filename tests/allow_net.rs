//! `--allow-net`: the sandbox keeps its own loopback only, and reaches exactly what the
//! allow-list names through pysandbox's proxy (HTTP CONNECT, plain HTTP, SOCKS5h), which
//! checks the *resolved* addresses and logs every attempt in the report.
//!
//! Traffic goes to loopback only: small HTTP servers on the host's 127.0.0.1, one of
//! which is allowed and one not, each counting the requests it saw (what the host sees
//! is the proof, not only what the script prints).

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Reads an HTTP request head (up to the blank line); `None` if the client went away.
fn read_head(c: &mut std::net::TcpStream) -> Option<String> {
    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut b = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match c.read(&mut b) {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&b[..n]),
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// An HTTP server on the host's loopback answering every request with `body`; returns
/// its port and the number of requests it has answered.
fn serve(body: &'static str) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let h = h.clone();
            std::thread::spawn(move || {
                if read_head(&mut c).is_none() {
                    return;
                }
                h.fetch_add(1, Ordering::SeqCst);
                let _ = write!(
                    c,
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    (port, hits)
}

/// Helpers for the scripts: a GET through the environment's proxy (urllib), a raw
/// CONNECT, a SOCKS5h CONNECT and a direct connection that ignores the proxy.
const CLIENT: &str = r#"
import socket, struct, sys, urllib.request
def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return "%d %s" % (r.status, r.read().decode())
    except urllib.error.HTTPError as e:
        return "%d" % e.code
    except Exception as e:
        return "error %s" % type(e).__name__
def connect(target):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
    s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target)).encode())
    status = s.recv(4096).split(b"\r\n")[0].decode()
    if " 200 " in status:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        status += " | " + body(s)
    return status
def body(s):
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            return data.split(b"\r\n\r\n")[-1].decode()
        data += chunk
def socks(host, port):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
    s.sendall(b"\x05\x01\x00")
    assert s.recv(2) == b"\x05\x00"
    h = host.encode()
    s.sendall(b"\x05\x01\x00\x03" + bytes([len(h)]) + h + struct.pack(">H", port))
    code = s.recv(10)[1]
    if code == 0:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        return "0 " + body(s)
    return str(code)
def direct(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=3)
        return "connected"
    except OSError as e:
        return "error %d" % e.errno
A, B = int(sys.argv[1]), int(sys.argv[2])
"#;

fn script(body: &str) -> String {
    format!("{CLIENT}{body}")
}

fn report(o: &std::process::Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not a JSON report ({e}):\n{}\n--- stderr\n{}",
            stdout(o),
            stderr(o)
        )
    })
}

/// Runs `body` (after the client helpers) with `--json` and `args`; the script gets the
/// ports `a` and `b`; it must exit 0. Returns the report and the script's stdout.
fn run_json(who: Who, body: &str, args: &[&str], a: u16, b: u16) -> (Value, String) {
    let dir = workdir(who);
    put(dir.path(), "t.py", &script(body));
    let (sa, sb) = (a.to_string(), b.to_string());
    let mut argv = vec!["run", "--json"];
    argv.extend_from_slice(args);
    argv.extend(["t.py", &sa, &sb]);
    let o = run_in(who, dir.path(), &argv, b"");
    assert_code(&o, 0, &format!("{args:?}"));
    let r = report(&o);
    let out = script_out(&r);
    (r, out)
}

fn script_out(r: &Value) -> String {
    r["stdout"]["text"].as_str().unwrap_or_default().to_string()
}

/// (protocol, host, port, allowed) of every logged attempt.
fn attempts(r: &Value) -> Vec<(String, String, u64, bool)> {
    r["network"]["connections"]
        .as_array()
        .unwrap_or_else(|| panic!("no network log in {r}"))
        .iter()
        .map(|c| {
            (
                c["protocol"].as_str().unwrap().to_string(),
                c["host"].as_str().unwrap().to_string(),
                c["port"].as_u64().unwrap(),
                c["allowed"].as_bool().unwrap(),
            )
        })
        .collect()
}

each_mode!(allowed_server_reached_others_refused_and_logged, |who| {
    let (a, a_hits) = serve("server A");
    let (b, b_hits) = serve("server B");
    let body = r#"
print("get A:", get("http://127.0.0.1:%d/x" % A))
print("get B:", get("http://127.0.0.1:%d/x" % B))
print("connect A:", connect("127.0.0.1:%d" % A))
print("connect B:", connect("127.0.0.1:%d" % B))
print("localhost A:", get("http://localhost:%d/" % A))
print("direct A:", direct(A))
"#;
    let allow = format!("127.0.0.1:{a}");
    let (r, out) = run_json(who, body, &["--allow-net", &allow], a, b);
    assert!(out.contains("get A: 200 server A"), "{out}");
    assert!(out.contains("get B: 403\n"), "{out}");
    assert!(
        out.contains("connect A: HTTP/1.1 200 Connection established | server A"),
        "{out}"
    );
    assert!(out.contains("connect B: HTTP/1.1 403 Forbidden\n"), "{out}");
    // `localhost` resolves to 127.0.0.1, but no rule names it: not even resolved.
    assert!(out.contains("localhost A: 403\n"), "{out}");
    // A client that ignores the proxy reaches only the sandbox's own loopback.
    assert!(out.contains("direct A: error 111"), "{out}");
    assert_eq!(a_hits.load(Ordering::SeqCst), 2, "server A's requests");
    assert_eq!(b_hits.load(Ordering::SeqCst), 0, "server B was reached");
    let log = attempts(&r);
    let (a, b) = (a as u64, b as u64);
    assert_eq!(
        log,
        vec![
            ("http".into(), "127.0.0.1".into(), a, true),
            ("http".into(), "127.0.0.1".into(), b, false),
            ("connect".into(), "127.0.0.1".into(), a, true),
            ("connect".into(), "127.0.0.1".into(), b, false),
            ("http".into(), "localhost".into(), a, false),
        ],
        "{r}"
    );
    let conns = r["network"]["connections"].as_array().unwrap();
    assert_eq!(conns[0]["address"], "127.0.0.1");
    assert!(conns[0]["bytes_sent"].as_u64().unwrap() > 0, "{r}");
    assert!(conns[0]["bytes_received"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(conns[1]["bytes_received"], 0);
    assert!(
        conns[1]["reason"]
            .as_str()
            .unwrap()
            .contains("no --allow-net rule"),
        "{r}"
    );
    assert_eq!(r["network"]["proxy"], "127.0.0.1:3128");
    assert_eq!(r["network"]["allow"][0], allow.as_str());
});

each_mode!(
    a_name_never_reaches_loopback_unless_its_address_is_allowed,
    |who| {
        let (a, hits) = serve("server A");
        let body = r#"
print("get:", get("http://localhost:%d/" % A))
print("connect:", connect("localhost:%d" % A))
print("socks:", socks("localhost", A))
print("mapped:", connect("[::ffff:127.0.0.1]:%d" % A))
"#;
        let name = format!("localhost:{a}");
        let (r, out) = run_json(who, body, &["--allow-net", &name], a, 1);
        assert!(out.contains("get: 403\n"), "{out}");
        assert!(out.contains("connect: HTTP/1.1 403 Forbidden\n"), "{out}");
        assert!(out.contains("socks: 2\n"), "{out}"); // not allowed by ruleset
        assert!(out.contains("mapped: HTTP/1.1 403 Forbidden\n"), "{out}");
        assert_eq!(hits.load(Ordering::SeqCst), 0, "loopback reached by name");
        let conns = r["network"]["connections"].as_array().unwrap();
        assert_eq!(conns.len(), 4, "{r}");
        for c in &conns[..3] {
            assert_eq!(c["allowed"], false, "{r}");
            assert!(c["reason"].as_str().unwrap().contains("loopback"), "{r}");
            assert_eq!(c["address"], "127.0.0.1", "{r}");
        }
        // The name and its address both allowed: reached, by name and by literal.
        let addr = format!("127.0.0.1:{a}");
        let args = ["--allow-net", &name, "--allow-net", &addr];
        let (r, out) = run_json(who, body, &args, a, 1);
        assert!(out.contains("get: 200 server A"), "{out}");
        assert!(
            out.contains("connect: HTTP/1.1 200 Connection established | server A"),
            "{out}"
        );
        assert!(out.contains("socks: 0 server A"), "{out}");
        assert!(
            out.contains("mapped: HTTP/1.1 200 Connection established | server A"),
            "{out}"
        );
        assert_eq!(hits.load(Ordering::SeqCst), 4);
        let log = attempts(&r);
        assert!(log.iter().all(|c| c.3), "{r}");
    }
);

each_mode!(hostile_requests_are_refused_and_logged_printably, |who| {
    let (a, hits) = serve("server A");
    let body = r#"
def raw(data):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
    s.sendall(data)
    return s.recv(4096).split(b"\r\n")[0].decode()
def socks_raw(request):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
    s.sendall(b"\x05\x01\x00")
    s.recv(2)
    s.sendall(request + struct.pack(">H", A))
    return s.recv(10)[1]
lo = bytes([127, 0, 0, 1])
print("userinfo:", raw(b"GET http://x@127.0.0.1:%d/ HTTP/1.1\r\n\r\n" % A))
print("short ip:", raw(b"CONNECT 127.1:%d HTTP/1.1\r\n\r\n" % A))
print("hex ip:", raw(b"CONNECT 0x7f000001:%d HTTP/1.1\r\n\r\n" % A))
print("scoped:", raw(b"CONNECT [fe80::1%%lo]:%d HTTP/1.1\r\n\r\n" % A))
print("big head:", raw(b"GET http://127.0.0.1:%d/ HTTP/1.1\r\nX: %s\r\n\r\n" % (A, b"a" * 16384)))
print("https url:", raw(b"GET https://127.0.0.1:%d/ HTTP/1.1\r\n\r\n" % A))
print("origin form:", raw(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % A))
print("socks bind:", socks_raw(b"\x05\x02\x00\x01" + lo))
print("socks nul:", socks_raw(b"\x05\x01\x00\x03\x0a127.0.0.1\x00"))
print("terminal:", socks_raw(b"\x05\x01\x00\x03\x04\x1b[2J"))
"#;
    let allow = format!("127.0.0.1:{a}");
    let (r, out) = run_json(who, body, &["--allow-net", &allow], a, 1);
    for line in [
        "userinfo: HTTP/1.1 400 Bad Request",
        "short ip: HTTP/1.1 403 Forbidden",
        "hex ip: HTTP/1.1 403 Forbidden",
        "scoped: HTTP/1.1 400 Bad Request",
        "big head: HTTP/1.1 400 Bad Request",
        "https url: HTTP/1.1 400 Bad Request",
        "origin form: HTTP/1.1 400 Bad Request",
        "socks bind: 7",
        "socks nul: 1",
        "terminal: 1",
    ] {
        assert!(out.contains(&format!("{line}\n")), "{line}: {out}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the server was reached");
    let conns = r["network"]["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 10, "{r}");
    for c in conns {
        assert_eq!(c["allowed"], false, "{c}");
        for field in ["host", "reason"] {
            let text = c[field].as_str().unwrap_or_default();
            assert!(
                text.chars().all(|ch| ch.is_ascii_graphic() || ch == ' '),
                "{field} not printable: {text:?}"
            );
        }
    }
});

each_mode!(socks5h_and_log_net_on_stderr, |who| {
    let (a, hits) = serve("server A");
    let body = script(
        r#"
print("socks A:", socks("127.0.0.1", A))
print("socks B:", socks("127.0.0.1", B))
"#,
    );
    let dir = workdir(who);
    put(dir.path(), "t.py", &body);
    let allow = format!("127.0.0.0/8:{a}");
    let (sa, sb) = (a.to_string(), (a + 1).to_string());
    let o = run_in(
        who,
        dir.path(),
        &["run", "--allow-net", &allow, "--log-net", "t.py", &sa, &sb],
        b"",
    );
    assert_code(&o, 0, "socks5");
    let out = stdout(&o);
    assert!(out.contains("socks A: 0 server A"), "{out}");
    assert!(out.contains("socks B: 2\n"), "{out}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "pysandbox: net socks5 127.0.0.1:{a} -> 127.0.0.1 allowed"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "pysandbox: net socks5 127.0.0.1:{} -> - refused",
            a + 1
        )),
        "{err}"
    );
});

each_mode!(
    the_proxy_is_out_of_the_hosts_reach_and_dies_with_pysandbox,
    |who| {
        // Nothing of the host may listen on the proxy's port, or the check means nothing.
        if std::net::TcpStream::connect("127.0.0.1:3128").is_ok() {
            eprintln!("SKIP: something on the host listens on 127.0.0.1:3128");
            return;
        }
        let marker = unique("proxykill");
        let dir = workdir(who);
        let mut child =
            start_sleeper_with(who, dir.path(), &marker, &["--allow-net", "127.0.0.1:9"]);
        // The proxy names itself once it has confined itself (on a loaded host, maybe
        // after the script has started: connections wait in the backlog until then).
        let proxies = || -> Vec<i32> {
            processes_with(&marker)
                .into_iter()
                .filter(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/comm"))
                        .map(|c| c.trim() == "pysandbox-proxy")
                        .unwrap_or(false)
                })
                .collect()
        };
        let t = std::time::Instant::now();
        while proxies().is_empty() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let proxies = proxies();
        assert_eq!(proxies.len(), 1, "one proxy while the script runs");
        // Listening in the sandbox's network namespace only.
        assert!(
            std::net::TcpStream::connect("127.0.0.1:3128").is_err(),
            "the host reaches the sandbox's proxy"
        );
        let status = std::fs::read_to_string(format!("/proc/{}/status", proxies[0])).unwrap();
        let line = |k: &str| {
            status
                .lines()
                .find(|l| l.starts_with(k))
                .unwrap_or_default()
                .to_string()
        };
        assert!(line("CapEff:").ends_with("0000000000000000"), "{status}");
        assert!(line("NoNewPrivs:").ends_with('1'), "{status}");
        assert!(
            line("Seccomp:").ends_with('2'),
            "no seccomp filter: {status}"
        );
        if who == Who::Root {
            assert!(
                !line("Uid:").contains("\t0\t"),
                "the proxy runs as root: {status}"
            );
        }
        // SAFETY: killing our own child (setpriv/unshare exec into pysandbox: same pid).
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        let left = wait_gone(&marker, Duration::from_secs(2));
        assert!(
            left.is_empty(),
            "the sandbox or its proxy outlived pysandbox: {left:?}"
        );
    }
);

each_mode!(the_log_and_the_connections_are_bounded, |who| {
    let body = r#"
import select, time
held = [socket.create_connection(("127.0.0.1", 3128), timeout=10) for _ in range(70)]
time.sleep(0.5)
readable = select.select(held, [], [], 1.0)[0]
print("closed:", sum(s.recv(1) == b"" for s in readable))
for s in held: s.close()
time.sleep(0.5)
for i in range(1010):
    connect("127.0.0.1:%d" % B)
"#;
    let (r, out) = run_json(who, body, &["--allow-net", "127.0.0.1:9"], 9, 10);
    assert!(out.contains("closed: 6\n"), "64 held, 6 refused: {out}");
    let net = &r["network"];
    assert_eq!(net["connections"].as_array().unwrap().len(), 1000);
    // 6 refused for the cap, 1010 for the allow-list (the 64 held sent nothing).
    assert_eq!(
        net["connections_dropped"], 16,
        "{}",
        net["connections_dropped"]
    );
});

#[test]
fn bad_allow_net_values_are_one_line_errors() {
    let who = me();
    let dir = workdir(who);
    put(dir.path(), "t.py", "print(1)\n");
    for (args, expect) in [
        (
            vec!["--allow-net", "a.*.com"],
            "--allow-net a.*.com: a wildcard",
        ),
        (
            vec!["--allow-net", "example.com:0"],
            "the port must be 1-65535",
        ),
        (
            vec!["--allow-net", "10.0.0.0/40"],
            "the prefix length must be 0-32",
        ),
        (vec!["--allow-net", "*"], "--allow-net *"),
        (
            vec!["--allow-net", "example.com", "--network"],
            "--allow-net cannot be combined with --network",
        ),
        (
            vec!["--log-net"],
            "--log-net logs the connections of --allow-net",
        ),
    ] {
        let mut a = vec!["run"];
        a.extend(args.iter());
        a.push("t.py");
        let o = run_in(who, dir.path(), &a, b"");
        assert_refused(&o, &format!("{args:?}"), expect);
    }
}

/// A static file server for `root` on the host's loopback (a package index).
fn serve_dir(root: std::path::PathBuf) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let root = root.clone();
            std::thread::spawn(move || {
                let Some(head) = read_head(&mut c) else {
                    return;
                };
                let path = head.split(' ').nth(1).unwrap_or("/");
                let mut file = root.join(path.trim_start_matches('/'));
                if path.ends_with('/') {
                    file = file.join("index.html");
                }
                let _ = match std::fs::read(&file) {
                    Ok(body) if !path.contains("..") => c
                        .write_all(
                            format!(
                                "HTTP/1.0 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
                                if path.ends_with('/') {
                                    "text/html"
                                } else {
                                    "application/octet-stream"
                                },
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .and_then(|_| c.write_all(&body)),
                    _ => c.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
                };
            });
        }
    });
    port
}

/// A package index holding one pure-Python wheel, `tinyallow` 1.0.
fn tiny_index() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("pysandbox-index-")
        .tempdir_in("/tmp")
        .unwrap();
    let made = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(
            r#"
import hashlib, os, sys, zipfile
root = sys.argv[1]
os.makedirs(root + "/files"); os.makedirs(root + "/simple/tinyallow")
whl = root + "/files/tinyallow-1.0-py3-none-any.whl"
files = {
    "tinyallow.py": "VALUE = 42\n",
    "tinyallow-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinyallow\nVersion: 1.0\n",
    "tinyallow-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
with zipfile.ZipFile(whl, "w") as z:
    for name, body in files.items():
        z.writestr(name, body)
    z.writestr("tinyallow-1.0.dist-info/RECORD", "".join(n + ",,\n" for n in files) + "tinyallow-1.0.dist-info/RECORD,,\n")
digest = hashlib.sha256(open(whl, "rb").read()).hexdigest()
open(root + "/simple/tinyallow/index.html", "w").write(
    '<a href="/files/tinyallow-1.0-py3-none-any.whl#sha256=%s">tinyallow-1.0-py3-none-any.whl</a>\n' % digest)
"#,
        )
        .arg(d.path())
        .status()
        .unwrap();
    assert!(made.success(), "making the test index");
    let _ = std::process::Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(d.path())
        .status();
    d
}

each_mode!(image_build_installs_through_the_allow_list, |who| {
    let index = tiny_index();
    let port = serve_dir(index.path().to_path_buf());
    let dir = workdir(who);
    put(
        dir.path(),
        "tiny.yaml",
        "dependencies:\n  - python=3\n  - pip:\n      - tinyallow==1.0\n",
    );
    let store = private_data_home(dir.path());
    let url = format!("http://127.0.0.1:{port}/simple/");
    let env = [
        ("XDG_DATA_HOME", store.as_str()),
        ("PIP_INDEX_URL", url.as_str()),
    ];
    let allow = format!("127.0.0.1:{port}");
    let pysandbox = |args: &[&str]| {
        command_with_env(who, dir.path(), args, &env)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let o = pysandbox(&["image", "build", "tiny.yaml", "--allow-net", &allow]);
    assert_code(&o, 0, "image build --allow-net");
    let err = stderr(&o);
    let logged = format!("pysandbox: net http 127.0.0.1:{port} -> 127.0.0.1 allowed");
    assert!(
        err.contains(&logged),
        "the build's connections are logged: {err}"
    );
    assert!(!err.contains("refused"), "{err}");
    let code = "import tinyallow; print(tinyallow.VALUE)";
    let o = pysandbox(&["run", "--image", "tiny", "--code", code]);
    assert_code(&o, 0, "run the built image");
    assert_eq!(stdout(&o), "42\n");
});

each_mode!(the_timing_log_keeps_the_proxy_working, |who| {
    // The init sends the proxy's socket as a message of its own on the status socket; its
    // first timing mark, a line of text, once came before and was read in its place.
    let dir = workdir(who);
    let o = run_in(
        who,
        dir.path(),
        &[
            "--log-level",
            "pysandbox::timing=debug",
            "run",
            "--no-fs",
            "--allow-net",
            "127.0.0.1:9",
            "--code",
            "print(3)",
        ],
        b"",
    );
    assert_code(&o, 0, "a run with --allow-net and the timing log");
    assert_eq!(stdout(&o), "3\n");
    assert!(stderr(&o).contains("sandbox: init-hook"), "{}", stderr(&o));
});
