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
