//! `cargo xtask`: project chores that are programs, not tests.
//!
//! `cargo xtask bench [--runs N]` measures cold-start wall time side by side in one run:
//! the bare host interpreter (the floor), `pysandbox run`, and bubblewrap / runc / crun
//! over the same root file system when they are installed. Commands are interleaved
//! round-robin so drift hits all of them alike; the table shows medians and ratios to the
//! floor, then the throughput of the `-c pass` rows (many runs, 4 at a time: a server's
//! load). Benchmarks live here, never as timed assertions in tests.
//!
//! `cargo xtask bench --phases [--runs N]` prints where one cold run's time goes instead:
//! the median of each phase pysandbox marks (`--log-level pysandbox::timing=debug`), as
//! root and as uid 65534.
//!
//! `cargo xtask bench --pool [--runs N] [--load N]`: the warm pool and `pysandbox serve`
//! against the floor (latency, throughput, a bounded load run; see `pool.rs`).
//! `cargo xtask bench --net [--runs N]` (root) measures download throughput from inside the
//! sandbox: through the `--allow-net` proxy vs `--network` (see `netbench.rs`).
//! `cargo xtask vm [--kernel 6.1|6.12|5.10]... [--mode systemd|plain]...` boots Debian's
//! kernels under qemu and runs the host-matrix suite in them (see `vm.rs`).
//!
//! `cargo xtask compat [--keep] [--pysandbox BIN]` runs the test suites of a few pure-Python projects bare
//! and inside the sandbox, as root and as uid 65534, and lists every difference (see
//! `compat.rs`).

