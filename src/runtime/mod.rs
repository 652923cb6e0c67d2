//! The only module that talks to libcontainer: prepares one run (host inputs, private
//! namespaces, staged mounts, spec, pipes), creates the container with the sandbox
//! executor, attaches the user-mode network of `--network` (`net/`, given the init's
//! namespaces) while the init waits, starts it, supervises it, and cleans up. Also
//! sweeps what a killed pysandbox left behind.
//!
//! Must be called from a single-threaded process: libcontainer forks with raw `clone3`
//! and pysandbox itself calls `unshare(CLONE_NEWUSER)`.

mod capture;
mod executor;
mod host;
mod inputs;
mod locks;
mod outcome;
mod output;
mod supervise;

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
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
use crate::image::{self, ResolvedImage};
use crate::limits::{self, CgroupSupport};
use crate::policy::{KILL_GRACE, Network, RunPolicy, Script};
use crate::report::RunReport;
use crate::spec::{self, Bind, SpecInput};
use crate::sys;
use capture::Capped;
use inputs::{Inputs, input_err};
use locks::{sweep, take_lock};
use outcome::make_report;

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
}

/// Logs how long after the run started a phase ended (`--log-level pysandbox=debug`).
/// The phase "start" starts the clock, so every run in a process is timed from its own
/// start (a process may run many sandboxes one after another).
fn mark(phase: &str) {
    thread_local! {
        static T0: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
    }
    let now = Instant::now();
    if phase == "start" {
        T0.set(Some(now));
    }
    let t0 = T0.get().unwrap_or(now);
    tracing::debug!(target: "pysandbox::timing", "{phase}: {} us", (now - t0).as_micros());
}

fn io_err(step: &'static str) -> impl FnOnce(io::Error) -> RuntimeError {
    move |source| RuntimeError::Io { step, source }
}

fn lc_err(step: &'static str) -> impl FnOnce(LibcontainerError) -> RuntimeError {
    move |source| RuntimeError::Container { step, source }
}

/// Said in every report of a `--network=host` run.
pub const HOST_NETWORK_WARNING: &str = "--network=host: the script shares the host's network, so it can reach the host's loopback services (127.0.0.1, ::1) and abstract unix sockets; use --network for a network of its own";

/// The environment every script starts with (nothing of the caller's leaks in).
pub const BASE_ENV: &[(&str, &str)] = &[
    ("PATH", "/opt/conda/bin:/usr/local/bin:/usr/bin:/bin"),
    ("HOME", spec::HOME_DIR),
    ("USER", "mambauser"),
    ("LOGNAME", "mambauser"),
    ("LANG", "C.UTF-8"),
    ("PYTHONDONTWRITEBYTECODE", "1"),
];

/// Variables the image's config may not set: who the script is and where its home is are
/// pysandbox's (the unprivileged sandbox user, HOME on a tmpfs).
const FORCED_ENV: &[&str] = &["HOME", "USER", "LOGNAME"];

/// The script's environment: [`BASE_ENV`], then the image config's `Env` (its PATH,
/// PYTHONPATH, VIRTUAL_ENV, LD_LIBRARY_PATH...) except [`FORCED_ENV`], then the user's
/// `-e`. Each later one replaces an earlier variable of the same name.
fn environment(image: &[(String, String)], user: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = BASE_ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let image = image
        .iter()
        .filter(|(k, _)| !FORCED_ENV.contains(&k.as_str()));
    for (k, v) in image.chain(user) {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

fn pipe() -> Result<(OwnedFd, OwnedFd), RuntimeError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| io_err("creating a pipe")(e.into()))
}

fn cstring(s: &str) -> Result<CString, RuntimeError> {
    CString::new(s).map_err(|_| input_err(format!("{s:?} contains a NUL byte")))
}

/// Runs one sandbox to completion. See the module docs for the threading requirement.
pub fn run(policy: &RunPolicy) -> Result<RunReport, crate::Error> {
    policy.validate()?;
    host::check_kernel()?;
    let mode = Mode::detect()?;
    mark("start");
    // A network that cannot be set up is refused before anything exists.
    let pasta = match policy.network {
        Network::Pasta => Some(crate::net::preflight(mode.is_root())?),
        Network::None | Network::Host => None,
    };
    // Inputs first: a typo in a path fails at once, before any image is built.
    let mut created = Vec::new();
    let result = Inputs::gather(policy, mode, &mut created)
        .map_err(crate::Error::from)
        .and_then(|inputs| {
            let image = image::resolve(&policy.image)?;
            mark("image resolved");
            run_prepared(policy, mode, &inputs, &image, pasta.as_deref())
        });
    // The output folder pysandbox created stays only if the sandbox ran (nothing
    // half-made is left by a failed start).
    if result.is_err() {
        for dir in created.iter().rev() {
            let _ = fs::remove_dir(dir); // only if still empty
        }
    }
    result
}

