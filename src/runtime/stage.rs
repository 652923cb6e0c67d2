//! The sandbox's file system, staged in pysandbox's private tmpfs before the container
//! exists: read-only views of the image, the script's folder and the data folder, the
//! capped output overlay, the image build's conda layer, and resolv.conf.

use std::fs;
use std::path::{Path, PathBuf};

use super::{Mode, RunCtx, RuntimeError, host, io_err, output};
use crate::policy::Network;
use crate::spec::{self, Bind};

/// What staging made: the root file system, the binds for the spec, the writable
/// overlays to merge after the run (output, `--src-writable`'s source, `--keep`'s /tmp
/// and HOME), and the folder at `/usr/app/src` a pool worker fills at claim.
pub(super) struct Staged {
    pub rootfs: PathBuf,
    pub binds: Vec<Bind>,
    pub overlay: Option<output::OutputOverlay>,
    pub src_overlay: Option<output::OutputOverlay>,
    /// `--keep`: the kept run's folder, and the overlays of /tmp and HOME to merge into it.
    pub kept_dir: Option<PathBuf>,
    pub kept: Vec<output::OutputOverlay>,
    pub warnings: Vec<String>,
    pub claim_dir: Option<PathBuf>,
}

/// Stages everything under `r.mnt` (a private tmpfs). `warm`: an empty folder at
/// `/usr/app/src` (read-only inside) that pysandbox fills when the run is claimed.
pub(super) fn stage(
    r: &RunCtx,
    stage: &host::Staging,
    map_ns: Option<&std::os::fd::OwnedFd>,
    warm: bool,
) -> Result<Staged, RuntimeError> {
    let mut s = Stager::new(r, stage)?;
    // The binds are made in this order, which is the order of their mounts.
    let (kept_dir, kept) = s.kept_folders()?;
    let (src_overlay, claim_dir) = s.source_folder(warm)?;
    s.data_folder()?;
    s.conda_layer(map_ns)?;
    let overlay = s.output_folder()?;
    s.resolv_conf()?;
    Ok(Staged {
        rootfs: s.rootfs,
        binds: s.binds,
        overlay,
        src_overlay,
        kept_dir,
        kept,
        warnings: s.warnings,
        claim_dir,
    })
}

/// Staging in progress: the bundle's root file system, and the binds and warnings so far.
struct Stager<'a> {
    r: &'a RunCtx<'a>,
    stage: &'a host::Staging<'a>,
    bundle: PathBuf,
    rootfs: PathBuf,
    binds: Vec<Bind>,
    warnings: Vec<String>,
}

impl<'a> Stager<'a> {
    /// Starts with the root file system: a read-only view of the image.
    fn new(r: &'a RunCtx<'a>, stage: &'a host::Staging<'a>) -> Result<Self, RuntimeError> {
        let bundle = r.mnt.join("bundle");
        let rootfs = bundle.join("rootfs");
        host::mkdir(&rootfs, 0o755)?;
        let warning = stage.read_only_view(&r.image.rootfs, &rootfs, false, None)?;
        Ok(Stager {
            r,
            stage,
            bundle,
            rootfs,
            binds: Vec::new(),
            warnings: warning.into_iter().collect(),
        })
    }

    fn bind(&mut self, source: PathBuf, dest: &'static str, writable: bool) {
        self.binds.push(Bind {
            source,
            dest,
            writable,
        })
    }

    /// A new folder `name` of the bundle.
    fn folder(&self, name: &str) -> Result<PathBuf, RuntimeError> {
        let t = self.bundle.join(name);
        host::mkdir(&t, 0o755)?;
        Ok(t)
    }

    /// A writable host folder (output/, and the source folder with --src-writable): an
    /// overlay over a read-only view, its upper layer a tmpfs of `cap` bytes merged back
    /// after.
    fn writable_capped(
        &self,
        host_dir: &Path,
        name: &str,
        cap: u64,
    ) -> Result<(PathBuf, output::OutputOverlay), RuntimeError> {
        let (upper_owner, new_file_owner) = match self.r.mode {
            Mode::Root {
                sandbox, caller, ..
            } => (Some(sandbox), (caller.uid != 0).then_some(caller)),
            Mode::Rootless => (None, None),
        };
        let t = self.folder(name)?;
        let o = output::OutputOverlay::stage(
            self.stage,
            host_dir,
            &t,
            &self.r.mnt.join(name),
            cap,
            upper_owner,
            new_file_owner,
        )?;
        Ok((t, o))
    }

    /// [`Stager::writable_capped`] at `--output-limit`.
    fn writable(
        &self,
        host_dir: &Path,
        name: &str,
    ) -> Result<(PathBuf, output::OutputOverlay), RuntimeError> {
        self.writable_capped(host_dir, name, self.r.policy.limits.output_cap())
    }

    /// --keep: /tmp and HOME over the kept run's (empty) folders, merged into them after
    /// the run; --from: over a kept run's folders, never merged. Capped like the tmpfs
    /// they replace (the binds come after those mounts and cover them).
    fn kept_folders(
        &mut self,
    ) -> Result<(Option<PathBuf>, Vec<output::OutputOverlay>), RuntimeError> {
        let policy = self.r.policy;
        let kept_dir = if policy.keep {
            Some(
                crate::runs::create(self.r.id)
                    .map_err(|e| super::inputs::input_err(e.to_string()))?,
            )
        } else {
            None
        };
        let mut kept = Vec::new();
        if let Some(state) = kept_dir.as_ref().or(policy.from.as_ref()) {
            let l = &policy.limits;
            for (name, dest, cap) in [
                ("tmp", "/tmp", l.tmp_size()),
                ("home", spec::HOME_DIR, l.home_size()),
            ] {
                let (t, o) = self.writable_capped(&state.join(name), name, cap)?;
                kept.push(o);
                self.bind(t, dest, true);
            }
        }
        Ok((kept_dir, kept))
    }

