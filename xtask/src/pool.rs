//! `cargo xtask bench --pool [--runs N] [--load N]`: the warm pool against the floor.
//!
//! Side by side in one run, as ratios to the bare `python -S -c pass` floor: latency of
//! one `print(1)` (p50, p99) for the floor, a cold `pysandbox run`, a pooled run through
//! the library and through `pysandbox serve` over loopback HTTP (each claim made with the
//! pool full, so it measures a warm claim, not the refill), and one `x += 1` in a live
//! session; then throughput at
//! saturation (runs/s, 4 at a time) for bare python, cold runs and the pool; then a
//! bounded load run against the server (N requests from 16 clients) with its errors and
//! the server's peak RSS.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pysandbox::{Pool, PoolConfig, RunRequest, Sandbox, WhenEmpty};

fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((s.len() - 1) as f64 * p).round() as usize]
}

fn time_cmd(argv: &[&str]) -> Result<f64> {
    let t = Instant::now();
    let st = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("{argv:?} failed: {st}");
    }
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// Runs/s of `job` run `total` times, `par` at a time.
fn throughput(total: usize, par: usize, job: &(dyn Fn() -> Result<()> + Sync)) -> Result<f64> {
    let next = AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..par)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    while next.fetch_add(1, Ordering::SeqCst) < total {
                        job()?;
                    }
                    Ok(())
                })
            })
            .collect();
        hs.into_iter().try_for_each(|h| h.join().unwrap())
    })?;
    Ok(total as f64 / t.elapsed().as_secs_f64())
}

fn http_run(agent: &ureq::Agent, url: &str) -> Result<()> {
    let mut r = agent
        .post(url)
        .header("content-type", "application/json")
        .send(r#"{"code":"print(1)"}"#)?;
    let body = r.body_mut().read_to_string()?;
    if !body.contains(r#""status":"ok""#) {
        bail!("bad answer: {body}");
    }
    Ok(())
}

fn wait_idle(agent: &ureq::Agent, base: &str, n: usize) -> Result<()> {
    let t = Instant::now();
    loop {
        let body = agent
            .get(format!("{base}/v1/health"))
            .call()?
            .body_mut()
            .read_to_string()?;
        if body.contains(&format!("\"idle\":{n}")) {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(120) {
            bail!("the server's pool never filled: {body}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

pub fn bench(pysandbox: &Path, python: &str, runs: usize, load: usize) -> Result<()> {
    let ps = pysandbox.to_string_lossy().into_owned();
    let sandbox = Sandbox::with_helper(pysandbox).timeout(Duration::from_secs(30));
    let size = 4;
    let pool = Pool::new(
        sandbox.clone(),
        PoolConfig {
            size,
            max_idle: Duration::from_secs(3600),
            when_empty: WhenEmpty::Wait(Duration::from_secs(120)),
        },
    );
    let port = 20000 + (std::process::id() % 20000) as u16;
    let base = format!("http://127.0.0.1:{port}");
    let mut server = Command::new(pysandbox)
        .args(["serve", "--pool", &size.to_string(), "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--max-concurrent", "16", "--max-queue", "1024"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting pysandbox serve")?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let result = (|| -> Result<()> {
        let t = Instant::now();
        while agent.get(format!("{base}/v1/health")).call().is_err() {
            if t.elapsed() > Duration::from_secs(120) {
                bail!("pysandbox serve did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !pool.wait_ready(size, Duration::from_secs(120)) {
            bail!("the pool never filled: {:?}", pool.last_error());
        }
        let url = format!("{base}/v1/run");
        let mut floor = Vec::new();
        let mut cold = Vec::new();
        let mut lib = Vec::new();
        let mut http = Vec::new();
        eprintln!("latency: {runs} runs of each, interleaved...");
        for _ in 0..runs {
            floor.push(time_cmd(&[python, "-S", "-c", "pass"])?);
            cold.push(time_cmd(&[&ps, "run", "--no-fs", "--code", "print(1)"])?);
            pool.wait_ready(size, Duration::from_secs(120));
            let t = Instant::now();
            let r = pool.run(&RunRequest::code("print(1)"))?;
            lib.push(t.elapsed().as_secs_f64() * 1000.0);
            if r.stdout.text != "1\n" || r.pool.map(|p| p.warm) != Some(true) {
                bail!("pooled run went wrong: {r:?}");
            }
            wait_idle(&agent, &base, size)?;
            let t = Instant::now();
            http_run(&agent, &url)?;
            http.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        // A live session: one `x += 1` per execute.
        let mut session = pysandbox::Session::open(&sandbox, Duration::from_secs(3600))?;
        session.execute("x = 0", Duration::from_secs(10))?;
        let mut live = Vec::new();
        for _ in 0..runs.max(20) {
            let t = Instant::now();
            let e = session.execute("x += 1", Duration::from_secs(10))?;
            live.push(t.elapsed().as_secs_f64() * 1000.0);
            if e.error.is_some() {
                bail!("session execute went wrong: {e:?}");
            }
        }
        session.close();
        let f50 = pct(&floor, 0.5);
        println!("\nwarm pool (size {size}): latency of one print(1), {runs} runs\n");
        println!("| path | p50 ms | p99 ms | p50 x floor |\n|---|---:|---:|---:|");
        for (name, v) in [
            ("bare python -S -c pass (floor)", &floor),
            ("pysandbox run --no-fs (cold)", &cold),
            ("Pool::run (library, warm)", &lib),
            ("POST /v1/run (pysandbox serve, warm)", &http),
            ("Session::execute(\"x += 1\") (live session)", &live),
        ] {
            println!(
                "| {name} | {:.1} | {:.1} | {:.2} |",
                pct(v, 0.5),
                pct(v, 0.99),
                pct(v, 0.5) / f50
            );
        }

        let n = 200;
        eprintln!("throughput: {n} runs, 4 at a time...");
        let bare = throughput(n, 4, &|| {
            time_cmd(&[python, "-S", "-c", "pass"]).map(|_| ())
        })?;
        let coldt = throughput(n / 2, 4, &|| {
            time_cmd(&[&ps, "run", "--no-fs", "--code", "print(1)"]).map(|_| ())
        })?;
        let pooled = throughput(n, 4, &|| {
            let r = pool.run(&RunRequest::code("print(1)"))?;
            if r.stdout.text != "1\n" {
                bail!("pooled run went wrong: {r:?}");
            }
            Ok(())
        })?;
        println!(
            "\nthroughput at saturation (4 at a time, {} cores)\n",
            num_cpus()
        );
        println!("| path | runs/s | x bare python |\n|---|---:|---:|");
        for (name, v) in [
            ("bare python -S -c pass", bare),
            ("pysandbox run (cold)", coldt),
            ("Pool::run (size 4, refilling)", pooled),
        ] {
            println!("| {name} | {v:.1} | {:.2} |", v / bare);
        }

        if load > 0 {
            eprintln!("load: {load} requests from 16 clients...");
            let errors = AtomicUsize::new(0);
            let t = Instant::now();
            let rate = throughput(load, 16, &|| {
                if http_run(&agent, &url).is_err() {
                    errors.fetch_add(1, Ordering::SeqCst);
                }
                Ok(())
            })?;
            println!(
                "\nload: {load} requests, 16 clients, loopback: {:.1} s, {rate:.1} req/s, {} errors, server peak RSS {} MiB",
                t.elapsed().as_secs_f64(),
                errors.load(Ordering::SeqCst),
                peak_rss_kib(server.id()) / 1024
            );
        }
        Ok(())
    })();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let _ = server.wait();
    drop(pool);
    result
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
