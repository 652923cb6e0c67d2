//! The worker side of a pool: a `pysandbox run --pool-worker` process (single-threaded,
//! like every process that creates a sandbox) starts one sandbox whose interpreter runs
//! the bootstrap, says `ready` on stdout, takes one claim (a JSON line) on stdin, runs it
//! and prints the report. Its stdin closing before a claim (the pool is gone, or retired
//! the sandbox) ends it without a run.

use std::io::{self, BufRead, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};

use crate::claim::WireClaim;
use crate::policy::RunPolicy;
use crate::report::RunReport;
use crate::runtime::{self, Claim, Warm};

/// The largest claim line a worker reads (the server's body cap is far below).
const MAX_CLAIM: u64 = 256 << 20;

/// The worker's side of the pipes to its pool; `answered` once the report is out.
struct Stdio {
    answered: bool,
}

impl Stdio {
    /// The report, as one JSON line: the pool reads exactly one.
    fn answer(&mut self, report: &RunReport) {
        if let Ok(line) = serde_json::to_string(report) {
            let mut out = io::stdout().lock();
            self.answered = writeln!(out, "{line}").and_then(|()| out.flush()).is_ok();
        }
    }
}

impl Warm for Stdio {
    fn finished(&mut self, result: Result<&RunReport, &dyn std::fmt::Display>) {
        match result {
            Ok(r) => self.answer(r),
            Err(e) => self.answer(&RunReport::failed(e.to_string())),
        }
    }

    fn ready(&mut self) -> io::Result<()> {
        let mut out = io::stdout().lock();
        out.write_all(b"ready\n")?;
        out.flush()
    }

    fn claim(&mut self, sandbox: BorrowedFd<'_>) -> io::Result<Option<Claim>> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let stdin = io::stdin();
        loop {
            let mut fds = [
                PollFd::new(stdin.as_fd(), PollFlags::POLLIN),
                PollFd::new(sandbox, PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            if ready(&fds[1]) {
                return Ok(None); // died while idle
            }
            if ready(&fds[0]) {
                break;
            }
        }
        let mut line = Vec::new();
        stdin.lock().take(MAX_CLAIM).read_until(b'\n', &mut line)?;
        if line.is_empty() {
            return Ok(None);
        }
        let wire: WireClaim = serde_json::from_slice(&line)
            .map_err(|e| io::Error::other(format!("a malformed claim: {e}")))?;
        let d = wire
            .decode()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        Ok(Some(Claim {
            stdin: d.to_stdin,
            files: d.files,
            timeout: d.timeout,
        }))
    }
}

/// Runs this process as a pool worker for `policy` (whose script is the bootstrap):
/// prints the report (or, if the run never started, a failed report) as one JSON line as
/// soon as the run ends, before the teardown. Returns `pysandbox run`'s exit status.
pub fn run_worker(policy: &RunPolicy) -> i32 {
    let mut io = Stdio { answered: false };
    let result = runtime::prepare(policy)
        .map_err(crate::error::Error::from)
        .and_then(|prepared| {
            let image = crate::image::resolve(&policy.image)?;
            Ok(prepared.run_warm(&image, &mut io)?)
        });
    if !io.answered {
        // Failed before the sandbox existed (bad policy, bad image, host problem).
        match &result {
            Ok(r) => io.answer(r),
            Err(e) => io.answer(&RunReport::failed(e.to_string())),
        }
    }
    match result {
        Ok(r) => r.cli_exit_code(),
        Err(_) => crate::report::EXIT_SANDBOX_ERROR,
    }
}
