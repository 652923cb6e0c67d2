//! The run report from what supervision saw: the init's status line, the wait status,
//! whether the cgroup saw an OOM kill and whether the output folder filled up.

use std::io;
use std::os::fd::AsFd;
use std::path::Path;

use super::{HOST_NETWORK_WARNING, ResolvedImage, RunCtx, Status, output, stage, supervise};
use crate::policy::{Network, RunPolicy};
use crate::report::{Refusal, RunReport, RunStatus, SCHEMA_VERSION};
use crate::sys;

/// The report from what supervision saw, what the init reported, whether the cgroup saw
/// an OOM kill and whether the output folder filled up.
pub(super) fn make_report(
    id: &str,
    image: &ResolvedImage,
    supervised: &supervise::Supervised,
    status: Option<Status>,
    limits: crate::report::Limits,
    oom: bool,
    output_full: bool,
) -> RunReport {
    let ws = supervised.wait_status;
    let truncated = supervised.stdout.dropped_bytes > 0 || supervised.stderr.dropped_bytes > 0;
    let (mut status, exit_code, signal, error) = match status {
        _ if supervised.timed_out => (RunStatus::Timeout, None, None, None),
        Some(Status::Exited(0)) => (RunStatus::Ok, Some(0), None, None),
        Some(Status::Exited(c)) => (RunStatus::ExitNonzero, Some(c), None, None),
        Some(Status::Signaled(s)) => (RunStatus::Signaled, None, Some(s), None),
        Some(Status::ExecFailed(errno)) => (
            RunStatus::SandboxError,
            None,
            None,
            Some(format!(
                "the interpreter could not be started in the sandbox: {}",
                io::Error::from_raw_os_error(errno)
            )),
        ),
        Some(Status::SeccompFailed(errno)) => (
            RunStatus::SandboxError,
            None,
            None,
            Some(format!(
                "the seccomp filter could not be installed, so nothing ran: {}. Hint: the kernel needs CONFIG_SECCOMP_FILTER",
                io::Error::from_raw_os_error(errno)
            )),
        ),
        // No report from the init: it was killed (pysandbox's SIGKILL) or died early.
        None if libc::WIFSIGNALED(ws) => {
            (RunStatus::Signaled, None, Some(libc::WTERMSIG(ws)), None)
        }
        None => match libc::WEXITSTATUS(ws) {
            0 => (RunStatus::Ok, Some(0), None, None),
            c => (RunStatus::ExitNonzero, Some(c), None, None),
        },
    };
    // A kill by the cgroup's OOM killer is not a crash.
    if oom && status == RunStatus::Signaled && signal == Some(libc::SIGKILL) {
        status = RunStatus::Oom;
    }
    if (truncated || output_full) && matches!(status, RunStatus::Ok | RunStatus::ExitNonzero) {
        status = RunStatus::OutputLimit;
    }
    RunReport {
        schema: SCHEMA_VERSION,
        id: id.to_string(),
        image: image.name.clone(),
        image_digest: image.digest.clone(),
        status,
        exit_code,
        signal,
        interrupted_by: supervised.interrupted.map(|s| s as i32),
        stdout: supervised.stdout.clone(),
        stderr: supervised.stderr.clone(),
        wall_ms: supervised.wall.as_millis() as u64,
        cpu_ms: supervised.cpu.as_millis() as u64,
        max_rss_bytes: supervised.max_rss,
        limits,
        seccomp_refused: Refusal::tally(&supervised.refused),
        error,
        warnings: Vec::new(),
        pool: None,
        network: None,
    }
}

