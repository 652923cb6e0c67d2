//! Limits that hold, a report that tells the truth, and the library API: OOM, floods,
//! tmpfs and output caps, the JSON report against its published schema, and 50 parallel
//! runs through the library.

#[macro_use]
mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Runs `body` as t.py with `--json` and returns the parsed report.
fn json_run(who: Who, body: &str, extra: &[&str]) -> (Value, std::process::Output) {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let (o, _d) = run_script(who, body, &args);
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not a JSON report ({e}):\n{}\n{}", stdout(&o), stderr(&o)));
    validate(&v);
    (v, o)
}

fn validate(report: &Value) {
    let schema = common::schema::load("report-v1.json");
    common::schema::check(report, &schema, &schema, "report");
}

each_mode!(json_report_matches_the_schema, |who| {
    let (v, o) = json_run(
        who,
        "import sys\nprint('hello')\nprint('oops', file=sys.stderr)\nsys.exit(4)\n",
        &[],
    );
    assert_code(&o, 4, "json run");
    assert_eq!(v["status"], "exit_nonzero");
    assert_eq!(v["exit_code"], 4);
    assert_eq!(v["stdout"]["text"], "hello\n");
    assert_eq!(v["stderr"]["text"], "oops\n");
    assert!(v["wall_ms"].as_u64().unwrap() > 0);
    assert!(v["max_rss_bytes"].as_u64().unwrap() > 1 << 20);
    assert_eq!(v["limits"]["timeout_ms"]["mechanism"], "wall_clock");
    let mem = v["limits"]["memory_bytes"]["mechanism"].as_str().unwrap();
    match who {
        Who::Root => assert_eq!(mem, "cgroup_v1"),
        _ => assert_eq!(mem, "rlimit"),
    }
    // docker-python-sandbox's result is derivable: stdout, stderr, isError, timedOut.
    assert_ne!(v["status"], "ok");
    assert_ne!(v["status"], "timeout");
    // Even a failure to start is a report.
    let dir = workdir(who);
    let o = run_in(who, dir.path(), &["run", "--json", "missing.py"], b"");
    assert_code(&o, 125, "missing script");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    validate(&v);
    assert_eq!(v["status"], "sandbox_error");
    assert!(v["error"].as_str().unwrap().contains("missing.py"));
});

each_mode!(memory_limit_oom, |who| {
    let (v, o) = json_run(
        who,
        "x = []\nwhile True:\n    x.append(bytearray(16 << 20))\n",
        &["--memory", "96M"],
    );
    if who == Who::Root {
        // A cgroup kill is reported as such: status oom, exit 137, never a crash.
        assert_eq!(v["status"], "oom", "{v}");
        assert_code(&o, 137, "oom");
    } else {
        // RLIMIT_AS: the allocation fails inside Python (MemoryError), no kill.
        assert_eq!(v["status"], "exit_nonzero", "{v}");
        assert!(
            v["stderr"]["text"]
                .as_str()
                .unwrap()
                .contains("MemoryError"),
            "{v}"
        );
    }
    assert!(v["max_rss_bytes"].as_u64().unwrap() < 200 << 20, "{v}");
});

each_mode!(statuses_are_distinct, |who| {
    let (v, o) = json_run(who, "import time; time.sleep(30)", &["--timeout", "500ms"]);
    assert_eq!(v["status"], "timeout");
    assert_code(&o, 124, "timeout");
    let (v, o) = json_run(
        who,
        "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)",
        &[],
    );
    assert_eq!(v["status"], "signaled");
    assert_eq!(v["signal"], libc::SIGSEGV);
    assert_code(&o, 128 + libc::SIGSEGV, "segv");
    let (v, o) = json_run(who, "pass", &[]);
    assert_eq!(v["status"], "ok");
    assert_code(&o, 0, "ok");
});

