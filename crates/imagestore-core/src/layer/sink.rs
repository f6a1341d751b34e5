//! [`FileSink`]: the staging sink of backends that stage a layer in a local file.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Error, Result};
use crate::layer::ingest::StagingSink;

/// Bytes written between two starts of writeback (see [`FileSink`]).
const WRITEBACK_EVERY: u64 = 8 << 20;

/// A new local file fed by the ingest pipeline; writes run on the blocking pool.
///
/// Every 8 MiB it asks the kernel to start writing what came before to
/// disk (Linux's `sync_file_range` with `SYNC_FILE_RANGE_WRITE`, which does not wait), so
/// the disk works while the rest of the layer arrives and the fsync of
/// [`FileSink::finish`] waits only for the tail, not for the whole layer.
#[derive(Debug)]
pub struct FileSink {
    backend: &'static str,
    file: Option<File>,
    path: PathBuf,
    /// Bytes written so far.
    written: u64,
    /// Bytes whose writeback has been started.
    flushed: u64,
}

impl FileSink {
    /// Creates `path`, which must not exist; `backend` names the backend in errors.
    pub fn create(backend: &'static str, path: PathBuf) -> Result<FileSink> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io(backend, &path, e))?;
        Ok(FileSink::from_file(backend, file, path))
    }

    /// Wraps a file opened for writing (an anonymous temporary file, say); `path` names it in
    /// errors.
    pub fn from_file(backend: &'static str, file: File, path: PathBuf) -> FileSink {
        FileSink {
            backend,
            file: Some(file),
            path,
            written: 0,
            flushed: 0,
        }
    }

    /// The file, for reading back what was written (`None` after a failed write).
    pub fn into_file(mut self) -> Option<File> {
        self.file.take()
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// fsyncs and closes the file.
    pub async fn finish(mut self) -> Result<()> {
        let file = self.file.take();
        let (backend, path) = (self.backend, self.path.clone());
        tokio::task::spawn_blocking(move || match file {
            Some(f) => f.sync_all().map_err(|e| Error::io(backend, &path, e)),
            None => Ok(()),
        })
        .await
        .map_err(|e| Error::backend(backend, format!("sync task failed: {e}"), false))?
    }
}

#[async_trait]
impl StagingSink for FileSink {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        let backend = self.backend;
        let Some(mut f) = self.file.take() else {
            return Err(Error::backend(
                backend,
                "staging file already closed",
                false,
            ));
        };
        let len = chunk.len() as u64;
        let (start, end) = (self.flushed, self.written + len);
        let flush = end - start >= WRITEBACK_EVERY;
        let (f, r) = tokio::task::spawn_blocking(move || {
            let r = f.write_all(&chunk);
            if r.is_ok() && flush {
                start_writeback(&f, start, end - start);
            }
            (f, r)
        })
        .await
        .map_err(|e| Error::backend(backend, format!("write task failed: {e}"), false))?;
        self.file = Some(f);
        r.map_err(|e| Error::io(backend, &self.path, e))?;
        self.written = end;
        if flush {
            self.flushed = end;
        }
        Ok(())
    }
}

/// Starts writing bytes `offset..offset + len` of `file` to disk without waiting for them.
/// Advisory: a failure only leaves the work to the final fsync, which reports errors.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: `sync_file_range` reads no memory of ours; the descriptor is open for the
    // duration of the call because `file` is borrowed.
    let _ = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
}

/// Elsewhere the final fsync writes everything.
#[cfg(not(target_os = "linux"))]
fn start_writeback(_: &File, _: u64, _: u64) {}
