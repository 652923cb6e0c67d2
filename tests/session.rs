//! Sessions through the library, as the test process's user (root, or an ordinary user:
//! the rootless path): state kept between
//! executions, E2B-shaped results, per-execution timeouts, crashes, limits that hold
//! across executions, concurrent sessions without cross-talk, and nothing left behind.

mod common;

use std::time::Duration;

use common::*;
use pysandbox::{Sandbox, Session, SessionError};

fn sandbox() -> Sandbox {
    Sandbox::with_helper(bin()).memory(256 << 20).pids(64)
}

fn open() -> Session {
    Session::open(&sandbox(), Duration::from_secs(120)).expect("session")
}

const T: Duration = Duration::from_secs(20);

#[test]
fn state_results_errors_and_files() {
    let mut s = open();
    let e = s.execute("x = 40\nprint('set')", T).unwrap();
    assert_eq!(e.logs.stdout, vec!["set\n"]);
    assert!(e.results.is_empty());
    assert_eq!(e.execution_count, 1);
    let e = s.execute("x += 2\nx", T).unwrap();
    assert_eq!(e.results.len(), 1, "{e:?}");
    assert_eq!(e.results[0]["text"], "42");
    assert_eq!(e.results[0]["is_main_result"], true);
    let e = s
        .execute("import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'print(\"child\")'])\nprint('err', file=sys.stderr)", T)
        .unwrap();
    assert_eq!(e.logs.stdout.concat(), "child\n");
    assert_eq!(e.logs.stderr.concat(), "err\n");
    let e = s
        .execute("def f():\n    raise ValueError('bad')\nf()", T)
        .unwrap();
    let err = e.error.unwrap();
    assert_eq!(
        (err.name.as_str(), err.value.as_str()),
        ("ValueError", "bad")
    );
    assert!(err.traceback.contains("in f"), "{}", err.traceback);
    // The code's stdin is empty: it cannot read the session's commands.
    let e = s.execute("input()", T).unwrap();
    assert_eq!(e.error.unwrap().name, "EOFError");
    // display() and rich reprs.
    let e = s
        .execute(
            "class H:\n    def _repr_html_(self): return '<b>h</b>'\ndisplay(H())\n7",
            T,
        )
        .unwrap();
    assert_eq!(e.results.len(), 2, "{e:?}");
    assert_eq!(e.results[0]["html"], "<b>h</b>");
    assert_eq!(e.results[1]["text"], "7");
    // Globals handed in.
    let mut g = serde_json::Map::new();
    g.insert("items".into(), serde_json::json!([1, 2, 3]));
    let e = s.execute_with("sum(items) + x", T, Some(&g)).unwrap();
    assert_eq!(e.results[0]["text"], "48");
    // Files in and out.
    s.put_file("data/in.txt", b"hello").unwrap();
    s.execute(
        "open('data/out.txt', 'w').write(open('data/in.txt').read().upper())",
        T,
    )
    .unwrap();
    assert_eq!(s.get_file("data/out.txt").unwrap(), b"HELLO");
    assert!(matches!(s.get_file("nope"), Err(SessionError::Refused(_))));
    assert!(s.is_alive());
    s.close();
}

#[test]
fn timeouts_interrupt_then_kill() {
    let mut s = open();
    s.execute("n = 1", T).unwrap();
    let e = s
        .execute("while True: pass", Duration::from_millis(500))
        .unwrap();
    assert_eq!(e.error.unwrap().name, "TimeoutError");
    let e = s.execute("n + 1", T).unwrap();
    assert_eq!(e.results[0]["text"], "2", "the session goes on");
    // Code that ignores the interrupt: the session is killed after the grace.
    let t = std::time::Instant::now();
    let r = s.execute(
        "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True: pass",
        Duration::from_millis(500),
    );
    assert!(matches!(r, Err(SessionError::Ended(_))), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(!s.is_alive());
    assert!(matches!(s.execute("1", T), Err(SessionError::Ended(_))));
}

#[test]
fn a_crash_ends_the_session_and_leaves_nothing() {
    let mut s = open();
    let marker = unique("sessioncrash");
    s.execute(&format!("m = '{marker}'"), T).unwrap();
    let r = s.execute("import os\nos._exit(3)", T);
    match r {
        Err(SessionError::Ended(why)) => assert!(why.contains("status 3"), "{why}"),
        other => panic!("{other:?}"),
    }
    drop(s);
    assert!(wait_gone(&marker, Duration::from_secs(10)).is_empty());
}

#[test]
fn memory_holds_across_executions() {
    let mut s = open();
    let mut failed = false;
    for _ in 0..8 {
        match s.execute(
            "keep = globals().setdefault('keep', [])\nkeep.append(bytearray(60 << 20))\nlen(keep)",
            T,
        ) {
            Ok(e) if e.error.is_some() => {
                assert_eq!(e.error.unwrap().name, "MemoryError");
                failed = true;
                break;
            }
            Ok(_) => {}
            Err(SessionError::Ended(why)) => {
                assert!(why.contains("memory") || why.contains("killed"), "{why}");
                failed = true;
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(failed, "480 MiB were kept under a 256 MiB limit");
}

#[test]
fn concurrent_sessions_never_cross_talk() {
    let handles: Vec<_> = (0..20)
        .map(|i| {
            std::thread::spawn(move || {
                let mut s = open();
                s.execute(&format!("mine = {i}"), T).unwrap();
                std::thread::sleep(Duration::from_millis(200));
                let e = s
                    .execute(
                        "import os\nprint(mine, len(os.listdir('/tmp')))\nmine * 2",
                        T,
                    )
                    .unwrap();
                assert_eq!(e.logs.stdout.concat(), format!("{i} 0\n"));
                assert_eq!(e.results[0]["text"], format!("{}", i * 2));
                s.execute("open('/tmp/x', 'w').write('1')", T).unwrap();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn a_forged_endless_answer_ends_the_session() {
    // The runner's answer channel is reachable from the code (same process): a hostile
    // cell writing an endless line must not grow the host side without bound.
    let mut s = open();
    let r = s.execute(
        "import os\nfor fd in range(3, 10):\n    try:\n        os.write(fd, b'{')\n        chunk = b'x' * (1 << 20)\n        for _ in range(80):\n            os.write(fd, chunk)\n    except OSError:\n        pass",
        T,
    );
    match r {
        Err(SessionError::Ended(why)) => assert!(why.contains("answer over"), "{why}"),
        other => panic!("{other:?}"),
    }
}
