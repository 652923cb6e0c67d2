//! The only module that talks to libcontainer: prepares one run (host inputs, private
//! namespaces, staged mounts, spec, pipes), creates the container with the sandbox
//! executor, attaches the user-mode network of `--network` (`net/`, given the init's
//! namespaces) while the init waits, starts it, supervises it, and cleans up. Also
//! sweeps what a killed pysandbox left behind.
//!
//! Must be called from a single-threaded process: libcontainer forks with raw `clone3`
//! and pysandbox itself calls `unshare(CLONE_NEWUSER)`.

mod attach;
mod born;
mod capture;
mod command;
mod executor;
mod host;
mod inputs;
mod locks;
mod outcome;
mod output;
mod stage;
mod supervise;
mod terminal;

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::error::LibcontainerError;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::signal::{SigmaskHow, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};

pub use executor::Status;
pub use host::{MIN_KERNEL, Mode};

use crate::dirs;
use crate::image::ResolvedImage;
use crate::limits::{self, CgroupSupport};
use crate::policy::{self, KILL_GRACE, Network, RunPolicy};
use crate::report::RunReport;
use crate::spec::{self, SpecInput};
use crate::sys;
use attach::{Attached, attach, warm_up};
use capture::Capped;
use command::{command, proxied};
use inputs::{Inputs, input_err};
use locks::{sweep, take_lock};
use outcome::{keep, make_report, merge_back};

/// Errors of the runtime; each names the step and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    Input(String),
    #[error("{step}: {source}{}", if hint.is_empty() { String::new() } else { format!(". Hint: {hint}") })]
    Host {
        step: &'static str,
        source: io::Error,
        hint: &'static str,
    },
    #[error("cannot expose {path} to the sandbox: {source}")]
    Stage { path: PathBuf, source: io::Error },
    #[error(
        "cannot expose {path} to the sandbox: its file system does not support id-mapped mounts, which root needs to share root-owned files with the sandbox's unprivileged user. Hint: run pysandbox as an ordinary user, or with sudo (SUDO_UID is honoured)"
    )]
    NoIdmap { path: PathBuf },
    #[error("{step}: {source}")]
    Container {
        step: &'static str,
        source: LibcontainerError,
    },
    #[error("{step}: {source}")]
    Io {
        step: &'static str,
        source: io::Error,
    },
    // The modules below the runtime whose errors a run can meet (each keeps its own
    // message; the library's error takes them apart again).
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Dirs(#[from] crate::dirs::DirsError),
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    #[error(transparent)]
    Strict(#[from] crate::limits::StrictError),
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    #[error(transparent)]
    Runs(#[from] crate::runs::RunsError),
}

/// Logs how long after the run started a phase ended (`--log-level pysandbox=debug`).
/// The phase "start" starts the clock, so every run in a process is timed from its own
/// start (a process may run many sandboxes one after another).
fn mark(phase: &str) {
    let now = sys::monotonic_ns();
    if phase == "start" {
        T0_NS.set(now);
    }
    let t0 = if T0_NS.get() == 0 { now } else { T0_NS.get() };
    tracing::debug!(target: "pysandbox::timing", "{phase}: {} us", (now - t0) / 1000);
}

thread_local! {
    /// CLOCK_MONOTONIC (ns) at the run's "start" mark: the sandbox's init stamps its
    /// steps on the same clock.
    static T0_NS: std::cell::Cell<i64> = const { std::cell::Cell::new(0) };
}

/// Whether the phases are logged (then the sandbox's init stamps its steps too).
fn timing() -> bool {
    tracing::enabled!(target: "pysandbox::timing", tracing::Level::DEBUG)
}

/// Logs the steps the init stamped (`time <step> <ns>` on the status socket), on the
/// run's clock.
fn log_sandbox_stamps(status: &[u8]) {
    if !timing() {
        return;
    }
    let t0 = T0_NS.get();
    for line in String::from_utf8_lossy(status).lines() {
        let mut it = line.split_whitespace();
        if let (Some("time"), Some(step), Some(ns)) = (it.next(), it.next(), it.next())
            && let Ok(ns) = ns.parse::<i64>()
        {
            tracing::debug!(target: "pysandbox::timing", "sandbox: {step}: {} us", (ns - t0) / 1000);
        }
    }
}

fn io_err(step: &'static str) -> impl FnOnce(io::Error) -> RuntimeError {
    move |source| RuntimeError::Io { step, source }
}

fn lc_err(step: &'static str) -> impl FnOnce(LibcontainerError) -> RuntimeError {
    move |source| RuntimeError::Container { step, source }
}

/// Said in every report of a `--network=host` run.
pub const HOST_NETWORK_WARNING: &str = "--network=host: the script shares the host's network, so it can reach the host's loopback services (127.0.0.1, ::1) and abstract unix sockets; use --network for a network of its own";

fn pipe() -> Result<(OwnedFd, OwnedFd), RuntimeError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| io_err("creating a pipe")(e.into()))
}