fn run_prepared(
    policy: &RunPolicy,
    mode: Mode,
    inputs: &Inputs,
    image: &ResolvedImage,
    pasta: Option<&Path>,
) -> Result<RunReport, crate::Error> {
    let rt = dirs::runtime_dir(mode.is_root())?;
    let locks = rt.join("locks");
    let mnt = rt.join("mnt");
    for d in [&locks, &mnt] {
        match fs::DirBuilder::new().mode(0o711).create(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("creating the runtime directory")(e).into()),
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
    let result = launch(policy, mode, inputs, image, &mnt, &id, &cgroups, pasta);
    if cgroups.remove(&id).is_empty() {
        let _ = fs::remove_file(locks.join(format!("{id}.lock")));
    }
    drop(lock);
    result
}

#[allow(clippy::too_many_arguments)]
fn launch(
    policy: &RunPolicy,
    mode: Mode,
    inputs: &Inputs,
    image: &ResolvedImage,
    mnt: &Path,
    id: &str,
    cg: &limits::Placement,
    pasta: Option<&Path>,
) -> Result<RunReport, crate::Error> {
    let cgroups = cg.support;
    let rlimits = limits::rlimits(&policy.limits, cgroups.enforces_memory());
    // Relayed signals wait, blocked, until the supervisor reads them from a signalfd; a
    // Ctrl-C during setup thus still ends in a clean teardown. (The executor unblocks
    // every signal before exec.)
    let relayed = supervise::relayed_set();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&relayed), None)
        .map_err(|e| io_err("blocking signals")(e.into()))?;

    let user_sysctls = limits::user_sysctls();
    let not_capped = host::enter_namespaces(
        mode,
        &limits::ipc_sysctls(&policy.limits),
        &user_sysctls,
        cg.parent
            .as_ref()
            .filter(|_| cg.run.is_some())
            .map(|p| p.dir.as_path()),
    )?;
    mark("namespaces entered");
    // As root, a user namespace whose root is the sandbox's host id, to id-map mounts:
    // the caller's folders (when the caller is root), and the image's /opt/conda in an
    // image build (root-owned, it must be the sandbox's to install into).
    let map_ns = match mode {
        Mode::Root { sandbox, idmap, .. } if idmap || policy.conda_layer.is_some() => {
            Some(host::userns_fd(sandbox)?)
        }
        _ => None,
    };
    let idmap_ns = match mode {
        Mode::Root { idmap: true, .. } => map_ns.as_ref(),
        _ => None,
    };
    host::mount_private_tmpfs(mnt)?;
    mark("idmap userns + tmpfs");
    let state = mnt.join("state");
    let bundle = mnt.join("bundle");
    host::mkdir(&state, 0o711)?;
    host::mkdir(&bundle, 0o711)?;
    let stage = host::Staging {
        idmap: idmap_ns,
        base: mnt,
        rootless: !mode.is_root(),
    };
    let mut warnings = Vec::new();

    let rootfs = bundle.join("rootfs");
    host::mkdir(&rootfs, 0o755)?;
    warnings.extend(stage.read_only_view(&image.rootfs, &rootfs, false, None)?);

    let mut binds = Vec::new();
    if let Some(src) = &inputs.src_dir {
        let t = bundle.join("src");
        host::mkdir(&t, 0o755)?;
        warnings.extend(stage.read_only_view(src, &t, true, None)?);
        binds.push(Bind {
            source: t,
            dest: spec::SRC_DIR,
            writable: false,
        });
    } else if let Some((name, body)) = &inputs.staged_script {
        let t = bundle.join("script");
        host::mkdir(&t, 0o755)?;
        fs::write(t.join(name), body).map_err(io_err("staging the script"))?;
        binds.push(Bind {
            source: t,
            dest: spec::SRC_DIR,
            writable: false,
        });
    }
    if let Some(data) = &inputs.data {
        let t = bundle.join("data");
        host::mkdir(&t, 0o755)?;
        // With --output elsewhere, the data folder may have no output/ to mount it on.
        let mount_point = inputs.output.is_some().then_some("output");
        warnings.extend(stage.read_only_view(data, &t, true, mount_point)?);
        binds.push(Bind {
            source: t,
            dest: spec::DATA_DIR,
            writable: false,
        });
    }
    if let Some(layer) = &policy.conda_layer {
        let t = bundle.join("conda");
        host::mkdir(&t, 0o755)?;
        output::stage_layer(
            &host::Staging {
                idmap: map_ns.as_ref(),
                ..stage
            },
            &image.rootfs.join("opt/conda"),
            layer,
            &t,
            match mode {
                Mode::Root { sandbox, .. } => Some(sandbox),
                Mode::Rootless => None,
            },
        )?;
        binds.push(Bind {
            source: t,
            dest: "/opt/conda",
            writable: true,
        });
    }
    let mut overlay = None;
    if let Some(out) = &inputs.output {
        let t = bundle.join("output");
        host::mkdir(&t, 0o755)?;
        let (upper_owner, new_file_owner) = match mode {
            Mode::Root {
                sandbox, caller, ..
            } => (Some(sandbox), (caller.uid != 0).then_some(caller)),
            Mode::Rootless => (None, None),
        };
        overlay = Some(output::OutputOverlay::stage(
            &stage,
            out,
            &t,
            &mnt.join("output"),
            policy.limits.output_cap(),
            upper_owner,
            new_file_owner,
        )?);
        binds.push(Bind {
            source: t,
            dest: spec::OUTPUT_DIR,
            writable: true,
        });
    }
    // Name resolution: the host's resolv.conf with the host's network; with pasta, one
    // naming pasta's DNS forwarder (the host's resolvers may be loopback addresses,
    // which are the sandbox's own loopback there).
    if policy.network != Network::None
        && rootfs.join("etc/resolv.conf").is_file()
        && let Some(host_resolv) = fs::canonicalize("/etc/resolv.conf")
            .ok()
            .filter(|p| p.is_file())
    {
        let t = bundle.join("resolv.conf");
        if policy.network == Network::Pasta {
            let host = fs::read_to_string(&host_resolv).unwrap_or_default();
            fs::write(&t, crate::net::resolv_conf(&host)).map_err(io_err("staging resolv.conf"))?;
        } else {
            fs::write(&t, b"").map_err(io_err("staging resolv.conf"))?;
            stage.file(&host_resolv, &t)?;
        }
        binds.push(Bind {
            source: t,
            dest: "/etc/resolv.conf",
            writable: false,
        });
    }

    let mut argv = vec![image.python.clone()];
    match (&policy.script, &inputs.script_in_sandbox) {
        (Script::Code(code), _) => {
            argv.push("-c".into());
            argv.push(code.clone());
        }
        (_, Some(path)) => argv.push(path.clone()),
        (_, None) => unreachable!("a script file or source always has a path"),
    }
    argv.extend(policy.args.iter().cloned());
    let env = environment(&image.env, &policy.env);

    let spec = spec::build(&SpecInput {
        rootfs: rootfs.clone(),
        argv: argv.clone(),
        env: env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        binds,
        host_network: !policy.network.private(),
        userns: match mode {
            Mode::Root { sandbox, .. } => Some(sandbox),
            Mode::Rootless => None,
        },
        // A cgroup v2 run's cgroup is made and filled already; libcontainer sees its
        // parent as the whole hierarchy (see host::enter_namespaces) and only moves the
        // sandbox in.
        cgroups_path: match &cg.run {
            Some(_) => PathBuf::from("/").join(id),
            None => limits::cgroup_path(id),
        },
        cgroup_limits: matches!(cgroups, CgroupSupport::V1 { .. }),
        limit_swap: matches!(cgroups, CgroupSupport::V1 { memsw: true }),
        limit_kernel_tcp: matches!(cgroups, CgroupSupport::V1 { .. }),
        limits: policy.limits.clone(),
        rlimits: with_pasta_slot(&rlimits, pasta.is_some()),
    })?;
    mark("staged");
    spec.save(bundle.join("config.json"))
        .map_err(|e| io_err("writing config.json")(io::Error::other(e.to_string())))?;

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

    if mode.is_root() {
        // Root's supplementary groups (gid 0...) would otherwise follow into the sandbox.
        nix::unistd::setgroups(&[])
            .map_err(|e| io_err("dropping supplementary groups")(e.into()))?;
    }
    let own_pidfd =
        sys::pidfd_open(std::process::id() as i32).map_err(io_err("watching pysandbox"))?;
    let plan = executor::ExecPlan {
        python: cstring(&image.python)?,
        argv: argv.iter().map(|a| cstring(a)).collect::<Result<_, _>>()?,
        envp: env
            .iter()
            .map(|(k, v)| cstring(&format!("{k}={v}")))
            .collect::<Result<_, _>>()?,
        loopback: policy.network.private(),
        send_namespaces: pasta.is_some(),
        status_fd: status_w.as_raw_fd(),
        parent_pidfd: own_pidfd.as_raw_fd(),
        seccomp: crate::seccomp::Policy::load(policy.seccomp_log),
    };

    mark("spec saved");
    let started = Instant::now();
    let mut container = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_executor(executor::SandboxExecutor::new(plan))
        .with_root_path(&state)
        .map_err(lc_err("setting the state directory"))?
        .validate_id()
        .map_err(lc_err("validating the run id"))?
        .with_stdin(in_r)
        .with_stdout(out_w)
        .with_stderr(err_w)
        .as_init(&bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(lc_err("creating the sandbox"))?;
    drop(status_w);
    let init_pid = container
        .pid()
        .ok_or_else(|| input_err("the sandbox has no init process".into()))?
        .as_raw();
    let pidfd = sys::pidfd_open(init_pid).map_err(io_err("watching the sandbox"))?;
    let mut not_capped = not_capped;
    if mode.is_root() {
        not_capped.extend(host::cap_user_namespace(init_pid, &user_sysctls));
    }
    let signals = SignalFd::with_flags(&relayed, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| io_err("receiving signals")(e.into()))?;

    mark("container built");
    let guard = pidfd.try_clone().map_err(io_err("watching the sandbox"))?;
    // The network, while the init waits for the start signal: the script never runs
    // unconnected. On failure the sandbox is killed, and pasta (in its pid namespace)
    // with it.
    if let Some(pasta) = pasta {
        let started = receive_namespaces(&status_r).and_then(|(netns, pidns)| {
            let target = crate::net::Target {
                netns,
                pidns,
                run_dir: &mnt.join("net"),
                sandbox_ids: match mode {
                    Mode::Root { sandbox, .. } => Some((sandbox.uid, sandbox.gid)),
                    Mode::Rootless => None,
                },
            };
            crate::net::start(pasta, &target).map_err(crate::Error::from)
        });
        if let Err(e) = started {
            supervise::kill_and_reap(&guard, init_pid);
            return Err(e);
        }
        mark("network up");
    }
    let supervised = match container.start() {
        Ok(()) => supervise::Supervisor {
            init_pid,
            pidfd,
            signals,
            input: match &inputs.stdin {
                Some(fd) => {
                    supervise::Input::Fd(fd.try_clone().map_err(io_err("duplicating stdin"))?)
                }
                None => supervise::Input::None,
            },
            to_sandbox: Some(in_w),
            from_stdout: out_r,
            from_stderr: err_r,
            out_sink: if policy.capture {
                Capped::capture(policy.limits.max_output)
            } else {
                Capped::pass_through(policy.limits.max_output, false)
            },
            err_sink: if policy.capture {
                Capped::capture(policy.limits.max_output)
            } else {
                Capped::pass_through(policy.limits.max_output, true)
            },
            status: status_r,
            timeout: policy.limits.timeout,
            grace: KILL_GRACE,
        }
        .run(started)
        .map_err(io_err("supervising the sandbox")),
        Err(e) => Err(lc_err("starting the sandbox")(e)),
    };
    mark("supervised");
    // The sandbox is dead: bring its output home, and read what its cgroup saw.
    let merged = overlay.as_ref().map(|o| o.merge()).unwrap_or_default();
    let oom_kills = cg.oom_kills(id);
    // No libcontainer `delete`: its state lives in our private tmpfs (gone when we exit)
    // and the caller removes the cgroups; only a live init, on an error path, needs
    // killing (the kernel then kills the rest of its pid namespace).
    if supervised.is_err() {
        supervise::kill_and_reap(&guard, init_pid);
    }
    let supervised = supervised?;
    let status = Status::parse(&supervised.status);
    let limits = limits::describe(&policy.limits, cgroups, &rlimits);
    let mut report = make_report(
        id,
        image,
        &supervised,
        status,
        limits,
        oom_kills > 0,
        merged.full,
    );
    report.warnings.extend(inputs.warnings.iter().cloned());
    report.warnings.extend(warnings);
    if let Some(cpus) = policy.limits.cpus
        && !cgroups.enforces_cpu()
    {
        report.warnings.push(format!(
            "--cpus {cpus} is not enforced: no CPU controller is usable here ({}); --strict-limits refuses to run instead. Hint: {}",
            cg.why_not.as_deref().unwrap_or("the cgroup has no cpu controller"),
            limits::CPU_HINT
        ));
    }
    report.warnings.extend(cg.notes.iter().cloned());
    report.warnings.extend(
        not_capped
            .into_iter()
            .map(|w| format!("a kernel budget of the sandbox is not capped: {w}")),
    );
    if policy.network == Network::Host {
        report.warnings.push(HOST_NETWORK_WARNING.into());
    }
    if report.signal == Some(libc::SIGSYS) {
        report.warnings.push(
            "the seccomp filter killed the script: it made a system call through another architecture's ABI (e.g. int 0x80)".into(),
        );
    }
    if merged.dropped > 0 {
        report.warnings.push(format!(
            "{} output entries were not written back to {}: they would have put more than the output limit ({} bytes) on the host, or were nested deeper than {} folders",
            merged.dropped,
            inputs.output.as_deref().unwrap_or(Path::new("?")).display(),
            policy.limits.output_cap(),
            output::MAX_DEPTH
        ));
    }
    if merged.escaping_links > 0 {
        report.warnings.push(format!(
            "{} symbolic links in the output folder point outside it and were not written back",
            merged.escaping_links
        ));
    }
    if merged.failed > 0 {
        report.warnings.push(format!(
            "{} output entries could not be written back to {}",
            merged.failed,
            inputs.output.as_deref().unwrap_or(Path::new("?")).display()
        ));
    }
    Ok(report)
}

