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
    Runtime(#[from] crate::runtime::RuntimeError),
}
