//! Images as files: importing an OCI image layout directory, an OCI archive (a tar of a
//! layout) or a `docker save` archive (manifest.json + layer tars; the archive and its
//! layers gzip-compressed or not) into the store. (Layouts are written by
//! `rootfs_builder::oci::Layout`.)
//!
//! An archive is read in one pass, each file streaming straight into the store (a blob
//! named by its digest is verified on the way), so nothing is extracted to a temporary
//! directory. Every blob an image needs is checked against its descriptor (digest and
//! size); what the archive's paths say is never used to write anywhere.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use oci_spec::image::Descriptor;
use serde::Deserialize;

use super::store::ProgressReader;
use super::store::{
    self, DOCKER_LIST, DOCKER_MANIFEST, MAX_JSON, OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_LAYER_GZIP,
    OCI_MANIFEST, Progress, REF_NAME, RawDescriptor, Store, StoreError, io_err,
};
use super::unpack;

/// Annotation containerd (and `docker save` since 25) puts the full image name in.
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Whether `path` looks like something `import` takes: a directory holding an
/// `oci-layout` file, or a tar (gzip or not) holding an OCI layout or a `docker save`.
pub fn is_importable(path: &Path) -> bool {
    let Ok(md) = fs::metadata(path) else {
        return false;
    };
    if md.is_dir() {
        return path.join("oci-layout").is_file();
    }
    if !md.is_file() {
        return false;
    }
    let Ok(f) = File::open(path) else {
        return false;
    };
    let Ok(mut r) = archive_reader(f) else {
        return false;
    };
    // Headers only; give up after a while (a gzip archive is decompressed to scan it).
    let mut seen = 0u32;
    let mut found = false;
    let mut limited = (&mut r).take(256 << 20);
    let _ = for_each_entry(&mut limited, path, &mut |p, _, _, _, _| {
        seen += 1;
        found = matches!(p, "oci-layout" | "index.json" | "manifest.json")
            || p.starts_with("blobs/sha256/");
        Ok(!found && seen < 10_000)
    });
    found
}

/// Imports an OCI image layout directory, an OCI archive or a `docker save` archive into
/// the store and tags what it holds; returns (name, manifest digest) of each image.
///
/// Names come from the archive (`io.containerd.image.name`, then
/// `org.opencontainers.image.ref.name`, `RepoTags` for docker archives); a bare tag there
/// (skopeo's `oci:DIR:TAG` writes just "TAG") becomes `NAME:TAG`, NAME being
/// `fallback_name` or else the file name without its extensions; an image without any
/// name is called `fallback_name` (or the file name). For an image index, the linux
/// image of this machine's architecture is imported.
pub fn import(
    store: &Store,
    path: &Path,
    fallback_name: Option<&str>,
    progress: &dyn Progress,
) -> Result<Vec<(String, String)>, StoreError> {
    let fail = |why: String| StoreError::Import {
        path: path.to_owned(),
        why,
    };
    let md = fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    let namer = Namer {
        fallback: fallback_name.map(String::from),
        stem: stem_of(path),
    };
    // Writers hold the gc lock shared until tagged: prune cannot take the blobs between.
    let _gc = store.write_guard()?;
    let found = if md.is_dir() {
        if !path.join("oci-layout").is_file() {
            return Err(fail(
                "a directory to import must be an OCI image layout (it has no oci-layout file)"
                    .into(),
            ));
        }
        import_dir(store, path, &namer, progress)?
    } else {
        import_archive(store, path, &namer, progress)?
    };
    if found.is_empty() {
        return Err(fail("it holds no container image".into()));
    }
    for (name, digest) in &found {
        store.tag(name, digest)?;
    }
    Ok(found)
}

struct Namer {
    fallback: Option<String>,
    stem: String,
}

impl Namer {
    fn base(&self) -> &str {
        self.fallback.as_deref().unwrap_or(&self.stem)
    }

    fn name(&self, annotations: Option<&HashMap<String, String>>, unnamed: &mut usize) -> String {
        if let Some(a) = annotations {
            if let Some(n) = a.get(CONTAINERD_NAME).filter(|n| !n.is_empty()) {
                return n.clone();
            }
            if let Some(r) = a.get(REF_NAME).filter(|n| !n.is_empty()) {
                if r.contains('/') || r.contains(':') || r.contains('@') {
                    return r.clone();
                }
                return format!("{}:{r}", self.base());
            }
        }
        self.unnamed(unnamed)
    }

    fn unnamed(&self, unnamed: &mut usize) -> String {
        *unnamed += 1;
        if *unnamed == 1 {
            self.base().to_string()
        } else {
            format!("{}-{unnamed}", self.base())
        }
    }
}

