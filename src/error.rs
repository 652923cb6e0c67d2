//! The library's error type: one enum aggregating each module's errors. Every message is
//! one line that names the cause and, where there is one, the fix.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error(transparent)]
    Dirs(#[from] crate::dirs::DirsError),
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    #[error(transparent)]
    Runtime(crate::runtime::RuntimeError),
    #[error(transparent)]
    Strict(#[from] crate::limits::StrictError),
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    #[error(transparent)]
    Runs(#[from] crate::runs::RunsError),
}

impl Error {
    /// Whether the cause is the host (namespaces, mounts, cgroups...) rather than the
    /// user's input: then `pysandbox doctor` can tell more.
    pub fn is_host_problem(&self) -> bool {
        use crate::runtime::RuntimeError as R;
        matches!(
            self,
            Error::Dirs(_)
                | Error::Runtime(
                    R::Host { .. } | R::Container { .. } | R::Stage { .. } | R::NoIdmap { .. }
                )
                | Error::Net(crate::net::NetError::Io { .. } | crate::net::NetError::Pasta(_))
        )
    }
}

impl From<crate::runtime::RuntimeError> for Error {
    /// The runtime's errors that come from a module below it are that module's.
    fn from(e: crate::runtime::RuntimeError) -> Error {
        use crate::runtime::RuntimeError as R;
        match e {
            R::Policy(e) => Error::Policy(e),
            R::Dirs(e) => Error::Dirs(e),
            R::Spec(e) => Error::Spec(e),
            R::Strict(e) => Error::Strict(e),
            R::Net(e) => Error::Net(e),
            R::Runs(e) => Error::Runs(e),
            e => Error::Runtime(e),
        }
    }
}
