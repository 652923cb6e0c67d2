//! The allow-list of `--allow-net`: its rules (`HOST[:PORT]`, `*.example.com`, an IP or a
//! CIDR, each with an optional port) and the one decision the proxy makes with them:
//! may this connection go to this *resolved* address?
//!
//! A name is only resolved when a name rule names it. A name rule only ever lets a
//! connection reach public addresses: whatever a name
//! resolves to (`localhost`, a DNS record pointing at 10.0.0.1 or 169.254.169.254, a
//! rebinding answer), loopback, private, link-local, metadata and other special ranges
//! are refused unless an address rule names them. IPv4-mapped IPv6 addresses
//! (`::ffff:127.0.0.1`) are judged, and connected to, as the IPv4 address they carry.
//!
//! Pure data and decisions: no I/O (the proxy resolves and connects).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What a rule names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One host name, lower case, without a trailing dot.
    Name(String),
    /// `*.example.com`: every name under `example.com` (not `example.com` itself); the
    /// suffix is stored with its leading dot.
    Suffix(String),
    /// An address or a network: `10.0.0.0/8`, `::1`, `[2001:db8::/32]`.
    Net { addr: IpAddr, prefix: u8 },
}

/// One `--allow-net` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    pub target: Target,
    /// `None`: any port.
    pub port: Option<u16>,
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match &self.target {
            Target::Name(n) => n.clone(),
            Target::Suffix(s) => format!("*{s}"),
            Target::Net { addr, prefix } => {
                let full = if addr.is_ipv4() { 32 } else { 128 };
                let a = if *prefix == full {
                    addr.to_string()
                } else {
                    format!("{addr}/{prefix}")
                };
                if addr.is_ipv6() && self.port.is_some() {
                    format!("[{a}]")
                } else {
                    a
                }
            }
        };
        match self.port {
            Some(p) => write!(f, "{host}:{p}"),
            None => f.write_str(&host),
        }
    }
}

/// Why a value of `--allow-net` is not a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--allow-net {value}: {why}. Hint: write HOST[:PORT], *.DOMAIN[:PORT], an IP or a CIDR (IPv6 in brackets when a port follows: [::1]:8080)"
)]
pub struct RuleError {
    pub value: String,
    pub why: String,
}

impl AllowRule {
    /// Parses one `--allow-net` value.
    pub fn parse(value: &str) -> Result<AllowRule, RuleError> {
        let bad = |why: &str| RuleError {
            value: value.to_string(),
            why: why.to_string(),
        };
        let v = value.trim();
        if v.is_empty() {
            return Err(bad("empty"));
        }
        // [v6] or [v6/len], optionally :port
        let (host, port) = if let Some(rest) = v.strip_prefix('[') {
            let (inner, after) = rest.split_once(']').ok_or_else(|| bad("no closing ]"))?;
            let port = match after {
                "" => None,
                p => Some(
                    parse_port(p.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?)
                        .ok_or_else(|| bad("the port must be 1-65535"))?,
                ),
            };
            (inner, port)
        } else if v.matches(':').count() >= 2 {
            (v, None) // a bare IPv6 address or network: no port
        } else if let Some((h, p)) = v.rsplit_once(':') {
            (
                h,
                Some(parse_port(p).ok_or_else(|| bad("the port must be 1-65535"))?),
            )
        } else {
            (v, None)
        };
        if let Some(net) = parse_net(host).map_err(|why| bad(&why))? {
            return Ok(AllowRule { target: net, port });
        }
        if v.starts_with('[') {
            return Err(bad("brackets hold an IPv6 address"));
        }
        let name = normalize_name(host).ok_or_else(|| bad("not a host name"))?;
        let target = if let Some(suffix) = name.strip_prefix("*.") {
            if suffix.contains('*') || !suffix.contains('.') {
                return Err(bad(
                    "a wildcard is `*.` followed by a domain of at least two labels",
                ));
            }
            Target::Suffix(format!(".{suffix}"))
        } else if name.contains('*') {
            return Err(bad(
                "a wildcard may only be the whole first label (*.example.com); to allow everything use --network",
            ));
        } else {
            Target::Name(name)
        };
        Ok(AllowRule { target, port })
    }