fn cstring(s: &str) -> Result<CString, RuntimeError> {
    CString::new(s).map_err(|_| input_err(format!("{s:?} contains a NUL byte")))
}

/// What a pool worker does between its sandbox's start and the script (see `pool/`):
/// the interpreter is started ahead of time and waits, blocked on its stdin, for one
/// request.
pub trait Warm {
    /// The interpreter is up and waiting for its request: tell the pool.
    fn ready(&mut self) -> io::Result<()>;
    /// Waits for the claim. `sandbox` is the init's pidfd (readable once it exits).
    /// `None`: nobody will claim this sandbox (the pool went away, or it died idle).
    fn claim(&mut self, sandbox: BorrowedFd<'_>) -> io::Result<Option<Claim>>;
    /// The run is over and reported; the teardown (cgroups, locks) comes after this.
    fn finished(&mut self, result: Result<&RunReport, &dyn std::fmt::Display>);
}

/// A claimed run: what the interpreter reads on stdin (its request, then the script's
/// stdin), the files to place in `/usr/app/src`, and the run's own timeout.
pub struct Claim {
    pub stdin: Vec<u8>,
    pub files: Vec<(String, Vec<u8>)>,
    pub timeout: std::time::Duration,
}

/// A run whose request was checked before any image work: the policy is valid, the
/// kernel new enough, the host mode known, `--network` possible and every host path
/// given exists (a typo fails at once, before an image is built or unpacked). The
/// caller then resolves the image and calls [`Prepared::run`] (or [`Prepared::run_warm`]).
/// Dropped without a run that started, it removes the output folder it created.
pub struct Prepared<'p> {
    policy: &'p RunPolicy,
    mode: Mode,
    pasta: Option<PathBuf>,
    inputs: Inputs,
    /// Folders made for the run (the output folder), removed again if no sandbox ran.
    created: Vec<PathBuf>,
}

/// Checks a run's request against the host; see [`Prepared`]. Must be called from the
/// single-threaded process that will run it (see the module docs).
pub fn prepare(policy: &RunPolicy) -> Result<Prepared<'_>, RuntimeError> {
    policy.validate()?;
    if policy.interactive && !terminal::stdin_is_terminal() {
        return Err(RuntimeError::Input(
            "-i needs a terminal: pysandbox's stdin is not one. Hint: run it from a terminal, or drop -i and pipe the input in".into(),
        ));
    }
    host::check_kernel()?;
    let mode = Mode::detect()?;
    mark("start");
    // A network that cannot be set up is refused before anything exists.
    let pasta = match policy.network {
        Network::Pasta => Some(crate::net::preflight(mode.is_root())?),
        Network::None | Network::Host => None,
    };
    let mut created = Vec::new();
    match Inputs::gather(policy, mode, &mut created) {
        Ok(inputs) => Ok(Prepared {
            policy,
            mode,
            pasta,
            inputs,
            created,
        }),
        Err(e) => {
            remove_created(&created);
            Err(e)
        }
    }
}

