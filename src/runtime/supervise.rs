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

/// The loop's state: what is still open, what waits to be written, what came back.
struct Loop {
    deadline: Instant,
    phase: Phase,
    timed_out: bool,
    interrupted: Option<Signal>,
    input_open: bool,
    /// Bytes for the sandbox's stdin, read or given, not yet written.
    pending: Vec<u8>,
    /// `Input::Bytes`: the pipe closes once they are written.
    given: bool,
    out_open: bool,
    err_open: bool,
    /// The pipe had bytes at the last poll, read once the live sink can take them.
    out_waiting: bool,
    err_waiting: bool,
    buf: Vec<u8>,
    status_open: bool,
    status: Vec<u8>,
    /// The seccomp listener the init sent on the status socket (`--seccomp-log`).
    listener: Option<OwnedFd>,
    refused: Vec<(i32, u64)>,
}

/// One poll: the array, and where each descriptor stands in it (`None`: not polled).
struct PollSet {
    fds: Vec<libc::pollfd>,
    pid: usize,
    sig: usize,
    out_sink: Option<usize>,
    err_sink: Option<usize>,
    out: Option<usize>,
    err: Option<usize>,
    input: Option<usize>,
    to_sandbox: Option<usize>,
    status: Option<usize>,
    listener: Option<usize>,
}

impl PollSet {
    /// Waits until a descriptor is ready or `wake`; false when a signal interrupted it.
    fn wait(&mut self, wake: Instant, now: Instant) -> io::Result<bool> {
        // SAFETY: fds is a valid array of pollfd for the duration of the call.
        let n = unsafe {
            libc::poll(
                self.fds.as_mut_ptr(),
                self.fds.len() as libc::nfds_t,
                poll_timeout(wake, now),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(e);
        }
        Ok(true)
    }

    fn ready(&self, i: usize) -> bool {
        self.fds[i].revents != 0
    }

    fn ready_at(&self, i: Option<usize>) -> bool {
        i.is_some_and(|i| self.ready(i))
    }
}

impl Supervisor {
    pub fn run(mut self, started: Instant) -> io::Result<Supervised> {
        let mut l = self.start(started)?;
        loop {
            let now = Instant::now();
            let Some(wake) = self.enforce_deadline(&mut l, now) else {
                continue;
            };
            let mut p = self.poll_set(&l);
            if !p.wait(wake, now)? {
                continue;
            }
            if p.ready(p.sig) {
                self.relay_signals(&mut l);
            }
            self.pump_outputs(&mut l, &p);
            self.read_input(&mut l, &p);
            self.write_input(&mut l, &p);
            self.read_status(&mut l, &p);
            self.answer_seccomp(&mut l, &p);
            if p.ready(p.pid) {
                break;
            }
        }
        self.drain(&mut l);
        let (wait_status, ru) = self.reap()?;
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        Ok(Supervised {
            wait_status,
            timed_out: l.timed_out,
            interrupted: l.interrupted,
            wall: started.elapsed(),
            status: l.status,
            refused: l.refused,
            stdout: self.out_sink.finish(),
            stderr: self.err_sink.finish(),
            cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
            max_rss: ru.ru_maxrss as u64 * 1024,
        })
    }

    /// The loop's first state; readies the sandbox's stdin pipe.
    fn start(&mut self, started: Instant) -> io::Result<Loop> {
        let input_open = !matches!(self.input, Input::None);
        if !input_open {
            self.to_sandbox = None;
        }
        if let Some(fd) = &self.to_sandbox {
            set_nonblocking(fd.as_raw_fd())?;
        }
        let pending: Vec<u8> = match &mut self.input {
            Input::Bytes(b) => std::mem::take(b),
            _ => Vec::new(),
        };
        // Given bytes: the pipe closes once they are written (or at once if empty).
        let given = matches!(self.input, Input::Bytes(_));
        if given && pending.is_empty() {
            self.to_sandbox = None;
        }
        Ok(Loop {
            deadline: started + self.timeout,
            phase: Phase::Running,
            timed_out: false,
            interrupted: None,
            input_open,
            pending,
            given,
            out_open: true,
            err_open: true,
            out_waiting: false,
            err_waiting: false,
            buf: vec![0u8; BUF],
            status_open: true,
            status: Vec::new(),
            listener: None,
            refused: Vec::new(),
        })
    }

