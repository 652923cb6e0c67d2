//! `pysandbox serve` through a real HTTP client on loopback: every endpoint, auth, bad
//! requests, limits, concurrency without cross-talk, runs that time out / OOM / flood,
//! SIGTERM drain, SIGKILL then restart, refill after the pool's sandboxes are killed, and
//! an unmodified Piston client library from PyPI.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const TOKEN: &str = "test-token-0123456789abcdef";
const TOKEN2: &str = "other-token-0123456789abcdef";

struct Server {
    child: Option<Child>,
    base: String,
    /// `--pids N`, unique per server: finds its workers among other tests'.
    tag: String,
    _dir: WorkDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

impl Server {
    fn start(who: Who, pids: u64, extra: &[&str]) -> Server {
        let dir = workdir(who);
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, format!("{TOKEN}\n{TOKEN2}\n")).unwrap();
        if matches!(who, Who::User | Who::UserInUserns) {
            chown_to_user(&tokens);
        }
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let pids_s = pids.to_string();
        let mut args = vec![
            "serve",
            "--listen",
            &listen,
            "--token-file",
            tokens.to_str().unwrap(),
            "--pids",
            &pids_s,
        ];
        args.extend_from_slice(extra);
        let child = command(who, dir.path(), &args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let s = Server {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            tag: format!("--pids\u{0}{pids}\u{0}"),
            _dir: dir,
        };
        let t = Instant::now();
        loop {
            if let Ok(mut r) = agent().get(format!("{}/v1/health", s.base)).call() {
                let v: Value = r.body_mut().read_json().unwrap();
                if v["pool"]["idle"].as_u64() >= v["pool"]["size"].as_u64() {
                    break;
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let mut r = agent()
            .post(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .send_json(body)
            .unwrap();
        let status = r.status().as_u16();
        (status, r.body_mut().read_json().unwrap_or(Value::Null))
    }

    fn get(&self, path: &str) -> (u16, String) {
        let mut r = agent()
            .get(format!("{}{path}", self.base))
            .header("X-API-Key", TOKEN)
            .call()
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    }

    fn workers(&self) -> Vec<i32> {
        self.tagged("--pool-worker")
    }

    /// pysandbox processes of this server's sessions.
    fn sessions(&self) -> Vec<i32> {
        self.tagged("_pysandbox_session")
    }

    fn tagged(&self, what: &str) -> Vec<i32> {
        processes_with(what)
            .into_iter()
            .filter(|p| {
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(&self.tag))
                    .unwrap_or(false)
            })
            .filter(not_a_holder)
            .collect()
    }

    fn signal(&mut self, sig: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        // The server is the last process of the wrapper chain (setpriv and unshare exec).
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        child.wait().unwrap()
    }

    fn wait_workers_gone(&self) {
        let t = Instant::now();
        while !self.workers().is_empty() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "workers left: {:?}",
                self.workers()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal(libc::SIGTERM);
        }
    }
}

each_mode!(endpoints_auth_and_bad_requests, |who| {
    let s = Server::start(who, 91 + who as u64, &["--pool", "2"]);
    let url = |p: &str| format!("{}{p}", s.base);
    // Auth: none, wrong, Bearer, bare Authorization, X-API-Key.
    let body = json!({"code": "print(6 * 7)"});
    for (h, v, want) in [
        ("X-None", "x", 401),
        ("Authorization", "Bearer wrong-token-wrong-token", 401),
        ("Authorization", &format!("Bearer {TOKEN}") as &str, 200),
        ("Authorization", TOKEN, 200),
        ("X-API-Key", TOKEN, 200),
    ] {
        let r = agent()
            .post(url("/v1/run"))
            .header(h, v)
            .send_json(&body)
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "{h}: {v}");
    }
    for p in ["/metrics", "/api/v2/runtimes"] {
        assert_eq!(
            agent().get(url(p)).call().unwrap().status().as_u16(),
            401,
            "{p}"
        );
    }
    // /v1/run: the report of `pysandbox run --json`.
    let (st, r) = s.post(
        "/v1/run",
        &json!({"code": "import sys, os\nprint(sys.argv[1:], sys.stdin.read(), os.environ['K'])",
                "args": ["a", "b"], "stdin": "in", "env": {"K": "v"}}),
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["stdout"]["text"], "['a', 'b'] in v\n", "{r}");
    assert_eq!(r["schema"], 1);
    assert!(r["pool"]["warm"].is_boolean(), "{r}");
    // Files, a chosen script, and a nonzero exit.
    let (st, r) = s.post(
        "/v1/run",
        &json!({"files": [{"name": "lib.py", "content": "X = 5"},
                          {"name": "go.py", "content": "import lib, sys\nprint(lib.X)\nsys.exit(4)"}],
                "script": "go.py"}),
    );
    assert_eq!((st, r["exit_code"].as_i64()), (200, Some(4)), "{r}");
    assert_eq!(r["stdout"]["text"], "5\n");
    // Piston: files[0] runs, other files beside it, encodings, args, stdin.
    let (st, r) = s.post(
        "/api/v2/execute",
        &json!({"language": "py3", "version": "3.x",
                "files": [{"name": "m.py", "content": "import sys\nprint(open('d.bin','rb').read(), open('h.txt').read(), sys.argv[1:], input())"},
                          {"name": "d.bin", "content": "AAE=", "encoding": "base64"},
                          {"name": "h.txt", "content": "6869", "encoding": "hex"}],
                "stdin": "line", "args": ["x"], "run_timeout": 5000, "run_memory_limit": -1}),
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["language"], "python");
    assert_eq!(r["run"]["stdout"], "b'\\x00\\x01' hi ['x'] line\n", "{r}");
    assert_eq!(r["run"]["code"], 0);
    assert_eq!(r["run"]["status"], Value::Null);
    assert_eq!(r["run"]["pysandbox"]["status"], "ok");
    let (st, r) = s.post(
        "/api/v2/execute",
        &json!({"language": "python", "version": "*", "files": [{"content": "raise ValueError('boom')"}]}),
    );
    assert_eq!((st, r["run"]["status"].as_str()), (200, Some("RE")), "{r}");
    assert!(
        r["run"]["stderr"]
            .as_str()
            .unwrap()
            .contains("ValueError: boom")
    );
    assert_eq!(r["run"]["code"], 1);
    // Runtimes, health, metrics.
    let (st, rt) = s.get("/api/v2/runtimes");
    let rt: Value = serde_json::from_str(&rt).unwrap();
    assert_eq!(st, 200);
    assert_eq!(rt[0]["language"], "python");
    let version = rt[0]["version"].as_str().unwrap().to_string();
    assert!(version.starts_with("3."), "{rt}");
    let (st, h) = s.get("/v1/health");
    assert_eq!(st, 200, "{h}");
    let (st, m) = s.get("/metrics");
    assert_eq!(st, 200);
    assert!(m.contains("pysandbox_runs_total{status=\"ok\"}"), "{m}");
    assert!(m.contains("pysandbox_request_seconds_bucket"), "{m}");
    assert!(m.contains("pysandbox_pool_warm_ratio"), "{m}");
    // Bad requests: each refused with its reason.
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "/v1/run",
            json!({"code": "1", "colour": "red"}),
            400,
            "colour",
        ),
        ("/v1/run", json!({"code": 5}), 400, "code"),
        ("/v1/run", json!({}), 400, "code or files"),
        (
            "/v1/run",
            json!({"code": "1", "timeout_ms": 3_600_000}),
            400,
            "timeout",
        ),
        (
            "/v1/run",
            json!({"code": "1", "memory_bytes": 1u64 << 40}),
            400,
            "memory",
        ),
        ("/v1/run", json!({"code": "1", "pids": 100000}), 400, "pids"),
        (
            "/v1/run",
            json!({"code": "1", "env": {"A-B": "x"}}),
            400,
            "A-B",
        ),
        (
            "/v1/run",
            json!({"files": [{"name": "../x.py", "content": "1"}]}),
            400,
            "plain relative",
        ),
        (
            "/v1/run",
            json!({"files": [{"name": "a.py", "content": "%", "encoding": "base64"}]}),
            400,
            "base64",
        ),
        (
            "/api/v2/execute",
            json!({"language": "ruby", "version": "*", "files": [{"content": "1"}]}),
            400,
            "runtime is unknown",
        ),
        (
            "/api/v2/execute",
            json!({"language": "python", "version": "2.7", "files": [{"content": "1"}]}),
            400,
            "runtime is unknown",
        ),
        (
            "/api/v2/execute",
            json!({"language": "python", "version": "*"}),
            400,
            "files",
        ),
        (
            "/api/v2/execute",
            json!({"language": "python", "version": "*", "files": [{"content": "1"}], "run_timeout": -5}),
            400,
            "run_timeout",
        ),
    ];
    for (path, body, code, says) in cases {
        let (st, r) = s.post(path, &body);
        assert_eq!(st, code, "{body} -> {r}");
        assert!(
            r["message"].as_str().unwrap_or("").contains(says),
            "{body} -> {r}"
        );
    }
    let raw = |ct: &str, body: Vec<u8>| {
        let mut r = agent()
            .post(url("/v1/run"))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .header("Content-Type", ct)
            .send(&body[..])
            .unwrap();
        let st = r.status().as_u16();
        (st, r.body_mut().read_to_string().unwrap_or_default())
    };
    assert_eq!(raw("application/json", b"{not json".to_vec()).0, 400);
    assert_eq!(raw("text/plain", b"{\"code\":\"1\"}".to_vec()).0, 415);
    let huge = format!("{{\"code\":\"#{}\"}}", "x".repeat(9 << 20));
    assert_eq!(raw("application/json", huge.into_bytes()).0, 413);
    assert_eq!(s.get("/nope").0, 404);
});