impl Prepared<'_> {
    /// Runs the sandbox on `image` to completion.
    pub fn run(self, image: &ResolvedImage) -> Result<RunReport, RuntimeError> {
        self.run_with(image, None)
    }

    /// Starts the sandbox ahead of its script: `policy.script` is the interpreter's
    /// bootstrap, which announces itself with one byte (0x06) on stdout and then reads
    /// its request from stdin; `warm` is told when it is ready and hands over the claim.
    /// The report covers the claimed run (wall time and timeout from the claim on).
    pub fn run_warm(
        self,
        image: &ResolvedImage,
        warm: &mut dyn Warm,
    ) -> Result<RunReport, RuntimeError> {
        self.run_with(image, Some(warm))
    }

    fn run_with(
        mut self,
        image: &ResolvedImage,
        warm: Option<&mut dyn Warm>,
    ) -> Result<RunReport, RuntimeError> {
        mark("image resolved");
        let result = run_prepared(
            self.policy,
            self.mode,
            &self.inputs,
            image,
            self.pasta.as_deref(),
            warm,
        );
        // The output folder pysandbox created stays only if the sandbox ran (nothing
        // half-made is left by a failed start).
        if result.is_ok() {
            self.created.clear();
        }
        result
    }
}

impl Drop for Prepared<'_> {
    fn drop(&mut self) {
        remove_created(&self.created);
    }
}

fn remove_created(created: &[PathBuf]) {
    for dir in created.iter().rev() {
        let _ = fs::remove_dir(dir); // only if still empty
    }
}

/// Everything the steps of one run share.
struct RunCtx<'a> {
    policy: &'a RunPolicy,
    mode: Mode,
    inputs: &'a Inputs,
    image: &'a ResolvedImage,
    /// The run's private tmpfs (state, bundle, staged layers).
    mnt: &'a Path,
    id: &'a str,
    cgroups: CgroupSupport,
    /// Where the run's cgroups are (and, on cgroup v2, its cgroup itself).
    placement: &'a limits::Placement,
    pasta: Option<&'a Path>,
}

fn run_prepared(
    policy: &RunPolicy,
    mode: Mode,
    inputs: &Inputs,
    image: &ResolvedImage,
    pasta: Option<&Path>,
    warm: Option<&mut dyn Warm>,
) -> Result<RunReport, RuntimeError> {
    let rt = dirs::runtime_dir(mode.is_root())?;
    let locks = rt.join("locks");
    let mnt = rt.join("mnt");
    for d in [&locks, &mnt] {
        match fs::DirBuilder::new().mode(0o711).create(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("creating the runtime directory")(e)),
        }
    }
    sweep(&locks);
    let id = sys::random_id("ps-").map_err(io_err("generating a run id"))?;
    let mut lock = take_lock(&locks, &id)?;
    let mut cgroups = limits::place(mode.is_root(), &id);
    if policy.strict_limits {
        limits::check_strict(&policy.limits, cgroups.support)?;
    }
    if let Some(parent) = &cgroups.parent {
        // Recorded before it exists: the sweep of a later run finds it here if this
        // pysandbox is killed at any point after.
        use std::io::Write;
        let _ = lock.write_all(parent.dir.join(&id).as_os_str().as_encoded_bytes());
    }
    cgroups
        .create_run(&id, &policy.limits)
        .map_err(|source| RuntimeError::Host {
            step: "creating the run's cgroup",
            source,
            hint: "check `pysandbox doctor`'s limits line",
        })?;
    let ctx = RunCtx {
        policy,
        mode,
        inputs,
        image,
        mnt: &mnt,
        id: &id,
        cgroups: cgroups.support,
        placement: &cgroups,
        pasta,
    };
    let result = match warm {
        Some(w) => {
            let r = launch(&ctx, Some(&mut *w));
            w.finished(r.as_ref().map_err(|e| e as &dyn std::fmt::Display));
            r
        }
        None => launch(&ctx, None),
    };
    if result.is_err() && policy.keep {
        crate::runs::discard(&id); // a run that never ended is not kept
    }
    if cgroups.remove(&id).is_empty() {
        let _ = fs::remove_file(locks.join(format!("{id}.lock")));
    }
    drop(lock);
    result
}

