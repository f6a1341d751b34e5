//! The local backend's locks: the byte-range open-file-description locks of
//! [`imagestore_core::lock`], with errors naming this backend.

use std::path::{Path, PathBuf};

use imagestore_core::Result;
pub use imagestore_core::lock::{LockGuard, STORE_RANGE, range_for};

use crate::error::BACKEND;

/// Takes the exclusive lock on `range` of `path`, waiting for it (blocking pool only).
pub fn lock_blocking(path: &Path, range: u64) -> Result<LockGuard> {
    imagestore_core::lock::lock_blocking(BACKEND, path, range)
}

/// Takes the lock if it is free; `None` if someone holds it.
pub fn try_lock(path: &Path, range: u64) -> Result<Option<LockGuard>> {
    imagestore_core::lock::try_lock(BACKEND, path, range)
}

/// [`lock_blocking`] on the blocking pool.
pub async fn lock_async(path: PathBuf, range: u64) -> Result<LockGuard> {
    imagestore_core::lock::lock_async(BACKEND, path, range).await
}
