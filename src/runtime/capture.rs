//! Where the sandbox's stdout and stderr go: passed through to pysandbox's own streams, or
//! captured for the report; either way capped. Beyond the cap the head is kept, the tail
//! is kept, the middle is dropped and counted; memory never exceeds the cap, and the
//! script is never blocked by a flood (pysandbox keeps draining).

use std::io::Write;

use crate::report::Captured;

/// A ring holding the last `cap` bytes written to it.
#[derive(Debug)]
struct Tail {
    buf: Vec<u8>,
    cap: usize,
    /// Next write position once the ring is full.
    pos: usize,
}

impl Tail {
    fn new(cap: usize) -> Tail {
        Tail {
            buf: Vec::new(),
            cap,
            pos: 0,
        }
    }
    fn push(&mut self, mut data: &[u8]) -> u64 {
        let mut evicted = 0u64;
        if self.cap == 0 {
            return data.len() as u64;
        }
        if data.len() > self.cap {
            let skip = data.len() - self.cap;
            evicted += skip as u64;
            data = &data[skip..];
        }
        let room = self.cap - self.buf.len();
        let fill = room.min(data.len());
        self.buf.extend_from_slice(&data[..fill]);
        for &b in &data[fill..] {
            self.buf[self.pos] = b;
            self.pos = (self.pos + 1) % self.cap;
            evicted += 1;
        }
        evicted
    }
    fn into_bytes(self) -> Vec<u8> {
        if self.buf.len() < self.cap {
            return self.buf;
        }
        let mut v = self.buf[self.pos..].to_vec();
        v.extend_from_slice(&self.buf[..self.pos]);
        v
    }
    #[cfg(test)]
    fn len(&self) -> usize {
        self.buf.len()
    }
}

/// A capped stream: the first `cap/2` bytes, then a ring of the last `cap - cap/2`.
#[derive(Debug)]
pub struct Capped {
    /// Head bytes still to take.
    head_left: usize,
    /// The captured head (empty in pass-through: it went out already).
    head: Vec<u8>,
    tail: Tail,
    total: u64,
    dropped: u64,
    /// Pass-through: the head is written to this stream as it arrives, the tail at the end.
    pass: Option<std::io::Stdout>,
    pass_err: Option<std::io::Stderr>,
    sink_broken: bool,
}

impl Capped {
    fn new(cap: u64) -> Capped {
        let cap = cap.min(usize::MAX as u64 / 2) as usize;
        let head_cap = cap / 2;
        Capped {
            head_left: head_cap,
            head: Vec::new(),
            tail: Tail::new(cap - head_cap),
            total: 0,
            dropped: 0,
            pass: None,
            pass_err: None,
            sink_broken: false,
        }
    }

    /// Captures into memory (for the report).
    pub fn capture(cap: u64) -> Capped {
        Capped::new(cap)
    }

    /// Passes through to pysandbox's stdout (`err == false`) or stderr.
    pub fn pass_through(cap: u64, err: bool) -> Capped {
        let mut c = Capped::new(cap);
        if err {
            c.pass_err = Some(std::io::stderr());
        } else {
            c.pass = Some(std::io::stdout());
        }
        c
    }

    fn emit(&mut self, data: &[u8]) {
        if self.sink_broken {
            return;
        }
        let r = match (&self.pass, &self.pass_err) {
            (Some(o), _) => o.lock().write_all(data).and_then(|_| o.lock().flush()),
            (_, Some(e)) => e.lock().write_all(data),
            _ => Ok(()),
        };
        // The reader went away (EPIPE): keep draining the sandbox, discard.
        if r.is_err() {
            self.sink_broken = true;
        }
    }

    fn passing(&self) -> bool {
        self.pass.is_some() || self.pass_err.is_some()
    }

    /// The descriptor the next chunk will be written to, while pass-through still writes
    /// live (the head). The supervisor reads from the sandbox only when it is writable,
    /// so a stalled reader of pysandbox's output throttles the script instead of blocking
    /// pysandbox (whose deadline must keep running).
    pub fn live_sink(&self) -> Option<libc::c_int> {
        if self.sink_broken || self.head_left == 0 {
            return None;
        }
        match (&self.pass, &self.pass_err) {
            (Some(_), _) => Some(1),
            (_, Some(_)) => Some(2),
            _ => None,
        }
    }

    /// Takes a chunk the script wrote.
    pub fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        let n = self.head_left.min(data.len());
        if n > 0 {
            if self.passing() {
                self.emit(&data[..n]);
            } else {
                self.head.extend_from_slice(&data[..n]);
            }
            self.head_left -= n;
        }
        if n < data.len() {
            self.dropped += self.tail.push(&data[n..]);
        }
    }

    /// Ends the stream: in pass-through, writes a marker (if bytes were dropped) and the
    /// tail; returns what was captured (empty text in pass-through).
    pub fn finish(mut self) -> Captured {
        let head_len = self.head.len() as u64;
        let tail = std::mem::replace(&mut self.tail, Tail::new(0)).into_bytes();
        if self.passing() {
            if self.dropped > 0 {
                let marker = format!(
                    "\n[pysandbox: {} bytes dropped here: the stream exceeded --max-output]\n",
                    self.dropped
                );
                self.emit(marker.as_bytes());
            }
            self.emit(&tail);
            if let Some(o) = &self.pass {
                let _ = o.lock().flush();
            }
            return Captured {
                text: String::new(),
                dropped_bytes: self.dropped,
                dropped_at: 0,
                total_bytes: self.total,
            };
        }
        let mut bytes = std::mem::take(&mut self.head);
        bytes.extend_from_slice(&tail);
        Captured {
            text: String::from_utf8_lossy(&bytes).into_owned(),
            dropped_bytes: self.dropped,
            dropped_at: if self.dropped > 0 { head_len } else { 0 },
            total_bytes: self.total,
        }
    }

    /// Bytes held in memory (never more than the cap).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.head.len() + self.tail.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits() {
        let mut c = Capped::capture(100);
        c.push(b"hello ");
        c.push(b"world");
        let r = c.finish();
        assert_eq!(r.text, "hello world");
        assert_eq!((r.dropped_bytes, r.total_bytes), (0, 11));
    }

    #[test]
    fn keeps_head_and_tail() {
        let mut c = Capped::capture(10);
        for chunk in [&b"0123456789"[..], b"abcdefghij", b"ABCDE"] {
            c.push(chunk);
            assert!(c.held() <= 10);
        }
        let r = c.finish();
        // head: first 5 bytes, tail: last 5 bytes, 15 dropped in between.
        assert_eq!(r.text, "01234ABCDE");
        assert_eq!((r.dropped_bytes, r.dropped_at, r.total_bytes), (15, 5, 25));
    }

    #[test]
    fn flood_is_bounded() {
        let mut c = Capped::capture(1024);
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..64 {
            c.push(&chunk);
            assert!(c.held() <= 1024);
        }
        let r = c.finish();
        assert_eq!(r.total_bytes, 64 * 64 * 1024);
        assert_eq!(r.dropped_bytes + r.text.len() as u64, r.total_bytes);
    }

    #[test]
    fn tail_ring_order() {
        let mut t = Tail::new(4);
        t.push(b"ab");
        t.push(b"cdef");
        t.push(b"g");
        assert_eq!(t.into_bytes(), b"defg");
    }
}
