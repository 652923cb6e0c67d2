//! `pysandbox serve`: an authenticated HTTP API over a warm pool.
//!
//! Soundness with threads: the server is a multi-threaded tokio program, and it never
//! creates a sandbox. Runs go through [`Pool`] (and, for limits other than the pool's,
//! through one-off workers): each sandbox is created by a single-threaded `pysandbox run
//! --pool-worker` process spawned with fork + exec. Pool calls block, so they run on
//! tokio's blocking threads.

pub mod api;
mod metrics;
mod sessions;

pub use sessions::SessionBounds;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;

use crate::pool::{Pool, PoolConfig, WhenEmpty};
use crate::report::RunReport;
use crate::sandbox::{RunRequest, Sandbox};
use api::{Bounds, Checked, PistonBody, Refused, RunBody};

/// Where the server listens.
#[derive(Debug, Clone)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// `pysandbox serve`'s settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: Listen,
    pub sandbox: Sandbox,
    pub pool: usize,
    pub bounds: Bounds,
    pub max_concurrent: usize,
    /// Requests allowed to wait for a slot beyond `max_concurrent`.
    pub max_queue: usize,
    pub max_body: usize,
    /// Accepted tokens (empty: no authentication, loopback or unix socket only).
    pub tokens: Vec<String>,
    pub sessions: SessionBounds,
}

pub(crate) struct App {
    cfg: ServeConfig,
    pool: Pool,
    /// The image's Python version (`3.11.2`), asked of the interpreter at start.
    version: String,
    slots: tokio::sync::Semaphore,
    waiting: AtomicUsize,
    next_id: AtomicU64,
    metrics: metrics::Metrics,
    sessions: sessions::Sessions,
}

fn json_error(code: u16, message: impl Into<String>) -> Response {
    #[derive(Serialize)]
    struct E {
        message: String,
    }
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        axum::Json(E {
            message: message.into(),
        }),
    )
        .into_response()
}

impl App {
    /// Who is asking, for session ownership: a hash of the token given.
    fn owner(&self, h: &HeaderMap) -> [u8; 32] {
        sha2_of(given_token(h).trim())
    }

    /// Checks the token (Authorization: Bearer, or X-API-Key) in constant time.
    fn authorized(&self, h: &HeaderMap) -> bool {
        if self.cfg.tokens.is_empty() {
            return true;
        }
        let given = sha2_of(given_token(h).trim());
        let mut ok = subtle::Choice::from(0);
        for t in &self.cfg.tokens {
            ok |= subtle::ConstantTimeEq::ct_eq(&given[..], &sha2_of(t)[..]);
        }
        ok.into()
    }

    /// Runs a checked request: on the pool when its limits are the pool's, else in a
    /// sandbox started for it. Waits for a slot (bounded queue).
    async fn execute(self: &Arc<Self>, c: Checked) -> Result<RunReport, Refused> {
        if self.waiting.fetch_add(1, Ordering::SeqCst)
            >= self.cfg.max_concurrent + self.cfg.max_queue
        {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(Refused(503, "the server is busy; retry later".into()));
        }
        let permit = self.slots.acquire().await;
        let app = self.clone();
        let result = tokio::task::spawn_blocking(move || {
            let d = &app.cfg.bounds.defaults;
            if c.memory == d.memory && c.pids == d.pids {
                app.pool.run(&c.req)
            } else {
                let sb = app.cfg.sandbox.clone().memory(c.memory).pids(c.pids);
                crate::sandbox::run_once(&sb, &c.req).map(|mut r| {
                    r.pool = Some(crate::report::PoolRun {
                        warm: false,
                        waited_ms: 0,
                    });
                    r
                })
            }
        })
        .await;
        drop(permit);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        match result {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(Refused(500, e.to_string())),
            Err(e) => Err(Refused(500, format!("the run failed: {e}"))),
        }
    }
}

/// The token of a request: `Authorization: Bearer TOKEN`, the bare token in
/// `Authorization` (as Piston's public API took it), or `X-API-Key`.
fn given_token(h: &HeaderMap) -> &str {
    h.get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.strip_prefix("Bearer ").unwrap_or(v))
        .or_else(|| h.get("x-api-key").and_then(|v| v.to_str().ok()))
        .unwrap_or("")
}

