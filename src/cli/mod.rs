//! The command line: parses arguments with clap, builds a `RunPolicy`, calls the library,
//! and maps the report to an exit status. No isolation logic lives here.

mod image;

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use pysandbox::policy::{self, ImageRef, RunPolicy, Script, StdinSource};
use pysandbox::report::{EXIT_SANDBOX_ERROR, RunReport, RunStatus};

#[derive(Parser)]
#[command(
    name = "pysandbox",
    version,
    about = "Run untrusted Python scripts in a hardened, disposable sandbox — no daemon, no root",
    long_about = "Run untrusted Python scripts in a hardened, disposable OCI container (user, mount, pid, ipc, uts, cgroup and network namespaces; read-only root file system; no capabilities; no new privileges; resource limits), with no daemon and no root.\n\nThe current folder is visible read-only at /usr/app/data (the working directory), its output/ subfolder is writable, the script's own folder is at /usr/app/src, and nothing else of the host is.",
    after_help = "Exit status of `run`: the script's own; 128+N if it was killed by signal N; 124 on timeout; 125 when pysandbox itself could not run it."
)]
struct Cli {
    /// Log pysandbox's and libcontainer's steps: error, warn, info, debug or trace
    /// (default: off; also PYSANDBOX_LOG). Logs never mix into the script's output.
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Write logs to this file instead of stderr.
    #[arg(long, global = true, value_name = "FILE")]
    log_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a Python script in a fresh sandbox.
    Run(Box<RunArgs>),
    /// Check what this host gives pysandbox, with a fix for each problem.
    Doctor,
    /// Images: build from an environment file, list, inspect, remove, prune, import, pull.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// One-time host setup (root).
    #[command(subcommand)]
    Setup(SetupCommand),
}

#[derive(Subcommand)]
enum SetupCommand {
    /// Write and load an AppArmor profile that lets this binary create user namespaces
    /// (needed where kernel.apparmor_restrict_unprivileged_userns=1, e.g. Ubuntu 24.04).
    Apparmor {
        /// Print the profile instead of writing and loading it.
        #[arg(long)]
        print: bool,
        /// The folder to write the profile into.
        #[arg(long, value_name = "DIR", default_value = pysandbox::apparmor::PROFILE_DIR)]
        dir: PathBuf,
    },
}

fn setup(c: SetupCommand) -> Result<i32> {
    match c {
        SetupCommand::Apparmor { print, dir } => {
            let exe = std::env::current_exe()
                .and_then(std::fs::canonicalize)
                .context("finding the pysandbox binary")?;
            if print {
                print!("{}", pysandbox::apparmor::profile(&exe)?);
                return Ok(0);
            }
            let path = pysandbox::apparmor::install(&exe, &dir)?;
            println!(
                "pysandbox: wrote and loaded {} (user namespaces allowed for {})",
                path.display(),
                exe.display()
            );
            Ok(0)
        }
    }
}

