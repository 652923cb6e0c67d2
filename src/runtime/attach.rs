//! What runs beside the sandbox, attached while its init waits for the start signal:
//! pasta, the egress proxy, `-i`'s terminal; and, for a warm sandbox, the wait for its
//! interpreter and its claim. Descriptors come from the executor over the status socket.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use super::command::proxied;
use super::inputs::input_err;
use super::{Claim, Created, Mode, RunCtx, RuntimeError, Warm, io_err, mark, stage, terminal};
use crate::sys;

/// What runs beside the sandbox, attached while its init waits for the start signal (so
/// the script never runs without it): pasta (`--network`), the egress proxy
/// (`--allow-net`, on the listening socket the init made in the sandbox's namespace;
/// dropping it kills it), and `-i`'s terminal (the sandbox's master; the init kept no
/// copy) with pysandbox's own in raw mode while `raw_mode` lives.
pub(super) struct Attached {
    pub(super) proxy: Option<crate::net::proxy::Proxy>,
    pub(super) pty: Option<OwnedFd>,
    pub(super) raw_mode: Option<terminal::RawMode>,
}

pub(super) fn attach(r: &RunCtx, c: &Created) -> Result<Attached, RuntimeError> {
    if let Some(pasta) = r.pasta {
        connect(r, pasta, &c.status_r)?;
        mark("network up");
    }
    let proxy = if proxied(r.policy) {
        let listener = receive_fd(&c.status_r, b"proxy 0\n")?;
        let run_as = match r.mode {
            Mode::Root { sandbox, .. } => Some((sandbox.uid, sandbox.gid)),
            Mode::Rootless => None,
        };
        let p = crate::net::proxy::start(listener, &r.policy.allow_net, run_as)?;
        mark("proxy up");
        Some(p)
    } else {
        None
    };
    let (pty, raw_mode) = if r.policy.interactive {
        let master = receive_fd(&c.status_r, b"pty 0\n")?;
        let raw =
            terminal::RawMode::enter().map_err(io_err("putting your terminal in raw mode"))?;
        (Some(master), Some(raw))
    } else {
        (None, None)
    };
    Ok(Attached {
        proxy,
        pty,
        raw_mode,
    })
}

/// Starts pasta in the init's namespaces (sent by the executor).
fn connect(r: &RunCtx, pasta: &Path, status: &OwnedFd) -> Result<(), RuntimeError> {
    let (netns, pidns) = receive_namespaces(status)?;
    let target = crate::net::Target {
        netns,
        pidns,
        run_dir: &r.mnt.join("net"),
        sandbox_ids: match r.mode {
            Mode::Root { sandbox, .. } => Some((sandbox.uid, sandbox.gid)),
            Mode::Rootless => None,
        },
    };
    Ok(crate::net::start(pasta, &target)?)
}

/// How long a warm interpreter may take to start (an image's first start can be slow
/// on a loaded host; a pool never waits for it on a claim).
const WARM_START: std::time::Duration = std::time::Duration::from_secs(120);

/// A started warm sandbox: waits for its interpreter's "ready" byte, tells the pool,
/// waits for the claim and stages the claim's files.
pub(super) fn warm_up(
    out: &OwnedFd,
    pidfd: &OwnedFd,
    claim_dir: Option<&Path>,
    w: &mut dyn Warm,
) -> Result<Claim, RuntimeError> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let not_started = || input_err("the sandbox's interpreter did not start".into());
    let mut fds = [
        PollFd::new(out.as_fd(), PollFlags::POLLIN),
        PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
    ];
    let ms = PollTimeout::try_from(WARM_START.as_millis() as i32).unwrap_or(PollTimeout::MAX);
    match poll(&mut fds, ms) {
        Ok(n) if n > 0 => {}
        _ => return Err(not_started()),
    }
    let mut byte = [0u8; 1];
    match nix::unistd::read(out.as_raw_fd(), &mut byte) {
        Ok(1) if byte[0] == 0x06 => {}
        _ => return Err(not_started()),
    }
    mark("interpreter ready");
    w.ready().map_err(io_err("announcing the sandbox"))?;
    let claim = w
        .claim(pidfd.as_fd())
        .map_err(io_err("waiting for the run"))?
        .ok_or_else(|| input_err("the sandbox was not claimed".into()))?;
    mark("claimed");
    if let Some(dir) = claim_dir {
        stage::write_claim_files(dir, &claim.files)?;
    }
    Ok(claim)
}

/// The init's network and pid namespaces, sent by the executor before `build()` returned.
fn receive_namespaces(status: &OwnedFd) -> Result<(OwnedFd, OwnedFd), RuntimeError> {
    let net = receive_fd(status, b"netns 0\n")?;
    let pid = receive_fd(status, b"pidns 0\n")?;
    Ok((net, pid))
}

/// One descriptor the executor sent with `tag` before `build()` returned.
pub(super) fn receive_fd(status: &OwnedFd, tag: &[u8]) -> Result<OwnedFd, RuntimeError> {
    let step = "receiving the sandbox's namespaces and sockets";
    // Already sent, before build() returned: never wait long for it.
    let mut fds = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(status),
        nix::poll::PollFlags::POLLIN,
    )];
    if !matches!(nix::poll::poll(&mut fds, 2000u16), Ok(n) if n > 0) {
        return Err(io_err(step)(io::Error::from(io::ErrorKind::TimedOut)));
    }
    let mut buf = [0u8; 16];
    match sys::recv_with_fd(status.as_raw_fd(), &mut buf) {
        Ok((n, Some(fd))) if buf[..n] == *tag => Ok(fd),
        Ok(_) => Err(io_err(step)(io::Error::other(format!(
            "the sandbox's init did not send {}",
            String::from_utf8_lossy(tag).trim()
        )))),
        Err(e) => Err(io_err(step)(e)),
    }
}
