//! `cargo xtask vm`: the host matrix. Boots Debian's kernels under qemu (KVM when
//! `/dev/kvm` works, TCG otherwise) with pure cgroup v2, this machine's root file system
//! shared read-only (9p) under a tmpfs overlay, and an ext4 scratch disk for homes; with
//! systemd as PID 1 (a real user manager, `loginctl enable-linger`) and without systemd
//! (a delegated tree laid out by hand). In each guest `xtask/vm/guest.sh` runs
//! `xtask/vm/suite.py` as every identity (root, root in a delegated unit, an ordinary
//! user with and without delegation, inside `unshare -Ur`); each writes a JSON file to
//! a second 9p share, read here after qemu exits. The summary goes to
//! `<cache>/results/matrix.json` and the exit status says whether every check passed.
//!
//! usage: cargo xtask vm [--kernel 6.1|6.12|5.10]... [--mode systemd|plain]... [--quick] [--timing]
//!        [--baseline BIN] [--pysandbox BIN] [--timeout SECS]
//!
//! `--quick` runs the subset that differs by identity (mechanisms, OOM, leftovers) for
//! every identity; without it, root and the main user identities run the whole suite.
//! `--timing` adds each full identity's median cold start, printed as a ratio to the
//! identity without cgroups in the same boot; `--baseline BIN` times another build
//! beside it, run for run (before and after a change, in one boot).
//!
//! Needs (Debian): qemu-system-x86 (from bookworm-backports next to qemu-utils 10),
//! busybox-static, kmod, e2fsprogs, xz-utils; apt-get downloads the kernels into the
//! cache (`$PYSANDBOX_VM_CACHE`, default `/var/cache/pysandbox-vm`).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{sh, workspace_root};

/// The kernels of the matrix: (short name, Debian metapackage whose dependency is the
/// current image of that series: bookworm's 6.1, bookworm-security's 6.12; the suite
/// of a private apt state when the host's sources do not have it).
/// 5.10 is below pysandbox's minimum: its boot checks that `run` and `doctor` refuse it
/// at once.
const KERNELS: &[(&str, &str, Option<&str>)] = &[
    ("6.1", "linux-image-amd64", None),
    ("6.12", "linux-image-6.12-amd64", None),
    ("5.10", "linux-image-amd64", Some("bullseye")),
];

/// apt options for a private state of Debian `suite` under the cache (the host's sources
/// and package lists stay untouched); updated once.
fn private_apt(cache: &Path, suite: Option<&str>) -> Result<Vec<String>> {
    let Some(suite) = suite else {
        return Ok(Vec::new());
    };
    let dir = cache.join("apt").join(suite);
    fs::create_dir_all(dir.join("lists/partial"))?;
    fs::create_dir_all(dir.join("archives/partial"))?;
    fs::write(
        dir.join("sources.list"),
        format!("deb http://deb.debian.org/debian {suite} main\n"),
    )?;
    let d = dir.display();
    let opts: Vec<String> = [
        format!("Dir::Etc::SourceList={d}/sources.list"),
        "Dir::Etc::SourceParts=/dev/null".into(),
        format!("Dir::State::Lists={d}/lists"),
        format!("Dir::Cache={d}"),
        format!("Dir::Cache::archives={d}/archives"),
        "Dir::State::status=/dev/null".into(),
    ]
    .into_iter()
    .flat_map(|o| ["-o".to_string(), o])
    .collect();
    if fs::read_dir(dir.join("lists"))?.count() <= 1 {
        sh(Command::new("apt-get").args(&opts).args(["-q", "update"]))?;
    }
    Ok(opts)
}

/// The kernel image package a metapackage currently depends on.
fn resolve(meta: &str, apt: &[String]) -> Result<String> {
    let deps = sh(Command::new("apt-cache")
        .args(apt)
        .args(["depends", "--no-recommends", meta]))?;
    deps.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .find(|d| d.starts_with("linux-image-"))
        .map(str::to_string)
        .with_context(|| format!("{meta} depends on no kernel image (apt-get update?)"))
}

/// The modules the initramfs loads (with their dependencies): 9p for the root file
/// system, overlay above it, virtio disks and ext4 for the scratch disk.
const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "9pnet_virtio",
    "9p",
    "overlay",
    "ext4",
];

struct Opts {
    kernels: Vec<String>,
    modes: Vec<String>,
    bin: PathBuf,
    timeout: Duration,
    quick: bool,
    timing: bool,
    /// Another pysandbox build whose cold starts are timed beside this one's.
    baseline: Option<PathBuf>,
}