#[derive(Args)]
struct RunArgs {
    /// Image: omit for the default image (built from the host's Python on first use), or a
    /// root file system directory.
    #[arg(long, value_name = "NAME|PATH")]
    image: Option<String>,
    /// Wall-clock limit, e.g. 500ms, 10s, 2m. On expiry: SIGTERM, then SIGKILL after 1s;
    /// exit status 124.
    #[arg(long, value_name = "DUR", default_value = "60s")]
    timeout: String,
    /// Memory limit, e.g. 256M, 1G.
    #[arg(long, value_name = "SIZE", default_value = "512M")]
    memory: String,
    /// Maximum number of processes and threads.
    #[arg(long, value_name = "N", default_value_t = policy::DEFAULT_PIDS)]
    pids: u64,
    /// CPU quota, e.g. 0.5 or 2 (needs cgroups: root, or a delegated cgroup v2).
    #[arg(long, value_name = "FLOAT")]
    cpus: Option<f64>,
    /// Cap on what the output folder may put on the host: data blocks, and at least 4 KiB
    /// per entry (the script gets ENOSPC beyond). Never more than --memory: the folder is
    /// held in memory until the run ends.
    #[arg(long, value_name = "SIZE", default_value = "1G")]
    output_limit: String,
    /// Cap on each of stdout and stderr: beyond it the head and the tail are kept and the
    /// middle is dropped (and counted).
    #[arg(long, value_name = "SIZE", default_value = "10M")]
    max_output: String,
    /// Refuse to run when a limit could only be approximated on this host (e.g. memory
    /// through RLIMIT_AS instead of a cgroup).
    #[arg(long)]
    strict_limits: bool,
    /// Print one JSON report on stdout (schema in README) instead of passing the script's
    /// streams through; they are captured into the report.
    #[arg(long)]
    json: bool,
    /// Network for the script (default: a private loopback only). `--network`: a network
    /// namespace of its own, connected to the outside by pasta (user-mode, rootless); the
    /// host's loopback services and abstract unix sockets stay unreachable.
    /// `--network=host`: share the host's network, loopback services included.
    #[arg(
        long,
        value_name = "host",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "pasta"
    )]
    network: Option<String>,
    /// Read-only data folder, the script's working directory (default: the current folder).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Writable output folder (default: DATA/output, created if missing).
    #[arg(long, value_name = "DIR")]
    output: Option<PathBuf>,
    /// No host files at all: no data folder, no output folder (the script is copied in).
    #[arg(long)]
    no_fs: bool,
    /// Development mode: mount this source folder read-only at /usr/app/src; the script
    /// must be inside it.
    #[arg(long, value_name = "SRC")]
    dev: Option<PathBuf>,
    /// Feed this file to the script's stdin (default: pysandbox's own stdin).
    #[arg(long, value_name = "FILE")]
    stdin: Option<PathBuf>,
    /// Set an environment variable in the sandbox (KEY=VAL, or KEY to copy it from
    /// yours). Repeatable. Nothing else of your environment is passed.
    #[arg(short = 'e', long = "env", value_name = "KEY=VAL")]
    env: Vec<String>,
    /// Name every syscall the seccomp filter refuses (on stderr, after the run). The
    /// script still gets the same EPERM.
    #[arg(long)]
    seccomp_log: bool,
    /// Run this code (like python -c) instead of a script file.
    #[arg(long, value_name = "CODE")]
    code: Option<String>,
    /// Image build stage (internal): /opt/conda is writable, changes land in DIR/upper.
    #[arg(long, value_name = "DIR", hide = true)]
    conda_layer: Option<PathBuf>,
    /// The script (`-` reads it from stdin), then its arguments.
    #[arg(value_name = "SCRIPT")]
    script: Option<String>,
    /// Arguments for the script.
    #[arg(
        value_name = "ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true,
        num_args = 0..
    )]
    args: Vec<String>,
}

fn init_logging(level: Option<&str>, file: Option<&PathBuf>) -> Result<()> {
    let level = match level
        .map(str::to_string)
        .or_else(|| std::env::var("PYSANDBOX_LOG").ok())
    {
        None => return Ok(()),
        Some(l) if l == "off" => return Ok(()),
        Some(l) => l,
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&level)
        .with_context(|| format!("invalid --log-level {level:?}"))?;
    // A duplicate of stderr (or the file): after the sandbox's init replaces fd 2 with
    // the script's stderr pipe, its logs still go here, never into the script's stream.
    let sink = match file {
        Some(f) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(f)
            .with_context(|| format!("--log-file {}", f.display()))?,
        None => std::fs::File::from(
            std::os::fd::AsFd::as_fd(&std::io::stderr())
                .try_clone_to_owned()
                .context("duplicating stderr for logs")?,
        ),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::sync::Mutex::new(sink))
        .with_ansi(false)
        .init();
    Ok(())
}

fn build_policy(a: RunArgs) -> Result<RunPolicy> {
    let mut rest = a.args;
    let script = match (a.code, a.script) {
        (Some(code), first) => {
            if let Some(first) = first {
                rest.insert(0, first);
            }
            Script::Code(code)
        }
        (None, Some(s)) if s == "-" => {
            let mut body = Vec::new();
            std::io::stdin()
                .read_to_end(&mut body)
                .context("reading the script from stdin")?;
            Script::Source(body)
        }
        (None, Some(s)) => Script::File(PathBuf::from(s)),
        (None, None) => bail!(
            "no script given. Hint: pysandbox run SCRIPT.py [ARGS...], or --code \"...\", or - to read it from stdin"
        ),
    };
    let mut p = RunPolicy::new(script);
    p.args = rest;
    p.image = match a.image.as_deref() {
        None => ImageRef::Default,
        Some(s) => ImageRef::parse(s),
    };
    p.limits.timeout = policy::parse_duration(&a.timeout)?;
    p.limits.memory = policy::parse_size(&a.memory)?;
    p.limits.pids = a.pids;
    p.limits.cpus = a.cpus;
    p.limits.output_folder = policy::parse_size(&a.output_limit)?;
    p.limits.max_output = policy::parse_size(&a.max_output)?;
    p.strict_limits = a.strict_limits;
    p.capture = a.json;
    p.conda_layer = a.conda_layer;
    p.network = match a.network.as_deref() {
        None => policy::Network::None,
        Some(m) => policy::Network::parse(m)?,
    };
    p.seccomp_log = a.seccomp_log;
    p.data = a.data;
    p.output = a.output;
    p.no_fs = a.no_fs;
    p.dev_src = a.dev;
    p.stdin = match a.stdin {
        Some(f) => StdinSource::File(f),
        None => StdinSource::Inherit,
    };
    for e in &a.env {
        p.env.push(policy::parse_env(e, |k| std::env::var(k).ok())?);
    }
    p.validate()?;
    Ok(p)
}

