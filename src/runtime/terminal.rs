//! `run -i`: pysandbox's own terminal during an interactive run. It goes to raw mode
//! (every key, Ctrl-C and Ctrl-D included, travels as a byte to the sandbox's terminal,
//! whose line discipline turns it into a signal or an end-of-file for the interpreter)
//! and is restored when the guard drops: normal exit, timeout, a signal to pysandbox, or
//! an error. Its window size is copied onto the sandbox's terminal at start and on every
//! SIGWINCH.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};

/// pysandbox's terminal: its stdin.
fn host() -> BorrowedFd<'static> {
    // SAFETY: fd 0 stays open for the life of the process (pysandbox never closes it).
    unsafe { BorrowedFd::borrow_raw(libc::STDIN_FILENO) }
}

/// Whether pysandbox's stdin is a terminal.
pub fn stdin_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal()
}

/// (rows, columns) of pysandbox's terminal; 24x80 when it has none.
pub fn window_size() -> (u16, u16) {
    let mut ws: libc::winsize = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ into a valid winsize.
    let r = unsafe { libc::ioctl(libc::STDIN_FILENO, libc::TIOCGWINSZ, &mut ws) };
    if r < 0 || ws.ws_row == 0 || ws.ws_col == 0 {
        (24, 80)
    } else {
        (ws.ws_row, ws.ws_col)
    }
}

/// Copies pysandbox's window size onto the sandbox's terminal (its master); the kernel
/// then sends SIGWINCH to the interpreter.
pub fn copy_size(master: &OwnedFd) {
    let (rows, cols) = window_size();
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ from a valid winsize on a live descriptor.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

/// Raw mode on pysandbox's terminal until dropped.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    pub fn enter() -> io::Result<RawMode> {
        let saved = tcgetattr(host()).map_err(io::Error::from)?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(host(), SetArg::TCSANOW, &raw).map_err(io::Error::from)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = tcsetattr(host().as_fd(), SetArg::TCSADRAIN, &self.saved);
    }
}
