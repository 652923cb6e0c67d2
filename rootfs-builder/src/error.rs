//! The crate's error type: every failure names the path or step involved and,
//! where there is one, the fix.

use std::io;
use std::path::{Path, PathBuf};

/// Everything that can go wrong while probing a host interpreter or building a rootfs.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The interpreter could not be started at all.
    #[error(
        "cannot run python interpreter `{}`: {source}; install python3 or pass the path of a working interpreter",
        python.display()
    )]
    PythonSpawn {
        python: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The probe script ran but failed.
    #[error(
        "probing python interpreter `{}` failed ({status}): {stderr}; check that it is a working CPython 3 interpreter",
        python.display()
    )]
    ProbeFailed {
        python: PathBuf,
        status: String,
        stderr: String,
    },

    /// The probe script printed something we do not understand.
    #[error("unexpected probe output from python interpreter `{}`: {detail}", python.display())]
    ProbeOutput { python: PathBuf, detail: String },

    /// The interpreter works but cannot be turned into an image.
    #[error("unsupported python interpreter `{}`: {detail}", python.display())]
    UnsupportedPython { python: PathBuf, detail: String },

    /// `build_rootfs` was pointed at a directory that already has content.
    #[error(
        "rootfs destination `{}` exists and is not an empty directory: remove it or choose another path",
        path.display()
    )]
    DestNotEmpty { path: PathBuf },

    /// A filesystem operation failed.
    #[error("{step} `{}`: {source}", path.display())]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// `ldd` is not installed.
    #[error(
        "ldd not found: install libc-bin (the glibc tools package) so shared libraries can be resolved"
    )]
    LddNotFound,

    /// `ldd` ran but its output could not be used.
    #[error("ldd failed: {detail}")]
    LddFailed { detail: String },

    /// A module or the interpreter needs a library the host loader cannot find.
    #[error(
        "`{}` needs shared library {library}, which the host's dynamic loader cannot find: install the package that provides {library}",
        needed_by.display()
    )]
    LibraryNotFound { library: String, needed_by: PathBuf },

    /// The ELF headers of a binary could not be read.
    #[error("cannot read ELF program headers of `{}`: {detail}", path.display())]
    Elf { path: PathBuf, detail: String },

    /// Two different host files would land on the same image path.
    #[error("image path `{}` is already taken: {detail}", path.display())]
    Conflict { path: PathBuf, detail: String },

    /// Symlink resolution did not terminate.
    #[error("too many levels of symbolic links while resolving host path `{}`", path.display())]
    SymlinkLoop { path: PathBuf },

    /// A host path is of a kind we cannot put into the image.
    #[error("host path `{}` {detail}: it cannot be copied into the image", path.display())]
    UnsupportedFile { path: PathBuf, detail: String },

    /// Byte-compiling the copied standard library failed.
    #[error(
        "byte-compiling the image's standard library with `{} -m compileall` failed ({status}): {output}",
        python.display()
    )]
    Compileall {
        python: PathBuf,
        status: String,
        output: String,
    },
}

/// Returns a closure turning an `io::Error` into [`BuildError::Io`] for `step` on `path`.
pub(crate) fn io_err(step: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BuildError {
    let path = path.to_path_buf();
    move |source| BuildError::Io { step, path, source }
}

/// Shortens process output for an error message: keeps the last `max` bytes.
/// Lines are joined with ` | ` so messages stay on one line.
pub(crate) fn tail(text: &str, max: usize) -> String {
    let joined = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ");
    let text = joined.as_str();
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &text[start..])
}