/// `numpy` of `/x/numpy.oci.tar.gz`, lowercased and cleaned into a valid name.
fn stem_of(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut s = name.as_str();
    loop {
        let before = s;
        for ext in [".tar", ".gz", ".tgz", ".oci", ".docker"] {
            if let Some(x) = s.strip_suffix(ext) {
                s = x;
            }
        }
        if s == before {
            break;
        }
    }
    let clean: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let clean = clean.trim_start_matches(['.', '-']).to_string();
    if clean.is_empty() {
        "imported".into()
    } else {
        clean
    }
}

fn import_dir(
    store: &Store,
    dir: &Path,
    namer: &Namer,
    progress: &dyn Progress,
) -> Result<Vec<(String, String)>, StoreError> {
    let idx_path = dir.join("index.json");
    let idx_raw = read_file_capped(&idx_path)?;
    let mut fetch = |d: &str, size: u64| -> Result<(), StoreError> {
        let p = dir.join("blobs/sha256").join(store::digest_hex(d)?);
        let f = File::open(&p).map_err(|e| StoreError::Import {
            path: dir.to_owned(),
            why: format!("blob {d} is missing from the layout ({e})"),
        })?;
        progress.start(&format!("importing {}", short(d)), Some(size));
        let mut r = ProgressReader { inner: f, progress };
        let res = store.put_blob(&mut r, Some((d, size)));
        progress.finish();
        res.map(|_| ())
    };
    from_index(store, &idx_raw, &idx_path, &mut fetch, namer)
}

fn import_archive(
    store: &Store,
    path: &Path,
    namer: &Namer,
    progress: &dyn Progress,
) -> Result<Vec<(String, String)>, StoreError> {
    let f = File::open(path).map_err(io_err(path))?;
    let total = f.metadata().map(|m| m.len()).ok();
    progress.start(&format!("importing {}", path.display()), total);
    let counted = ProgressReader { inner: f, progress };
    let mut r = archive_reader(counted).map_err(io_err(path))?;
    // Archive path -> stored blob; links -> what they point at.
    let mut files: HashMap<String, (String, u64)> = HashMap::new();
    let mut links: HashMap<String, String> = HashMap::new();
    let mut index_json = None;
    let mut manifest_json = None;
    let res = for_each_entry(&mut r, path, &mut |p, kind, link, data, size| {
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => match p {
                "index.json" => index_json = Some(read_capped(data, size, path, p)?),
                "manifest.json" => manifest_json = Some(read_capped(data, size, path, p)?),
                "oci-layout" | "repositories" | "VERSION" | "json" => {}
                _ if p.ends_with("/VERSION") || p.ends_with("/json") => {}
                _ => {
                    let named = p
                        .strip_prefix("blobs/sha256/")
                        .map(|h| format!("sha256:{h}"))
                        .filter(|d| store::digest_hex(d).is_ok());
                    let stored = match &named {
                        Some(d) => store.put_blob(data, Some((d, size)))?,
                        None => store.put_blob(data, None)?,
                    };
                    files.insert(p.to_string(), stored);
                }
            },
            tar::EntryType::Symlink => {
                if let Some(l) = link {
                    let base = p.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                    links.insert(p.to_string(), clean_rel(&format!("{base}/{l}")));
                }
            }
            tar::EntryType::Link => {
                if let Some(l) = link {
                    links.insert(p.to_string(), clean_rel(&l));
                }
            }
            _ => {}
        }
        Ok(true)
    });
    progress.finish();
    res?;
    let lookup = |p: &str| -> Result<(String, u64), StoreError> {
        let mut p = clean_rel(p);
        for _ in 0..16 {
            if let Some(x) = files.get(&p) {
                return Ok(x.clone());
            }
            match links.get(&p) {
                Some(next) => p = next.clone(),
                None => break,
            }
        }
        Err(StoreError::Import {
            path: path.to_owned(),
            why: format!("the archive's manifest names {p:?}, which the archive does not hold"),
        })
    };
    if let Some(raw) = manifest_json {
        return from_docker_manifest(store, &raw, path, &lookup, namer);
    }
    let Some(idx_raw) = index_json else {
        return Err(StoreError::Import {
            path: path.to_owned(),
            why: "not an image archive: it has neither index.json (OCI) nor manifest.json (docker save)".into(),
        });
    };
    let mut fetch = |d: &str, size: u64| -> Result<(), StoreError> {
        let hexd = store::digest_hex(d)?;
        match files.get(&format!("blobs/sha256/{hexd}")) {
            Some((_, n)) if *n == size => Ok(()),
            Some((_, n)) => Err(StoreError::Import {
                path: path.to_owned(),
                why: format!("blob {d} is {n} bytes where its descriptor says {size}"),
            }),
            None => Err(StoreError::Import {
                path: path.to_owned(),
                why: format!("blob {d} is missing from the archive"),
            }),
        }
    };
    from_index(store, &idx_raw, path, &mut fetch, namer)
}

