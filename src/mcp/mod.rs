//! `pysandbox mcp`: a Model Context Protocol server on stdio (the official Rust SDK,
//! rmcp). Tools: `run_python_code {python_code, global_variables?, session_id?}` (the
//! names pydantic's mcp-run-python uses, so users can swap), `open_session` and
//! `close_session`. Without a session each call runs in a fresh sandbox; with one, the
//! session's globals persist. stdout, stderr, the last expression's value and an error
//! come back as text, PNG results (matplotlib figures) as image content.
//!
//! Like `serve`, the server never creates a sandbox in its own (threaded) process: each
//! session is a single-threaded `pysandbox run` process (see `session/`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, ServerCapabilities, ServerConfig};
use rmcp::{
    ErrorData as McpError, ServerHandler, ServiceExt, schemars, tool, tool_handler, tool_router,
};
use serde::Deserialize;

use crate::sandbox::Sandbox;
use crate::session::{Execution, Session, SessionError};

/// Settings of `pysandbox mcp`.
#[derive(Debug, Clone)]
pub struct McpConfig {
    pub sandbox: Sandbox,
    /// Timeout of one execution.
    pub execute_timeout: Duration,
    pub max_sessions: usize,
    /// A session idle this long is ended.
    pub idle: Duration,
    pub lifetime: Duration,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RunParams {
    /// Python code to run. The value of a final expression is returned as the result.
    pub python_code: String,
    /// Variables (JSON values) set as globals before the code runs.
    #[serde(default)]
    pub global_variables: Option<serde_json::Map<String, serde_json::Value>>,
    /// A session from open_session: its globals persist between calls.
    #[serde(default)]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct CloseParams {
    /// The session to end.
    pub session_id: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct OpenParams {}

struct Live {
    session: Mutex<Session>,
    last_used: Mutex<Instant>,
    created: Instant,
}

#[derive(Clone)]
pub struct PySandboxMcp {
    cfg: Arc<McpConfig>,
    sessions: Arc<Mutex<HashMap<String, Arc<Live>>>>,
    tool_router: ToolRouter<Self>,
}

fn internal(msg: impl Into<String>) -> McpError {
    McpError::internal_error(msg.into(), None)
}

/// The answer of one execution: text (stdout, stderr, result, error) and PNG images.
fn answer(e: Execution) -> CallToolResult {
    let mut text = String::new();
    let mut images = Vec::new();
    let out = e.logs.stdout.concat();
    let err = e.logs.stderr.concat();
    if !out.is_empty() {
        text.push_str(&format!("stdout:\n{out}"));
        if !out.ends_with('\n') {
            text.push('\n');
        }
    }
    if !err.is_empty() {
        text.push_str(&format!("stderr:\n{err}"));
        if !err.ends_with('\n') {
            text.push('\n');
        }
    }
    for r in &e.results {
        if let Some(png) = r.get("png").and_then(|v| v.as_str()) {
            images.push(ContentBlock::image(png, "image/png"));
        }
        if r.get("is_main_result").and_then(|v| v.as_bool()) == Some(true)
            && let Some(t) = r.get("text").and_then(|v| v.as_str())
        {
            text.push_str(&format!("result:\n{t}\n"));
        }
    }
    let failed = e.error.is_some();
    if let Some(x) = &e.error {
        text.push_str(&format!("error: {}: {}\n{}", x.name, x.value, x.traceback));
    }
    if text.is_empty() {
        text.push_str("(no output)\n");
    }
    let mut content = vec![ContentBlock::text(text)];
    content.extend(images);
    if failed {
        CallToolResult::error(content)
    } else {
        CallToolResult::success(content)
    }
}

fn session_failure(e: SessionError) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(e.to_string())])
}

