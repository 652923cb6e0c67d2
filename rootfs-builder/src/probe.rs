//! Probing the host interpreter: one `python -I -B -c <script>` run that prints
//! JSON, plus one `ldd` run to find a shared libpython. Works with pyenv shims
//! (shell scripts): everything recorded is about the real interpreter.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::error::{BuildError, io_err, tail};
use crate::ldd;

/// Oldest interpreter we build images from (needs `compileall --invalidation-mode`
/// and `sys.platlibdir`-era `getpath`).
const MIN_MINOR: u32 = 8;

/// What the builder needs to know about a host CPython installation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostPython {
    /// Real path of the interpreter binary (`realpath(sys.executable)`).
    pub executable: PathBuf,
    /// Full version, e.g. `3.11.7`.
    pub version: String,
    pub major: u32,
    pub minor: u32,
    /// The standard library directory (sysconfig `stdlib`), canonicalized.
    pub stdlib: PathBuf,
    /// The directory of the stdlib extension modules, canonicalized.
    pub lib_dynload: PathBuf,
    /// The real path of the shared libpython the interpreter links, if any.
    pub libpython: Option<PathBuf>,
    /// `sys.platlibdir` (`lib` on Debian and pyenv, `lib64` on Fedora).
    #[serde(default = "default_platlibdir")]
    pub platlibdir: String,
    /// `sys.implementation.cache_tag`, e.g. `cpython-311`.
    #[serde(default)]
    pub cache_tag: String,
    /// `importlib.util.MAGIC_NUMBER` as hex (first 4 bytes of every `.pyc`).
    #[serde(default)]
    pub pyc_magic: String,
    /// OpenSSL's compiled-in default CA file (`/usr/lib/ssl/cert.pem`), if `ssl` imports.
    #[serde(default)]
    pub ssl_cafile: Option<PathBuf>,
    /// OpenSSL's compiled-in default CA directory (`/usr/lib/ssl/certs`).
    #[serde(default)]
    pub ssl_capath: Option<PathBuf>,
    /// The configure-time `prefix` and `exec_prefix` (sysconfig), compiled into the
    /// interpreter: where it looks for its stdlib when it cannot find itself.
    #[serde(default)]
    pub config_prefix: Option<PathBuf>,
    #[serde(default)]
    pub config_exec_prefix: Option<PathBuf>,
    /// `sysconfig.get_makefile_filename()`, if the file exists.
    #[serde(default)]
    pub makefile: Option<PathBuf>,
    /// The real `pyconfig.h` behind `sysconfig.get_config_h_filename()` (Debian's is a
    /// wrapper including a per-architecture header), if it exists.
    #[serde(default)]
    pub config_h: Option<PathBuf>,
}

fn default_platlibdir() -> String {
    "lib".to_string()
}

const PROBE_SCRIPT: &str = r#"
import json, os, sys, sysconfig
import importlib.util
stdlib = sysconfig.get_path("stdlib")
dyn = [p for p in sys.path if os.path.basename(p.rstrip("/")) == "lib-dynload"]
if not dyn:
    d = sysconfig.get_config_var("DESTSHARED")
    dyn = [d] if d else [os.path.join(stdlib, "lib-dynload")]
def existing(p):
    return p if p and os.path.isfile(p) else None
makefile = existing(sysconfig.get_makefile_filename())
config_h = existing(sysconfig.get_config_h_filename())
if config_h and os.path.getsize(config_h) < 16384:
    # Debian: a wrapper including <MULTIARCH/python3.X/pyconfig.h>.
    real = os.path.join(sysconfig.get_config_var("INCLUDEDIR") or "", sysconfig.get_config_var("MULTIARCH") or "", os.path.basename(os.path.dirname(config_h)), "pyconfig.h")
    if "include <" in open(config_h, errors="replace").read() and os.path.isfile(real):
        config_h = real
cafile = capath = None
try:
    import ssl
    v = ssl.get_default_verify_paths()
    cafile, capath = v.openssl_cafile, v.openssl_capath
except Exception:
    pass
print(json.dumps({
    "implementation": sys.implementation.name,
    "abiflags": getattr(sys, "abiflags", ""),
    "executable": os.path.realpath(sys.executable) if sys.executable else "",
    "version": sys.version.split()[0],
    "major": sys.version_info[0],
    "minor": sys.version_info[1],
    "stdlib": os.path.realpath(stdlib),
    "lib_dynload": os.path.realpath(dyn[0]),
    "platlibdir": getattr(sys, "platlibdir", "lib"),
    "cache_tag": sys.implementation.cache_tag or "",
    "pyc_magic": importlib.util.MAGIC_NUMBER.hex(),
    "ssl_cafile": cafile,
    "ssl_capath": capath,
    "config_prefix": sysconfig.get_config_var("prefix"),
    "config_exec_prefix": sysconfig.get_config_var("exec_prefix"),
    "makefile": makefile and os.path.realpath(makefile),
    "config_h": config_h and os.path.realpath(config_h),
}))
"#;

