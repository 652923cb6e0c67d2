//! Running `ldd` (once, over many files) and parsing its per-file output into
//! the shared-library closure of each input.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread::JoinHandle;

use crate::error::{BuildError, tail};

/// One line of `ldd` output for one input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dependency {
    /// The name the library was requested by (`libz.so.1`); for the dynamic
    /// loader line (`/lib64/ld-linux-x86-64.so.2 (0x...)`) the path as printed.
    pub name: String,
    /// Where the host loader found it, as printed by ldd (not canonicalized).
    /// `None` means `not found`.
    pub path: Option<PathBuf>,
    /// True for the dynamic loader line, which has no `=>`.
    pub is_loader: bool,
}

/// The dependencies of one input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileDeps {
    pub file: PathBuf,
    pub deps: Vec<Dependency>,
}

/// Runs `ldd` once over all `files` and returns each file's dependencies,
/// in input order. Fails if any library is `not found`.
pub(crate) fn closure(files: &[PathBuf]) -> Result<Vec<FileDeps>, BuildError> {
    spawn(files)?.wait()
}

/// An `ldd` run in progress (so it can overlap with copying the stdlib).
pub(crate) struct PendingLdd {
    files: Vec<PathBuf>,
    /// Collects stdout/stderr concurrently so ldd never blocks on a full pipe.
    output: Option<JoinHandle<io::Result<Output>>>,
}

/// Starts `ldd` over all `files` (one process for all of them).
pub(crate) fn spawn(files: &[PathBuf]) -> Result<PendingLdd, BuildError> {
    if files.is_empty() {
        return Ok(PendingLdd {
            files: Vec::new(),
            output: None,
        });
    }
    let child = Command::new("ldd")
        .args(files)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                BuildError::LddNotFound
            } else {
                BuildError::LddFailed {
                    detail: format!("cannot run ldd: {e}"),
                }
            }
        })?;
    Ok(PendingLdd {
        files: files.to_vec(),
        output: Some(std::thread::spawn(move || child.wait_with_output())),
    })
}

impl PendingLdd {
    /// Waits for `ldd` and parses its output.
    pub(crate) fn wait(self) -> Result<Vec<FileDeps>, BuildError> {
        let Some(handle) = self.output else {
            return Ok(Vec::new());
        };
        let output = handle
            .join()
            .map_err(|_| BuildError::LddFailed {
                detail: "the thread reading ldd's output panicked".into(),
            })?
            .map_err(|e| BuildError::LddFailed {
                detail: format!("cannot read ldd output: {e}"),
            })?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        // ldd exits 1 when some input is "not a dynamic executable" (a static
        // interpreter); that is fine as long as every input has a section.
        let parsed = parse(&stdout, &self.files).map_err(|detail| BuildError::LddFailed {
            detail: format!(
                "{detail} (exit status {}, stderr: {})",
                output.status,
                tail(&String::from_utf8_lossy(&output.stderr), 400)
            ),
        })?;
        for fd in &parsed {
            if let Some(missing) = fd.deps.iter().find(|d| d.path.is_none()) {
                return Err(BuildError::LibraryNotFound {
                    library: missing.name.clone(),
                    needed_by: fd.file.clone(),
                });
            }
        }
        Ok(parsed)
    }
}

/// Parses `ldd` output for `inputs` (in the order they were passed).
///
/// With several inputs ldd prints a `path:` header line before each file's
/// block; with a single input it prints no header at all.
pub(crate) fn parse(output: &str, inputs: &[PathBuf]) -> Result<Vec<FileDeps>, String> {
    let mut result: Vec<FileDeps> = Vec::with_capacity(inputs.len());
    let single = inputs.len() == 1;
    if single {
        result.push(FileDeps {
            file: inputs[0].clone(),
            deps: Vec::new(),
        });
    }
    for line in output.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let indented = line.starts_with(|c: char| c.is_whitespace());
        if !single && !indented {
            // A header: must be the next input in order.
            let name = line.strip_suffix(':').unwrap_or(line);
            match inputs.get(result.len()) {
                Some(expected) if Path::new(name) == expected.as_path() => {
                    result.push(FileDeps {
                        file: expected.clone(),
                        deps: Vec::new(),
                    });
                    continue;
                }
                _ => return Err(format!("unexpected ldd output line `{line}`")),
            }
        }
        let Some(current) = result.last_mut() else {
            return Err(format!("ldd output line `{line}` before any file header"));
        };
        if let Some(dep) = parse_line(line.trim())? {
            current.deps.push(dep);
        }
    }
    if result.len() != inputs.len() {
        return Err(format!(
            "ldd printed {} of {} file sections",
            result.len(),
            inputs.len()
        ));
    }
    Ok(result)
}

/// Parses one indented dependency line; `Ok(None)` for lines that carry no
/// library (vDSO, "statically linked", ...).
fn parse_line(line: &str) -> Result<Option<Dependency>, String> {
    if line == "statically linked" || line.contains("not a dynamic executable") {
        return Ok(None);
    }
    if let Some((name, rest)) = line.split_once("=>") {
        let name = name.trim();
        let rest = rest.trim();
        if name.starts_with("linux-vdso") || name.starts_with("linux-gate") {
            return Ok(None);
        }
        if rest == "not found" {
            return Ok(Some(Dependency {
                name: name.to_string(),
                path: None,
                is_loader: false,
            }));
        }
        let path = strip_address(rest);
        if path.is_empty() {
            // Old glibc prints `linux-vdso.so.1 =>  (0x...)`.
            return Ok(None);
        }
        if !path.starts_with('/') {
            return Err(format!("unexpected library path in ldd line `{line}`"));
        }
        return Ok(Some(Dependency {
            name: name.to_string(),
            path: Some(PathBuf::from(path)),
            is_loader: false,
        }));
    }
    let path = strip_address(line);
    if path.starts_with("linux-vdso") || path.starts_with("linux-gate") {
        return Ok(None);
    }
    if path.starts_with('/') {
        return Ok(Some(Dependency {
            name: path.to_string(),
            path: Some(PathBuf::from(path)),
            is_loader: true,
        }));
    }
    Err(format!("unexpected ldd line `{line}`"))
}

