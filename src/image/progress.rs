//! Progress of long image operations (downloads, unpacking), shown or not.

use std::io::{self, Read};

/// Reports the progress of long operations (downloads, unpacking).
pub trait Progress {
    fn start(&self, what: &str, total: Option<u64>);
    fn advance(&self, n: u64);
    fn finish(&self);
}

/// A `Progress` that shows nothing.
pub struct NoProgress;

/// A reader that reports the bytes read through it to a [`Progress`].
pub(crate) struct ProgressReader<'a, R> {
    pub inner: R,
    pub progress: &'a dyn Progress,
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

impl Progress for NoProgress {
    fn start(&self, _what: &str, _total: Option<u64>) {}
    fn advance(&self, _n: u64) {}
    fn finish(&self) {}
}