each_mode!(flood_is_capped_and_pysandbox_stays_small, |who| {
    // 1 GiB on stdout: pysandbox keeps 1 MiB (head and tail), counts the rest, never
    // blocks the script, and its own memory stays small.
    let dir = workdir(who);
    put(
        dir.path(),
        "t.py",
        "import sys\nb = b'x' * (1 << 20)\nsys.stdout.buffer.write(b'HEAD')\nfor _ in range(1024):\n    sys.stdout.buffer.write(b)\nsys.stdout.buffer.write(b'TAIL')\n",
    );
    // Reaped below with wait4, which also gives pysandbox's own resource usage.
    #[allow(clippy::zombie_processes)]
    let mut child = command(
        who,
        dir.path(),
        &[
            "run",
            "--json",
            "--max-output",
            "1M",
            "--timeout",
            "60s",
            "t.py",
        ],
    )
    .stdout(std::process::Stdio::piped())
    .stdin(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let out = {
        let mut s = child.stdout.take().unwrap();
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut s, &mut v).unwrap();
        v
    };
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out-buffer; waiting for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    let v: Value = serde_json::from_slice(&out).unwrap();
    validate(&v);
    let so = &v["stdout"];
    let total = (1u64 << 30) + 8;
    assert_eq!(so["total_bytes"], total);
    assert_eq!(so["dropped_bytes"].as_u64().unwrap() + (1 << 20), total);
    let text = so["text"].as_str().unwrap();
    assert!(text.starts_with("HEAD") && text.ends_with("TAIL"));
    assert_eq!(v["status"], "output_limit");
    // ru_maxrss is in KiB. pysandbox's own resident set (setpriv/unshare exec into it).
    assert!(
        ru.ru_maxrss < 64 * 1024,
        "pysandbox grew to {} KiB",
        ru.ru_maxrss
    );
});

each_mode!(pass_through_cap_keeps_head_and_tail, |who| {
    let (o, _d) = run_script(
        who,
        "import sys\nsys.stdout.write('A' * 1000 + 'B' * 5000 + 'C' * 1000)\n",
        &["--max-output", "2000"],
    );
    assert_code(&o, 0, "capped");
    let out = stdout(&o);
    assert!(out.starts_with(&"A".repeat(1000)), "{out}");
    assert!(out.ends_with(&"C".repeat(1000)), "{out}");
    assert!(out.contains("5000 bytes dropped"), "{out}");
});

each_mode!(tmpfs_and_output_are_capped, |who| {
    let body = r#"
import os
def fill(path, limit_mb):
    n = 0
    try:
        with open(path, 'wb') as f:
            for _ in range(limit_mb):
                f.write(b'x' * (1 << 20)); f.flush(); n += 1
    except OSError as e:
        return n, e.errno
    return n, 0
print('tmp', *fill('/tmp/fill', 400))
print('shm', *fill('/dev/shm/fill', 400))
print('out', *fill('output/fill', 400))
"#;
    let (v, o) = json_run(who, body, &["--memory", "256M", "--output-limit", "8M"]);
    let text = v["stdout"]["text"].as_str().unwrap().to_string();
    let get = |k: &str| -> (u64, i64) {
        let l = text
            .lines()
            .find(|l| l.starts_with(k))
            .unwrap_or_else(|| panic!("{k}: {text}\n{}", stderr(&o)));
        let f: Vec<&str> = l.split_whitespace().collect();
        (f[1].parse().unwrap(), f[2].parse().unwrap())
    };
    // /tmp is half the memory limit, /dev/shm a quarter: both end in ENOSPC.
    let (tmp, e1) = get("tmp");
    let (shm, e2) = get("shm");
    let (out, e3) = get("out");
    assert!(tmp <= 128 && e1 == libc::ENOSPC as i64, "{text}");
    assert!(shm <= 64 && e2 == libc::ENOSPC as i64, "{text}");
    assert!(out <= 8 && e3 == libc::ENOSPC as i64, "{text}");
    assert_eq!(v["status"], "output_limit", "{v}");
});

each_mode!(strict_limits, |who| {
    let (o, _d) = run_script(who, "print('ran')", &["--strict-limits"]);
    if who == Who::Root {
        assert_code(&o, 0, "strict as root");
        assert_eq!(stdout(&o), "ran\n");
    } else {
        // Memory can only be approximated with rlimits: refused, nothing ran.
        assert_code(&o, 125, "strict rootless");
        assert!(stderr(&o).contains("--strict-limits"), "{}", stderr(&o));
        assert!(stdout(&o).is_empty());
    }
});

#[test]
fn cpus_quota_as_root() {
    if !available(Who::Root) {
        return;
    }
    let (v, _o) = json_run(
        Who::Root,
        "import time, threading\ndef spin():\n    t = time.time()\n    while time.time() - t < 1.5: pass\nts = [threading.Thread(target=spin) for _ in range(2)]\n[t.start() for t in ts]; [t.join() for t in ts]\n",
        &["--cpus", "0.5"],
    );
    assert_eq!(v["limits"]["cpus"]["mechanism"], "cgroup_v1");
    let cpu = v["cpu_ms"].as_u64().unwrap() as f64;
    let wall = v["wall_ms"].as_u64().unwrap() as f64;
    // Two spinning threads, half a CPU: about 0.5 CPU-seconds per second.
    assert!(
        cpu < wall * 0.75,
        "cpu {cpu} ms in {wall} ms: quota not applied"
    );
}

