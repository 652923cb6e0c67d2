//! The result of a run: one serde struct with a stable JSON shape, and the mapping from
//! a result to the command line's exit status. No I/O.

use serde::Serialize;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// The script exited 0.
    Ok,
    /// The script exited with another code.
    ExitNonzero,
    /// The script was killed by a signal.
    Signaled,
    /// The wall-clock limit was reached.
    Timeout,
    /// pysandbox could not run the script.
    SandboxError,
}

/// Exit status of `pysandbox run` on timeout (as GNU timeout).
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit status when pysandbox itself failed.
pub const EXIT_SANDBOX_ERROR: i32 = 125;

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub id: String,
    pub image: String,
    pub status: RunStatus,
    /// The script's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that killed the script, when one did.
    pub signal: Option<i32>,
    /// A signal pysandbox received and relayed (Ctrl-C, SIGTERM...).
    pub interrupted_by: Option<i32>,
    pub wall_ms: u64,
    /// Why pysandbox could not run the script (status `sandbox_error`).
    pub error: Option<String>,
    /// Syscalls the seccomp filter refused, with counts (`--seccomp-log`; else empty).
    pub seccomp_refused: Vec<Refusal>,
}

/// One refused syscall.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub syscall: String,
    pub count: u32,
}

impl Refusal {
    /// Counts syscall numbers, keeping the order of first refusal.
    pub fn tally(nrs: &[i32]) -> Vec<Refusal> {
        let mut out: Vec<(i32, u32)> = Vec::new();
        for &nr in nrs {
            match out.iter_mut().find(|e| e.0 == nr) {
                Some(e) => e.1 += 1,
                None => out.push((nr, 1)),
            }
        }
        out.into_iter()
            .map(|(nr, count)| Refusal {
                syscall: crate::seccomp::syscall_name(nr),
                count,
            })
            .collect()
    }
}

impl RunReport {
    /// The exit status of `pysandbox run`: the script's own; 128+N when killed by signal
    /// N (as a shell reports it); 124 on timeout; 125 when pysandbox failed.
    pub fn cli_exit_code(&self) -> i32 {
        match self.status {
            RunStatus::Ok => 0,
            RunStatus::ExitNonzero => self.exit_code.unwrap_or(1),
            RunStatus::Signaled => 128 + self.signal.unwrap_or(9),
            RunStatus::Timeout => EXIT_TIMEOUT,
            RunStatus::SandboxError => EXIT_SANDBOX_ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(status: RunStatus, exit_code: Option<i32>, signal: Option<i32>) -> RunReport {
        RunReport {
            id: "x".into(),
            image: "default".into(),
            status,
            exit_code,
            signal,
            interrupted_by: None,
            wall_ms: 1,
            error: None,
            seccomp_refused: Vec::new(),
        }
    }

    #[test]
    fn exit_codes() {
        assert_eq!(r(RunStatus::Ok, Some(0), None).cli_exit_code(), 0);
        assert_eq!(r(RunStatus::ExitNonzero, Some(3), None).cli_exit_code(), 3);
        assert_eq!(r(RunStatus::Signaled, None, Some(9)).cli_exit_code(), 137);
        assert_eq!(r(RunStatus::Timeout, None, None).cli_exit_code(), 124);
        assert_eq!(r(RunStatus::SandboxError, None, None).cli_exit_code(), 125);
    }
}
