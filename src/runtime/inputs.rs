//! The host side of one run's inputs, resolved in the caller's view before any namespace
//! change: the script (a file, its folder, or staged source), the data and output folders
//! (made and checked here, never followed through a symlink), and stdin.

use std::fs;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::{Mode, RuntimeError};
use crate::policy::{RunPolicy, Script, StdinSource};
use crate::spec;

/// Host paths of one run, resolved in the caller's view before any namespace change.
pub(super) struct Inputs {
    /// Host folder mounted at /usr/app/src, or a staged copy (`None` = stage `script`).
    pub src_dir: Option<PathBuf>,
    /// Source text to stage as /usr/app/src/<name> when there is no src_dir.
    pub staged_script: Option<(String, Vec<u8>)>,
    /// Path of the script inside the sandbox (None for --code).
    pub script_in_sandbox: Option<String>,
    pub data: Option<PathBuf>,
    pub output: Option<PathBuf>,
    pub stdin: Option<OwnedFd>,
    /// Said in the report (e.g. no output folder could be made).
    pub warnings: Vec<String>,
}

pub(super) fn input_err(msg: String) -> RuntimeError {
    RuntimeError::Input(msg)
}

fn canonical_dir(p: &Path, what: &str) -> Result<PathBuf, RuntimeError> {
    let c = fs::canonicalize(p).map_err(|e| input_err(format!("{what} {}: {e}", p.display())))?;
    if !c.is_dir() {
        return Err(input_err(format!(
            "{what} {} is not a directory",
            p.display()
        )));
    }
    Ok(c)
}

impl Inputs {
    /// `created` collects the output folder if it is made here (removed again if the run
    /// does not start).
    pub(super) fn gather(
        p: &RunPolicy,
        mode: Mode,
        created: &mut Vec<PathBuf>,
    ) -> Result<Inputs, RuntimeError> {
        let mut inp = Inputs {
            src_dir: None,
            staged_script: None,
            script_in_sandbox: None,
            data: None,
            output: None,
            stdin: None,
            warnings: Vec::new(),
        };
        match &p.script {
            Script::File(path) => {
                let real = fs::canonicalize(path)
                    .map_err(|e| input_err(format!("script {}: {e}", path.display())))?;
                let meta = fs::metadata(&real)
                    .map_err(|e| input_err(format!("script {}: {e}", path.display())))?;
                if !meta.is_file() {
                    return Err(input_err(format!(
                        "script {} is not a regular file",
                        path.display()
                    )));
                }
                // Fail now, in the caller's terms, if the caller cannot read it.
                fs::File::open(&real)
                    .map_err(|e| input_err(format!("script {}: {e}", path.display())))?;
                let name = real
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "script.py".into());
                if p.no_fs {
                    let body = fs::read(&real)
                        .map_err(|e| input_err(format!("script {}: {e}", path.display())))?;
                    inp.script_in_sandbox = Some(format!("{}/{name}", spec::SRC_DIR));
                    inp.staged_script = Some((name, body));
                } else if let Some(dev) = &p.dev_src {
                    let dev = canonical_dir(dev, "--dev folder")?;
                    let rel = real.strip_prefix(&dev).map_err(|_| {
                        input_err(format!(
                            "with --dev {}, the script must be inside that folder",
                            dev.display()
                        ))
                    })?;
                    inp.script_in_sandbox =
                        Some(format!("{}/{}", spec::SRC_DIR, rel.to_string_lossy()));
                    inp.src_dir = Some(dev);
                } else {
                    inp.script_in_sandbox = Some(format!("{}/{name}", spec::SRC_DIR));
                    inp.src_dir = real.parent().map(Path::to_path_buf);
                }
            }
            Script::Source(body) => {
                inp.script_in_sandbox = Some(format!("{}/script.py", spec::SRC_DIR));
                inp.staged_script = Some(("script.py".into(), body.clone()));
                if let Some(dev) = &p.dev_src {
                    inp.src_dir = Some(canonical_dir(dev, "--dev folder")?);
                    inp.staged_script = None;
                    return Err(input_err(
                        "--dev needs a script file inside the --dev folder, not `-`".into(),
                    ));
                }
            }
            Script::Code(_) | Script::Repl => {
                if let Some(dev) = &p.dev_src {
                    inp.src_dir = Some(canonical_dir(dev, "--dev folder")?);
                }
            }
        }