    /// `/usr/app/src`: the script's folder (read-only, or writable with --src-writable),
    /// a staged script, or (`warm`) an empty folder filled at claim. Returns the source
    /// folder's overlay and the claim folder.
    fn source_folder(
        &mut self,
        warm: bool,
    ) -> Result<(Option<output::OutputOverlay>, Option<PathBuf>), RuntimeError> {
        let inputs = self.r.inputs;
        let mut src_overlay = None;
        let mut claim_dir = None;
        if let Some(src) = &inputs.src_dir {
            if self.r.policy.src_writable {
                let (t, o) = self.writable(src, "src")?;
                src_overlay = Some(o);
                self.warnings.push(format!(
                    "--src-writable: the script can modify its own source folder {}: its changes are written back when it ends",
                    src.display()
                ));
                self.bind(t, spec::SRC_DIR, true);
            } else {
                let t = self.folder("src")?;
                let w = self.stage.read_only_view(src, &t, true, None)?;
                self.warnings.extend(w);
                self.bind(t, spec::SRC_DIR, false);
            }
        } else if let Some((name, body)) = &inputs.staged_script {
            let t = self.folder("script")?;
            fs::write(t.join(name), body).map_err(io_err("staging the script"))?;
            self.bind(t, spec::SRC_DIR, false);
        } else if warm {
            let t = self.folder("script")?;
            claim_dir = Some(t.clone());
            self.bind(t, spec::SRC_DIR, false);
        }
        Ok((src_overlay, claim_dir))
    }

    /// The data folder, read-only.
    fn data_folder(&mut self) -> Result<(), RuntimeError> {
        let inputs = self.r.inputs;
        if let Some(data) = &inputs.data {
            let t = self.folder("data")?;
            // With --output elsewhere, the data folder may have no output/ to mount it on.
            let mount_point = inputs.output.is_some().then_some("output");
            let w = self.stage.read_only_view(data, &t, true, mount_point)?;
            self.warnings.extend(w);
            self.bind(t, spec::DATA_DIR, false);
        }
        Ok(())
    }

    /// The image build's writable `/opt/conda` (an overlay whose upper layer is a host
    /// folder).
    fn conda_layer(&mut self, map_ns: Option<&std::os::fd::OwnedFd>) -> Result<(), RuntimeError> {
        let r = self.r;
        if let Some(layer) = &r.policy.conda_layer {
            let t = self.folder("conda")?;
            output::stage_layer(
                &host::Staging {
                    idmap: map_ns,
                    ..*self.stage
                },
                &r.image.rootfs.join("opt/conda"),
                layer,
                &t,
                match r.mode {
                    Mode::Root { sandbox, .. } => Some(sandbox),
                    Mode::Rootless => None,
                },
            )?;
            self.bind(t, "/opt/conda", true);
        }
        Ok(())
    }

    /// The output folder, writable and capped.
    fn output_folder(&mut self) -> Result<Option<output::OutputOverlay>, RuntimeError> {
        let Some(out) = &self.r.inputs.output else {
            return Ok(None);
        };
        let (t, o) = self.writable(out, "output")?;
        self.bind(t, spec::OUTPUT_DIR, true);
        Ok(Some(o))
    }

    /// Name resolution: the host's resolv.conf with the host's network; with pasta, one
    /// naming pasta's DNS forwarder (the host's resolvers may be loopback addresses,
    /// which are the sandbox's own loopback there).
    fn resolv_conf(&mut self) -> Result<(), RuntimeError> {
        let network = self.r.policy.network;
        if network != Network::None
            && self.rootfs.join("etc/resolv.conf").is_file()
            && let Some(host_resolv) = fs::canonicalize("/etc/resolv.conf")
                .ok()
                .filter(|p| p.is_file())
        {
            let t = self.bundle.join("resolv.conf");
            if network == Network::Pasta {
                let host = fs::read_to_string(&host_resolv).unwrap_or_default();
                fs::write(&t, crate::net::resolv_conf(&host))
                    .map_err(io_err("staging resolv.conf"))?;
            } else {
                fs::write(&t, b"").map_err(io_err("staging resolv.conf"))?;
                self.stage.file(&host_resolv, &t)?;
            }
            self.bind(t, "/etc/resolv.conf", false);
        }
        Ok(())
    }
}

/// Writes a claim's files into the (empty) folder that is `/usr/app/src` inside: plain
/// relative names only, created new (never through a link), read-only for the sandbox.
pub(super) fn write_claim_files(
    dir: &Path,
    files: &[(String, Vec<u8>)],
) -> Result<(), RuntimeError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    for (name, body) in files {
        let rel = Path::new(name);
        if !crate::policy::is_plain_relative(rel) {
            return Err(super::inputs::input_err(format!(
                "file name {name:?} is not a plain relative path"
            )));
        }
        let target = dir.join(rel);
        if let Some(parent) = target.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(io_err("staging the request's files"))?;
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&target)
            .map_err(|e| {
                super::inputs::input_err(format!("file {name:?} cannot be staged: {e}"))
            })?;
        std::io::Write::write_all(&mut f, body).map_err(io_err("staging the request's files"))?;
    }
    Ok(())
}