#[tool_router]
impl PySandboxMcp {
    pub fn new(cfg: McpConfig) -> Self {
        PySandboxMcp {
            cfg: Arc::new(cfg),
            sessions: Arc::default(),
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        description = "Run Python code in an isolated sandbox (no network, no host files, limited memory and time) and return stdout, stderr, the value of the last expression, any error, and matplotlib figures as PNG images. Pass session_id (from open_session) to keep variables between calls."
    )]
    async fn run_python_code(
        &self,
        Parameters(p): Parameters<RunParams>,
    ) -> Result<CallToolResult, McpError> {
        let timeout = self.cfg.execute_timeout;
        match p.session_id {
            Some(id) => {
                let live = self.sessions.lock().unwrap().get(&id).cloned();
                let Some(live) = live else {
                    return Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                        "no session {id}: it was closed, expired, or never opened (open_session starts one)"
                    ))]));
                };
                let sessions = self.sessions.clone();
                tokio::task::spawn_blocking(move || {
                    let r = live.session.lock().unwrap().execute_with(
                        &p.python_code,
                        timeout,
                        p.global_variables.as_ref(),
                    );
                    *live.last_used.lock().unwrap() = Instant::now();
                    match r {
                        Ok(e) => answer(e),
                        Err(e) => {
                            if matches!(e, SessionError::Ended(_)) {
                                sessions.lock().unwrap().remove(&id);
                            }
                            session_failure(e)
                        }
                    }
                })
                .await
                .map_err(|e| internal(e.to_string()))
            }
            None => {
                let sandbox = self.cfg.sandbox.clone();
                tokio::task::spawn_blocking(move || {
                    let mut s = match Session::open(&sandbox, timeout + Duration::from_secs(30)) {
                        Ok(s) => s,
                        Err(e) => return session_failure(e),
                    };
                    match s.execute_with(&p.python_code, timeout, p.global_variables.as_ref()) {
                        Ok(e) => answer(e),
                        Err(e) => session_failure(e),
                    }
                })
                .await
                .map_err(|e| internal(e.to_string()))
            }
        }
    }

    #[tool(
        description = "Open a Python session: an isolated sandbox whose variables persist between run_python_code calls that pass its session_id. Returns the session_id."
    )]
    async fn open_session(
        &self,
        Parameters(_p): Parameters<OpenParams>,
    ) -> Result<CallToolResult, McpError> {
        if self.sessions.lock().unwrap().len() >= self.cfg.max_sessions {
            return Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                "at most {} sessions may be open; close one first",
                self.cfg.max_sessions
            ))]));
        }
        let sandbox = self.cfg.sandbox.clone();
        let lifetime = self.cfg.lifetime;
        let opened = tokio::task::spawn_blocking(move || Session::open(&sandbox, lifetime))
            .await
            .map_err(|e| internal(e.to_string()))?;
        let session = match opened {
            Ok(s) => s,
            Err(e) => return Ok(session_failure(e)),
        };
        let id = crate::sys::random_id("ss-").map_err(|e| internal(e.to_string()))?;
        let now = Instant::now();
        self.sessions.lock().unwrap().insert(
            id.clone(),
            Arc::new(Live {
                session: Mutex::new(session),
                last_used: Mutex::new(now),
                created: now,
            }),
        );
        Ok(CallToolResult::success(vec![ContentBlock::text(id)]))
    }

    #[tool(description = "Close a Python session and destroy its sandbox.")]
    async fn close_session(
        &self,
        Parameters(p): Parameters<CloseParams>,
    ) -> Result<CallToolResult, McpError> {
        let gone = self.sessions.lock().unwrap().remove(&p.session_id);
        match gone {
            Some(live) => {
                tokio::task::spawn_blocking(move || drop(live));
                Ok(CallToolResult::success(vec![ContentBlock::text(format!(
                    "closed {}",
                    p.session_id
                ))]))
            }
            None => Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                "no session {}",
                p.session_id
            ))])),
        }
    }

    /// Ends sessions idle past the idle timeout or past their lifetime.
    fn expire(&self) {
        let now = Instant::now();
        let gone: Vec<Arc<Live>> = {
            let mut m = self.sessions.lock().unwrap();
            let ids: Vec<String> = m
                .iter()
                .filter(|(_, l)| {
                    now - *l.last_used.lock().unwrap() > self.cfg.idle
                        || now - l.created > self.cfg.lifetime
                })
                .map(|(k, _)| k.clone())
                .collect();
            ids.iter().filter_map(|id| m.remove(id)).collect()
        };
        drop(gone);
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for PySandboxMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_instructions(
                "Runs Python in disposable, isolated sandboxes (pysandbox). Use run_python_code; open_session for state that persists between calls.",
            )
    }
}

/// Serves MCP on stdin/stdout until the client closes it; then ends every session.
pub fn serve_stdio(cfg: McpConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let server = PySandboxMcp::new(cfg);
    rt.block_on(async {
        let reaper = server.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let r = reaper.clone();
                let _ = tokio::task::spawn_blocking(move || r.expire()).await;
            }
        });
        let running = server
            .clone()
            .serve(rmcp::transport::stdio())
            .await
            .map_err(|e| anyhow::anyhow!("starting the MCP server: {e}"))?;
        running.waiting().await?;
        anyhow::Ok(())
    })?;
    let all: Vec<Arc<Live>> = server
        .sessions
        .lock()
        .unwrap()
        .drain()
        .map(|(_, l)| l)
        .collect();
    drop(all);
    drop(rt);
    Ok(())
}
