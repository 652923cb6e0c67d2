//! `run --keep`, `ps`, `inspect`, `run --from`, `rm`, `prune`: what a run leaves in /tmp,
//! HOME and its output folder is kept under its id (private, capped, never executable),
//! listed, shown, used as the start of a fresh sandbox (which never changes it) and
//! removed. Each test has a data folder (XDG_DATA_HOME) of its own.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use common::*;

/// pysandbox as `who` in `dir`, with a kept-run store of its own under `dir`.
fn ps(who: Who, dir: &Path, args: &[&str]) -> Output {
    let data = private_data_home(dir);
    command_with_env(who, dir, args, &[("XDG_DATA_HOME", &data)])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn runs_dir(dir: &Path) -> PathBuf {
    dir.join("xdg/pysandbox/runs")
}

const MAKE_STATE: &str = r##"
import os
open("/tmp/t.txt", "w").write("tmp data")
os.makedirs("/tmp/d")
open("/tmp/d/run.sh", "w").write("#!/bin/sh\n")
os.chmod("/tmp/d/run.sh", 0o755)
open(os.path.expanduser("~/notes.txt"), "w").write("home data")
open("output/result.txt", "w").write("result")
os.symlink("/etc/passwd", "/tmp/escape")
print("made")
"##;

each_mode!(keep_ps_inspect_from_rm, |who| {
    let dir = workdir(who);
    put(dir.path(), "t.py", MAKE_STATE);
    let o = ps(who, dir.path(), &["run", "--keep", "t.py"]);
    assert_code(&o, 0, "run --keep");
    assert_eq!(stdout(&o), "made\n");
    assert!(
        stderr(&o).contains("1 symbolic links in the kept folder point outside it"),
        "{}",
        stderr(&o)
    );
    let id = kept_id(&o);

    let o = ps(who, dir.path(), &["ps"]);
    assert_code(&o, 0, "ps");
    let row = stdout(&o)
        .lines()
        .find(|l| l.starts_with(&id))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("{id} not in {}", stdout(&o)));
    assert!(row.contains(" ok "), "{row}");

    let o = ps(who, dir.path(), &["inspect", &id]);
    assert_code(&o, 0, "inspect");
    let listing = stdout(&o);
    for line in [
        "/tmp/t.txt (",
        "/tmp/d/\n",
        "/tmp/d/run.sh (",
        "/home/mambauser/notes.txt (",
        "/usr/app/data/output/result.txt (",
    ] {
        assert!(listing.contains(line), "{line:?} not in {listing}");
    }
    assert!(!listing.contains("escape"), "{listing}");

    // Private to the caller, and never executable from the host.
    let kept = runs_dir(dir.path()).join(&id);
    let m = std::fs::metadata(&kept).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o700);
    assert_eq!(m.uid(), host_uid(who));
    let script = std::fs::metadata(kept.join("tmp/d/run.sh")).unwrap();
    assert_eq!(
        script.permissions().mode() & 0o111,
        0,
        "kept file is executable"
    );
    assert_eq!(script.uid(), host_uid(who));

    // A fresh sandbox starts from that state; what it changes is not kept.
    let read = "import os\nprint(open('/tmp/t.txt').read(), open(os.path.expanduser('~/notes.txt')).read())\nopen('/tmp/t.txt', 'w').write('changed')\n";
    for _ in 0..2 {
        let o = ps(who, dir.path(), &["run", "--from", &id, "--code", read]);
        assert_code(&o, 0, "run --from");
        assert_eq!(stdout(&o), "tmp data home data\n");
    }

    let o = ps(who, dir.path(), &["rm", &id]);
    assert_code(&o, 0, "rm");
    assert!(!kept.exists());
    let o = ps(who, dir.path(), &["ps"]);
    assert!(!stdout(&o).contains(&id), "{}", stdout(&o));
});

each_mode!(kept_state_is_capped_and_prune_removes_all, |who| {
    let dir = workdir(who);
    put(
        dir.path(),
        "big.py",
        "f = open('/tmp/big', 'wb')\ntry:\n    for _ in range(40):\n        f.write(b'x' * (1 << 20))\n        f.flush()\nexcept OSError as e:\n    print('errno', e.errno)\n",
    );
    let o = ps(
        who,
        dir.path(),
        &["run", "--keep", "--memory", "64M", "big.py"],
    );
    assert_eq!(stdout(&o), "errno 28\n", "{}", stderr(&o));
    let id = kept_id(&o);
    let big = std::fs::metadata(runs_dir(dir.path()).join(&id).join("tmp/big"))
        .map(|m| m.blocks() * 512)
        .unwrap_or(0);
    assert!(big <= 32 << 20, "{big} bytes kept: more than /tmp's cap");
    let o = ps(who, dir.path(), &["run", "--keep", "--code", "pass"]);
    assert_code(&o, 0, "second kept run");
    let o = ps(who, dir.path(), &["prune"]);
    assert_code(&o, 0, "prune");
    assert_eq!(stdout(&o), "removed 2 kept runs\n");
    let o = ps(who, dir.path(), &["ps"]);
    assert_eq!(stdout(&o).lines().count(), 1, "{}", stdout(&o));
});

#[test]
fn bad_ids_and_combinations_are_refused() {
    let who = me();
    let dir = workdir(who);
    for (args, expect) in [
        (vec!["inspect", "../../etc"], "is not a run id"),
        (
            vec!["rm", "ps-0123456789abcdef"],
            "no kept run ps-0123456789abcdef",
        ),
        (
            vec!["run", "--from", "/tmp", "--code", "pass"],
            "is not a run id",
        ),
        (
            vec!["run", "--from", "ps-0123456789abcdef", "--code", "pass"],
            "no kept run",
        ),
    ] {
        let o = ps(who, dir.path(), &args);
        assert_refused(&o, &format!("{args:?}"), expect);
    }
}
