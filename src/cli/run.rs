//! `pysandbox run`: its options, the `RunPolicy` they make, and what is printed after the
//! run (warnings, the JSON report, the network log, why it stopped).

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use pysandbox::policy::{self, ImageRef, RunPolicy, Script, StdinSource};
use pysandbox::report::{EXIT_SANDBOX_ERROR, RunReport, RunStatus};

#[derive(Args)]
pub(super) struct RunArgs {
    /// Image: omit for the default image (built from the host's Python on first use), or a
    /// root file system directory.
    #[arg(long, value_name = "NAME|PATH")]
    image: Option<String>,
    /// Wall-clock limit, e.g. 500ms, 10s, 2m. On expiry: SIGTERM, then SIGKILL after 1s;
    /// exit status 124.
    #[arg(
        long,
        value_name = "DUR",
        default_value_t = policy::format_duration(policy::DEFAULT_TIMEOUT)
    )]
    timeout: String,
    /// Memory limit, e.g. 256M, 1G.
    #[arg(
        long,
        value_name = "SIZE",
        default_value_t = policy::format_size(policy::DEFAULT_MEMORY)
    )]
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
    #[arg(
        long,
        value_name = "SIZE",
        default_value_t = policy::format_size(policy::DEFAULT_OUTPUT_LIMIT)
    )]
    output_limit: String,
    /// Cap on each of stdout and stderr: beyond it the head and the tail are kept and the
    /// middle is dropped (and counted).
    #[arg(
        long,
        value_name = "SIZE",
        default_value_t = policy::format_size(policy::DEFAULT_MAX_OUTPUT)
    )]
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

pub(super) fn run(a: RunArgs) -> Result<i32> {
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
