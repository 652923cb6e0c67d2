//! `pysandbox mcp`: the MCP server's options, handed to `pysandbox::mcp`.

use anyhow::{Context, Result};
use clap::Args;

use pysandbox::policy;

#[derive(Args)]
pub(super) struct McpArgs {
    /// Image of every run (default: the default image).
    #[arg(long, value_name = "NAME|PATH")]
    image: Option<String>,
    /// Timeout of one run_python_code call.
    #[arg(long, value_name = "DUR", default_value = "30s")]
    timeout: String,
    /// Memory limit of each sandbox (a session's whole life).
    #[arg(
        long,
        value_name = "SIZE",
        default_value_t = policy::format_size(policy::DEFAULT_MEMORY)
    )]
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

pub(super) fn mcp(a: McpArgs) -> Result<i32> {
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