    fn port_matches(&self, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
    }

    fn name_matches(&self, name: &str) -> bool {
        match &self.target {
            Target::Name(n) => n == name,
            Target::Suffix(s) => name.len() > s.len() && name.ends_with(s.as_str()),
            Target::Net { .. } => false,
        }
    }

    fn covers(&self, ip: IpAddr) -> bool {
        match self.target {
            Target::Net { addr, prefix } => in_net(ip, addr, prefix),
            _ => false,
        }
    }
}

fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|&p| p != 0)
}

/// `Ok(Some)` for an address or CIDR, `Ok(None)` for something else (a name).
fn parse_net(s: &str) -> Result<Option<Target>, String> {
    let (a, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let Ok(addr) = a.parse::<IpAddr>() else {
        return if len.is_some() {
            Err("not a network (e.g. 10.0.0.0/8)".into())
        } else {
            Ok(None)
        };
    };
    let full = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match len {
        None => full,
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|&p| p <= full)
            .ok_or_else(|| format!("the prefix length must be 0-{full}"))?,
    };
    // A mapped IPv6 network is the IPv4 network it carries (how the proxy judges them).
    let (addr, prefix) = match addr {
        IpAddr::V6(v6) if prefix >= 96 && v6.to_ipv4_mapped().is_some() => (
            IpAddr::V4(v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED)),
            prefix - 96,
        ),
        a => (a, prefix),
    };
    Ok(Some(Target::Net {
        addr: mask(addr, prefix),
        prefix,
    }))
}

/// A host name as the proxy compares it: lower case, one trailing dot removed; `None`
/// when it is not a plausible DNS name (length, characters, empty labels).
pub fn normalize_name(s: &str) -> Option<String> {
    let n = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    let ok = !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'*')
        });
    ok.then_some(n)
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - prefix as u32).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - prefix as u32).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    let ip = canonical(ip);
    ip.is_ipv4() == net.is_ipv4() && mask(ip, prefix) == net
}

/// The address a connection really goes to: an IPv4-mapped IPv6 address is its IPv4
/// address (the kernel would deliver it there).
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Why an address is refused to name rules: `None` for a public address.
pub fn special_range(ip: IpAddr) -> Option<&'static str> {
    const V4: &[(u32, u8, &str)] = &[
        (0x0000_0000, 8, "unspecified (0.0.0.0/8)"),
        (0x0a00_0000, 8, "private (10.0.0.0/8)"),
        (0x6440_0000, 10, "shared address space (100.64.0.0/10)"),
        (0x7f00_0000, 8, "loopback"),
        (0xa9fe_a9fe, 32, "cloud metadata (169.254.169.254)"),
        (0xa9fe_0000, 16, "link-local"),
        (0xac10_0000, 12, "private (172.16.0.0/12)"),
        (0xc000_0000, 24, "IETF protocol assignments (192.0.0.0/24)"),
        (0xc000_0200, 24, "documentation (192.0.2.0/24)"),
        (0xc058_6300, 24, "6to4 relay (192.88.99.0/24)"),
        (0xc0a8_0000, 16, "private (192.168.0.0/16)"),
        (0xc612_0000, 15, "benchmarking (198.18.0.0/15)"),
        (0xc633_6400, 24, "documentation (198.51.100.0/24)"),
        (0xcb00_7100, 24, "documentation (203.0.113.0/24)"),
        (0xe000_0000, 4, "multicast"),
        (0xf000_0000, 4, "reserved (240.0.0.0/4, broadcast)"),
    ];
    const V6: &[(u128, u8, &str)] = &[
        (0, 128, "unspecified (::)"),
        (1, 128, "loopback (::1)"),
        (0, 96, "IPv4-compatible (::/96)"),
        (0x0064_ff9b << 96, 96, "IPv4-translated (64:ff9b::/96)"),
        (
            0x0064_ff9b_0001 << 80,
            48,
            "IPv4-translated (64:ff9b:1::/48)",
        ),
        (0x0100 << 112, 64, "discard (100::/64)"),
        (0x2001_0000 << 96, 32, "Teredo (2001::/32)"),
        (
            0x2001_0000 << 96,
            23,
            "IETF protocol assignments (2001::/23)",
        ),
        (0x2001_0db8 << 96, 32, "documentation (2001:db8::/32)"),
        (0x2002 << 112, 16, "6to4 (2002::/16)"),
        (
            0xfd00_0ec2 << 96 | 0x254,
            128,
            "cloud metadata (fd00:ec2::254)",
        ),
        (0xfc00 << 112, 7, "unique local (fc00::/7)"),
        (0xfe80 << 112, 10, "link-local (fe80::/10)"),
        (0xfec0 << 112, 10, "site-local (fec0::/10)"),
        (0xff00 << 112, 8, "multicast"),
    ];
    match canonical(ip) {
        IpAddr::V4(a) => V4
            .iter()
            .find(|(net, len, _)| mask(IpAddr::V4(a), *len) == IpAddr::V4(Ipv4Addr::from(*net)))
            .map(|e| e.2),
        IpAddr::V6(a) => V6
            .iter()
            .find(|(net, len, _)| mask(IpAddr::V6(a), *len) == IpAddr::V6(Ipv6Addr::from(*net)))
            .map(|e| e.2),
    }
}

