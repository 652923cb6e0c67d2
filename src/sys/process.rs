//! Processes born in a given cgroup v2 (`clone3` with `CLONE_INTO_CGROUP`) that share
//! this process's memory, on a stack of their own (x86_64 and aarch64, where pysandbox
//! has the few instructions that start them; elsewhere `ENOSYS`): one that runs while
//! this process waits (as after `vfork`), one that lives beside it; waiting for children.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `struct clone_args` up to `cgroup` (CLONE_ARGS_SIZE_VER2, Linux 5.7).
#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

impl CloneArgs {
    fn new(flags: u64, cgroup: Option<BorrowedFd<'_>>) -> CloneArgs {
        CloneArgs {
            flags: flags | cgroup.map_or(0, |_| CLONE_INTO_CGROUP),
            pidfd: 0,
            child_tid: 0,
            parent_tid: 0,
            exit_signal: libc::SIGCHLD as u64,
            stack: 0,
            stack_size: 0,
            tls: 0,
            set_tid: 0,
            set_tid_size: 0,
            cgroup: cgroup.map_or(0, |c| c.as_raw_fd() as u64),
        }
    }
}

/// Whether [`run_child`] and [`clone_sibling`] can work here: an architecture pysandbox
/// starts such children on, and `clone3` not filtered (some container runtimes' seccomp
/// profiles answer `ENOSYS`). Asked with an empty argument, which a working `clone3`
/// refuses (`EINVAL`) without making anything.
/// Asked once per process (a filter, once installed, stays).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if !cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
            return false;
        }
        // SAFETY: clone3 with a null argument of size 0 is refused before anything is
        // read.
        let r = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<CloneArgs>(), 0usize) };
        r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL)
    })
}

/// Runs `f` in a new process, made directly in the cgroup v2 directory `cgroup` when one
/// is given, that ends with the raw `exit` system call and `f`'s value as its status (a
/// panic in `f` is status 101). Returns the child's pid, for [`wait_exit`].
///
/// The child is made as `vfork` makes one: `clone3` with `CLONE_VM | CLONE_VFORK`, on a
/// stack of its own (mapped here, with a guard page), and this process is suspended
/// until the child has exited, so nothing of this process is copied (a fork copies its
/// page tables: milliseconds for a process of pysandbox's size under an emulated CPU).
/// `Err((e, f))` when no child was made (`ENOSYS` where not [`available`]): `f` comes
/// back.
///
/// While the child runs:
/// - it allocates and frees on this process's heap, and it sees (and changes) this
///   thread's thread-locals and `errno`: this process is suspended in the call and has
///   no other thread (checked: an error otherwise), so no allocator lock or borrowed
///   thread-local can be held by anyone else; what the child leaves behind, this
///   process finds;
/// - every signal is blocked in this process, and in the child until it starts, its
///   caught signals set back to their default action by the kernel
///   (`CLONE_CLEAR_SIGHAND`), as `posix_spawn` does: then the mask of this process is
///   restored for `f` (and the processes `f` creates inherit it). No handler of this
///   process ever runs in the child;
/// - if the child is killed by a signal, it may leave the heap mid-update (an allocator
///   lock held): then this process must end at once without allocating ([`abandon`]).
///
/// # Safety
/// - This process has a single thread (checked).
/// - `f` owns no file descriptor, only memory, and borrows the descriptors it uses: `f`
///   is moved into the child, whose drops close only the child's copies of descriptors,
///   and this process never drops `f`.
/// - `f` does not return through anything this process would resume (it runs on
///   another stack; unwinding is caught at its end).
pub unsafe fn run_child<F: FnOnce() -> i32>(
    cgroup: Option<BorrowedFd<'_>>,
    f: F,
) -> Result<i32, (io::Error, F)> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        // SAFETY: the caller's contract, which is this function's.
        unsafe { shared::run_child(cgroup, f) }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = cgroup;
        Err((io::Error::from_raw_os_error(libc::ENOSYS), f))
    }
}