mod compat;
mod netbench;
mod pool;
mod vm;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bench") => bench(&args[1..]),
        Some("compat") => compat::compat(&args[1..]),
        Some("vm") => vm::vm(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask bench [--phases | --net | --pool [--load N]] [--runs N] | cargo xtask compat [--keep] [--pysandbox BIN] | cargo xtask vm [--kernel K]... [--mode M]..."
            );
            std::process::exit(2);
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed with {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One benchmarked command.
struct Case {
    name: String,
    argv: Vec<String>,
    cwd: PathBuf,
    samples: Vec<f64>,
}

impl Case {
    fn new(name: &str, argv: Vec<String>, cwd: &Path) -> Case {
        Case {
            name: name.into(),
            argv,
            cwd: cwd.to_path_buf(),
            samples: Vec::new(),
        }
    }
    fn once(&self) -> Result<f64> {
        let t = Instant::now();
        let st = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .with_context(|| self.name.clone())?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if !st.success() {
            bail!("{} failed ({st}): {:?}", self.name, self.argv);
        }
        Ok(ms)
    }
    fn median(&self) -> f64 {
        let mut s = self.samples.clone();
        s.sort_by(|a, b| a.total_cmp(b));
        s[s.len() / 2]
    }
}

fn bench(args: &[String]) -> Result<()> {
    let phases_only = args.iter().any(|a| a == "--phases");
    let pool_only = args.iter().any(|a| a == "--pool");
    let net_only = args.iter().any(|a| a == "--net");
    let mut runs = 30;
    let mut load = 0;
    let mut rest = args
        .iter()
        .filter(|a| *a != "--phases" && *a != "--pool" && *a != "--net");
    while let Some(flag) = rest.next() {
        let n = rest.next().and_then(|n| n.parse().ok());
        match (flag.as_str(), n) {
            ("--runs", Some(n)) => runs = n,
            ("--load", Some(n)) => load = n,
            _ => {
                bail!("usage: cargo xtask bench [--phases | --net | --pool [--load N]] [--runs N]")
            }
        }
    }
    let root = workspace_root();
    eprintln!("building pysandbox and rootfs-builder (release)...");
    sh(Command::new("cargo")
        .args([
            "build",
            "--release",
            "-p",
            "pysandbox",
            "-p",
            "rootfs-builder",
        ])
        .current_dir(&root))?;
    let pysandbox = root.join("target/release/pysandbox");
    let builder = root.join("target/release/rootfs-builder");

    let tmp = std::env::temp_dir().join(format!("pysandbox-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let _cleanup = Cleanup(tmp.clone());
    let data = tmp.join("data");
    std::fs::create_dir_all(data.join("output"))?;
    std::fs::write(
        data.join("small.py"),
        "import json, sys\nprint(json.dumps({'sum': sum(range(10000)), 'argv': sys.argv[1:]}))\n",
    )?;

    // The same interpreter everywhere: the one the default image is built from.
    let python = std::env::var("PYSANDBOX_PYTHON").unwrap_or_else(|_| "python3".into());
    let rootfs = tmp.join("rootfs");
    eprintln!("building a root file system for the peers from {python}...");
    let manifest = sh(Command::new(&builder)
        .args(["--python", &python])
        .arg(&rootfs))?;
    let host_python = manifest
        .split("\"host_executable\"")
        .nth(1)
        .and_then(|s| s.split('"').nth(1))
        .map(PathBuf::from)
        .context("rootfs-builder manifest has no host_executable")?;
    // Warm the default image (built on first use) so pysandbox runs from its cache.
    sh(Command::new(&pysandbox)
        .args(["run", "--code", "pass"])
        .current_dir(&data))?;

    let hp = host_python.to_string_lossy().into_owned();
    if phases_only {
        return phases(&pysandbox, &tmp, &data, runs);
    }
    if pool_only {
        return pool::bench(&pysandbox, &hp, runs, load);
    }
    if net_only {
        return netbench::net_bench(&pysandbox, &host_python, &data, runs.min(10));
    }
    // The unprivileged user's rows run Debian's python3, which its default image holds.
    let hp_user = "/usr/bin/python3".to_string();
    let user_home = tmp.join("home");
    std::fs::create_dir_all(&user_home)?;
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(&user_home, Some(65534), Some(65534))?;
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        std::os::unix::fs::chown(data.join("output"), Some(65534), Some(65534))?;
    }
    let ps = pysandbox.to_string_lossy().into_owned();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mut cases: Vec<Case> = Vec::new();
    for (label, code) in [("-c pass", None), ("small.py", Some("small.py"))] {
        let py_args = |extra: &[&str]| {
            let mut v = s(extra);
            match code {
                None => v.extend(s(&["-c", "pass"])),
                Some(f) => v.push(f.to_string()),
            }
            v
        };
        let mut floor = vec![hp.clone(), "-S".into()];
        floor.extend(py_args(&[]));
        cases.push(Case::new(
            &format!("host python -S {label} (floor)"),
            floor,
            &data,
        ));
        let mut bare = vec![hp.clone()];
        bare.extend(py_args(&[]));
        cases.push(Case::new(
            &format!("python {label} (with site-packages)"),
            bare,
            &data,
        ));
        let mut run = vec![ps.clone(), "run".into()];
        match code {
            None => run.extend(s(&["--code", "pass"])),
            Some(f) => run.push(f.to_string()),
        }
        cases.push(Case::new(
            &format!("pysandbox run {label}"),
            run.clone(),
            &data,
        ));
        // --network adds pasta's start (the sandbox's own user-mode network).
        if code.is_none() && which("pasta").is_some() {
            let mut net = vec![ps.clone(), "run".into(), "--network".into()];
            net.extend(s(&["--code", "pass"]));
            cases.push(Case::new("pysandbox run --network -c pass", net, &data));
        }
        // --allow-net adds the proxy (a forked process) and its listening socket.
        if code.is_none() {
            let allow = s(&["run", "--allow-net", "127.0.0.1:9", "--code", "pass"]);
            let mut v = vec![ps.clone()];
            v.extend(allow);
            cases.push(Case::new("pysandbox run --allow-net -c pass", v, &data));
        }
        // As root, also the rootless path, as an ordinary user would run it (the setpriv
        // wrapper costs both rows the same).
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            let wrap = |argv: &[String]| {
                let mut v = as_nobody(&user_home);
                v.extend(argv.iter().cloned());
                v
            };
            let mut floor_u = vec![hp_user.clone(), "-S".into()];
            floor_u.extend(py_args(&[]));
            cases.push(Case::new(
                &format!("uid 65534: python -S {label}"),
                wrap(&floor_u),
                &data,
            ));
            cases.push(Case::new(
                &format!("uid 65534: pysandbox run {label}"),
                wrap(&run),
                &data,
            ));
        }
        if let Some(bwrap) = which("bwrap") {
            let mut v = vec![bwrap.to_string_lossy().into_owned()];
            v.extend(s(&[
                "--unshare-all",
                "--unshare-user",
                "--uid",
                "1000",
                "--gid",
                "1000",
                "--die-with-parent",
                "--new-session",
                "--cap-drop",
                "ALL",
                "--ro-bind",
            ]));
            v.push(rootfs.to_string_lossy().into_owned());
            v.push("/".into());
            v.extend(s(&[
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "--tmpfs",
                "/tmp",
                "--ro-bind",
            ]));
            v.push(data.to_string_lossy().into_owned());
            v.extend(s(&[
                "/usr/app/data",
                "--chdir",
                "/usr/app/data",
                "/opt/conda/bin/python",
            ]));
            v.extend(py_args(&[]));
            cases.push(Case::new(&format!("bwrap {label}"), v, &data));
        }
        for rt in ["runc", "crun"] {
            let Some(bin) = which(rt) else { continue };
            let bundle = match oci_bundle(&tmp, rt, label, &rootfs, &data, &py_args(&[])) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("skipping {rt}: {e:#}");
                    continue;
                }
            };
            let id = format!("bench-{rt}-{}", std::process::id());
            let run = format!("{} run --bundle {} {id}", bin.display(), bundle.display());
            let (name, v) = if rt == "crun" && hybrid_cgroups() {
                // crun 1.8 refuses cgroup-v1 hybrid hosts; hide the cgroup2 mount from it
                // (the wrapper costs it about a millisecond).
                (
                    format!("crun {label} (unshare -m wrapper)"),
                    s(&[
                        "unshare",
                        "-m",
                        "--propagation",
                        "private",
                        "sh",
                        "-c",
                        &format!("umount -l /sys/fs/cgroup/unified && exec {run}"),
                    ]),
                )
            } else {
                (
                    format!("{rt} {label}"),
                    run.split(' ').map(String::from).collect(),
                )
            };
            let c = Case::new(&name, v, &data);
            match c.once() {
                Ok(_) => cases.push(c),
                Err(e) => eprintln!("skipping {rt}: {e:#}"),
            }
        }
    }

    eprintln!("{} commands x {runs} runs, interleaved...", cases.len());
    for c in &cases {
        for _ in 0..3 {
            c.once()?;
        }
    }
    for _ in 0..runs {
        for c in cases.iter_mut() {
            let ms = c.once()?;
            c.samples.push(ms);
        }
    }

    // Throughput of the `-c pass` rows: many runs, a few at a time (a server's load).
    let tp_runs = (runs * 7).max(40);
    let tp: Vec<(&Case, f64)> = cases
        .iter()
        .filter(|c| label_of(&c.name) == "-c pass" && !c.name.contains("site-packages"))
        .filter(|c| !c.name.contains("--network") && !c.name.contains("--allow-net"))
        // runc and crun name their container: one at a time.
        .filter(|c| !c.name.starts_with("runc") && !c.name.starts_with("crun"))
        .map(|c| throughput(c, tp_runs, PARALLEL).map(|r| (c, r)))
        .collect::<Result<_>>()?;

    let unpack_rows = unpack_bench(&pysandbox, &rootfs, &tmp, runs.min(10))?;

    let uname = sh(Command::new("uname").arg("-r")).unwrap_or_default();
    println!(
        "pysandbox cold start, median wall time of {runs} runs (host {}, {} as uid {})\n",
        uname.trim(),
        host_python.display(),
        // SAFETY: geteuid cannot fail.
        unsafe { libc::geteuid() }
    );
    println!("| command | median ms | x floor |");
    println!("|---|---:|---:|");
    for chunk in cases.chunk_by(|a, b| label_of(&a.name) == label_of(&b.name)) {
        // Each row against its own floor: the unprivileged rows against python run the
        // same way (same wrapper, same interpreter).
        let floor_of = |c: &Case| {
            let uid = c.name.starts_with("uid ");
            chunk
                .iter()
                .find(|f| f.name.starts_with("uid ") == uid && f.name.contains("python -S"))
                .map(Case::median)
                .unwrap_or(f64::NAN)
        };
        for c in chunk {
            let m = c.median();
            println!("| {} | {:.1} | {:.2} |", c.name, m, m / floor_of(c));
        }
    }
    println!("\n| command (-c pass) | runs/s ({tp_runs} runs, {PARALLEL} at a time) | x floor |");
    println!("|---|---:|---:|");
    for (c, r) in &tp {
        let uid = c.name.starts_with("uid ");
        let floor = tp
            .iter()
            .find(|(f, _)| f.name.starts_with("uid ") == uid && f.name.contains("python -S"))
            .map_or(f64::NAN, |(_, r)| *r);
        println!("| {} | {r:.0} | {:.2} |", c.name, r / floor);
    }
    println!(
        "\n| unpack of the same image ({}) | median ms | x pysandbox |",
        unpack_rows.0
    );
    println!("|---|---:|---:|");
    let ours = unpack_rows.1[0].1;
    for (name, ms) in &unpack_rows.1 {
        println!("| {name} | {ms:.0} | {:.2} |", ms / ours);
    }
    Ok(())
}