/// The images an OCI `index.json` names: each manifest (for a nested index or a
/// multi-platform index, the one for this machine), its blobs brought in by `fetch`.
fn from_index(
    store: &Store,
    idx_raw: &[u8],
    source: &Path,
    fetch: &mut dyn FnMut(&str, u64) -> Result<(), StoreError>,
    namer: &Namer,
) -> Result<Vec<(String, String)>, StoreError> {
    let shown = source.display().to_string();
    let idx = store::parse_index(idx_raw, &shown)?;
    let is_manifest = |d: &Descriptor| {
        matches!(
            d.media_type().to_string().as_str(),
            OCI_MANIFEST | DOCKER_MANIFEST
        )
    };
    let is_index =
        |d: &Descriptor| matches!(d.media_type().to_string().as_str(), OCI_INDEX | DOCKER_LIST);
    // (descriptor carrying the name, manifest descriptor)
    let mut picked: Vec<(Descriptor, Descriptor)> = Vec::new();
    let platformed = idx
        .manifests()
        .iter()
        .filter(|d| is_manifest(d) && d.platform().is_some())
        .count();
    if platformed > 1 {
        let m = store::pick_platform(&idx, &shown)?;
        let named = if ann_name(&m).is_some() {
            m.clone()
        } else {
            idx.manifests()
                .iter()
                .find(|d| ann_name(d).is_some())
                .cloned()
                .unwrap_or_else(|| m.clone())
        };
        picked.push((named, m));
    } else {
        for d in idx.manifests() {
            if is_index(d) {
                let dd = d.digest().to_string();
                fetch(&dd, d.size())?;
                let raw = store.read_blob(&dd, MAX_JSON)?;
                let inner = store::parse_index(&raw, &dd)?;
                picked.push((d.clone(), store::pick_platform(&inner, &dd)?));
            } else if is_manifest(d) {
                picked.push((d.clone(), d.clone()));
            }
        }
    }
    let mut out = Vec::new();
    let mut unnamed = 0;
    for (named, m) in picked {
        let md = m.digest().to_string();
        fetch(&md, m.size())?;
        let man = store.manifest(&md)?;
        for l in man.layers() {
            store::check_layer_type(l)?;
        }
        let c = man.config();
        fetch(c.digest().as_ref(), c.size())?;
        for l in man.layers() {
            fetch(l.digest().as_ref(), l.size())?;
        }
        out.push((namer.name(named.annotations().as_ref(), &mut unnamed), md));
    }
    Ok(out)
}

fn ann_name(d: &Descriptor) -> Option<&String> {
    let a = d.annotations().as_ref()?;
    a.get(CONTAINERD_NAME).or_else(|| a.get(REF_NAME))
}

/// Archive path -> (digest, size) of the stored blob.
type Lookup<'a> = dyn Fn(&str) -> Result<(String, u64), StoreError> + 'a;

#[derive(Deserialize)]
struct DockerImage {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// The images of a `docker save` manifest.json, each given a new OCI manifest over the
/// stored config and layers.
fn from_docker_manifest(
    store: &Store,
    raw: &[u8],
    path: &Path,
    lookup: &Lookup,
    namer: &Namer,
) -> Result<Vec<(String, String)>, StoreError> {
    let images: Vec<DockerImage> = serde_json::from_slice(raw).map_err(|e| StoreError::Import {
        path: path.to_owned(),
        why: format!("manifest.json is not a docker save manifest: {e}"),
    })?;
    let mut out = Vec::new();
    let mut unnamed = 0;
    for img in images {
        let (cd, cs) = lookup(&img.config)?;
        if cs > MAX_JSON {
            return Err(StoreError::TooLarge {
                what: format!("image config {}", img.config),
                max: MAX_JSON,
            });
        }
        let mut layers = Vec::new();
        for l in &img.layers {
            let (ld, ls) = lookup(l)?;
            let mut head = [0u8; 4];
            let mut f = File::open(store.blob_path(&ld)?).map_err(|e| StoreError::Read {
                what: format!("blob {ld}"),
                source: e,
            })?;
            let n = f.read(&mut head).unwrap_or(0);
            let media_type = if n >= 2 && head[..2] == [0x1f, 0x8b] {
                OCI_LAYER_GZIP
            } else if n >= 4 && head == [0x28, 0xb5, 0x2f, 0xfd] {
                "application/vnd.oci.image.layer.v1.tar+zstd"
            } else {
                OCI_LAYER
            };
            layers.push(RawDescriptor {
                media_type: media_type.to_string(),
                digest: ld,
                size: ls,
            });
        }
        let digest = store::put_manifest(
            store,
            RawDescriptor {
                media_type: OCI_CONFIG.to_string(),
                digest: cd,
                size: cs,
            },
            layers,
        )?;
        let names: Vec<String> = img
            .repo_tags
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| vec![namer.unnamed(&mut unnamed)]);
        for n in names {
            out.push((n, digest.clone()));
        }
    }
    Ok(out)
}

