//! The user's knobs for one run: what to run, which host files to expose, limits,
//! network. Everything here is validated data with defaults; nothing here touches the
//! kernel or the file system beyond reading the script the user named.
//!
//! Parsing helpers for the human formats of the command line (`500ms`, `256M`) live here
//! too, so the library and any front end agree on them.

use std::path::PathBuf;
use std::time::Duration;

/// Default wall-clock limit (DESIGN.md: 60 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default memory limit (DESIGN.md: 512M).
pub const DEFAULT_MEMORY: u64 = 512 << 20;
/// Default number of processes/threads (DESIGN.md: 128).
pub const DEFAULT_PIDS: u64 = 128;
/// Default number of open files (RLIMIT_NOFILE), never above the inherited hard limit.
pub const DEFAULT_OPEN_FILES: u64 = 1024;
/// Default cap on what the script may write into its output folder.
pub const DEFAULT_OUTPUT_LIMIT: u64 = 1 << 30;
/// Default cap on each of stdout and stderr (head and tail kept beyond it).
pub const DEFAULT_MAX_OUTPUT: u64 = 10 << 20;
/// Time between SIGTERM and SIGKILL when a run is stopped (timeout, Ctrl-C).
pub const KILL_GRACE: Duration = Duration::from_millis(1000);
/// Largest `--code` that fits in one argv string (the kernel's MAX_ARG_STRLEN is 128 KiB).
pub const MAX_CODE_BYTES: usize = 120 * 1024;

/// Where the Python source comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Script {
    /// A file on the host; its folder is mounted read-only at `/usr/app/src`.
    File(PathBuf),
    /// Source text read by pysandbox (script `-`); staged as `/usr/app/src/script.py`.
    Source(Vec<u8>),
    /// `--code "..."`: run as `python -c CODE`.
    Code(String),
    /// `run -i` without a script: the interpreter's REPL.
    Repl,
}

/// What the script reads on its standard input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StdinSource {
    /// pysandbox's own stdin, pumped through a pipe (never the host fd itself).
    Inherit,
    /// A host file, read by pysandbox and pumped through a pipe.
    File(PathBuf),
    /// Nothing: the script sees end-of-file at once.
    Null,
}

/// Which image to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// The default image, built from the host's Python on first use.
    Default,
    /// On the host: a root file system directory, an OCI layout directory, or an OCI /
    /// `docker save` archive (the last two are imported into the store).
    Path(PathBuf),
    /// An image in the store, by name or digest.
    Name(String),
}

impl ImageRef {
    /// `--image X`: "default", an existing path, or a store name.
    pub fn parse(s: &str) -> ImageRef {
        if s == "default" {
            ImageRef::Default
        } else if std::path::Path::new(s).exists() {
            ImageRef::Path(PathBuf::from(s))
        } else {
            ImageRef::Name(s.to_string())
        }
    }
}

/// Resource limits of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub timeout: Duration,
    pub memory: u64,
    pub pids: u64,
    /// CPU quota in CPUs (`--cpus 1.5`); needs cgroups.
    pub cpus: Option<f64>,
    pub open_files: u64,
    /// Bytes the script may write into its output folder (`--output-limit`).
    pub output_folder: u64,
    /// Bytes kept of each of stdout and stderr (`--max-output`).
    pub max_output: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: DEFAULT_TIMEOUT,
            memory: DEFAULT_MEMORY,
            pids: DEFAULT_PIDS,
            cpus: None,
            open_files: DEFAULT_OPEN_FILES,
            output_folder: DEFAULT_OUTPUT_LIMIT,
            max_output: DEFAULT_MAX_OUTPUT,
        }
    }
}

