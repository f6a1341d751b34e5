//! A blocking, seekable reader over one object, for the layer engine's worker threads.
//!
//! Reads stream a ranged `GET` from the current offset. A forward seek of up to
//! [`SKIP_BY_READING`] bytes reads and drops; a longer one (or a backward one) starts a new
//! ranged `GET` on the next read, so an export of a few files from a large plain layer reads
//! only around them. A stream that breaks is resumed from the offset reached, a few times.

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::objects::Objects;

/// Forward seeks shorter than this read through instead of starting a new request.
pub const SKIP_BY_READING: u64 = 1 << 20;
/// Attempts to resume a broken stream before giving up.
const RESUMES: u32 = 5;

/// Reads object `key` on the blocking pool (never on a runtime worker thread).
pub struct ObjectReader {
    objects: Arc<Objects>,
    handle: tokio::runtime::Handle,
    key: String,
    pos: u64,
    stream: Option<BoxStream<'static, object_store::Result<Bytes>>>,
    buf: Bytes,
    eof: bool,
}

impl std::fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectReader")
            .field("key", &self.key)
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl ObjectReader {
    /// A reader at offset 0.
    pub fn new(objects: Arc<Objects>, handle: tokio::runtime::Handle, key: String) -> Self {
        ObjectReader {
            objects,
            handle,
            key,
            pos: 0,
            stream: None,
            buf: Bytes::new(),
            eof: false,
        }
    }

    fn io_err(&self, what: impl std::fmt::Display) -> io::Error {
        io::Error::other(crate::error::backend(
            format!("reading {}: {what}", self.objects.show(&self.key)),
            true,
        ))
    }

    /// Fills `buf` with the next bytes; false at the end of the object.
    fn fill(&mut self) -> io::Result<bool> {
        let mut failures = 0;
        while self.buf.is_empty() {
            if self.eof {
                return Ok(false);
            }
            if self.stream.is_none() {
                let objects = self.objects.clone();
                let (key, pos) = (self.key.clone(), self.pos);
                match self
                    .handle
                    .block_on(async move { objects.read_from(&key, pos).await })
                {
                    Ok(Some(s)) => self.stream = Some(s),
                    Ok(None) => {
                        self.eof = true;
                        return Ok(false);
                    }
                    Err(e) => return Err(io::Error::other(e)),
                }
            }
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            match self.handle.block_on(stream.next()) {
                Some(Ok(b)) => self.buf = b,
                None => {
                    self.eof = true;
                    self.stream = None;
                    return Ok(false);
                }
                Some(Err(e)) => {
                    failures += 1;
                    self.stream = None;
                    if failures > RESUMES {
                        return Err(self.io_err(e));
                    }
                    tracing::debug!(key = %self.key, pos = self.pos, error = %e, "resuming a broken read");
                    std::thread::sleep(Duration::from_millis(100 * u64::from(failures)));
                }
            }
        }
        Ok(true)
    }
}

impl Read for ObjectReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() || !self.fill()? {
            return Ok(0);
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf.advance(n);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for ObjectReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => n,
            SeekFrom::Current(d) => self
                .pos
                .checked_add_signed(d)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before 0"))?,
            SeekFrom::End(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "seeking from the end of an object",
                ));
            }
        };
        if target >= self.pos && target - self.pos <= SKIP_BY_READING {
            let mut left = target - self.pos;
            while left > 0 {
                if !self.fill()? {
                    break;
                }
                let n = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(self.buf.len());
                self.buf.advance(n);
                self.pos += n as u64;
                left -= n as u64;
            }
            // Past the end: the next read returns 0, as for a file.
            self.pos = target;
            return Ok(target);
        }
        self.pos = target;
        self.stream = None;
        self.buf = Bytes::new();
        self.eof = false;
        Ok(target)
    }
}
