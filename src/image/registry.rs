//! Pulling images over the OCI distribution API into the store. Owns reference parsing
//! (Docker's rules: `python:3.11` is `docker.io/library/python:3.11`), the registry
//! client (the `/v2/` ping, anonymous Bearer tokens for public registries, HTTPS except
//! for loopback registries or `insecure`), the choice of a platform in an image index,
//! and the checks on what a registry sends: manifests and configs are capped at 4 MiB,
//! every manifest and blob is verified against its digest (and size) while it streams
//! into the store, so a tampered or truncated download never lands there.

use std::net::IpAddr;
use std::time::Duration;

use oci_spec::image::Descriptor;

use super::store::ProgressReader;
use super::store::{self, DocKind, MAX_JSON, Progress, Store, StoreError};

pub use super::reference::{Reference, canonical_name, parse_reference};

/// Whether `registry` (host[:port]) is this machine: then plain HTTP is allowed.
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(registry)
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Pulls `reference` into the store and tags it with `reference` as given; returns the
/// manifest digest. For an image index, the linux manifest of this machine's
/// architecture is pulled. HTTP is used only for a loopback registry or with `insecure`.
pub fn pull(
    store: &Store,
    reference: &str,
    insecure: bool,
    progress: &dyn Progress,
) -> Result<String, StoreError> {
    let fail = |why: String| StoreError::Pull {
        reference: reference.to_string(),
        why,
    };
    let r = parse_reference(reference).map_err(fail)?;
    let mut c = Client::new(reference, &r, insecure);
    c.ping()?;
    // Writers hold the gc lock shared: prune cannot remove blobs before they are tagged.
    let _gc = store.write_guard()?;
    let (mut raw, mut digest) = c.manifest(r.target(), None)?;
    if store::doc_kind(&raw, &digest)? == DocKind::Index {
        let idx = store::parse_index(&raw, &digest)?;
        let d = store::pick_platform(&idx, &digest)?;
        let d_digest = d.digest().to_string();
        let (raw2, digest2) = c.manifest(&d_digest, Some(d.size()))?;
        if store::doc_kind(&raw2, &digest2)? != DocKind::Manifest {
            return Err(fail(format!(
                "the index entry {digest2} for this platform is not an image manifest"
            )));
        }
        // Kept, so that the index digest a user may pin by resolves offline later.
        store.put_bytes(&raw)?;
        (raw, digest) = (raw2, digest2);
    }
    let m = store::parse_manifest(&raw, &digest)?;
    for l in m.layers() {
        store::check_layer_type(l)?;
    }
    if m.config().size() > MAX_JSON {
        return Err(fail(format!(
            "the image config is {} bytes (more than {MAX_JSON})",
            m.config().size()
        )));
    }
    let mut wanted: Vec<&Descriptor> = vec![m.config()];
    wanted.extend(m.layers());
    for d in wanted {
        let dd = d.digest().to_string();
        store::digest_hex(&dd)?;
        let have = store
            .blob_path(&dd)
            .ok()
            .and_then(|p| std::fs::metadata(p).ok())
            .is_some_and(|md| md.len() == d.size());
        if !have {
            c.blob(store, &dd, d.size(), progress)?;
        }
    }
    store.put_bytes(&raw)?;
    store.tag(reference, &digest)?;
    Ok(digest)
}

struct Client {
    agent: ureq::Agent,
    base: String,
    repo: String,
    shown: String,
    token: Option<String>,
    insecure_ok: bool,
}

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

