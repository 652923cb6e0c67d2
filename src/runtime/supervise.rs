//! Supervision of a started sandbox from pysandbox's single thread: pumps stdin into the
//! sandbox and its stdout/stderr out, enforces the wall-clock deadline (SIGTERM, then
//! SIGKILL after a grace), relays SIGINT/SIGTERM/SIGHUP/SIGQUIT sent to pysandbox, and
//! waits for the sandbox's init. One `poll` loop over pidfd, signalfd and the pipes.
//!
//! The sandbox never gets a host descriptor: a file or terminal fd could be re-opened
//! through `/proc/self/fd` with other flags (write to a file given as stdin) or used for
//! terminal ioctls. It gets pipes; pysandbox copies.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};

use super::capture::Capped;
use crate::report::Captured;
use nix::sys::signalfd::SignalFd;

/// The signals pysandbox relays to the sandbox (blocked in pysandbox for its whole run).
pub const RELAYED: &[Signal] = &[
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

pub fn relayed_set() -> SigSet {
    let mut s = SigSet::empty();
    for &sig in RELAYED {
        s.add(sig);
    }
    s
}

/// Where the sandbox's stdin comes from.
pub enum Input {
    /// A readable host descriptor (pysandbox's stdin or an opened file).
    Fd(OwnedFd),
    /// Nothing: the pipe is closed at once.
    None,
    /// These bytes, then end of file (a pool worker's claimed request).
    Bytes(Vec<u8>),
}

pub struct Supervisor {
    pub init_pid: i32,
    pub pidfd: OwnedFd,
    pub signals: SignalFd,
    pub input: Input,
    pub to_sandbox: Option<OwnedFd>,
    pub from_stdout: OwnedFd,
    /// `-i`: the sandbox's terminal, resized on SIGWINCH.
    pub resize: Option<OwnedFd>,
    pub from_stderr: OwnedFd,
    /// Where the streams go (pass-through or capture), capped.
    pub out_sink: Capped,
    pub err_sink: Capped,
    /// pysandbox's end of the init's status socket (lines, and the seccomp listener).
    pub status: OwnedFd,
    pub timeout: Duration,
    pub grace: Duration,
}

/// How supervision ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Supervised {
    /// Raw wait status of the sandbox's init.
    pub wait_status: i32,
    pub timed_out: bool,
    /// A relayed signal pysandbox received.
    pub interrupted: Option<Signal>,
    pub wall: Duration,
    /// Everything the init wrote on the status socket.
    pub status: Vec<u8>,
    /// Syscalls the seccomp filter refused (with `--seccomp-log`): each number once, in
    /// the order of its first refusal, with how often (bounded by the number of
    /// syscalls, however many refusals a script makes).
    pub refused: Vec<(i32, u64)>,
    pub stdout: Captured,
    pub stderr: Captured,
    /// User + system CPU of the init and every descendant it (or the kernel) reaped.
    pub cpu: Duration,
    /// Largest resident set among them, in bytes.
    pub max_rss: u64,
}

enum Phase {
    Running,
    /// SIGTERM sent; SIGKILL at the instant.
    Stopping(Instant),
    Killed,
}

const BUF: usize = 64 * 1024;
const PIPE_BUF: usize = libc::PIPE_BUF;

fn poll_timeout(until: Instant, now: Instant) -> libc::c_int {
    let ms = until.saturating_duration_since(now).as_millis();
    // Round up so we do not spin just before the deadline.
    (ms + 1).min(i32::MAX as u128) as libc::c_int
}

