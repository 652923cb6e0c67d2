//! A warm pool: sandboxes created ahead of time, each with its interpreter started and
//! blocked reading its one request, used once and destroyed, refilled in the background.
//!
//! Soundness: a pool lives in any process, threads and all. It never creates a sandbox
//! itself: each pooled sandbox belongs to a worker process, `pysandbox run --pool-worker`
//! (spawned with `std::process::Command`, i.e. fork + exec of a fresh image, nothing
//! run between them but async-signal-safe code), which is single-threaded like every
//! process that calls libcontainer. The pool talks to its workers over pipes: `ready`,
//! then one claim (a JSON line), then the report (a JSON line). Each interpreter is a new
//! process started from the image, never forked from a shared parent, so hash seeds,
//! random state and everything else differ between runs.
//!
//! What a worker's sandbox was created with keys the pool (image, network, seccomp
//! logging, memory, pids, CPU, output caps: they shape mounts, rlimits and cgroups); a
//! claim brings the script, its files, arguments, stdin, environment and its timeout.
//! Variables the interpreter reads when it starts (PYTHON*, LC_*, LANG, LD_*...) cannot
//! be set on a started interpreter: such a request gets a worker started for it.

pub mod worker;

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub use crate::claim::{WireClaim, applies_at_claim, b64, unb64};

use crate::report::{PoolRun, RunReport};
use crate::sandbox::{
    RunRequest, Sandbox, SandboxError, Worker, run_once, start_worker, startup_env,
};

/// The interpreter's side of a pooled sandbox (run with `-c`).
pub const BOOTSTRAP: &str = include_str!("bootstrap.py");

/// What a claim does when no sandbox is idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenEmpty {
    /// Start a sandbox for this run (a cold start; the report says `warm: false`).
    Cold,
    /// Wait up to this long for one, then fail.
    Wait(Duration),
    /// Fail at once with [`SandboxError::PoolEmpty`].
    Fail,
}

/// How a pool behaves.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Sandboxes kept started and idle.
    pub size: usize,
    /// An idle sandbox older than this is retired and replaced.
    pub max_idle: Duration,
    pub when_empty: WhenEmpty,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            size: 2,
            max_idle: Duration::from_secs(600),
            when_empty: WhenEmpty::Cold,
        }
    }
}

/// Counters since the pool started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Runs served by a sandbox that was started ahead of time.
    pub warm: u64,
    /// Runs that had a sandbox started for them.
    pub cold: u64,
    /// Sandboxes retired while idle (too old, or died).
    pub retired: u64,
    /// Sandboxes that failed to start.
    pub failed_starts: u64,
    pub idle: usize,
    pub starting: usize,
}

struct State {
    idle: VecDeque<Worker>,
    starting: usize,
    closed: bool,
    /// Consecutive failed starts, when the refill tries again, and the last error.
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<String>,
    stats: PoolStats,
}

struct Inner {
    sandbox: Sandbox,
    cfg: PoolConfig,
    state: Mutex<State>,
    changed: Condvar,
}

/// A pool of warm sandboxes configured like `sandbox`. `Send + Sync`: claim from as
/// many threads as you like. Dropping it destroys its idle sandboxes.
pub struct Pool {
    inner: Arc<Inner>,
    refill: Option<std::thread::JoinHandle<()>>,
}

impl Pool {
    /// Starts a pool of sandboxes configured like `sandbox`; they start in the
    /// background (the first claims may be cold).
    pub fn new(sandbox: Sandbox, cfg: PoolConfig) -> Pool {
        let inner = Arc::new(Inner {
            sandbox,
            cfg,
            state: Mutex::new(State {
                idle: VecDeque::new(),
                starting: 0,
                closed: false,
                failures: 0,
                retry_at: None,
                last_error: None,
                stats: PoolStats::default(),
            }),
            changed: Condvar::new(),
        });
        let i = inner.clone();
        let refill = std::thread::spawn(move || refill(i));
        Pool {
            inner,
            refill: Some(refill),
        }
    }

