//! Cross-thread and cross-process locks on byte ranges of a lock file, shared by the backends
//! that keep their stores on a local file system.
//!
//! Open-file-description locks (`F_OFD_SETLKW`) belong to the open file, not the process, so
//! two threads of one process that open the lock file separately exclude each other exactly as
//! two processes do, and the kernel drops a lock when its holder dies. One file per store
//! carries many independent locks: byte 0 is the store's metadata lock, and each image id
//! hashes to its own byte (its write lock). Linux only: elsewhere taking a lock fails with an
//! error that says so.

use std::fs::{File, OpenOptions};
use std::io;
#[cfg(target_os = "linux")]
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Offset of the store-wide metadata lock.
pub const STORE_RANGE: u64 = 0;

/// The lock byte for a name (an image id, a store name): FNV-1a, kept clear of byte 0.
pub fn range_for(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    1 + (h >> 2)
}

/// A held lock; released when dropped (the descriptor is closed).
#[derive(Debug)]
pub struct LockGuard {
    _file: File,
}

#[cfg(target_os = "linux")]
fn ofd_lock(file: &File, range: u64, wait: bool) -> io::Result<bool> {
    // SAFETY: `flock` is a plain C struct; all-zero is a valid value that is then filled in.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = range as libc::off_t;
    fl.l_len = 1;
    fl.l_pid = 0;
    let cmd = if wait {
        libc::F_OFD_SETLKW
    } else {
        libc::F_OFD_SETLK
    };
    loop {
        // SAFETY: the descriptor is open for the duration of the call and `fl` is a valid,
        // initialised `struct flock` that lives across it.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut fl as *mut libc::flock) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) | Some(libc::EACCES) if !wait => return Ok(false),
            _ => return Err(err),
        }
    }
}

/// Elsewhere there are no open-file-description locks, and process-wide POSIX locks would not
/// exclude two threads of one process: the stores that need these locks are not offered.
#[cfg(not(target_os = "linux"))]
fn ofd_lock(_file: &File, _range: u64, _wait: bool) -> io::Result<bool> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "open-file-description locks are Linux's; local stores need them",
    ))
}

fn open_lock_file(backend: &'static str, path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io(backend, path, e))
}

/// Takes the exclusive lock on `range` of `path`, waiting for it; `backend` names the backend
/// in errors. Blocks the thread: call it from the blocking pool (see [`lock_async`]).
pub fn lock_blocking(backend: &'static str, path: &Path, range: u64) -> Result<LockGuard> {
    let file = open_lock_file(backend, path)?;
    ofd_lock(&file, range, true).map_err(|e| Error::io(backend, path, e))?;
    Ok(LockGuard { _file: file })
}

/// Takes the lock if it is free; `None` if someone holds it.
pub fn try_lock(backend: &'static str, path: &Path, range: u64) -> Result<Option<LockGuard>> {
    let file = open_lock_file(backend, path)?;
    if ofd_lock(&file, range, false).map_err(|e| Error::io(backend, path, e))? {
        Ok(Some(LockGuard { _file: file }))
    } else {
        Ok(None)
    }
}

/// [`lock_blocking`] on the blocking pool.
pub async fn lock_async(backend: &'static str, path: PathBuf, range: u64) -> Result<LockGuard> {
    tokio::task::spawn_blocking(move || lock_blocking(backend, &path, range))
        .await
        .map_err(|e| Error::backend(backend, format!("lock task failed: {e}"), false))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_exclude_each_other_across_descriptors() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::invalid(e.to_string()))?;
        let p = dir.path().join("lock");
        let a = lock_blocking("test", &p, 5)?;
        assert!(
            try_lock("test", &p, 5)?.is_none(),
            "same range, other descriptor: held"
        );
        assert!(try_lock("test", &p, 6)?.is_some(), "other range: free");
        drop(a);
        assert!(try_lock("test", &p, 5)?.is_some(), "released on drop");
        assert_ne!(range_for("a"), range_for("b"));
        assert_ne!(range_for("a"), STORE_RANGE);
        Ok(())
    }
}