/// A created container whose init waits for the start signal, and pysandbox's ends of
/// its pipes.
struct Created {
    container: libcontainer::container::Container,
    init_pid: i32,
    pidfd: OwnedFd,
    signals: SignalFd,
    in_w: OwnedFd,
    out_r: OwnedFd,
    err_r: OwnedFd,
    status_r: OwnedFd,
}

/// Who makes the run's pid namespace: pysandbox, or the driver that creates the sandbox
/// in its cgroup (see `born`).
enum Ns<'a> {
    Here(sys::PidNamespace),
    InDriver(&'a limits::cgroup2::RunCgroup, sys::PidNamespaceSeed),
}

/// Creates the sandbox, and with it the pid namespace of `seed` that holds every process
/// made from here on (libcontainer's, the sandbox, the helpers): they die with
/// pysandbox, however it ends. The namespace is returned to be dropped last, when launch
/// returns.
fn create(
    r: &RunCtx,
    seed: sys::PidNamespaceSeed,
    state: &Path,
    bundle: &Path,
    argv: &[String],
    env: &[(String, String)],
) -> Result<(sys::PidNamespace, Created), RuntimeError> {
    let ns_err = |source: io::Error| RuntimeError::Host {
        step: "creating a pid namespace for the sandbox's processes",
        hint: match source.raw_os_error() {
            Some(libc::EAGAIN) => "your process limit (ulimit -u) is reached",
            _ => "pysandbox needs unshare(CLONE_NEWPID), as it does CLONE_NEWUSER",
        },
        source,
    };
    // On cgroup v2 the init is born in the run's cgroup (see `born`): built by a driver
    // made there, which makes the pid namespace first, with the init a sibling of that
    // driver (pysandbox's child). Otherwise the namespace is made here.
    // The init knows by this pidfd of pysandbox whether it is gone.
    let pysandbox = seed.parent().as_raw_fd();
    let ns = match born::target(r.placement) {
        Some(cg) => Ns::InDriver(cg, seed),
        None => {
            if let Some(cg) = &r.placement.run {
                cg.limit(&r.policy.limits)
                    .map_err(io_err("setting the run's cgroup limits"))?;
            }
            Ns::Here(seed.enter().map_err(ns_err)?)
        }
    };
    let (in_r, in_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (status_r, status_w) = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Stream,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| io_err("creating the status socket")(e.into()))?;

    if r.mode.is_root() {
        // Root's supplementary groups (gid 0...) would otherwise follow into the sandbox.
        nix::unistd::setgroups(&[])
            .map_err(|e| io_err("dropping supplementary groups")(e.into()))?;
    }
    let plan = executor::ExecPlan {
        python: cstring(&r.image.python)?,
        argv: argv.iter().map(|a| cstring(a)).collect::<Result<_, _>>()?,
        envp: env
            .iter()
            .map(|(k, v)| cstring(&format!("{k}={v}")))
            .collect::<Result<_, _>>()?,
        loopback: r.policy.network.private(),
        send_namespaces: r.pasta.is_some(),
        proxy_port: proxied(r.policy).then_some(crate::net::proxy::PROXY_PORT),
        pty: r.policy.interactive.then(terminal::window_size),
        pty_slave: std::sync::atomic::AtomicI32::new(-1),
        status_fd: status_w.as_raw_fd(),
        parent_pidfd: pysandbox,
        seccomp: crate::seccomp::Policy::load(r.policy.seccomp_log),
        timing: timing(),
    };
    let (in_r, out_w, err_w) = (&in_r, &out_w, &err_w);
    let in_driver = matches!(ns, Ns::InDriver(..));
    let build = move || {
        // The builder owns and closes the ends it is given: copies, so that pysandbox's
        // own stay its to close (in a driver sharing pysandbox's memory the copies are
        // the driver's).
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(io_err("duplicating a pipe"));
        ContainerBuilder::new(r.id.to_string(), SyscallType::default())
            .with_executor(executor::SandboxExecutor::new(plan))
            .with_root_path(state)
            .map_err(lc_err("setting the state directory"))?
            .validate_id()
            .map_err(lc_err("validating the run id"))?
            .with_stdin(dup(in_r)?)
            .with_stdout(dup(out_w)?)
            .with_stderr(dup(err_w)?)
            .as_init(bundle)
            .with_systemd(false)
            .with_detach(true)
            .as_sibling(in_driver)
            .build()
            .map_err(lc_err("creating the sandbox"))
    };
    // libcontainer knows the init by its pid where its intermediate process ran, in the
    // run's pid namespace (sys::PidNamespace); the init sent a pidfd of itself,
    // which names it here.
    let (pid_ns, mut container, pidfd) = match ns {
        Ns::Here(pid_ns) => {
            let c = build()?;
            // Only the sandbox's copy left: an init that died says so by an end of file.
            drop(status_w);
            (
                pid_ns,
                c,
                attach::receive_fd(&status_r, executor::INIT_TAG)?,
            )
        }
        Ns::InDriver(cg, seed) => {
            let status = (&status_r, status_w);
            let built = born::create(cg, &r.policy.limits, status, seed, || {
                build().map_err(|e| match e {
                    // Sent as its cause chain; wrapped below in the same step again.
                    RuntimeError::Container { source, .. } => error_chain(&source),
                    e => error_chain(&e),
                })
            });
            let (pid_ns, pidfd, c) = built.map_err(|msg| RuntimeError::Container {
                step: "creating the sandbox",
                source: LibcontainerError::Other(msg),
            })?;
            (pid_ns, c, pidfd)
        }
    };
    let init_pid = sys::pidfd_pid(&pidfd).map_err(io_err("watching the sandbox"))?;
    container.set_pid(init_pid);
    let signals = SignalFd::with_flags(
        &relayed(r.policy),
        SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK,
    )
    .map_err(|e| io_err("receiving signals")(e.into()))?;
    let created = Created {
        container,
        init_pid,
        pidfd,
        signals,
        in_w,
        out_r,
        err_r,
        status_r,
    };
    Ok((pid_ns, created))
}

