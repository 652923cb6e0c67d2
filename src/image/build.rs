//! `pysandbox image build ENV.yaml`: micromamba-style images from a conda environment
//! file, in two stages.
//!
//! - BUILD stage: a pysandbox sandbox (network on) over the base image, with `/opt/conda`
//!   writable through an overlay whose upper layer is a host directory, and the host's
//!   `pip` (a copy, mounted with the build script at `/usr/app/src`). pip installs the
//!   `pip:` list into `/opt/conda` (micromamba installs conda packages first when the
//!   base carries it); every module is then compiled to hash-checked `.pyc`.
//! - FINAL image: the base layer(s) plus ONE new layer made from the upper directory
//!   only: what landed under `/opt/conda`. No pip (it never entered `/opt/conda`), no
//!   shell, no compiler, no cache. Layers are reproducible (sorted entries, fixed mtimes,
//!   0:0), so the same environment file gives the same layer digests.
//!
//! The image goes into the store under the file's stem (or `-t NAME`); a lock file next to
//! the environment file records what was resolved. An unchanged file is not rebuilt.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use rootfs_builder::env::EnvFile;
use rootfs_builder::layer::{LayerDigests, Source};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::store::{Progress, Store};
use crate::image::{self, ImageError};

pub use super::labels::{LABEL_BUILD_KEY, LABEL_PACKAGES, LABEL_PYTHON};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Env(#[from] rootfs_builder::env::EnvError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Store(#[from] super::store::StoreError),
    #[error("{0}")]
    Invalid(String),
    #[error("{step}: {source}")]
    Io { step: String, source: io::Error },
    #[error("the build stage failed ({0}); its output is above")]
    Stage(String),
}

fn io_err(step: impl Into<String>) -> impl FnOnce(io::Error) -> BuildError {
    let step = step.into();
    move |source| BuildError::Io { step, source }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub env_file: PathBuf,
    pub name: Option<String>,
    /// Rebuild even if nothing changed.
    pub force: bool,
    /// A store image to build on instead of the default (host Python) image.
    pub base: Option<String>,
    /// `--allow-net` rules for the build stage: it then reaches only these hosts through
    /// pysandbox's proxy (and logs every connection on stderr) instead of the whole
    /// network.
    pub allow_net: Vec<String>,
}

/// What was built.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Built {
    pub name: String,
    pub digest: String,
    /// Nothing changed since the last build: the existing image was kept.
    pub up_to_date: bool,
    pub layers: Vec<String>,
    pub packages: Vec<String>,
    pub lock_file: Option<PathBuf>,
}

/// The lock file next to the environment file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lock {
    image: String,
    digest: String,
    python: String,
    base: String,
    layers: Vec<String>,
    packages: Vec<Locked>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
struct Locked {
    name: String,
    version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
}

/// The base an image is built on.
struct Base {
    /// Its root file system on the host (for the build stage).
    rootfs: PathBuf,
    /// Its layers, bottom first (blobs in the store).
    layers: Vec<LayerDigests>,
    python: String,
    digest: String,
    /// Holds the base's unpacked root file system while the build uses it.
    _guard: Option<super::store::RootfsGuard>,
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A store image as a base.
fn store_base(store: &Store, name: &str, progress: &dyn Progress) -> Result<Base, BuildError> {
    let digest = store
        .resolve(name)?
        .ok_or_else(|| BuildError::Invalid(format!("--base {name}: no such image in the store. Hint: pysandbox image ls, or pull/import it first")))?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&store.read_blob(&digest, 4 << 20)?)
            .map_err(|e| BuildError::Invalid(format!("--base {name}: bad manifest: {e}")))?;
    let cfg_digest = manifest["config"]["digest"].as_str().unwrap_or_default();
    let config: serde_json::Value = serde_json::from_slice(&store.read_blob(cfg_digest, 4 << 20)?)
        .map_err(|e| BuildError::Invalid(format!("--base {name}: bad config: {e}")))?;
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let layers: Vec<LayerDigests> = manifest["layers"]
        .as_array()
        .map(|a| {
            a.iter()
                .zip(diff_ids.iter())
                .map(|(l, d)| LayerDigests {
                    digest: l["digest"].as_str().unwrap_or_default().to_string(),
                    size: l["size"].as_u64().unwrap_or(0),
                    diff_id: d.clone(),
                    files: 0,
                    gzip: l["mediaType"].as_str().is_some_and(|m| m.contains("gzip")),
                })
                .collect()
        })
        .unwrap_or_default();
    if layers.is_empty() || layers.iter().any(|l| !l.digest.starts_with("sha256:")) {
        return Err(BuildError::Invalid(format!(
            "--base {name}: the image has no usable layers"
        )));
    }
    let python = config["config"]["Labels"][LABEL_PYTHON]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let guard = store.rootfs(&digest, progress)?;
    Ok(Base {
        rootfs: guard.path.clone(),
        layers,
        python,
        digest,
        _guard: Some(guard),
    })
}

