//! What a client of the proxy asks for: an HTTP CONNECT or absolute-form plain HTTP
//! request (its head read under a size cap and a deadline), or a SOCKS5 greeting and
//! CONNECT request; the answers it gets; and the escaping of what it sent before that goes
//! into the log.

use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::conn::{Failure, Shared, open, relay};
use super::{HEAD_TIMEOUT, MAX_HEAD};
use crate::net::allow::Dest;

/// What the script sent, as it goes into the log (and onto the user's terminal with
/// `--log-net`): at most 256 characters, anything but printable ASCII escaped, so no
/// control sequence or look-alike character of the script's reaches a terminal.
fn printable(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_graphic() && c != '\\' {
            out.push(c);
        } else {
            out.extend(c.escape_default());
        }
        if out.len() >= 256 {
            break;
        }
    }
    out
}

/// Reads up to the end of an HTTP head; returns the head and the bytes after it.
fn read_head(client: &mut TcpStream) -> Result<(String, Vec<u8>), Failure> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + HEAD_TIMEOUT;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n")
            && end + 4 <= MAX_HEAD
        {
            let rest = buf.split_off(end + 4);
            let head = String::from_utf8(buf)
                .map_err(|_| Failure::Bad("the request head is not UTF-8".into()))?;
            return Ok((head, rest));
        }
        if buf.len() >= MAX_HEAD {
            return Err(Failure::Bad(format!(
                "the request head is over {MAX_HEAD} bytes"
            )));
        }
        if Instant::now() >= deadline {
            return Err(Failure::Bad("the request head took too long".into()));
        }
        match client.read(&mut chunk) {
            Ok(0) => return Err(Failure::Bad("closed before the end of the request".into())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(Failure::Bad(format!(
                    "no complete request within {} s",
                    HEAD_TIMEOUT.as_secs()
                )));
            }
            Err(e) => return Err(Failure::Bad(format!("reading the request: {e}"))),
        }
    }
}

/// `host:port` (IPv6 in brackets); `default` when the port is missing.
fn split_authority(auth: &str, default: Option<u16>) -> Option<(Dest, u16)> {
    if auth.contains('@') {
        return None; // no user info: one meaning for every client
    }
    let (host, port) = if let Some(rest) = auth.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        let port = match after {
            "" => default?,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        (format!("[{h}]"), port)
    } else {
        match auth.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()?),
            None => (auth.to_string(), default?),
        }
    };
    if port == 0 {
        return None;
    }
    Some((Dest::parse(&host)?, port))
}

pub(super) fn http(mut client: TcpStream, shared: &Shared) {
    let (head, rest) = match read_head(&mut client) {
        Ok(h) => h,
        Err(f) => {
            let e = shared.entry("unknown");
            e.update(|c| c.reason = Some(f.reason().into()));
            reply_http(&mut client, &f);
            return;
        }
    };
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, target, version) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let connect = method == "CONNECT";
    let entry = shared.entry(if connect { "connect" } else { "http" });
    let fail = |client: &mut TcpStream, f: Failure| {
        entry.update(|c| c.reason = Some(f.reason().into()));
        reply_http(client, &f);
    };
    if parts.next().is_some() || !version.starts_with("HTTP/1.") {
        return fail(&mut client, Failure::Bad("malformed request line".into()));
    }
    let (authority, path) = if connect {
        (target, "")
    } else if let Some(rest) = target
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case("http://"))
        .map(|_| &target[7..])
    {
        match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        }
    } else {
        entry.update(|c| c.host = printable(target));
        return fail(
            &mut client,
            Failure::Bad(
                "only CONNECT and absolute http:// requests go through the proxy (https: use CONNECT)"
                    .into(),
            ),
        );
    };
    entry.update(|c| c.host = printable(authority));
    let Some((dest, port)) = split_authority(authority, (!connect).then_some(80)) else {
        return fail(
            &mut client,
            Failure::Bad(format!("not a host[:port]: {}", printable(authority))),
        );
    };
    entry.update(|c| {
        c.host = dest.to_string();
        c.port = port;
    });
    let mut server = match open(shared, &entry, &dest, port) {
        Ok(s) => s,
        Err(f) => return fail(&mut client, f),
    };
    if connect {
        if client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .is_err()
        {
            return;
        }
    } else {
        // One request per connection, to the checked server, for the checked host.
        let mut out = format!("{method} {path} {version}\r\n");
        out.push_str(&format!("Host: {authority}\r\n"));
        for h in lines.filter(|l| !l.is_empty()) {
            let name = h.split(':').next().unwrap_or_default().trim();
            let drop = ["host", "connection", "proxy-connection", "keep-alive"]
                .iter()
                .any(|d| name.eq_ignore_ascii_case(d))
                || name.to_ascii_lowercase().starts_with("proxy-");
            if !drop {
                out.push_str(h);
                out.push_str("\r\n");
            }
        }
        out.push_str("Connection: close\r\n\r\n");
        if server.write_all(out.as_bytes()).is_err() {
            return;
        }
        entry.sent.fetch_add(out.len() as u64, Ordering::Relaxed);
    }
    if !rest.is_empty() {
        if server.write_all(&rest).is_err() {
            return;
        }
        entry.sent.fetch_add(rest.len() as u64, Ordering::Relaxed);
    }
    relay(client, server, &entry);
}