        if !p.no_fs {
            let data = match &p.data {
                Some(d) => canonical_dir(d, "data folder")?,
                None => {
                    let cwd = std::env::current_dir().map_err(|e| {
                        input_err(format!("the current directory is not usable: {e}"))
                    })?;
                    canonical_dir(&cwd, "current directory")?
                }
            };
            if data == Path::new("/") {
                return Err(input_err(
                    "refusing to share the whole host file system as the data folder. Hint: cd into a project folder, or pass --data DIR or --no-fs".into(),
                ));
            }
            let default_out = data.join("output");
            // A data folder the caller cannot write to (e.g. a system folder): run with a
            // read-only output/ rather than refuse, and say so.
            if p.output.is_none() && !default_out.exists() && !writable(&data) {
                inp.warnings.push(format!(
                    "no output folder: {} cannot be created here, so the script's output/ is read-only (pass --output DIR)",
                    default_out.display()
                ));
                inp.data = Some(data);
                return inp.with_stdin(p);
            }
            let out = p.output.clone().unwrap_or_else(|| default_out.clone());
            let out = prepare_output(&out, p.output.is_some(), mode, created)?;
            if out != default_out {
                match fs::symlink_metadata(&default_out) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        return Err(input_err(format!(
                            "{} exists and is not a folder, so --output cannot be mounted over it",
                            default_out.display()
                        )));
                    }
                    // The sandbox's view of the data folder provides the mount point.
                    Err(_) => {}
                }
            }
            inp.data = Some(data);
            inp.output = Some(out);
        }
        inp.with_stdin(p)
    }

    fn with_stdin(mut self, p: &RunPolicy) -> Result<Inputs, RuntimeError> {
        let inp = &mut self;
        inp.stdin = match &p.stdin {
            StdinSource::Null => None,
            StdinSource::File(f) => {
                let file = fs::File::open(f)
                    .map_err(|e| input_err(format!("--stdin {}: {e}", f.display())))?;
                Some(OwnedFd::from(file))
            }
            StdinSource::Inherit => {
                if matches!(p.script, Script::Source(_)) {
                    None // stdin carried the script itself
                } else {
                    // SAFETY: F_DUPFD_CLOEXEC on fd 0; a closed stdin just yields None.
                    let fd = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) };
                    // SAFETY: fresh descriptor when fd >= 0.
                    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
                }
            }
        };
        Ok(self)
    }
}

/// Whether the caller may create entries in `dir` (access(2): real ids, ACLs, read-only
/// file systems).
fn writable(dir: &Path) -> bool {
    use nix::unistd::{AccessFlags, access};
    access(dir, AccessFlags::W_OK | AccessFlags::X_OK).is_ok()
}

/// Creates the output folder if missing; refuses symlinks and non-folders. As root for a
/// sudo caller, the new folder belongs to that caller.
fn prepare_output(
    out: &Path,
    explicit: bool,
    mode: Mode,
    created: &mut Vec<PathBuf>,
) -> Result<PathBuf, RuntimeError> {
    match fs::symlink_metadata(out) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(input_err(format!(
                "refusing output folder {}: it is a symbolic link (a script could write wherever it points)",
                out.display()
            )));
        }
        Ok(m) if !m.is_dir() => {
            return Err(input_err(format!(
                "output {} exists and is not a folder",
                out.display()
            )));
        }
        Ok(_) => {}
        Err(_) => {
            let mut b = fs::DirBuilder::new();
            b.mode(0o755).recursive(explicit);
            b.create(out).map_err(|e| {
                input_err(format!(
                    "cannot create output folder {}: {e}",
                    out.display()
                ))
            })?;
            created.push(out.to_owned());
            if let Mode::Root { caller, .. } = mode
                && caller.uid != 0
            {
                let _ = std::os::unix::fs::chown(out, Some(caller.uid), Some(caller.gid));
            }
        }
    }
    fs::canonicalize(out).map_err(|e| input_err(format!("output folder {}: {e}", out.display())))
}
