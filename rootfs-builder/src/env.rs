//! Conda-style environment files (`env.yaml`), as micromamba and py4docker read them:
//!
//! ```yaml
//! name: analysis
//! channels: [conda-forge]
//! dependencies:
//!   - python=3.11
//!   - pip
//!   - pip:
//!       - numpy==2.1.*
//!       - requests
//! ```
//!
//! Only parsing and validation live here; what is installed how is the image build's.

use std::path::Path;

use serde::Deserialize;

/// A parsed environment file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EnvFile {
    pub name: Option<String>,
    pub channels: Vec<String>,
    /// `python=X.Y` (or `python==X.Y.Z`, `python>=...`): the version spec, if given.
    pub python: Option<String>,
    /// `pip` listed as a dependency.
    pub pip: bool,
    /// Conda packages other than python and pip (need micromamba in the base image).
    pub conda: Vec<String>,
    /// The `pip:` list, verbatim requirement specifiers.
    pub pip_packages: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a valid environment file: {msg}. Hint: see `name`, `channels`, `dependencies` in micromamba's env.yaml format"
    )]
    Parse { path: String, msg: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: Option<String>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    dependencies: Vec<RawDep>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    variables: Option<serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawDep {
    Spec(String),
    Pip { pip: Vec<String> },
}

/// The package name of a conda spec like `python=3.11`, `numpy>=1.26`, `conda-forge::x`.
fn conda_name(spec: &str) -> &str {
    let spec = spec.rsplit("::").next().unwrap_or(spec);
    let end = spec
        .find(|c: char| "=<>!~ ".contains(c))
        .unwrap_or(spec.len());
    spec[..end].trim()
}

impl EnvFile {
    pub fn parse(text: &str, path: &str) -> Result<EnvFile, EnvError> {
        let bad = |msg: String| EnvError::Parse {
            path: path.to_string(),
            msg,
        };
        let raw: Raw = serde_yaml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let _ = (&raw.prefix, &raw.variables); // accepted, not used by pysandbox
        let mut env = EnvFile {
            name: raw.name,
            channels: raw.channels,
            ..Default::default()
        };
        for dep in raw.dependencies {
            match dep {
                RawDep::Pip { pip } => {
                    for p in pip {
                        let p = p.trim().to_string();
                        if p.is_empty() || p.starts_with('-') {
                            return Err(bad(format!(
                                "pip entry {p:?}: only requirement specifiers are supported (no pip options)"
                            )));
                        }
                        env.pip_packages.push(p);
                    }
                }
                RawDep::Spec(s) => {
                    let s = s.trim().to_string();
                    match conda_name(&s) {
                        "python" => {
                            let v = s["python".len()..].trim_start_matches('=').trim();
                            env.python = (!v.is_empty()).then(|| v.to_string());
                        }
                        "pip" => env.pip = true,
                        "" => return Err(bad(format!("empty dependency {s:?}"))),
                        _ => env.conda.push(s),
                    }
                }
            }
        }
        if !env.pip_packages.is_empty() && !env.pip {
            // micromamba needs `pip` listed to run the pip section; be as lenient as conda
            // users expect, but say what happens.
            env.pip = true;
        }
        Ok(env)
    }

    pub fn load(path: &Path) -> Result<EnvFile, EnvError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| EnvError::Read {
            path: p.clone(),
            source,
        })?;
        EnvFile::parse(&text, &p)
    }

    /// Whether a `python` spec accepts version `have` ("3.11.7"). Understands `3.11`,
    /// `3.11.*`, `3.11.7`, `==3.11.7`; other operators are accepted as "any".
    pub fn python_matches(&self, have: &str) -> bool {
        let Some(spec) = &self.python else {
            return true;
        };
        let spec = spec.trim_start_matches("==").trim_end_matches(".*");
        if spec.starts_with(['<', '>', '!', '~']) {
            return true;
        }
        have == spec || have.starts_with(&format!("{spec}."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_micromamba_style() {
        let e = EnvFile::parse(
            "name: analysis\nchannels:\n  - conda-forge\ndependencies:\n  - python=3.11\n  - pip\n  - pip:\n    - numpy==2.1.*\n    - requests\n",
            "env.yaml",
        )
        .unwrap();
        assert_eq!(e.name.as_deref(), Some("analysis"));
        assert_eq!(e.channels, vec!["conda-forge"]);
        assert_eq!(e.python.as_deref(), Some("3.11"));
        assert!(e.pip);
        assert!(e.conda.is_empty());
        assert_eq!(e.pip_packages, vec!["numpy==2.1.*", "requests"]);
        assert!(e.python_matches("3.11.7"));
        assert!(!e.python_matches("3.12.1"));
        assert!(!e.python_matches("3.1.0"));
    }

    #[test]
    fn conda_packages_and_errors() {
        let e = EnvFile::parse(
            "dependencies: [python, 'conda-forge::numpy>=1.26', pip]\n",
            "e",
        )
        .unwrap();
        assert_eq!(e.conda, vec!["conda-forge::numpy>=1.26"]);
        assert!(e.python.is_none() && e.python_matches("3.13.0"));
        assert!(EnvFile::parse("dependencies: [{pip: ['--index-url x']}]", "e").is_err());
        assert!(EnvFile::parse("nonsense: 1", "e").is_err());
        assert!(EnvFile::parse("dependencies: 3", "e").is_err());
    }
}
