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
    let (policy, inputs, mode, mnt) = (r.policy, r.inputs, r.mode, r.mnt);
    let bundle = mnt.join("bundle");
    let mut warnings = Vec::new();
    let rootfs = bundle.join("rootfs");
    host::mkdir(&rootfs, 0o755)?;
    warnings.extend(stage.read_only_view(&r.image.rootfs, &rootfs, false, None)?);

    let mut binds = Vec::new();
    let mut claim_dir = None;
    let mut bind = |source: PathBuf, dest: &'static str, writable: bool| {
        binds.push(Bind {
            source,
            dest,
            writable,
        })
    };
    // Writable host folders (output/, and the source folder with --src-writable): an
    // overlay over a read-only view, its upper layer a capped tmpfs merged back after.
    let (upper_owner, new_file_owner) = match mode {
        Mode::Root {
            sandbox, caller, ..
        } => (Some(sandbox), (caller.uid != 0).then_some(caller)),
        Mode::Rootless => (None, None),
    };
    let writable_capped = |host_dir: &Path, name: &str, cap: u64| {
        let t = bundle.join(name);
        host::mkdir(&t, 0o755)?;
        let o = output::OutputOverlay::stage(
            stage,
            host_dir,
            &t,
            &mnt.join(name),
            cap,
            upper_owner,
            new_file_owner,
        )?;
        Ok::<_, RuntimeError>((t, o))
    };
    let writable =
        |host_dir: &Path, name: &str| writable_capped(host_dir, name, policy.limits.output_cap());
    // --keep: /tmp and HOME over the kept run's (empty) folders, merged into them after
    // the run; --from: over a kept run's folders, never merged. Capped like the tmpfs
    // they replace (the binds come after those mounts and cover them).
    let kept_dir = if policy.keep {
        Some(crate::runs::create(r.id).map_err(|e| super::inputs::input_err(e.to_string()))?)
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
            let (t, o) = writable_capped(&state.join(name), name, cap)?;
            kept.push(o);
            bind(t, dest, true);
        }
    }
    let mut src_overlay = None;
    if let Some(src) = &inputs.src_dir {
        if policy.src_writable {
            let (t, o) = writable(src, "src")?;
            src_overlay = Some(o);
            warnings.push(format!(
                "--src-writable: the script can modify its own source folder {}: its changes are written back when it ends",
                src.display()
            ));
            bind(t, spec::SRC_DIR, true);
        } else {
            let t = bundle.join("src");
            host::mkdir(&t, 0o755)?;
            warnings.extend(stage.read_only_view(src, &t, true, None)?);
            bind(t, spec::SRC_DIR, false);
        }
    } else if let Some((name, body)) = &inputs.staged_script {
        let t = bundle.join("script");
        host::mkdir(&t, 0o755)?;
        fs::write(t.join(name), body).map_err(io_err("staging the script"))?;
        bind(t, spec::SRC_DIR, false);
    } else if warm {
        let t = bundle.join("script");
        host::mkdir(&t, 0o755)?;
        claim_dir = Some(t.clone());
        bind(t, spec::SRC_DIR, false);
    }
    if let Some(data) = &inputs.data {
        let t = bundle.join("data");
        host::mkdir(&t, 0o755)?;
        // With --output elsewhere, the data folder may have no output/ to mount it on.
        let mount_point = inputs.output.is_some().then_some("output");
        warnings.extend(stage.read_only_view(data, &t, true, mount_point)?);
        bind(t, spec::DATA_DIR, false);
    }
    if let Some(layer) = &policy.conda_layer {
        let t = bundle.join("conda");
        host::mkdir(&t, 0o755)?;
        output::stage_layer(
            &host::Staging {
                idmap: map_ns,
                ..*stage
            },
            &r.image.rootfs.join("opt/conda"),
            layer,
            &t,
            match mode {
                Mode::Root { sandbox, .. } => Some(sandbox),
                Mode::Rootless => None,
            },
        )?;
        bind(t, "/opt/conda", true);
    }
    let mut overlay = None;
    if let Some(out) = &inputs.output {
        let (t, o) = writable(out, "output")?;
        overlay = Some(o);
        bind(t, spec::OUTPUT_DIR, true);
    }
    // Name resolution: the host's resolv.conf with the host's network; with pasta, one
    // naming pasta's DNS forwarder (the host's resolvers may be loopback addresses,
    // which are the sandbox's own loopback there).
    if policy.network != Network::None
        && rootfs.join("etc/resolv.conf").is_file()
        && let Some(host_resolv) = fs::canonicalize("/etc/resolv.conf")
            .ok()
            .filter(|p| p.is_file())
    {
        let t = bundle.join("resolv.conf");
        if policy.network == Network::Pasta {
            let host = fs::read_to_string(&host_resolv).unwrap_or_default();
            fs::write(&t, crate::net::resolv_conf(&host)).map_err(io_err("staging resolv.conf"))?;
        } else {
            fs::write(&t, b"").map_err(io_err("staging resolv.conf"))?;
            stage.file(&host_resolv, &t)?;
        }
        bind(t, "/etc/resolv.conf", false);
    }
    Ok(Staged {
        rootfs,
        binds,
        overlay,
        src_overlay,
        kept_dir,
        kept,
        warnings,
        claim_dir,
    })
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
