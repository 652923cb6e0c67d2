//! Manifests, indexes and configs: telling them apart, parsing them, picking this
//! machine's manifest of an index, refusing layers the unpacker cannot apply, and writing
//! a manifest.

use std::io;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use serde::{Deserialize, Serialize};

use super::{DOCKER_LIST, DOCKER_MANIFEST, MAX_JSON, OCI_INDEX, OCI_MANIFEST, Store, StoreError};

impl Store {
    /// The image manifest `digest` (an index is refused).
    pub fn manifest(&self, digest: &str) -> Result<ImageManifest, StoreError> {
        let raw = self.read_blob(digest, MAX_JSON)?;
        parse_manifest(&raw, digest)
    }

    /// The image config of `manifest`, as JSON.
    pub fn config(&self, manifest: &ImageManifest) -> Result<serde_json::Value, StoreError> {
        let d = manifest.config().digest().to_string();
        let raw = self.read_blob(&d, MAX_JSON)?;
        serde_json::from_slice(&raw).map_err(|e| StoreError::BadJson {
            what: "image config".into(),
            digest: d,
            why: e.to_string(),
        })
    }
}

/// What a manifest-ish JSON document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DocKind {
    Manifest,
    Index,
}

/// Classifies a manifest or index by its media type (or, without one, its fields).
pub(crate) fn doc_kind(raw: &[u8], digest: &str) -> Result<DocKind, StoreError> {
    let v: serde_json::Value = serde_json::from_slice(raw).map_err(|e| StoreError::BadJson {
        what: "manifest".into(),
        digest: digest.to_string(),
        why: e.to_string(),
    })?;
    if v.get("schemaVersion").and_then(|s| s.as_u64()) == Some(1) {
        return Err(StoreError::Unsupported(format!(
            "manifest {digest} is a Docker schema 1 manifest, which pysandbox does not support. Hint: push the image again with a current docker or skopeo"
        )));
    }
    let mt = v.get("mediaType").and_then(|m| m.as_str()).unwrap_or("");
    Ok(match mt {
        OCI_INDEX | DOCKER_LIST => DocKind::Index,
        OCI_MANIFEST | DOCKER_MANIFEST => DocKind::Manifest,
        "" if v.get("manifests").is_some() => DocKind::Index,
        "" if v.get("config").is_some() && v.get("layers").is_some() => DocKind::Manifest,
        other => {
            return Err(StoreError::Unsupported(format!(
                "{digest} has media type {other:?}, not an image manifest or index"
            )));
        }
    })
}

pub(crate) fn parse_manifest(raw: &[u8], digest: &str) -> Result<ImageManifest, StoreError> {
    if doc_kind(raw, digest)? == DocKind::Index {
        return Err(StoreError::Unsupported(format!(
            "{digest} is an image index, not an image manifest"
        )));
    }
    ImageManifest::from_reader(raw).map_err(|e| StoreError::BadJson {
        what: "manifest".into(),
        digest: digest.to_string(),
        why: e.to_string(),
    })
}

/// The media type a manifest declares (OCI's when it declares none).
pub(super) fn manifest_media_type(m: &ImageManifest) -> String {
    m.media_type()
        .as_ref()
        .map(|t| t.to_string())
        .unwrap_or_else(|| OCI_MANIFEST.to_string())
}

pub(crate) fn parse_index(raw: &[u8], digest: &str) -> Result<ImageIndex, StoreError> {
    ImageIndex::from_reader(raw).map_err(|e| StoreError::BadJson {
        what: "image index".into(),
        digest: digest.to_string(),
        why: e.to_string(),
    })
}

/// The OCI architecture name of this machine.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86" => "386",
        other => other,
    }
}

/// The manifest of an index for linux on this machine's architecture.
pub(crate) fn pick_platform(index: &ImageIndex, digest: &str) -> Result<Descriptor, StoreError> {
    let arch = host_arch();
    let manifests: Vec<&Descriptor> = index
        .manifests()
        .iter()
        .filter(|d| {
            matches!(
                d.media_type().to_string().as_str(),
                OCI_MANIFEST | DOCKER_MANIFEST
            )
        })
        .collect();
    let matching: Vec<&&Descriptor> = manifests
        .iter()
        .filter(|d| {
            d.platform().as_ref().is_some_and(|p| {
                p.os().to_string() == "linux" && p.architecture().to_string() == arch
            })
        })
        .collect();
    // arm64: prefer variant v8 (or none) over others.
    let best = matching
        .iter()
        .find(|d| {
            d.platform()
                .as_ref()
                .and_then(|p| p.variant().as_deref())
                .is_none_or(|v| v == "v8")
        })
        .or(matching.first());
    if let Some(d) = best {
        return Ok((**d).clone());
    }
    if manifests.len() == 1 && manifests[0].platform().is_none() {
        return Ok(manifests[0].clone());
    }
    let have: Vec<String> = manifests
        .iter()
        .filter_map(|d| d.platform().as_ref())
        .map(|p| format!("{}/{}", p.os(), p.architecture()))
        .collect();
    Err(StoreError::Unsupported(format!(
        "image index {digest} has no linux/{arch} image (it has: {})",
        if have.is_empty() {
            "none".to_string()
        } else {
            have.join(", ")
        }
    )))
}

/// Refuses layers the unpacker cannot apply, with the reason.
pub(crate) fn check_layer_type(l: &Descriptor) -> Result<(), StoreError> {
    let mt = l.media_type().to_string();
    if mt.contains("zstd") {
        return Err(StoreError::Unsupported(format!(
            "layer {} is zstd-compressed ({mt}); pysandbox unpacks gzip and uncompressed layers. Hint: convert the image, e.g. skopeo copy --dest-compress-format gzip",
            l.digest()
        )));
    }
    if mt.contains("encrypted") {
        return Err(StoreError::Unsupported(format!(
            "layer {} is encrypted ({mt}), which pysandbox does not support",
            l.digest()
        )));
    }
    if mt.starts_with("application/vnd.oci.image.layer.")
        || mt.starts_with("application/vnd.docker.image.rootfs.")
        || mt == "application/x-tar"
    {
        return Ok(());
    }
    Err(StoreError::Unsupported(format!(
        "layer {} has media type {mt:?}, not a file system layer (is this an artifact rather than a container image?)",
        l.digest()
    )))
}

/// A serializable manifest for writers (import of docker archives, layouts).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RawDescriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

/// Builds and stores an OCI manifest from a config and layer descriptors; returns its
/// digest.
pub(crate) fn put_manifest(
    store: &Store,
    config: RawDescriptor,
    layers: Vec<RawDescriptor>,
) -> Result<String, StoreError> {
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": layers,
    });
    let body = serde_json::to_vec(&m).map_err(|e| StoreError::Io {
        path: store.root.clone(),
        source: io::Error::other(e),
    })?;
    Ok(store.put_bytes(&body)?.0)
}