impl Limits {
    /// Size of the `/tmp` tmpfs: half the memory limit, so temporary files cannot hold
    /// more than the script may use anyway.
    pub fn tmp_size(&self) -> u64 {
        (self.memory / 2).max(1 << 20)
    }
    /// Size of `/dev/shm` (POSIX semaphores and shared memory of `multiprocessing`).
    pub fn shm_size(&self) -> u64 {
        (self.memory / 4).max(1 << 20)
    }
    /// Size of the tmpfs `HOME`.
    pub fn home_size(&self) -> u64 {
        (self.memory / 8).clamp(1 << 20, 64 << 20)
    }
    /// cgroup v1's separate cap on TCP buffer memory (kmem.tcp).
    pub fn kernel_tcp_memory(&self) -> u64 {
        (self.memory / 4).max(1 << 20)
    }
    /// What the output folder may hold: `--output-limit`, and never more than `--memory`
    /// (the folder is a tmpfs until the run ends, so its pages are memory).
    pub fn output_cap(&self) -> u64 {
        self.output_folder.min(self.memory)
    }
    /// RLIMIT_FSIZE, the size of one file the script writes: the cap of the largest
    /// writable mount (output folder, `/tmp`, `/dev/shm`, `HOME`) plus 1 MiB. The mounts
    /// bound what the script can store; the rlimit only stops a runaway write (a sparse
    /// file far beyond them) with `SIGXFSZ`/`EFBIG`. It must never cut short a file the
    /// mounts allow, and the headroom makes a full mount answer with its own, clearer
    /// `ENOSPC` first.
    pub fn file_size(&self) -> u64 {
        self.output_folder
            .max(self.tmp_size())
            .max(self.shm_size())
            .max(self.home_size())
            + (1 << 20)
    }
    /// RLIMIT_CPU in seconds: a process cannot burn more CPU than the wall-clock limit
    /// allows (plus a second of slack so the wall-clock timeout is what normally fires).
    pub fn cpu_seconds(&self) -> u64 {
        self.timeout.as_secs() + 2
    }
}

/// The sandbox's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// Its own network namespace with a loopback only: nothing outside is reachable.
    #[default]
    None,
    /// Its own network namespace, connected to the outside by pasta, a user-mode network
    /// stack (`--network`). The host's loopback services and abstract unix sockets stay
    /// out of reach.
    Pasta,
    /// The host's network namespace (`--network=host`): the script can reach the host's
    /// loopback services and abstract unix sockets.
    Host,
}

impl Network {
    /// Parses the value of `--network=MODE`.
    pub fn parse(s: &str) -> Result<Network, PolicyError> {
        match s {
            "none" | "off" => Ok(Network::None),
            "pasta" | "on" => Ok(Network::Pasta),
            "host" => Ok(Network::Host),
            _ => Err(PolicyError::Invalid(format!(
                "--network={s}: expected `host` (share the host's network) or no value (a network of its own)"
            ))),
        }
    }

    /// Whether the sandbox has a network namespace of its own.
    pub fn private(self) -> bool {
        self != Network::Host
    }
}

/// Everything that defines one run. Build it with [`RunPolicy::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct RunPolicy {
    pub script: Script,
    pub args: Vec<String>,
    pub image: ImageRef,
    pub limits: Limits,
    /// The sandbox's network (default: a private loopback only).
    pub network: Network,
    /// `--allow-net`: with a private loopback only, egress through pysandbox's proxy to
    /// these destinations (empty: no proxy).
    pub allow_net: crate::net::allow::AllowList,
    /// Read-only data folder at `/usr/app/data` (the working directory); `None` = `--no-fs`.
    pub data: Option<PathBuf>,
    /// Writable output folder at `/usr/app/data/output`; `None` = default `DATA/output`.
    pub output: Option<PathBuf>,
    /// No host files at all (no data, no output, script copied in).
    pub no_fs: bool,
    /// Folder to mount at `/usr/app/src` instead of the script's own folder.
    pub dev_src: Option<PathBuf>,
    /// `--src-writable`: the folder at `/usr/app/src` is writable, like the output folder
    /// (capped, merged back after the run, set-id bits dropped, no host symlink followed).
    pub src_writable: bool,
    pub stdin: StdinSource,
    /// Extra environment variables for the script (`-e KEY=VAL`).
    pub env: Vec<(String, String)>,
    /// Ask pysandbox (instead of the kernel) to refuse filtered syscalls, so it can name
    /// them in the report. The script sees the same EPERM.
    pub seccomp_log: bool,
    /// Refuse to run when a limit could only be approximated on this host.
    pub strict_limits: bool,
    /// Capture stdout/stderr into the report instead of passing them through.
    pub capture: bool,
    /// `-i`: the interpreter runs interactively (`python -i`, or the REPL) on a terminal
    /// of the sandbox's own, bridged to pysandbox's (which must be a terminal).
    pub interactive: bool,
    /// `--keep`: keep what the run leaves in `/tmp`, `HOME` and its output folder under
    /// its id (see `runs`).
    pub keep: bool,
    /// `--from ID`: start `/tmp` and `HOME` from a kept run's state (its folder).
    pub from: Option<PathBuf>,
    /// Image build mode: `/opt/conda` is writable, and its changes land in this host
    /// directory (an overlay upper layer, `DIR/upper`).
    pub conda_layer: Option<PathBuf>,
}