/// Makes a process that shares this process's memory, as a sibling of this process
/// (`CLONE_PARENT`: this process's parent is its parent, and its exit signal is this
/// process's), born in the cgroup v2 directory `cgroup`, which runs `child(arg)` on
/// `stack` while this process goes on. Returns its pid.
///
/// # Safety
/// `stack` is used by nothing else as long as the child lives; `child` never returns,
/// touches nothing but its own frame and `arg`, makes only async-signal-safe calls and
/// allocates nothing (it runs beside this process on the same memory).
pub unsafe fn clone_sibling(
    cgroup: BorrowedFd<'_>,
    stack: &mut [u8],
    child: extern "C" fn(*mut std::ffi::c_void) -> !,
    arg: *mut std::ffi::c_void,
) -> io::Result<i32> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        // The child's exit signal must be 0 with CLONE_PARENT (it takes this process's).
        let mut args = CloneArgs::new(shared::CLONE_VM | libc::CLONE_PARENT as u64, Some(cgroup));
        args.exit_signal = 0;
        // Both ABIs want the stack 16-byte aligned.
        let low = (stack.as_mut_ptr() as u64 + 15) & !15;
        let high = (stack.as_mut_ptr() as u64 + stack.len() as u64) & !15;
        (args.stack, args.stack_size) = (low, high.saturating_sub(low));
        // SAFETY: a valid clone_args whose stack is the caller's, unused by anything else;
        // `child` starts from its first instruction with `arg` (the caller's promise).
        match unsafe { shared::clone3_on_stack(&mut args, child, arg) } {
            r if r < 0 => Err(io::Error::from_raw_os_error(-r as i32)),
            pid => Ok(pid as i32),
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (cgroup, stack, child, arg);
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }
}

/// Ends the calling process (or a [`run_child`] child) with the raw `exit` system call:
/// no destructor, exit handler or stdio flush of this process runs.
pub fn exit_child(code: i32) -> ! {
    // SAFETY: exit(2) ends the calling task and never returns; it touches no memory of
    // this process.
    unsafe { libc::syscall(libc::SYS_exit, code) };
    unreachable!("exit(2) returned")
}

/// Ends this process at once with `code` after writing `msg` to its stderr, allocating
/// nothing: for when its memory cannot be trusted any more (see [`run_child`]).
pub fn abandon(msg: &'static str, code: i32) -> ! {
    // SAFETY: write(2) of a static buffer; exit_group(2) never returns.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::syscall(libc::SYS_exit_group, code);
    }
    unreachable!("exit_group(2) returned")
}

