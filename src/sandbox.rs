//! The library API: a [`Sandbox`] configured once (image, limits, policy), and
//! [`Sandbox::run`] for each script, safe to call from many threads at once.
//!
//! Each run happens in its own helper process (the `pysandbox` binary, `run --json`):
//! libcontainer forks with a raw `clone3` and pysandbox enters namespaces of its own, both
//! of which need a single-threaded process, which a library caller rarely is. The helper
//! is single-threaded, generates the run's unique id, and dies with its run; the report
//! comes back as JSON. Nothing is shared between runs, and a watchdog kills a helper that
//! outlives its run's timeout by far, so a caller can never hang on one.
//!
//! ```no_run
//! use pysandbox::sandbox::{RunRequest, Sandbox};
//! use pysandbox::report::RunStatus;
//!
//! let sandbox = Sandbox::new()?.memory(256 << 20).timeout(std::time::Duration::from_secs(5));
//! let report = sandbox.run(&RunRequest::code("import sys; print(sys.stdin.read().upper())").stdin("hi"))?;
//! assert_eq!(report.status, RunStatus::Ok);
//! assert_eq!(report.stdout.text, "HI\n");
//! # Ok::<(), pysandbox::sandbox::SandboxError>(())
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crate::claim::{WireClaim, applies_at_claim, b64};
use crate::helper::Helper;
use crate::policy::{self, Limits, Network};
use crate::report::{PoolRun, RunReport};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "the pysandbox binary was not found. Hint: install it (cargo install --path .), put it on PATH, or set PYSANDBOX_BIN"
    )]
    NoHelper,
    #[error("starting the pysandbox helper {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the pysandbox helper {0}")]
    Helper(String),
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    #[error("no pooled sandbox is idle (the pool is configured not to start one for the run)")]
    PoolEmpty,
}

/// A sandbox configuration; cheap to clone, `Send + Sync`, reusable for any number of runs.
#[derive(Debug, Clone)]
pub struct Sandbox {
    helper: Helper,
    image: Option<PathBuf>,
    limits: Limits,
    network: Network,
    strict_limits: bool,
    seccomp_log: bool,
}

/// One script to run.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    pub(crate) code: String,
    pub(crate) args: Vec<String>,
    pub(crate) stdin: Vec<u8>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) data: Option<PathBuf>,
    /// Files placed read-only in `/usr/app/src` (then the working directory).
    pub(crate) files: Vec<(String, Vec<u8>)>,
    /// Which of `files` to run instead of `code`.
    pub(crate) script: Option<String>,
    pub(crate) timeout: Option<Duration>,
}

impl RunRequest {
    /// Python source to run (as `python -c`, or from a file when it is large).
    pub fn code(code: impl Into<String>) -> RunRequest {
        RunRequest {
            code: code.into(),
            ..Default::default()
        }
    }
    /// Arguments (`sys.argv[1:]`).
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }
    /// What the script reads on stdin.
    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.stdin = input.into();
        self
    }
    /// An environment variable for the script.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
    /// A file placed read-only in `/usr/app/src` under this relative name; with files,
    /// that folder is the working directory (no host folder is visible then).
    pub fn file(mut self, name: impl Into<String>, content: impl Into<Vec<u8>>) -> Self {
        self.files.push((name.into(), content.into()));
        self
    }
    /// Run this one of the files (`python /usr/app/src/NAME ARGS`) instead of the code.
    pub fn script(mut self, name: impl Into<String>) -> Self {
        self.script = Some(name.into());
        self
    }
    /// This run's wall-clock limit instead of the sandbox's.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }
    pub(crate) fn timeout_or(&self, default: Duration) -> Duration {
        self.timeout.unwrap_or(default)
    }
    /// A host folder visible read-only at `/usr/app/data` (with a writable `output/`).
    /// Without it the run has no host files at all (`--no-fs`).
    pub fn data(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data = Some(dir.into());
        self
    }
}