/// The host's `pip` package directory (the folder holding `pip/`).
fn host_pip(python: &Path) -> Result<PathBuf, BuildError> {
    let out = Command::new(python)
        .args([
            "-I",
            "-c",
            "import os, pip; print(os.path.dirname(os.path.dirname(pip.__file__)))",
        ])
        .output()
        .map_err(io_err(format!("running {}", python.display())))?;
    if !out.status.success() {
        return Err(BuildError::Invalid(format!(
            "the build stage needs pip, and {} has none. Hint: install python3-pip",
            python.display()
        )));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    fs::create_dir_all(dst)?;
    for e in fs::read_dir(src)? {
        let e = e?;
        let ft = e.file_type()?;
        let to = dst.join(e.file_name());
        if ft.is_dir() {
            if e.file_name() != "__pycache__" {
                copy_tree(&e.path(), &to)?;
            }
        } else if ft.is_file() {
            fs::copy(e.path(), &to)?;
        }
    }
    Ok(())
}

/// The build script run inside the build stage (no shell there: Python drives it).
const BUILD_SCRIPT: &str = r#"
import json, os, subprocess, sys
req = json.load(open('/usr/app/src/request.json'))
if req['conda']:
    mm = next((p for p in ['/opt/conda/bin/micromamba', '/usr/local/bin/micromamba', '/usr/bin/micromamba'] if os.path.exists(p)), None)
    cmd = [mm, 'install', '-y', '-p', '/opt/conda']
    for c in req['channels']:
        cmd += ['-c', c]
    subprocess.run(cmd + req['conda'], check=True)
if req['pip']:
    env = dict(os.environ, PYTHONPATH='/usr/app/src/pip')
    subprocess.run([sys.executable, '-m', 'pip', 'install', '--prefix', '/opt/conda', '--no-compile',
                    '--no-cache-dir', '--disable-pip-version-check', '--no-warn-script-location',
                    '--report', '/usr/app/data/output/report.json'] + req['pip'], check=True, env=env)
site = '/opt/conda/lib/python%d.%d/site-packages' % sys.version_info[:2]
if os.path.isdir(site):
    subprocess.run([sys.executable, '-m', 'compileall', '-q', '-j0', '--invalidation-mode', 'unchecked-hash', site], check=True)
"#;

/// Environment variables the build stage passes on to pip (index, proxy, CA settings).
/// With `--allow-net`, the proxy variables (from [`PROXY_ENV`] on) are pysandbox's own.
const PASSED_ENV: &[&str] = &[
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_TRUSTED_HOST",
    "PIP_DEFAULT_TIMEOUT",
    PROXY_ENV,
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

/// The first proxy variable of [`PASSED_ENV`].
const PROXY_ENV: &str = "HTTP_PROXY";

/// Builds (or finds up to date) the image of an environment file.
pub fn build(opts: &BuildOptions, progress: &dyn Progress) -> Result<Built, BuildError> {
    let env = EnvFile::load(&opts.env_file)?;
    let env_bytes = fs::read(&opts.env_file).map_err(io_err("reading the environment file"))?;
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => opts
            .env_file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| BuildError::Invalid("cannot name the image: pass -t NAME".into()))?,
    };
    let store = Store::open_default()?;
    // No prune may take the blobs this build writes before they are tagged.
    let _writing = store.write_guard()?;
    let base = match &opts.base {
        None => {
            // Built first if missing or stale; then an image of the store like any other.
            image::default::resolve()?;
            store_base(&store, image::default::DEFAULT_TAG, progress)?
        }
        Some(b) => store_base(&store, b, progress)?,
    };
    if !base.python.is_empty() && !env.python_matches(&base.python) {
        return Err(BuildError::Invalid(format!(
            "{} asks for python {}, but the base image has Python {}. Hint: change the python line, or build on a base with that version (--base)",
            opts.env_file.display(),
            env.python.as_deref().unwrap_or("?"),
            base.python
        )));
    }
    let has_micromamba = [
        "opt/conda/bin/micromamba",
        "usr/local/bin/micromamba",
        "usr/bin/micromamba",
    ]
    .iter()
    .any(|p| base.rootfs.join(p).is_file());
    if !env.conda.is_empty() && !has_micromamba {
        return Err(BuildError::Invalid(format!(
            "conda packages {} need a conda channel, and the base image has no micromamba. Hint: list them under `pip:` instead, or build on a base image that carries micromamba (--base)",
            env.conda.join(", ")
        )));
    }

    // The rebuild check: what the image is made of.
    let key = format!(
        "sha256:{}",
        sha256_hex(
            format!(
                "{}\n{}\n{}\n{}",
                rootfs_builder::BUILDER_VERSION,
                base.digest,
                sha256_hex(&env_bytes),
                BUILD_SCRIPT
            )
            .as_bytes()
        )
    );
    if !opts.force
        && let Some(existing) = store.resolve(&name)?
        && image_label(&store, &existing, LABEL_BUILD_KEY).as_deref() == Some(key.as_str())
    {
        return Ok(Built {
            name,
            digest: existing,
            up_to_date: true,
            layers: Vec::new(),
            packages: Vec::new(),
            lock_file: None,
        });
    }

    let work = store.tmp_path("build");
    fs::create_dir_all(&work).map_err(io_err("creating the build directory"))?;
    let result = build_in(
        &opts.allow_net,
        &opts.env_file,
        &env,
        &name,
        &key,
        &base,
        &store,
        &work,
        progress,
    );
    let _ = fs::remove_dir_all(&work);
    result
}

