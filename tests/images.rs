//! Images end to end through the command line: `--image` with an OCI layout, a
//! `docker save` archive and a store name; `image import | ls | inspect | rm | prune`; and
//! `image build` from an environment file (installs from a package index, so it needs one:
//! PyPI or what PIP_INDEX_URL names; set PYSANDBOX_TEST_NO_INDEX=1 where there is none and
//! the build tests say they were skipped).

#[macro_use]
mod common;

use common::*;
use std::path::{Path, PathBuf};

/// The OCI layout of `common::python_layout`, made once per test process (in its shared
/// folder, removed at exit).
fn shared_layout() -> PathBuf {
    static L: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    L.get_or_init(|| {
        let d = shared_dir("layout");
        python_layout(&d.join("layout"), "py:1");
        // Readable by the unprivileged user too.
        let _ = std::process::Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(&d)
            .status();
        d.join("layout")
    })
    .clone()
}

/// A private store for `who` (an XDG_DATA_HOME of its own), so tests do not share names.
fn with_store(who: Who, dir: &Path, args: &[&str]) -> std::process::Output {
    let data = dir.join("xdg-data");
    if !data.exists() {
        std::fs::create_dir(&data).unwrap();
        let m = std::fs::metadata(dir).unwrap();
        std::os::unix::fs::chown(
            &data,
            Some(std::os::unix::fs::MetadataExt::uid(&m)),
            Some(std::os::unix::fs::MetadataExt::gid(&m)),
        )
        .unwrap();
    }
    let data = data.to_string_lossy();
    command_with_env(who, dir, args, &[("XDG_DATA_HOME", &data)])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

each_mode!(oci_layout_archive_and_store_names, |who| {
    let dir = workdir(who);
    let code = "import sys; print(sys.prefix, sys.version_info[:2])";
    // An OCI layout directory: imported on the fly.
    let layout = shared_layout().to_str().unwrap().to_string();
    let o = with_store(
        who,
        dir.path(),
        &["run", "--image", &layout, "--code", code],
    );
    assert_code(&o, 0, "run --image LAYOUT");
    assert_eq!(stdout(&o), "/opt/conda (3, 11)\n");
    // A `docker save` archive made by skopeo.
    let archive = dir.path().join("py.tar");
    let st = std::process::Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            &format!("oci:{layout}:py:1"),
            &format!("docker-archive:{}:py:1", archive.display()),
        ])
        .status()
        .expect("skopeo is installed by .ci/run");
    assert!(st.success());
    let m = std::fs::metadata(dir.path()).unwrap();
    std::os::unix::fs::chown(
        &archive,
        Some(std::os::unix::fs::MetadataExt::uid(&m)),
        None,
    )
    .unwrap();
    let o = with_store(
        who,
        dir.path(),
        &["run", "--image", archive.to_str().unwrap(), "--code", code],
    );
    assert_code(&o, 0, "run --image ARCHIVE");
    // import, ls, inspect, run by name, rm, prune.
    let o = with_store(who, dir.path(), &["image", "import", &layout, "-t", "mypy"]);
    assert_code(&o, 0, "image import");
    let o = with_store(who, dir.path(), &["image", "ls"]);
    assert_code(&o, 0, "image ls");
    assert!(stdout(&o).contains("py:1"), "{}", stdout(&o));
    let o = with_store(who, dir.path(), &["image", "inspect", "py:1"]);
    assert_code(&o, 0, "image inspect");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["layers"].as_array().unwrap().len(), 1);
    let o = with_store(who, dir.path(), &["run", "--image", "py:1", "--code", code]);
    assert_code(&o, 0, "run --image NAME");
    assert_eq!(stdout(&o), "/opt/conda (3, 11)\n");
    let o = with_store(
        who,
        dir.path(),
        &["run", "--image", "no-such-image", "--code", code],
    );
    assert_code(&o, 125, "unknown image");
    assert!(stderr(&o).contains("no-such-image"), "{}", stderr(&o));
    for name in ["py:1", "docker.io/library/py:1"] {
        let _ = with_store(who, dir.path(), &["image", "rm", name]);
    }
    let o = with_store(who, dir.path(), &["image", "prune"]);
    assert_code(&o, 0, "image prune");
});