/// The child of [`run_child`] that shares this process's memory.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod shared {
    use std::ffi::c_void;
    use std::io;
    use std::mem::{ManuallyDrop, MaybeUninit};
    use std::os::fd::BorrowedFd;
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::ptr;

    use super::{CloneArgs, exit_child};

    pub(super) const CLONE_VM: u64 = libc::CLONE_VM as u64;
    const CLONE_VFORK: u64 = libc::CLONE_VFORK as u64;
    /// Every caught signal back to its default action in the child (Linux 5.5), as
    /// `posix_spawn` does: no handler of this process ever runs on the shared memory.
    const CLONE_CLEAR_SIGHAND: u64 = 0x1_0000_0000;

    /// The child's stack: libcontainer's `build()` runs on it (its own processes are
    /// forks that exec or exit). Reserved, not committed: only the pages used are.
    const STACK_SIZE: usize = 8 << 20;

    /// The kernel's signal mask (64 signals, glibc's internal ones included), as
    /// `rt_sigprocmask` takes it.
    type KernelMask = u64;

    fn sigprocmask(set: KernelMask) -> KernelMask {
        let mut old: KernelMask = 0;
        // SAFETY: rt_sigprocmask with valid in and out pointers of the kernel's size;
        // it changes only the calling task's mask.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &set as *const KernelMask,
                &mut old as *mut KernelMask,
                std::mem::size_of::<KernelMask>(),
            )
        };
        old
    }

    /// A mapping for the child's stack, with a guard page at its low end (stacks grow
    /// down): an overflow faults instead of writing over other memory.
    struct Stack {
        base: *mut c_void,
        guard: usize,
        len: usize,
    }

    impl Stack {
        fn new() -> io::Result<Stack> {
            // SAFETY: sysconf has no memory arguments.
            let guard = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
                p if p > 0 => p as usize,
                _ => 4096,
            };
            let len = STACK_SIZE + guard;
            // SAFETY: a fresh anonymous private mapping; no existing memory is touched.
            let base = unsafe {
                libc::mmap(
                    ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if base == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let stack = Stack { base, guard, len };
            // SAFETY: the lowest page of the mapping made above, which nothing uses.
            if unsafe { libc::mprotect(base, guard, libc::PROT_NONE) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(stack)
        }

        /// Lowest usable address and size, as `clone_args` takes them (the kernel starts
        /// the child at their end, page-aligned, so 16-byte aligned as both ABIs want).
        fn area(&self) -> (u64, u64) {
            (
                self.base as u64 + self.guard as u64,
                (self.len - self.guard) as u64,
            )
        }
    }

    impl Drop for Stack {
        fn drop(&mut self) {
            // SAFETY: the mapping this Stack made; the child that used it has exited.
            unsafe { libc::munmap(self.base, self.len) };
        }
    }

    /// What the child starts from, on the (suspended) parent's stack.
    struct Start<F> {
        f: ManuallyDrop<F>,
        /// The parent's signal mask, restored in the child for `f`.
        mask: KernelMask,
    }

    /// Threads of this process (`/proc/self/task` links one directory per thread).
    fn threads() -> io::Result<u64> {
        let mut st = MaybeUninit::<libc::stat>::uninit();
        // SAFETY: stat of a NUL-terminated path into a buffer of the right type.
        if unsafe { libc::stat(c"/proc/self/task".as_ptr(), st.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: stat succeeded, so it filled the buffer.
        let st = unsafe { st.assume_init() };
        #[allow(clippy::unnecessary_cast)] // nlink_t is 32 bits on aarch64
        Ok((st.st_nlink as u64).saturating_sub(2))
    }

    /// See [`super::run_child`].
    ///
    /// # Safety
    /// As [`super::run_child`].
    pub(super) unsafe fn run_child<F: FnOnce() -> i32>(
        cgroup: Option<BorrowedFd<'_>>,
        f: F,
    ) -> Result<i32, (io::Error, F)> {
        match threads() {
            Ok(1) => {}
            Ok(n) => {
                let e = io::Error::other(format!(
                    "{n} threads: a child sharing this process's memory needs a single-threaded process"
                ));
                return Err((e, f));
            }
            Err(e) => return Err((e, f)),
        }
        let stack = match Stack::new() {
            Ok(s) => s,
            Err(e) => return Err((e, f)),
        };
        let mut args = CloneArgs::new(CLONE_VM | CLONE_VFORK | CLONE_CLEAR_SIGHAND, cgroup);
        (args.stack, args.stack_size) = stack.area();
        let mut start = Start {
            f: ManuallyDrop::new(f),
            mask: sigprocmask(!0),
        };
        // SAFETY: `args` is a valid clone_args whose stack is the mapping above; the
        // child starts on it in child_main with `start`, which lives on this stack
        // until this process resumes, i.e. after the child has exited (CLONE_VFORK).
        // Every signal is blocked here (above), so no handler runs in between either.
        let r = unsafe {
            clone3_on_stack(
                &mut args,
                child_main::<F>,
                (&mut start as *mut Start<F>).cast(),
            )
        };
        sigprocmask(start.mask);
        drop(stack);
        if r < 0 {
            // No child: `f` is still ours.
            let e = io::Error::from_raw_os_error(-r as i32);
            return Err((e, ManuallyDrop::into_inner(start.f)));
        }
        // `f` was the child's: taken, run and dropped there (or lost with it).
        Ok(r as i32)
    }

    /// The child (its caught signals reset to their default action by the kernel): the
    /// parent's mask, `f`, exit.
    extern "C" fn child_main<F: FnOnce() -> i32>(arg: *mut c_void) -> ! {
        // SAFETY: `arg` is the parent's Start<F>, alive while the parent is suspended
        // (until this child exits), and only this child touches it meanwhile.
        let start = unsafe { &mut *arg.cast::<Start<F>>() };
        sigprocmask(start.mask);
        // SAFETY: taken once, here; the parent never uses `f` once a child exists.
        let f = unsafe { ManuallyDrop::take(&mut start.f) };
        exit_child(catch_unwind(AssertUnwindSafe(f)).unwrap_or(101))
    }

    /// `clone3(args)`; in the child, which starts on `args`' stack with the parent's
    /// registers, calls `child(arg)` (which never returns), as glibc's `clone()` does.
    /// Returns the child's pid or `-errno`, in the parent only.
    ///
    /// # Safety
    /// `args` names a stack that nothing else uses and `CLONE_VM | CLONE_VFORK`;
    /// `child` must be able to run from the first instruction with only `arg`.
    pub(super) unsafe fn clone3_on_stack(
        args: *mut CloneArgs,
        child: extern "C" fn(*mut c_void) -> !,
        arg: *mut c_void,
    ) -> isize {
        let size = std::mem::size_of::<CloneArgs>();
        let ret: isize;
        // SAFETY: the child's branch never leaves the block: it enters `child`
        // with `arg` as its argument, as a call from nowhere: a null frame pointer and
        // a null return address end its stack for unwinders and backtraces (a panic's
        // backtrace would otherwise walk above the new stack's end), with the stack
        // pointer aligned as at any function's entry (the kernel set it to the
        // page-aligned end of the new stack). The parent's branch falls through with
        // its registers intact but those listed.
        // x86_64: the syscall instruction clobbers rax (result), rcx and r11 only; rdx
        // and r8 survive it; `push 0` is the return address, leaving rsp 8 off a 16-byte
        // boundary.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            std::arch::asm!(
                "syscall",
                "test rax, rax",
                "jnz 2f",
                "xor ebp, ebp",
                "mov rdi, r8",
                "push 0",
                "jmp rdx",
                "2:",
                inlateout("rax") libc::SYS_clone3 as isize => ret,
                in("rdi") args,
                in("rsi") size,
                in("rdx") child,
                in("r8") arg,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        // SAFETY: as above. aarch64: `svc 0` writes x0 (result) only; the frame pointer
        // is x29, the return address x30, sp stays 16-byte aligned.
        #[cfg(target_arch = "aarch64")]
        unsafe {
            std::arch::asm!(
                "svc 0",
                "cbnz x0, 2f",
                "mov x29, xzr",
                "mov x30, xzr",
                "mov x0, x3",
                "br x2",
                "2:",
                inlateout("x0") args => ret,
                in("x1") size,
                in("x2") child,
                in("x3") arg,
                in("x8") libc::SYS_clone3,
                options(nostack),
            );
        }
        ret
    }
}

/// Waits for child `pid` to end and reaps it; returns its raw wait status.
pub fn wait_exit(pid: i32) -> io::Result<i32> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on a child of ours with a valid out-pointer.
        if unsafe { libc::waitpid(pid, &mut status, libc::__WALL) } == pid {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Reaps the first child of this process to end that lived in a pid namespace below its
/// own (libcontainer's intermediate, see `runtime::born`), and any other child that ends
/// before it, but those of `keep`: `Ok(None)` if one of those ended first (left
/// waitable, for its owner).
pub fn reap_one_below(keep: &[i32]) -> io::Result<Option<i32>> {
    let depth = pid_depth("self");
    loop {
        let Some(pid) = next_waitable_child() else {
            return Err(io::Error::from_raw_os_error(libc::ECHILD));
        };
        if keep.contains(&pid) {
            return Ok(None);
        }
        let below = pid_depth(&pid.to_string()) > depth;
        wait_exit(pid)?;
        if below {
            return Ok(Some(pid));
        }
    }
}

/// Reaps `init`, the killed init of a pid namespace this process made. Dying, an init
/// waits until every process of its namespace has been reaped, this process's children
/// in it included (libcontainer's intermediate and init after a failed create): they are
/// reaped here first, else this process and the init would wait for each other forever.
pub(super) fn reap_namespace(init: libc::pid_t) {
    let reap = |pid: libc::pid_t| {
        let _ = wait_exit(pid);
    };
    loop {
        match next_waitable_child() {
            // The usual case: nothing else was left.
            Some(pid) if pid == init => {
                reap(init);
                return;
            }
            Some(pid) if pid_depth(&pid.to_string()) > pid_depth("self") => {
                reap(pid);
            }
            // Another child of this process's, not ours to reap, is first in line (or
            // none is left): find those of the namespace in /proc.
            _ => break,
        }
    }
    for pid in children_deeper_than(pid_depth("self")) {
        reap(pid);
    }
    reap(init);
}

/// The first child of this process that has ended (or blocks until one does), left
/// waitable; None without children.
fn next_waitable_child() -> Option<libc::pid_t> {
    loop {
        // SAFETY: a zeroed siginfo_t is a valid out-buffer for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid with a valid out-pointer; WNOWAIT leaves the child waitable.
        let r = unsafe {
            libc::waitid(
                libc::P_ALL,
                0,
                &mut info,
                libc::WEXITED | libc::WNOWAIT | libc::__WALL,
            )
        };
        if r == 0 {
            // SAFETY: waitid filled a SIGCHLD siginfo, whose si_pid is valid.
            return Some(unsafe { info.si_pid() });
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return None;
        }
    }
}

/// How many pid namespaces process `pid` (a number, or `self`) has a pid in (its
/// `NSpid` line); 0 if it is gone.
fn pid_depth(pid: &str) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .map(|v| v.split_whitespace().count())
        })
        .unwrap_or(0)
}

/// The children of this process that live in a pid namespace below its own (a scan of
/// /proc: the kernel here may not list a process's children).
fn children_deeper_than(depth: usize) -> Vec<libc::pid_t> {
    let me = std::process::id() as libc::pid_t;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|pid| {
            // The parent is the 2nd field after the command's closing parenthesis.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let (_, rest) = s.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<libc::pid_t>().ok()
                })
                == Some(me)
        })
        .filter(|pid| pid_depth(&pid.to_string()) > depth)
        .collect()
}

