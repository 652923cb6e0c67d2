//! Compiles the seccomp policy (`seccomp/<arch>.json`, seccompiler's JSON format) for the
//! target architecture into BPF and embeds it: a policy that does not compile fails the
//! build. Each filter is laid out as a search over syscall numbers (`build/seccomp_tree.rs`),
//! checked against seccompiler's own program before it is written. Also turns the kernel's syscall header into a number -> name table, so a refused
//! syscall can be named (`--seccomp-log`) and every syscall outside the allow-list tested.

#[path = "build/seccomp_tree.rs"]
mod seccomp_tree;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets the target arch");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let policy = Path::new("seccomp").join(format!("{arch}.json"));
    println!("cargo:rerun-if-changed={}", policy.display());

    let target = match arch.as_str() {
        "x86_64" => seccompiler::TargetArch::x86_64,
        "aarch64" => seccompiler::TargetArch::aarch64,
        other => panic!("no seccomp policy for {other}: add seccomp/{other}.json"),
    };
    let text =
        std::fs::read_to_string(&policy).unwrap_or_else(|e| panic!("{}: {e}", policy.display()));
    let json: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("seccomp policy {} is not JSON: {e}", policy.display()));
    for name in ["sandbox", "clone3_enosys", "socket_eafnosupport", "proxy"] {
        assert!(
            json.get(name).is_some(),
            "{} has no filter named {name:?}",
            policy.display()
        );
        let laid = seccomp_tree::tree(&json, name, target);
        seccomp_tree::check(name, &laid, audit_arch(&arch));
        let prog = laid.program;
        let mut bytes = Vec::with_capacity(prog.len() * 8);
        for ins in prog {
            bytes.extend_from_slice(&ins.code.to_ne_bytes());
            bytes.push(ins.jt);
            bytes.push(ins.jf);
            bytes.extend_from_slice(&ins.k.to_ne_bytes());
        }
        std::fs::write(out.join(format!("seccomp_{name}.bpf")), bytes).expect("write OUT_DIR");
    }

    std::fs::write(out.join("syscall_names.rs"), syscall_names(&arch)).expect("write OUT_DIR");
}

/// The `AUDIT_ARCH_*` value seccomp reports for `arch`.
fn audit_arch(arch: &str) -> u32 {
    match arch {
        "x86_64" => 0xc000_003e,
        "aarch64" => 0xc000_00b7,
        other => panic!("no audit arch for {other}"),
    }
}

/// `[(nr, "name"), ...]` from the kernel's uapi header for `arch`, or an empty table when
/// the header is not installed (names then print as numbers).
fn syscall_names(arch: &str) -> String {
    let candidates: &[&str] = match arch {
        "x86_64" => &[
            "/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
            "/usr/include/asm/unistd_64.h",
        ],
        _ => &["/usr/include/asm-generic/unistd.h"],
    };
    let mut table: Vec<(u32, String)> = Vec::new();
    for c in candidates {
        println!("cargo:rerun-if-changed={c}");
        let Ok(text) = std::fs::read_to_string(c) else {
            continue;
        };
        for line in text.lines() {
            let mut it = line.split_whitespace();
            if it.next() != Some("#define") {
                continue;
            }
            let (Some(name), Some(nr)) = (it.next(), it.next()) else {
                continue;
            };
            let Some(name) = name.strip_prefix("__NR_") else {
                continue;
            };
            if let Ok(nr) = nr.parse::<u32>() {
                table.push((nr, name.to_string()));
            }
        }
        break;
    }
    table.sort();
    table.dedup_by_key(|e| e.0);
    let mut s = String::from("&[\n");
    for (nr, name) in table {
        let _ = writeln!(s, "    ({nr}, {name:?}),");
    }
    s.push(']');
    s
}