/// pasta lives in the sandbox's pid namespace as the sandbox's user, so RLIMIT_NPROC
/// counts it: one more process, so that the script keeps the --pids it was given.
fn with_pasta_slot(rlimits: &[spec::Rlimit], pasta: bool) -> Vec<spec::Rlimit> {
    let mut out = rlimits.to_vec();
    if pasta {
        let (_, inherited_hard) = sys::getrlimit(libc::RLIMIT_NPROC);
        for r in out
            .iter_mut()
            .filter(|r| r.kind == libcontainer::oci_spec::runtime::PosixRlimitType::RlimitNproc)
        {
            r.hard = r.hard.saturating_add(1).min(inherited_hard);
            r.soft = r.soft.saturating_add(1).min(r.hard);
        }
    }
    out
}

/// The init's network and pid namespaces, sent by the executor before `build()` returned.
fn receive_namespaces(status: &OwnedFd) -> Result<(OwnedFd, OwnedFd), crate::Error> {
    let get = |tag: &[u8]| {
        // Already sent, before build() returned: never wait long for it.
        let mut fds = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(status),
            nix::poll::PollFlags::POLLIN,
        )];
        if !matches!(nix::poll::poll(&mut fds, 2000u16), Ok(n) if n > 0) {
            return Err(io_err("receiving the sandbox's namespaces")(
                io::Error::from(io::ErrorKind::TimedOut),
            ));
        }
        let mut buf = [0u8; 16];
        match sys::recv_with_fd(status.as_raw_fd(), &mut buf) {
            Ok((n, Some(fd))) if buf[..n] == *tag => Ok(fd),
            Ok(_) => Err(io_err("receiving the sandbox's namespaces")(
                io::Error::other("the sandbox's init did not send them"),
            )),
            Err(e) => Err(io_err("receiving the sandbox's namespaces")(e)),
        }
    };
    let net = get(b"netns 0\n")?;
    let pid = get(b"pidns 0\n")?;
    Ok((net, pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn image_env_under_the_users_and_over_the_base() {
        let image = kv(&[
            ("PATH", "/opt/venv/bin:/usr/bin"),
            ("VIRTUAL_ENV", "/opt/venv"),
            ("HOME", "/root"),
            ("USER", "root"),
        ]);
        let user = kv(&[("VIRTUAL_ENV", "/mine"), ("X", "1")]);
        let env = environment(&image, &user);
        let get = |k: &str| env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PATH"), Some("/opt/venv/bin:/usr/bin"));
        assert_eq!(get("VIRTUAL_ENV"), Some("/mine"));
        assert_eq!(get("X"), Some("1"));
        assert_eq!(get("HOME"), Some(spec::HOME_DIR));
        assert_eq!(get("USER"), Some("mambauser"));
        assert_eq!(get("LANG"), Some("C.UTF-8"));
        assert_eq!(env.iter().filter(|(k, _)| k == "PATH").count(), 1);
    }
}