#[test]
fn a_public_address_needs_a_token() {
    let who = me();
    let dir = workdir(who);
    let port = free_port().to_string();
    let o = run_in(
        who,
        dir.path(),
        &["serve", "--listen", &format!("0.0.0.0:{port}")],
        b"",
    );
    assert_code(&o, 125, "serve on 0.0.0.0 without a token");
    assert!(stderr(&o).contains("without a token"), "{}", stderr(&o));
    std::fs::write(dir.path().join("short"), "abc\n").unwrap();
    let o = run_in(who, dir.path(), &["serve", "--token-file", "short"], b"");
    assert!(stderr(&o).contains("at least 16"), "{}", stderr(&o));
}

each_mode!(concurrent_requests_never_cross_talk, |who| {
    let s = Server::start(
        who,
        101 + who as u64,
        &["--pool", "4", "--max-concurrent", "8"],
    );
    let n = 200;
    let results: Vec<(usize, u16, Value)> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..16)
            .map(|t| {
                let s = &s;
                sc.spawn(move || {
                    (0..n / 16 + 1)
                        .map(|i| i * 16 + t)
                        .filter(|k| *k < n)
                        .map(|k| {
                            let (st, r) = s.post(
                                "/v1/run",
                                &json!({"code": "import sys, os\nprint(sys.argv[1], sys.stdin.read(), os.environ['TAG'], open('f.txt').read())",
                                        "args": [format!("arg{k}")], "stdin": format!("in{k}"),
                                        "env": {"TAG": format!("env{k}")},
                                        "files": [{"name": "f.txt", "content": format!("file{k}")}],
                                        "script": null}),
                            );
                            (k, st, r)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.len(), n);
    let mut ids = std::collections::HashSet::new();
    let mut warm = 0;
    for (k, st, r) in results {
        assert_eq!(st, 200, "{k}: {r}");
        assert_eq!(
            r["stdout"]["text"],
            format!("arg{k} in{k} env{k} file{k}\n"),
            "{k}: {r}"
        );
        assert!(ids.insert(r["id"].as_str().unwrap().to_string()));
        warm += r["pool"]["warm"].as_bool().unwrap() as usize;
    }
    assert!(warm > 0, "no run was warm");
});

each_mode!(timeouts_oom_and_floods_through_the_api, |who| {
    let s = Server::start(
        who,
        111 + who as u64,
        &["--pool", "2", "--max-output", "64K"],
    );
    let t = Instant::now();
    let (st, r) = s.post(
        "/api/v2/execute",
        &json!({"language": "python", "version": "*", "files": [{"content": "while True: pass"}], "run_timeout": 800}),
    );
    assert_eq!((st, r["run"]["status"].as_str()), (200, Some("TO")), "{r}");
    assert!(t.elapsed() < Duration::from_secs(15));
    let (st, r) = s.post(
        "/v1/run",
        &json!({"code": "x = bytearray(400 << 20); print(len(x))", "memory_bytes": 64u64 << 20}),
    );
    assert_eq!(st, 200, "{r}");
    assert!(
        ["oom", "exit_nonzero"].contains(&r["status"].as_str().unwrap()),
        "{r}"
    );
    assert_eq!(
        r["pool"]["warm"], false,
        "other limits than the pool's: a sandbox of its own"
    );
    let (st, r) = s.post("/v1/run", &json!({"code": "print('y' * (8 << 20))"}));
    assert_eq!(
        (st, r["status"].as_str()),
        (200, Some("output_limit")),
        "{r}"
    );
    assert!(r["stdout"]["dropped_bytes"].as_u64().unwrap() > 0);
    assert!(r["stdout"]["text"].as_str().unwrap().len() <= 64 << 10);
    let (st, r) = s.post(
        "/api/v2/execute",
        &json!({"language": "python", "version": "*", "files": [{"content": "print('y' * (8 << 20))"}]}),
    );
    assert_eq!((st, r["run"]["status"].as_str()), (200, Some("OL")), "{r}");
});

each_mode!(sigterm_drains_and_sigkill_leaves_nothing, |who| {
    let mut s = Server::start(who, 121 + who as u64, &["--pool", "2"]);
    assert_eq!(s.workers().len(), 2);
    // A run in flight when SIGTERM arrives finishes and is answered.
    let base = s.base.clone();
    let inflight = std::thread::spawn(move || {
        let mut r = agent()
            .post(format!("{base}/v1/run"))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .send_json(json!({"code": "import time; time.sleep(2); print('done')"}))
            .unwrap();
        (
            r.status().as_u16(),
            r.body_mut().read_json::<Value>().unwrap(),
        )
    });
    std::thread::sleep(Duration::from_millis(700));
    let st = s.signal(libc::SIGTERM);
    let (code, r) = inflight.join().unwrap();
    assert_eq!(
        (code, r["stdout"]["text"].as_str()),
        (200, Some("done\n")),
        "{r}"
    );
    assert!(st.success(), "serve exited with {st}");
    s.wait_workers_gone();
    let id = r["id"].as_str().unwrap();
    assert!(processes_with(id).is_empty());
    for ctrl in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let left = ctrl.path().join("pysandbox").join(id);
        assert!(!left.exists(), "{} left behind", left.display());
    }
    // SIGKILL: the workers see their pipe close and end their sandboxes; a new server
    // starts cleanly.
    let mut s = Server::start(who, 121 + who as u64, &["--pool", "2"]);
    let st = s.signal(libc::SIGKILL);
    assert!(!st.success());
    s.wait_workers_gone();
    let s = Server::start(who, 121 + who as u64, &["--pool", "2"]);
    let (st, r) = s.post("/v1/run", &json!({"code": "print('again')"}));
    assert_eq!(
        (st, r["stdout"]["text"].as_str()),
        (200, Some("again\n")),
        "{r}"
    );
});

each_mode!(the_pool_refills_after_its_sandboxes_are_killed, |who| {
    let s = Server::start(who, 131 + who as u64, &["--pool", "2"]);
    let workers = s.workers();
    assert_eq!(workers.len(), 2);
    // Kill each worker's interpreter from outside (as an OOM killer or an admin would).
    let mut killed = 0;
    for pid in processes_with("_pysandbox_bootstrap") {
        let mut p = pid;
        while p > 1 {
            if workers.contains(&p) {
                // SAFETY: plain kill(2).
                unsafe { libc::kill(pid, libc::SIGKILL) };
                killed += 1;
                break;
            }
            p = ppid(p);
        }
    }
    assert_eq!(killed, 2);
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        let (st, r) = s.post("/v1/run", &json!({"code": "print('still here')"}));
        assert_eq!(
            (st, r["stdout"]["text"].as_str()),
            (200, Some("still here\n")),
            "{r}"
        );
    }
    let t = Instant::now();
    loop {
        let (_, h) = s.get("/v1/health");
        let h: Value = serde_json::from_str(&h).unwrap();
        if h["pool"]["idle"] == 2 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "never refilled: {h}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, m) = s.get("/metrics");
    assert!(!m.contains("pysandbox_pool_retired_total 0\n"), "{m}");
});

fn ppid(pid: i32) -> i32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PPid:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn an_unmodified_piston_client_works() {
    // aiopyston from PyPI (needs a package index; PYSANDBOX_TEST_NO_INDEX=1 skips).
    let who = me();
    if no_index() {
        return;
    }
    let venv = tempfile::tempdir().unwrap();
    let python = venv_with(venv.path(), &["aiopyston==1.2.1"]);
    let s = Server::start(who, 141, &["--pool", "2"]);
    let client = r#"
import asyncio, sys
from pyston import PystonClient, File

async def main(base, key):
    c = PystonClient(api_key=key, base_url=base)
    runtimes = await c.runtimes()
    assert any(r.language == "python" for r in runtimes), runtimes
    out = await c.execute("python", [File("import sys\nprint(sys.argv[1:], input())", "m.py")], stdin="hi", args=["a"])
    print(out.run_stage.stdout, out.run_stage.code, sep="|", end="")
    bad = await c.execute("py", [File("raise SystemExit(3)")])
    print("|", bad.run_stage.code, sep="")
    await c.close_session()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"#;
    let o = python_script(&python, client, &[&format!("{}/api/v2/", s.base), TOKEN]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "['a'] hi\n|0|3\n");
}

#[test]
fn answers_match_the_openapi_document() {
    let who = me();
    use common::schema::{check, load};
    let spec = load("openapi.yaml");
    let s = Server::start(who, 151, &["--pool", "1"]);
    let run = json!({"code": "print(1)", "args": ["a"], "env": {"A": "b"}, "timeout_ms": 5000});
    let piston = json!({"language": "python", "version": "*", "files": [{"name": "m.py", "content": "print(1)"}],
                        "stdin": "", "args": [], "run_timeout": 3000, "compile_timeout": 10000,
                        "run_memory_limit": -1, "compile_memory_limit": -1});
    let cases: Vec<(&str, &str, Option<Value>, bool, u16)> = vec![
        ("post", "/v1/run", Some(run.clone()), true, 200),
        ("post", "/v1/run", Some(json!({"code": 1})), true, 400),
        ("post", "/v1/run", Some(run), false, 401),
        ("post", "/api/v2/execute", Some(piston.clone()), true, 200),
        (
            "post",
            "/api/v2/execute",
            Some(json!({"language": "cobol", "version": "*", "files": []})),
            true,
            400,
        ),
        ("post", "/api/v2/execute", Some(piston), false, 401),
        ("get", "/api/v2/runtimes", None, true, 200),
        ("get", "/api/v2/runtimes", None, false, 401),
        ("get", "/v1/health", None, false, 200),
        ("get", "/metrics", None, true, 200),
        ("get", "/metrics", None, false, 401),
        (
            "post",
            "/v1/sessions",
            Some(json!({"idle_timeout_s": 60})),
            true,
            201,
        ),
        (
            "post",
            "/v1/sessions/{id}/execute",
            Some(json!({"code": "x = 1\nprint(x)\nx", "timeout_s": 5})),
            true,
            200,
        ),
        (
            "post",
            "/v1/sessions/{id}/execute",
            Some(json!({"code": "1/0"})),
            true,
            200,
        ),
        (
            "post",
            "/v1/sessions/{id}/execute",
            Some(json!({"cod": "1"})),
            true,
            400,
        ),
        (
            "post",
            "/v1/sessions/{id}/files",
            Some(json!({"path": "f.txt", "content": "hi"})),
            true,
            200,
        ),
        ("get", "/v1/sessions/{id}/files/{path}", None, true, 200),
        ("delete", "/v1/sessions/{id}", None, true, 204),
        (
            "post",
            "/v1/sessions/{id}/execute",
            Some(json!({"code": "1"})),
            true,
            410,
        ),
    ];
    let mut session_id = String::new();
    let mut covered = std::collections::BTreeSet::new();
    for (method, path, body, auth, want) in cases {
        let op = &spec["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not in the document");
        covered.insert(path);
        if let (Some(b), 200) = (&body, want) {
            let req = &op["requestBody"]["content"]["application/json"]["schema"];
            check(b, req, &spec, &format!("request of {method} {path}"));
        }
        let concrete = path.replace("{id}", &session_id).replace("{path}", "f.txt");
        let url = format!("{}{concrete}", s.base);
        let mut r = match &body {
            Some(_) if method == "delete" => unreachable!(),
            None if method == "delete" => {
                let rb = agent().delete(&url);
                let rb = if auth {
                    rb.header("X-API-Key", TOKEN)
                } else {
                    rb
                };
                rb.call().unwrap()
            }
            Some(b) => {
                let rb = agent().post(&url);
                let rb = if auth {
                    rb.header("X-API-Key", TOKEN)
                } else {
                    rb
                };
                rb.send_json(b).unwrap()
            }
            None => {
                let rb = agent().get(&url);
                let rb = if auth {
                    rb.header("X-API-Key", TOKEN)
                } else {
                    rb
                };
                rb.call().unwrap()
            }
        };
        assert_eq!(r.status().as_u16(), want, "{method} {path}");
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let text = r.body_mut().read_to_string().unwrap();
        let mut resp = op["responses"][want.to_string()].clone();
        assert!(
            resp.is_object(),
            "{method} {path}: {want} is not documented"
        );
        if want == 204 {
            continue;
        }
        if let Some(rf) = resp.get("$ref").and_then(Value::as_str) {
            resp = common::schema::resolve(rf, &spec).0;
        }
        let schema = &resp["content"][&ct]["schema"];
        assert!(
            schema.is_object(),
            "{method} {path} {want}: {ct} is not documented"
        );
        let v = if ct == "application/json" {
            serde_json::from_str(&text).unwrap()
        } else {
            Value::String(text)
        };
        check(&v, schema, &spec, &format!("{method} {path} {want}"));
        if path == "/v1/sessions" {
            session_id = v["id"].as_str().unwrap().to_string();
        }
    }
    let documented: std::collections::BTreeSet<&str> = spec["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(documented, covered, "every documented path is tested");
}

#[test]
fn over_the_concurrency_cap_is_503_with_retry_after() {
    let who = me();
    let s = Server::start(
        who,
        161,
        &["--pool", "1", "--max-concurrent", "1", "--max-queue", "0"],
    );
    std::thread::scope(|sc| {
        let slow = sc.spawn(|| s.post("/v1/run", &json!({"code": "import time; time.sleep(2)"})));
        std::thread::sleep(Duration::from_millis(600));
        let r = agent()
            .post(format!("{}/v1/run", s.base))
            .header("X-API-Key", TOKEN)
            .send_json(json!({"code": "print(1)"}))
            .unwrap();
        assert_eq!(r.status().as_u16(), 503);
        assert_eq!(
            r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
            Some("1")
        );
        assert_eq!(slow.join().unwrap().0, 200);
    });
    let (st, _) = s.post("/v1/run", &json!({"code": "print(1)"}));
    assert_eq!(st, 200, "the slot is free again");
}

each_mode!(sessions_over_http, |who| {
    let s = Server::start(
        who,
        171 + who as u64,
        &["--pool", "1", "--max-sessions", "2", "--memory", "128M"],
    );
    let call = |method: &str, path: &str, token: &str, body: Option<Value>| {
        let url = format!("{}{path}", s.base);
        let mut r = match (method, body) {
            ("POST", Some(b)) => agent().post(&url).header("X-API-Key", token).send_json(b),
            ("POST", None) => agent().post(&url).header("X-API-Key", token).send_empty(),
            ("DELETE", _) => agent().delete(&url).header("X-API-Key", token).call(),
            _ => agent().get(&url).header("X-API-Key", token).call(),
        }
        .unwrap();
        let st = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        (
            st,
            serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text)),
        )
    };
    let (st, created) = call("POST", "/v1/sessions", TOKEN, None);
    assert_eq!(st, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert!(created["expires_at"].as_f64().unwrap() > 1.7e9);
    let ex = |code: &str| {
        call(
            "POST",
            &format!("/v1/sessions/{id}/execute"),
            TOKEN,
            Some(json!({"code": code, "timeout_s": 10})),
        )
    };
    let (st, r) = ex("x = 20\nprint('set')");
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["logs"]["stdout"], json!(["set\n"]));
    let (_, r) = ex("x * 2 + 2");
    assert_eq!(r["results"][0]["text"], "42", "{r}");
    assert_eq!(r["results"][0]["is_main_result"], true);
    assert_eq!(r["execution_count"], 2);
    let (_, r) = ex("1/0");
    assert_eq!(r["error"]["name"], "ZeroDivisionError", "{r}");
    // Files in and out.
    let (st, r) = call(
        "POST",
        &format!("/v1/sessions/{id}/files"),
        TOKEN,
        Some(json!({"path": "in/a.txt", "content": "aGk=", "encoding": "base64"})),
    );
    assert_eq!(st, 200, "{r}");
    ex("open('out.txt', 'w').write(open('in/a.txt').read() * 2)");
    let (st, r) = call(
        "GET",
        &format!("/v1/sessions/{id}/files/out.txt"),
        TOKEN,
        None,
    );
    assert_eq!((st, r), (200, Value::String("hihi".into())));
    let (st, _) = call(
        "GET",
        &format!("/v1/sessions/{id}/files/missing"),
        TOKEN,
        None,
    );
    assert_eq!(st, 404);
    // Another token does not see it; an unknown id is 404.
    let (st, _) = call(
        "POST",
        &format!("/v1/sessions/{id}/execute"),
        TOKEN2,
        Some(json!({"code": "x"})),
    );
    assert_eq!(st, 404);
    let (st, _) = call(
        "POST",
        "/v1/sessions/ss-nope/execute",
        TOKEN,
        Some(json!({"code": "1"})),
    );
    assert_eq!(st, 404);
    // The cap.
    let (st2, second) = call("POST", "/v1/sessions", TOKEN, None);
    assert_eq!(st2, 201, "{second}");
    let (st, r) = call("POST", "/v1/sessions", TOKEN, None);
    assert_eq!(st, 429, "{r}");
    // Memory holds for the session as a whole.
    let mut died = false;
    for _ in 0..6 {
        let (st, r) =
            ex("keep = globals().setdefault('keep', [])\nkeep.append(bytearray(40 << 20))");
        if st == 410 || r["error"]["name"] == "MemoryError" {
            died = true;
            break;
        }
    }
    assert!(died, "240 MiB kept under --memory 128M");
    // Delete: 204, then 410.
    let id2 = second["id"].as_str().unwrap();
    let (st, _) = call("DELETE", &format!("/v1/sessions/{id2}"), TOKEN, None);
    assert_eq!(st, 204);
    let (st, r) = call(
        "POST",
        &format!("/v1/sessions/{id2}/execute"),
        TOKEN,
        Some(json!({"code": "1"})),
    );
    assert_eq!(st, 410, "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .starts_with("session_expired")
    );
    // A crash ends the session: 410 with the reason.
    let (_, c) = call("POST", "/v1/sessions", TOKEN, None);
    let cid = c["id"].as_str().unwrap().to_string();
    let (st, r) = call(
        "POST",
        &format!("/v1/sessions/{cid}/execute"),
        TOKEN,
        Some(json!({"code": "import os; os._exit(3)"})),
    );
    assert_eq!(st, 410, "{r}");
    assert!(r["message"].as_str().unwrap().contains("status 3"), "{r}");
    // Idle past its timeout: gone, and its sandbox with it.
    let (st, c) = call(
        "POST",
        "/v1/sessions",
        TOKEN,
        Some(json!({"idle_timeout_s": 1})),
    );
    assert_eq!(st, 201, "{c}");
    let iid = c["id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(2500));
    let (st, _) = call(
        "POST",
        &format!("/v1/sessions/{iid}/execute"),
        TOKEN,
        Some(json!({"code": "1"})),
    );
    assert_eq!(st, 410);
    let t = Instant::now();
    while s.sessions().len() > 1 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "session sandboxes left: {:?}",
            s.sessions()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
});
