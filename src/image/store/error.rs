//! The store's error type.

use std::io;
use std::path::{Path, PathBuf};

use crate::dirs;
use crate::image::unpack::UnpackError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Dirs(#[from] dirs::DirsError),
    #[error("image store: {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("reading {what}: {source}")]
    Read { what: String, source: io::Error },
    #[error("{0:?} is not a sha256 digest (expected sha256:<64 lowercase hex digits>)")]
    BadDigest(String),
    #[error(
        "{what} {digest} is missing from the image store. Hint: pysandbox image rm NAME and pull/import it again"
    )]
    MissingBlob { what: String, digest: String },
    #[error(
        "blob {digest} is corrupt: {why}. Hint: pysandbox image rm NAME and pull/import it again"
    )]
    Corrupt { digest: String, why: String },
    #[error(
        "{what}: expected {expected} ({expected_size} bytes), got {actual} ({actual_size} bytes): the source is corrupt or was tampered with"
    )]
    Mismatch {
        what: String,
        expected: String,
        expected_size: u64,
        actual: String,
        actual_size: u64,
    },
    #[error("{what} is larger than {max} bytes; refusing it")]
    TooLarge { what: String, max: u64 },
    #[error(
        "image {0:?} not found. Hint: pysandbox image ls lists the images; pull or import it first"
    )]
    NotFound(String),
    #[error("invalid image name {name:?}: {why}")]
    BadName { name: String, why: String },
    #[error("{what} {digest} is not valid: {why}")]
    BadJson {
        what: String,
        digest: String,
        why: String,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error("cannot import {path}: {why}")]
    Import { path: PathBuf, why: String },
    #[error("pulling {reference}: {why}")]
    Pull { reference: String, why: String },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}