fn sha2_of(s: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes()).into()
}

/// Parses a JSON body into `T`, answering like the rest of the API (`{message}`): 415
/// without a JSON content type, 400 naming the field that is wrong or unknown.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(
    h: &HeaderMap,
    body: &Bytes,
) -> Result<T, Refused> {
    let ct = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case("application/json")
    {
        return Err(Refused(
            415,
            "the body must be JSON (Content-Type: application/json)".into(),
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let at = e.path().to_string();
        let inner = e.into_inner();
        if at.is_empty() || at == "." {
            Refused(400, format!("bad request body: {inner}"))
        } else {
            Refused(400, format!("bad request body: {at}: {inner}"))
        }
    })
}

pub(crate) type Shared = State<Arc<App>>;

/// One line per request on stderr: id, endpoint, status, milliseconds (never the code or
/// its output).
pub(crate) fn log_line(app: &App, what: &str, status: u16, t0: Instant) {
    let id = app.next_id.fetch_add(1, Ordering::Relaxed);
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    eprintln!("pysandbox serve: req={id} {what} status={status} ms={ms:.1}");
    app.metrics.request(status, t0.elapsed());
}

/// A run endpoint: token, body (`check` turns it into a run), run, answer (`respond`),
/// log line.
async fn run_endpoint(
    app: Arc<App>,
    h: HeaderMap,
    body: Bytes,
    what: &str,
    check: impl FnOnce(&App, &HeaderMap, &Bytes) -> Result<Checked, Refused>,
    respond: impl FnOnce(&App, RunReport) -> Response,
) -> Response {
    let t0 = Instant::now();
    let result = async {
        if !app.authorized(&h) {
            return Err(Refused(401, UNAUTHORIZED.into()));
        }
        let checked = check(&app, &h, &body)?;
        app.execute(checked).await
    }
    .await;
    let resp = match result {
        Ok(r) => {
            app.metrics.run(&r);
            respond(&app, r)
        }
        Err(r) => refused(r),
    };
    log_line(&app, what, resp.status().as_u16(), t0);
    resp
}

pub(crate) const UNAUTHORIZED: &str =
    "missing or wrong token (Authorization: Bearer TOKEN, or X-API-Key)";

async fn v1_run(State(app): Shared, h: HeaderMap, body: Bytes) -> Response {
    run_endpoint(
        app,
        h,
        body,
        "POST /v1/run",
        |app, h, body| parse::<RunBody>(h, body)?.check(&app.cfg.bounds),
        |_, r| axum::Json(r).into_response(),
    )
    .await
}

pub(crate) fn refused(r: Refused) -> Response {
    let mut resp = json_error(r.0, r.1);
    if r.0 == 503 {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

async fn piston_execute(State(app): Shared, h: HeaderMap, body: Bytes) -> Response {
    run_endpoint(
        app,
        h,
        body,
        "POST /api/v2/execute",
        |app, h, body| parse::<PistonBody>(h, body)?.check(&app.cfg.bounds, &app.version),
        |app, r| axum::Json(api::piston_response(r, &app.version)).into_response(),
    )
    .await
}

async fn piston_runtimes(State(app): Shared, h: HeaderMap) -> Response {
    if !app.authorized(&h) {
        return json_error(401, UNAUTHORIZED);
    }
    axum::Json(serde_json::json!([{
        "language": "python",
        "version": app.version,
        "aliases": &api::ALIASES[1..],
        "runtime": "pysandbox",
    }]))
    .into_response()
}

async fn health(State(app): Shared) -> Response {
    let s = app.pool.stats();
    axum::Json(serde_json::json!({
        "status": "ok",
        "python": app.version,
        "pool": {"size": app.cfg.pool, "idle": s.idle, "starting": s.starting,
                 "last_error": app.pool.last_error()},
    }))
    .into_response()
}

async fn metrics_text(State(app): Shared, h: HeaderMap) -> Response {
    if !app.authorized(&h) {
        return json_error(401, UNAUTHORIZED);
    }
    let body = app.metrics.render(&app.pool.stats(), app.cfg.pool);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn not_found() -> Response {
    json_error(404, "no such endpoint")
}

/// Asks the image's interpreter for its version (one run, which also proves the
/// configuration works before the server listens).
fn python_version(sandbox: &Sandbox) -> Result<String, String> {
    let r = sandbox
        .run(&RunRequest::code(
            "import sys; print('.'.join(map(str, sys.version_info[:3])))",
        ))
        .map_err(|e| e.to_string())?;
    if r.status != crate::report::RunStatus::Ok {
        return Err(r.error.unwrap_or_else(|| {
            format!(
                "a first run ended with {:?}: {}",
                r.status,
                r.stderr.text.trim()
            )
        }));
    }
    Ok(r.stdout.text.trim().to_string())
}

/// Runs the server until SIGTERM or SIGINT: then stops accepting, lets in-flight runs
/// finish, destroys the pool and returns.
pub fn serve(cfg: ServeConfig) -> anyhow::Result<()> {
    if let Listen::Tcp(a) = &cfg.listen
        && !a.ip().is_loopback()
        && cfg.tokens.is_empty()
    {
        anyhow::bail!(
            "refusing to listen on {a} without a token: anyone who can reach it could run code. Hint: --token-file FILE, or listen on 127.0.0.1 / a --socket"
        );
    }
    let version =
        python_version(&cfg.sandbox).map_err(|e| anyhow::anyhow!("the image does not run: {e}"))?;
    let pool = Pool::new(
        cfg.sandbox.clone(),
        PoolConfig {
            size: cfg.pool,
            max_idle: Duration::from_secs(600),
            when_empty: WhenEmpty::Cold,
        },
    );
    let app = Arc::new(App {
        slots: tokio::sync::Semaphore::new(cfg.max_concurrent),
        waiting: AtomicUsize::new(0),
        next_id: AtomicU64::new(1),
        metrics: metrics::Metrics::default(),
        sessions: sessions::Sessions::default(),
        version,
        pool,
        cfg,
    });
    let router = Router::new()
        .route("/v1/run", post(v1_run))
        .route("/api/v2/execute", post(piston_execute))
        .route("/api/v2/runtimes", get(piston_runtimes))
        // Piston clients that join a base URL ending in `/` with `execute/`.
        .route("/api/v2/execute/", post(piston_execute))
        .route("/api/v2/runtimes/", get(piston_runtimes))
        .route("/v1/sessions", post(sessions::create))
        .route("/v1/sessions/{id}", axum::routing::delete(sessions::delete))
        .route("/v1/sessions/{id}/execute", post(sessions::execute))
        .route("/v1/sessions/{id}/files", post(sessions::put_file))
        .route("/v1/sessions/{id}/files/{*path}", get(sessions::get_file))
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(app.cfg.max_body))
        .with_state(app.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        // Sessions past their idle timeout or lifetime are ended every second.
        let reaper = app.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let gone = reaper.sessions.expire();
                if !gone.is_empty() {
                    tokio::task::spawn_blocking(move || drop(gone));
                }
            }
        });
        let stop = async {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            eprintln!("pysandbox serve: stopping: finishing in-flight runs");
        };
        match &app.cfg.listen {
            Listen::Tcp(a) => {
                let l = tokio::net::TcpListener::bind(a)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {a}: {e}"))?;
                eprintln!("pysandbox serve: listening on http://{}", l.local_addr()?);
                axum::serve(l, router).with_graceful_shutdown(stop).await?;
            }
            Listen::Unix(p) => {
                let _ = std::fs::remove_file(p);
                let l = tokio::net::UnixListener::bind(p)
                    .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", p.display()))?;
                std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
                eprintln!("pysandbox serve: listening on unix:{}", p.display());
                axum::serve(l, router).with_graceful_shutdown(stop).await?;
                let _ = std::fs::remove_file(p);
            }
        }
        anyhow::Ok(())
    })?;
    drop(rt);
    // Every handler is done: the pool and the sessions are ours alone now. Dropping
    // them ends their sandboxes.
    drop(app.sessions.clear());
    drop(app);
    eprintln!("pysandbox serve: stopped");
    Ok(())
}
