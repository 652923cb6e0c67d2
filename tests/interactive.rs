//! `run -i`: the Python REPL on a terminal of the sandbox's own, driven here through a
//! real pseudo-terminal (as a user's terminal emulator would): the prompt, an expression,
//! Ctrl-C interrupting a loop, Ctrl-Z doing nothing, window size changes, TERM, Ctrl-D
//! ending it with Python's status, and the terminal's modes restored afterwards, also after
//! a timeout and a SIGTERM to pysandbox. Without a terminal, -i is refused.

mod common;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::termios::{Termios, tcgetattr};

/// pysandbox running on the slave of a fresh pty (its controlling terminal, in a session
/// of its own); the test holds the master, as a terminal emulator does.
struct Terminal {
    master: OwnedFd,
    slave: OwnedFd,
    child: Child,
    seen: Vec<u8>,
}

fn modes(t: &Termios) -> String {
    format!(
        "{:?} {:?} {:?} {:?} {:?}",
        t.input_flags, t.output_flags, t.control_flags, t.local_flags, t.control_chars
    )
}

impl Terminal {
    fn start(who: Who, dir: &std::path::Path, args: &[&str]) -> Terminal {
        Terminal::start_with(who, dir, args, &[])
    }

    /// As [`Terminal::start`], with more environment variables for pysandbox.
    fn start_with(
        who: Who,
        dir: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Terminal {
        let pty = nix::pty::openpty(None, None).unwrap();
        let (master, slave) = (pty.master, pty.slave);
        let mut all = vec![("TERM", "xterm-test")];
        all.extend_from_slice(env);
        let mut cmd = command_with_env(who, dir, args, &all);
        let s = slave.as_raw_fd();
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave.try_clone().unwrap()));
        // SAFETY: only setsid and ioctl between fork and exec (async-signal-safe).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 || libc::ioctl(s, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        Terminal {
            master,
            slave,
            child,
            seen: Vec::new(),
        }
    }

    fn send(&self, bytes: &[u8]) {
        nix::unistd::write(&self.master, bytes).unwrap();
    }

    /// Reads until `pat` appears in what came after the last match; panics after 30 s.
    fn expect(&mut self, pat: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = String::from_utf8_lossy(&self.seen).into_owned();
            if let Some(i) = text.find(pat) {
                self.seen.drain(..i + pat.len());
                return text[..i + pat.len()].to_string();
            }
            assert!(Instant::now() < deadline, "no {pat:?} in {text:?}");
            if !self.pull(200) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn resize(&self, rows: u16, cols: u16) {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ from a valid winsize on our pty.
        unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }

    fn wait(&mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "pysandbox did not exit");
            // Keep the pty drained so the child never blocks on output.
            self.pull(0);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reads what the terminal has within `ms` milliseconds; whether anything came.
    fn pull(&mut self, ms: u16) -> bool {
        let mut buf = [0u8; 4096];
        let mut p = [nix::poll::PollFd::new(
            self.master.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if nix::poll::poll(&mut p, ms).unwrap_or(0) > 0
            && let Ok(n) = nix::unistd::read(self.master.as_raw_fd(), &mut buf)
            && n > 0
        {
            self.seen.extend_from_slice(&buf[..n]);
            return true;
        }
        false
    }
}

each_mode!(repl_on_a_real_terminal, |who| {
    let dir = workdir(who);
    let mut t = Terminal::start(who, dir.path(), &["run", "-i"]);
    let before = modes(&tcgetattr(t.slave.as_fd()).unwrap());
    t.expect(">>> ");
    // pysandbox's terminal is raw while the REPL runs: the slave echoes, not the host.
    let during = modes(&tcgetattr(t.slave.as_fd()).unwrap());
    assert_ne!(before, during, "the terminal is not in raw mode");
    t.send(b"6*7\r");
    t.expect("\r\n42\r\n>>> ");
    t.send(b"import os; print(os.environ['TERM'], os.getuid(), os.isatty(0))\r");
    t.expect("xterm-test 1000 True\r\n>>> ");
    t.resize(45, 123);
    std::thread::sleep(Duration::from_millis(300));
    t.send(b"print(os.get_terminal_size())\r");
    t.expect("columns=123, lines=45");
    t.expect(">>> ");
    // Ctrl-C reaches Python as KeyboardInterrupt; Ctrl-Z stops nothing.
    t.send(b"while True: pass\r\r");
    std::thread::sleep(Duration::from_millis(500));
    t.send(b"\x03");
    t.expect("KeyboardInterrupt");
    t.expect(">>> ");
    t.send(b"\x1a");
    t.send(b"print('still', 1+1)\r");
    t.expect("still 2\r\n>>> ");
    // TIOCSTI stays refused on the sandbox's terminal.
    t.send(b"import fcntl, termios\r");
    t.expect(">>> ");
    t.send(b"try: fcntl.ioctl(0, termios.TIOCSTI, b'x')\rexcept OSError as e: print('refused', e.errno)\r\r");
    t.expect("refused 1");
    t.expect(">>> ");
    // Ctrl-D: Python's own exit status, and the terminal as it was.
    t.send(b"\x04");
    assert_eq!(t.wait(), 0, "exit status after Ctrl-D");
    let after = modes(&tcgetattr(t.slave.as_fd()).unwrap());
    assert_eq!(before, after, "terminal modes not restored");
});

each_mode!(
    interactive_script_status_timeout_and_sigterm_restore_the_terminal,
    |who| {
        let dir = workdir(who);
        put(dir.path(), "t.py", "x = 41\n");
        // python -i SCRIPT: the script's names in the REPL, its exit status out.
        let mut t = Terminal::start(who, dir.path(), &["run", "-i", "t.py"]);
        let before = modes(&tcgetattr(t.slave.as_fd()).unwrap());
        t.expect(">>> ");
        t.send(b"x + 1\r");
        t.expect("42");
        t.send(b"raise SystemExit(7)\r");
        assert_eq!(t.wait(), 7);
        assert_eq!(before, modes(&tcgetattr(t.slave.as_fd()).unwrap()));
        // Timeout: 124, terminal restored.
        let mut t = Terminal::start(who, dir.path(), &["run", "-i", "--timeout", "2s"]);
        t.expect(">>> ");
        assert_eq!(t.wait(), 124);
        assert_eq!(before, modes(&tcgetattr(t.slave.as_fd()).unwrap()));
        // SIGTERM to pysandbox: relayed, the run ends, terminal restored.
        let mut t = Terminal::start(who, dir.path(), &["run", "-i"]);
        t.expect(">>> ");
        // SAFETY: signalling our own child (setpriv/unshare exec into pysandbox: same pid).
        unsafe { libc::kill(t.child.id() as i32, libc::SIGTERM) };
        let code = t.wait();
        assert_ne!(code, 0, "SIGTERM");
        assert_eq!(before, modes(&tcgetattr(t.slave.as_fd()).unwrap()));
    }
);

each_mode!(repl_from_a_kept_run, |who| {
    let dir = workdir(who);
    let data = private_data_home(dir.path());
    let env = [("XDG_DATA_HOME", data.as_str())];
    let code = "open('/tmp/state.txt', 'w').write('from the kept run')";
    let o = command_with_env(who, dir.path(), &["run", "--keep", "--code", code], &env)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_code(&o, 0, "run --keep");
    let id = kept_id(&o);
    let mut t = Terminal::start_with(who, dir.path(), &["run", "--from", &id, "-i"], &env);
    t.expect(">>> ");
    t.send(b"print(open('/tmp/state.txt').read())\r");
    t.expect("from the kept run\r\n>>> ");
    t.send(b"\x04");
    assert_eq!(t.wait(), 0);
});

#[test]
fn interactive_needs_a_terminal() {
    let who = me();
    let dir = workdir(who);
    for (args, expect) in [
        (vec!["run", "-i"], "-i needs a terminal"),
        (
            vec!["run", "-i", "--json"],
            "-i cannot be combined with --json",
        ),
        (
            vec!["run", "-i", "-"],
            "-i cannot read the script from stdin",
        ),
    ] {
        let o = run_in(who, dir.path(), &args, b"print(1)\n");
        assert_refused(&o, &format!("{args:?}"), expect);
    }
}
