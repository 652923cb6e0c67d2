//! The result of a run: one serde struct with a stable, versioned JSON shape (`--json`,
//! the library API), and the mapping from a result to the command line's exit status.
//! No I/O. The schema is documented in README.md ("JSON report") and checked by a test.

use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change of the JSON shape.
pub const SCHEMA_VERSION: u32 = 1;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// The script exited 0.
    Ok,
    /// The script exited with another code.
    ExitNonzero,
    /// The script was killed by a signal (not for memory, not by the timeout).
    Signaled,
    /// The wall-clock limit was reached.
    Timeout,
    /// The script was killed for exceeding its memory limit.
    Oom,
    /// The script ran, but its stdout/stderr exceeded `--max-output` or its output folder
    /// filled up to `--output-limit`: the result is incomplete.
    OutputLimit,
    /// pysandbox could not run the script.
    SandboxError,
}

/// Exit status of `pysandbox run` on timeout (as GNU timeout).
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit status when pysandbox itself failed.
pub const EXIT_SANDBOX_ERROR: i32 = 125;
/// Exit status when the script was killed for memory (128 + SIGKILL).
pub const EXIT_OOM: i32 = 137;

/// What enforced a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    CgroupV1,
    CgroupV2,
    /// setrlimit: per process (RLIMIT_AS counts address space, not resident memory).
    Rlimit,
    /// A size-capped tmpfs.
    Tmpfs,
    /// pysandbox's own clock (SIGTERM, then SIGKILL).
    WallClock,
    /// pysandbox's pipes: head and tail kept, the middle dropped.
    Pipe,
    /// Not enforced on this host.
    None,
}

/// One limit: its value and what enforced it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Limit {
    /// Bytes, a count, milliseconds or CPUs, depending on the limit; `null` when unset.
    pub value: Option<f64>,
    pub mechanism: Mechanism,
}

/// Every limit of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub memory_bytes: Limit,
    pub pids: Limit,
    pub cpus: Limit,
    pub cpu_time_s: Limit,
    pub timeout_ms: Limit,
    pub file_size_bytes: Limit,
    pub open_files: Limit,
    pub output_folder_bytes: Limit,
    pub stream_bytes: Limit,
}

/// One refused syscall.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub syscall: String,
    pub count: u64,
}

impl Refusal {
    /// Names a tally of syscall numbers (kept in its order).
    pub fn tally(counts: &[(i32, u64)]) -> Vec<Refusal> {
        counts
            .iter()
            .map(|&(nr, count)| Refusal {
                syscall: crate::seccomp::syscall_name(nr),
                count,
            })
            .collect()
    }
}

/// A captured stream (`--json`, library): head and tail within the cap, middle dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Captured {
    /// The kept bytes, lossily decoded as UTF-8.
    pub text: String,
    /// Bytes dropped from the middle (0 when the stream fit).
    pub dropped_bytes: u64,
    /// Where in `text`'s bytes the drop happened (the head's length).
    pub dropped_at: u64,
    /// Total bytes the script wrote.
    pub total_bytes: u64,
}

/// One connection attempt through the `--allow-net` proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConnection {
    /// How the script asked: `connect` (HTTP CONNECT), `http` (a plain HTTP request),
    /// `socks5`, or `unknown` (a request the proxy could not parse).
    pub protocol: String,
    /// The host as the script named it (a name or an address literal).
    pub host: String,
    pub port: u16,
    /// The resolved address the proxy connected to (allowed), or the one it refused;
    /// `null` when nothing was resolved.
    pub address: Option<String>,
    pub allowed: bool,
    /// Why it was refused, or why an allowed connection failed.
    pub reason: Option<String>,
    /// Bytes from the script to the server, and back.
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// The network of an `--allow-net` run: the proxy, its rules and every attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetReport {
    /// Where the script reaches the proxy (in the sandbox's own loopback).
    pub proxy: String,
    /// The allow-list, as the proxy understood it.
    pub allow: Vec<String>,
    pub connections: Vec<NetConnection>,
    /// Attempts beyond the log's cap, counted but not listed.
    pub connections_dropped: u64,
}

