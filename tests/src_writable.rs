//! `--src-writable`: the source folder at /usr/app/src (the script's own, or `--dev SRC`)
//! becomes writable with the output folder's protections: changes land on a capped layer
//! merged back when the run ends, set-id bits never, host symlinks never followed, links
//! leading outside never written back; and a warning says the script can change its own
//! source. What the host folder holds afterwards is the proof.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::*;

fn mkdir(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let d = dir.join(name);
    std::fs::create_dir(&d).unwrap();
    let m = std::fs::metadata(dir).unwrap();
    std::os::unix::fs::chown(&d, Some(m.uid()), Some(m.gid())).unwrap();
    d
}

each_mode!(source_changes_are_written_back_safely, |who| {
    let dir = workdir(who);
    let src = mkdir(dir.path(), "src");
    let victim = mkdir(dir.path(), "victim");
    put(&src, "a.txt", "old\n");
    std::os::unix::fs::symlink(&victim, src.join("link")).unwrap();
    let _ = std::process::Command::new("chown")
        .args(["-h", &format!("{}", host_uid(who))])
        .arg(src.join("link"))
        .status();
    put(
        &src,
        "t.py",
        r#"
import os
os.chdir("/usr/app/src")
open("a.txt", "w").write("new\n")
open("made.txt", "w").write("made\n")
try:
    os.chmod("made.txt", 0o4755)
    print("setuid allowed")
except OSError as e:
    print("setuid", e.errno)
os.chmod("made.txt", 0o755)
# Replace the host symlink by a folder: the merge must not write through the link.
os.remove("link")
os.mkdir("link")
open("link/pwn", "w").write("x")
os.symlink("/etc/passwd", "escape")
print("ok")
"#,
    );
    let o = run_in(who, dir.path(), &["run", "--src-writable", "src/t.py"], b"");
    assert_code(&o, 0, "--src-writable");
    assert_eq!(stdout(&o), "setuid 1\nok\n");
    let err = stderr(&o);
    assert!(
        err.contains(
            "pysandbox: warning: --src-writable: the script can modify its own source folder"
        ),
        "{err}"
    );
    assert!(
        err.contains("1 symbolic links in the source folder point outside it"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(src.join("a.txt")).unwrap(), "new\n");
    let made = std::fs::metadata(src.join("made.txt")).unwrap();
    assert_eq!(made.uid(), host_uid(who), "new files are the caller's");
    assert_eq!(made.permissions().mode() & 0o7777, 0o755);
    assert!(
        std::fs::read_dir(&victim).unwrap().next().is_none(),
        "written through a host symlink"
    );
    assert!(src.join("link").symlink_metadata().unwrap().is_dir());
    assert!(src.join("escape").symlink_metadata().is_err());
});

each_mode!(source_layer_is_capped, |who| {
    let dir = workdir(who);
    let src = mkdir(dir.path(), "src");
    put(
        &src,
        "t.py",
        r#"
try:
    open("/usr/app/src/big", "wb").write(b"x" * (3 << 20))
    print("written")
except OSError as e:
    print("errno", e.errno)
"#,
    );
    let o = run_in(
        who,
        dir.path(),
        &["run", "--src-writable", "--output-limit", "1M", "src/t.py"],
        b"",
    );
    assert_eq!(stdout(&o), "errno 28\n", "{}", stderr(&o));
    let big = std::fs::metadata(src.join("big"))
        .map(|m| m.blocks() * 512)
        .unwrap_or(0);
    assert!(big <= 1 << 20, "{big} bytes landed on the host");
});

each_mode!(dev_folder_writable_and_read_only_without_the_flag, |who| {
    let dir = workdir(who);
    let dev = mkdir(dir.path(), "proj");
    let pkg = mkdir(&dev, "pkg");
    put(
        &pkg,
        "t.py",
        "open('/usr/app/src/notes.txt', 'w').write('hi')\n",
    );
    let o = run_in(
        who,
        dir.path(),
        &["run", "--dev", "proj", "proj/pkg/t.py"],
        b"",
    );
    assert_code(&o, 1, "read-only without --src-writable");
    assert!(
        stderr(&o).contains("Read-only file system"),
        "{}",
        stderr(&o)
    );
    let o = run_in(
        who,
        dir.path(),
        &["run", "--dev", "proj", "--src-writable", "proj/pkg/t.py"],
        b"",
    );
    assert_code(&o, 0, "--dev --src-writable");
    assert_eq!(
        std::fs::read_to_string(dev.join("notes.txt")).unwrap(),
        "hi"
    );
});

#[test]
fn src_writable_needs_a_source_folder() {
    let who = me();
    let dir = workdir(who);
    put(dir.path(), "t.py", "print(1)\n");
    for args in [
        vec!["run", "--src-writable", "--code", "print(1)"],
        vec!["run", "--src-writable", "--no-fs", "t.py"],
        vec!["run", "--src-writable", "-"],
    ] {
        let o = run_in(who, dir.path(), &args, b"print(1)\n");
        assert_refused(
            &o,
            &format!("{args:?}"),
            "--src-writable needs a source folder",
        );
    }
}
