//! The Python package in clients/python: `pip install ./clients/python` into a venv, then
//! its own pytest suite against the real binary and a real `pysandbox serve`, as root
//! and as uid 65534. Needs a package index for the build backend and pytest
//! (PYSANDBOX_TEST_NO_INDEX=1 skips).

mod common;

use std::process::Command;

use common::*;

#[test]
fn the_python_package_passes_its_tests() {
    if !available(Who::Root) {
        return;
    }
    if std::env::var("PYSANDBOX_TEST_NO_INDEX").as_deref() == Ok("1") {
        eprintln!("SKIP: PYSANDBOX_TEST_NO_INDEX=1 says there is no package index here");
        return;
    }
    let venv = workdir(Who::User);
    let root = env!("CARGO_MANIFEST_DIR");
    let ok = Command::new("/usr/bin/python3")
        .args(["-m", "venv"])
        .arg(venv.path().join("v"))
        .status()
        .unwrap()
        .success()
        && Command::new(venv.path().join("v/bin/pip"))
            .args(["install", "-q", &format!("{root}/clients/python"), "pytest"])
            .status()
            .unwrap()
            .success();
    assert!(ok, "installing the package and pytest failed");
    // The tests, copied where uid 65534 can read them.
    let tests = venv.path().join("tests");
    std::fs::create_dir(&tests).unwrap();
    std::fs::copy(
        format!("{root}/clients/python/tests/test_pysandbox.py"),
        tests.join("test_pysandbox.py"),
    )
    .unwrap();
    for who in [Who::Root, Who::User] {
        let mut argv: Vec<String> = Vec::new();
        if who == Who::User {
            // `env -i` inside: the variable goes on its command line.
            argv.extend(as_nobody());
            argv.push(format!("PYSANDBOX_BIN={}", bin().display()));
        }
        argv.push(venv.path().join("v/bin/python").to_string_lossy().into());
        argv.extend(["-m", "pytest", "-q", "-p", "no:cacheprovider"].map(String::from));
        argv.push(tests.to_string_lossy().into());
        let o = Command::new(&argv[0])
            .args(&argv[1..])
            .env("PYSANDBOX_BIN", bin())
            .current_dir(venv.path())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{who:?}: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}
