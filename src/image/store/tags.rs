//! Tags: the store's `index.json` (one descriptor per name), and what a name or digest
//! stands for.

use std::collections::HashSet;
use std::fs;
use std::io;

use oci_spec::image::{Descriptor, ImageIndex, MediaType};

use super::{
    DocKind, MAX_JSON, OCI_INDEX, REF_NAME, Store, StoreError, doc_kind, io_err, parse_digest,
    parse_index, parse_manifest, pick_platform, write_atomic,
};

impl Store {
    /// Points `name` (like "numpy" or "localhost:5000/py:3.11") at a stored manifest.
    pub fn tag(&self, name: &str, manifest_digest: &str) -> Result<(), StoreError> {
        check_name(name)?;
        let raw = self.read_blob(manifest_digest, MAX_JSON)?;
        let m = parse_manifest(&raw, manifest_digest)?;
        let media_type = m.media_type().clone().unwrap_or(MediaType::ImageManifest);
        let mut desc =
            Descriptor::new(media_type, raw.len() as u64, parse_digest(manifest_digest)?);
        desc.set_annotations(Some(
            [(REF_NAME.to_string(), name.to_string())]
                .into_iter()
                .collect(),
        ));
        let _l = self.lock(".index.lock", libc::LOCK_EX)?;
        let mut tags = self.load_index()?;
        tags.retain(|d| ref_name(d) != Some(name));
        tags.push(desc);
        tags.sort_by(|a, b| ref_name(a).cmp(&ref_name(b)));
        self.save_index(&tags)
    }

    /// The manifest digest `name_or_digest` stands for: a tag (exact, then with
    /// `:latest`, then in Docker's normalized form: `python:3.11` is
    /// `docker.io/library/python:3.11`), a full digest of a stored manifest, or a unique
    /// prefix (6+ hex digits) of a tagged one.
    pub fn resolve(&self, name_or_digest: &str) -> Result<Option<String>, StoreError> {
        Ok(self.find(name_or_digest)?.map(|(_, d)| d))
    }

    /// `(tag, digest)` of `name_or_digest` (the tag is None for a bare digest).
    pub(super) fn find(&self, q: &str) -> Result<Option<(Option<String>, String)>, StoreError> {
        let q = q.trim();
        if q.is_empty() {
            return Ok(None);
        }
        if let Some(h) = q.strip_prefix("sha256:")
            && h.len() == 64
        {
            return Ok(self.stored_manifest(q).map(|d| (None, d)));
        }
        let tags: Vec<(String, String)> = self
            .load_index()?
            .iter()
            .filter_map(|d| Some((ref_name(d)?.to_string(), d.digest().to_string())))
            .collect();
        if let Some((n, d)) = tags.iter().find(|(n, _)| n == q) {
            return Ok(Some((Some(n.clone()), d.clone())));
        }
        let last = q.rsplit('/').next().unwrap_or(q);
        if !last.contains(':') && !q.contains('@') {
            let with = format!("{q}:latest");
            if let Some((n, d)) = tags.iter().find(|(n, _)| *n == with) {
                return Ok(Some((Some(n.clone()), d.clone())));
            }
        }
        if let Some(c) = crate::image::reference::canonical_name(q) {
            let hits: Vec<_> = tags
                .iter()
                .filter(|(n, _)| crate::image::reference::canonical_name(n).as_deref() == Some(&c))
                .collect();
            if let [(n, d)] = hits[..] {
                return Ok(Some((Some(n.clone()), d.clone())));
            }
        }
        let h = q.strip_prefix("sha256:").unwrap_or(q);
        if h.len() >= 6 && h.bytes().all(|b| b.is_ascii_hexdigit()) {
            let h = h.to_ascii_lowercase();
            let hits: HashSet<&String> = tags
                .iter()
                .filter(|(_, d)| d.strip_prefix("sha256:").is_some_and(|x| x.starts_with(&h)))
                .map(|(_, d)| d)
                .collect();
            if hits.len() == 1 {
                return Ok(hits.into_iter().next().map(|d| (None, d.clone())));
            }
        }
        Ok(None)
    }

    /// The manifest `digest` names, if stored: itself, or for a stored image index, its
    /// manifest for this machine (a layer or config digest is not an image).
    fn stored_manifest(&self, digest: &str) -> Option<String> {
        let raw = self.read_blob(digest, MAX_JSON).ok()?;
        match doc_kind(&raw, digest).ok()? {
            DocKind::Manifest => Some(digest.to_string()),
            DocKind::Index => {
                let idx = parse_index(&raw, digest).ok()?;
                let m = pick_platform(&idx, digest).ok()?.digest().to_string();
                self.has_blob(&m).then_some(m)
            }
        }
    }

    /// Untags `name` (with a digest: every tag of that manifest). Blobs stay until prune.
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        let found = self
            .find(name)?
            .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
        let _l = self.lock(".index.lock", libc::LOCK_EX)?;
        let mut tags = self.load_index()?;
        let before = tags.len();
        match &found {
            (Some(tag), _) => tags.retain(|d| ref_name(d) != Some(tag.as_str())),
            (None, digest) => tags.retain(|d| d.digest().to_string() != *digest),
        }
        if tags.len() == before {
            return Err(StoreError::NotFound(name.to_string()));
        }
        self.save_index(&tags)
    }

    pub(super) fn load_index(&self) -> Result<Vec<Descriptor>, StoreError> {
        let p = self.root.join("index.json");
        let raw = match fs::read(&p) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&p)(e)),
        };
        let idx = ImageIndex::from_reader(&raw[..]).map_err(|e| StoreError::BadJson {
            what: "store index".into(),
            digest: p.display().to_string(),
            why: format!(
                "{e}. Hint: fix or remove the file (images are re-tagged by importing them again)"
            ),
        })?;
        Ok(idx.manifests().clone())
    }

    pub(super) fn save_index(&self, tags: &[Descriptor]) -> Result<(), StoreError> {
        let idx = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": tags,
        });
        let body = serde_json::to_vec_pretty(&idx).map_err(|e| StoreError::Io {
            path: self.root.join("index.json"),
            source: io::Error::other(e),
        })?;
        write_atomic(&self.root.join("index.json"), &body)
    }
}

pub(super) fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations()
        .as_ref()
        .and_then(|a| a.get(REF_NAME))
        .map(String::as_str)
}

/// Tag names: printable ASCII without spaces, at most 255 characters, not a digest.
fn check_name(name: &str) -> Result<(), StoreError> {
    let bad = |why: &str| StoreError::BadName {
        name: name.to_string(),
        why: why.to_string(),
    };
    if name.is_empty() || name.len() > 255 {
        return Err(bad("it must have 1 to 255 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-/:@+".contains(&b))
    {
        return Err(bad(
            "use letters, digits and . _ - / : @ + only (like numpy or localhost:5000/py:3.11)",
        ));
    }
    if name.starts_with("sha256:") || name.starts_with(['.', '-', '/', ':']) {
        return Err(bad("it must not look like a digest or start with . - / :"));
    }
    Ok(())
}