/// The report of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub schema: u32,
    /// The sandbox id (unique per run).
    pub id: String,
    pub image: String,
    /// sha256 of the image's manifest, when the image has one.
    pub image_digest: Option<String>,
    pub status: RunStatus,
    /// The script's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that killed the script, when one did.
    pub signal: Option<i32>,
    /// A signal pysandbox received and relayed (Ctrl-C, SIGTERM...).
    pub interrupted_by: Option<i32>,
    /// The streams: captured text with `--json` and the library; passed through otherwise
    /// (then `text` is empty and only the counts tell what happened).
    pub stdout: Captured,
    pub stderr: Captured,
    pub wall_ms: u64,
    /// User + system CPU time of every process of the sandbox.
    pub cpu_ms: u64,
    /// Largest resident set of any process of the sandbox.
    pub max_rss_bytes: u64,
    pub limits: Limits,
    /// Syscalls the seccomp filter refused, with counts (`--seccomp-log`; else empty).
    pub seccomp_refused: Vec<Refusal>,
    /// Why pysandbox could not run the script (status `sandbox_error`).
    pub error: Option<String>,
    /// Problems that did not stop the run (e.g. an output file that could not be saved).
    pub warnings: Vec<String>,
    /// Runs through a pool (`Pool`, `pysandbox serve`) only: whether a sandbox started
    /// ahead of time ran it, and how long the run waited for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolRun>,
    /// With `--allow-net` only: the proxy's log of every connection attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetReport>,
}

/// How a pooled run got its sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRun {
    pub warm: bool,
    pub waited_ms: u64,
}

impl RunReport {
    /// The exit status of `pysandbox run`: the script's own; 128+N when killed by signal
    /// N (as a shell reports it); 124 on timeout; 137 when killed for memory; 125 when
    /// pysandbox failed.
    pub fn cli_exit_code(&self) -> i32 {
        match self.status {
            RunStatus::Ok => 0,
            RunStatus::ExitNonzero => self.exit_code.unwrap_or(1),
            RunStatus::Signaled => 128 + self.signal.unwrap_or(9),
            RunStatus::Timeout => EXIT_TIMEOUT,
            RunStatus::Oom => EXIT_OOM,
            RunStatus::OutputLimit => match (self.exit_code, self.signal) {
                (Some(c), _) => c,
                (None, Some(s)) => 128 + s,
                (None, None) => 1,
            },
            RunStatus::SandboxError => EXIT_SANDBOX_ERROR,
        }
    }

    /// Whether the script failed, in docker-python-sandbox's terms (`isError`).
    pub fn is_error(&self) -> bool {
        self.status != RunStatus::Ok
    }

    /// The report of a run that could not start.
    pub fn failed(error: String) -> RunReport {
        let none = Limit {
            value: None,
            mechanism: Mechanism::None,
        };
        RunReport {
            schema: SCHEMA_VERSION,
            id: String::new(),
            image: String::new(),
            image_digest: None,
            status: RunStatus::SandboxError,
            exit_code: None,
            signal: None,
            interrupted_by: None,
            stdout: Captured::default(),
            stderr: Captured::default(),
            wall_ms: 0,
            cpu_ms: 0,
            max_rss_bytes: 0,
            limits: Limits {
                memory_bytes: none,
                pids: none,
                cpus: none,
                cpu_time_s: none,
                timeout_ms: none,
                file_size_bytes: none,
                open_files: none,
                output_folder_bytes: none,
                stream_bytes: none,
            },
            seccomp_refused: Vec::new(),
            error: Some(error),
            warnings: Vec::new(),
            pool: None,
            network: None,
        }
    }

    /// docker-python-sandbox's `timedOut`.
    pub fn timed_out(&self) -> bool {
        self.status == RunStatus::Timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(
        status: RunStatus,
        exit_code: Option<i32>,
        signal: Option<i32>,
    ) -> RunReport {
        RunReport {
            status,
            exit_code,
            signal,
            error: None,
            ..RunReport::failed(String::new())
        }
    }

    #[test]
    fn exit_codes() {
        assert_eq!(sample(RunStatus::Ok, Some(0), None).cli_exit_code(), 0);
        assert_eq!(
            sample(RunStatus::ExitNonzero, Some(3), None).cli_exit_code(),
            3
        );
        assert_eq!(
            sample(RunStatus::Signaled, None, Some(9)).cli_exit_code(),
            137
        );
        assert_eq!(sample(RunStatus::Timeout, None, None).cli_exit_code(), 124);
        assert_eq!(sample(RunStatus::Oom, None, Some(9)).cli_exit_code(), 137);
        assert_eq!(
            sample(RunStatus::OutputLimit, Some(0), None).cli_exit_code(),
            0
        );
        assert_eq!(
            sample(RunStatus::SandboxError, None, None).cli_exit_code(),
            125
        );
    }

    #[test]
    fn json_round_trip() {
        let r = sample(RunStatus::Oom, None, Some(9));
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.contains("\"status\":\"oom\""));
        let back: RunReport = serde_json::from_str(&s).unwrap();
        assert_eq!(back, r);
    }
}
