//! The Python package in clients/python: `pip install ./clients/python` into a venv, then
//! its own pytest suite against the real binary and a real `pysandbox serve`, as root
//! and as the ordinary user (uid 65534 when the tests run as root). Needs a package
//! index for the build backend and pytest (PYSANDBOX_TEST_NO_INDEX=1 skips).

mod common;

use std::process::Command;

use common::*;

#[test]
fn the_python_package_passes_its_tests() {
    if no_index() {
        return;
    }
    let venv = workdir(Who::User);
    let root = env!("CARGO_MANIFEST_DIR");
    // Built from a copy: setuptools writes build/ and *.egg-info next to the sources.
    let src = venv.path().join("src");
    assert!(
        Command::new("cp")
            .args(["-r", &format!("{root}/clients/python")])
            .arg(&src)
            .status()
            .unwrap()
            .success()
    );
    let python = venv_with(&venv.path().join("v"), &[src.to_str().unwrap(), "pytest"]);
    // The tests, copied where the ordinary user can read them.
    let tests = venv.path().join("tests");
    std::fs::create_dir(&tests).unwrap();
    std::fs::copy(
        format!("{root}/clients/python/tests/test_pysandbox.py"),
        tests.join("test_pysandbox.py"),
    )
    .unwrap();
    for who in [Who::Root, Who::User] {
        if !available(who) {
            continue;
        }
        let mut argv: Vec<String> = Vec::new();
        if who == Who::User {
            // `env -i` inside: the variable goes on its command line.
            argv.extend(as_user());
            argv.push(format!("PYSANDBOX_BIN={}", bin().display()));
        }
        argv.push(python.to_string_lossy().into());
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
