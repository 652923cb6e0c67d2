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
mod terminal;

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
    if policy.interactive && !terminal::stdin_is_terminal() {
        return Err(RuntimeError::Input(
            "-i needs a terminal: pysandbox's stdin is not one. Hint: run it from a terminal, or drop -i and pipe the input in".into(),
        )
        .into());
    }
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
    let lock = take_lock(&locks, &id)?;
    let cgroups = if mode.is_root() {
        CgroupSupport::detect_for_root()
    } else {
        CgroupSupport::None
    };
    if policy.strict_limits {
        limits::check_strict(&policy.limits, cgroups)?;
    }
    let result = launch(policy, mode, inputs, image, &mnt, &id, cgroups, pasta);
    if result.is_err() && policy.keep {
        crate::runs::discard(&id); // a run that never ended is not kept
    }
    let cgroups_left = if mode.is_root() {
        limits::remove_stale_cgroups(&id)
    } else {
        Vec::new()
    };
    if cgroups_left.is_empty() {
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
    cgroups: CgroupSupport,
    pasta: Option<&Path>,
) -> Result<RunReport, crate::Error> {
    let rlimits = limits::rlimits(&policy.limits, cgroups.enforces_memory());
    // Relayed signals wait, blocked, until the supervisor reads them from a signalfd; a
    // Ctrl-C during setup thus still ends in a clean teardown. (The executor unblocks
    // every signal before exec.)
    let mut relayed = supervise::relayed_set();
    if policy.interactive {
        // Not relayed: the sandbox's terminal takes pysandbox's window size.
        relayed.add(nix::sys::signal::Signal::SIGWINCH);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&relayed), None)
        .map_err(|e| io_err("blocking signals")(e.into()))?;

    let user_sysctls = limits::user_sysctls();
    let not_capped =
        host::enter_namespaces(mode, &limits::ipc_sysctls(&policy.limits), &user_sysctls)?;
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

    // Writable host folders (output/, and the source folder with --src-writable): an
    // overlay over a read-only view, its upper layer a capped tmpfs merged back after.
    let (upper_owner, new_file_owner) = match mode {
        Mode::Root {
            sandbox, caller, ..
        } => (Some(sandbox), (caller.uid != 0).then_some(caller)),
        Mode::Rootless => (None, None),
    };
    let writable_capped = |host_dir: &Path, name: &str, cap: u64| {
        let t = bundle.join(name);
        host::mkdir(&t, 0o755)?;
        let o = output::OutputOverlay::stage(
            &stage,
            host_dir,
            &t,
            &mnt.join(name),
            cap,
            upper_owner,
            new_file_owner,
        )?;
        Ok::<_, crate::Error>((t, o))
    };
    let writable =
        |host_dir: &Path, name: &str| writable_capped(host_dir, name, policy.limits.output_cap());
    let mut binds = Vec::new();
    // --keep: /tmp and HOME over the kept run's (empty) folders, merged into them after
    // the run; --from: over a kept run's folders, never merged. Capped like the tmpfs
    // they replace (the binds come after those mounts and cover them).
    let kept_dir = if policy.keep {
        Some(crate::runs::create(id)?)
    } else {
        None
    };
    let mut kept = Vec::new();
    if let Some(state) = kept_dir.as_ref().or(policy.from.as_ref()) {
        let l = &policy.limits;
        for (name, dest, cap) in [
            ("tmp", "/tmp", l.tmp_size()),
            ("home", spec::HOME_DIR, l.home_size()),
        ] {
            let (t, o) = writable_capped(&state.join(name), name, cap)?;
            kept.push(o);
            binds.push(Bind {
                source: t,
                dest,
                writable: true,
            });
        }
    }
    let mut src_overlay = None;
    if let Some(src) = &inputs.src_dir {
        let t = if policy.src_writable {
            let (t, o) = writable(src, "src")?;
            src_overlay = Some(o);
            warnings.push(format!(
                "--src-writable: the script can modify its own source folder {}: its changes are written back when it ends",
                src.display()
            ));
            t
        } else {
            let t = bundle.join("src");
            host::mkdir(&t, 0o755)?;
            warnings.extend(stage.read_only_view(src, &t, true, None)?);
            t
        };
        binds.push(Bind {
            source: t,
            dest: spec::SRC_DIR,
            writable: policy.src_writable,
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
        let (t, o) = writable(out, "output")?;
        overlay = Some(o);
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
    if policy.interactive && policy.script != Script::Repl {
        argv.push("-i".into());
    }
    match (&policy.script, &inputs.script_in_sandbox) {
        (Script::Code(code), _) => {
            argv.push("-c".into());
            argv.push(code.clone());
        }
        (Script::Repl, _) => {}
        (_, Some(path)) => argv.push(path.clone()),
        (_, None) => unreachable!("a script file or source always has a path"),
    }
    argv.extend(policy.args.iter().cloned());
    let proxied = !policy.allow_net.rules.is_empty();
    // The proxy's variables come before the user's -e, which may replace them.
    let mut user_env = if proxied {
        crate::net::proxy::environment()
    } else {
        Vec::new()
    };
    user_env.extend(policy.env.iter().cloned());
    let env = environment(&image.env, &user_env);

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
        cgroups_path: limits::cgroup_path(id),
        cgroup_limits: cgroups.enforces_memory(),
        limit_swap: matches!(
            cgroups,
            CgroupSupport::V1 { memsw: true } | CgroupSupport::V2
        ),
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
        proxy_port: proxied.then_some(crate::net::proxy::PROXY_PORT),
        pty: policy.interactive.then(terminal::window_size),
        pty_slave: std::sync::atomic::AtomicI32::new(-1),
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
    // The --allow-net proxy, on the listening socket the init made in the sandbox's
    // namespace, while the init waits. Dropping it (any error below) kills it.
    let proxy = if proxied {
        let started = receive_fd(&status_r, b"proxy 0\n").and_then(|listener| {
            let run_as = match mode {
                Mode::Root { sandbox, .. } => Some((sandbox.uid, sandbox.gid)),
                Mode::Rootless => None,
            };
            crate::net::proxy::start(listener, &policy.allow_net, run_as)
                .map_err(crate::Error::from)
        });
        match started {
            Ok(p) => {
                mark("proxy up");
                Some(p)
            }
            Err(e) => {
                supervise::kill_and_reap(&guard, init_pid);
                return Err(e);
            }
        }
    } else {
        None
    };
    // `-i`: the sandbox's terminal (its master; the init kept no copy), and pysandbox's
    // own in raw mode until this function returns.
    let (pty, _raw_mode) = if policy.interactive {
        let got = receive_fd(&status_r, b"pty 0\n").and_then(|master| {
            let raw =
                terminal::RawMode::enter().map_err(io_err("putting your terminal in raw mode"))?;
            Ok((master, raw))
        });
        match got {
            Ok((m, raw)) => (Some(m), Some(raw)),
            Err(e) => {
                supervise::kill_and_reap(&guard, init_pid);
                return Err(e);
            }
        }
    } else {
        (None, None)
    };
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(io_err("duplicating the terminal"));
    let (to_sandbox, from_stdout, resize) = match &pty {
        Some(m) => (dup(m)?, dup(m)?, Some(dup(m)?)),
        None => (in_w, out_r, None),
    };
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
            to_sandbox: Some(to_sandbox),
            from_stdout,
            resize,
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
    let net_log = proxy.map(|p| {
        let log = p.finish();
        mark("proxy log");
        log
    });
    // The sandbox is dead: bring its output home, and read what its cgroup saw.
    let merged = overlay.as_ref().map(|o| o.merge()).unwrap_or_default();
    let src_merged = src_overlay.as_ref().map(|o| o.merge()).unwrap_or_default();
    // --keep: /tmp, HOME and a copy of the output into the kept run's folders.
    let mut kept_merged = Vec::new();
    if let Some(dir) = &kept_dir {
        kept_merged.extend(kept.iter().map(output::OutputOverlay::merge_data_only));
        if let Some(o) = &overlay {
            match sys::open_dir_nofollow(&dir.join("output")) {
                Ok(fd) => kept_merged.push(o.merge_to(std::os::fd::AsFd::as_fd(&fd), true)),
                Err(_) => kept_merged.push(output::Merged {
                    failed: 1,
                    ..Default::default()
                }),
            }
        }
    }
    let oom_kills = limits::oom_kills(id, cgroups);
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
        merged.full || src_merged.full,
    );
    report.network = net_log;
    report.warnings.extend(inputs.warnings.iter().cloned());
    report.warnings.extend(warnings);
    if let Some(cpus) = policy.limits.cpus
        && !cgroups.enforces_memory()
    {
        report.warnings.push(format!(
            "--cpus {cpus} is not enforced: no CPU controller is usable here (cgroups need root, or a delegated cgroup v2); --strict-limits refuses to run instead"
        ));
    }
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
    let cap = policy.limits.output_cap();
    report.warnings.extend(merge_warnings(
        "output",
        &merged,
        inputs.output.as_deref(),
        cap,
    ));
    report.warnings.extend(merge_warnings(
        "source",
        &src_merged,
        inputs.src_dir.as_deref(),
        cap,
    ));
    if let Some(dir) = &kept_dir {
        for m in &kept_merged {
            report
                .warnings
                .extend(merge_warnings("kept", m, Some(dir), cap));
        }
        let run = crate::runs::KeptRun {
            id: id.to_string(),
            image: image.name.clone(),
            ended: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            status: serde_json::to_value(report.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            exit_code: report.exit_code,
            bytes: 0,
        };
        // The run itself went fine: a kept state that cannot be recorded (a `prune`
        // meanwhile) is a warning, not a lost report.
        if let Err(e) = crate::runs::finish(dir, &run) {
            report
                .warnings
                .push(format!("the run could not be kept: {e}"));
        }
    }
    Ok(report)
}

/// What a merge back into a host folder (`what`: output, source) left out, if anything.
fn merge_warnings(
    what: &str,
    merged: &output::Merged,
    folder: Option<&Path>,
    cap: u64,
) -> Vec<String> {
    let folder = folder.unwrap_or(Path::new("?")).display();
    let mut out = Vec::new();
    if merged.dropped > 0 {
        out.push(format!(
            "{} {what} entries were not written back to {folder}: they would have put more than the output limit ({cap} bytes) on the host, or were nested deeper than {} folders",
            merged.dropped,
            output::MAX_DEPTH
        ));
    }
    if merged.escaping_links > 0 {
        out.push(format!(
            "{} symbolic links in the {what} folder point outside it and were not written back",
            merged.escaping_links
        ));
    }
    if merged.failed > 0 {
        out.push(format!(
            "{} {what} entries could not be written back to {folder}",
            merged.failed
        ));
    }
    out
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
    let net = receive_fd(status, b"netns 0\n")?;
    let pid = receive_fd(status, b"pidns 0\n")?;
    Ok((net, pid))
}

/// One descriptor the executor sent with `tag` before `build()` returned.
fn receive_fd(status: &OwnedFd, tag: &[u8]) -> Result<OwnedFd, crate::Error> {
    let step = "receiving the sandbox's namespaces and sockets";
    // Already sent, before build() returned: never wait long for it.
    let mut fds = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(status),
        nix::poll::PollFlags::POLLIN,
    )];
    if !matches!(nix::poll::poll(&mut fds, 2000u16), Ok(n) if n > 0) {
        return Err(io_err(step)(io::Error::from(io::ErrorKind::TimedOut)).into());
    }
    let mut buf = [0u8; 16];
    match sys::recv_with_fd(status.as_raw_fd(), &mut buf) {
        Ok((n, Some(fd))) if buf[..n] == *tag => Ok(fd),
        Ok(_) => Err(io_err(step)(io::Error::other(format!(
            "the sandbox's init did not send {}",
            String::from_utf8_lossy(tag).trim()
        )))
        .into()),
        Err(e) => Err(io_err(step)(e).into()),
    }
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