pub fn vm(args: &[String]) -> Result<()> {
    let mut o = Opts {
        kernels: Vec::new(),
        modes: Vec::new(),
        bin: workspace_root().join("target/debug/pysandbox"),
        timeout: Duration::from_secs(600),
        quick: false,
        timing: false,
        baseline: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().context(format!("{a} needs a value"));
        match a.as_str() {
            "--kernel" => o.kernels.push(val()?.clone()),
            "--mode" => o.modes.push(val()?.clone()),
            "--pysandbox" => o.bin = PathBuf::from(val()?),
            "--timeout" => o.timeout = Duration::from_secs(val()?.parse()?),
            "--quick" => o.quick = true,
            "--timing" => o.timing = true,
            "--baseline" => o.baseline = Some(fs::canonicalize(val()?)?),
            _ => bail!(
                "usage: cargo xtask vm [--kernel 6.1|6.12|5.10]... [--mode systemd|plain]... [--quick] [--timing [--baseline BIN]] [--pysandbox BIN] [--timeout SECS]"
            ),
        }
    }
    if o.kernels.is_empty() {
        o.kernels = vec!["6.1".into(), "6.12".into()];
    }
    if o.modes.is_empty() {
        o.modes = vec!["systemd".into(), "plain".into()];
    }
    for k in &o.kernels {
        if !KERNELS.iter().any(|x| x.0 == k) {
            bail!("unknown kernel {k}: the matrix has 6.1, 6.12 and 5.10");
        }
    }
    for m in &o.modes {
        if m != "systemd" && m != "plain" {
            bail!("unknown mode {m}: systemd or plain");
        }
    }
    o.bin = fs::canonicalize(&o.bin)
        .with_context(|| format!("{}: build pysandbox first (cargo build)", o.bin.display()))?;
    let cache = PathBuf::from(
        std::env::var("PYSANDBOX_VM_CACHE").unwrap_or_else(|_| "/var/cache/pysandbox-vm".into()),
    );
    fs::create_dir_all(&cache)?;
    let mut summary = Vec::new();
    let (mut passed, mut failed) = (0, 0);
    for k in &o.kernels {
        let (ver, vmlinuz, initrd) = kernel(&cache, k)?;
        for m in &o.modes {
            if k == "5.10" && m != "plain" {
                continue; // only that it is refused, without systemd
            }
            let t = Instant::now();
            let boot = match boot(&cache, &ver, &vmlinuz, &initrd, m, &o)? {
                Some(b) => b,
                None => boot(&cache, &ver, &vmlinuz, &initrd, m, &o)?
                    .context("the guest stalled before stage 2 twice")?,
            };
            let secs = t.elapsed().as_secs_f64();
            for r in &boot.results {
                for c in r["checks"].as_array().into_iter().flatten() {
                    let ok = c["ok"].as_bool() == Some(true);
                    if ok {
                        passed += 1;
                    } else {
                        failed += 1;
                    }
                    println!(
                        "{} {k:>4} {m:<7} {:<17} {:<20} {}",
                        if ok { "PASS" } else { "FAIL" },
                        r["who"].as_str().unwrap_or("?"),
                        c["name"].as_str().unwrap_or("?"),
                        c["detail"]
                            .as_str()
                            .unwrap_or("")
                            .chars()
                            .take(110)
                            .collect::<String>()
                    );
                }
            }
            print_cold_starts(&boot.results, k, m);
            if !boot.done {
                failed += 1;
                println!(
                    "FAIL {k:>4} {m:<7} the guest did not finish the matrix (see {})",
                    boot.log.display()
                );
            }
            println!(
                "---- {k} {m}: {secs:.0} s (boot log {})",
                boot.log.display()
            );
            summary.push(serde_json::json!({
                "kernel": k, "release": ver, "mode": m, "secs": secs.round(),
                "finished": boot.done, "identities": boot.results,
            }));
        }
    }
    let out = cache.join("results/matrix.json");
    fs::create_dir_all(out.parent().unwrap())?;
    fs::write(&out, serde_json::to_vec_pretty(&summary)?)?;
    println!("results: {}", out.display());
    println!("matrix: {passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} host-matrix checks failed");
    }
    Ok(())
}

