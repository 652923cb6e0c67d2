//! The request bodies `pysandbox serve` accepts, checked against the server's maxima and
//! turned into library requests: `POST /v1/run` (pysandbox's own) and
//! `POST /api/v2/execute` (Piston's).

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::policy::Limits;
use crate::report::{RunReport, RunStatus};
use crate::sandbox::RunRequest;

/// A refused request: the HTTP status and the one-line message.
#[derive(Debug)]
pub struct Refused(pub u16, pub String);

fn bad(msg: impl Into<String>) -> Refused {
    Refused(400, msg.into())
}

/// What the server allows and assumes.
#[derive(Debug, Clone)]
pub struct Bounds {
    pub defaults: Limits,
    pub max_timeout: Duration,
    pub max_memory: u64,
    pub max_pids: u64,
}

/// A file of a request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub name: Option<String>,
    pub content: String,
    /// `utf8` (default), `base64` or `hex`.
    pub encoding: Option<String>,
}

impl File {
    pub fn decoded(&self) -> Result<Vec<u8>, Refused> {
        let name = self.name.as_deref().unwrap_or("(unnamed)");
        match self.encoding.as_deref().unwrap_or("utf8") {
            "utf8" | "utf-8" => Ok(self.content.as_bytes().to_vec()),
            "base64" => base64::engine::general_purpose::STANDARD
                .decode(&self.content)
                .map_err(|e| bad(format!("file {name}: not valid base64: {e}"))),
            "hex" => hex(&self.content).ok_or_else(|| bad(format!("file {name}: not valid hex"))),
            other => Err(bad(format!(
                "file {name}: unknown encoding {other:?} (utf8, base64 or hex)"
            ))),
        }
    }
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `POST /v1/run`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunBody {
    /// Source run as `python -c` (or give `files` and `script`).
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub files: Vec<File>,
    /// Which file to run (default: the first, when there is no `code`).
    #[serde(default)]
    pub script: Option<String>,
    #[serde(default)]
    pub stdin: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub timeout_ms: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
}

/// A checked request: the library request and the limits it asked for.
pub struct Checked {
    pub req: RunRequest,
    pub memory: u64,
    pub pids: u64,
}

fn limits(
    b: &Bounds,
    timeout_ms: Option<u64>,
    memory: Option<u64>,
    pids: Option<u64>,
) -> Result<(Duration, u64, u64), Refused> {
    let timeout = timeout_ms.map_or(b.defaults.timeout, Duration::from_millis);
    if timeout.is_zero() || timeout > b.max_timeout {
        return Err(bad(format!(
            "timeout {} ms is outside 1..={} ms (the server's maximum)",
            timeout.as_millis(),
            b.max_timeout.as_millis()
        )));
    }
    let memory = memory.unwrap_or(b.defaults.memory);
    if !(16 << 20..=b.max_memory).contains(&memory) {
        return Err(bad(format!(
            "memory {memory} bytes is outside {}..={} (the server's maximum)",
            16 << 20,
            b.max_memory
        )));
    }
    let pids = pids.unwrap_or(b.defaults.pids);
    if !(1..=b.max_pids).contains(&pids) {
        return Err(bad(format!(
            "pids {pids} is outside 1..={} (the server's maximum)",
            b.max_pids
        )));
    }
    Ok((timeout, memory, pids))
}

fn with_files(
    mut req: RunRequest,
    files: &[File],
    script: Option<&str>,
) -> Result<RunRequest, Refused> {
    for (i, f) in files.iter().enumerate() {
        let name = match &f.name {
            Some(n) if !n.is_empty() => n.clone(),
            _ if i == 0 => "main.py".to_string(),
            _ => format!("file{i}"),
        };
        if !crate::policy::is_plain_relative(std::path::Path::new(&name)) {
            return Err(bad(format!(
                "file name {name:?} is not a plain relative path"
            )));
        }
        req = req.file(name, f.decoded()?);
    }
    if let Some(s) = script {
        req = req.script(s);
    }
    Ok(req)
}

impl RunBody {
    pub fn check(self, b: &Bounds) -> Result<Checked, Refused> {
        let (timeout, memory, pids) = limits(b, self.timeout_ms, self.memory_bytes, self.pids)?;
        let script = match (&self.code, &self.script) {
            (Some(_), Some(_)) => return Err(bad("give either code or script, not both")),
            (Some(_), None) => None,
            (None, Some(s)) => Some(s.clone()),
            (None, None) => match self.files.first() {
                Some(_) => Some(
                    self.files[0]
                        .name
                        .clone()
                        .filter(|n| !n.is_empty())
                        .unwrap_or_else(|| "main.py".into()),
                ),
                None => return Err(bad("code or files is required")),
            },
        };
        let mut req = RunRequest::code(self.code.unwrap_or_default())
            .args(self.args)
            .stdin(self.stdin)
            .timeout(timeout);
        for (k, v) in self.env {
            crate::policy::validate_env_key(&k).map_err(|e| bad(e.to_string()))?;
            req = req.env(k, v);
        }
        let req = with_files(req, &self.files, script.as_deref())?;
        Ok(Checked { req, memory, pids })
    }
}

/// `POST /api/v2/execute`: Piston's request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PistonBody {
    pub language: Option<String>,
    pub version: Option<String>,
    pub files: Option<Vec<File>>,
    #[serde(default)]
    pub stdin: Option<String>,
    #[serde(default)]
    pub args: Option<Vec<String>>,
    pub run_timeout: Option<i64>,
    pub compile_timeout: Option<i64>,
    pub run_cpu_time: Option<i64>,
    pub compile_cpu_time: Option<i64>,
    pub run_memory_limit: Option<i64>,
    pub compile_memory_limit: Option<i64>,
}

