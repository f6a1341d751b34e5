//! [`FileSink`]: the staging sink of backends that stage a layer in a local file.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Error, Result};
use crate::layer::ingest::StagingSink;

/// A new local file fed by the ingest pipeline; writes run on the blocking pool.
#[derive(Debug)]
pub struct FileSink {
    backend: &'static str,
    file: Option<File>,
    path: PathBuf,
}

impl FileSink {
    /// Creates `path`, which must not exist; `backend` names the backend in errors.
    pub fn create(backend: &'static str, path: PathBuf) -> Result<FileSink> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io(backend, &path, e))?;
        Ok(FileSink {
            backend,
            file: Some(file),
            path,
        })
    }

    /// Wraps a file opened for writing (an anonymous temporary file, say); `path` names it in
    /// errors.
    pub fn from_file(backend: &'static str, file: File, path: PathBuf) -> FileSink {
        FileSink {
            backend,
            file: Some(file),
            path,
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
        let (f, r) = tokio::task::spawn_blocking(move || {
            let r = f.write_all(&chunk);
            (f, r)
        })
        .await
        .map_err(|e| Error::backend(backend, format!("write task failed: {e}"), false))?;
        self.file = Some(f);
        r.map_err(|e| Error::io(backend, &self.path, e))
    }
}