impl Sandbox {
    /// A sandbox with default limits and the default image.
    pub fn new() -> Result<Sandbox, SandboxError> {
        let helper = Helper::find().ok_or(SandboxError::NoHelper)?;
        Ok(Sandbox::with_helper(helper.path()))
    }
    /// A sandbox whose runs use this pysandbox binary.
    pub fn with_helper(helper: impl Into<PathBuf>) -> Sandbox {
        Sandbox {
            helper: Helper::at(helper),
            image: None,
            limits: Limits::default(),
            network: Network::None,
            strict_limits: false,
            seccomp_log: false,
        }
    }
    /// A root file system directory instead of the default image.
    pub fn image(mut self, rootfs: impl Into<PathBuf>) -> Self {
        self.image = Some(rootfs.into());
        self
    }
    pub fn timeout(mut self, t: Duration) -> Self {
        self.limits.timeout = t;
        self
    }
    pub fn memory(mut self, bytes: u64) -> Self {
        self.limits.memory = bytes;
        self
    }
    pub fn pids(mut self, n: u64) -> Self {
        self.limits.pids = n;
        self
    }
    pub fn cpus(mut self, cpus: f64) -> Self {
        self.limits.cpus = Some(cpus);
        self
    }
    pub fn max_output(mut self, bytes: u64) -> Self {
        self.limits.max_output = bytes;
        self
    }
    pub fn output_limit(mut self, bytes: u64) -> Self {
        self.limits.output_folder = bytes;
        self
    }
    /// The runs' network: [`Network::Pasta`] for a network of their own that cannot
    /// reach the host's loopback services; [`Network::Host`] shares the host's.
    pub fn network(mut self, network: Network) -> Self {
        self.network = network;
        self
    }
    pub fn strict_limits(mut self, on: bool) -> Self {
        self.strict_limits = on;
        self
    }
    pub fn seccomp_log(mut self, on: bool) -> Self {
        self.seccomp_log = on;
        self
    }

    /// Starts a helper command with stdin and stdout piped, stderr as given.
    pub(crate) fn spawn(
        &self,
        c: Command,
        stderr: Stdio,
    ) -> Result<std::process::Child, SandboxError> {
        self.helper
            .spawn(c, stderr)
            .map_err(|source| SandboxError::Spawn {
                path: self.helper.path().to_owned(),
                source,
            })
    }
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// `pysandbox run --pool-worker` for this configuration, with these variables set
    /// when its interpreter starts.
    pub(crate) fn worker_command(&self, env: &[(String, String)]) -> Command {
        let mut c = self.base_command(self.limits.timeout);
        c.arg("--pool-worker").arg("--no-fs");
        for (k, v) in env {
            c.arg("-e").arg(format!("{k}={v}"));
        }
        c
    }

    /// `pysandbox run --json` with this configuration's image, limits and flags.
    fn base_command(&self, timeout: Duration) -> Command {
        self.command_with(timeout, true)
    }

    pub(crate) fn command_with(&self, timeout: Duration, json: bool) -> Command {
        let l = &self.limits;
        let mut c = self.helper.command();
        c.arg("run");
        if json {
            c.arg("--json");
        }
        c.args(["--timeout", &format!("{}ms", timeout.as_millis())]);
        c.args(["--memory", &l.memory.to_string()]);
        c.args(["--pids", &l.pids.to_string()]);
        c.args(["--max-output", &l.max_output.to_string()]);
        c.args(["--output-limit", &l.output_folder.to_string()]);
        if let Some(cpus) = l.cpus {
            c.args(["--cpus", &cpus.to_string()]);
        }
        if let Some(img) = &self.image {
            c.arg("--image").arg(img);
        }
        match self.network {
            Network::None => {}
            Network::Pasta => {
                c.arg("--network");
            }
            Network::Host => {
                c.arg("--network=host");
            }
        }
        for (flag, on) in [
            ("--strict-limits", self.strict_limits),
            ("--seccomp-log", self.seccomp_log),
        ] {
            if on {
                c.arg(flag);
            }
        }
        c
    }

    fn command(&self, req: &RunRequest, script: Option<&Path>) -> Command {
        let mut c = self.base_command(req.timeout_or(self.limits.timeout));
        for (k, v) in &req.env {
            c.arg("-e").arg(format!("{k}={v}"));
        }
        match &req.data {
            Some(d) => {
                c.arg("--data").arg(d);
            }
            None => {
                c.arg("--no-fs");
            }
        }
        match script {
            Some(path) => {
                c.arg(path);
            }
            None => {
                c.arg("--code").arg(&req.code);
            }
        }
        c.arg("--").args(&req.args);
        c
    }

