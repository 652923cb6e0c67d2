//! The writer pool: creating files is what an unpack spends its time on, so small files
//! (up to 1 MiB, read into memory by the unpacking thread) are created by writer threads,
//! each with its own bounded queue; all files of one directory go to the same writer (the
//! kernel serializes entries of a directory anyway). A writer creates its file with
//! `O_EXCL` in a directory descriptor it was handed, sets mode and mtime, and stops
//! writing after the pool's first error, which `wait` returns. The unpacker waits for the
//! writers (`barrier`) before anything that could touch a file they have not created yet.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;

use super::{Time, UnpackError, Unpacker, set_times};
use crate::sys::fs::{create_file, fchmod};

/// Files up to this size are written by the writer threads (read into memory first).
pub(super) const PARALLEL_MAX: u64 = 1 << 20;
/// Files queued per writer.
const QUEUE: usize = 32;

/// Which writer creates the files of directory `parent`: always the same one.
pub(super) fn dir_hash(parent: &[&[u8]]) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parent.hash(&mut h);
    h.finish() as usize
}

/// A small file for a writer thread.
pub(super) struct Job {
    pub(super) dir: Arc<OwnedFd>,
    pub(super) name: CString,
    pub(super) data: Vec<u8>,
    pub(super) mode: u32,
    pub(super) mtime: Time,
    /// The entry's name in the layer, for errors.
    pub(super) raw: Vec<u8>,
    pub(super) layer: String,
}

impl Job {
    fn run(&self) -> Result<(), UnpackError> {
        let err = |op: &'static str| {
            move |source: io::Error| UnpackError::Io {
                layer: self.layer.clone(),
                entry: String::from_utf8_lossy(&self.raw).into_owned(),
                op,
                source,
            }
        };
        let fd = create_file(self.dir.as_fd(), &self.name).map_err(err("create"))?;
        let mut f = File::from(fd);
        f.write_all(&self.data).map_err(err("write"))?;
        fchmod(f.as_fd(), self.mode).map_err(err("chmod"))?;
        set_times(f.as_fd(), None, self.mtime).map_err(err("set mtime"))?;
        Ok(())
    }
}

#[derive(Default)]
struct PoolState {
    inflight: usize,
    error: Option<UnpackError>,
}

#[derive(Default)]
struct PoolShared {
    state: std::sync::Mutex<PoolState>,
    idle: std::sync::Condvar,
    failed: std::sync::atomic::AtomicBool,
}

