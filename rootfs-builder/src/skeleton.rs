//! The non-Python parts of the image: `/etc` files (users, groups, hosts,
//! NSS config, the services and protocols databases), CA certificates at OpenSSL's default paths, and the empty
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

/// A small `/etc/services` for hosts without netbase's: the names scripts look up
/// (`socket.getservbyname`, `getaddrinfo(host, "http")`, `urllib` default ports).
pub const BUILTIN_SERVICES: &str = "\
# Network services (pysandbox's built-in subset of netbase's /etc/services)
ftp-data\t20/tcp
ftp\t\t21/tcp
ssh\t\t22/tcp
telnet\t\t23/tcp
smtp\t\t25/tcp\t\tmail
domain\t\t53/tcp
domain\t\t53/udp
bootps\t\t67/udp
bootpc\t\t68/udp
tftp\t\t69/udp
gopher\t\t70/tcp
finger\t\t79/tcp
http\t\t80/tcp\t\twww
kerberos\t88/tcp\t\tkerberos5 krb5 kerberos-sec
kerberos\t88/udp\t\tkerberos5 krb5 kerberos-sec
pop3\t\t110/tcp\t\tpop-3
sunrpc\t\t111/tcp\t\tportmapper
sunrpc\t\t111/udp\t\tportmapper
auth\t\t113/tcp\t\tauthentication tap ident
nntp\t\t119/tcp\t\treadnews untp
ntp\t\t123/udp
imap2\t\t143/tcp\t\timap
snmp\t\t161/udp
snmp-trap\t162/udp\t\tsnmptrap
ldap\t\t389/tcp
ldap\t\t389/udp
https\t\t443/tcp
https\t\t443/udp
submissions\t465/tcp\t\tssmtp smtps urd
syslog\t\t514/udp
submission\t587/tcp
ldaps\t\t636/tcp
ldaps\t\t636/udp
ftps-data\t989/tcp
ftps\t\t990/tcp
imaps\t\t993/tcp
pop3s\t\t995/tcp
socks\t\t1080/tcp
ms-sql-s\t1433/tcp
openvpn\t\t1194/tcp
openvpn\t\t1194/udp
mysql\t\t3306/tcp
postgresql\t5432/tcp\t\tpostgres
amqp\t\t5672/tcp
x11\t\t6000/tcp\t\tx11-0
redis\t\t6379/tcp
http-alt\t8080/tcp\t\twebcache
git\t\t9418/tcp
";

/// A small `/etc/protocols` for hosts without netbase's (`socket.getprotobyname`,
/// `getaddrinfo` naming the protocol of each result).
pub const BUILTIN_PROTOCOLS: &str = "\
# Internet protocols (pysandbox's built-in subset of netbase's /etc/protocols)
ip\t0\tIP
icmp\t1\tICMP
igmp\t2\tIGMP
tcp\t6\tTCP
udp\t17\tUDP
ipv6\t41\tIPv6
ipv6-route\t43\tIPv6-Route
ipv6-frag\t44\tIPv6-Frag
gre\t47\tGRE
esp\t50\tIPSEC-ESP
ah\t51\tIPSEC-AH
ipv6-icmp\t58\tIPv6-ICMP
ipv6-nonxt\t59\tIPv6-NoNxt
ipv6-opts\t60\tIPv6-Opts
sctp\t132\tSCTP
udplite\t136\tUDPLite
";

/// The netbase databases every image carries: `(path, built-in fallback)`. The host's
/// copy is used when it has one.
pub const NETBASE_FILES: &[(&str, &str)] = &[
    ("/etc/services", BUILTIN_SERVICES),
    ("/etc/protocols", BUILTIN_PROTOCOLS),
];

/// The contents of `path` for an image: the host's regular file if it has one (netbase),
/// else `builtin`.
pub fn netbase_file(path: &str, builtin: &str) -> Vec<u8> {
    match fs::metadata(path) {
        // At most 1 MiB: these are small text databases, never worth a huge copy.
        Ok(m) if m.is_file() && m.len() <= 1 << 20 => {
            fs::read(path).unwrap_or_else(|_| builtin.as_bytes().to_vec())
        }
        _ => builtin.as_bytes().to_vec(),
    }
}

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
    // socket.getservbyname("http"), getaddrinfo(host, "https"), getprotobyname("tcp").
    for (path, builtin) in NETBASE_FILES {
        image.write_file(Path::new(path), &netbase_file(path, builtin), 0o644)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_netbase_has_the_common_names() {
        let line = |text: &str, name: &str| {
            text.lines()
                .find(|l| l.split_whitespace().next() == Some(name))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
        };
        assert_eq!(line(BUILTIN_SERVICES, "http").as_deref(), Some("80/tcp"));
        assert_eq!(line(BUILTIN_SERVICES, "https").as_deref(), Some("443/tcp"));
        assert_eq!(line(BUILTIN_SERVICES, "ssh").as_deref(), Some("22/tcp"));
        assert_eq!(line(BUILTIN_PROTOCOLS, "tcp").as_deref(), Some("6"));
        assert_eq!(line(BUILTIN_PROTOCOLS, "udp").as_deref(), Some("17"));
        assert_eq!(
            netbase_file("/nonexistent/services", BUILTIN_SERVICES),
            BUILTIN_SERVICES.as_bytes()
        );
    }
}
