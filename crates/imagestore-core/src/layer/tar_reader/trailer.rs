//! How an archive ends: the end-of-archive marker, what may follow it, and seeking over data.

use std::io::{Read, Seek, SeekFrom};

use super::{TarReader, map_read_error, truncated};
use crate::error::{Error, Result};

impl<R: Read> TarReader<R> {
    /// Reads into `buf` until it is full or the stream ends; returns how much was read.
    fn read_up_to(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(map_read_error(e)),
            }
        }
        self.pos += got as u64;
        Ok(got)
    }

    /// After a zero block at `first`: the archive ends there if the stream does, or if the
    /// next block is zero too (the end-of-archive marker); only zeros may follow the marker.
    /// A zero block followed by a partial block is a cut archive.
    /// A zero block followed by data, or data after the marker, would be kept in the stored
    /// layer yet be invisible in its TOC: both are refused.
    pub(super) fn end_of_archive(&mut self, first: u64) -> Result<()> {
        let mut buf = [0u8; 512];
        let n = self.read_up_to(&mut buf)?;
        if buf[..n].iter().any(|b| *b != 0) {
            return Err(Error::bad_archive(format!(
                "a lone zero block at offset {first} is followed by more data"
            )));
        }
        if n != 0 && n < buf.len() {
            // Neither the end of the stream nor a second zero block: a cut archive (Go's
            // reader says so too).
            return Err(Error::bad_archive(format!(
                "a lone zero block at offset {first} is followed by a partial block of {n} bytes"
            )));
        }
        let mut buf = [0u8; 8192];
        loop {
            let at = self.pos;
            let n = self.read_up_to(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            if let Some(i) = buf[..n].iter().position(|b| *b != 0) {
                return Err(Error::bad_archive(format!(
                    "data at byte {} after the end-of-archive marker (hidden data is refused)",
                    at + i as u64
                )));
            }
        }
    }
}

impl<R: Read + Seek> TarReader<R> {
    /// Skips the rest of the current entry's data by seeking over it, for indexing a large
    /// archive on disk without reading its members. The last skipped byte is read, so an
    /// archive cut inside the data is still reported as truncated.
    pub fn seek_past_data(&mut self) -> Result<()> {
        let n = self.remaining;
        if n == 0 {
            return Ok(());
        }
        let jump = i64::try_from(n - 1).map_err(|_| {
            Error::bad_archive(format!("entry data at byte {} is too large", self.pos))
        })?;
        self.inner
            .seek(SeekFrom::Current(jump))
            .map_err(map_read_error)?;
        self.pos += n - 1;
        self.remaining = 1;
        let mut last = [0u8; 1];
        if self.read_data(&mut last)? != 1 {
            return Err(truncated(self.pos));
        }
        Ok(())
    }
}