fn launch(r: &RunCtx, warm: Option<&mut dyn Warm>) -> Result<RunReport, RuntimeError> {
    let policy = r.policy;
    let rlimits = limits::rlimits(&policy.limits, r.cgroups.enforces_memory());
    // Relayed signals wait, blocked, until the supervisor reads them from a signalfd; a
    // Ctrl-C during setup thus still ends in a clean teardown. (The executor unblocks
    // every signal before exec.)
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&relayed(policy)), None)
        .map_err(|e| io_err("blocking signals")(e.into()))?;

    let user_sysctls = limits::user_sysctls();
    let (staged, mut not_capped) = enter_and_stage(r, &user_sysctls, warm.is_some())?;
    // The image's root file system is mounted: what is left to do on the image (storing
    // a default image built for this run) goes on beside the run.
    r.image.staged();
    let (argv, env) = command(r);
    let (state, bundle) = (r.mnt.join("state"), r.mnt.join("bundle"));
    write_spec(r, &staged, &argv, &env, &rlimits, &bundle)?;
    mark("spec saved");
    let seed = sys::PidNamespace::prepare().map_err(io_err("watching pysandbox"))?;
    let mut t0 = Instant::now();
    // Dropped last, when launch returns.
    let (_pid_ns, created) = create(r, seed, &state, &bundle, &argv, &env)?;
    let mut c = created;
    if r.mode.is_root() {
        not_capped.extend(host::cap_user_namespace(c.init_pid, &user_sysctls));
    }
    mark("container built");
    let guard = c
        .pidfd
        .try_clone()
        .map_err(io_err("watching the sandbox"))?;
    let attached = match attach(r, &c) {
        Ok(a) => a,
        Err(e) => {
            supervise::kill_and_reap(&guard, c.init_pid);
            return Err(e);
        }
    };
    let Attached {
        proxy,
        pty,
        raw_mode: _raw_mode,
    } = attached;
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(io_err("duplicating the terminal"));
    let (to_sandbox, from_stdout, resize) = match &pty {
        Some(m) => (dup(m)?, dup(m)?, Some(dup(m)?)),
        None => (c.in_w, c.out_r, None),
    };
    let mut input = match &r.inputs.stdin {
        Some(fd) => supervise::Input::Fd(fd.try_clone().map_err(io_err("duplicating stdin"))?),
        None => supervise::Input::None,
    };
    let mut timeout = policy.limits.timeout;
    let mut started = c.container.start().map_err(lc_err("starting the sandbox"));
    mark("start signal sent");
    if let (Ok(()), Some(w)) = (&started, warm) {
        match warm_up(&from_stdout, &c.pidfd, staged.claim_dir.as_deref(), w) {
            Ok(claim) => {
                input = supervise::Input::Bytes(claim.stdin);
                timeout = claim.timeout;
                t0 = Instant::now();
            }
            Err(e) => started = Err(e),
        }
    }
    let supervised = started.and_then(|()| {
        supervise::Supervisor {
            init_pid: c.init_pid,
            pidfd: c.pidfd,
            signals: c.signals,
            input,
            to_sandbox: Some(to_sandbox),
            from_stdout,
            resize,
            from_stderr: c.err_r,
            out_sink: sink(policy, false),
            err_sink: sink(policy, true),
            status: c.status_r,
            timeout,
            grace: KILL_GRACE,
        }
        .run(t0)
        .map_err(|e| io_err("supervising the sandbox")(e))
    });
    mark("supervised");
    let net_log = proxy.map(|p| {
        let log = p.finish();
        mark("proxy log");
        log
    });
    // The sandbox is dead: bring its output home, and read what its cgroup saw.
    let merges = merge_back(&staged);
    mark("merged back");
    let oom_kills = r.placement.oom_kills(r.id);
    // No libcontainer `delete`: its state lives in our private tmpfs (gone when we exit)
    // and the caller removes the cgroups; only a live init, on an error path, needs
    // killing (the kernel then kills the rest of its pid namespace).
    if supervised.is_err() {
        supervise::kill_and_reap(&guard, c.init_pid);
    }
    let supervised = supervised?;
    log_sandbox_stamps(&supervised.status);
    let status = Status::parse(&supervised.status);
    let described = policy::Limits {
        timeout,
        ..policy.limits.clone()
    };
    let limits = limits::describe(&described, r.cgroups, &rlimits);
    let mut report = make_report(
        r.id,
        r.image,
        &supervised,
        status,
        limits,
        oom_kills > 0,
        merges.output.full || merges.source.full,
    );
    report.network = net_log;
    mark("reported");
    outcome::add_warnings(
        &mut report,
        r.policy,
        r.placement,
        (
            r.inputs
                .warnings
                .iter()
                .cloned()
                .chain(staged.warnings)
                .collect(),
            not_capped,
        ),
        &[
            ("output", &merges.output, r.inputs.output.as_deref()),
            ("source", &merges.source, r.inputs.src_dir.as_deref()),
        ],
    );
    if let Some(dir) = &staged.kept_dir {
        keep(r, dir, &merges.kept, &mut report);
    }
    Ok(report)
}