#[cfg(all(test, any(target_arch = "x86_64", target_arch = "aarch64")))]
mod tests {
    use std::cell::Cell;

    use super::{available, exit_child, run_child, wait_exit};

    /// Runs `body` in a forked process, single-threaded as `run_child` wants (the test
    /// harness is not); `body`'s value, 0 for success, is its exit status.
    fn in_child(body: fn() -> i32) {
        // SAFETY: glibc's fork (its handlers keep the allocator usable in the child); the
        // child only runs `body` and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            exit_child(body());
        }
        let status = wait_exit(pid).unwrap();
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the test's process failed: wait status {status:#x}"
        );
    }

    fn blocked(sig: i32) -> bool {
        // SAFETY: zeroed sigsets are valid; sigprocmask only reads the mask here.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigprocmask(libc::SIG_BLOCK, std::ptr::null(), &mut set);
            libc::sigismember(&set, sig) == 1
        }
    }

    fn block(sig: i32) {
        // SAFETY: as in blocked; adds one signal to this process's mask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
    }

    extern "C" fn handler(_: i32) {}

    fn action(sig: i32) -> libc::sighandler_t {
        // SAFETY: a zeroed sigaction is a valid out-buffer; this only reads the action.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            libc::sigaction(sig, std::ptr::null(), &mut old);
            old.sa_sigaction
        }
    }

    fn set_action(sig: i32, to: libc::sighandler_t) {
        // SAFETY: a zeroed sigaction with a valid handler (a function or SIG_*).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = to;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }

    #[test]
    fn a_child_runs_with_the_callers_mask_no_handler_forks_and_exits() {
        in_child(|| {
            block(libc::SIGUSR1);
            set_action(libc::SIGUSR2, handler as *const () as libc::sighandler_t);
            set_action(libc::SIGWINCH, libc::SIG_IGN);
            let child_pid = Cell::new(0u32);
            let from_child = || {
                child_pid.set(std::process::id());
                if !blocked(libc::SIGUSR1) || blocked(libc::SIGUSR2) {
                    return 3;
                }
                // Caught signals are back to their default action (the memory is
                // shared: no handler of the parent may run here).
                if action(libc::SIGUSR2) != libc::SIG_DFL {
                    return 6;
                }
                if action(libc::SIGWINCH) != libc::SIG_IGN {
                    return 8;
                }
                // A fork from the child, as libcontainer's intermediate is made.
                // SAFETY: the grandchild only exits.
                match unsafe { libc::fork() } {
                    0 => exit_child(7),
                    p if p > 0 => match wait_exit(p) {
                        Ok(s) if libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == 7 => 42,
                        _ => 4,
                    },
                    _ => 5,
                }
            };
            // SAFETY: single-threaded (a fork of the test); the closure owns no descriptor.
            let Ok(pid) = (unsafe { run_child(None, from_child) }) else {
                return 10;
            };
            match wait_exit(pid) {
                Ok(s) if libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == 42 => {}
                _ => return 11,
            }
            // The memory is shared: the child's write is seen here.
            if child_pid.get() != pid as u32 {
                return 12;
            }
            if !blocked(libc::SIGUSR1) || blocked(libc::SIGUSR2) {
                return 13;
            }
            if action(libc::SIGUSR2) == libc::SIG_DFL {
                return 14;
            }
            0
        });
    }

    #[test]
    fn a_panic_in_the_child_is_status_101() {
        in_child(|| {
            // SAFETY: as above.
            let Ok(pid) = (unsafe { run_child(None, || panic!("in the child")) }) else {
                return 10;
            };
            match wait_exit(pid) {
                Ok(s) if libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == 101 => 0,
                _ => 11,
            }
        });
    }

    #[test]
    fn asking_whether_clone3_works_makes_no_process() {
        in_child(|| {
            // Here (x86_64, aarch64) the answer is whether clone3 is filtered; either
            // way no child may come of it.
            let _ = available();
            // SAFETY: waitpid without a status pointer.
            let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
            match (r, std::io::Error::last_os_error().raw_os_error()) {
                (-1, Some(libc::ECHILD)) => 0,
                _ => 1,
            }
        });
    }
}