    /// Runs one script in a fresh sandbox and returns its report (stdout and stderr
    /// captured, capped). Blocks until the run ends; call from as many threads as you
    /// like.
    pub fn run(&self, req: &RunRequest) -> Result<RunReport, SandboxError> {
        if !req.files.is_empty() || req.script.is_some() {
            if req.data.is_some() {
                return Err(SandboxError::Policy(policy::PolicyError::Invalid(
                    "a run has either a data folder or files of its own, not both".into(),
                )));
            }
            let mut r = run_once(self, req)?;
            r.pool = None;
            return Ok(r);
        }
        // Source too large for argv goes through a private temporary file.
        let tmp = if req.code.len() > policy::MAX_CODE_BYTES {
            let dir = std::env::temp_dir().join(format!(
                "pysandbox-lib-{}",
                crate::sys::random_id("").map_err(|e| SandboxError::Helper(e.to_string()))?
            ));
            std::fs::create_dir(&dir).map_err(|e| SandboxError::Helper(e.to_string()))?;
            std::fs::write(dir.join("script.py"), &req.code)
                .map_err(|e| SandboxError::Helper(e.to_string()))?;
            Some(dir)
        } else {
            None
        };
        let script = tmp.as_ref().map(|d| d.join("script.py"));
        let result = self.run_helper(req, script.as_deref());
        if let Some(d) = tmp {
            let _ = std::fs::remove_dir_all(d);
        }
        result
    }

    fn run_helper(
        &self,
        req: &RunRequest,
        script: Option<&Path>,
    ) -> Result<RunReport, SandboxError> {
        let mut child = self.spawn(self.command(req, script), Stdio::piped())?;
        let mut stdin = child.stdin.take().expect("piped");
        let input = req.stdin.clone();
        let feeder = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let mut out = child.stdout.take().expect("piped");
        let mut err = child.stderr.take().expect("piped");
        let reader = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = out.read_to_end(&mut v);
            v
        });
        let err_reader = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = err.read_to_end(&mut v);
            v
        });
        // Watchdog: the helper enforces the timeout itself; this only guards against a
        // helper that never returns.
        let limit =
            req.timeout_or(self.limits.timeout) + policy::KILL_GRACE + Duration::from_secs(30);
        let exited = crate::sys::pidfd_open(child.id() as i32)
            .and_then(|pidfd| crate::sys::wait_readable(&pidfd, limit))
            .map_err(|e| SandboxError::Helper(e.to_string()))?;
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SandboxError::Helper(
                "did not finish in time and was killed".into(),
            ));
        }
        let status = child
            .wait()
            .map_err(|e| SandboxError::Helper(e.to_string()))?;
        let _ = feeder.join();
        let out = reader.join().unwrap_or_default();
        let err = err_reader.join().unwrap_or_default();
        serde_json::from_slice::<RunReport>(&out).map_err(|e| {
            SandboxError::Helper(format!(
                "returned no report ({status}, {e}): {}",
                String::from_utf8_lossy(&err).trim()
            ))
        })
    }
}

// The warm start of one run: a `run --pool-worker` helper, claimed once (the path of
// requests with files, and what a pool keeps ready).

/// A started worker: its interpreter waits for the claim.
pub(crate) struct Worker {
    pub(crate) child: Child,
    pub(crate) stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub(crate) born: Instant,
}

/// Runs `req` in a sandbox started for it (the path of requests with files in
/// [`Sandbox::run`], and of a pool's cold starts).
pub(crate) fn run_once(sandbox: &Sandbox, req: &RunRequest) -> Result<RunReport, SandboxError> {
    let t0 = Instant::now();
    let w = start_worker(sandbox, &startup_env(req))?;
    w.claim(sandbox, req, t0, false)
}

pub(crate) fn startup_env(req: &RunRequest) -> Vec<(String, String)> {
    req.env
        .iter()
        .filter(|(k, _)| !applies_at_claim(k))
        .cloned()
        .collect()
}

