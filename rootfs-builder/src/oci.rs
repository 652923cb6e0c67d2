//! Writes OCI image layouts (`oci-layout`, `index.json`, `blobs/sha256/`) holding one
//! image: gzip'd layers, a config, a manifest. The JSON is written with sorted keys and
//! no timestamps of its own, so the same layers and settings give the same digests.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::layer::{LayerDigests, Source, write_layer};

pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// The image config (JSON bytes) for `layers` (bottom first).
pub fn config_json(layers: &[LayerDigests], s: &ImageSettings) -> Vec<u8> {
    let mut config = json!({
        "architecture": oci_arch(),
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Env": s.env,
            "Cmd": s.cmd,
            "Labels": s.labels,
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
        },
    });
    if let Some(u) = &s.user {
        config["config"]["User"] = Value::from(u.clone());
    }
    if let Some(w) = &s.working_dir {
        config["config"]["WorkingDir"] = Value::from(w.clone());
    }
    serde_json::to_vec(&config).expect("JSON values serialize")
}

/// The image manifest (JSON bytes) for a config blob and `layers`.
pub fn manifest_json(config: (&str, u64), layers: &[LayerDigests]) -> Vec<u8> {
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config.0, "size": config.1},
        "layers": layers.iter().map(|l| json!({
            "mediaType": if l.gzip { MEDIA_LAYER_GZIP } else { MEDIA_LAYER_TAR },
            "digest": l.digest, "size": l.size,
        })).collect::<Vec<_>>(),
    });
    serde_json::to_vec(&manifest).expect("JSON values serialize")
}

/// An OCI layout being written.
pub struct Layout {
    dir: PathBuf,
}

/// The image settings that go into its config.
#[derive(Debug, Clone, Default)]
pub struct ImageSettings {
    pub env: Vec<String>,
    pub cmd: Vec<String>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub labels: BTreeMap<String, String>,
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// The OCI architecture name of the running machine.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

impl Layout {
    /// Creates an empty layout in `dir` (made if missing).
    pub fn create(dir: &Path) -> io::Result<Layout> {
        fs::create_dir_all(dir.join("blobs/sha256"))?;
        fs::write(dir.join("oci-layout"), "{\"imageLayoutVersion\":\"1.0.0\"}")?;
        Ok(Layout {
            dir: dir.to_owned(),
        })
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// Stores bytes as a blob; returns (digest, size).
    pub fn put_bytes(&self, data: &[u8]) -> io::Result<(String, u64)> {
        let digest = format!("sha256:{}", hex(&Sha256::digest(data)));
        fs::write(self.blob_path(&digest), data)?;
        Ok((digest, data.len() as u64))
    }

    /// Writes a layer from a directory tree.
    pub fn put_layer(&self, src: &Path, prefix: &str, source: Source) -> io::Result<LayerDigests> {
        let tmp = self.dir.join("blobs/sha256/.layer.tmp");
        let f = io::BufWriter::with_capacity(1 << 20, fs::File::create(&tmp)?);
        let d = write_layer(src, prefix, source, f)?;
        fs::rename(&tmp, self.blob_path(&d.digest))?;
        Ok(d)
    }

    /// Writes a layer from an uncompressed tar stream.
    pub fn put_layer_tar(&self, tar: &mut dyn io::Read) -> io::Result<LayerDigests> {
        let tmp = self.dir.join("blobs/sha256/.layer.tmp");
        let f = io::BufWriter::with_capacity(1 << 20, fs::File::create(&tmp)?);
        let d = crate::layer::write_layer_tar(tar, f)?;
        fs::rename(&tmp, self.blob_path(&d.digest))?;
        Ok(d)
    }

    /// Copies a layer blob made earlier (e.g. a cached base layer) into this layout.
    pub fn put_layer_file(&self, file: &Path, d: &LayerDigests) -> io::Result<()> {
        let dst = self.blob_path(&d.digest);
        if fs::hard_link(file, &dst).is_err() {
            fs::copy(file, &dst)?;
        }
        Ok(())
    }

    /// Writes config, manifest and index for `layers` (bottom first); returns the manifest
    /// digest.
    pub fn finish(
        &self,
        layers: &[LayerDigests],
        s: &ImageSettings,
        ref_name: &str,
    ) -> io::Result<String> {
        self.finish_raw(layers, &config_json(layers, s), ref_name)
    }

    /// As [`Layout::finish`], with a config the caller made (`rootfs`, `architecture`
    /// and `os` are filled in).
    pub fn finish_with_config(
        &self,
        layers: &[LayerDigests],
        mut config: Value,
        ref_name: &str,
    ) -> io::Result<String> {
        if !config.is_object() {
            config = json!({});
        }
        config["architecture"] = Value::from(oci_arch());
        config["os"] = Value::from("linux");
        config["rootfs"] = json!({
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
        });
        self.finish_raw(layers, &serde_json::to_vec(&config)?, ref_name)
    }

    fn finish_raw(
        &self,
        layers: &[LayerDigests],
        config: &[u8],
        ref_name: &str,
    ) -> io::Result<String> {
        let (cd, cs) = self.put_bytes(config)?;
        let (md, ms) = self.put_bytes(&manifest_json((&cd, cs), layers))?;
        let index = json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": MEDIA_MANIFEST,
                "digest": md,
                "size": ms,
                "platform": {"architecture": oci_arch(), "os": "linux"},
                "annotations": {"org.opencontainers.image.ref.name": ref_name},
            }],
        });
        let mut f = fs::File::create(self.dir.join("index.json"))?;
        f.write_all(&serde_json::to_vec(&index)?)?;
        Ok(md)
    }
}