#[allow(clippy::too_many_arguments)]
fn build_in(
    allow_net: &[String],
    env_file: &Path,
    env: &EnvFile,
    name: &str,
    key: &str,
    base: &Base,
    store: &Store,
    work: &Path,
    progress: &dyn Progress,
) -> Result<Built, BuildError> {
    let stage = StageDirs::create(work)?;
    stage.write_inputs(env)?;
    run_stage(allow_net, base, &stage, progress)?;
    let packages = resolved_packages(&stage.data);
    progress.start("packing the image layer", None);
    let new_layer = conda_layer(store, &stage.layer)?;
    progress.finish();

    let mut layers = base.layers.clone();
    if let Some(netbase) = netbase_layer(base, store, work)? {
        layers.push(netbase);
    }
    layers.push(new_layer);
    let pkg_list: Vec<String> = packages
        .iter()
        .map(|p| format!("{}=={}", p.name, p.version))
        .collect();
    let md = store_image(store, name, key, base, &layers, &pkg_list)?;
    let lock = Lock {
        image: name.to_string(),
        digest: md.clone(),
        python: base.python.clone(),
        base: base.digest.clone(),
        layers: layers.iter().map(|l| l.digest.clone()).collect(),
        packages,
    };
    let lock_file = write_lock(env_file, &lock);
    Ok(Built {
        name: name.to_string(),
        digest: md,
        up_to_date: false,
        layers: lock.layers,
        packages: pkg_list,
        lock_file,
    })
}

/// The host directories the build stage mounts: `src` (the script, its request and pip),
/// `layer` (the overlay over `/opt/conda`), `data` (pip's report comes out there).
struct StageDirs {
    src: PathBuf,
    layer: PathBuf,
    data: PathBuf,
}

impl StageDirs {
    fn create(work: &Path) -> Result<StageDirs, BuildError> {
        let dirs = StageDirs {
            src: work.join("src"),
            layer: work.join("layer"),
            data: work.join("data"),
        };
        for d in [&dirs.src, &dirs.layer, &dirs.data] {
            fs::create_dir_all(d).map_err(io_err("creating the build directory"))?;
        }
        Ok(dirs)
    }