    /// The instant the loop must wake at; `None` when it had come: the deadline sends
    /// SIGTERM, the grace after it (or after a relayed signal) SIGKILL.
    fn enforce_deadline(&self, l: &mut Loop, now: Instant) -> Option<Instant> {
        let wake = match l.phase {
            Phase::Running => l.deadline,
            Phase::Stopping(kill_at) => kill_at,
            Phase::Killed => now + Duration::from_secs(3600),
        };
        if now < wake {
            return Some(wake);
        }
        match l.phase {
            Phase::Running => {
                l.timed_out = true;
                self.signal_init(libc::SIGTERM);
                l.phase = Phase::Stopping(now + self.grace);
            }
            Phase::Stopping(_) => {
                self.signal_init(libc::SIGKILL);
                l.phase = Phase::Killed;
            }
            Phase::Killed => {}
        }
        None
    }

    /// What to wait on now.
    fn poll_set(&self, l: &Loop) -> PollSet {
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(6);
        let mut push = |fd: RawFd, events: libc::c_short| {
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
            fds.len() - 1
        };
        let pid = push(self.pidfd.as_raw_fd(), libc::POLLIN);
        let sig = push(self.signals.as_raw_fd(), libc::POLLIN);
        // With a live pass-through sink (see Capped::live_sink), wait on one side at a
        // time: on the pipe until it has bytes, then on the sink until it can take them.
        // Waiting on both would spin: a terminal or a pipe with room is writable at once.
        let out_sink = l.out_open.then(|| self.out_sink.live_sink()).flatten();
        let err_sink = l.err_open.then(|| self.err_sink.live_sink()).flatten();
        let i_out_sink = out_sink
            .filter(|_| l.out_waiting)
            .map(|fd| push(fd, libc::POLLOUT));
        let i_err_sink = err_sink
            .filter(|_| l.err_waiting)
            .map(|fd| push(fd, libc::POLLOUT));
        let out = (l.out_open && i_out_sink.is_none())
            .then(|| push(self.from_stdout.as_raw_fd(), libc::POLLIN));
        let err = (l.err_open && i_err_sink.is_none())
            .then(|| push(self.from_stderr.as_raw_fd(), libc::POLLIN));
        let input = match (&self.input, &self.to_sandbox) {
            (Input::Fd(fd), Some(_)) if l.input_open && l.pending.is_empty() => {
                Some(push(fd.as_raw_fd(), libc::POLLIN))
            }
            _ => None,
        };
        let to_sandbox = match &self.to_sandbox {
            Some(fd) if !l.pending.is_empty() => Some(push(fd.as_raw_fd(), libc::POLLOUT)),
            _ => None,
        };
        let status = l
            .status_open
            .then(|| push(self.status.as_raw_fd(), libc::POLLIN));
        let listener = l
            .listener
            .as_ref()
            .map(|fd| push(fd.as_raw_fd(), libc::POLLIN));
        PollSet {
            fds,
            pid,
            sig,
            out_sink: i_out_sink,
            err_sink: i_err_sink,
            out,
            err,
            input,
            to_sandbox,
            status,
            listener,
        }
    }

