//! The pysandbox binary as a helper process. Everything that creates sandboxes from a
//! process that must stay untouched (a library caller, the pool, sessions, the server)
//! or that needs a second sandbox (an image build's build stage) runs this binary: one
//! finder, one way to spawn it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The pysandbox binary.
#[derive(Debug, Clone)]
pub struct Helper {
    path: PathBuf,
}

impl Helper {
    /// `$PYSANDBOX_BIN`; else the running binary when it is pysandbox; else a `pysandbox`
    /// next to the running executable; else the first `pysandbox` on PATH.
    pub fn find() -> Option<Helper> {
        if let Some(p) = std::env::var_os("PYSANDBOX_BIN") {
            return Some(Helper::at(p));
        }
        let exe = std::env::current_exe().ok();
        if let Some(e) = exe.as_ref().filter(|e| is_pysandbox(e)) {
            return Some(Helper::at(e));
        }
        let beside = exe.and_then(|e| e.parent().map(|d| d.join("pysandbox")));
        if let Some(b) = beside.filter(|b| b.is_file()) {
            return Some(Helper::at(b));
        }
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|d| d.join("pysandbox"))
            .find(|p| p.is_file())
            .map(Helper::at)
    }

    /// This binary.
    pub fn at(path: impl Into<PathBuf>) -> Helper {
        Helper { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A command running the binary (arguments to be added).
    pub fn command(&self) -> Command {
        Command::new(&self.path)
    }

    /// Starts `c` (made by [`Helper::command`]) with stdin and stdout piped.
    pub fn spawn(&self, mut c: Command, stderr: Stdio) -> std::io::Result<Child> {
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
    }
}

fn is_pysandbox(exe: &Path) -> bool {
    exe.file_name().is_some_and(|n| n == "pysandbox")
}
