//! The labels pysandbox writes into the configs of the images it makes.

/// The Python version in the image (`3.11.7`).
pub const LABEL_PYTHON: &str = "org.pysandbox.python";
/// `image build`: what the image was built from (environment file, base, builder).
pub const LABEL_BUILD_KEY: &str = "org.pysandbox.build-key";
/// `image build`: the installed packages, `name==version,...`.
pub const LABEL_PACKAGES: &str = "org.pysandbox.packages";
/// The default image: the `rootfs-builder` version that made it.
pub const LABEL_DEFAULT_BUILDER: &str = "org.pysandbox.default.builder-version";
/// The default image: the host interpreter it was made from (as found on PATH).
pub const LABEL_DEFAULT_HOST_PYTHON: &str = "org.pysandbox.default.host-python";
/// The default image: the host files whose change triggers a rebuild (JSON: path, size,
/// mtime, inode of each).
pub const LABEL_DEFAULT_TRIGGERS: &str = "org.pysandbox.default.rebuild-triggers";