fn run(a: RunArgs) -> Result<i32> {
    let timeout = a.timeout.clone();
    let json = a.json;
    let policy = build_policy(a)?;
    let report = match pysandbox::run_in_this_process(&policy) {
        Ok(r) => r,
        Err(e) if json => {
            // Even a failure to start is one JSON report, with status sandbox_error.
            println!(
                "{}",
                serde_json::to_string(&RunReport::failed(e.to_string()))?
            );
            return Ok(EXIT_SANDBOX_ERROR);
        }
        Err(e) if e.is_host_problem() => {
            return Err(anyhow::anyhow!(
                "{e}. Run `pysandbox doctor` for a check of this host"
            ));
        }
        Err(e) => return Err(e.into()),
    };
    for w in &report.warnings {
        eprintln!("pysandbox: warning: {w}");
    }
    if json {
        // The report carries it too; stderr is pysandbox's own channel here.
        if policy.network == policy::Network::Host {
            eprintln!(
                "pysandbox: warning: {}",
                pysandbox::runtime::HOST_NETWORK_WARNING
            );
        }
        println!("{}", serde_json::to_string(&report)?);
        return Ok(report.cli_exit_code());
    }
    if policy.seccomp_log {
        if report.seccomp_refused.is_empty() {
            eprintln!("pysandbox: seccomp refused no syscall");
        } else {
            let list: Vec<String> = report
                .seccomp_refused
                .iter()
                .map(|r| format!("{} (x{})", r.syscall, r.count))
                .collect();
            eprintln!("pysandbox: seccomp refused: {}", list.join(", "));
        }
    }
    match report.status {
        RunStatus::SandboxError => {
            eprintln!(
                "pysandbox: error: {}",
                report.error.as_deref().unwrap_or("the sandbox failed")
            );
        }
        RunStatus::Timeout if std::io::stderr().is_terminal() => {
            eprintln!("pysandbox: stopped: the script ran longer than --timeout {timeout}");
        }
        RunStatus::Oom => {
            eprintln!("pysandbox: killed: the script exceeded --memory");
        }
        RunStatus::OutputLimit if std::io::stderr().is_terminal() => {
            eprintln!(
                "pysandbox: output incomplete: a stream exceeded --max-output or the output folder filled --output-limit"
            );
        }
        _ => {}
    }
    Ok(report.cli_exit_code())
}

fn doctor() -> i32 {
    use pysandbox::doctor::Level;
    let checks = pysandbox::doctor::run_checks();
    for c in &checks {
        let tag = match c.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        println!("{tag} {}: {}", c.name, c.detail);
        if let Some(fix) = &c.fix {
            println!("     fix: {fix}");
        }
    }
    if checks.iter().any(|c| c.level == Level::Fail) {
        1
    } else {
        0
    }
}

/// Parses the command line, runs, returns the process exit status.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return 0;
        }
        Err(e) => {
            // One line, as for every other bad input.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!(
                "pysandbox: error: {first}. Hint: see `pysandbox --help` or `pysandbox run --help`"
            );
            return EXIT_SANDBOX_ERROR;
        }
    };
    let result = init_logging(cli.log_level.as_deref(), cli.log_file.as_ref()).and_then(|()| {
        match cli.command {
            Command::Run(a) => run(*a),
            Command::Doctor => Ok(doctor()),
            Command::Image(c) => image::run(c),
            Command::Setup(c) => setup(c),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line: the cause chain joined, the hint last.
            let msg = e
                .chain()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(": ");
            eprintln!("pysandbox: error: {msg}");
            EXIT_SANDBOX_ERROR
        }
    }
}
