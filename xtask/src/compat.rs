//! `cargo xtask compat`: runs the test suites of a few widely used pure-Python projects
//! (more-itertools, six, packaging, idna, distlib, attrs)
//! bare (host python in a venv) and inside `pysandbox run` (an image built with
//! `pysandbox image build` holding pytest and the test dependencies; the project's folder
//! as the read-only data folder), as root and as an ordinary user (uid 65534), and prints
//! what passed on each side and every difference with its cause.
//!
//! Needs a Python package index (PyPI, or what `PIP_INDEX_URL` names): without one it
//! says so and does nothing. Slow (minutes): not part of `.ci/run`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::{Cleanup, sh, workspace_root};

/// `(distribution==version, test dependencies)`: pure Python, offline test suites that
/// run in seconds, shipped in the sdist.
const PROJECTS: &[(&str, &[&str])] = &[
    ("more-itertools==10.5.0", &[]),
    ("six==1.17.0", &[]),
    ("packaging==24.2", &["pretend"]),
    ("idna==3.10", &[]),
    // sysconfig, subprocess of the interpreter, script and wheel installation, the index.
    ("distlib==0.3.9", &[]),
    // hypothesis (its example database next to the tests), pympler.
    ("attrs==24.2.0", &["hypothesis==6.122.3", "pympler==1.1"]),
];

const PYTEST: &str = "pytest==8.3.4";

/// Runs pytest the same way bare and in the sandbox: no cache (the project folder is
/// read-only in the sandbox), a line per test (`-v`: its outcome, and why it was
/// skipped), and why each failure failed (`-rfE`).
const RUNNER: &str = r#"
import sys
import pytest
sys.exit(pytest.main(["-v", "-p", "no:cacheprovider", "-rfE", "--color=no"] + sys.argv[1:]))
"#;

const NOBODY: u32 = 65534;

/// The terminal width pytest is told, so it does not cut reasons short.
const WIDTH: &str = "1000";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Root,
    User,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Root => "root",
            Mode::User => "uid 65534",
        }
    }
}

struct Ctx {
    work: PathBuf,
    pysandbox: PathBuf,
    host_path: String,
}

impl Ctx {
    /// A command run as `mode`, with a small fixed environment (plus `env`).
    fn cmd(&self, mode: Mode, argv: &[&str], cwd: &Path, env: &[(&str, String)]) -> Command {
        let home = self.work.join("home-user");
        let mut c = match mode {
            Mode::Root => {
                // root keeps its HOME: pyenv's shim (python3 on root's PATH here) needs it.
                let mut c = Command::new(argv[0]);
                c.args(&argv[1..]);
                c
            }
            Mode::User => {
                let mut c = Command::new("setpriv");
                c.args([
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    "env",
                    "-i",
                ])
                .arg("PATH=/usr/local/bin:/usr/bin:/bin")
                .arg("LANG=C.UTF-8")
                .arg(format!("HOME={}", home.display()));
                for (k, v) in env {
                    c.arg(format!("{k}={v}"));
                }
                c.args(argv);
                c
            }
        };
        if mode == Mode::Root {
            c.env("PATH", &self.host_path);
            for (k, v) in env {
                c.env(k, v);
            }
        }
        c.current_dir(cwd);
        c
    }
}

fn mode_tag(mode: Mode) -> &'static str {
    match mode {
        Mode::Root => "root",
        Mode::User => "user",
    }
}

fn chown_nobody(p: &Path) -> Result<()> {
    std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY))
        .with_context(|| format!("chown {}", p.display()))
}

fn mkdir_for(mode: Mode, p: &Path) -> Result<()> {
    std::fs::create_dir_all(p)?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
    if mode == Mode::User {
        chown_nobody(p)?;
    }
    Ok(())
}

/// One test's outcome ("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL", "XPASS") and
/// the reason pytest gave.
type Outcomes = BTreeMap<String, (String, String)>;

const KINDS: &[&str] = &["PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL", "XPASS"];