/// What the proxy was asked to reach: a name (to resolve) or an address literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    Name(String),
    Addr(IpAddr),
}

impl Dest {
    /// A host as a client sent it (a name, an IPv4 literal, an IPv6 literal with or
    /// without brackets); `None` when it is neither.
    pub fn parse(host: &str) -> Option<Dest> {
        let h = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = h.parse::<IpAddr>() {
            return Some(Dest::Addr(ip));
        }
        if host.starts_with('[') || h.contains('*') {
            return None;
        }
        normalize_name(h).map(Dest::Name)
    }
}

impl fmt::Display for Dest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dest::Name(n) => f.write_str(n),
            Dest::Addr(a) => write!(f, "{a}"),
        }
    }
}

/// The allow-list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    pub rules: Vec<AllowRule>,
}

impl AllowList {
    /// Whether any rule could let `dest:port` through, decided before resolving: a name
    /// is resolved only when a name rule names it (so the proxy never sends a DNS query
    /// for a name the allow-list does not name: no DNS exfiltration through it), and an
    /// address literal only goes on when an address rule covers it.
    pub fn may_match(&self, dest: &Dest, port: u16) -> bool {
        self.rules
            .iter()
            .filter(|r| r.port_matches(port))
            .any(|r| match dest {
                Dest::Name(n) => r.name_matches(n),
                Dest::Addr(a) => r.covers(*a),
            })
    }

