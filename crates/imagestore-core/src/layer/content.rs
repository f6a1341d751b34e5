//! Where export and checkout read file data from.
//!
//! A plan (`export::Plan`) says which files to emit; a [`ContentSource`] gives their bytes.
//! Backends that keep layer tars give a [`LayerSource`]: every `LayerSource` is a
//! `ContentSource` that reads a file from the layer holding its content, at its offset in the
//! uncompressed stream, with one forward-only reader per layer. Backends that keep a
//! filesystem instead (the VMDK backends' ext4) read the file at its path in the image.
//!
//! Either way the bytes pass through [`Checked`], which stops at the size the TOC gives, fails
//! when the data ends early and compares the content digest with the TOC's at the end, so a
//! damaged layer or disk is reported instead of exported.

use std::collections::HashMap;
use std::io::{self, Read};

use crate::digest::{Algorithm, Hasher};
use crate::error::{Error, Result};
use crate::layer::compose::EntryRef;
use crate::layer::export::{LayerReader, LayerSource};
use crate::layer::toc::TocEntry;

/// Gives the data of the regular files of an export or checkout.
pub trait ContentSource: Send + Sync {
    /// Starts one pass (an export, a checkout) on the calling thread; its files are asked for
    /// in plan order (grouped by content layer, in stream order).
    fn pass(&self) -> Result<Box<dyn ContentPass + '_>>;
}

/// One pass of reads from a [`ContentSource`].
pub trait ContentPass {
    /// The logical contents of a regular file: at least `entry.size` bytes (more are ignored),
    /// sparse holes as zeros. `path` is the file's path in the image (before any filter) and
    /// `content` the TOC entry holding its data (`entry`).
    fn open(
        &mut self,
        path: &str,
        content: EntryRef,
        entry: &TocEntry,
    ) -> Result<Box<dyn Read + '_>>;
}

impl<T: LayerSource + ?Sized> ContentSource for T {
    fn pass(&self) -> Result<Box<dyn ContentPass + '_>> {
        Ok(Box::new(TarPass {
            source: self,
            readers: HashMap::new(),
        }))
    }
}

/// A pass over layer tars: one forward-only reader per layer, opened on first use.
struct TarPass<'a, S: ?Sized> {
    source: &'a S,
    readers: HashMap<usize, Box<dyn LayerReader>>,
}

impl<S: LayerSource + ?Sized> ContentPass for TarPass<'_, S> {
    fn open(
        &mut self,
        _path: &str,
        content: EntryRef,
        entry: &TocEntry,
    ) -> Result<Box<dyn Read + '_>> {
        let layer = content.layer as usize;
        let reader = match self.readers.entry(layer) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(self.source.open(layer)?),
        };
        reader
            .skip_to(entry.data_offset)
            .map_err(|err| corrupt_data(entry, err))?;
        Ok(Box::new(SparseBody::new(reader.as_mut(), entry)))
    }
}

fn corrupt_data(e: &TocEntry, err: impl std::fmt::Display) -> Error {
    Error::corrupt(format!("layer data of {:?}", e.path), err.to_string())
}

/// The runs of a file of logical size `size` whose stored data covers `map` (`(offset, length)`
/// pairs in order; `None` for a file stored whole): `(length, stored)`, holes unstored.
pub(crate) fn segments(size: u64, map: Option<&[(u64, u64)]>) -> Vec<(u64, bool)> {
    let Some(map) = map else {
        return vec![(size, true)];
    };
    let mut out = Vec::new();
    let mut at = 0;
    for &(off, len) in map {
        if off > at {
            out.push((off - at, false));
        }
        out.push((len, true));
        at = off + len;
    }
    if size > at {
        out.push((size - at, false));
    }
    out
}

/// A file's logical contents from its tar data: stored segments read, sparse holes as zeros.
struct SparseBody<'a> {
    inner: &'a mut dyn LayerReader,
    /// Segments to produce: `(length, stored)`.
    segments: Vec<(u64, bool)>,
    seg: usize,
    done_in_seg: u64,
}

impl<'a> SparseBody<'a> {
    fn new(inner: &'a mut dyn LayerReader, entry: &TocEntry) -> Self {
        SparseBody {
            inner,
            segments: segments(entry.size, entry.sparse.as_deref()),
            seg: 0,
            done_in_seg: 0,
        }
    }
}