/// Enters the run's namespaces (capping their budgets: the returned list names those
/// that could not be) and stages its file system in the private tmpfs.
fn enter_and_stage(
    r: &RunCtx,
    user_sysctls: &[(&'static str, String)],
    warm: bool,
) -> Result<(stage::Staged, Vec<String>), RuntimeError> {
    let policy = r.policy;
    let cg = r.placement;
    let not_capped = host::enter_namespaces(
        r.mode,
        &limits::ipc_sysctls(&policy.limits),
        user_sysctls,
        cg.run.as_ref().map(|r| r.path.as_path()),
        born::target(cg).is_some(),
    )?;
    mark("namespaces entered");
    // As root, a user namespace whose root is the sandbox's host id, to id-map mounts:
    // the caller's folders (when the caller is root), and the image's /opt/conda in an
    // image build (root-owned, it must be the sandbox's to install into).
    let map_ns = match r.mode {
        Mode::Root { sandbox, idmap, .. } if idmap || policy.conda_layer.is_some() => {
            Some(host::userns_fd(sandbox)?)
        }
        _ => None,
    };
    let idmap_ns = match r.mode {
        Mode::Root { idmap: true, .. } => map_ns.as_ref(),
        _ => None,
    };
    host::mount_private_tmpfs(r.mnt)?;
    mark("idmap userns + tmpfs");
    host::mkdir(&r.mnt.join("state"), 0o711)?;
    host::mkdir(&r.mnt.join("bundle"), 0o711)?;
    let staging = host::Staging {
        idmap: idmap_ns,
        base: r.mnt,
        rootless: !r.mode.is_root(),
    };
    let staged = stage::stage(r, &staging, map_ns.as_ref(), warm)?;
    Ok((staged, not_capped))
}

/// The OCI spec of the run, written to the bundle.
fn write_spec(
    r: &RunCtx,
    staged: &stage::Staged,
    argv: &[String],
    env: &[(String, String)],
    rlimits: &[spec::Rlimit],
    bundle: &Path,
) -> Result<(), RuntimeError> {
    let spec = spec::build(&SpecInput {
        rootfs: staged.rootfs.clone(),
        argv: argv.to_vec(),
        env: env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        binds: staged.binds.clone(),
        host_network: !r.policy.network.private(),
        userns: match r.mode {
            Mode::Root { sandbox, .. } => Some(sandbox),
            Mode::Rootless => None,
        },
        // A cgroup v2 run's cgroup is made and filled already, and the sandbox is born in
        // it (see born); libcontainer sees its parent as the whole hierarchy (see
        // host::enter_namespaces), and its move into it is a write to /dev/null.
        cgroups_path: match &r.placement.run {
            Some(_) => PathBuf::from("/").join(r.id),
            None => limits::cgroup_path(r.id),
        },
        cgroup_limits: matches!(r.cgroups, CgroupSupport::V1 { .. }),
        limit_swap: matches!(r.cgroups, CgroupSupport::V1 { memsw: true }),
        limit_kernel_tcp: matches!(r.cgroups, CgroupSupport::V1 { .. }),
        limits: r.policy.limits.clone(),
        rlimits: with_nproc_slots(
            rlimits,
            u64::from(r.pasta.is_some())
                + match r.mode.is_root() {
                    true => 0,
                    false => 2 + u64::from(born::target(r.placement).is_some()),
                },
        ),
    })?;
    mark("staged");
    spec.save(bundle.join("config.json"))
        .map_err(|e| io_err("writing config.json")(io::Error::other(e.to_string())))?;
    Ok(())
}

/// An error and its causes, one line (as the command line prints them).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// The signals pysandbox blocks and reads from a signalfd while it supervises.
fn relayed(policy: &RunPolicy) -> nix::sys::signal::SigSet {
    let mut relayed = supervise::relayed_set();
    if policy.interactive {
        // Not relayed: the sandbox's terminal takes pysandbox's window size.
        relayed.add(nix::sys::signal::Signal::SIGWINCH);
    }
    relayed
}

fn sink(policy: &RunPolicy, stderr: bool) -> Capped {
    if policy.capture {
        Capped::capture(policy.limits.max_output)
    } else {
        Capped::pass_through(policy.limits.max_output, stderr)
    }
}

/// RLIMIT_NPROC raised by `slots` processes of the sandbox's user that are not the
/// script's, so that the script keeps the --pids it was given: pasta, which lives in the
/// sandbox's pid namespace as the sandbox's user; rootless, where the sandbox's user is
/// pysandbox's, pysandbox itself and its pid namespace's init (`sys::PidNamespace`), and
/// on cgroup v2 the driver (see `born`), there while the init is cloned (the run's cgroup
/// holds pids.max to --pids all the same).
fn with_nproc_slots(rlimits: &[spec::Rlimit], slots: u64) -> Vec<spec::Rlimit> {
    let mut out = rlimits.to_vec();
    if slots > 0 {
        let (_, inherited_hard) = sys::getrlimit(libc::RLIMIT_NPROC);
        for r in out
            .iter_mut()
            .filter(|r| r.kind == libcontainer::oci_spec::runtime::PosixRlimitType::RlimitNproc)
        {
            r.hard = r.hard.saturating_add(slots).min(inherited_hard);
            r.soft = r.soft.saturating_add(slots).min(r.hard);
        }
    }
    out
}
