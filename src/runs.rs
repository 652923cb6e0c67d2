//! Kept runs (`run --keep`): what a run left in `/tmp`, `HOME` and its output folder,
//! kept after it ends under the run's id, in `DATA/runs/ID` (mode 0700, the caller's
//! only), for `pysandbox ps`, `inspect ID`, `run --from ID`, `rm ID` and `prune`.
//!
//! Files land there through the output folder's merge (capped by the sizes of the
//! tmpfs they replace, never through a symlink, no set-id bits) and without execute
//! bits: kept state is data, never a program for the host.
//!
//! Must not: follow a symlink while listing or removing (a kept run is the script's
//! data), or accept an id that is not a run id (no path from the command line reaches
//! the file system unchecked).

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The areas of a kept run: folder name, and where it was in the sandbox.
pub const AREAS: &[(&str, &str)] = &[
    ("tmp", "/tmp"),
    ("home", crate::spec::HOME_DIR),
    ("output", crate::spec::OUTPUT_DIR),
];

/// What `ps` shows of a kept run (saved as `run.json` when the run ends).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptRun {
    pub id: String,
    pub image: String,
    /// Unix time the run ended.
    pub ended: u64,
    pub status: String,
    pub exit_code: Option<i32>,
    /// Bytes its files take (filled in by [`list`]).
    #[serde(default)]
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    #[error(
        "{0:?} is not a run id (ps- and 16 hex digits). Hint: `pysandbox ps` lists the kept runs"
    )]
    BadId(String),
    #[error("no kept run {0}. Hint: `pysandbox ps` lists the kept runs (`run --keep` keeps one)")]
    NotFound(String),
    #[error("kept runs: {step} {}: {source}", path.display())]
    Io {
        step: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(transparent)]
    Dirs(#[from] crate::dirs::DirsError),
}

fn io_err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RunsError + 'a {
    move |source| RunsError::Io {
        step,
        path: path.to_path_buf(),
        source,
    }
}

/// `DATA/runs`, made private if missing.
pub fn root() -> Result<PathBuf, RunsError> {
    let dir = crate::dirs::data_dir()?.join("runs");
    crate::dirs::ensure_private_dir(&dir, 0o700, "XDG_DATA_HOME")?;
    Ok(dir)
}

/// Whether `id` has the shape of a run id.
pub fn valid_id(id: &str) -> bool {
    id.strip_prefix("ps-").is_some_and(|h| {
        h.len() == 16
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The folder of a kept run that ended (it has its `run.json`).
pub fn path(id: &str) -> Result<PathBuf, RunsError> {
    if !valid_id(id) {
        return Err(RunsError::BadId(id.to_string()));
    }
    let dir = root()?.join(id);
    match fs::symlink_metadata(dir.join("run.json")) {
        Ok(m) if m.is_file() => Ok(dir),
        _ => Err(RunsError::NotFound(id.to_string())),
    }
}

/// Makes the (empty, private) folders of a run about to be kept.
pub fn create(id: &str) -> Result<PathBuf, RunsError> {
    if !valid_id(id) {
        return Err(RunsError::BadId(id.to_string()));
    }
    let dir = root()?.join(id);
    let mk = |p: &Path| {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(p)
            .map_err(io_err("creating", p))
    };
    mk(&dir)?;
    for (name, _) in AREAS {
        mk(&dir.join(name))?;
    }
    Ok(dir)
}

/// Records how a kept run ended: from then on `ps` lists it.
pub fn finish(dir: &Path, run: &KeptRun) -> Result<(), RunsError> {
    let p = dir.join("run.json");
    let body = serde_json::to_vec(run).unwrap_or_default();
    fs::write(&p, body).map_err(io_err("writing", &p))
}

/// Every file, folder and link under `dir`, never following a link: (path relative to
/// `dir`, bytes it takes, is a folder).
fn walk(dir: &Path, rel: &Path, out: &mut Vec<(PathBuf, u64, bool)>) {
    let Ok(rd) = fs::read_dir(dir.join(rel)) else {
        return;
    };
    let mut names: Vec<_> = rd.flatten().map(|e| e.file_name()).collect();
    names.sort();
    for n in names {
        let r = rel.join(&n);
        let Ok(m) = fs::symlink_metadata(dir.join(&r)) else {
            continue;
        };
        out.push((r.clone(), m.blocks() * 512, m.is_dir()));
        if m.is_dir() && out.len() < 1_000_000 {
            walk(dir, &r, out);
        }
    }
}

/// The kept runs, oldest first, with their sizes.
pub fn list() -> Result<Vec<KeptRun>, RunsError> {
    let root = root()?;
    let mut runs = Vec::new();
    for e in fs::read_dir(&root)
        .map_err(io_err("reading", &root))?
        .flatten()
    {
        let id = e.file_name().to_string_lossy().into_owned();
        let Ok(dir) = path(&id) else { continue };
        let Ok(mut run) = fs::read(dir.join("run.json"))
            .map_err(|_| ())
            .and_then(|b| serde_json::from_slice::<KeptRun>(&b).map_err(|_| ()))
        else {
            continue;
        };
        let mut files = Vec::new();
        walk(&dir, Path::new(""), &mut files);
        run.bytes = files.iter().map(|f| f.1).sum();
        runs.push(run);
    }
    runs.sort_by(|a, b| a.ended.cmp(&b.ended).then(a.id.cmp(&b.id)));
    Ok(runs)
}

/// What a kept run created or changed: (path as the sandbox saw it, bytes, is a folder).
pub fn contents(id: &str) -> Result<Vec<(String, u64, bool)>, RunsError> {
    let dir = path(id)?;
    let mut out = Vec::new();
    for (name, shown) in AREAS {
        let mut files = Vec::new();
        walk(&dir.join(name), Path::new(""), &mut files);
        out.extend(
            files
                .into_iter()
                .map(|(p, b, d)| (format!("{shown}/{}", p.display()), b, d)),
        );
    }
    Ok(out)
}

/// Removes a kept run.
pub fn remove(id: &str) -> Result<(), RunsError> {
    let dir = path(id)?;
    // remove_dir_all never follows a symlink it meets.
    fs::remove_dir_all(&dir).map_err(io_err("removing", &dir))
}

/// Removes the folder of a run that did not end (no `run.json`), if any.
pub fn discard(id: &str) {
    if valid_id(id)
        && path(id).is_err()
        && let Ok(root) = root()
    {
        let _ = fs::remove_dir_all(root.join(id));
    }
}

/// Removes every kept run (and what a run killed before it ended left); returns how many.
pub fn prune() -> Result<usize, RunsError> {
    let root = root()?;
    let mut n = 0;
    for e in fs::read_dir(&root)
        .map_err(io_err("reading", &root))?
        .flatten()
    {
        let id = e.file_name().to_string_lossy().into_owned();
        if valid_id(&id) {
            let p = root.join(&id);
            fs::remove_dir_all(&p).map_err(io_err("removing", &p))?;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(valid_id("ps-0123456789abcdef"));
        for bad in [
            "ps-0123",
            "../etc",
            "ps-0123456789ABCDEF",
            "ps-0123456789abcdeg",
            "x",
        ] {
            assert!(!valid_id(bad), "{bad}");
        }
    }
}