/// The archive's bytes, gunzipped when it is compressed.
fn archive_reader<'a, R: Read + 'a>(r: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut br = BufReader::with_capacity(256 << 10, r);
    let gz = br.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    Ok(if gz {
        Box::new(flate2::bufread::MultiGzDecoder::new(br))
    } else {
        Box::new(br)
    })
}

type EntryFn<'a> = dyn FnMut(&str, tar::EntryType, Option<String>, &mut dyn Read, u64) -> Result<bool, StoreError>
    + 'a;

/// Calls `f(path, type, link target, data, size)` for each entry of a tar (paths cleaned,
/// GNU long names and PAX paths applied, extension headers capped at 1 MiB) until it
/// returns false.
fn for_each_entry(r: &mut dyn Read, source: &Path, f: &mut EntryFn) -> Result<(), StoreError> {
    let bad = |e: io::Error| StoreError::Import {
        path: source.to_owned(),
        why: format!("not a readable tar archive: {e}"),
    };
    let mut ar = tar::Archive::new(r);
    let entries = ar.entries().map_err(bad)?.raw(true);
    let mut long_name: Option<Vec<u8>> = None;
    let mut long_link: Option<Vec<u8>> = None;
    for e in entries {
        let mut e = e.map_err(bad)?;
        let kind = e.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
                | tar::EntryType::XHeader
                | tar::EntryType::XGlobalHeader
        ) {
            if e.size() > 1 << 20 {
                return Err(StoreError::Import {
                    path: source.to_owned(),
                    why: format!("an extension header of {} bytes", e.size()),
                });
            }
            let mut v = Vec::new();
            e.read_to_end(&mut v).map_err(bad)?;
            while v.last() == Some(&0) {
                v.pop();
            }
            match kind {
                tar::EntryType::GNULongName => long_name = Some(v),
                tar::EntryType::GNULongLink => long_link = Some(v),
                tar::EntryType::XHeader => {
                    let (p, l) = unpack::pax_paths(&v).map_err(|why| StoreError::Import {
                        path: source.to_owned(),
                        why,
                    })?;
                    long_name = p.or(long_name);
                    long_link = l.or(long_link);
                }
                _ => {}
            }
            continue;
        }
        let raw = long_name
            .take()
            .unwrap_or_else(|| e.path_bytes().into_owned());
        let link = long_link
            .take()
            .or_else(|| e.link_name_bytes().map(|c| c.into_owned()))
            .map(|l| String::from_utf8_lossy(&l).into_owned());
        let p = clean_rel(&String::from_utf8_lossy(&raw));
        let size = e.size();
        if !f(&p, kind, link, &mut e, size)? {
            break;
        }
    }
    Ok(())
}

/// A path inside an archive, cleaned lexically (never used to write anywhere).
fn clean_rel(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

fn read_capped(
    r: &mut dyn Read,
    size: u64,
    path: &Path,
    what: &str,
) -> Result<Vec<u8>, StoreError> {
    if size > MAX_JSON {
        return Err(StoreError::TooLarge {
            what: format!("{what} in {}", path.display()),
            max: MAX_JSON,
        });
    }
    let mut v = Vec::with_capacity(size as usize);
    r.take(MAX_JSON)
        .read_to_end(&mut v)
        .map_err(|e| StoreError::Import {
            path: path.to_owned(),
            why: format!("reading {what}: {e}"),
        })?;
    Ok(v)
}

fn read_file_capped(p: &Path) -> Result<Vec<u8>, StoreError> {
    let f = File::open(p).map_err(io_err(p))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    read_capped(&mut &f, len, p, "index.json")
}

fn short(d: &str) -> &str {
    &d[..d.len().min(19)]
}