/// The report's warnings: what staging and the inputs said, then every limit or budget
/// that is not what was asked (`notes`: staging's warnings, budgets not capped), and
/// what the merges back into host folders (`merges`: what, how, where) left out.
pub(super) fn add_warnings(
    report: &mut RunReport,
    policy: &RunPolicy,
    cg: &crate::limits::Placement,
    notes: (Vec<String>, Vec<String>),
    merges: &[(&str, &output::Merged, Option<&Path>)],
) {
    let (staged, not_capped) = notes;
    let w = &mut report.warnings;
    w.extend(staged);
    if let Some(cpus) = policy.limits.cpus
        && !cg.support.enforces_cpu()
    {
        w.push(format!(
            "--cpus {cpus} is not enforced: no CPU controller is usable here ({}); --strict-limits refuses to run instead. Hint: {}",
            cg.why_not.as_deref().unwrap_or("the cgroup has no cpu controller"),
            crate::limits::CPU_HINT
        ));
    }
    w.extend(cg.notes.iter().cloned());
    w.extend(
        not_capped
            .into_iter()
            .map(|n| format!("a kernel budget of the sandbox is not capped: {n}")),
    );
    if policy.network == Network::Host {
        w.push(HOST_NETWORK_WARNING.into());
    }
    if report.signal == Some(libc::SIGSYS) {
        w.push(
            "the seccomp filter killed the script: it made a system call through another architecture's ABI (e.g. int 0x80)".into(),
        );
    }
    let cap = policy.limits.output_cap();
    for (what, merged, folder) in merges {
        w.extend(merge_warnings(what, merged, *folder, cap));
    }
}

/// What a merge back into a host folder (`what`: output, source, kept) left out, if anything.
pub(super) fn merge_warnings(
    what: &str,
    merged: &output::Merged,
    folder: Option<&Path>,
    cap: u64,
) -> Vec<String> {
    let folder = folder.unwrap_or(Path::new("?")).display();
    let mut out = Vec::new();
    if merged.dropped > 0 {
        out.push(format!(
            "{} {what} entries were not written back to {folder}: they would have put more than the output limit ({cap} bytes) on the host, or were nested deeper than {} folders",
            merged.dropped,
            output::MAX_DEPTH
        ));
    }
    if merged.escaping_links > 0 {
        out.push(format!(
            "{} symbolic links in the {what} folder point outside it and were not written back",
            merged.escaping_links
        ));
    }
    if merged.failed > 0 {
        out.push(format!(
            "{} {what} entries could not be written back to {folder}",
            merged.failed
        ));
    }
    out
}

/// What the merges back to the host did.
pub(super) struct Merges {
    pub(super) output: output::Merged,
    pub(super) source: output::Merged,
    /// `--keep`: /tmp, HOME and a copy of the output into the kept run's folders.
    pub(super) kept: Vec<output::Merged>,
}

/// Merges the writable overlays back into their host folders, once the sandbox is dead.
pub(super) fn merge_back(staged: &stage::Staged) -> Merges {
    let merge =
        |o: &Option<output::OutputOverlay>| o.as_ref().map(|o| o.merge()).unwrap_or_default();
    let mut kept = Vec::new();
    if let Some(dir) = &staged.kept_dir {
        kept.extend(
            staged
                .kept
                .iter()
                .map(output::OutputOverlay::merge_data_only),
        );
        if let Some(o) = &staged.overlay {
            match sys::open_dir_nofollow(&dir.join("output")) {
                Ok(fd) => kept.push(o.merge_to(fd.as_fd(), true)),
                Err(_) => kept.push(output::Merged {
                    failed: 1,
                    ..Default::default()
                }),
            }
        }
    }
    Merges {
        output: merge(&staged.overlay),
        source: merge(&staged.src_overlay),
        kept,
    }
}

/// `--keep`: records the kept run (its state is merged already).
pub(super) fn keep(r: &RunCtx, dir: &Path, kept_merged: &[output::Merged], report: &mut RunReport) {
    let cap = r.policy.limits.output_cap();
    for m in kept_merged {
        report
            .warnings
            .extend(merge_warnings("kept", m, Some(dir), cap));
    }
    let run = crate::runs::KeptRun {
        id: r.id.to_string(),
        image: r.image.name.clone(),
        ended: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        status: serde_json::to_value(report.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        exit_code: report.exit_code,
        bytes: 0,
    };
    // The run itself went fine: a kept state that cannot be recorded (a `prune`
    // meanwhile) is a warning, not a lost report.
    if let Err(e) = crate::runs::finish(dir, &run) {
        report
            .warnings
            .push(format!("the run could not be kept: {e}"));
    }
}
