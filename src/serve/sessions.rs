//! Sessions over HTTP: `POST /v1/sessions`, `POST /v1/sessions/{id}/execute`,
//! `POST /v1/sessions/{id}/files`, `GET /v1/sessions/{id}/files/{path}`,
//! `DELETE /v1/sessions/{id}`. A session belongs to the token that made it (others get
//! 404), lives until its idle timeout or its lifetime (both shown as `expires_at`), and
//! answers 410 `session_expired` once gone.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::{File, Refused};
use super::{App, Shared, parse, refused};
use crate::session::{Session, SessionError};

/// Session settings of the server.
#[derive(Debug, Clone)]
pub struct SessionBounds {
    pub max_sessions: usize,
    pub idle: Duration,
    pub lifetime: Duration,
    /// Longest timeout of one execution.
    pub max_execute: Duration,
}

pub struct Entry {
    owner: [u8; 32],
    session: Mutex<Session>,
    created: Instant,
    last_used: Mutex<Instant>,
    idle: Duration,
    lifetime: Duration,
}

impl Entry {
    fn deadline(&self) -> Instant {
        let idle_end = *self.last_used.lock().unwrap() + self.idle;
        idle_end.min(self.created + self.lifetime)
    }

    fn expires_at(&self) -> f64 {
        let left = self.deadline().saturating_duration_since(Instant::now());
        (SystemTime::now() + left)
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| (d.as_millis() as f64) / 1000.0)
    }
}

/// Live sessions and the ids of those gone (for 410, bounded).
#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<String, Arc<Entry>>>,
    gone: Mutex<VecDeque<String>>,
}

const GONE_KEPT: usize = 10_000;

impl Sessions {
    fn bury(&self, id: &str) {
        let mut g = self.gone.lock().unwrap();
        g.push_back(id.to_string());
        while g.len() > GONE_KEPT {
            g.pop_front();
        }
    }