each_mode!(image_build_from_an_environment_file, |who| {
    if no_index() {
        return;
    }
    let dir = workdir(who);
    put(
        dir.path(),
        "tiny.yaml",
        "name: tiny\ndependencies:\n  - python=3.11\n  - pip\n  - pip:\n      - six==1.17.0\n",
    );
    let o = with_store(who, dir.path(), &["image", "build", "tiny.yaml"]);
    assert_code(&o, 0, "image build");
    assert!(stdout(&o).contains("built tiny"), "{}", stdout(&o));
    let lock: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("tiny.lock.json")).unwrap()).unwrap();
    assert_eq!(lock["packages"][0]["name"], "six");
    assert_eq!(lock["packages"][0]["version"], "1.17.0");
    assert_eq!(lock["layers"].as_array().unwrap().len(), 2);
    // The package is there, pip and shells are not.
    let o = with_store(
        who,
        dir.path(),
        &[
            "run",
            "--image",
            "tiny",
            "--code",
            "import six, importlib.util as u, shutil\nprint(six.__version__, u.find_spec('pip'), shutil.which('sh'))",
        ],
    );
    assert_code(&o, 0, "run the built image");
    assert_eq!(stdout(&o), "1.17.0 None None\n");
    // Unchanged: not rebuilt. Forced: rebuilt to the same digests (reproducible layers).
    let o = with_store(who, dir.path(), &["image", "build", "tiny.yaml"]);
    assert!(stdout(&o).contains("up to date"), "{}", stdout(&o));
    let o = with_store(who, dir.path(), &["image", "build", "-f", "tiny.yaml"]);
    assert_code(&o, 0, "forced rebuild");
    let again: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("tiny.lock.json")).unwrap()).unwrap();
    assert_eq!(
        again["layers"], lock["layers"],
        "layers must be reproducible"
    );
    assert_eq!(again["digest"], lock["digest"]);
    // Conda packages need a conda channel; a wrong python is refused before anything runs.
    put(
        dir.path(),
        "conda.yaml",
        "dependencies:\n  - python=3.11\n  - numpy\n",
    );
    let o = with_store(who, dir.path(), &["image", "build", "conda.yaml"]);
    assert_code(&o, 125, "conda package");
    assert!(stderr(&o).contains("micromamba"), "{}", stderr(&o));
    put(dir.path(), "old.yaml", "dependencies:\n  - python=2.7\n");
    let o = with_store(who, dir.path(), &["image", "build", "old.yaml"]);
    assert_code(&o, 125, "python mismatch");
    assert!(stderr(&o).contains("2.7"), "{}", stderr(&o));
});

each_mode!(image_build_ships_services_and_protocols, |who| {
    // Every image pysandbox builds resolves service and protocol names: a base without
    // netbase's files gets them in a layer of their own.
    if no_index() {
        return;
    }
    let dir = workdir(who);
    let layout = dir.path().join("bare-layout");
    let host = rootfs_builder::probe_python(Path::new("/usr/bin/python3")).unwrap();
    let rootfs = dir.path().join("bare-rootfs");
    rootfs_builder::build_rootfs(&host, &rootfs).unwrap();
    for f in ["etc/services", "etc/protocols"] {
        std::fs::remove_file(rootfs.join(f)).unwrap();
    }
    let l = rootfs_builder::oci::Layout::create(&layout).unwrap();
    let layer = l
        .put_layer(&rootfs, "", rootfs_builder::layer::Source::Tree)
        .unwrap();
    l.finish(&[layer], &Default::default(), "bare:1").unwrap();
    std::fs::remove_dir_all(&rootfs).unwrap();
    let _ = std::process::Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&layout)
        .status();
    let o = with_store(
        who,
        dir.path(),
        &["image", "import", layout.to_str().unwrap(), "-t", "bare"],
    );
    assert_code(&o, 0, "image import");
    let code = "import socket\nprint(socket.getservbyname('http'), socket.getprotobyname('tcp'))";
    let o = with_store(
        who,
        dir.path(),
        &["run", "--image", "bare:1", "--code", code],
    );
    assert_code(&o, 1, "the base has no /etc/services");
    put(
        dir.path(),
        "svc.yaml",
        "dependencies:\n  - python=3.11\n  - pip\n  - pip:\n      - six==1.17.0\n",
    );
    let o = with_store(
        who,
        dir.path(),
        &["image", "build", "--base", "bare:1", "svc.yaml"],
    );
    assert_code(&o, 0, "image build --base");
    let o = with_store(who, dir.path(), &["run", "--image", "svc", "--code", code]);
    assert_code(&o, 0, "run the built image");
    assert_eq!(stdout(&o), "80 6\n");
    // On the default base (which has them), no extra layer.
    let o = with_store(
        who,
        dir.path(),
        &["image", "build", "-t", "svc2", "svc.yaml"],
    );
    assert_code(&o, 0, "image build");
    let o = with_store(who, dir.path(), &["run", "--image", "svc2", "--code", code]);
    assert_eq!(stdout(&o), "80 6\n");
});

