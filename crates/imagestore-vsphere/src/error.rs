//! Mapping failures into imagestore's [`Error`].

use std::io;
use std::path::Path;

use imagestore_core::Error;

/// The scheme, used as the backend name in errors.
pub const BACKEND: &str = "vmdk";

/// An I/O error on `path`, as a backend error naming the path.
pub fn io_err(path: &Path, e: io::Error) -> Error {
    Error::io(BACKEND, path, e)
}

/// An error of the VMDK or ext4 layer about `what` (a disk, an image).
pub fn disk_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::backend(BACKEND, format!("{what}: {e}"), false)
}

/// Extension for attaching the path to `io::Result`s.
pub trait IoContext<T> {
    /// Maps the error to a backend error naming `path`.
    fn at(self, path: &Path) -> Result<T, Error>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T, Error> {
        self.map_err(|e| io_err(path, e))
    }
}
