//! A claim: what a pool (or `Sandbox::run`) sends a warm worker when it claims it (one
//! JSON line on the worker's stdin), and the request the worker hands the sandbox's
//! waiting interpreter (see `pool/bootstrap.py`).

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::policy::{self, PolicyError};
use crate::spec;

/// One claimed run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireClaim {
    /// Source run as `python -c` (when `script` is `None`).
    pub code: String,
    /// Run this one of `files` as `python /usr/app/src/NAME` instead.
    pub script: Option<String>,
    /// Files placed read-only in `/usr/app/src` (base64).
    pub files: Vec<(String, String)>,
    pub args: Vec<String>,
    /// Variables set before the script starts (never ones the interpreter reads at its
    /// own start: see [`applies_at_claim`]).
    pub env: Vec<(String, String)>,
    /// The script's stdin (base64).
    pub stdin: String,
    pub timeout_ms: u64,
    /// Working directory: `/usr/app/src` when true (where `files` are), else the data
    /// folder as in `pysandbox run`.
    pub cwd_src: bool,
}

/// A variable the interpreter (or the dynamic loader, or libc) reads when it starts:
/// setting it later would not act as `-e` does, so such a run needs an interpreter
/// started with it.
pub fn applies_at_claim(key: &str) -> bool {
    const AT_START: &[&str] = &["PYTHON", "LC_", "LD_", "MALLOC_", "GLIBC_"];
    !AT_START.iter().any(|p| key.starts_with(p)) && !matches!(key, "LANG" | "TZ" | "HOME")
}

pub fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Decodes standard base64.
pub fn unb64(s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("not valid base64: {e}"))
}

fn unb64_field(what: &str, s: &str) -> Result<Vec<u8>, PolicyError> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| PolicyError::Invalid(format!("{what} is not valid base64: {e}")))
}

fn no_nul(what: &str, s: &str) -> Result<(), PolicyError> {
    if s.contains('\0') {
        return Err(PolicyError::Invalid(format!("{what} contains a NUL byte")));
    }
    Ok(())
}

/// A claim, checked and decoded: the interpreter's request and stdin, and the files.
pub struct Decoded {
    pub to_stdin: Vec<u8>,
    pub files: Vec<(String, Vec<u8>)>,
    pub timeout: std::time::Duration,
}

impl WireClaim {
    /// Checks the claim as `pysandbox run` checks its inputs, and encodes the request.
    pub fn decode(&self) -> Result<Decoded, PolicyError> {
        if self.timeout_ms == 0 {
            return Err(PolicyError::Invalid("the timeout must be positive".into()));
        }
        let mut files = Vec::with_capacity(self.files.len());
        for (name, data) in &self.files {
            if !policy::is_plain_relative(std::path::Path::new(name)) {
                return Err(PolicyError::Invalid(format!(
                    "file name {name:?} is not a plain relative path"
                )));
            }
            if files.iter().any(|(n, _): &(String, Vec<u8>)| n == name) {
                return Err(PolicyError::Invalid(format!(
                    "file {name:?} is given twice"
                )));
            }
            files.push((name.clone(), unb64_field(&format!("file {name:?}"), data)?));
        }
        let (mode, source) = match &self.script {
            Some(name) => {
                if !files.iter().any(|(n, _)| n == name) {
                    return Err(PolicyError::Invalid(format!(
                        "the script {name:?} is not one of the files"
                    )));
                }
                ("f", format!("{}/{name}", spec::SRC_DIR))
            }
            None => {
                no_nul("the code", &self.code)?;
                ("c", self.code.clone())
            }
        };
        let cwd = if self.cwd_src {
            spec::SRC_DIR
        } else {
            spec::DATA_DIR
        };
        let mut fields: Vec<&[u8]> = vec![mode.as_bytes(), source.as_bytes(), cwd.as_bytes()];
        let argc = self.args.len().to_string();
        fields.push(argc.as_bytes());
        for a in &self.args {
            no_nul("an argument", a)?;
            fields.push(a.as_bytes());
        }
        let env: Vec<String> = self
            .env
            .iter()
            .map(|(k, v)| {
                policy::validate_env_key(k)?;
                if !applies_at_claim(k) {
                    return Err(PolicyError::Invalid(format!(
                        "{k} is read when the interpreter starts: it cannot be set on a warm sandbox"
                    )));
                }
                no_nul("an environment value", v)?;
                Ok(format!("{k}={v}"))
            })
            .collect::<Result<_, PolicyError>>()?;
        fields.extend(env.iter().map(|e| e.as_bytes()));
        let body = fields.join(&0u8);
        let mut to_stdin = Vec::with_capacity(4 + body.len());
        to_stdin.extend_from_slice(&(body.len() as u32).to_le_bytes());
        to_stdin.extend_from_slice(&body);
        to_stdin.extend_from_slice(&unb64_field("stdin", &self.stdin)?);
        Ok(Decoded {
            to_stdin,
            files,
            timeout: std::time::Duration::from_millis(self.timeout_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_becomes_the_bootstrap_request() {
        let c = WireClaim {
            code: "print(1)".into(),
            args: vec!["a".into()],
            env: vec![("X".into(), "1".into())],
            stdin: b64(b"in"),
            timeout_ms: 1000,
            ..Default::default()
        };
        let d = c.decode().unwrap();
        let body = b"c\0print(1)\0/usr/app/data\x001\0a\0X=1";
        assert_eq!(&d.to_stdin[..4], &(body.len() as u32).to_le_bytes());
        assert_eq!(&d.to_stdin[4..4 + body.len()], body);
        assert_eq!(&d.to_stdin[4 + body.len()..], b"in");
    }

    #[test]
    fn bad_claims_are_refused() {
        let ok = WireClaim {
            timeout_ms: 1,
            ..Default::default()
        };
        let bad = [
            WireClaim {
                code: "a\0b".into(),
                ..ok.clone()
            },
            WireClaim {
                env: vec![("PYTHONPATH".into(), "/x".into())],
                ..ok.clone()
            },
            WireClaim {
                env: vec![("1X".into(), "1".into())],
                ..ok.clone()
            },
            WireClaim {
                files: vec![("../x".into(), String::new())],
                ..ok.clone()
            },
            WireClaim {
                files: vec![("/etc/x".into(), String::new())],
                ..ok.clone()
            },
            WireClaim {
                script: Some("main.py".into()),
                ..ok.clone()
            },
            WireClaim {
                stdin: "***".into(),
                ..ok.clone()
            },
            WireClaim {
                timeout_ms: 0,
                ..ok.clone()
            },
        ];
        for c in bad {
            assert!(c.decode().is_err(), "{c:?}");
        }
        assert!(ok.decode().is_ok());
    }
}
