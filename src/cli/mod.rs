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
    /// Serve runs over HTTP from a warm pool: pysandbox's API and Piston's.
    Serve(Box<ServeArgs>),
    /// A Model Context Protocol server on stdio: run_python_code, open_session, close_session.
    Mcp(McpArgs),
    /// Images: build from an environment file, list, inspect, remove, prune, import, pull.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// List the kept runs (`run --keep`): id, image, when it ended, status, size.
    Ps,
    /// List what a kept run created or changed in /tmp, HOME and its output folder.
    Inspect {
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Remove a kept run.
    Rm {
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Remove every kept run.
    Prune,
    /// One-time host setup (root).
    #[command(subcommand)]
    Setup(SetupCommand),
}

#[derive(Args)]
struct McpArgs {
    /// Image of every run (default: the default image).
    #[arg(long, value_name = "NAME|PATH")]
    image: Option<String>,
    /// Timeout of one run_python_code call.
    #[arg(long, value_name = "DUR", default_value = "30s")]
    timeout: String,
    /// Memory limit of each sandbox (a session's whole life).
    #[arg(long, value_name = "SIZE", default_value = "512M")]
    memory: String,
    /// Process limit of each sandbox.
    #[arg(long, value_name = "N", default_value_t = policy::DEFAULT_PIDS)]
    pids: u64,
    /// Most sessions open at once.
    #[arg(long, value_name = "N", default_value_t = 8)]
    max_sessions: usize,
    /// A session idle this long is ended.
    #[arg(long, value_name = "DUR", default_value = "10m")]
    session_idle: String,
    /// Longest life of a session.
    #[arg(long, value_name = "DUR", default_value = "1h")]
    session_lifetime: String,
}

#[derive(Args)]
struct ServeArgs {
    /// TCP address to listen on (loopback unless a token is set).
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:2000",
        conflicts_with = "socket"
    )]
    listen: std::net::SocketAddr,
    /// Listen on this unix socket instead (created 0600).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Sandboxes kept warm.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pool: usize,
    /// Image of every run (default: the default image).
    #[arg(long, value_name = "NAME|PATH")]
    image: Option<String>,
    /// Default wall-clock limit of a run.
    #[arg(long, value_name = "DUR", default_value = "10s")]
    timeout: String,
    /// Largest wall-clock limit a request may ask for.
    #[arg(long, value_name = "DUR", default_value = "60s")]
    max_timeout: String,
    /// Default memory limit of a run (pooled runs have it).
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    memory: String,
    /// Largest memory limit a request may ask for.
    #[arg(long, value_name = "SIZE", default_value = "1G")]
    max_memory: String,
    /// Default process limit of a run.
    #[arg(long, value_name = "N", default_value_t = policy::DEFAULT_PIDS)]
    pids: u64,
    /// Largest process limit a request may ask for.
    #[arg(long, value_name = "N", default_value_t = 256)]
    max_pids: u64,
    /// Cap on each of stdout and stderr of a run.
    #[arg(long, value_name = "SIZE", default_value = "1M")]
    max_output: String,
    /// Runs at once; more requests wait in a queue of --max-queue, beyond it 503.
    #[arg(long, value_name = "N", default_value_t = 8)]
    max_concurrent: usize,
    #[arg(long, value_name = "N", default_value_t = 256)]
    max_queue: usize,
    /// Largest request body.
    #[arg(long, value_name = "SIZE", default_value = "8M")]
    max_body: String,
    /// Most sessions alive at once (beyond: 429).
    #[arg(long, value_name = "N", default_value_t = 16)]
    max_sessions: usize,
    /// A session idle this long is ended (410 after).
    #[arg(long, value_name = "DUR", default_value = "5m")]
    session_idle: String,
    /// Longest life of a session (and most a client may ask).
    #[arg(long, value_name = "DUR", default_value = "1h")]
    session_lifetime: String,
    /// File with accepted tokens, one per line (Authorization: Bearer, or X-API-Key).
    /// Required to listen on a non-loopback address.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
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
    /// Egress allow-list (repeatable): HOST[:PORT], *.DOMAIN[:PORT], an IP or a CIDR
    /// ([IPv6]:PORT). The sandbox keeps its own loopback only; pysandbox's proxy on its
    /// 127.0.0.1:3128 (HTTP CONNECT, plain HTTP, SOCKS5h; HTTP_PROXY, HTTPS_PROXY,
    /// ALL_PROXY and PIP_PROXY point at it) resolves names itself and connects only to
    /// allowed *resolved* addresses. A name never reaches loopback, private, link-local or
    /// metadata addresses: allow those by address. Every attempt is in the JSON report.
    #[arg(long = "allow-net", value_name = "HOST[:PORT]")]
    allow_net: Vec<String>,
    /// Print the proxy's log of every connection attempt (--allow-net) on stderr after
    /// the run.
    #[arg(long)]
    log_net: bool,
    /// Read-only data folder, the script's working directory (default: the current folder).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Writable output folder (default: DATA/output, created if missing).
    #[arg(long, value_name = "DIR")]
    output: Option<PathBuf>,
    /// No host files at all: no data folder, no output folder (the script is copied in).
    #[arg(long)]
    no_fs: bool,
    /// Development mode: mount this source folder read-only (writable with
    /// --src-writable) at /usr/app/src; the script must be inside it.
    #[arg(long, value_name = "SRC")]
    dev: Option<PathBuf>,
    /// The source folder at /usr/app/src (--dev SRC, or the script's own folder) writable,
    /// as the output folder is: changes land in a capped layer (--output-limit) written
    /// back when the run ends, without set-id bits and never through a host symlink. The
    /// script can then modify its own source (a warning says so).
    #[arg(long)]
    src_writable: bool,
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
    /// Keep what the run leaves in /tmp, HOME and its output folder under the run's id
    /// (private to you, capped like those folders, files without execute bits), for
    /// `pysandbox ps`, `inspect ID`, `run --from ID` and `rm ID`.
    #[arg(long)]
    keep: bool,
    /// Start /tmp and HOME from a kept run's state (e.g. `run --from ID -i` for a REPL
    /// there); the kept run itself is not changed.
    #[arg(long, value_name = "ID")]
    from: Option<String>,
    /// Interactive: the script (or --code) runs with `python -i`, or, with neither, the
    /// Python REPL, on a terminal of the sandbox's own bridged to yours (raw mode while it
    /// runs; Ctrl-C, Ctrl-D and window size reach Python; TERM is passed). Needs a terminal
    /// on stdin; same isolation and limits as any run.
    #[arg(short = 'i', long = "interactive")]
    interactive: bool,
    /// Run this code (like python -c) instead of a script file.
    #[arg(long, value_name = "CODE")]
    code: Option<String>,
    /// Image build stage (internal): /opt/conda is writable, changes land in DIR/upper.
    #[arg(long, value_name = "DIR", hide = true)]
    conda_layer: Option<PathBuf>,
    /// Pool worker (internal): start the sandbox, say `ready`, run one claim read from
    /// stdin (see the pool module), print its report.
    #[arg(long, hide = true)]
    pool_worker: bool,
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

