//! Image references, by Docker's rules: `python:3.11` is
//! `docker.io/library/python:3.11`.

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Registry host (and port) as named: "docker.io", "127.0.0.1:5000".
    pub registry: String,
    /// Repository path: "library/python".
    pub repository: String,
    pub tag: Option<String>,
    /// "sha256:<hex>".
    pub digest: Option<String>,
}

impl Reference {
    /// The tag or digest to ask the registry for.
    pub fn target(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The host to talk to (Docker Hub's API is not at docker.io).
    pub fn api_host(&self) -> &str {
        if self.registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Parses `[registry/]repository[:tag][@digest]` with Docker's defaults (registry
/// docker.io, `library/` for single-component names there, tag `latest` when there is
/// neither tag nor digest).
pub fn parse_reference(s: &str) -> Result<Reference, String> {
    let s = s.trim();
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => {
            sha256_hex(d).ok_or_else(|| {
                format!("{d:?} is not a sha256 digest (expected sha256:<64 lowercase hex digits>)")
            })?;
            (r, Some(d.to_string()))
        }
        None => (s, None),
    };
    let (registry, path) = match rest.split_once('/') {
        Some((first, remainder))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_ascii_lowercase(), remainder)
        }
        _ => ("docker.io".to_string(), rest),
    };
    let registry = match registry.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        _ => registry,
    };
    let (repo, tag) = match path.rsplit_once(':') {
        Some((r, t)) => (r, Some(t.to_string())),
        None => (path, None),
    };
    if repo.is_empty()
        || !repo
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b'/'))
        || repo.starts_with('/')
        || repo.ends_with('/')
        || repo.contains("//")
    {
        return Err(format!(
            "{s:?} is not an image reference: the repository must be lowercase letters, digits and . _ - / (like python:3.11 or 127.0.0.1:5000/team/py:3.11)"
        ));
    }
    if let Some(t) = &tag
        && (t.is_empty()
            || t.len() > 128
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')))
    {
        return Err(format!("{s:?}: invalid tag {t:?}"));
    }
    let repository = if registry == "docker.io" && !repo.contains('/') {
        format!("library/{repo}")
    } else {
        repo.to_string()
    };
    let tag = if tag.is_none() && digest.is_none() {
        Some("latest".to_string())
    } else {
        tag
    };
    Ok(Reference {
        registry,
        repository,
        tag,
        digest,
    })
}

/// The fully qualified form of a reference (`python` is
/// `docker.io/library/python:latest`), or None if it is not one.
pub fn canonical_name(s: &str) -> Option<String> {
    parse_reference(s).ok().map(|r| r.to_string())
}

/// The hex part of `sha256:<64 lowercase hex digits>`, if `digest` is one.
pub fn sha256_hex(digest: &str) -> Option<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}
