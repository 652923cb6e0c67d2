//! `rootfs-builder [--python PATH] DEST`: probes a host interpreter (default
//! `python3` on `PATH`), builds the image into DEST and prints the manifest
//! as JSON on stdout. Exits 1 with a one-line error on failure.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: rootfs-builder [--python PATH] DEST";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("rootfs-builder: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut python = PathBuf::from("python3");
    let mut dest: Option<PathBuf> = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("-h" | "--help") => {
                println!("{USAGE}");
                return Ok(());
            }
            Some("--python") => {
                python = args
                    .next()
                    .map(PathBuf::from)
                    .ok_or_else(|| format!("--python needs a value; {USAGE}"))?;
            }
            Some(s) if s.starts_with("--python=") => {
                python = PathBuf::from(&s["--python=".len()..]);
            }
            Some(s) if s.starts_with('-') && s.len() > 1 => {
                return Err(format!("unknown option `{s}`; {USAGE}"));
            }
            _ if dest.is_none() => dest = Some(PathBuf::from(arg)),
            _ => return Err(format!("too many arguments; {USAGE}")),
        }
    }
    let dest = dest.ok_or_else(|| format!("missing DEST; {USAGE}"))?;
    let host = rootfs_builder::probe_python(&python).map_err(|e| e.to_string())?;
    let manifest = rootfs_builder::build_rootfs(&host, &dest).map_err(|e| e.to_string())?;
    let json = serde_json::to_string_pretty(&manifest).map_err(|e| e.to_string())?;
    writeln!(std::io::stdout().lock(), "{json}").map_err(|e| {
        format!(
            "image built in {} but printing the manifest failed: {e}",
            dest.display()
        )
    })
}