fn build_policy(mut a: RunArgs) -> Result<RunPolicy> {
    if a.pool_worker {
        if a.code.is_some() || a.script.is_some() || !a.args.is_empty() || !a.no_fs || !a.json {
            bail!("--pool-worker takes no script and needs --no-fs --json");
        }
        a.code = Some(pysandbox::pool::BOOTSTRAP.to_string());
    }
    let mut rest = a.args;
    let script = match (a.code, a.script) {
        (Some(code), first) => {
            if let Some(first) = first {
                rest.insert(0, first);
            }
            Script::Code(code)
        }
        (None, Some(s)) if s == "-" && a.interactive => bail!(
            "-i cannot read the script from stdin (`-`): stdin is the terminal. Hint: save it to a file"
        ),
        (None, Some(s)) if s == "-" => {
            let mut body = Vec::new();
            std::io::stdin()
                .read_to_end(&mut body)
                .context("reading the script from stdin")?;
            Script::Source(body)
        }
        (None, Some(s)) => Script::File(PathBuf::from(s)),
        (None, None) if a.interactive => Script::Repl,
        (None, None) => bail!(
            "no script given. Hint: pysandbox run SCRIPT.py [ARGS...], or --code \"...\", or - to read it from stdin, or -i for a REPL"
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
    p.interactive = a.interactive;
    p.keep = a.keep;
    if let Some(id) = &a.from {
        p.from = Some(pysandbox::runs::path(id)?);
    }
    if a.interactive
        && let Ok(term) = std::env::var("TERM")
    {
        p.env.push(("TERM".into(), term));
    }
    p.conda_layer = a.conda_layer;
    p.network = match a.network.as_deref() {
        None => policy::Network::None,
        Some(m) => policy::Network::parse(m)?,
    };
    p.seccomp_log = a.seccomp_log;
    for r in &a.allow_net {
        p.allow_net
            .rules
            .push(pysandbox::net::allow::AllowRule::parse(r)?);
    }
    p.data = a.data;
    p.output = a.output;
    p.no_fs = a.no_fs;
    p.dev_src = a.dev;
    p.src_writable = a.src_writable;
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
    let worker = a.pool_worker;
    let log_net = a.log_net;
    let keep = a.keep;
    if log_net && a.allow_net.is_empty() {
        bail!("--log-net logs the connections of --allow-net, which was not given");
    }
    let policy = build_policy(a)?;
    if worker {
        return Ok(pysandbox::pool::worker::run_worker(&policy));
    }
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
    if log_net && let Some(net) = &report.network {
        print_net_log(net);
    }
    if keep && pysandbox::runs::path(&report.id).is_ok() {
        eprintln!(
            "pysandbox: kept as {id} (pysandbox inspect {id}; run --from {id} -i; rm {id})",
            id = report.id
        );
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

fn mcp(a: McpArgs) -> Result<i32> {
    let me = std::env::current_exe().context("finding the pysandbox binary")?;
    let mut sandbox = pysandbox::Sandbox::with_helper(me)
        .memory(policy::parse_size(&a.memory)?)
        .pids(a.pids);
    if let Some(img) = &a.image {
        sandbox = sandbox.image(img);
    }
    pysandbox::mcp::serve_stdio(pysandbox::mcp::McpConfig {
        sandbox,
        execute_timeout: policy::parse_duration(&a.timeout)?,
        max_sessions: a.max_sessions,
        idle: policy::parse_duration(&a.session_idle)?,
        lifetime: policy::parse_duration(&a.session_lifetime)?,
    })?;
    Ok(0)
}

fn serve(a: ServeArgs) -> Result<i32> {
    use pysandbox::serve::{Listen, ServeConfig, api::Bounds};
    let mut defaults = policy::Limits {
        timeout: policy::parse_duration(&a.timeout)?,
        memory: policy::parse_size(&a.memory)?,
        pids: a.pids,
        max_output: policy::parse_size(&a.max_output)?,
        ..Default::default()
    };
    let bounds_max_timeout = policy::parse_duration(&a.max_timeout)?;
    let bounds = Bounds {
        max_timeout: bounds_max_timeout,
        max_memory: policy::parse_size(&a.max_memory)?,
        max_pids: a.max_pids,
        defaults: defaults.clone(),
    };
    if defaults.timeout > bounds.max_timeout
        || defaults.memory > bounds.max_memory
        || defaults.pids > bounds.max_pids
    {
        bail!("a default limit (--timeout, --memory, --pids) is above its --max-*");
    }
    if a.pool > 256 || a.max_concurrent == 0 {
        bail!("--pool must be at most 256 and --max-concurrent at least 1");
    }
    // The pool's sandboxes are made for the longest run allowed (RLIMIT_CPU follows it);
    // each claim brings its own wall-clock limit.
    defaults.timeout = bounds.max_timeout;
    let tokens = match &a.token_file {
        None => Vec::new(),
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("reading the token file {}", f.display()))?;
            let t: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
            if t.is_empty() || t.iter().any(|t| t.len() < 16) {
                bail!(
                    "the token file {} must hold tokens of at least 16 characters, one per line",
                    f.display()
                );
            }
            t
        }
    };
    // The workers are this very binary, whatever its name or place.
    let me = std::env::current_exe().context("finding the pysandbox binary")?;
    let mut sandbox = pysandbox::Sandbox::with_helper(me)
        .memory(defaults.memory)
        .pids(defaults.pids)
        .max_output(defaults.max_output)
        .timeout(bounds.defaults.timeout);
    if let Some(img) = &a.image {
        sandbox = sandbox.image(img);
    }
    pysandbox::serve::serve(ServeConfig {
        listen: match a.socket {
            Some(p) => Listen::Unix(p),
            None => Listen::Tcp(a.listen),
        },
        sandbox,
        pool: a.pool,
        bounds,
        max_concurrent: a.max_concurrent,
        max_queue: a.max_queue,
        max_body: policy::parse_size(&a.max_body)? as usize,
        tokens,
        sessions: pysandbox::serve::SessionBounds {
            max_sessions: a.max_sessions,
            idle: policy::parse_duration(&a.session_idle)?,
            lifetime: policy::parse_duration(&a.session_lifetime)?,
            max_execute: bounds_max_timeout,
        },
    })?;
    Ok(0)
}

/// `--log-net`: one line per connection attempt, on stderr.
fn print_net_log(net: &pysandbox::report::NetReport) {
    eprintln!(
        "pysandbox: network: {} connection attempts through the proxy (allowed: {})",
        net.connections.len() as u64 + net.connections_dropped,
        net.allow.join(", ")
    );
    for c in &net.connections {
        let verdict = match (c.allowed, &c.reason) {
            (true, None) => "allowed".to_string(),
            (true, Some(r)) => format!("allowed, failed: {r}"),
            (false, r) => format!("refused: {}", r.as_deref().unwrap_or("?")),
        };
        eprintln!(
            "pysandbox: net {} {}:{} -> {} {verdict} (sent {} B, received {} B)",
            c.protocol,
            c.host,
            c.port,
            c.address.as_deref().unwrap_or("-"),
            c.bytes_sent,
            c.bytes_received
        );
    }
    if net.connections_dropped > 0 {
        eprintln!(
            "pysandbox: net: {} more attempts not listed (log cap)",
            net.connections_dropped
        );
    }
}

fn runs_ps() -> Result<i32> {
    println!(
        "{:<20} {:<28} {:<20} {:<14} {:>10}",
        "ID", "IMAGE", "ENDED (UTC)", "STATUS", "SIZE"
    );
    for r in pysandbox::runs::list()? {
        println!(
            "{:<20} {:<28} {:<20} {:<14} {:>10}",
            r.id,
            r.image,
            utc(r.ended),
            r.status,
            r.bytes
        );
    }
    Ok(0)
}

fn runs_inspect(id: &str) -> Result<i32> {
    for (path, bytes, dir) in pysandbox::runs::contents(id)? {
        if dir {
            println!("{path}/");
        } else {
            println!("{path} ({bytes} B)");
        }
    }
    Ok(0)
}

/// Unix time as `YYYY-MM-DD HH:MM:SS` (UTC).
fn utc(t: u64) -> String {
    let (days, secs) = (t / 86400, t % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
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
            Command::Serve(a) => serve(*a),
            Command::Mcp(a) => mcp(a),
            Command::Image(c) => image::run(c),
            Command::Ps => runs_ps(),
            Command::Inspect { id } => runs_inspect(&id),
            Command::Rm { id } => pysandbox::runs::remove(&id).map(|()| 0).map_err(Into::into),
            Command::Prune => pysandbox::runs::prune()
                .map(|n| {
                    println!("removed {n} kept runs");
                    0
                })
                .map_err(Into::into),
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
