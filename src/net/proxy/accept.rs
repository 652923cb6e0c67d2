//! The proxy's accept loop: one thread per connection, at most [`MAX_CONNECTIONS`] at
//! once, each handed to the reader of its request ([`super::request`]); the log is
//! written when the stop pipe closes.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::conn::Shared;
use super::request::{http, socks5};
use super::{HEAD_TIMEOUT, MAX_CONNECTIONS};
use crate::net::allow::AllowList;

/// The accept loop; returns when the stop pipe closes, after writing the log.
pub(super) fn serve(listener: OwnedFd, stop: OwnedFd, log: OwnedFd, allow: AllowList) {
    let listener = TcpListener::from(listener);
    let _ = listener.set_nonblocking(true);
    let shared = Arc::new(Shared::new(allow));
    loop {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            continue;
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            break;
        }
        while let Ok((client, _)) = listener.accept() {
            if shared.active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                shared.entry("unknown").update(|c| {
                    c.reason = Some(format!(
                        "more than {MAX_CONNECTIONS} connections at once through the proxy"
                    ))
                });
                continue; // dropped: the client sees the connection closed
            }
            shared.active.fetch_add(1, Ordering::SeqCst);
            let s = shared.clone();
            let spawned = std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    handle(client, &s);
                    s.active.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                shared.active.fetch_sub(1, Ordering::SeqCst);
                shared
                    .entry("unknown")
                    .update(|c| c.reason = Some(format!("the proxy could not take it: {e}")));
            }
        }
    }
    let out = serde_json::to_vec(&shared.snapshot()).unwrap_or_default();
    let mut log = std::fs::File::from(log);
    let _ = log.write_all(&out);
}

fn handle(client: TcpStream, shared: &Shared) {
    let _ = client.set_read_timeout(Some(HEAD_TIMEOUT));
    let _ = client.set_nodelay(true);
    let mut first = [0u8; 1];
    match client.peek(&mut first) {
        Ok(1) => {}
        _ => return, // closed without a request: nothing to log
    }
    match first[0] {
        5 => socks5(client, shared),
        b'A'..=b'Z' => http(client, shared),
        _ => {
            shared
                .entry("unknown")
                .update(|c| c.reason = Some("not HTTP nor SOCKS5".into()));
        }
    }
}
