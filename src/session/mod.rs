//! Sessions: one sandbox whose interpreter stays alive between executions, with the
//! isolation and limits of a run (memory, pids and the output caps hold for the whole
//! session; its `timeout` is the session's longest life; each execution has a timeout of
//! its own: the code gets a `KeyboardInterrupt` first, and the session is killed if it
//! does not stop within a grace after).
//!
//! A session is a `pysandbox run --no-fs` process (single-threaded, like every process
//! that creates a sandbox) whose interpreter runs `runner.py`: commands go in as JSON
//! lines on its stdin, answers come back as JSON lines on its stdout; the code's own
//! stdin is empty, and its stdout and stderr (also those of its child processes) are
//! drained into the answer. Results follow E2B's `Execution` so agent frameworks that
//! read it work unchanged.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::sandbox::{Sandbox, SandboxError};

/// The interpreter's side of a session (run with `-c`).
pub const RUNNER: &str = include_str!("runner.py");

/// How long past its timeout an execution may take to stop after its
/// `KeyboardInterrupt` before the session is killed.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(2);

/// Bytes a file fetched from a session may have.
pub const MAX_FILE: u64 = 16 << 20;

/// Bytes one answer of the session's runner may have (logs are capped at 1 MiB per stream,
/// a fetched file at [`MAX_FILE`] before base64; results such as PNGs fill the rest).
pub const MAX_ANSWER: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Start(#[from] SandboxError),
    /// The session is gone (its interpreter exited, or it was killed); it takes no more
    /// executions.
    #[error("the session ended: {0}")]
    Ended(String),
    /// The request itself was refused (the session goes on).
    #[error("{0}")]
    Refused(String),
}

/// Standard output and error of one execution, as the chunks they came in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Logs {
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

/// An exception the code raised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecError {
    pub name: String,
    pub value: String,
    pub traceback: String,
}

/// One execution's outcome, in E2B's shape: `results` are MIME bundles (`text`, `png`
/// as base64, `html`, `json`, and `is_main_result` for the value of the last
/// expression), from the last expression, `display()` and open matplotlib figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    pub results: Vec<Value>,
    pub logs: Logs,
    pub error: Option<ExecError>,
    pub execution_count: u64,
}

/// A live session. Dropping it destroys the sandbox.
pub struct Session {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    ended: Option<String>,
}

impl Session {
    /// Starts a session configured like `sandbox` that lives at most `lifetime`.
    pub fn open(sandbox: &Sandbox, lifetime: Duration) -> Result<Session, SessionError> {
        let mut child = sandbox.spawn(command(sandbox, lifetime), Stdio::piped())?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut s = Session {
            child,
            stdin,
            stdout,
            ended: None,
        };
        let first = s.read_answer(Duration::from_secs(120));
        match first {
            Ok(v) if v.get("ready") == Some(&Value::Bool(true)) => Ok(s),
            Ok(v) => Err(SessionError::Ended(format!("did not start: {v}"))),
            Err(SessionError::Ended(why)) => Err(SessionError::Ended(format!(
                "did not start: {why}{}",
                s.stderr_tail()
            ))),
            Err(e) => Err(e),
        }
    }

