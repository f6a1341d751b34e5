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

/// `e`, naming backend `scheme` where it names [`BACKEND`]: the disk and ext4 code is shared by
/// `vmdk://` and `vsphere://`, and an error reaching a `vsphere://` caller names `vsphere`.
pub fn in_backend(e: Error, scheme: &'static str) -> Error {
    match e {
        Error::Backend {
            backend,
            message,
            retryable,
            source,
        } if backend == BACKEND => Error::Backend {
            backend: scheme,
            message,
            retryable,
            source,
        },
        other => other,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_of_shared_disk_code_name_the_backend_in_use() {
        let e = in_backend(disk_err("a.vmdk", "bad grain"), "vsphere");
        assert!(e.to_string().starts_with("vsphere backend: a.vmdk"), "{e}");
        let other = in_backend(Error::backend("file", "x", false), "vsphere");
        assert!(other.to_string().starts_with("file backend"), "{other}");
    }
}
