//! What `image ls` and `image inspect` show.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use oci_spec::image::ImageManifest;
use serde::Serialize;

use super::manifests::manifest_media_type;
use super::tags::ref_name;
use super::{MAX_JSON, PACKAGES_LABEL, Store, StoreError, digest_hex, parse_manifest};
use crate::image::unpack::UnpackStats;

/// One line of `image ls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageSummary {
    pub name: String,
    /// Manifest digest.
    pub digest: String,
    /// Compressed size: manifest, config and layers.
    pub size: u64,
    /// `created` of the image config.
    pub created: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerInfo {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

/// The unpacked root file system of an image, when there is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnpackedInfo {
    pub path: PathBuf,
    /// Bytes of regular files.
    pub bytes: u64,
    pub files: u64,
}

/// `image inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageDetails {
    pub name: String,
    pub digest: String,
    pub media_type: String,
    pub config_digest: String,
    pub layers: Vec<LayerInfo>,
    /// Compressed size: manifest, config and layers.
    pub size: u64,
    pub architecture: Option<String>,
    pub os: Option<String>,
    pub created: Option<String>,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Manifest annotations.
    pub annotations: BTreeMap<String, String>,
    /// The `org.pysandbox.packages` label.
    pub packages: Option<String>,
    pub unpacked: Option<UnpackedInfo>,
}

impl Store {
    /// Tagged images, by name.
    pub fn list(&self) -> Result<Vec<ImageSummary>, StoreError> {
        let mut out = Vec::new();
        for d in self.load_index()? {
            let Some(name) = ref_name(&d) else { continue };
            let digest = d.digest().to_string();
            let (size, created) = match self.manifest(&digest) {
                Ok(m) => {
                    let created = self
                        .config(&m)
                        .ok()
                        .and_then(|c| c.get("created").and_then(|v| v.as_str()).map(String::from));
                    (compressed_size(&m, d.size()), created)
                }
                Err(_) => (d.size(), None),
            };
            out.push(ImageSummary {
                name: name.to_string(),
                digest,
                size,
                created,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Everything about one image.
    pub fn inspect(&self, name: &str) -> Result<ImageDetails, StoreError> {
        let (tag, digest) = self
            .find(name)?
            .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
        let raw = self.read_blob(&digest, MAX_JSON)?;
        let m = parse_manifest(&raw, &digest)?;
        let cfg = self.config(&m)?;
        let strs = |v: Option<&serde_json::Value>| -> Vec<String> {
            v.and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let str_of = |v: Option<&serde_json::Value>| -> Option<String> {
            v.and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
                .map(String::from)
        };
        let c = cfg.get("config");
        let labels: BTreeMap<String, String> = c
            .and_then(|c| c.get("Labels"))
            .and_then(|l| l.as_object())
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let annotations: BTreeMap<String, String> = m
            .annotations()
            .as_ref()
            .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let packages = labels
            .get(PACKAGES_LABEL)
            .or_else(|| annotations.get(PACKAGES_LABEL))
            .cloned();
        let unpacked = self.unpacked_info(&digest)?;
        Ok(ImageDetails {
            name: tag.unwrap_or_else(|| name.to_string()),
            digest: digest.clone(),
            media_type: manifest_media_type(&m),
            config_digest: m.config().digest().to_string(),
            layers: m
                .layers()
                .iter()
                .map(|l| LayerInfo {
                    digest: l.digest().to_string(),
                    size: l.size(),
                    media_type: l.media_type().to_string(),
                })
                .collect(),
            size: compressed_size(&m, raw.len() as u64),
            architecture: str_of(cfg.get("architecture")),
            os: str_of(cfg.get("os")),
            created: str_of(cfg.get("created")),
            env: strs(c.and_then(|c| c.get("Env"))),
            entrypoint: strs(c.and_then(|c| c.get("Entrypoint"))),
            cmd: strs(c.and_then(|c| c.get("Cmd"))),
            working_dir: str_of(c.and_then(|c| c.get("WorkingDir"))),
            user: str_of(c.and_then(|c| c.get("User"))),
            labels,
            annotations,
            packages,
            unpacked,
        })
    }

    /// The image's unpacked tree and what its unpack wrote in `unpack.json`, if unpacked.
    fn unpacked_info(&self, digest: &str) -> Result<Option<UnpackedInfo>, StoreError> {
        let dir = self.root.join("rootfs").join(digest_hex(digest)?);
        if !dir.join("rootfs").is_dir() {
            return Ok(None);
        }
        let stats: Option<UnpackStats> = fs::read(dir.join("unpack.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        Ok(Some(UnpackedInfo {
            path: dir.join("rootfs"),
            bytes: stats.as_ref().map(|s| s.bytes).unwrap_or(0),
            files: stats.as_ref().map(|s| s.files).unwrap_or(0),
        }))
    }
}

fn compressed_size(m: &ImageManifest, manifest_size: u64) -> u64 {
    manifest_size + m.config().size() + m.layers().iter().map(|l| l.size()).sum::<u64>()
}
