//! The proxy's connections: the log every attempt goes into, opening an allowed
//! connection (resolve, check each *resolved* address, connect to the one checked) and
//! relaying bytes both ways. What a client asks for is read by [`super::request`]; the
//! accept loop is [`super::accept`].

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::{CONNECT_TIMEOUT, MAX_ADDRS, MAX_LOG, RELAY_BUF};
use crate::net::allow::{AllowList, Dest, canonical};
use crate::report::NetConnection;

/// One entry of the log, updated while its connection lives.
pub(super) struct Entry {
    conn: Mutex<NetConnection>,
    pub(super) sent: AtomicU64,
    received: AtomicU64,
}

#[derive(Default)]
struct Log {
    entries: Vec<Arc<Entry>>,
    dropped: u64,
}

pub(super) struct Shared {
    allow: AllowList,
    log: Mutex<Log>,
    /// Connections being handled now.
    pub(super) active: AtomicUsize,
}

impl Shared {
    pub(super) fn new(allow: AllowList) -> Shared {
        Shared {
            allow,
            log: Mutex::new(Log::default()),
            active: AtomicUsize::new(0),
        }
    }

    pub(super) fn entry(&self, protocol: &str) -> Arc<Entry> {
        let e = Arc::new(Entry {
            conn: Mutex::new(NetConnection {
                protocol: protocol.into(),
                host: String::new(),
                port: 0,
                address: None,
                allowed: false,
                reason: None,
                bytes_sent: 0,
                bytes_received: 0,
            }),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
        });
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if log.entries.len() < MAX_LOG {
            log.entries.push(e.clone());
        } else {
            log.dropped += 1;
        }
        e
    }

    pub(super) fn snapshot(&self) -> (Vec<NetConnection>, u64) {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let list = log
            .entries
            .iter()
            .map(|e| {
                let mut c = e.conn.lock().unwrap_or_else(|p| p.into_inner()).clone();
                c.bytes_sent = e.sent.load(Ordering::Relaxed);
                c.bytes_received = e.received.load(Ordering::Relaxed);
                c
            })
            .collect();
        (list, log.dropped)
    }
}

impl Entry {
    pub(super) fn update(&self, f: impl FnOnce(&mut NetConnection)) {
        f(&mut self.conn.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// What went wrong with a request, and how to tell the client.
pub(super) enum Failure {
    /// Malformed request (400 / SOCKS general failure).
    Bad(String),
    /// Refused by the allow-list (403 / SOCKS 0x02).
    Refused(String),
    /// Allowed but unreachable (502 / SOCKS 0x04 or 0x05).
    Unreachable(String, bool),
}

impl Failure {
    pub(super) fn reason(&self) -> &str {
        match self {
            Failure::Bad(r) | Failure::Refused(r) | Failure::Unreachable(r, _) => r,
        }
    }
}

/// Resolves `dest`, checks each address, connects to the first allowed one.
pub(super) fn open(
    shared: &Shared,
    entry: &Entry,
    dest: &Dest,
    port: u16,
) -> Result<TcpStream, Failure> {
    let allow = &shared.allow;
    if !allow.may_match(dest, port) {
        return Err(Failure::Refused(format!(
            "no --allow-net rule allows {dest}:{port}"
        )));
    }
    let addrs: Vec<IpAddr> = match dest {
        Dest::Addr(a) => vec![*a],
        Dest::Name(n) => {
            let mut v: Vec<IpAddr> = (n.as_str(), port)
                .to_socket_addrs()
                .map_err(|e| Failure::Unreachable(format!("cannot resolve {n}: {e}"), false))?
                .map(|a| a.ip())
                .collect();
            v.dedup();
            v.truncate(MAX_ADDRS);
            v
        }
    };
    let mut refused = None;
    let mut failed = None;
    for ip in addrs {
        let ip = canonical(ip);
        match allow.check(dest, port, ip) {
            Ok(()) => match TcpStream::connect_timeout(&SocketAddr::new(ip, port), CONNECT_TIMEOUT)
            {
                Ok(s) => {
                    entry.update(|c| {
                        c.address = Some(ip.to_string());
                        c.allowed = true;
                    });
                    return Ok(s);
                }
                Err(e) => {
                    let refused = e.kind() == io::ErrorKind::ConnectionRefused;
                    failed.get_or_insert((ip, format!("{ip}:{port}: {e}"), refused));
                }
            },
            Err(why) => {
                refused.get_or_insert((ip, why));
            }
        }
    }
    if let Some((ip, why, conn_refused)) = failed {
        entry.update(|c| {
            c.address = Some(ip.to_string());
            c.allowed = true;
        });
        return Err(Failure::Unreachable(why, conn_refused));
    }
    match refused {
        Some((ip, why)) => {
            entry.update(|c| c.address = Some(ip.to_string()));
            Err(Failure::Refused(why))
        }
        None => Err(Failure::Unreachable(
            format!("{dest} has no address"),
            false,
        )),
    }
}

/// Copies both ways until both sides are done; counts the bytes.
pub(super) fn relay(client: TcpStream, server: TcpStream, entry: &Entry) {
    let _ = client.set_read_timeout(None);
    let _ = server.set_nodelay(true);
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    std::thread::scope(|s| {
        let up = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn_scoped(s, || copy(&client2, &server2, &entry.sent));
        if up.is_err() {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
            return;
        }
        copy(&server, &client, &entry.received);
    });
}

fn copy(mut from: &TcpStream, mut to: &TcpStream, count: &AtomicU64) {
    let mut buf = vec![0u8; RELAY_BUF];
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
