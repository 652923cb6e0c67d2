//! The non-Python parts of the image: `/etc` files (users, groups, hosts,
//! NSS config), CA certificates at OpenSSL's default paths, and the empty
//! directories the sandbox mounts over (the rootfs is mounted read-only, so
//! mount points must already exist).

use std::fs;
use std::path::{Path, PathBuf};

use crate::HostPython;
use crate::error::BuildError;
use crate::fsops::Image;

const PASSWD: &str = "root:x:0:0:root:/root:/sbin/nologin
mambauser:x:1000:1000:mambauser:/home/mambauser:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
";

const GROUP: &str = "root:x:0:
mambauser:x:1000:
nogroup:x:65534:
";

const HOSTS: &str = "127.0.0.1 localhost sandbox
::1 localhost ip6-localhost ip6-loopback
";

const NSSWITCH: &str = "passwd: files
group: files
hosts: files dns
";

/// Mount points and writable-area placeholders, with their modes.
const DIRS: &[(&str, u32)] = &[
    ("/proc", 0o755),
    ("/dev", 0o755),
    ("/tmp", 0o1777),
    ("/var/tmp", 0o1777),
    ("/run", 0o755),
    ("/root", 0o700),
    ("/home/mambauser", 0o755),
    ("/usr/app/src", 0o755),
    ("/usr/app/data", 0o755),
    ("/etc", 0o755),
];

/// The Debian/Ubuntu CA bundle (what `update-ca-certificates` writes).
const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// OpenSSL's default CA file and directory on Debian (OPENSSLDIR=/usr/lib/ssl),
/// used when the probe could not ask `ssl` itself.
const OPENSSL_DEFAULT_CAFILE: &str = "/usr/lib/ssl/cert.pem";
const OPENSSL_DEFAULT_CAPATH: &str = "/usr/lib/ssl/certs";

/// Creates the mount-point directories and writes the `/etc` files.
pub(crate) fn write_skeleton(image: &Image) -> Result<(), BuildError> {
    for (dir, mode) in DIRS {
        image.mkdir_p(Path::new(dir), *mode)?;
    }
    let files: &[(&str, &str)] = &[
        ("/etc/passwd", PASSWD),
        ("/etc/group", GROUP),
        ("/etc/hosts", HOSTS),
        ("/etc/nsswitch.conf", NSSWITCH),
        ("/etc/hostname", "sandbox\n"),
        // What `platform.freedesktop_os_release()` and friends read.
        (
            "/etc/os-release",
            "NAME=\"pysandbox\"\nID=pysandbox\nPRETTY_NAME=\"pysandbox distroless Python\"\n",
        ),
        // Empty: the sandbox bind-mounts its own over it (or leaves it empty
        // when there is no network).
        ("/etc/resolv.conf", ""),
    ];
    for (path, contents) in files {
        image.write_file(Path::new(path), contents.as_bytes(), 0o644)?;
    }
    Ok(())
}

/// The IANA time zone database, for `zoneinfo` and `time.tzset` (about 4 MB). No
/// `/etc/localtime`: the sandbox runs in UTC and does not learn the host's zone.
const ZONEINFO: &str = "/usr/share/zoneinfo";

/// Copies the host's time zone database, if it has one (the "right/" leap-second
/// variants are left out). Returns whether it did.
pub(crate) fn copy_zoneinfo(image: &Image) -> Result<bool, BuildError> {
    fn walk(image: &Image, dir: &Path) -> Result<(), BuildError> {
        let Ok(rd) = fs::read_dir(dir) else {
            return Ok(());
        };
        let mut entries: Vec<_> = rd.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                if e.file_name() != "right" {
                    walk(image, &p)?;
                }
            } else if ft.is_file() || ft.is_symlink() {
                image.mirror(&p)?;
            }
        }
        Ok(())
    }
    if !Path::new(ZONEINFO).is_dir() {
        return Ok(false);
    }
    walk(image, Path::new(ZONEINFO))?;
    Ok(true)
}

/// Copies the host's CA bundle and recreates OpenSSL's default lookup paths
/// (symlinks into `/etc/ssl` on Debian) without the hashed certificate links.
/// Returns whether a CA bundle ended up in the image.
pub(crate) fn copy_ca_certificates(image: &Image, host: &HostPython) -> Result<bool, BuildError> {
    let mut candidates: Vec<PathBuf> = vec![PathBuf::from(HOST_CA_BUNDLE)];
    candidates.push(
        host.ssl_cafile
            .clone()
            .unwrap_or_else(|| PathBuf::from(OPENSSL_DEFAULT_CAFILE)),
    );
    candidates.push(
        host.ssl_capath
            .clone()
            .unwrap_or_else(|| PathBuf::from(OPENSSL_DEFAULT_CAPATH)),
    );
    let mut have_bundle = false;
    for path in candidates {
        // Only what exists (and resolves) on the host.
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        image.mirror(&path)?;
        have_bundle |= meta.is_file();
    }
    Ok(have_bundle)
}