/// Parses pytest's `-v` lines (`ID OUTCOME [ (reason)] [ nn%]`) and its `-rfE` summary
/// (`FAILED ID - reason`).
fn outcomes(text: &str) -> Outcomes {
    let mut m = Outcomes::new();
    for line in text.lines() {
        for kind in ["FAILED", "ERROR"] {
            // `FAILED ID - reason`; captured log lines (`ERROR    logger:file.py:12 ...`)
            // have no test id.
            if let Some(rest) = line.strip_prefix(kind).and_then(|r| r.strip_prefix(' ')) {
                let (id, why) = rest.split_once(" - ").unwrap_or((rest, ""));
                if id.contains("::") && !id.starts_with(' ') && !id.trim().contains(' ') {
                    m.insert(
                        id.trim().to_string(),
                        (kind.to_string(), why.trim().to_string()),
                    );
                }
            }
        }
    }
    for line in text.lines() {
        for kind in KINDS {
            let Some(pos) = line.find(&format!(" {kind}")) else {
                continue;
            };
            let id = &line[..pos];
            if !id.contains("::") || id.contains(' ') {
                continue;
            }
            let rest = line[pos + 1 + kind.len()..].trim();
            let rest = match rest.rfind('[') {
                Some(i) if rest.ends_with("%]") => rest[..i].trim(),
                _ => rest,
            };
            let why = rest
                .trim_start_matches('(')
                .trim_end_matches(')')
                .to_string();
            m.entry(id.to_string())
                .or_insert_with(|| (kind.to_string(), why));
            break;
        }
    }
    m
}

fn count(o: &Outcomes, kind: &str) -> usize {
    o.values().filter(|(k, _)| k == kind).count()
}