    /// The build script, what it should install, and (for `pip:`) a copy of the host's pip.
    fn write_inputs(&self, env: &EnvFile) -> Result<(), BuildError> {
        let src = &self.src;
        fs::write(src.join("build.py"), BUILD_SCRIPT)
            .map_err(io_err("writing the build script"))?;
        fs::write(
            src.join("request.json"),
            serde_json::to_vec(
                &json!({"pip": env.pip_packages, "conda": env.conda, "channels": env.channels}),
            )
            .unwrap_or_default(),
        )
        .map_err(io_err("writing the build request"))?;
        if !env.pip_packages.is_empty() {
            let python = image::host_python().ok_or(ImageError::NoHostPython)?;
            let pip = host_pip(&python)?;
            copy_tree(&pip.join("pip"), &src.join("pip").join("pip"))
                .map_err(io_err(format!("copying pip from {}", pip.display())))?;
        }
        Ok(())
    }
}

/// Runs the build stage and waits for it.
fn run_stage(
    allow_net: &[String],
    base: &Base,
    stage: &StageDirs,
    progress: &dyn Progress,
) -> Result<(), BuildError> {
    let mut cmd = stage_command(allow_net, base, stage)?;
    progress.start("installing packages (build stage)", None);
    let st = cmd.status().map_err(io_err("starting the build stage"))?;
    progress.finish();
    if !st.success() {
        return Err(BuildError::Stage(st.to_string()));
    }
    Ok(())
}

/// The build stage: this very binary, `run` with the build-only mount of /opt/conda.
fn stage_command(
    allow_net: &[String],
    base: &Base,
    stage: &StageDirs,
) -> Result<Command, BuildError> {
    let helper = crate::helper::Helper::find().ok_or_else(|| {
        io_err("finding the pysandbox binary")(io::Error::new(
            io::ErrorKind::NotFound,
            "not found: set PYSANDBOX_BIN or put pysandbox on PATH",
        ))
    })?;
    let mut cmd = helper.command();
    cmd.arg("run");
    if allow_net.is_empty() {
        cmd.arg("--network");
    } else {
        for rule in allow_net {
            cmd.arg("--allow-net").arg(rule);
        }
        cmd.arg("--log-net");
    }
    cmd.args(["--timeout", "60m", "--memory", "4G", "--pids", "1024"])
        .args(["--output-limit", "64M"])
        .arg("--image")
        .arg(&base.rootfs)
        .arg("--conda-layer")
        .arg(&stage.layer)
        .arg("--dev")
        .arg(&stage.src)
        .arg("--data")
        .arg(&stage.data)
        .arg("--stdin")
        .arg("/dev/null");
    let proxy_at = PASSED_ENV.iter().position(|k| *k == PROXY_ENV);
    let passed = match proxy_at {
        Some(i) if !allow_net.is_empty() => &PASSED_ENV[..i],
        _ => PASSED_ENV,
    };
    for k in passed {
        if std::env::var_os(k).is_some() {
            cmd.arg("-e").arg(k);
        }
    }
    cmd.arg(stage.src.join("build.py"));
    Ok(cmd)
}

/// What pip resolved (from its `--report`), sorted; none when there is no report.
fn resolved_packages(data: &Path) -> Vec<Locked> {
    let mut packages: Vec<Locked> = Vec::new();
    if let Ok(raw) = fs::read(data.join("output/report.json"))
        && let Ok(report) = serde_json::from_slice::<serde_json::Value>(&raw)
    {
        for item in report["install"].as_array().into_iter().flatten() {
            let meta = &item["metadata"];
            packages.push(Locked {
                name: meta["name"].as_str().unwrap_or_default().to_string(),
                version: meta["version"].as_str().unwrap_or_default().to_string(),
                sha256: item["download_info"]["archive_info"]["hashes"]["sha256"]
                    .as_str()
                    .map(String::from),
            });
        }
    }
    packages.sort();
    packages
}

/// The new layer: only the overlay's upper directory, under opt/conda.
fn conda_layer(store: &Store, layer: &Path) -> Result<LayerDigests, BuildError> {
    let xattr_prefix = if crate::sys::euid() == 0 && crate::sys::in_initial_userns() {
        "trusted."
    } else {
        "user."
    };
    put_layer(
        store,
        "layer",
        &layer.join("upper"),
        "opt/conda",
        Source::OverlayUpper { xattr_prefix },
        "packing the layer",
    )
}