/// How many runs of the throughput table go at once.
const PARALLEL: usize = 4;

/// Runs `c` `total` times, `parallel` at a time; returns runs per second.
fn throughput(c: &Case, total: usize, parallel: usize) -> Result<f64> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..parallel)
            .map(|_| {
                s.spawn(|| {
                    while next.fetch_add(1, Ordering::Relaxed) < total {
                        c.once()?;
                    }
                    Ok::<(), anyhow::Error>(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("a throughput worker panicked"))
    })?;
    Ok(total as f64 / t.elapsed().as_secs_f64())
}

/// Unpack speed: pysandbox's store vs `umoci unpack --rootless`, same single-layer image.
fn unpack_bench(
    pysandbox: &Path,
    rootfs: &Path,
    tmp: &Path,
    runs: usize,
) -> Result<(String, Vec<(String, f64)>)> {
    let layout = tmp.join("layout");
    let l = rootfs_builder::oci::Layout::create(&layout)?;
    let layer = l.put_layer(rootfs, "", rootfs_builder::layer::Source::Tree)?;
    l.finish(std::slice::from_ref(&layer), &Default::default(), "bench")?;
    let desc = format!("{} MB gzip, {} files", layer.size >> 20, layer.files);
    let xdg = tmp.join("xdg");
    std::fs::create_dir_all(&xdg)?;
    let imported = sh(Command::new(pysandbox)
        .args(["image", "import"])
        .arg(&layout)
        .env("XDG_DATA_HOME", &xdg))?;
    // "imported NAME (sha256:...)"
    let name = imported
        .split_whitespace()
        .nth(1)
        .context("image import printed no name")?
        .to_string();
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let mut ours = Vec::new();
    let mut umoci = Vec::new();
    for i in 0..runs {
        let dest = tmp.join(format!("unpack-ours-{i}"));
        let t = Instant::now();
        sh(Command::new(pysandbox)
            .args(["image", "unpack", &name])
            .arg(&dest)
            .env("XDG_DATA_HOME", &xdg))?;
        ours.push(t.elapsed().as_secs_f64() * 1000.0);
        if which("umoci").is_some() {
            let dest = tmp.join(format!("unpack-umoci-{i}"));
            let t = Instant::now();
            sh(Command::new("umoci")
                .args(["unpack", "--rootless", "--image"])
                .arg(format!("{}:bench", layout.display()))
                .arg(&dest))?;
            umoci.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let mut rows = vec![("pysandbox image unpack".to_string(), median(ours))];
    if !umoci.is_empty() {
        rows.push(("umoci unpack --rootless".to_string(), median(umoci)));
    }
    Ok((desc, rows))
}

fn label_of(name: &str) -> &str {
    if name.contains("small.py") {
        "small.py"
    } else {
        "-c pass"
    }
}

fn hybrid_cgroups() -> bool {
    Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists()
}

/// An OCI bundle close to pysandbox's isolation, for runc/crun.
fn oci_bundle(
    tmp: &Path,
    rt: &str,
    label: &str,
    rootfs: &Path,
    data: &Path,
    py_args: &[String],
) -> Result<PathBuf> {
    let bundle = tmp.join(format!("bundle-{rt}-{}", label.replace(['.', ' '], "_")));
    std::fs::create_dir_all(&bundle)?;
    let mut args = vec!["/opt/conda/bin/python".to_string()];
    args.extend(py_args.iter().cloned());
    let args_json = args
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let config = format!(
        r#"{{
  "ociVersion": "1.0.2",
  "process": {{
    "terminal": false, "user": {{"uid": 1000, "gid": 1000}},
    "args": [{args_json}],
    "env": ["PATH=/opt/conda/bin:/usr/bin:/bin", "HOME=/tmp"],
    "cwd": "/usr/app/data",
    "capabilities": {{"bounding": [], "effective": [], "permitted": [], "inheritable": [], "ambient": []}},
    "rlimits": [{{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}}],
    "noNewPrivileges": true
  }},
  "root": {{"path": {root:?}, "readonly": true}},
  "hostname": "sandbox",
  "mounts": [
    {{"destination": "/proc", "type": "proc", "source": "proc"}},
    {{"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}},
    {{"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}},
    {{"destination": "/usr/app/data", "type": "bind", "source": {data:?}, "options": ["rbind", "ro"]}}
  ],
  "linux": {{
    "uidMappings": [{{"containerID": 0, "hostID": 100000, "size": 65536}}],
    "gidMappings": [{{"containerID": 0, "hostID": 100000, "size": 65536}}],
    "namespaces": [{{"type": "pid"}}, {{"type": "network"}}, {{"type": "ipc"}}, {{"type": "uts"}}, {{"type": "mount"}}, {{"type": "cgroup"}}, {{"type": "user"}}],
    "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list"],
    "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
  }}
}}"#,
        root = rootfs.to_string_lossy(),
        data = data.to_string_lossy(),
    );
    std::fs::write(bundle.join("config.json"), config)?;
    Ok(bundle)
}

struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `bench --phases`: the median duration of each phase pysandbox logs for one cold run of
/// `--code pass`, over `runs` runs, as this user and (as root) as uid 65534.
fn phases(pysandbox: &Path, tmp: &Path, data: &Path, runs: usize) -> Result<()> {
    let home = tmp.join("phases-home");
    std::fs::create_dir_all(&home)?;
    let mut who: Vec<(&str, Vec<String>)> = vec![("this user", Vec::new())];
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(&home, Some(65534), Some(65534))?;
        std::fs::set_permissions(tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        who[0].0 = "root";
        who.push(("uid 65534", as_nobody(&home)));
    }
    for (name, wrap) in who {
        let mut order: Vec<String> = Vec::new();
        let mut samples: std::collections::HashMap<String, Vec<f64>> = Default::default();
        let mut total = Vec::new();
        for i in 0..=runs {
            let mut argv = wrap.clone();
            argv.push(pysandbox.to_string_lossy().into_owned());
            argv.extend(
                [
                    "run",
                    "--no-fs",
                    "--log-level",
                    "pysandbox::timing=debug",
                    "--code",
                    "pass",
                ]
                .map(String::from),
            );
            let t = Instant::now();
            let out = Command::new(&argv[0])
                .args(&argv[1..])
                .current_dir(data)
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("running {argv:?}"))?;
            let wall = t.elapsed().as_secs_f64() * 1000.0;
            if !out.status.success() {
                bail!("{argv:?} failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            if i == 0 {
                continue; // warm-up (the default image may be built)
            }
            total.push(wall);
            // In time order: the sandbox's own steps are logged after the run.
            let mut stamps: Vec<(String, f64)> = Vec::new();
            for line in String::from_utf8_lossy(&out.stderr).lines() {
                let Some(rest) = line.split("pysandbox::timing: ").nth(1) else {
                    continue;
                };
                let Some((phase, us)) = rest.rsplit_once(": ") else {
                    continue;
                };
                let Ok(us) = us.trim_end_matches(" us").parse::<f64>() else {
                    continue;
                };
                stamps.push((phase.to_string(), us));
            }
            stamps.sort_by(|a, b| a.1.total_cmp(&b.1));
            let mut prev = 0.0;
            for (phase, us) in stamps {
                if !order.contains(&phase) {
                    order.push(phase.clone());
                }
                samples.entry(phase).or_default().push((us - prev) / 1000.0);
                prev = us;
            }
        }
        println!("\n{name}: median of {runs} runs of `pysandbox run --no-fs --code pass` (ms)\n");
        println!("| phase (ends at; `sandbox:` = stamped inside) | median ms |\n|---|---:|");
        for p in &order {
            let mut v = samples[p].clone();
            v.sort_by(|a, b| a.total_cmp(b));
            println!("| {p} | {:.2} |", v[v.len() / 2]);
        }
        total.sort_by(|a, b| a.total_cmp(b));
        println!(
            "| whole command (wall, incl. exec and exit) | {:.2} |",
            total[total.len() / 2]
        );
    }
    Ok(())
}

/// The argv prefix that runs a command as uid/gid 65534 (no groups, a scrubbed
/// environment, `home` as HOME), as an ordinary user would run it.
fn as_nobody(home: &Path) -> Vec<String> {
    let mut v: Vec<String> = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "env",
        "-i",
        "PATH=/usr/bin:/bin",
    ]
    .map(String::from)
    .to_vec();
    v.push(format!("HOME={}", home.display()));
    v
}