#[derive(Deserialize)]
struct ProbeOutput {
    implementation: String,
    abiflags: String,
    executable: PathBuf,
    version: String,
    major: u32,
    minor: u32,
    stdlib: PathBuf,
    lib_dynload: PathBuf,
    platlibdir: String,
    cache_tag: String,
    pyc_magic: String,
    ssl_cafile: Option<PathBuf>,
    ssl_capath: Option<PathBuf>,
    config_prefix: Option<PathBuf>,
    config_exec_prefix: Option<PathBuf>,
    makefile: Option<PathBuf>,
    config_h: Option<PathBuf>,
}

/// Runs `python -I -B -c <script>` once and describes the real interpreter
/// behind `python` (which may be a name looked up on `PATH`, or a shim).
pub fn probe_python(python: &Path) -> Result<HostPython, BuildError> {
    // -I: ignore PYTHON* variables and user site; -B: do not write .pyc
    // files into the host's stdlib while importing the probe's modules.
    let output = Command::new(python)
        .args(["-I", "-B", "-c"])
        .arg(PROBE_SCRIPT)
        .env_remove("PYTHONHOME")
        .env_remove("PYTHONPATH")
        .output()
        .map_err(|source| BuildError::PythonSpawn {
            python: python.to_path_buf(),
            source,
        })?;
    if !output.status.success() {
        return Err(BuildError::ProbeFailed {
            python: python.to_path_buf(),
            status: output.status.to_string(),
            stderr: tail(&String::from_utf8_lossy(&output.stderr), 600),
        });
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("");
    let p: ProbeOutput = serde_json::from_str(line).map_err(|e| BuildError::ProbeOutput {
        python: python.to_path_buf(),
        detail: format!("{e} in `{}`", tail(&stdout, 300)),
    })?;

    let unsupported = |detail: String| BuildError::UnsupportedPython {
        python: python.to_path_buf(),
        detail,
    };
    if p.implementation != "cpython" {
        return Err(unsupported(format!(
            "implementation `{}` (only CPython has the expected layout); use a CPython interpreter",
            p.implementation
        )));
    }
    if p.major != 3 || p.minor < MIN_MINOR {
        return Err(unsupported(format!(
            "version {} (need 3.{MIN_MINOR} or newer); install a newer python3",
            p.version
        )));
    }
    if p.abiflags.contains('t') {
        return Err(unsupported(format!(
            "version {} is a free-threaded build (its stdlib lives in lib/python3.{}t); use a regular CPython build",
            p.version, p.minor
        )));
    }
    if !p.executable.is_absolute() {
        return Err(unsupported(
            "sys.executable is empty (embedded interpreter?); pass the interpreter binary".into(),
        ));
    }
    if !p.stdlib.join("os.py").is_file() {
        return Err(unsupported(format!(
            "its standard library `{}` has no os.py (zipped or missing stdlib is not supported)",
            p.stdlib.display()
        )));
    }
    if !p.lib_dynload.is_dir() {
        return Err(unsupported(format!(
            "its extension module directory `{}` does not exist",
            p.lib_dynload.display()
        )));
    }
    if p.cache_tag.is_empty() || p.pyc_magic.len() != 8 {
        return Err(unsupported(
            "it has no bytecode cache tag (sys.implementation.cache_tag is None)".into(),
        ));
    }
    if p.platlibdir.is_empty() || p.platlibdir.contains('/') {
        return Err(unsupported(format!(
            "unexpected sys.platlibdir `{}`",
            p.platlibdir
        )));
    }

    let libpython = find_libpython(&p.executable)?;
    Ok(HostPython {
        executable: p.executable,
        version: p.version,
        major: p.major,
        minor: p.minor,
        stdlib: p.stdlib,
        lib_dynload: p.lib_dynload,
        libpython,
        platlibdir: p.platlibdir,
        cache_tag: p.cache_tag,
        pyc_magic: p.pyc_magic,
        ssl_cafile: p.ssl_cafile.filter(|s| s.is_absolute()),
        ssl_capath: p.ssl_capath.filter(|s| s.is_absolute()),
        config_prefix: p.config_prefix.filter(|s| s.is_absolute()),
        config_exec_prefix: p.config_exec_prefix.filter(|s| s.is_absolute()),
        makefile: p.makefile.filter(|s| s.is_absolute()),
        config_h: p.config_h.filter(|s| s.is_absolute()),
    })
}

/// Real path of the `libpython*.so` the interpreter is linked against, if any.
fn find_libpython(executable: &Path) -> Result<Option<PathBuf>, BuildError> {
    let deps = ldd::closure(&[executable.to_path_buf()])?;
    let found = deps
        .iter()
        .flat_map(|f| f.deps.iter())
        .find(|d| d.name.starts_with("libpython"))
        .and_then(|d| d.path.clone());
    match found {
        Some(path) => {
            let real = path
                .canonicalize()
                .map_err(io_err("cannot resolve libpython", &path))?;
            Ok(Some(real))
        }
        None => Ok(None),
    }
}