/// Each identity's median cold start and container creation (`cold_start` check) as
/// ratios to the identity without cgroups in the same boot: what creating the run's
/// cgroup, putting the sandbox in it (and on systemd a scope per run) cost. Timing inside
/// TCG is only good for ratios within one boot.
fn print_cold_starts(results: &[serde_json::Value], k: &str, m: &str) {
    let field = |r: &serde_json::Value, key: &str| -> Option<f64> {
        let c = r["checks"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == "cold_start")?;
        c["detail"]
            .as_str()?
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))?
            .parse()
            .ok()
    };
    let Some(base) = results.iter().find(|r| r["who"] == "user_plain") else {
        return;
    };
    for r in results {
        let who = r["who"].as_str().unwrap_or("?");
        if let (Some(b), Some(bb), Some(ms), Some(bms)) = (
            field(r, "build_ms"),
            field(r, "base_build_ms"),
            field(r, "median_ms"),
            field(r, "base_median_ms"),
        ) {
            println!(
                "TIME {k:>4} {m:<7} {who:<17} this build / baseline, same runs interleaved: cold start {:.2}, creation {:.2}{}",
                ms / bms,
                b / bb,
                field(r, "paired_build_diff_ms")
                    .map(|d| format!(" (run for run, median {d:+.1} ms)"))
                    .unwrap_or_default()
            );
        }
        if let Some(mv) = field(r, "migration_ms") {
            println!(
                "TIME {k:>4} {m:<7} {who:<17} moving a process between two cgroups (cgroup.procs write): {mv:.2} ms"
            );
        }
    }
    // The same for the --baseline build (`base_` fields), against its own user_plain.
    for (label, pre) in [("", ""), (" [baseline]", "base_")] {
        let key = |k: &str| format!("{pre}{k}");
        let (Some(base_ms), base_build) = (
            field(base, &key("median_ms")),
            field(base, &key("build_ms")),
        ) else {
            continue;
        };
        for r in results {
            let Some(ms) = field(r, &key("median_ms")) else {
                continue;
            };
            let build = match (field(r, &key("build_ms")), base_build) {
                (Some(b), Some(bb)) => format!(", creation {b:.1} ms = {:.2} x", b / bb),
                _ => String::new(),
            };
            println!(
                "TIME {k:>4} {m:<7} {:<17} cold start {ms:.0} ms = {:.2} x{build} user_plain (no cgroup){label}",
                r["who"].as_str().unwrap_or("?"),
                ms / base_ms
            );
        }
    }
}

/// Downloads (once) and unpacks a kernel; builds its initramfs. Returns (release,
/// vmlinuz, initrd).
fn kernel(cache: &Path, short: &str) -> Result<(String, PathBuf, PathBuf)> {
    let (_, meta, suite) = KERNELS.iter().find(|k| k.0 == short).unwrap();
    let apt = private_apt(cache, *suite)?;
    let pkg = resolve(meta, &apt)?;
    let pkg = pkg.as_str();
    let ver = pkg.trim_start_matches("linux-image-").to_string();
    let root = cache.join("k").join(&ver);
    let vmlinuz = root.join(format!("boot/vmlinuz-{ver}"));
    if !vmlinuz.exists() {
        let debs = cache.join("debs");
        fs::create_dir_all(&debs)?;
        sh(Command::new("apt-get")
            .args(&apt)
            .args(["download", pkg])
            .current_dir(&debs))?;
        let deb = fs::read_dir(&debs)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{pkg}_")))
            })
            .context("apt-get download left no .deb")?;
        fs::create_dir_all(&root)?;
        sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        sh(Command::new("depmod").arg("-b").arg(&root).arg(&ver))?;
    }
    let initrd = cache.join(format!("initrd-{ver}.cpio.gz"));
    let init = workspace_root().join("xtask/vm/init");
    let stale = |p: &Path| {
        let m = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
        m(p) < m(&init)
    };
    if stale(&initrd) {
        make_initrd(&root, &ver, &init, &initrd)?;
    }
    Ok((ver, vmlinuz, initrd))
}

/// busybox-static, the modules (decompressed: busybox insmod reads plain .ko) and
/// `xtask/vm/init`, as a gzipped newc cpio.
fn make_initrd(root: &Path, ver: &str, init: &Path, out: &Path) -> Result<()> {
    let dir = tempfile_dir(out)?;
    for d in ["bin", "proc", "sys", "dev", "mods"] {
        fs::create_dir_all(dir.join(d))?;
    }
    fs::copy("/bin/busybox", dir.join("bin/busybox")).context("busybox-static is needed")?;
    fs::copy(init, dir.join("init"))?;
    let mut order: Vec<String> = Vec::new();
    for m in MODULES {
        let deps = sh(Command::new("modprobe").arg("-d").arg(root).args([
            "-S",
            ver,
            "--show-depends",
            m,
        ]))?;
        for line in deps.lines() {
            let Some(path) = line.strip_prefix("insmod ") else {
                continue; // builtin
            };
            let path = Path::new(path.trim());
            let name = path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches(".xz")
                .to_string();
            if order.contains(&name) {
                continue;
            }
            let dst = dir.join("mods").join(&name);
            if path.extension().is_some_and(|e| e == "xz") {
                let out = Command::new("xz").arg("-dc").arg(path).output()?;
                if !out.status.success() {
                    bail!("xz -dc {} failed", path.display());
                }
                fs::write(&dst, out.stdout)?;
            } else {
                fs::copy(path, &dst)?;
            }
            order.push(name);
        }
    }
    fs::write(dir.join("modules.order"), order.join("\n") + "\n")?;
    let script = format!(
        "cd {} && find . | cpio -o -H newc --quiet | gzip -1 > {}",
        dir.display(),
        out.display()
    );
    sh(Command::new("sh").args(["-c", &script]))?;
    fs::remove_dir_all(&dir)?;
    Ok(())
}

