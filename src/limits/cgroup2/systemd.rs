//! Asking systemd over D-Bus (`busctl`): whether a unit has `Delegate=yes`, and a transient
//! scope with `Delegate=yes` for a run, in the caller's user manager or, for root, the
//! system manager's `pysandbox.slice`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Origin, Parent, ROOT, SLICE, controllers, own_path, prepare};
use crate::sys;

/// Whether systemd unit `unit` (a service or scope) has `Delegate=yes`, asked over
/// D-Bus: the system manager for root, the caller's user manager otherwise.
pub(super) fn unit_delegates(unit: &str, root: bool) -> bool {
    let iface = match unit.rsplit_once('.') {
        Some((_, "service")) => "org.freedesktop.systemd1.Service",
        Some((_, "scope")) => "org.freedesktop.systemd1.Scope",
        _ => return false,
    };
    let out = busctl(root)
        .args(["get-property", "org.freedesktop.systemd1"])
        .arg(format!(
            "/org/freedesktop/systemd1/unit/{}",
            bus_escape(unit)
        ))
        .args([iface, "Delegate"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    matches!(out, Ok(o) if o.status.success() && o.stdout.trim_ascii() == b"b true")
}

/// A unit name as a D-Bus object path element (systemd's escaping: every byte that is
/// not an ASCII letter or digit, and a leading digit, as `_xx`).
fn bus_escape(name: &str) -> String {
    let mut out = String::new();
    for (i, b) in name.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (b.is_ascii_digit() && i > 0) {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

/// `busctl` on the system bus (root) or the caller's user bus, with a timeout.
fn busctl(root: bool) -> Command {
    let mut cmd = Command::new("busctl");
    if !root {
        cmd.arg("--user");
        // busctl finds the user bus through XDG_RUNTIME_DIR, which `su`, `sudo -u` or
        // setpriv may not have set.
        if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none()
            && std::env::var_os("XDG_RUNTIME_DIR").is_none()
        {
            cmd.env("XDG_RUNTIME_DIR", format!("/run/user/{}", sys::euid()));
        }
    }
    // A bus that does not answer must not hang the run.
    cmd.arg("--timeout=10");
    cmd
}

/// Asks systemd (the caller's user manager, or the system manager for root) for a
/// transient scope with `Delegate=yes` and moves this process into it. Returns the
/// scope as a parent, or why not (one line).
pub fn transient_scope(id: &str, root: bool) -> Result<Parent, String> {
    let unit = format!("pysandbox-{id}.scope");
    let pid = std::process::id().to_string();
    let mut cmd = busctl(root);
    cmd.args([
        "call",
        "--quiet",
        "org.freedesktop.systemd1",
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
        "StartTransientUnit",
        "ssa(sv)a(sa(sv))",
        &unit,
        "fail",
    ]);
    let mut props: Vec<&str> = vec![
        "PIDs",
        "au",
        "1",
        &pid,
        "Delegate",
        "b",
        "true",
        "CollectMode",
        "s",
        "inactive-or-failed",
    ];
    if root {
        props.extend(["Slice", "s", SLICE]);
    }
    // Every property is name, signature, value; PIDs' array value is a count and a pid.
    let count = ((props.len() - 1) / 3).to_string();
    cmd.arg(&count).args(&props).arg("0");
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("busctl: {e}"))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "systemd refused a delegated scope: {}",
            msg.lines().next().unwrap_or("").trim()
        ));
    }
    // The scope's start job moves us; wait for it.
    let t0 = Instant::now();
    let path = loop {
        match own_path() {
            Some(p) if p.ends_with(&format!("/{unit}")) => break p,
            _ if t0.elapsed() > Duration::from_secs(3) => {
                return Err(format!("systemd did not move pysandbox into {unit}"));
            }
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    };
    let dir = Path::new(ROOT).join(path.trim_start_matches('/'));
    let ctl = controllers(&dir);
    if !["memory", "pids"]
        .iter()
        .all(|c| ctl.iter().any(|x| x == c))
    {
        return Err(format!(
            "systemd's scope {unit} has no memory and pids controllers (it offers: {})",
            ctl.join(" ")
        ));
    }
    let parent = Parent {
        cpu: ctl.iter().any(|c| c == "cpu"),
        dir,
        origin: Origin::Scope(unit),
    };
    prepare(&parent).map_err(|e| format!("preparing {}: {e}", parent.dir.display()))?;
    Ok(parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_are_escaped_as_systemd_does() {
        assert_eq!(bus_escape("run-u12.service"), "run_2du12_2eservice");
        assert_eq!(bus_escape("user@1000.service"), "user_401000_2eservice");
        assert_eq!(bus_escape("0x.scope"), "_30x_2escope");
    }
}