    fn stderr_tail(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut text);
        }
        let t = text.trim();
        if t.is_empty() {
            String::new()
        } else {
            format!(" ({})", t.lines().last().unwrap_or(t))
        }
    }

    /// Whether the session still takes executions.
    pub fn is_alive(&mut self) -> bool {
        if self.ended.is_none()
            && let Ok(Some(st)) = self.child.try_wait()
        {
            self.ended = Some(format!("pysandbox exited ({st})"));
        }
        self.ended.is_none()
    }

    fn kill(&mut self, why: String) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.ended.get_or_insert(why);
    }

    fn send(&mut self, cmd: &Value) -> Result<(), SessionError> {
        if let Some(why) = &self.ended {
            return Err(SessionError::Ended(why.clone()));
        }
        let mut line = serde_json::to_vec(cmd).map_err(|e| SessionError::Refused(e.to_string()))?;
        line.push(b'\n');
        if let Err(e) = self
            .stdin
            .write_all(&line)
            .and_then(|()| self.stdin.flush())
        {
            self.kill(format!("its interpreter is gone ({e})"));
            return Err(SessionError::Ended(self.ended.clone().unwrap_or_default()));
        }
        Ok(())
    }

    /// Reads one answer within `limit`, or kills the session.
    fn read_answer(&mut self, limit: Duration) -> Result<Value, SessionError> {
        if self.stdout.buffer().is_empty()
            && matches!(
                crate::sys::wait_readable(self.stdout.get_ref(), limit),
                Ok(false)
            )
        {
            self.kill(
                "an execution did not stop within its timeout after KeyboardInterrupt, so the session was killed".into(),
            );
            return Err(SessionError::Ended(self.ended.clone().unwrap_or_default()));
        }
        // The answer channel is the sandbox's stdout: bounded, so a hostile session cannot
        // make this process hold an endless line.
        let mut line = String::new();
        let _ = std::io::Read::take(&mut self.stdout, MAX_ANSWER).read_line(&mut line);
        if line.len() as u64 >= MAX_ANSWER && !line.ends_with('\n') {
            self.kill(format!("it sent an answer over {MAX_ANSWER} bytes"));
            return Err(SessionError::Ended(self.ended.clone().unwrap_or_default()));
        }
        if line.is_empty() {
            let st = self.child.wait().ok();
            let why = match st.and_then(|s| s.code()) {
                Some(124) => "it reached its lifetime".to_string(),
                Some(137) => "it was killed for memory".to_string(),
                Some(c) => format!("its interpreter exited with status {c}"),
                None => "it was killed".to_string(),
            };
            self.ended = Some(why.clone());
            return Err(SessionError::Ended(why));
        }
        serde_json::from_str(&line).map_err(|e| SessionError::Ended(format!("a bad answer: {e}")))
    }

    /// Runs `code` with the session's globals (plus `globals`, set first), at most
    /// `timeout`.
    pub fn execute_with(
        &mut self,
        code: &str,
        timeout: Duration,
        globals: Option<&serde_json::Map<String, Value>>,
    ) -> Result<Execution, SessionError> {
        self.send(&serde_json::json!({
            "op": "execute", "code": code, "timeout": timeout.as_secs_f64(), "globals": globals,
        }))?;
        let v = self.read_answer(timeout + INTERRUPT_GRACE)?;
        if let Some(e) = v.get("error").and_then(Value::as_str) {
            return Err(SessionError::Refused(e.to_string()));
        }
        serde_json::from_value(v).map_err(|e| SessionError::Ended(format!("a bad answer: {e}")))
    }

    pub fn execute(&mut self, code: &str, timeout: Duration) -> Result<Execution, SessionError> {
        self.execute_with(code, timeout, None)
    }

    /// Writes a file in the session (relative paths: from its working directory, HOME).
    pub fn put_file(&mut self, path: &str, data: &[u8]) -> Result<(), SessionError> {
        self.send(
            &serde_json::json!({"op": "put", "path": path, "data": crate::claim::b64(data)}),
        )?;
        let v = self.read_answer(Duration::from_secs(60))?;
        match v.get("error").and_then(Value::as_str) {
            Some(e) => Err(SessionError::Refused(e.to_string())),
            None => Ok(()),
        }
    }

    /// Reads a file of the session, at most [`MAX_FILE`] bytes.
    pub fn get_file(&mut self, path: &str) -> Result<Vec<u8>, SessionError> {
        self.send(&serde_json::json!({"op": "get", "path": path, "max": MAX_FILE}))?;
        let v = self.read_answer(Duration::from_secs(60))?;
        if let Some(e) = v.get("error").and_then(Value::as_str) {
            return Err(SessionError::Refused(e.to_string()));
        }
        let data = v.get("data").and_then(Value::as_str).unwrap_or("");
        crate::claim::unb64(data).map_err(|e| SessionError::Ended(e.to_string()))
    }

    /// Ends the session and destroys its sandbox.
    pub fn close(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        if self.ended.is_none() {
            // SIGTERM: pysandbox relays it and tears the sandbox down cleanly.
            // Our own child, not reaped yet: the pid is still its.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    self.ended = Some("it was closed".into());
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            self.kill("it was closed".into());
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shut();
    }
}

/// `pysandbox run --no-fs` running the session's runner for at most `lifetime`, its
/// streams passed through (they carry the session's protocol; each execution's own
/// output is capped by the runner).
fn command(sandbox: &Sandbox, lifetime: Duration) -> std::process::Command {
    let mut c = sandbox
        .clone()
        .max_output(1 << 40)
        .command_with(lifetime, false);
    c.args(["--no-fs", "-e", "MPLBACKEND=Agg", "--code", RUNNER]);
    c
}