impl Read for SparseBody<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(&(len, stored)) = self.segments.get(self.seg) {
            let left = len - self.done_in_seg;
            if left == 0 {
                self.seg += 1;
                self.done_in_seg = 0;
                continue;
            }
            let want = (buf.len() as u64).min(left) as usize;
            let n = if stored {
                self.inner.read(&mut buf[..want])?
            } else {
                buf[..want].fill(0);
                want
            };
            self.done_in_seg += n as u64;
            return Ok(n);
        }
        Ok(0)
    }
}

/// Reads exactly a file's size from its content reader, hashing as it goes; an early end is
/// an `UnexpectedEof` error, and [`Checked::finish`] compares the digest with the TOC's.
pub struct Checked<'a> {
    inner: Box<dyn Read + 'a>,
    entry: &'a TocEntry,
    left: u64,
    hasher: Hasher,
    /// Why reading stopped before the end, if it did.
    failed: Option<String>,
}

impl std::fmt::Debug for Checked<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checked")
            .field("path", &self.entry.path)
            .field("left", &self.left)
            .finish_non_exhaustive()
    }
}

impl<'a> Checked<'a> {
    /// Wraps the content reader of `entry`.
    pub fn new(inner: Box<dyn Read + 'a>, entry: &'a TocEntry) -> Self {
        Checked {
            inner,
            entry,
            left: entry.size,
            hasher: Algorithm::Sha256.hasher(),
            failed: None,
        }
    }

    /// True if reading the content (not writing it elsewhere) failed.
    pub fn read_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// Ends the read: `Corrupt` if the data could not be read in full or its digest is not
    /// the TOC's.
    pub fn finish(self) -> Result<()> {
        if let Some(why) = self.failed {
            return Err(corrupt_data(self.entry, why));
        }
        if self.left > 0 {
            return Err(corrupt_data(self.entry, "the data ends early"));
        }
        let got = self.hasher.finish();
        match &self.entry.digest {
            Some(want) if *want != got => Err(corrupt_data(
                self.entry,
                format!("content digest is {got}, the TOC says {want}"),
            )),
            _ => Ok(()),
        }
    }
}

impl Read for Checked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(self.left) as usize;
        let n = match self.inner.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                self.failed = Some(format!("reading it failed: {e}"));
                return Err(e);
            }
        };
        if n == 0 {
            self.failed = Some("the data ends early".to_owned());
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the data of {:?} ends early", self.entry.path),
            ));
        }
        self.hasher.update(&buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

/// A [`ContentSource`] with no file data (for plans whose files are all empty, like the
/// scratch skeleton); asking it for data is an error.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoContent;

impl ContentSource for NoContent {
    fn pass(&self) -> Result<Box<dyn ContentPass + '_>> {
        Ok(Box::new(NoContent))
    }
}

impl ContentPass for NoContent {
    fn open(
        &mut self,
        path: &str,
        _content: EntryRef,
        _entry: &TocEntry,
    ) -> Result<Box<dyn Read + '_>> {
        Err(Error::invalid(format!("no data is available for {path:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::layer::toc::EntryKind;

    fn entry(data: &[u8]) -> TocEntry {
        let mut e = TocEntry::new("f", EntryKind::File, 0o644);
        e.size = data.len() as u64;
        e.digest = Some(Digest::sha256_of(data));
        e
    }

    fn read(c: &mut Checked<'_>) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        c.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn checked_reads_the_size_and_verifies_the_digest() -> Result<()> {
        let e = entry(b"hello");
        let mut c = Checked::new(Box::new(&b"hello, and more"[..]), &e);
        assert_eq!(read(&mut c).ok(), Some(b"hello".to_vec()));
        c.finish()?;

        let mut c = Checked::new(Box::new(&b"jello"[..]), &e);
        assert!(read(&mut c).is_ok());
        assert!(matches!(c.finish(), Err(Error::Corrupt { .. })));

        let mut c = Checked::new(Box::new(&b"hel"[..]), &e);
        assert!(read(&mut c).is_err(), "an early end is an error");
        assert!(matches!(c.finish(), Err(Error::Corrupt { .. })));
        Ok(())
    }

    #[test]
    fn no_content_refuses_reads() {
        let e = entry(b"x");
        let mut pass = NoContent;
        assert!(pass.open("f", EntryRef { layer: 0, entry: 0 }, &e).is_err());
    }
}