/// Names the Python runtime answers to.
pub const ALIASES: &[&str] = &["python", "py", "py3", "python3"];

/// Whether Piston's `version` selector (`*`, `3`, `3.11`, `3.x`, `3.11.2`) matches.
pub fn version_matches(selector: &str, version: &str) -> bool {
    let sel = selector.trim();
    if sel.is_empty() || sel == "*" || sel == "x" {
        return true;
    }
    let have: Vec<&str> = version.split('.').collect();
    let want: Vec<&str> = sel.trim_start_matches(['=', 'v']).split('.').collect();
    want.len() <= have.len()
        && want
            .iter()
            .zip(&have)
            .all(|(w, h)| *w == "x" || *w == "*" || w == h)
}

fn positive_ms(name: &str, v: Option<i64>) -> Result<Option<u64>, Refused> {
    match v {
        None | Some(-1) => Ok(None),
        Some(n) if n > 0 => Ok(Some(n as u64)),
        Some(n) => Err(bad(format!(
            "{name} must be a positive number of ms or -1, not {n}"
        ))),
    }
}

impl PistonBody {
    pub fn check(self, b: &Bounds, version: &str) -> Result<Checked, Refused> {
        let language = self
            .language
            .ok_or_else(|| bad("language is required as a string"))?;
        let selector = self
            .version
            .ok_or_else(|| bad("version is required as a string"))?;
        if !ALIASES.contains(&language.as_str()) || !version_matches(&selector, version) {
            return Err(bad(format!("{language}-{selector} runtime is unknown")));
        }
        let files = self
            .files
            .ok_or_else(|| bad("files is required as an array"))?;
        if files.is_empty() {
            return Err(bad("files must contain at least one file"));
        }
        let timeout = positive_ms("run_timeout", self.run_timeout)?;
        // CPU time is held to as a wall-clock limit (never looser than asked).
        let cpu = positive_ms("run_cpu_time", self.run_cpu_time)?;
        let timeout = match (timeout, cpu) {
            (Some(t), Some(c)) => Some(t.min(c)),
            (t, c) => t.or(c),
        };
        let memory = match self.run_memory_limit {
            None | Some(-1) => None,
            Some(n) if n > 0 => Some(n as u64),
            Some(n) => {
                return Err(bad(format!(
                    "run_memory_limit must be positive or -1, not {n}"
                )));
            }
        };
        for (name, v) in [
            ("compile_timeout", self.compile_timeout),
            ("compile_cpu_time", self.compile_cpu_time),
            ("compile_memory_limit", self.compile_memory_limit),
        ] {
            if matches!(v, Some(n) if n < -1 || n == 0) {
                return Err(bad(format!("{name} must be positive or -1")));
            }
        }
        let (timeout, memory, pids) = limits(b, timeout, memory, None)?;
        let script = files[0]
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "main.py".into());
        let req = RunRequest::code("")
            .args(self.args.unwrap_or_default())
            .stdin(self.stdin.unwrap_or_default())
            .timeout(timeout);
        let req = with_files(req, &files, Some(&script))?;
        Ok(Checked { req, memory, pids })
    }
}