impl PoolShared {
    fn state(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Writer threads, each with its own queue.
pub(super) struct Pool {
    txs: Vec<mpsc::SyncSender<Job>>,
    handles: Vec<std::thread::JoinHandle<()>>,
    shared: Arc<PoolShared>,
}

impl Pool {
    pub(super) fn new(n: usize) -> Pool {
        let shared = Arc::new(PoolShared::default());
        let mut txs = Vec::new();
        let mut handles = Vec::new();
        for i in 0..n {
            let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE);
            let sh = shared.clone();
            let h = std::thread::Builder::new()
                .name(format!("unpack-writer-{i}"))
                .spawn(move || {
                    for job in rx {
                        if !sh.failed.load(Ordering::Relaxed)
                            && let Err(e) = job.run()
                        {
                            sh.failed.store(true, Ordering::Relaxed);
                            sh.state().error.get_or_insert(e);
                        }
                        drop(job);
                        let mut st = sh.state();
                        st.inflight -= 1;
                        if st.inflight == 0 {
                            sh.idle.notify_all();
                        }
                    }
                });
            // A writer that cannot start: the others (or the calling thread) do its share.
            if let Ok(h) = h {
                txs.push(tx);
                handles.push(h);
            }
        }
        Pool {
            txs,
            handles,
            shared,
        }
    }

    pub(super) fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Relaxed)
    }

    pub(super) fn send(&self, which: usize, job: Job) -> Result<(), UnpackError> {
        if self.txs.is_empty() {
            return job.run();
        }
        self.shared.state().inflight += 1;
        let tx = &self.txs[which % self.txs.len()];
        if let Err(mpsc::SendError(job)) = tx.send(job) {
            self.shared.state().inflight -= 1;
            return job.run();
        }
        Ok(())
    }

    pub(super) fn wait(&self) -> Result<(), UnpackError> {
        let mut st = self.shared.state();
        while st.inflight > 0 {
            st = self.shared.idle.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        match st.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.txs.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

impl Unpacker {
    /// Whether `key`, or a directory above it, is a file handed to the writers.
    pub(super) fn is_pending(&self, key: &[u8]) -> bool {
        if self.pending.contains(key) {
            return true;
        }
        let mut end = key.len();
        while let Some(p) = key[..end].iter().rposition(|&b| b == b'/') {
            if self.pending.contains(&key[..p]) {
                return true;
            }
            end = p;
        }
        false
    }

    /// Waits until the writers have created every file handed to them; their first
    /// error, if any.
    pub(super) fn barrier(&mut self) -> Result<(), UnpackError> {
        let Some(pool) = &self.pool else {
            return Ok(());
        };
        let r = pool.wait();
        self.pending.clear();
        r
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;

    use super::*;
    use crate::sys::fs::open_path_dir;

    fn job(dir: &Arc<OwnedFd>, name: &str, data: &[u8], mode: u32, sec: i64) -> Job {
        Job {
            dir: dir.clone(),
            name: CString::new(name).unwrap(),
            data: data.to_vec(),
            mode,
            mtime: Time { sec, nsec: 5 },
            raw: format!("layer/path/{name}").into_bytes(),
            layer: "sha256:test".into(),
        }
    }

    fn dirs(top: &Path, names: &[&str]) -> Vec<Arc<OwnedFd>> {
        names
            .iter()
            .map(|n| {
                fs::create_dir(top.join(n)).unwrap();
                Arc::new(open_path_dir(&top.join(n)).unwrap())
            })
            .collect()
    }

    #[test]
    fn writers_create_every_file_with_its_mode_and_mtime() {
        let tmp = tempfile::tempdir().unwrap();
        let ds = dirs(tmp.path(), &["a", "b", "c"]);
        let pool = Pool::new(3);
        for i in 0..60 {
            let d = i % 3;
            let data = format!("file {i}").repeat(i);
            let parent: &[&[u8]] = &[b"x", &[d as u8]];
            pool.send(
                dir_hash(parent),
                job(
                    &ds[d],
                    &format!("f{i}"),
                    data.as_bytes(),
                    0o640,
                    1_600_000_000 + i as i64,
                ),
            )
            .unwrap();
        }
        pool.wait().unwrap();
        assert!(!pool.failed());
        for i in 0..60 {
            let p = tmp
                .path()
                .join(["a", "b", "c"][i % 3])
                .join(format!("f{i}"));
            assert_eq!(
                fs::read(&p).unwrap(),
                format!("file {i}").repeat(i).into_bytes()
            );
            let md = fs::metadata(&p).unwrap();
            assert_eq!(md.permissions().mode() & 0o7777, 0o640);
            assert_eq!((md.mtime(), md.mtime_nsec()), (1_600_000_000 + i as i64, 5));
        }
    }

    #[test]
    fn the_first_error_is_reported_and_later_files_are_not_written() {
        let tmp = tempfile::tempdir().unwrap();
        let ds = dirs(tmp.path(), &["d"]);
        fs::write(tmp.path().join("d/taken"), b"lower layer").unwrap();
        let pool = Pool::new(2);
        pool.send(0, job(&ds[0], "fine", b"1", 0o600, 1)).unwrap();
        pool.send(0, job(&ds[0], "taken", b"2", 0o600, 1)).unwrap();
        match pool.wait() {
            Err(UnpackError::Io {
                layer,
                entry,
                op,
                source,
            }) => {
                assert_eq!(
                    (layer.as_str(), entry.as_str(), op),
                    ("sha256:test", "layer/path/taken", "create")
                );
                assert_eq!(source.raw_os_error(), Some(libc::EEXIST));
            }
            other => panic!("{other:?}"),
        }
        assert!(pool.failed());
        assert_eq!(
            fs::read(tmp.path().join("d/taken")).unwrap(),
            b"lower layer"
        );
        assert_eq!(fs::read(tmp.path().join("d/fine")).unwrap(), b"1");
        // After a failure the writers only drain their queues.
        pool.send(1, job(&ds[0], "later", b"3", 0o600, 1)).unwrap();
        pool.wait().unwrap();
        assert!(!tmp.path().join("d/later").exists());
    }

    #[test]
    fn without_writer_threads_files_are_written_on_the_calling_thread() {
        let tmp = tempfile::tempdir().unwrap();
        let ds = dirs(tmp.path(), &["d"]);
        let pool = Pool::new(0);
        pool.send(7, job(&ds[0], "f", b"inline", 0o600, 1)).unwrap();
        // Written before `send` returned: no wait needed.
        assert_eq!(fs::read(tmp.path().join("d/f")).unwrap(), b"inline");
        let err = pool.send(7, job(&ds[0], "f", b"again", 0o600, 1));
        assert!(matches!(err, Err(UnpackError::Io { op: "create", .. })));
    }

    #[test]
    fn dropping_the_pool_finishes_the_queued_files() {
        let tmp = tempfile::tempdir().unwrap();
        let ds = dirs(tmp.path(), &["d"]);
        let pool = Pool::new(2);
        for i in 0..50 {
            pool.send(i, job(&ds[0], &format!("f{i}"), b"x", 0o600, 1))
                .unwrap();
        }
        drop(pool);
        assert_eq!(fs::read_dir(tmp.path().join("d")).unwrap().count(), 50);
    }
}
