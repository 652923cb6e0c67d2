//! pysandbox: run untrusted Python scripts in a hardened, disposable OCI container, with
//! no daemon and no root, by embedding youki's `libcontainer`.
//!
//! Data flows one way: policy (what the user asked) → image (a root file system) + spec
//! (the OCI description) → runtime (the only part that talks to libcontainer) → report.
//!
//! The library entry is [`Sandbox`]: each run is a helper process, so the caller's
//! namespaces, signals and threads are never touched.
//!
//! ```no_run
//! use pysandbox::{RunRequest, Sandbox};
//! let sandbox = Sandbox::new()?;
//! let report = sandbox.run(&RunRequest::code("print(6 * 7)"))?;
//! assert_eq!(report.stdout.text, "42\n");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod apparmor;
pub mod claim;
pub mod dirs;
pub mod doctor;
pub mod error;
pub mod helper;
pub mod image;
pub mod limits;
pub mod mcp;
pub mod net;
pub mod policy;
pub mod pool;
pub mod report;
pub mod runs;
pub mod runtime;
pub mod sandbox;
pub mod seccomp;
pub mod serve;
pub mod session;
pub mod spec;
pub mod sys;

pub use error::Error;
pub use pool::{Pool, PoolConfig, WhenEmpty};
pub use report::RunReport;
pub use sandbox::{RunRequest, Sandbox};
pub use session::{Execution, Session, SessionError};

/// Runs one script in a fresh sandbox in THIS process and reports how it ended; the
/// script's stdout and stderr go to this process's. For the `pysandbox` binary (and its
/// helper processes) only: it must be called from a single-threaded process (libcontainer
/// forks with raw `clone3`; pysandbox enters a user namespace of its own, which the
/// kernel allows only to a single-threaded process), and it leaves this process in other
/// namespaces with signals blocked, unable to make children (their pid namespace's init
/// is gone once the run is over). Libraries use [`Sandbox`].
#[doc(hidden)]
pub fn run_in_this_process(policy: &policy::RunPolicy) -> Result<RunReport, Error> {
    // The request is checked before the image: a typo fails before any image work.
    let prepared = runtime::prepare(policy)?;
    let image = image::resolve(&policy.image)?;
    Ok(prepared.run(&image)?)
}