/// An OCI layout of the python root file system plus a layer holding a virtual
/// environment at /opt/venv (a package only it has) and /opt/extra (a module only
/// PYTHONPATH reaches), named by the image config's Env the way app images do.
fn venv_layout(layout: &Path) {
    let host = rootfs_builder::probe_python(Path::new("/usr/bin/python3")).unwrap();
    let rootfs = layout.with_extension("rootfs");
    rootfs_builder::build_rootfs(&host, &rootfs).unwrap();
    let ver = String::from_utf8(
        std::process::Command::new("/usr/bin/python3")
            .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let venv = layout.with_extension("venv");
    let site = venv.join(format!("opt/venv/lib/python{}/site-packages", ver.trim()));
    std::fs::create_dir_all(&site).unwrap();
    std::fs::create_dir_all(venv.join("opt/venv/bin")).unwrap();
    std::fs::create_dir_all(venv.join("opt/extra")).unwrap();
    std::os::unix::fs::symlink(
        rootfs_builder::IMAGE_PYTHON,
        venv.join("opt/venv/bin/python3"),
    )
    .unwrap();
    std::fs::write(
        venv.join("opt/venv/pyvenv.cfg"),
        "home = /opt/conda/bin\ninclude-system-site-packages = false\n",
    )
    .unwrap();
    std::fs::write(site.join("venvonly.py"), "WHERE = 'venv'\n").unwrap();
    std::fs::write(venv.join("opt/extra/extraonly.py"), "WHERE = 'extra'\n").unwrap();
    let l = rootfs_builder::oci::Layout::create(layout).unwrap();
    let base = l
        .put_layer(&rootfs, "", rootfs_builder::layer::Source::Tree)
        .unwrap();
    let top = l
        .put_layer(&venv, "", rootfs_builder::layer::Source::Tree)
        .unwrap();
    let settings = rootfs_builder::oci::ImageSettings {
        env: vec![
            "PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin".into(),
            "VIRTUAL_ENV=/opt/venv".into(),
            "PYTHONPATH=/opt/extra".into(),
            "HOME=/root".into(),
        ],
        ..Default::default()
    };
    l.finish(&[base, top], &settings, "venv:1").unwrap();
    std::fs::remove_dir_all(&rootfs).unwrap();
    std::fs::remove_dir_all(&venv).unwrap();
}

each_mode!(image_config_env_is_honoured, |who| {
    let dir = workdir(who);
    let layout = dir.path().join("venv-layout");
    venv_layout(&layout);
    let _ = std::process::Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&layout)
        .status();
    let code = "import os, sys, venvonly, extraonly\n\
                print(sys.executable, sys.prefix, venvonly.WHERE, extraonly.WHERE)\n\
                print(os.environ['VIRTUAL_ENV'], os.environ['HOME'], os.getcwd())";
    let o = with_store(
        who,
        dir.path(),
        &["run", "--image", layout.to_str().unwrap(), "--code", code],
    );
    assert_code(
        &o,
        0,
        "an image whose packages are in a venv named by its config",
    );
    assert_eq!(
        stdout(&o),
        "/opt/venv/bin/python3 /opt/venv venv extra\n/opt/venv /home/mambauser /usr/app/data\n"
    );
    // The user's -e still wins over the image's Env.
    let o = with_store(
        who,
        dir.path(),
        &[
            "run",
            "--image",
            layout.to_str().unwrap(),
            "-e",
            "PATH=/usr/bin",
            "--code",
            "import os; print(os.environ['PATH'])",
        ],
    );
    assert_eq!(
        stdout(&o),
        "/usr/bin\n",
        "the user's -e wins over the image"
    );
});