pub fn compat(args: &[String]) -> Result<()> {
    let keep = args.iter().any(|a| a == "--keep");
    // --pysandbox BIN: compare another build (e.g. an older commit's) instead of this one.
    let given = args
        .iter()
        .position(|a| a == "--pysandbox")
        .map(|i| {
            args.get(i + 1)
                .map(PathBuf::from)
                .context("--pysandbox BIN")
        })
        .transpose()?;
    let root = workspace_root();
    let binary = match given {
        Some(b) => b,
        None => {
            eprintln!("building pysandbox (debug)...");
            sh(Command::new("cargo")
                .args(["build", "-p", "pysandbox"])
                .current_dir(&root))?;
            root.join("target/debug/pysandbox")
        }
    };
    // SAFETY: geteuid cannot fail.
    let is_root = unsafe { libc::geteuid() } == 0;
    let work = std::env::temp_dir().join(format!("pysandbox-compat-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o755))?;
    let _cleanup = (!keep).then(|| Cleanup(work.clone()));
    if keep {
        eprintln!("keeping {}", work.display());
    }
    let pysandbox = work.join("pysandbox");
    std::fs::copy(&binary, &pysandbox).with_context(|| format!("copying {}", binary.display()))?;
    std::fs::set_permissions(&pysandbox, std::fs::Permissions::from_mode(0o755))?;

    // The sdists. No index: say so and stop.
    let dl = work.join("dl");
    let mut pip = Command::new("python3");
    pip.args([
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--dest",
    ])
    .arg(&dl)
    .args(PROJECTS.iter().map(|p| p.0))
    .stdin(Stdio::null());
    let out = pip.output().context("running pip download")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        println!(
            "compat: skipped: no package index reachable (pip download failed: {})",
            err.lines().last().unwrap_or("").trim()
        );
        return Ok(());
    }
    let projects_dir = work.join("projects");
    std::fs::create_dir_all(&projects_dir)?;
    let mut projects: Vec<(String, PathBuf)> = Vec::new();
    for (spec, _) in PROJECTS {
        let (name, version) = spec.split_once("==").context("pinned spec")?;
        let sdist = std::fs::read_dir(&dl)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                let f = p.file_name().unwrap_or_default().to_string_lossy();
                let f = f.replace('_', "-");
                f.starts_with(&format!("{name}-{version}")) && f.ends_with(".tar.gz")
            })
            .with_context(|| format!("pip download gave no sdist for {spec}"))?;
        sh(Command::new("tar")
            .arg("xzf")
            .arg(&sdist)
            .arg("-C")
            .arg(&projects_dir))?;
        let dir = std::fs::read_dir(&projects_dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .replace('_', "-")
                    == format!("{name}-{version}")
            })
            .with_context(|| format!("{spec}: unpacked folder not found"))?;
        // Stale bytecode or pytest caches shipped in the sdist would hide differences.
        let _ = Command::new("find")
            .arg(&dir)
            .args([
                "(",
                "-name",
                ".pytest_cache",
                "-o",
                "-name",
                "__pycache__",
                ")",
            ])
            .args(["-prune", "-exec", "rm", "-rf", "{}", "+"])
            .status();
        // The output folder's mount point: the sandbox cannot create it in a data folder
        // the caller may not write to (uid 65534 here), even with --output elsewhere.
        std::fs::create_dir_all(dir.join("output"))?;
        projects.push((name.to_string(), dir));
    }
    sh(Command::new("chmod").args(["-R", "a+rX"]).arg(&work))?;

    let runner_dir = work.join("runner");
    std::fs::create_dir_all(&runner_dir)?;
    std::fs::write(runner_dir.join("run_pytest.py"), RUNNER)?;
    sh(Command::new("chmod").args(["-R", "a+rX"]).arg(&runner_dir))?;

    let ctx = Ctx {
        work: work.clone(),
        pysandbox,
        host_path: std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
    };
    let modes: &[Mode] = if is_root {
        &[Mode::Root, Mode::User]
    } else {
        &[Mode::Root]
    };

    let mut rows = Vec::new();
    for &mode in modes {
        let tag = mode_tag(mode);
        if mode == Mode::User {
            mkdir_for(mode, &work.join("home-user"))?;
        }
        // The interpreter the mode's default image is made from.
        let python = match mode {
            Mode::Root => sh(Command::new("python3").args([
                "-c",
                "import os, sys; print(os.path.realpath(sys.executable))",
            ]))?
            .trim()
            .to_string(),
            Mode::User => "/usr/bin/python3".to_string(),
        };
        let deps: Vec<&str> = PROJECTS
            .iter()
            .flat_map(|p| p.1.iter().copied())
            .chain([PYTEST])
            .collect();

        eprintln!(
            "[{}] bare: a venv of {python} with {deps:?}...",
            mode.name()
        );
        let venv = work.join(format!("venv-{tag}"));
        mkdir_for(mode, &venv)?;
        let venv_s = venv.to_string_lossy().into_owned();
        run_ok(ctx.cmd(mode, &[&python, "-m", "venv", &venv_s], &work, &[]))?;
        let vpy = format!("{venv_s}/bin/python");
        let mut install = vec![vpy.as_str(), "-m", "pip", "install", "--quiet"];
        install.extend(deps.iter().copied());
        run_ok(ctx.cmd(mode, &install, &work, &[]))?;

        eprintln!("[{}] sandbox: pysandbox image build...", mode.name());
        let xdg = work.join(format!("xdg-{tag}"));
        mkdir_for(mode, &xdg)?;
        let envdir = work.join(format!("env-{tag}"));
        mkdir_for(mode, &envdir)?;
        let mut yaml = String::from("name: compat\ndependencies:\n  - pip\n  - pip:\n");
        for d in &deps {
            yaml.push_str(&format!("      - {d}\n"));
        }
        std::fs::write(envdir.join("compat.yaml"), yaml)?;
        if mode == Mode::User {
            chown_nobody(&envdir.join("compat.yaml"))?;
        }
        let ps = ctx.pysandbox.to_string_lossy().into_owned();
        // A private store and cache: no run or build of another pysandbox version on this
        // machine shares (or rebuilds under us) the default image.
        let cache = work.join(format!("cache-{tag}"));
        mkdir_for(mode, &cache)?;
        let xdg_env = [
            ("XDG_DATA_HOME", xdg.to_string_lossy().into_owned()),
            ("XDG_CACHE_HOME", cache.to_string_lossy().into_owned()),
        ];
        run_ok(ctx.cmd(
            mode,
            &[
                &ps,
                "image",
                "build",
                "compat.yaml",
                "-t",
                "pysandbox-compat",
            ],
            &envdir,
            &xdg_env,
        ))?;

        for (name, dir) in &projects {
            let pythonpath = format!("{0}:{0}/src", dir.display());
            let runner = runner_dir.join("run_pytest.py");
            let runner_s = runner.to_string_lossy().into_owned();
            eprintln!("[{}] {name}: bare...", mode.name());
            let bare = ctx
                .cmd(
                    mode,
                    &[&vpy, &runner_s],
                    dir,
                    &[
                        ("PYTHONPATH", pythonpath),
                        ("PYTHONDONTWRITEBYTECODE", "1".into()),
                        ("COLUMNS", WIDTH.into()),
                        ("PYTHONHASHSEED", "0".into()),
                    ],
                )
                .stdin(Stdio::null())
                .output()?;
            eprintln!("[{}] {name}: sandbox...", mode.name());
            let out_dir = work.join(format!("out-{tag}-{name}"));
            mkdir_for(mode, &out_dir)?;
            let dir_s = dir.to_string_lossy().into_owned();
            let out_s = out_dir.to_string_lossy().into_owned();
            let inside = ctx
                .cmd(
                    mode,
                    &[
                        &ps,
                        "run",
                        "--image",
                        "pysandbox-compat",
                        "--data",
                        &dir_s,
                        "--output",
                        &out_s,
                        "--timeout",
                        "15m",
                        "--memory",
                        "2G",
                        "--pids",
                        "512",
                        "-e",
                        "PYTHONPATH=/usr/app/data:/usr/app/data/src",
                        "-e",
                        &format!("COLUMNS={WIDTH}"),
                        "-e",
                        "PYTHONHASHSEED=0",
                        // One line per test: packaging's 21,000 tests print megabytes.
                        "--max-output",
                        "512M",
                        "--seccomp-log",
                        &runner_s,
                    ],
                    &work,
                    &xdg_env,
                )
                .stdin(Stdio::null())
                .output()?;
            let b = outcomes(&String::from_utf8_lossy(&bare.stdout));
            let s = outcomes(&String::from_utf8_lossy(&inside.stdout));
            let stderr = String::from_utf8_lossy(&inside.stderr).into_owned();
            if b.is_empty() || s.is_empty() {
                eprintln!(
                    "[{}] {name}: no results (bare {}, sandbox {}):\n{}\n{}",
                    mode.name(),
                    bare.status,
                    inside.status,
                    tail(&String::from_utf8_lossy(&bare.stdout), 1500),
                    tail(
                        &format!("{}{stderr}", String::from_utf8_lossy(&inside.stdout)),
                        1500
                    )
                );
            }
            let refused = stderr
                .lines()
                .find(|l| l.starts_with("pysandbox: seccomp refused"))
                .unwrap_or("")
                .to_string();
            let failure = format!(
                "exit {}, {}",
                inside.status.code().unwrap_or(-1),
                stderr
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .trim()
            );
            rows.push((mode, name.clone(), b, s, refused, failure));
        }
    }

    println!(
        "\n| project | mode | tests | passed bare | passed in sandbox | skipped bare | skipped in sandbox | failed/error bare | failed/error in sandbox |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut diffs = Vec::new();
    for (mode, name, b, s, refused, failure) in &rows {
        let total = b.len().max(s.len());
        println!(
            "| {name} | {} | {total} | {} | {} | {} | {} | {} | {} |",
            mode.name(),
            count(b, "PASSED"),
            count(s, "PASSED"),
            count(b, "SKIPPED"),
            count(s, "SKIPPED"),
            count(b, "FAILED") + count(b, "ERROR"),
            count(s, "FAILED") + count(s, "ERROR"),
        );
        if s.is_empty() {
            diffs.push(format!(
                "- {name} ({}): the sandbox run gave no test results: {}",
                mode.name(),
                failure
            ));
            continue;
        }
        // Grouped by test function (parameters dropped), outcomes and reason.
        let mut groups: BTreeMap<(String, String, String, String), usize> = BTreeMap::new();
        let mut ids: Vec<&String> = b.keys().chain(s.keys()).collect();
        ids.sort();
        ids.dedup();
        for id in ids {
            let none = (String::from("(not run)"), String::new());
            let (bk, bw) = b.get(id).unwrap_or(&none);
            let (sk, sw) = s.get(id).unwrap_or(&none);
            if bk != sk {
                let why = if sk != "PASSED" { sw } else { bw };
                let base = id.split('[').next().unwrap_or(id).to_string();
                *groups
                    .entry((base, bk.clone(), sk.clone(), why.clone()))
                    .or_default() += 1;
            }
        }
        for ((base, bk, sk, why), n) in groups {
            let times = if n > 1 {
                format!(" (x{n})")
            } else {
                String::new()
            };
            diffs.push(format!(
                "- {name} ({}): `{base}`{times}: bare {bk}, sandbox {sk}: {why}",
                mode.name()
            ));
        }
        if !refused.is_empty() && !refused.contains("refused no syscall") {
            diffs.push(format!("- {name} ({}): {refused}", mode.name()));
        }
    }
    println!();
    if diffs.is_empty() {
        println!("No differences: every test has the same outcome bare and in the sandbox.");
    } else {
        println!("Differences ({}):", diffs.len());
        for d in &diffs {
            println!("{d}");
        }
    }
    Ok(())
}

fn run_ok(mut c: Command) -> Result<()> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        bail!(
            "{c:?} failed with {}:\n{}{}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stdout), 2000),
            tail(&String::from_utf8_lossy(&out.stderr), 2000)
        );
    }
    Ok(())
}

fn tail(s: &str, n: usize) -> &str {
    let mut i = s.len().saturating_sub(n);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}