    /// Removes the sessions past their deadline; returns them (to be dropped off the
    /// async threads: dropping one waits for its sandbox to end).
    pub fn expire(&self) -> Vec<Arc<Entry>> {
        let now = Instant::now();
        let mut live = self.live.lock().unwrap();
        let ids: Vec<String> = live
            .iter()
            .filter(|(_, e)| e.deadline() <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let out = ids.iter().filter_map(|id| live.remove(id)).collect();
        drop(live);
        for id in &ids {
            self.bury(id);
        }
        out
    }

    /// Ends every session (server shutdown).
    pub fn clear(&self) -> Vec<Arc<Entry>> {
        self.live.lock().unwrap().drain().map(|(_, e)| e).collect()
    }

    /// The session `id` if `owner` made it: 404 unknown (or someone else's), 410 gone.
    fn get(&self, id: &str, owner: &[u8; 32]) -> Result<Arc<Entry>, Refused> {
        if let Some(e) = self.live.lock().unwrap().get(id)
            && e.owner == *owner
        {
            if e.deadline() <= Instant::now() {
                return Err(expired("it expired"));
            }
            return Ok(e.clone());
        }
        if self.gone.lock().unwrap().iter().any(|g| g == id) {
            return Err(expired("it was deleted or expired"));
        }
        Err(Refused(404, format!("no session {id}")))
    }

    fn end(&self, id: &str) -> Option<Arc<Entry>> {
        let e = self.live.lock().unwrap().remove(id);
        if e.is_some() {
            self.bury(id);
        }
        e
    }
}

fn expired(why: &str) -> Refused {
    Refused(410, format!("session_expired: {why}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSession {
    idle_timeout_s: Option<f64>,
    lifetime_s: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecuteBody {
    code: String,
    timeout_s: Option<f64>,
    globals: Option<serde_json::Map<String, Value>>,
}

fn secs(name: &str, v: Option<f64>, default: Duration, max: Duration) -> Result<Duration, Refused> {
    match v {
        None => Ok(default),
        Some(s) if s > 0.0 && s.is_finite() && Duration::from_secs_f64(s) <= max => {
            Ok(Duration::from_secs_f64(s))
        }
        Some(s) => Err(Refused(
            400,
            format!(
                "{name} {s} is outside (0, {}] seconds (the server's maximum)",
                max.as_secs_f64()
            ),
        )),
    }
}

/// Runs blocking session work off the async threads, under the server's run slots.
async fn blocking<T: Send + 'static>(
    app: &Arc<App>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Refused> {
    let _slot = app.slots.acquire().await;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Refused(500, format!("the session failed: {e}")))
}

fn session_error(sessions: &Sessions, id: &str, e: SessionError) -> Refused {
    match e {
        SessionError::Ended(why) => {
            sessions.end(id);
            expired(&format!("the session ended: {why}"))
        }
        SessionError::Refused(m) => Refused(400, m),
        SessionError::Start(e) => Refused(500, e.to_string()),
    }
}

async fn guarded(
    app: &Arc<App>,
    authorized: bool,
    what: &str,
    f: impl std::future::Future<Output = Result<Response, Refused>>,
) -> Response {
    let t0 = Instant::now();
    let resp = if !authorized {
        refused(Refused(401, super::UNAUTHORIZED.into()))
    } else {
        f.await.unwrap_or_else(refused)
    };
    super::log_line(app, what, resp.status().as_u16(), t0);
    resp
}

pub async fn create(State(app): Shared, h: HeaderMap, body: axum::body::Bytes) -> Response {
    let a = app.clone();
    guarded(&app, app.authorized(&h), "POST /v1/sessions", async move {
        let b = &a.cfg.sessions;
        let req: NewSession = if body.is_empty() {
            NewSession {
                idle_timeout_s: None,
                lifetime_s: None,
            }
        } else {
            parse(&h, &body)?
        };
        let idle = secs("idle_timeout_s", req.idle_timeout_s, b.idle, b.lifetime)?;
        let lifetime = secs("lifetime_s", req.lifetime_s, b.lifetime, b.lifetime)?;
        if a.sessions.live.lock().unwrap().len() >= b.max_sessions {
            return Err(Refused(
                429,
                format!(
                    "the server holds its maximum of {} sessions",
                    b.max_sessions
                ),
            ));
        }
        let sandbox = a.cfg.sandbox.clone();
        let session = blocking(&a, move || Session::open(&sandbox, lifetime))
            .await?
            .map_err(|e| Refused(500, e.to_string()))?;
        let id = crate::sys::random_id("ss-").map_err(|e| Refused(500, e.to_string()))?;
        let now = Instant::now();
        let entry = Arc::new(Entry {
            owner: a.owner(&h),
            session: Mutex::new(session),
            created: now,
            last_used: Mutex::new(now),
            idle,
            lifetime,
        });
        let expires_at = entry.expires_at();
        {
            let mut live = a.sessions.live.lock().unwrap();
            if live.len() >= b.max_sessions {
                drop(live);
                tokio::task::spawn_blocking(move || drop(entry));
                return Err(Refused(
                    429,
                    format!(
                        "the server holds its maximum of {} sessions",
                        b.max_sessions
                    ),
                ));
            }
            live.insert(id.clone(), entry);
        }
        Ok((
            StatusCode::CREATED,
            axum::Json(json!({"id": id, "expires_at": expires_at})),
        )
            .into_response())
    })
    .await
}

pub async fn execute(
    State(app): Shared,
    Path(id): Path<String>,
    h: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let a = app.clone();
    guarded(
        &app,
        app.authorized(&h),
        "POST /v1/sessions/ID/execute",
        async move {
            let e = a.sessions.get(&id, &a.owner(&h))?;
            let req: ExecuteBody = parse(&h, &body)?;
            let timeout = secs(
                "timeout_s",
                req.timeout_s,
                Duration::from_secs(30),
                a.cfg.sessions.max_execute,
            )?;
            let entry = e.clone();
            let result = blocking(&a, move || {
                let mut s = entry.session.lock().unwrap();
                let r = s.execute_with(&req.code, timeout, req.globals.as_ref());
                *entry.last_used.lock().unwrap() = Instant::now();
                r
            })
            .await?;
            let ex = result.map_err(|err| session_error(&a.sessions, &id, err))?;
            let mut v = serde_json::to_value(ex).map_err(|e| Refused(500, e.to_string()))?;
            v["expires_at"] = json!(e.expires_at());
            Ok(axum::Json(v).into_response())
        },
    )
    .await
}

pub async fn put_file(
    State(app): Shared,
    Path(id): Path<String>,
    h: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Put {
        path: String,
        #[serde(flatten)]
        file: FileBody,
    }
    #[derive(Deserialize)]
    struct FileBody {
        content: String,
        encoding: Option<String>,
    }
    let a = app.clone();
    guarded(
        &app,
        app.authorized(&h),
        "POST /v1/sessions/ID/files",
        async move {
            let e = a.sessions.get(&id, &a.owner(&h))?;
            let p: Put = parse(&h, &body)?;
            let data = File {
                name: Some(p.path.clone()),
                content: p.file.content,
                encoding: p.file.encoding,
            }
            .decoded()?;
            let r = blocking(&a, move || {
                e.session.lock().unwrap().put_file(&p.path, &data)
            })
            .await?;
            r.map_err(|err| session_error(&a.sessions, &id, err))?;
            Ok(axum::Json(json!({"ok": true})).into_response())
        },
    )
    .await
}

pub async fn get_file(
    State(app): Shared,
    Path((id, path)): Path<(String, String)>,
    h: HeaderMap,
) -> Response {
    let a = app.clone();
    guarded(
        &app,
        app.authorized(&h),
        "GET /v1/sessions/ID/files",
        async move {
            let e = a.sessions.get(&id, &a.owner(&h))?;
            let r = blocking(&a, move || e.session.lock().unwrap().get_file(&path)).await?;
            let data = r.map_err(|err| match err {
                SessionError::Refused(m) => Refused(404, m),
                other => session_error(&a.sessions, &id, other),
            })?;
            Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
        },
    )
    .await
}

pub async fn delete(State(app): Shared, Path(id): Path<String>, h: HeaderMap) -> Response {
    let a = app.clone();
    guarded(
        &app,
        app.authorized(&h),
        "DELETE /v1/sessions/ID",
        async move {
            a.sessions.get(&id, &a.owner(&h))?;
            if let Some(e) = a.sessions.end(&id) {
                tokio::task::spawn_blocking(move || drop(e));
            }
            Ok(StatusCode::NO_CONTENT.into_response())
        },
    )
    .await
}