impl Supervisor {
    pub fn run(mut self, started: Instant) -> io::Result<Supervised> {
        let deadline = started + self.timeout;
        let mut phase = Phase::Running;
        let mut timed_out = false;
        let mut interrupted = None;
        let mut input_open = !matches!(self.input, Input::None);
        if !input_open {
            self.to_sandbox = None;
        }
        if let Some(fd) = &self.to_sandbox {
            set_nonblocking(fd.as_raw_fd())?;
        }
        let mut pending: Vec<u8> = match &mut self.input {
            Input::Bytes(b) => std::mem::take(b),
            _ => Vec::new(),
        };
        // Given bytes: the pipe closes once they are written (or at once if empty).
        let given = matches!(self.input, Input::Bytes(_));
        if given && pending.is_empty() {
            self.to_sandbox = None;
        }
        let mut out_open = true;
        let mut err_open = true;
        let mut out_writable = true;
        let mut err_writable = true;
        let mut buf = vec![0u8; BUF];
        let mut status_open = true;
        let mut status = Vec::new();
        let mut listener: Option<OwnedFd> = None;
        let mut refused = Vec::new();

        loop {
            let now = Instant::now();
            let wake = match phase {
                Phase::Running => deadline,
                Phase::Stopping(kill_at) => kill_at,
                Phase::Killed => now + Duration::from_secs(3600),
            };
            if now >= wake {
                match phase {
                    Phase::Running => {
                        timed_out = true;
                        self.signal_init(libc::SIGTERM);
                        phase = Phase::Stopping(now + self.grace);
                    }
                    Phase::Stopping(_) => {
                        self.signal_init(libc::SIGKILL);
                        phase = Phase::Killed;
                    }
                    Phase::Killed => {}
                }
                continue;
            }

            let mut fds: Vec<libc::pollfd> = Vec::with_capacity(6);
            let mut push = |fd: RawFd, events: libc::c_short| {
                fds.push(libc::pollfd {
                    fd,
                    events,
                    revents: 0,
                });
                fds.len() - 1
            };
            let i_pid = push(self.pidfd.as_raw_fd(), libc::POLLIN);
            let i_sig = push(self.signals.as_raw_fd(), libc::POLLIN);
            // A live pass-through sink must be writable first (see Capped::live_sink).
            let out_sink = out_open.then(|| self.out_sink.live_sink()).flatten();
            let err_sink = err_open.then(|| self.err_sink.live_sink()).flatten();
            let i_out_sink = out_sink.map(|fd| push(fd, libc::POLLOUT));
            let i_err_sink = err_sink.map(|fd| push(fd, libc::POLLOUT));
            // While a live sink is full, do not even wait on the pipe (it would spin).
            let i_out = (out_open && (out_sink.is_none() || out_writable))
                .then(|| push(self.from_stdout.as_raw_fd(), libc::POLLIN));
            let i_err = (err_open && (err_sink.is_none() || err_writable))
                .then(|| push(self.from_stderr.as_raw_fd(), libc::POLLIN));
            let i_in = match (&self.input, &self.to_sandbox) {
                (Input::Fd(fd), Some(_)) if input_open && pending.is_empty() => {
                    Some(push(fd.as_raw_fd(), libc::POLLIN))
                }
                _ => None,
            };
            let i_to = match &self.to_sandbox {
                Some(fd) if !pending.is_empty() => Some(push(fd.as_raw_fd(), libc::POLLOUT)),
                _ => None,
            };
            let i_status = status_open.then(|| push(self.status.as_raw_fd(), libc::POLLIN));
            let i_listen = listener.as_ref().map(|l| push(l.as_raw_fd(), libc::POLLIN));
            // SAFETY: fds is a valid array of pollfd for the duration of the call.
            let n = unsafe {
                libc::poll(
                    fds.as_mut_ptr(),
                    fds.len() as libc::nfds_t,
                    poll_timeout(wake, now),
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let ready = |i: usize| fds[i].revents != 0;

            if ready(i_sig) {
                while let Ok(Some(info)) = self.signals.read_signal() {
                    let sig = info.ssi_signo as libc::c_int;
                    if sig == libc::SIGWINCH {
                        if let Some(m) = &self.resize {
                            super::terminal::copy_size(m);
                        }
                        continue;
                    }
                    if let Ok(s) = Signal::try_from(sig) {
                        interrupted.get_or_insert(s);
                    }
                    match phase {
                        Phase::Running => {
                            self.signal_init(sig);
                            phase = Phase::Stopping(Instant::now() + self.grace);
                        }
                        _ => {
                            self.signal_init(libc::SIGKILL);
                            phase = Phase::Killed;
                        }
                    }
                }
            }
            // With a live sink, move at most PIPE_BUF bytes: POLLOUT promises no more.
            let sink_ok = |i: Option<usize>| i.is_none_or(|i| fds[i].revents != 0);
            out_writable = sink_ok(i_out_sink);
            err_writable = sink_ok(i_err_sink);
            if let Some(i) = i_out
                && ready(i)
                && sink_ok(i_out_sink)
            {
                let n = if i_out_sink.is_some() { PIPE_BUF } else { BUF };
                out_open = pump(&self.from_stdout, &mut buf[..n], &mut self.out_sink);
            }
            if let Some(i) = i_err
                && ready(i)
                && sink_ok(i_err_sink)
            {
                let n = if i_err_sink.is_some() { PIPE_BUF } else { BUF };
                err_open = pump(&self.from_stderr, &mut buf[..n], &mut self.err_sink);
            }
            if let (Some(i), Input::Fd(fd)) = (i_in, &self.input)
                && ready(i)
            {
                match read_fd(fd.as_raw_fd(), &mut buf) {
                    Ok(0) | Err(_) => {
                        input_open = false;
                        self.to_sandbox = None; // EOF for the script
                    }
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                }
            }
            if let (Some(i), Some(fd)) = (i_to, &self.to_sandbox)
                && ready(i)
            {
                // SAFETY: writing from a live buffer to our pipe end.
                let w =
                    unsafe { libc::write(fd.as_raw_fd(), pending.as_ptr().cast(), pending.len()) };
                if w > 0 {
                    pending.drain(..w as usize);
                    if given && pending.is_empty() {
                        self.to_sandbox = None; // EOF after the given bytes
                    }
                } else if w < 0 && io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock {
                    // The script closed its stdin: stop feeding it.
                    input_open = false;
                    pending.clear();
                    self.to_sandbox = None;
                }
            }
            if let Some(i) = i_status
                && ready(i)
            {
                match crate::sys::recv_with_fd(self.status.as_raw_fd(), &mut buf) {
                    Ok((0, _)) | Err(_) => status_open = false,
                    Ok((n, fd)) => {
                        status.extend_from_slice(&buf[..n]);
                        if fd.is_some() {
                            listener = fd;
                        }
                    }
                }
            }
            if let (Some(i), Some(l)) = (i_listen, &listener)
                && ready(i)
            {
                if fds[i].revents & libc::POLLIN != 0 {
                    match crate::seccomp::answer_one(l) {
                        Ok(Some(nr)) => count_refusal(&mut refused, nr),
                        Ok(None) => {}
                        Err(_) => listener = None,
                    }
                } else {
                    listener = None; // POLLHUP: no task left under the filter
                }
            }
            if ready(i_pid) {
                break;
            }
        }

        // The init is gone; the kernel has killed the rest of its pid namespace, so every
        // writer of the output pipes is gone too: drain them to EOF.
        self.to_sandbox = None;
        while out_open {
            out_open = pump(&self.from_stdout, &mut buf, &mut self.out_sink);
        }
        while err_open {
            err_open = pump(&self.from_stderr, &mut buf, &mut self.err_sink);
        }
        while status_open {
            match crate::sys::recv_with_fd(self.status.as_raw_fd(), &mut buf) {
                Ok((0, _)) | Err(_) => status_open = false,
                Ok((n, _)) => status.extend_from_slice(&buf[..n]),
            }
        }
        let mut wait_status: libc::c_int = 0;
        // SAFETY: zeroed rusage is a valid out-buffer.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: waiting for our own child, with valid out-pointers.
            let r = unsafe { libc::wait4(self.init_pid, &mut wait_status, 0, &mut ru) };
            if r >= 0 {
                break;
            }
            if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return Err(io::Error::last_os_error());
            }
        }
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        Ok(Supervised {
            wait_status,
            timed_out,
            interrupted,
            wall: started.elapsed(),
            status,
            refused,
            stdout: self.out_sink.finish(),
            stderr: self.err_sink.finish(),
            cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
            max_rss: ru.ru_maxrss as u64 * 1024,
        })
    }

    fn signal_init(&self, sig: libc::c_int) {
        // pidfd_send_signal: no pid-reuse race (the init is our unreaped child anyway).
        // SAFETY: plain syscall with a live pidfd.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: reading into a live buffer.
        let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Moves one chunk from `from` into `sink`. Returns whether `from` is still open.
fn pump(from: &OwnedFd, buf: &mut [u8], sink: &mut Capped) -> bool {
    match read_fd(from.as_raw_fd(), buf) {
        Ok(0) => false,
        Ok(n) => {
            sink.push(&buf[..n]);
            true
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
        Err(_) => false,
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a live descriptor.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// SIGKILLs the sandbox's init through its pidfd and reaps it.
pub fn kill_and_reap(pidfd: &OwnedFd, pid: i32) {
    // SAFETY: pidfd_send_signal on a live pidfd; waitpid on our own child.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

/// Adds one refusal of syscall `nr` to the tally.
fn count_refusal(tally: &mut Vec<(i32, u64)>, nr: i32) {
    match tally.iter_mut().find(|e| e.0 == nr) {
        Some(e) => e.1 = e.1.saturating_add(1),
        None => tally.push((nr, 1)),
    }
}