    /// Waits until `n` sandboxes are idle (at most `limit`); false on timeout.
    pub fn wait_ready(&self, n: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut st = self.inner.state.lock().unwrap();
        while st.idle.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self.inner.changed.wait_timeout(st, left).unwrap().0;
        }
        true
    }

    pub fn stats(&self) -> PoolStats {
        let st = self.inner.state.lock().unwrap();
        PoolStats {
            idle: st.idle.len(),
            starting: st.starting,
            ..st.stats
        }
    }

    /// The last reason a sandbox failed to start, if the last start failed.
    pub fn last_error(&self) -> Option<String> {
        self.inner.state.lock().unwrap().last_error.clone()
    }

    /// Runs `req` in a pooled sandbox (or as [`PoolConfig::when_empty`] says when none is
    /// idle) and returns its report, whose `pool` says whether it was warm and how long
    /// it waited. A request with a data folder runs as [`Sandbox::run`] (pooled sandboxes
    /// have no host files).
    pub fn run(&self, req: &RunRequest) -> Result<RunReport, SandboxError> {
        let t0 = Instant::now();
        let sandbox = &self.inner.sandbox;
        if req.data.is_some() {
            let mut r = sandbox.run(req)?;
            r.pool = Some(PoolRun {
                warm: false,
                waited_ms: 0,
            });
            return Ok(r);
        }
        let cold = |st: &mut State| {
            st.stats.cold += 1;
        };
        if !startup_env(req).is_empty() {
            cold(&mut self.inner.state.lock().unwrap());
            return run_once(sandbox, req);
        }
        let worker = self.take(t0)?;
        match worker {
            Some(w) => {
                self.inner.state.lock().unwrap().stats.warm += 1;
                self.inner.changed.notify_all(); // refill
                w.claim(sandbox, req, t0, true)
            }
            None => {
                cold(&mut self.inner.state.lock().unwrap());
                let w = start_worker(sandbox, &[])?;
                w.claim(sandbox, req, t0, false)
            }
        }
    }

    /// An idle live worker, or `None` for a cold start.
    fn take(&self, t0: Instant) -> Result<Option<Worker>, SandboxError> {
        let mut st = self.inner.state.lock().unwrap();
        loop {
            while let Some(w) = st.idle.pop_front() {
                if w.alive() {
                    return Ok(Some(w));
                }
                st.stats.retired += 1;
                w.retire();
            }
            match self.inner.cfg.when_empty {
                WhenEmpty::Cold => return Ok(None),
                WhenEmpty::Fail => return Err(SandboxError::PoolEmpty),
                WhenEmpty::Wait(d) => {
                    let left = (t0 + d).saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(SandboxError::PoolEmpty);
                    }
                    st = self.inner.changed.wait_timeout(st, left).unwrap().0;
                }
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let idle: Vec<Worker> = {
            let mut st = self.inner.state.lock().unwrap();
            st.closed = true;
            st.idle.drain(..).collect()
        };
        self.inner.changed.notify_all();
        for mut w in idle {
            drop(w.stdin);
            let _ = w.child.wait(); // it removes its sandbox and exits
        }
        if let Some(t) = self.refill.take() {
            let _ = t.join();
        }
        // Workers that were starting: wait until they are ready and retired.
        let mut st = self.inner.state.lock().unwrap();
        while st.starting > 0 {
            st = self.inner.changed.wait(st).unwrap();
        }
    }
}

/// The refill loop: keeps `size` sandboxes idle or starting, retires old and dead ones,
/// backs off after failed starts.
fn refill(inner: Arc<Inner>) {
    let mut st = inner.state.lock().unwrap();
    loop {
        if st.closed {
            return;
        }
        let now = Instant::now();
        let mut keep = VecDeque::with_capacity(st.idle.len());
        while let Some(w) = st.idle.pop_front() {
            if now - w.born > inner.cfg.max_idle || !w.alive() {
                st.stats.retired += 1;
                w.retire();
            } else {
                keep.push_back(w);
            }
        }
        st.idle = keep;
        let want = inner.cfg.size.saturating_sub(st.idle.len() + st.starting);
        let may_start = st.retry_at.is_none_or(|t| now >= t);
        if want > 0 && may_start {
            for _ in 0..want {
                st.starting += 1;
                let i = inner.clone();
                std::thread::spawn(move || {
                    let started = start_worker(&i.sandbox, &[]);
                    let mut st = i.state.lock().unwrap();
                    st.starting -= 1;
                    match started {
                        Ok(w) if !st.closed => {
                            st.failures = 0;
                            st.retry_at = None;
                            st.last_error = None;
                            st.idle.push_back(w);
                        }
                        Ok(w) => w.retire(),
                        Err(e) => {
                            // Back off: 0.5 s, 1 s, 2 s... up to 16 s between tries.
                            st.failures = (st.failures + 1).min(6);
                            let backoff = Duration::from_millis(250 << st.failures);
                            st.retry_at = Some(Instant::now() + backoff);
                            st.stats.failed_starts += 1;
                            st.last_error = Some(e.to_string());
                        }
                    }
                    i.changed.notify_all();
                });
            }
        }
        let wait = match st.retry_at {
            Some(t) if t > now => (t - now).min(Duration::from_millis(500)),
            _ => Duration::from_millis(500),
        };
        st = inner.changed.wait_timeout(st, wait).unwrap().0;
    }
}
