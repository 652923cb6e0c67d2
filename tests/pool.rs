//! The warm pool through the library, as the test process's user (root, or an ordinary
//! user: the rootless path): a pooled run is the
//! run `pysandbox run` would make, each sandbox is used once, the pool refills, replaces
//! sandboxes killed while idle, and leaves nothing behind.

mod common;

use std::time::Duration;

use common::*;
use pysandbox::report::RunStatus;
use pysandbox::{Pool, PoolConfig, RunRequest, Sandbox, WhenEmpty};

fn sandbox() -> Sandbox {
    Sandbox::with_helper(bin())
        .timeout(Duration::from_secs(20))
        .memory(256 << 20)
}

fn pool(size: usize) -> Pool {
    let p = Pool::new(
        sandbox(),
        PoolConfig {
            size,
            max_idle: Duration::from_secs(600),
            when_empty: WhenEmpty::Cold,
        },
    );
    assert!(
        p.wait_ready(size, Duration::from_secs(120)),
        "pool never filled: {:?}",
        p.last_error()
    );
    p
}

/// Scripts whose every visible effect must be the same warm and cold.
const SAME: &[&str] = &[
    "import sys, os\nprint(sys.argv, os.getcwd(), __name__, sys.path[0], sorted(k for k in globals() if not k.startswith('__')))",
    "import sys\nprint(sys.stdin.read().upper(), file=sys.stderr)\nsys.exit(3)",
    "def f():\n    1/0\nf()",
    "raise SystemExit('bye')",
    "import atexit\natexit.register(print, 'at exit')\nprint('body')",
    "import os\nprint(os.environ['T'], os.environ.get('PYTHONHASHSEED'), os.getuid(), os.environ['HOME'])",
    "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)",
    "print(__doc__, __spec__, __loader__.__name__ if hasattr(__loader__, '__name__') else __loader__)",
];

#[test]
fn pooled_runs_are_the_runs_pysandbox_run_makes() {
    let p = pool(2);
    let cold = sandbox();
    for code in SAME {
        let req = RunRequest::code(*code)
            .args(["a b", "-x"])
            .stdin("some input")
            .env("T", "t-value");
        let w = p.run(&req).unwrap();
        let c = cold.run(&req).unwrap();
        let what = format!("{code:?}\nwarm: {w:?}\ncold: {c:?}");
        assert_eq!(w.status, c.status, "{what}");
        assert_eq!(w.exit_code, c.exit_code, "{what}");
        assert_eq!(w.signal, c.signal, "{what}");
        assert_eq!(w.stdout.text, c.stdout.text, "{what}");
        assert_eq!(w.stderr.text, c.stderr.text, "{what}");
        assert_ne!(w.id, c.id);
        assert!(c.pool.is_none(), "{what}");
    }
    // A file among the request's files runs as `python FILE` would.
    let req = RunRequest::code("")
        .file("main.py", "import sys, os\nimport helper\nprint(__file__, sys.argv, sys.path[0], os.getcwd(), helper.X, open('data.txt').read())\n")
        .file("helper.py", "X = 42\n")
        .file("data.txt", "hello")
        .script("main.py")
        .args(["1"]);
    let w = p.run(&req).unwrap();
    assert_eq!(
        w.stdout.text,
        "/usr/app/src/main.py ['/usr/app/src/main.py', '1'] /usr/app/src /usr/app/src 42 hello\n",
        "{w:?}"
    );
    // The same request through Sandbox::run (a sandbox started for it).
    let c = cold.run(&req).unwrap();
    assert_eq!(c.stdout.text, w.stdout.text, "{c:?}");
    let s = p.stats();
    assert!(s.warm >= SAME.len() as u64, "{s:?}");
}

#[test]
fn each_interpreter_is_fresh_and_used_once() {
    let p = pool(2);
    let mut seen = std::collections::HashSet::new();
    let mut ids = std::collections::HashSet::new();
    for _ in 0..6 {
        let r = p
            .run(&RunRequest::code(
                "import random, os\nprint(hash('x'), random.random(), os.getpid())\nopen('/tmp/mark', 'x').write('1')",
            ))
            .unwrap();
        // /tmp/mark would exist (FileExistsError) if a sandbox were reused.
        assert_eq!(r.status, RunStatus::Ok, "{r:?}");
        assert!(
            seen.insert(r.stdout.text.clone()),
            "same state twice: {}",
            r.stdout.text
        );
        assert!(ids.insert(r.id.clone()));
        let pr = r.pool.expect("pool info");
        assert!(pr.waited_ms < 60_000);
    }
    // Startup variables need an interpreter started with them: still right, not warm.
    let r = p
        .run(&RunRequest::code("import sys; print(sys.flags.optimize)").env("PYTHONOPTIMIZE", "2"))
        .unwrap();
    assert_eq!(r.stdout.text, "2\n", "{r:?}");
    assert_eq!(r.pool.map(|x| x.warm), Some(false));
}