impl RunPolicy {
    pub fn new(script: Script) -> Self {
        RunPolicy {
            script,
            args: Vec::new(),
            image: ImageRef::Default,
            limits: Limits::default(),
            network: Network::None,
            allow_net: Default::default(),
            data: None,
            output: None,
            no_fs: false,
            dev_src: None,
            src_writable: false,
            stdin: StdinSource::Inherit,
            env: Vec::new(),
            seccomp_log: false,
            strict_limits: false,
            capture: false,
            interactive: false,
            keep: false,
            from: None,
            conda_layer: None,
        }
    }

    /// Checks what can be checked without touching the host.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if let Script::Code(code) = &self.script {
            if code.len() > MAX_CODE_BYTES {
                return Err(PolicyError::CodeTooLong(code.len()));
            }
            if code.contains('\0') {
                return Err(PolicyError::Nul("--code".into()));
            }
        }
        for a in &self.args {
            if a.contains('\0') {
                return Err(PolicyError::Nul("a script argument".into()));
            }
        }
        for (k, v) in &self.env {
            validate_env_key(k)?;
            if v.contains('\0') {
                return Err(PolicyError::Nul(format!("the value of {k}")));
            }
        }
        let l = &self.limits;
        if l.timeout.is_zero() {
            return Err(PolicyError::Invalid("--timeout must be more than 0".into()));
        }
        if l.memory < (16 << 20) {
            return Err(PolicyError::Invalid(
                "--memory must be at least 16M (CPython needs about 10M to start)".into(),
            ));
        }
        if l.pids < 2 {
            return Err(PolicyError::Invalid("--pids must be at least 2".into()));
        }
        if let Some(c) = l.cpus
            && !(c.is_finite() && (0.01..=1024.0).contains(&c))
        {
            return Err(PolicyError::Invalid(
                "--cpus must be between 0.01 and 1024".into(),
            ));
        }
        if l.output_folder < (1 << 20) {
            return Err(PolicyError::Invalid(
                "--output-limit must be at least 1M".into(),
            ));
        }
        if l.max_output < 2 {
            return Err(PolicyError::Invalid(
                "--max-output must be at least 2 bytes".into(),
            ));
        }
        if self.src_writable
            && (self.no_fs || (self.dev_src.is_none() && !matches!(self.script, Script::File(_))))
        {
            return Err(PolicyError::Invalid(
                "--src-writable needs a source folder: a script file (its folder), or --dev SRC; not --no-fs".into(),
            ));
        }
        if self.keep && self.from.is_some() {
            return Err(PolicyError::Invalid(
                "--keep cannot be combined with --from: a run started from kept state is not kept again".into(),
            ));
        }
        if self.script == Script::Repl && !self.interactive {
            return Err(PolicyError::Invalid(
                "no script given. Hint: pysandbox run SCRIPT.py, or -i for a REPL".into(),
            ));
        }
        if self.interactive && matches!(self.script, Script::Source(_)) {
            return Err(PolicyError::Invalid(
                "-i cannot read the script from stdin (`-`): stdin is the terminal. Hint: save it to a file".into(),
            ));
        }
        if self.interactive && (self.capture || self.stdin != StdinSource::Inherit) {
            return Err(PolicyError::Invalid(
                "-i cannot be combined with --json or --stdin: the script's terminal is yours"
                    .into(),
            ));
        }
        if !self.allow_net.rules.is_empty() && self.network != Network::None {
            return Err(PolicyError::Invalid(
                "--allow-net cannot be combined with --network: --allow-net keeps the sandbox's own loopback only and reaches the allowed hosts through pysandbox's proxy; --network opens the whole network".into(),
            ));
        }
        if self.no_fs && (self.data.is_some() || self.output.is_some() || self.dev_src.is_some()) {
            return Err(PolicyError::Invalid(
                "--no-fs cannot be combined with --data, --output or --dev".into(),
            ));
        }
        Ok(())
    }
}

