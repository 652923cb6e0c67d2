//! The run report from what supervision saw: the init's status line, the wait status,
//! whether the cgroup saw an OOM kill and whether the output folder filled up.

use std::io;

use super::{ResolvedImage, Status, supervise};
use crate::report::{Refusal, RunReport, RunStatus, SCHEMA_VERSION};

/// The report from what supervision saw, what the init reported, whether the cgroup saw
/// an OOM kill and whether the output folder filled up.
pub(super) fn make_report(
    id: &str,
    image: &ResolvedImage,
    supervised: &supervise::Supervised,
    status: Option<Status>,
    limits: crate::report::Limits,
    oom: bool,
    output_full: bool,
) -> RunReport {
    let ws = supervised.wait_status;
    let truncated = supervised.stdout.dropped_bytes > 0 || supervised.stderr.dropped_bytes > 0;
    let (mut status, exit_code, signal, error) = match status {
        _ if supervised.timed_out => (RunStatus::Timeout, None, None, None),
        Some(Status::Exited(0)) => (RunStatus::Ok, Some(0), None, None),
        Some(Status::Exited(c)) => (RunStatus::ExitNonzero, Some(c), None, None),
        Some(Status::Signaled(s)) => (RunStatus::Signaled, None, Some(s), None),
        Some(Status::ExecFailed(errno)) => (
            RunStatus::SandboxError,
            None,
            None,
            Some(format!(
                "the interpreter could not be started in the sandbox: {}",
                io::Error::from_raw_os_error(errno)
            )),
        ),
        Some(Status::SeccompFailed(errno)) => (
            RunStatus::SandboxError,
            None,
            None,
            Some(format!(
                "the seccomp filter could not be installed, so nothing ran: {}. Hint: the kernel needs CONFIG_SECCOMP_FILTER",
                io::Error::from_raw_os_error(errno)
            )),
        ),
        // No report from the init: it was killed (pysandbox's SIGKILL) or died early.
        None if libc::WIFSIGNALED(ws) => {
            (RunStatus::Signaled, None, Some(libc::WTERMSIG(ws)), None)
        }
        None => match libc::WEXITSTATUS(ws) {
            0 => (RunStatus::Ok, Some(0), None, None),
            c => (RunStatus::ExitNonzero, Some(c), None, None),
        },
    };
    // A kill by the cgroup's OOM killer is not a crash.
    if oom && status == RunStatus::Signaled && signal == Some(libc::SIGKILL) {
        status = RunStatus::Oom;
    }
    if (truncated || output_full) && matches!(status, RunStatus::Ok | RunStatus::ExitNonzero) {
        status = RunStatus::OutputLimit;
    }
    RunReport {
        schema: SCHEMA_VERSION,
        id: id.to_string(),
        image: image.name.clone(),
        image_digest: image.digest.clone(),
        status,
        exit_code,
        signal,
        interrupted_by: supervised.interrupted.map(|s| s as i32),
        stdout: supervised.stdout.clone(),
        stderr: supervised.stderr.clone(),
        wall_ms: supervised.wall.as_millis() as u64,
        cpu_ms: supervised.cpu.as_millis() as u64,
        max_rss_bytes: supervised.max_rss,
        limits,
        seccomp_refused: Refusal::tally(&supervised.refused),
        error,
        warnings: Vec::new(),
        network: None,
    }
}