#[test]
fn claim_timeout_and_limits_hold() {
    let p = pool(1);
    let t = std::time::Instant::now();
    let r = p
        .run(&RunRequest::code("while True: pass").timeout(Duration::from_millis(700)))
        .unwrap();
    assert_eq!(r.status, RunStatus::Timeout, "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(r.limits.timeout_ms.value, Some(700.0), "{:?}", r.limits);
    p.wait_ready(1, Duration::from_secs(60));
    let r = p
        .run(&RunRequest::code("x = bytearray(600 << 20)"))
        .unwrap();
    assert!(
        matches!(r.status, RunStatus::Oom | RunStatus::ExitNonzero),
        "{r:?}"
    );
    p.wait_ready(1, Duration::from_secs(60));
    let r = p.run(&RunRequest::code("print('x' * (64 << 20))")).unwrap();
    assert!(
        r.stdout.total_bytes > r.stdout.text.len() as u64,
        "{:?}",
        r.stdout.total_bytes
    );
    // Bad requests are refused with the reason, and the pool goes on.
    let e = p.run(&RunRequest::code("a\0b")).unwrap();
    assert_eq!(e.status, RunStatus::SandboxError, "{e:?}");
    assert!(e.error.as_deref().unwrap_or("").contains("NUL"), "{e:?}");
    let e = p
        .run(&RunRequest::code("").file("../x.py", "1").script("../x.py"))
        .unwrap();
    assert!(
        e.error.as_deref().unwrap_or("").contains("plain relative"),
        "{e:?}"
    );
}

#[test]
fn sandboxes_killed_while_idle_are_replaced_and_nothing_is_left() {
    let marker = unique("poolkill");
    let p = Pool::new(
        sandbox().pids(77),
        PoolConfig {
            size: 2,
            max_idle: Duration::from_secs(600),
            when_empty: WhenEmpty::Wait(Duration::from_secs(60)),
        },
    );
    assert!(
        p.wait_ready(2, Duration::from_secs(120)),
        "{:?}",
        p.last_error()
    );
    // Kill this pool's interpreters from outside (other tests run pools at once).
    let workers = workers_with("--pids\u{0}77\u{0}");
    assert_eq!(workers.len(), 2, "{workers:?}");
    let mut killed = 0;
    for pid in processes_with("_pysandbox_bootstrap") {
        if ancestors(pid).iter().any(|a| workers.contains(a)) {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed += 1;
        }
    }
    assert!(killed >= 2, "found {killed} interpreters");
    std::thread::sleep(Duration::from_millis(300));
    let r = p
        .run(&RunRequest::code(format!("print('{marker}')")))
        .unwrap();
    assert_eq!(r.status, RunStatus::Ok, "{r:?}");
    assert_eq!(r.stdout.text, format!("{marker}\n"));
    assert!(p.stats().retired >= 1, "{:?}", p.stats());
    drop(p);
    // Dropping the pool ends its workers, and their sandboxes with them.
    let t = std::time::Instant::now();
    while !workers_with("--pids\u{0}77\u{0}").is_empty() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(workers_with("--pids\u{0}77\u{0}").is_empty());
    for w in workers {
        assert!(
            !std::path::Path::new(&format!("/proc/{w}")).exists(),
            "worker {w} left"
        );
    }
}

/// Pool workers whose command line contains `tag`.
fn workers_with(tag: &str) -> Vec<i32> {
    processes_with("--pool-worker")
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(tag))
                .unwrap_or(false)
        })
        .filter(not_a_holder)
        .collect()
}

/// The parent, grandparent... of `pid`.
fn ancestors(mut pid: i32) -> Vec<i32> {
    let mut v = Vec::new();
    while pid > 1 {
        let Ok(st) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            break;
        };
        let Some(pp) = st
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|v| v.trim().parse().ok())
        else {
            break;
        };
        v.push(pp);
        pid = pp;
    }
    v
}