fn tempfile_dir(near: &Path) -> Result<PathBuf> {
    let d = near.with_extension(format!("tmp{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d)?;
    Ok(d)
}

struct Boot {
    done: bool,
    results: Vec<serde_json::Value>,
    log: PathBuf,
}

fn kvm_works() -> bool {
    // /dev/kvm may exist where KVM does not work (nested virtualisation refused):
    // ask qemu to start with it and quit at once.
    Path::new("/dev/kvm").exists()
        && Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                "kvm",
                "-cpu",
                "host",
                "-machine",
                "none",
                "-nographic",
                "-S",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .and_then(|mut c| {
                std::thread::sleep(Duration::from_millis(500));
                let alive = c.try_wait()?.is_none();
                let _ = c.kill();
                let _ = c.wait();
                Ok(alive)
            })
            .unwrap_or(false)
}

fn boot(
    cache: &Path,
    ver: &str,
    vmlinuz: &Path,
    initrd: &Path,
    mode: &str,
    o: &Opts,
) -> Result<Option<Boot>> {
    let run = cache.join("runs").join(format!("{ver}-{mode}"));
    let _ = fs::remove_dir_all(&run);
    let results = run.join("results");
    fs::create_dir_all(&results)?;
    let scratch = run.join("scratch.img");
    fs::File::create(&scratch)?.set_len(8 << 30)?;
    sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&scratch))?;
    let log = run.join("console.log");
    let mut append = format!(
        "console=ttyS0 panic=-1 cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1 \
         psb.mode={mode} psb.repo={} psb.bin={} psb.cache={}",
        workspace_root().display(),
        o.bin.display(),
        cache.display()
    );
    if o.quick {
        append.push_str(" psb.quick=1");
    }
    if o.timing {
        append.push_str(" psb.timing=1");
        if let Some(b) = &o.baseline {
            append.push_str(&format!(" psb.base={}", b.display()));
        }
    }
    if ver.starts_with("5.10") {
        append.push_str(" psb.old=1");
    }
    if mode == "systemd" {
        append.push_str(" systemd.unit=pysandbox-matrix.target systemd.show_status=0");
    } else {
        append.push_str(" quiet");
    }
    let accel: &[&str] = if kvm_works() {
        &["-accel", "kvm", "-cpu", "host"]
    } else {
        &["-accel", "tcg", "-cpu", "max"]
    };
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(accel)
        .args([
            "-smp",
            "2",
            "-m",
            "4G",
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(&append)
        .arg("-virtfs")
        .arg("local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=results,security_model=none,multidevs=remap",
            results.display()
        ))
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw", scratch.display()))
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log)?)
        .stderr(Stdio::inherit());
    eprintln!(
        "xtask vm: booting {ver} ({mode}); console in {}",
        log.display()
    );
    let mut child = qemu.spawn().context("starting qemu-system-x86_64")?;
    let t0 = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if t0.elapsed() > o.timeout {
            eprintln!("xtask vm: {ver} ({mode}) timed out after {:?}", o.timeout);
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        if t0.elapsed() > BOOT_TIMEOUT && !results.join("booted").exists() {
            // A TCG guest now and then stalls before its first process (RCU stalls on
            // an idle vCPU whose timer never fires); the caller boots it again.
            eprintln!("xtask vm: {ver} ({mode}) did not reach stage 2 in {BOOT_TIMEOUT:?}");
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let _ = fs::remove_file(&scratch);
    let done = results.join("done").exists();
    let mut res = Vec::new();
    let mut names: Vec<PathBuf> = fs::read_dir(&results)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    names.sort();
    for p in names {
        let v: serde_json::Value = serde_json::from_slice(&fs::read(&p)?)
            .with_context(|| format!("{} is not JSON", p.display()))?;
        res.push(v);
    }
    let _ = std::io::stdout().flush();
    Ok(Some(Boot {
        done,
        results: res,
        log,
    }))
}

/// How long a guest may take to reach stage 2 (the root file system mounted).
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