/// Piston's answer for one run, with pysandbox's whole report under `pysandbox`.
#[derive(Debug, Serialize)]
pub struct PistonRun {
    pub stdout: String,
    pub stderr: String,
    pub output: String,
    pub code: Option<i32>,
    pub signal: Option<String>,
    pub message: Option<String>,
    pub status: Option<&'static str>,
    pub cpu_time: u64,
    pub wall_time: u64,
    pub memory: u64,
    pub pysandbox: RunReport,
}

#[derive(Debug, Serialize)]
pub struct PistonResponse {
    pub language: &'static str,
    pub version: String,
    pub run: PistonRun,
}

fn signal_name(n: i32) -> String {
    let name = match n {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        31 => "SIGSYS",
        _ => return format!("SIG{n}"),
    };
    name.into()
}

pub fn piston_response(r: RunReport, version: &str) -> PistonResponse {
    let (status, message) = match r.status {
        RunStatus::Ok => (None, None),
        RunStatus::ExitNonzero => (
            Some("RE"),
            Some(format!("exited with code {}", r.exit_code.unwrap_or(1))),
        ),
        RunStatus::Signaled => (Some("SG"), Some("killed by a signal".to_string())),
        RunStatus::Oom => (Some("SG"), Some("killed: out of memory".to_string())),
        RunStatus::Timeout => (Some("TO"), Some("ran longer than run_timeout".to_string())),
        RunStatus::OutputLimit if r.stderr.dropped_bytes > 0 && r.stdout.dropped_bytes == 0 => {
            (Some("EL"), Some("stderr was too long".to_string()))
        }
        RunStatus::OutputLimit => (Some("OL"), Some("output was too long".to_string())),
        RunStatus::SandboxError => (Some("XX"), r.error.clone()),
    };
    let signal = match r.status {
        RunStatus::Timeout | RunStatus::Oom => Some("SIGKILL".to_string()),
        _ => r.signal.map(signal_name),
    };
    PistonResponse {
        language: "python",
        version: version.to_string(),
        run: PistonRun {
            output: format!("{}{}", r.stdout.text, r.stderr.text),
            stdout: r.stdout.text.clone(),
            stderr: r.stderr.text.clone(),
            code: r.exit_code,
            signal,
            message,
            status,
            cpu_time: r.cpu_ms,
            wall_time: r.wall_ms,
            memory: r.max_rss_bytes,
            pysandbox: r,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piston_version_selectors() {
        for s in ["*", "3", "3.11", "3.x", "3.11.2", "3.11.x", ""] {
            assert!(version_matches(s, "3.11.2"), "{s}");
        }
        for s in ["2", "3.10", "3.11.3", "3.11.2.1", "4.x"] {
            assert!(!version_matches(s, "3.11.2"), "{s}");
        }
    }

    #[test]
    fn file_encodings() {
        let f = |c: &str, e: Option<&str>| File {
            name: None,
            content: c.into(),
            encoding: e.map(Into::into),
        };
        assert_eq!(f("hi", None).decoded().unwrap(), b"hi");
        assert_eq!(f("aGk=", Some("base64")).decoded().unwrap(), b"hi");
        assert_eq!(f("6869", Some("hex")).decoded().unwrap(), b"hi");
        assert!(f("686", Some("hex")).decoded().is_err());
        assert!(f("zz", Some("hex")).decoded().is_err());
        assert!(f("x", Some("rot13")).decoded().is_err());
    }
}