impl Client {
    fn new(shown: &str, r: &Reference, insecure: bool) -> Client {
        let local = is_loopback(&r.registry);
        let plain = insecure || local;
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(120)))
            .user_agent(concat!("pysandbox/", env!("CARGO_PKG_VERSION")))
            .max_redirects(10);
        if local {
            // This machine: never through an HTTP(S)_PROXY from the environment.
            config = config.proxy(None);
        }
        let config = config.build();
        Client {
            agent: config.into(),
            base: format!(
                "{}://{}",
                if plain { "http" } else { "https" },
                r.api_host()
            ),
            repo: r.repository.clone(),
            shown: shown.to_string(),
            token: None,
            insecure_ok: plain,
        }
    }

    fn fail(&self, why: impl Into<String>) -> StoreError {
        StoreError::Pull {
            reference: self.shown.clone(),
            why: why.into(),
        }
    }

    fn send(
        &self,
        url: &str,
        accept: Option<&str>,
    ) -> Result<ureq::http::Response<ureq::Body>, StoreError> {
        let mut req = self.agent.get(url);
        if let Some(a) = accept {
            req = req.header("Accept", a);
        }
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        req.call().map_err(|e| {
            self.fail(format!(
                "cannot reach {url}: {e}. Hint: check the registry name and the network{}",
                if self.base.starts_with("https") {
                    "; a registry without TLS on another host needs --insecure"
                } else {
                    ""
                }
            ))
        })
    }

    /// GET, fetching an anonymous token once if the registry asks for one.
    fn get(
        &mut self,
        path: &str,
        accept: Option<&str>,
    ) -> Result<ureq::http::Response<ureq::Body>, StoreError> {
        let url = format!("{}{}", self.base, path);
        let resp = self.send(&url, accept)?;
        if resp.status().as_u16() == 401 && self.token.is_none() {
            let challenge = header(&resp, "www-authenticate");
            self.authenticate(&challenge)?;
            return self.send(&url, accept);
        }
        Ok(resp)
    }

    /// `GET /v2/`: the registry speaks the distribution API (and may want a token).
    fn ping(&mut self) -> Result<(), StoreError> {
        let url = format!("{}/v2/", self.base);
        let resp = self.send(&url, None)?;
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            401 => {
                let challenge = header(&resp, "www-authenticate");
                self.authenticate(&challenge)
            }
            s => Err(self.fail(format!(
                "{url} answered HTTP {s}: not an OCI/Docker registry (no /v2/ API)"
            ))),
        }
    }

    /// Anonymous Bearer token for pulling from this repository.
    fn authenticate(&mut self, challenge: &str) -> Result<(), StoreError> {
        let Some(params) = challenge
            .strip_prefix("Bearer ")
            .or_else(|| challenge.strip_prefix("bearer "))
        else {
            return Err(self.fail(format!(
                "the registry requires authentication ({challenge:?}); pysandbox pulls public images only (anonymous Bearer tokens)"
            )));
        };
        let params = parse_challenge(params);
        let get = |k: &str| {
            params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str())
        };
        let Some(realm) = get("realm") else {
            return Err(self.fail("the registry's Bearer challenge has no realm"));
        };
        let https = realm.starts_with("https://");
        if !(https || self.insecure_ok && realm.starts_with("http://")) {
            return Err(self.fail(format!("refusing the token service {realm:?}: not HTTPS")));
        }
        let scope = format!("repository:{}:pull", self.repo);
        let mut url = format!("{realm}?scope={}", url_encode(&scope));
        if let Some(s) = get("service") {
            url.push_str(&format!("&service={}", url_encode(s)));
        }
        let resp = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| self.fail(format!("cannot reach the token service {realm}: {e}")))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(self.fail(format!(
                "the token service {realm} answered HTTP {status}: the image may be private (pysandbox pulls public images only) or the name is wrong"
            )));
        }
        let body = resp
            .into_body()
            .with_config()
            .limit(MAX_JSON)
            .read_to_vec()
            .map_err(|e| self.fail(format!("reading the token: {e}")))?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| self.fail(format!("the token service sent invalid JSON: {e}")))?;
        let token = v
            .get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .ok_or_else(|| self.fail("the token service sent no token"))?;
        self.token = Some(token.to_string());
        Ok(())
    }

    /// A manifest or index by tag or digest: (raw bytes, digest). Verified against
    /// `target` when it is a digest, and against `size` when given.
    fn manifest(
        &mut self,
        target: &str,
        size: Option<u64>,
    ) -> Result<(Vec<u8>, String), StoreError> {
        let path = format!("/v2/{}/manifests/{target}", self.repo);
        let resp = self.get(&path, Some(ACCEPT))?;
        let status = resp.status().as_u16();
        match status {
            200 => {}
            404 => {
                return Err(self.fail(format!(
                    "manifest unknown: {}/{} has no {target:?} (HTTP 404). Hint: check the repository name and the tag",
                    self.base, self.repo
                )));
            }
            401 | 403 => {
                return Err(self.fail(format!(
                    "access denied (HTTP {status}): the image is private or does not exist; pysandbox pulls public images only"
                )));
            }
            s => {
                let detail = error_detail(resp);
                return Err(self.fail(format!("fetching the manifest: HTTP {s}{detail}")));
            }
        }
        let content_type = header(&resp, "content-type");
        let raw = resp
            .into_body()
            .with_config()
            .limit(MAX_JSON)
            .read_to_vec()
            .map_err(|e| {
                self.fail(format!(
                    "reading the manifest (capped at {MAX_JSON} bytes): {e}"
                ))
            })?;
        let digest = store::sha256_digest(&raw);
        if target.starts_with("sha256:") && digest != target {
            return Err(self.fail(format!(
                "the registry sent a manifest hashing to {digest} for {target}: tampered or corrupt"
            )));
        }
        if let Some(s) = size
            && raw.len() as u64 != s
        {
            return Err(self.fail(format!(
                "manifest {target} is {} bytes where the index says {s}",
                raw.len()
            )));
        }
        // Schema 1 is refused here by its content type (and by `doc_kind` by its body).
        if content_type.contains("prettyjws") {
            return Err(StoreError::Unsupported(format!(
                "{} serves a Docker schema 1 manifest, which pysandbox does not support",
                self.shown
            )));
        }
        Ok((raw, digest))
    }

    /// Streams a blob into the store, verifying its digest and size on the way.
    fn blob(
        &mut self,
        store: &Store,
        digest: &str,
        size: u64,
        progress: &dyn Progress,
    ) -> Result<(), StoreError> {
        let path = format!("/v2/{}/blobs/{digest}", self.repo);
        let resp = self.get(&path, None)?;
        let status = resp.status().as_u16();
        if status != 200 {
            let detail = error_detail(resp);
            return Err(self.fail(format!("fetching blob {digest}: HTTP {status}{detail}")));
        }
        let short = &digest[..digest.len().min(19)];
        progress.start(&format!("pulling {short}"), Some(size));
        let mut r = ProgressReader {
            inner: resp.into_body().into_reader(),
            progress,
        };
        let res = store.put_blob(&mut r, Some((digest, size)));
        progress.finish();
        res.map_err(|e| match e {
            StoreError::Mismatch { .. } => self.fail(format!("{e}")),
            other => other,
        })?;
        Ok(())
    }
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// The registry's error message, if it sent one (`{"errors":[{"code","message"}]}`).
fn error_detail(resp: ureq::http::Response<ureq::Body>) -> String {
    let Ok(body) = resp.into_body().with_config().limit(64 << 10).read_to_vec() else {
        return String::new();
    };
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    match v.pointer("/errors/0") {
        Some(e) => format!(
            " ({}: {})",
            e.get("code").and_then(|c| c.as_str()).unwrap_or("?"),
            e.get("message").and_then(|c| c.as_str()).unwrap_or("")
        ),
        None => String::new(),
    }
}