    /// Whether a connection asked for as `dest:port` may go to `ip`, one of the
    /// addresses `dest` resolved to: `Ok(())`, or why not.
    pub fn check(&self, dest: &Dest, port: u16, ip: IpAddr) -> Result<(), String> {
        let ip = canonical(ip);
        let rules = || self.rules.iter().filter(|r| r.port_matches(port));
        if rules().any(|r| r.covers(ip)) {
            return Ok(());
        }
        let by_name = match dest {
            Dest::Name(n) => rules().any(|r| r.name_matches(n)),
            Dest::Addr(_) => false,
        };
        match (by_name, special_range(ip)) {
            (true, None) => Ok(()),
            (true, Some(why)) => Err(format!(
                "{ip} is {why}: allowed only when an --allow-net rule names that address"
            )),
            (false, _) => Err(format!("no --allow-net rule allows {dest}:{port}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(rules: &[&str]) -> AllowList {
        AllowList {
            rules: rules.iter().map(|r| AllowRule::parse(r).unwrap()).collect(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rules_parse_and_print_back() {
        for (input, shown) in [
            ("Example.COM.", "example.com"),
            ("example.com:443", "example.com:443"),
            ("*.pypi.org", "*.pypi.org"),
            ("10.1.2.3", "10.1.2.3"),
            ("10.1.2.3:80", "10.1.2.3:80"),
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("10.0.0.0/8:443", "10.0.0.0/8:443"),
            ("::1", "::1"),
            ("[::1]:8080", "[::1]:8080"),
            ("[2001:db8::/32]:443", "[2001:db8::/32]:443"),
            ("::ffff:127.0.0.1", "127.0.0.1"),
            ("[::ffff:7f00:0/104]:80", "127.0.0.0/8:80"),
        ] {
            assert_eq!(
                AllowRule::parse(input).unwrap().to_string(),
                shown,
                "{input}"
            );
        }
        for bad in [
            "",
            "*",
            "*.com",
            "a.*.com",
            "ex ample.com",
            "example.com:0",
            "example.com:65536",
            "example.com:http",
            "10.0.0.0/33",
            "[::1",
            "[::1]x",
            "[example.com]:80",
            "host/8",
            "a..b",
        ] {
            assert!(AllowRule::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    /// (rules; requests: host, port, resolved address, allowed?)
    type Case = (
        &'static [&'static str],
        &'static [(&'static str, u16, &'static str, bool)],
    );

    const CASES: &[Case] = &[
        // Names reach public addresses only, on their port.
        (
            &["example.com", "*.pypi.org:443", "localhost"],
            &[
                ("EXAMPLE.com.", 80, "93.184.216.34", true),
                ("example.com", 80, "2606:2800:220:1::1", true),
                ("localhost", 80, "127.0.0.1", false),
                ("files.pypi.org", 443, "151.101.1.63", true),
                ("files.pypi.org", 80, "151.101.1.63", false),
                ("pypi.org", 443, "151.101.1.63", false),
                // Allowed names do not make their address literals allowed.
                ("93.184.216.34", 80, "93.184.216.34", false),
            ],
        ),
        // Address rules allow their addresses, to literals and to the names a name rule
        // allows.
        (
            &["127.0.0.1:8080", "[::1]:9090", "10.0.0.0/8", "localhost"],
            &[
                ("localhost", 8080, "127.0.0.1", true),
                ("localhost", 8080, "::ffff:127.0.0.1", true),
                ("localhost", 8081, "127.0.0.1", false),
                ("localhost", 8080, "127.0.0.2", false),
                ("localhost", 9090, "::1", true),
                ("[::ffff:10.9.8.7]", 22, "::ffff:10.9.8.7", true),
                ("11.0.0.1", 22, "11.0.0.1", false),
            ],
        ),
    ];

    #[test]
    fn decisions() {
        for (rules, requests) in CASES {
            let l = list(rules);
            for &(host, port, addr, ok) in *requests {
                let got = l.check(&Dest::parse(host).unwrap(), port, ip(addr)).is_ok();
                assert_eq!(got, ok, "{rules:?}: {host}:{port} -> {addr}");
            }
        }
        let l = list(&["example.com", "10.0.0.0/8"]);
        for private in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "fe80::1",
            "fd00:ec2::254",
            "fc00::1",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            let ex = Dest::parse("example.com").unwrap();
            assert_eq!(
                l.check(&ex, 80, ip(private)).is_ok(),
                private == "10.0.0.1",
                "{private}"
            );
        }
        assert!(!l.may_match(&Dest::parse("evil.org").unwrap(), 443));
        assert!(!l.may_match(&Dest::parse("127.1").unwrap(), 80));
        assert!(l.may_match(&Dest::parse("[::ffff:10.9.8.7]").unwrap(), 22));
        assert!(Dest::parse("[evil.com]").is_none());
        assert!(Dest::parse("a b").is_none());
    }

    #[test]
    fn special_ranges_have_reasons() {
        assert_eq!(special_range(ip("8.8.8.8")), None);
        assert_eq!(special_range(ip("2001:4860:4860::8888")), None);
        assert_eq!(
            special_range(ip("169.254.169.254")),
            Some("cloud metadata (169.254.169.254)")
        );
        assert_eq!(
            special_range(ip("::ffff:10.0.0.1")),
            Some("private (10.0.0.0/8)")
        );
    }
}
