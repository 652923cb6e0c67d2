//! The command line: parses arguments with clap, builds a `RunPolicy`, calls the library,
//! and maps the report to an exit status. No isolation logic lives here.
//!
//! One file per subcommand (`run`, `serve`, `mcp`, `image`, `runs` for ps and inspect,
//! `setup`); this one holds the top-level parser, logging and the dispatch.

mod image;
mod mcp;
mod run;
mod runs;
mod serve;
mod setup;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use pysandbox::report::EXIT_SANDBOX_ERROR;

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
    Run(Box<run::RunArgs>),
    /// Check what this host gives pysandbox, with a fix for each problem.
    Doctor,
    /// Serve runs over HTTP from a warm pool: pysandbox's API and Piston's.
    Serve(Box<serve::ServeArgs>),
    /// A Model Context Protocol server on stdio: run_python_code, open_session, close_session.
    Mcp(mcp::McpArgs),
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
    Setup(setup::SetupCommand),
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
            Command::Run(a) => run::run(*a),
            Command::Doctor => Ok(doctor()),
            Command::Serve(a) => serve::serve(*a),
            Command::Mcp(a) => mcp::mcp(a),
            Command::Image(c) => image::run(c),
            Command::Ps => runs::ps(),
            Command::Inspect { id } => runs::inspect(&id),
            Command::Rm { id } => pysandbox::runs::remove(&id).map(|()| 0).map_err(Into::into),
            Command::Prune => pysandbox::runs::prune()
                .map(|n| {
                    println!("removed {n} kept runs");
                    0
                })
                .map_err(Into::into),
            Command::Setup(c) => setup::setup(c),
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