/// `realm="...",service="...",scope="..."` into pairs.
fn parse_challenge(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((k, after)) = rest.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_string();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (q[..end].to_string(), &q[end + 1..]),
                None => (q.to_string(), ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (after[..end].to_string(), &after[end..]),
                None => (after.to_string(), ""),
            }
        };
        out.push((k, v));
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = parse_reference("python:3.11-slim").unwrap();
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/python");
        assert_eq!(r.tag.as_deref(), Some("3.11-slim"));
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let r = parse_reference("127.0.0.1:5000/team/py").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/py");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse_reference(&format!("localhost/py@{d}")).unwrap();
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert_eq!(r.tag, None);
        assert!(parse_reference("Bad/Name").is_err());
        assert!(parse_reference("py@sha256:xyz").is_err());
        assert_eq!(
            canonical_name("python").as_deref(),
            Some("docker.io/library/python:latest")
        );
    }

    #[test]
    fn loopback() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("example.com:5000"));
        assert!(!is_loopback("10.0.0.1"));
    }

    #[test]
    fn challenge() {
        let p = parse_challenge(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/python:pull""#,
        );
        assert_eq!(
            p[0],
            ("realm".into(), "https://auth.docker.io/token".into())
        );
        assert_eq!(p[1], ("service".into(), "registry.docker.io".into()));
        assert_eq!(p[2].1, "repository:library/python:pull");
    }
}
