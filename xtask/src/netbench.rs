//! `cargo xtask bench --net [--runs N]` (as root): download throughput from inside the
//! sandbox, through the `--allow-net` proxy and directly with `--network` (pasta), from
//! the same server: a network namespace of its own behind a veth pair (198.51.100.0/30,
//! so nothing leaves the machine; `--network` cannot reach the host's loopback). Also the
//! bare host interpreter as the ceiling. Each run downloads [`SIZE`] bytes with urllib and
//! reports what the script measured around the read loop; the table shows medians.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Bytes per download.
const SIZE: usize = 100 << 20;
const NETNS: &str = "psbench-srv";
const HOST_LINK: &str = "psbench-h";
const SRV_LINK: &str = "psbench-s";
const HOST_ADDR: &str = "198.51.100.1";
const SRV_ADDR: &str = "198.51.100.2";

/// The client: downloads the URL (through the environment's proxy, if any), prints MB/s.
const CLIENT: &str = r#"
import sys, time, urllib.request
r = urllib.request.urlopen(sys.argv[1], timeout=60)
n, t = 0, time.perf_counter()
while True:
    b = r.read(1 << 20)
    if not b:
        break
    n += len(b)
t = time.perf_counter() - t
print("%.1f" % (n / t / 1e6) if n == int(sys.argv[2]) else "short %d" % n)
"#;

fn ip(args: &[&str]) -> Result<()> {
    let st = Command::new("ip")
        .args(args)
        .status()
        .context("running ip")?;
    if !st.success() {
        bail!("ip {args:?} failed");
    }
    Ok(())
}

/// The server's namespace and veth; removed on drop.
struct Server;

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", HOST_LINK]).status();
        let _ = Command::new("ip").args(["netns", "del", NETNS]).status();
    }
}

/// Makes the server's namespace and starts serving SIZE bytes per connection there.
fn start_server() -> Result<(Server, u16)> {
    let _ = Command::new("ip").args(["netns", "del", NETNS]).output();
    ip(&["netns", "add", NETNS])?;
    let guard = Server;
    ip(&[
        "link", "add", HOST_LINK, "type", "veth", "peer", "name", SRV_LINK,
    ])?;
    ip(&["link", "set", SRV_LINK, "netns", NETNS])?;
    ip(&["addr", "add", &format!("{HOST_ADDR}/30"), "dev", HOST_LINK])?;
    ip(&["link", "set", HOST_LINK, "up"])?;
    for args in [
        vec!["addr", "add", "198.51.100.2/30", "dev", SRV_LINK],
        vec!["link", "set", SRV_LINK, "up"],
        vec!["link", "set", "lo", "up"],
        vec!["route", "add", "default", "via", HOST_ADDR],
    ] {
        let mut v = vec!["-n", NETNS];
        v.extend(args);
        ip(&v)?;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/var/run/netns/{NETNS}")).unwrap();
        // SAFETY: setns on this thread only (a thread may join a network namespace).
        let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        let l = (r == 0)
            .then(|| TcpListener::bind((SRV_ADDR, 0)).ok())
            .flatten();
        let _ = tx.send(l.as_ref().map(|l| l.local_addr().unwrap().port()));
        let Some(l) = l else { return };
        let chunk = vec![b'x'; 1 << 20];
        for mut c in l.incoming().flatten() {
            let chunk = chunk.clone();
            std::thread::spawn(move || {
                let mut head = [0u8; 4096];
                let _ = c.read(&mut head);
                let _ = write!(c, "HTTP/1.0 200 OK\r\nContent-Length: {SIZE}\r\n\r\n");
                for _ in 0..SIZE / chunk.len() {
                    if c.write_all(&chunk).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let port = rx
        .recv()?
        .context("starting the server in its network namespace")?;
    Ok((guard, port))
}

pub fn net_bench(pysandbox: &Path, host_python: &Path, data: &Path, runs: usize) -> Result<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench --net makes a network namespace and a veth pair: run it as root");
    }
    let (_server, port) = start_server()?;
    std::fs::write(data.join("download.py"), CLIENT)?;
    let url = format!("http://{SRV_ADDR}:{port}/");
    let size = SIZE.to_string();
    let ps = pysandbox.to_string_lossy().into_owned();
    let allow = format!("{SRV_ADDR}:{port}");
    let cases: Vec<(&str, Vec<&str>)> = vec![
        (
            "host python (no sandbox)",
            vec![host_python.to_str().unwrap_or("python3")],
        ),
        (
            "pysandbox run --network (pasta)",
            vec![&ps, "run", "--network"],
        ),
        (
            "pysandbox run --allow-net (proxy)",
            vec![&ps, "run", "--allow-net", &allow],
        ),
    ];
    let mut results: Vec<(&str, Vec<f64>)> = cases.iter().map(|c| (c.0, Vec::new())).collect();
    for i in 0..=runs {
        for (k, (name, argv)) in cases.iter().enumerate() {
            let out = Command::new(argv[0])
                .args(&argv[1..])
                .args(["download.py", &url, &size])
                .current_dir(data)
                .output()
                .with_context(|| name.to_string())?;
            let text = String::from_utf8_lossy(&out.stdout);
            let Ok(mbs) = text.trim().parse::<f64>() else {
                bail!(
                    "{name}: {text} {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            };
            if i > 0 {
                results[k].1.push(mbs); // run 0 warms up
            }
        }
    }
    println!(
        "\ndownload of {} MiB over TCP from a server behind a veth, median of {runs} runs\n",
        SIZE >> 20
    );
    println!("| path | median MB/s | x --network |\n|---|---:|---:|");
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let direct = median(&results[1].1);
    for (name, v) in &results {
        let m = median(v);
        println!("| {name} | {m:.0} | {:.2} |", m / direct);
    }
    Ok(())
}