    /// Signals sent to pysandbox: SIGWINCH resizes `-i`'s terminal; the relayed ones go to
    /// the init (SIGKILL once it is stopping), which then has the grace to exit.
    fn relay_signals(&mut self, l: &mut Loop) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            let sig = info.ssi_signo as libc::c_int;
            if sig == libc::SIGWINCH {
                if let Some(m) = &self.resize {
                    super::terminal::copy_size(m);
                }
                continue;
            }
            if let Ok(s) = Signal::try_from(sig) {
                l.interrupted.get_or_insert(s);
            }
            match l.phase {
                Phase::Running => {
                    self.signal_init(sig);
                    l.phase = Phase::Stopping(Instant::now() + self.grace);
                }
                _ => {
                    self.signal_init(libc::SIGKILL);
                    l.phase = Phase::Killed;
                }
            }
        }
    }

    /// The sandbox's stdout and stderr into their sinks, after a poll that waited on
    /// each one's pipe or (`waiting`) on its live sink.
    fn pump_outputs(&mut self, l: &mut Loop, p: &PollSet) {
        let streams = [
            (&self.from_stdout, &mut self.out_sink, p.out, p.out_sink),
            (&self.from_stderr, &mut self.err_sink, p.err, p.err_sink),
        ];
        let states = [
            (&mut l.out_waiting, &mut l.out_open),
            (&mut l.err_waiting, &mut l.err_open),
        ];
        for ((from, sink, pipe, live), (waiting, open)) in streams.into_iter().zip(states) {
            if live.is_some() {
                // The sink can take PIPE_BUF bytes (all POLLOUT promises): move at most that.
                if p.ready_at(live) {
                    *waiting = false;
                    *open = pump(from, &mut l.buf[..PIPE_BUF], sink);
                }
            } else if p.ready_at(pipe) {
                match sink.live_sink() {
                    Some(_) => *waiting = true, // the next poll waits on the sink
                    None => *open = pump(from, &mut l.buf, sink),
                }
            }
        }
    }

    /// Reads the host's input (an `Input::Fd`) into `pending`; at its end, the script's
    /// stdin ends too.
    fn read_input(&mut self, l: &mut Loop, p: &PollSet) {
        if let Input::Fd(fd) = &self.input
            && p.ready_at(p.input)
        {
            match read_fd(fd.as_raw_fd(), &mut l.buf) {
                Ok(0) | Err(_) => {
                    l.input_open = false;
                    self.to_sandbox = None; // EOF for the script
                }
                Ok(n) => l.pending.extend_from_slice(&l.buf[..n]),
            }
        }
    }

    /// Writes what `pending` holds into the sandbox's stdin pipe.
    fn write_input(&mut self, l: &mut Loop, p: &PollSet) {
        if let Some(fd) = &self.to_sandbox
            && p.ready_at(p.to_sandbox)
        {
            // SAFETY: writing from a live buffer to our pipe end.
            let w =
                unsafe { libc::write(fd.as_raw_fd(), l.pending.as_ptr().cast(), l.pending.len()) };
            if w > 0 {
                l.pending.drain(..w as usize);
                if l.given && l.pending.is_empty() {
                    self.to_sandbox = None; // EOF after the given bytes
                }
            } else if w < 0 && io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock {
                // The script closed its stdin: stop feeding it.
                l.input_open = false;
                l.pending.clear();
                self.to_sandbox = None;
            }
        }
    }

    /// The init's status lines, and the seccomp listener when it sends one.
    fn read_status(&mut self, l: &mut Loop, p: &PollSet) {
        if p.ready_at(p.status) {
            match crate::sys::recv_with_fd(self.status.as_raw_fd(), &mut l.buf) {
                Ok((0, _)) | Err(_) => l.status_open = false,
                Ok((n, fd)) => {
                    l.status.extend_from_slice(&l.buf[..n]);
                    if fd.is_some() {
                        l.listener = fd;
                    }
                }
            }
        }
    }

    /// Answers one refused syscall on the seccomp listener, and counts it.
    fn answer_seccomp(&mut self, l: &mut Loop, p: &PollSet) {
        if let (Some(i), Some(fd)) = (p.listener, &l.listener)
            && p.ready(i)
        {
            if p.fds[i].revents & libc::POLLIN != 0 {
                match crate::seccomp::answer_one(fd) {
                    Ok(Some(nr)) => count_refusal(&mut l.refused, nr),
                    Ok(None) => {}
                    Err(_) => l.listener = None,
                }
            } else {
                l.listener = None; // POLLHUP: no task left under the filter
            }
        }
    }

    /// The init is gone; the kernel has killed the rest of its pid namespace, so every
    /// writer of the output pipes is gone too: drain them to EOF.
    fn drain(&mut self, l: &mut Loop) {
        self.to_sandbox = None;
        while l.out_open {
            l.out_open = pump(&self.from_stdout, &mut l.buf, &mut self.out_sink);
        }
        while l.err_open {
            l.err_open = pump(&self.from_stderr, &mut l.buf, &mut self.err_sink);
        }
        while l.status_open {
            match crate::sys::recv_with_fd(self.status.as_raw_fd(), &mut l.buf) {
                Ok((0, _)) | Err(_) => l.status_open = false,
                Ok((n, _)) => l.status.extend_from_slice(&l.buf[..n]),
            }
        }
    }

    /// Reaps the init: its wait status, and the resources it and its reaped descendants
    /// used.
    fn reap(&self) -> io::Result<(libc::c_int, libc::rusage)> {
        let mut wait_status: libc::c_int = 0;
        // SAFETY: zeroed rusage is a valid out-buffer.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: waiting for our own child, with valid out-pointers.
            let r = unsafe { libc::wait4(self.init_pid, &mut wait_status, 0, &mut ru) };
            if r >= 0 {
                return Ok((wait_status, ru));
            }
            if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return Err(io::Error::last_os_error());
            }
        }
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