pub(crate) fn start_worker(
    sandbox: &Sandbox,
    env: &[(String, String)],
) -> Result<Worker, SandboxError> {
    let mut child = sandbox.spawn(sandbox.worker_command(env), Stdio::null())?;
    let stdin = child.stdin.take().expect("piped");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut first = String::new();
    let _ = stdout.read_line(&mut first);
    if first != "ready\n" {
        let _ = child.kill();
        let _ = child.wait();
        // Before it is ready a worker says why it failed as a report.
        let why = serde_json::from_str::<RunReport>(&first)
            .ok()
            .and_then(|r| r.error)
            .unwrap_or_else(|| "exited before its sandbox was ready".into());
        return Err(SandboxError::Helper(why));
    }
    Ok(Worker {
        child,
        stdin,
        stdout,
        born: Instant::now(),
    })
}

impl Worker {
    /// Whether the worker is still waiting (it writes nothing until claimed: anything
    /// readable, or end of file, means it died).
    pub(crate) fn alive(&self) -> bool {
        self.stdout.buffer().is_empty()
            && matches!(
                crate::sys::wait_readable(self.stdout.get_ref(), Duration::ZERO),
                Ok(false)
            )
    }

    pub(crate) fn retire(mut self) {
        drop(self.stdin); // the worker ends its sandbox and exits
        std::thread::spawn(move || {
            let _ = self.child.kill();
            let _ = self.child.wait();
        });
    }

    pub(crate) fn claim(
        mut self,
        sandbox: &Sandbox,
        req: &RunRequest,
        t0: Instant,
        warm: bool,
    ) -> Result<RunReport, SandboxError> {
        let waited = t0.elapsed();
        let timeout = req.timeout_or(sandbox.limits().timeout);
        let claim = WireClaim {
            code: req.code.clone(),
            script: req.script.clone(),
            files: req.files.iter().map(|(n, d)| (n.clone(), b64(d))).collect(),
            args: req.args.clone(),
            env: req
                .env
                .iter()
                .filter(|(k, _)| applies_at_claim(k))
                .cloned()
                .collect(),
            stdin: b64(&req.stdin),
            timeout_ms: timeout.as_millis().max(1) as u64,
            cwd_src: !req.files.is_empty(),
        };
        let mut line =
            serde_json::to_vec(&claim).map_err(|e| SandboxError::Helper(e.to_string()))?;
        line.push(b'\n');
        let sent = self
            .stdin
            .write_all(&line)
            .and_then(|()| self.stdin.flush());
        let limit = timeout + crate::policy::KILL_GRACE + Duration::from_secs(30);
        let answer = sent.and_then(|()| read_line_within(&mut self.stdout, limit));
        let Worker { mut child, .. } = self;
        // The worker tears its sandbox down after the report: reap it off this path.
        std::thread::spawn(move || {
            let _ = child.kill_if_overdue(limit);
        });
        let answer = answer.map_err(|e| SandboxError::Helper(format!("did not answer: {e}")))?;
        let mut report: RunReport = serde_json::from_str(&answer)
            .map_err(|e| SandboxError::Helper(format!("returned no report ({e})")))?;
        report.pool = Some(PoolRun {
            warm,
            waited_ms: waited.as_millis() as u64,
        });
        Ok(report)
    }
}

/// Reaps a worker that has answered; kills it if it has not exited by then.
trait Reap {
    fn kill_if_overdue(&mut self, limit: Duration) -> std::io::Result<()>;
}

impl Reap for Child {
    fn kill_if_overdue(&mut self, limit: Duration) -> std::io::Result<()> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.kill();
        self.wait().map(|_| ())
    }
}

/// Reads one line, waiting at most `limit` for it to begin.
fn read_line_within(r: &mut BufReader<ChildStdout>, limit: Duration) -> std::io::Result<String> {
    if r.buffer().is_empty() && !crate::sys::wait_readable(r.get_ref(), limit)? {
        return Err(std::io::ErrorKind::TimedOut.into());
    }
    let mut line = String::new();
    r.read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(line)
}
