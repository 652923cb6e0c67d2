//! Writing one image out as an OCI layout.

use std::fs::{self, File};
use std::io;
use std::path::Path;

use super::blobs::blob_read_err;
use super::manifests::manifest_media_type;
use super::{MAX_JSON, OCI_INDEX, REF_NAME, Store, StoreError, digest_hex, io_err, parse_manifest};

impl Store {
    /// Writes an OCI layout (oci-layout, index.json, blobs/) holding the image
    /// `name_or_digest` under the reference name `ref_name` into `dest` (created if
    /// missing, must be empty). Returns the manifest digest.
    pub fn export_layout(
        &self,
        name_or_digest: &str,
        dest: &Path,
        ref_name: &str,
    ) -> Result<String, StoreError> {
        let digest = self
            .resolve(name_or_digest)?
            .ok_or_else(|| StoreError::NotFound(name_or_digest.to_string()))?;
        let raw = self.read_blob(&digest, MAX_JSON)?;
        let m = parse_manifest(&raw, &digest)?;
        let blobs = dest.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
        let mut all = vec![digest.clone(), m.config().digest().to_string()];
        all.extend(m.layers().iter().map(|l| l.digest().to_string()));
        for d in &all {
            let to = blobs.join(digest_hex(d)?);
            if to.exists() {
                continue;
            }
            let from = self.blob_path(d)?;
            if fs::hard_link(&from, &to).is_err() {
                let mut r = self.open_blob(d)?;
                let mut w = File::create(&to).map_err(io_err(&to))?;
                io::copy(&mut r, &mut w).map_err(|e| blob_read_err(d, e))?;
            }
        }
        fs::write(
            dest.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .map_err(io_err(dest))?;
        let media_type = manifest_media_type(&m);
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{
                "mediaType": media_type,
                "digest": digest,
                "size": raw.len(),
                "annotations": { REF_NAME: ref_name },
            }],
        });
        let p = dest.join("index.json");
        fs::write(&p, index.to_string()).map_err(io_err(&p))?;
        Ok(digest)
    }
}