#[test]
fn library_runs_fifty_in_parallel_without_cross_talk() {
    // The library API from many threads at once: unique ids, no cross-talk, no hang, no
    // leftovers.
    let sandbox = pysandbox::Sandbox::with_helper(bin())
        .timeout(Duration::from_secs(60))
        .memory(128 << 20);
    let t = Instant::now();
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let sb = sandbox.clone();
            std::thread::spawn(move || {
                let req = pysandbox::RunRequest::code(
                    "import sys, os\ntoken = sys.argv[1]\nprint(token, sys.stdin.read(), os.environ['T'])\n",
                )
                .args([format!("arg{i}")])
                .stdin(format!("in{i}"))
                .env("T", format!("env{i}"));
                (i, sb.run(&req))
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for h in handles {
        let (i, r) = h.join().unwrap();
        let r = r.unwrap_or_else(|e| panic!("run {i}: {e}"));
        assert_eq!(r.status, pysandbox::report::RunStatus::Ok, "run {i}: {r:?}");
        assert_eq!(r.stdout.text, format!("arg{i} in{i} env{i}\n"));
        assert!(ids.insert(r.id.clone()), "duplicate id {}", r.id);
    }
    assert!(
        t.elapsed() < Duration::from_secs(120),
        "took {:?}",
        t.elapsed()
    );
    // Nothing left: no lock of a dead run, no sandbox process.
    for e in std::fs::read_dir(process_locks_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let f = std::fs::OpenOptions::new().write(true).open(e.path());
        if let Ok(f) = f {
            // SAFETY: flock on a live descriptor.
            let free = unsafe {
                libc::flock(
                    std::os::fd::AsRawFd::as_raw_fd(&f),
                    libc::LOCK_EX | libc::LOCK_NB,
                ) == 0
            };
            assert!(
                !free || !e.path().exists(),
                "stale lock {}",
                e.path().display()
            );
        }
    }
}

#[test]
fn library_large_source_and_errors() {
    let sandbox = pysandbox::Sandbox::with_helper(bin());
    // Larger than an argv string may be: goes through a file.
    let big = format!("x = '{}'\nprint(len(x))\n", "y".repeat(200 * 1024));
    let r = sandbox.run(&pysandbox::RunRequest::code(big)).unwrap();
    assert_eq!(r.stdout.text, format!("{}\n", 200 * 1024));
    let missing = pysandbox::Sandbox::with_helper("/nonexistent/pysandbox");
    assert!(missing.run(&pysandbox::RunRequest::code("pass")).is_err());
}

each_mode!(output_merge_never_follows_host_symlinks, |who| {
    // A symlink in the host's output folder pointing outside: whatever the script does
    // with that name, the merge must not write through it.
    let dir = workdir(who);
    let outside = workdir(who);
    let out = dir.path().join("output");
    std::fs::create_dir(&out).unwrap();
    std::os::unix::fs::symlink(outside.path(), out.join("evil")).unwrap();
    std::os::unix::fs::symlink(outside.path(), out.join("evil2")).unwrap();
    let m = std::fs::metadata(dir.path()).unwrap();
    for p in [&out, &out.join("evil"), &out.join("evil2")] {
        std::os::unix::fs::lchown(p, Some(std::os::unix::fs::MetadataExt::uid(&m)), None).unwrap();
    }
    put(
        dir.path(),
        "t.py",
        "import os\nos.remove('output/evil')\nos.mkdir('output/evil')\nopen('output/evil/f', 'w').write('x')\nos.remove('output/evil2')\nopen('output/evil2', 'w').write('y')\n",
    );
    let o = run_in(who, dir.path(), &["run", "t.py"], b"");
    assert_code(&o, 0, "script replacing host symlinks");
    assert!(
        std::fs::read_dir(outside.path()).unwrap().next().is_none(),
        "wrote outside"
    );
    assert!(
        std::fs::symlink_metadata(out.join("evil"))
            .unwrap()
            .is_dir()
    );
    assert_eq!(std::fs::read_to_string(out.join("evil/f")).unwrap(), "x");
    assert!(
        std::fs::symlink_metadata(out.join("evil2"))
            .unwrap()
            .is_file()
    );
});