/// `"/lib/libz.so.1 (0x00007f...)"` -> `"/lib/libz.so.1"`.
fn strip_address(s: &str) -> &str {
    match s.rfind(" (0x") {
        Some(i) if s.ends_with(')') => s[..i].trim(),
        _ => s.trim(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MULTI: &str = "/usr/bin/python3.11:
\tlinux-vdso.so.1 (0x00007fc640c10000)
\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007fc640b1f000)
\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007fc640b00000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fc6408f3000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007fc640c12000)
/usr/lib/python3.11/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so:
\tlinux-vdso.so.1 (0x00007f3f202e0000)
\tlibssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x00007f3f201f1000)
\tlibcrypto.so.3 => /lib/x86_64-linux-gnu/libcrypto.so.3 (0x00007f3f1fc00000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f3f1fa1e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f3f202e2000)
/lib64/ld-linux-x86-64.so.2:
\tstatically linked
";

    fn inputs(v: &[&str]) -> Vec<PathBuf> {
        v.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn parses_multi_file_output() {
        let files = inputs(&[
            "/usr/bin/python3.11",
            "/usr/lib/python3.11/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so",
            "/lib64/ld-linux-x86-64.so.2",
        ]);
        let parsed = parse(MULTI, &files).expect("parse");
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[0].file, files[0]);
        let names: Vec<_> = parsed[0].deps.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "libm.so.6",
                "libz.so.1",
                "libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        assert_eq!(
            parsed[0].deps[1].path.as_deref(),
            Some(Path::new("/lib/x86_64-linux-gnu/libz.so.1"))
        );
        assert!(!parsed[0].deps[1].is_loader);
        assert!(parsed[0].deps[3].is_loader);
        assert_eq!(parsed[1].deps.len(), 4);
        assert_eq!(parsed[1].deps[0].name, "libssl.so.3");
        assert!(parsed[2].deps.is_empty());
    }

    #[test]
    fn parses_single_file_output_without_header() {
        let out = "\tlinux-vdso.so.1 (0x00007fca12068000)
\tlibpython3.11.so.1.0 => /root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0 (0x00007fca11a00000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fca1181e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007fca1206a000)
";
        let files = inputs(&["/root/.pyenv/versions/3.11.7/bin/python3.11"]);
        let parsed = parse(out, &files).expect("parse");
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].deps.len(), 3);
        assert_eq!(parsed[0].deps[0].name, "libpython3.11.so.1.0");
        assert_eq!(
            parsed[0].deps[0].path.as_deref(),
            Some(Path::new(
                "/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0"
            ))
        );
    }

    #[test]
    fn reports_not_found_as_missing_path() {
        let out = "/a/_tkinter.so:
\tlinux-vdso.so.1 (0x00007ffd)
\tlibtk8.6.so => not found
\tlibc.so.6 => /lib/aarch64-linux-gnu/libc.so.6 (0x0000ffff)
\t/lib/ld-linux-aarch64.so.1 (0x0000ffff)
/b/x.so:
\tlibc.so.6 => /lib/aarch64-linux-gnu/libc.so.6 (0x0000ffff)
";
        let parsed = parse(out, &inputs(&["/a/_tkinter.so", "/b/x.so"])).expect("parse");
        assert_eq!(parsed[0].deps[0].name, "libtk8.6.so");
        assert_eq!(parsed[0].deps[0].path, None);
        assert!(parsed[0].deps[2].is_loader);
        assert_eq!(parsed[1].deps.len(), 1);
    }

    #[test]
    fn tolerates_old_glibc_vdso_and_loader_arrow() {
        let out = "\tlinux-vdso.so.1 =>  (0x00007ffc)
\tlibc.so.6 => /lib64/libc.so.6 (0x00007f)
\t/lib64/ld-linux-x86-64.so.2 => /usr/lib64/ld-linux-x86-64.so.2 (0x00007f)
";
        let parsed = parse(out, &inputs(&["/usr/bin/python3"])).expect("parse");
        assert_eq!(parsed[0].deps.len(), 2);
        assert_eq!(
            parsed[0].deps[1].path.as_deref(),
            Some(Path::new("/usr/lib64/ld-linux-x86-64.so.2"))
        );
    }

    #[test]
    fn rejects_missing_sections_and_garbage() {
        let files = inputs(&["/a", "/b"]);
        assert!(parse("/a:\n\tlibc.so.6 => /lib/libc.so.6 (0x1)\n", &files).is_err());
        assert!(parse("/b:\n", &files).is_err(), "out of order header");
        assert!(parse("\tlibc.so.6 => relative/path (0x1)\n", &files[..1]).is_err());
    }

    #[test]
    fn static_and_not_dynamic_inputs_have_no_deps() {
        let files = inputs(&["/a", "/b"]);
        let parsed = parse(
            "/a:\n\tstatically linked\n/b:\n\tnot a dynamic executable\n",
            &files,
        )
        .expect("parse");
        assert!(parsed.iter().all(|f| f.deps.is_empty()));
    }
}
