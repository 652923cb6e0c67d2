//! pysandbox: run untrusted Python scripts in a hardened, disposable OCI container, with
//! no daemon and no root, by embedding youki's `libcontainer`.
//!
//! Data flows one way: policy (what the user asked) → image (a root file system) + spec
//! (the OCI description) → runtime (the only part that talks to libcontainer) → report.
//!
//! ```no_run
//! use pysandbox::policy::{RunPolicy, Script};
//! let mut p = RunPolicy::new(Script::Code("print(6 * 7)".into()));
//! p.no_fs = true;
//! let report = pysandbox::run(&p)?; // must be called from a single-threaded process
//! assert_eq!(report.cli_exit_code(), 0);
//! # Ok::<(), pysandbox::Error>(())
//! ```

pub mod dirs;
pub mod doctor;
pub mod error;
pub mod image;
pub mod limits;
pub mod net;
pub mod policy;
pub mod report;
pub mod runtime;
pub mod sandbox;
pub mod seccomp;
pub mod spec;
pub mod sys;

pub use error::Error;
pub use report::RunReport;
pub use sandbox::{RunRequest, Sandbox};

/// Runs one script in a fresh sandbox and reports how it ended. The script's stdout and
/// stderr go to this process's stdout and stderr.
///
/// Must be called from a single-threaded process (libcontainer forks with raw `clone3`;
/// pysandbox enters a user namespace of its own, which the kernel allows only to a
/// single-threaded process) and it changes this process's namespaces: call it once per
/// process, e.g. from a CLI or a per-run helper process.
pub fn run(policy: &policy::RunPolicy) -> Result<RunReport, Error> {
    runtime::run(policy)
}
