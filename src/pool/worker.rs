//! The worker side of a pool: a `pysandbox run --pool-worker` process (single-threaded,
//! like every process that creates a sandbox) starts one sandbox whose interpreter runs
//! the bootstrap, says `ready` on stdout, takes one claim (a JSON line) on stdin, runs it
//! and prints the report. Its stdin closing before a claim (the pool is gone, or retired
//! the sandbox) ends it without a run.

use std::io::{self, BufRead, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};

use super::wire::WireClaim;
use crate::policy::RunPolicy;
use crate::report::RunReport;
use crate::runtime::{self, Claim, Warm};

/// The largest claim line a worker reads (the server's body cap is far below).
const MAX_CLAIM: u64 = 256 << 20;

struct Stdio;

impl Warm for Stdio {
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

/// Runs this process as a pool worker for `policy` (whose script is the bootstrap).
pub fn run_worker(policy: &RunPolicy) -> Result<RunReport, crate::Error> {
    runtime::run_warm(policy, &mut Stdio)
}