/// Invalid user input, found before anything runs.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "--code is {0} bytes; the limit is {MAX_CODE_BYTES}. Hint: save it to a file, or pipe it in with `pysandbox run -`"
    )]
    CodeTooLong(usize),
    #[error("{0} contains a NUL byte, which cannot be passed to a process")]
    Nul(String),
    #[error(
        "invalid environment variable name {0:?}: use letters, digits and '_', not starting with a digit"
    )]
    EnvKey(String),
    #[error("{0}")]
    Invalid(String),
}

pub fn validate_env_key(k: &str) -> Result<(), PolicyError> {
    let ok = !k.is_empty()
        && !k.as_bytes()[0].is_ascii_digit()
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(PolicyError::EnvKey(k.to_string()))
    }
}

/// Parses `-e KEY=VAL`; a bare `-e KEY` takes the value from `lookup` (the caller's
/// environment), like `docker run -e KEY`.
pub fn parse_env(
    arg: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<(String, String), PolicyError> {
    let (k, v) = match arg.split_once('=') {
        Some((k, v)) => (k.to_string(), v.to_string()),
        None => {
            let v = lookup(arg).ok_or_else(|| {
                PolicyError::Invalid(format!(
                    "-e {arg}: {arg} is not set in your environment; write -e {arg}=VALUE"
                ))
            })?;
            (arg.to_string(), v)
        }
    };
    validate_env_key(&k)?;
    Ok((k, v))
}

/// Parses a duration: `500ms`, `10s`, `2m`, `1h`, `1.5s`; a bare number means seconds.
pub fn parse_duration(s: &str) -> Result<Duration, PolicyError> {
    let bad = || {
        PolicyError::Invalid(format!(
            "invalid duration {s:?}: use e.g. 500ms, 10s, 2m or 1h"
        ))
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult = match unit.trim() {
        "ms" => 0.001,
        "" | "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    let secs = n * mult;
    if !secs.is_finite() || !(0.0..=365.0 * 86400.0).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a size in bytes: `256M`, `1G`, `512MiB`, `64k`, `1048576`; units are binary
/// (K = 1024), as in Docker.
pub fn parse_size(s: &str) -> Result<u64, PolicyError> {
    let bad = || PolicyError::Invalid(format!("invalid size {s:?}: use e.g. 64M, 1G or 512MiB"));
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit.trim_end_matches("ib").trim_end_matches('b');
    let mult: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let v = n * mult;
    if !v.is_finite() || v < 1.0 || v > u64::MAX as f64 / 2.0 {
        return Err(bad());
    }
    Ok(v as u64)
}

/// Writes a size as the command line does (`512M`, `1G`): the largest binary unit that
/// divides it exactly, else bytes. [`parse_size`] reads it back (sizes above 0).
pub fn format_size(n: u64) -> String {
    for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

/// Writes a duration as the command line does (`60s`, `500ms`): whole seconds, else
/// whole milliseconds, else fractional seconds. [`parse_duration`] reads it back.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// A relative path of plain names only (no `/` at the start, no `.` or `..`, no NUL),
/// at most 16 deep and 4 KiB long: what a request may name a file it puts in a sandbox.
pub fn is_plain_relative(p: &std::path::Path) -> bool {
    use std::path::Component;
    let s = p.as_os_str().as_encoded_bytes();
    !s.is_empty()
        && s.len() <= 4096
        && !s.contains(&0)
        && !s.starts_with(b"/")
        && p.components().count() <= 16
        && p.components().all(|c| matches!(c, Component::Normal(_)))
        && !s.split(|&b| b == b'/').any(|c| c == b"." || c == b"..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_size_is_the_largest_writable_mount() {
        let mut l = Limits {
            memory: 64 << 20,
            output_folder: 8 << 20,
            ..Default::default()
        };
        assert_eq!(l.file_size(), l.tmp_size() + (1 << 20));
        assert_eq!(l.file_size(), 33 << 20);
        l.output_folder = 3 << 30;
        assert_eq!(l.file_size(), (3 << 30) + (1 << 20));
        l.memory = 16 << 30;
        assert_eq!(l.file_size(), (8 << 30) + (1 << 20));
    }

    #[test]
    fn network_modes() {
        assert_eq!(Network::parse("host").unwrap(), Network::Host);
        assert_eq!(Network::parse("pasta").unwrap(), Network::Pasta);
        assert_eq!(Network::parse("none").unwrap(), Network::None);
        assert!(Network::parse("bridge").is_err());
        assert!(Network::Pasta.private() && Network::None.private());
        assert!(!Network::Host.private());
        assert_eq!(
            RunPolicy::new(Script::Code("pass".into())).network,
            Network::None
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        for bad in ["", "s", "10x", "-1s", "1e9999"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M").unwrap(), 256 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        for bad in ["", "M", "12Q", "-5M", "0"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_as_the_command_line_shows_them() {
        // `--help` shows these: they must read back as the defaults themselves.
        assert_eq!(format_duration(DEFAULT_TIMEOUT), "60s");
        assert_eq!(format_size(DEFAULT_MEMORY), "512M");
        assert_eq!(format_size(DEFAULT_OUTPUT_LIMIT), "1G");
        assert_eq!(format_size(DEFAULT_MAX_OUTPUT), "10M");
        assert_eq!(
            parse_duration(&format_duration(DEFAULT_TIMEOUT)).unwrap(),
            DEFAULT_TIMEOUT
        );
        for n in [DEFAULT_MEMORY, DEFAULT_OUTPUT_LIMIT, DEFAULT_MAX_OUTPUT] {
            assert_eq!(parse_size(&format_size(n)).unwrap(), n);
        }
        for n in [1, 1000, 1024, 1536, 64 << 10, 3 << 40] {
            assert_eq!(parse_size(&format_size(n)).unwrap(), n, "{n}");
        }
        for d in [
            Duration::from_millis(500),
            Duration::from_millis(1500),
            Duration::from_secs(120),
            Duration::from_micros(2500),
        ] {
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d, "{d:?}");
        }
    }

    #[test]
    fn env() {
        assert_eq!(
            parse_env("A=b=c", |_| None).unwrap(),
            ("A".into(), "b=c".into())
        );
        assert_eq!(
            parse_env("HOME", |_| Some("/x".into())).unwrap(),
            ("HOME".into(), "/x".into())
        );
        assert!(parse_env("NOPE", |_| None).is_err());
        assert!(parse_env("1A=x", |_| None).is_err());
        assert!(parse_env("A-B=x", |_| None).is_err());
    }

    #[test]
    fn validation() {
        let mut p = RunPolicy::new(Script::Code("print(1)".into()));
        assert!(p.validate().is_ok());
        p.limits.memory = 1 << 20;
        assert!(p.validate().is_err());
        let mut p = RunPolicy::new(Script::Code("x".repeat(MAX_CODE_BYTES + 1)));
        assert!(p.validate().is_err());
        p.script = Script::Code("ok".into());
        p.no_fs = true;
        p.data = Some("/tmp".into());
        assert!(p.validate().is_err());
    }
}