/// Packs `dir` as a layer (every path under `prefix`) into the store's blobs.
fn put_layer(
    store: &Store,
    tmp_name: &str,
    dir: &Path,
    prefix: &str,
    source: Source,
    step: &str,
) -> Result<LayerDigests, BuildError> {
    let tmp = store.tmp_path(tmp_name);
    let f = io::BufWriter::with_capacity(
        1 << 20,
        fs::File::create(&tmp).map_err(io_err("creating the layer"))?,
    );
    let d = rootfs_builder::layer::write_layer(dir, prefix, source, f).map_err(io_err(step))?;
    let mut r = fs::File::open(&tmp).map_err(io_err("reading the layer"))?;
    store.put_blob(&mut r, Some((&d.digest, d.size)))?;
    let _ = fs::remove_file(&tmp);
    Ok(d)
}

/// Writes the image's config and manifest over `layers` and tags it `name`; returns the
/// manifest digest.
fn store_image(
    store: &Store,
    name: &str,
    key: &str,
    base: &Base,
    layers: &[LayerDigests],
    pkg_list: &[String],
) -> Result<String, BuildError> {
    let mut labels = BTreeMap::new();
    labels.insert(LABEL_BUILD_KEY.to_string(), key.to_string());
    labels.insert(LABEL_PACKAGES.to_string(), pkg_list.join(","));
    labels.insert(LABEL_PYTHON.to_string(), base.python.clone());
    let settings = rootfs_builder::oci::ImageSettings {
        env: vec![format!("PATH={}", image::IMAGE_PATH)],
        cmd: vec![rootfs_builder::IMAGE_PYTHON.into()],
        user: Some("1000:1000".into()),
        working_dir: Some(crate::spec::DATA_DIR.into()),
        labels,
    };
    let config = rootfs_builder::oci::config_json(layers, &settings);
    let (cd, cs) = store.put_blob(&mut &config[..], None)?;
    let manifest = rootfs_builder::oci::manifest_json((&cd, cs), layers);
    let (md, _) = store.put_blob(&mut &manifest[..], None)?;
    store.tag(name, &md)?;
    Ok(md)
}

/// The lock file next to the environment file; `None` when it cannot be written.
fn write_lock(env_file: &Path, lock: &Lock) -> Option<PathBuf> {
    let lock_path = env_file.with_extension("lock.json");
    fs::write(
        &lock_path,
        serde_json::to_vec_pretty(lock).unwrap_or_default(),
    )
    .ok()
    .map(|_| lock_path)
}

/// A layer with `/etc/services` and `/etc/protocols` (the host's netbase files, or
/// built-in copies) when the base image lacks them: `socket.getservbyname` and
/// `getaddrinfo(host, "http")` work in every image pysandbox builds.
fn netbase_layer(
    base: &Base,
    store: &Store,
    work: &Path,
) -> Result<Option<LayerDigests>, BuildError> {
    let missing: Vec<&(&str, &str)> = rootfs_builder::NETBASE_FILES
        .iter()
        .filter(|(path, _)| {
            fs::symlink_metadata(base.rootfs.join(path.trim_start_matches('/'))).is_err()
        })
        .collect();
    if missing.is_empty() {
        return Ok(None);
    }
    let tree = work.join("netbase");
    let etc = tree.join("etc");
    fs::create_dir_all(&etc).map_err(io_err("creating the netbase layer"))?;
    for (path, builtin) in missing {
        let dst = tree.join(path.trim_start_matches('/'));
        fs::write(&dst, rootfs_builder::netbase_file(path, builtin))
            .map_err(io_err("creating the netbase layer"))?;
    }
    put_layer(
        store,
        "netbase-layer",
        &tree,
        "",
        Source::Tree,
        "packing the netbase layer",
    )
    .map(Some)
}

/// A label of a stored image's config.
fn image_label(store: &Store, manifest_digest: &str, label: &str) -> Option<String> {
    let m: serde_json::Value =
        serde_json::from_slice(&store.read_blob(manifest_digest, 4 << 20).ok()?).ok()?;
    let c: serde_json::Value = serde_json::from_slice(
        &store
            .read_blob(m["config"]["digest"].as_str()?, 4 << 20)
            .ok()?,
    )
    .ok()?;
    c["config"]["Labels"][label].as_str().map(String::from)
}
