//! `pysandbox serve`: the HTTP server's options, checked and handed to `pysandbox::serve`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use pysandbox::policy;

#[derive(Args)]
pub(super) struct ServeArgs {
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

pub(super) fn serve(a: ServeArgs) -> Result<i32> {
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