fn reply_http(client: &mut TcpStream, f: &Failure) {
    let status = match f {
        Failure::Bad(_) => "400 Bad Request",
        Failure::Refused(_) => "403 Forbidden",
        Failure::Unreachable(..) => "502 Bad Gateway",
    };
    let body = format!("pysandbox --allow-net: {}\n", f.reason());
    let _ = client.write_all(
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
}

pub(super) fn socks5(mut client: TcpStream, shared: &Shared) {
    let entry = shared.entry("socks5");
    let fail = |client: &mut TcpStream, f: Failure| {
        entry.update(|c| c.reason = Some(f.reason().into()));
        let code = match &f {
            Failure::Bad(_) => 1,
            Failure::Refused(_) => 2,
            Failure::Unreachable(_, true) => 5,
            Failure::Unreachable(_, false) => 4,
        };
        let _ = client.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]);
    };
    let mut hdr = [0u8; 2];
    if client.read_exact(&mut hdr).is_err() {
        return fail(&mut client, Failure::Bad("short SOCKS5 greeting".into()));
    }
    let mut methods = vec![0u8; hdr[1] as usize];
    if client.read_exact(&mut methods).is_err() {
        return fail(&mut client, Failure::Bad("short SOCKS5 greeting".into()));
    }
    if !methods.contains(&0) {
        let _ = client.write_all(&[5, 0xff]);
        entry.update(|c| c.reason = Some("SOCKS5 without the no-authentication method".into()));
        return;
    }
    if client.write_all(&[5, 0]).is_err() {
        return;
    }
    let mut req = [0u8; 4];
    if client.read_exact(&mut req).is_err() || req[0] != 5 {
        return fail(&mut client, Failure::Bad("malformed SOCKS5 request".into()));
    }
    let host = match req[3] {
        1 => read_ip::<4>(&mut client),
        4 => read_ip::<16>(&mut client),
        3 => {
            let mut len = [0u8; 1];
            let mut name = vec![0u8; 255];
            client.read_exact(&mut len).ok().and_then(|_| {
                client
                    .read_exact(&mut name[..len[0] as usize])
                    .ok()
                    .map(|_| String::from_utf8_lossy(&name[..len[0] as usize]).into_owned())
            })
        }
        _ => None,
    };
    let mut p = [0u8; 2];
    let (Some(host), Ok(())) = (host, client.read_exact(&mut p)) else {
        return fail(&mut client, Failure::Bad("malformed SOCKS5 address".into()));
    };
    let port = u16::from_be_bytes(p);
    entry.update(|c| {
        c.host = printable(&host);
        c.port = port;
    });
    if req[1] != 1 {
        let _ = client.write_all(&[5, 7, 0, 1, 0, 0, 0, 0, 0, 0]);
        entry.update(|c| c.reason = Some("only the SOCKS5 CONNECT command is supported".into()));
        return;
    }
    let Some(dest) = Dest::parse(&host).filter(|_| port != 0) else {
        return fail(
            &mut client,
            Failure::Bad(format!("not a host: {}", printable(&host))),
        );
    };
    let server = match open(shared, &entry, &dest, port) {
        Ok(s) => s,
        Err(f) => return fail(&mut client, f),
    };
    if client.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).is_err() {
        return;
    }
    relay(client, server, &entry);
}

/// A SOCKS5 address of N bytes (4: IPv4, 16: IPv6), as text.
fn read_ip<const N: usize>(client: &mut TcpStream) -> Option<String>
where
    IpAddr: From<[u8; N]>,
{
    let mut a = [0u8; N];
    client
        .read_exact(&mut a)
        .ok()
        .map(|_| IpAddr::from(a).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        let a = |s: &str, d| split_authority(s, d).map(|(h, p)| (h.to_string(), p));
        assert_eq!(
            a("example.com:443", None),
            Some(("example.com".into(), 443))
        );
        assert_eq!(a("example.com", Some(80)), Some(("example.com".into(), 80)));
        assert_eq!(a("example.com", None), None);
        assert_eq!(a("[::1]:8080", None), Some(("::1".into(), 8080)));
        assert_eq!(a("[::1]", Some(80)), Some(("::1".into(), 80)));
        assert_eq!(a("127.0.0.1:0", None), None);
        assert_eq!(a("user@example.com:80", None), None);
        assert_eq!(a("exa mple.com:80", None), None);
        assert_eq!(a("example.com:99999", None), None);
    }

    #[test]
    fn logged_text_is_printable() {
        assert_eq!(printable("example.com"), "example.com");
        assert_eq!(printable("a\u{1b}[2Jb\0"), "a\\u{1b}[2Jb\\u{0}");
        assert_eq!(printable("x\u{202e}y z"), "x\\u{202e}y z");
        assert!(printable(&"a".repeat(1000)).len() <= 256);
    }
}
