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
//!
//! Sparse files whose digest has the [`DigestForm::SparseMap`] form are copied and checked from
//! their stored segments only ([`ContentPass::open_stored`], [`Checked::stored`]), so a file
//! declaring terabytes of holes costs what its stored data costs.

use std::collections::HashMap;
use std::io::{self, Read};

use crate::digest::{Algorithm, Hasher};
use crate::error::{Error, Result};
use crate::layer::compose::EntryRef;
use crate::layer::export::{LayerReader, LayerSource};
use crate::layer::toc::{DigestForm, TocEntry};

/// Domain prefix of the [`DigestForm::SparseMap`] content digest.
const SPARSE_DIGEST_PREFIX: &[u8] = b"imagestore sparse file v1\0";

/// A hasher for the content digest of `entry`, as its TOC records it: for the
/// [`DigestForm::SparseMap`] form it has already taken the logical size and the map
/// (`prefix, size, segment count, then each offset and length`, all big-endian `u64`), and
/// takes the stored bytes next; otherwise it takes the logical bytes.
pub fn content_hasher(entry: &TocEntry) -> Hasher {
    let mut h = Algorithm::Sha256.hasher();
    if let (Some(map), DigestForm::SparseMap) = (&entry.sparse, entry.digest_form) {
        h.update(SPARSE_DIGEST_PREFIX);
        h.update(&entry.size.to_be_bytes());
        h.update(&(map.len() as u64).to_be_bytes());
        for (off, len) in map {
            h.update(&off.to_be_bytes());
            h.update(&len.to_be_bytes());
        }
    }
    h
}

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

    /// The stored segments of a sparse file, one after the other (`entry.stored_len()`
    /// bytes), without its holes. The default reads [`ContentPass::open`] and drops the holes;
    /// sources that hold the segments as such override it so holes cost nothing.
    fn open_stored(
        &mut self,
        path: &str,
        content: EntryRef,
        entry: &TocEntry,
    ) -> Result<Box<dyn Read + '_>> {
        let segments = segments(entry.size, entry.sparse.as_deref());
        let inner = self.open(path, content, entry)?;
        Ok(Box::new(DropHoles {
            inner,
            segments,
            seg: 0,
            done_in_seg: 0,
        }))
    }
}

/// The stored segments of a logical reader: hole bytes are read and dropped.
struct DropHoles<'a> {
    inner: Box<dyn Read + 'a>,
    segments: Vec<(u64, bool)>,
    seg: usize,
    done_in_seg: u64,
}

impl Read for DropHoles<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut scratch = [0u8; 8192];
        while let Some(&(len, stored)) = self.segments.get(self.seg) {
            let left = len - self.done_in_seg;
            if left == 0 {
                self.seg += 1;
                self.done_in_seg = 0;
                continue;
            }
            if stored {
                let want = (buf.len() as u64).min(left) as usize;
                let n = self.inner.read(&mut buf[..want])?;
                if n == 0 && want > 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "data ends early",
                    ));
                }
                self.done_in_seg += n as u64;
                return Ok(n);
            }
            let want = (scratch.len() as u64).min(left) as usize;
            let n = self.inner.read(&mut scratch[..want])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "data ends early",
                ));
            }
            self.done_in_seg += n as u64;
        }
        Ok(0)
    }
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

impl<S: LayerSource + ?Sized> TarPass<'_, S> {
    /// The reader of the layer holding `content`, positioned at `entry`'s data.
    fn at_data(&mut self, content: EntryRef, entry: &TocEntry) -> Result<&mut dyn LayerReader> {
        let layer = content.layer as usize;
        let reader = match self.readers.entry(layer) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(self.source.open(layer)?),
        };
        reader
            .skip_to(entry.data_offset)
            .map_err(|err| corrupt_data(entry, err))?;
        Ok(reader.as_mut())
    }
}

impl<S: LayerSource + ?Sized> ContentPass for TarPass<'_, S> {
    fn open(
        &mut self,
        _path: &str,
        content: EntryRef,
        entry: &TocEntry,
    ) -> Result<Box<dyn Read + '_>> {
        let reader = self.at_data(content, entry)?;
        Ok(Box::new(SparseBody::new(reader, entry)))
    }

    fn open_stored(
        &mut self,
        _path: &str,
        content: EntryRef,
        entry: &TocEntry,
    ) -> Result<Box<dyn Read + '_>> {
        let reader = self.at_data(content, entry)?;
        // In the tar the stored segments follow each other: exactly the bytes wanted.
        Ok(Box::new(reader.take(entry.stored_len())))
    }
}

fn corrupt_data(e: &TocEntry, err: impl std::fmt::Display) -> Error {
    Error::corrupt(format!("layer data of {:?}", e.path), err.to_string())
}

/// Runs of a file, `(length, stored)`: stored data, or a hole (zeros) when not stored.
pub(crate) type Runs = Vec<(u64, bool)>;

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

/// Reads exactly a file's data from its content reader, hashing as it goes; an early end is
/// an `UnexpectedEof` error, and [`Checked::finish`] compares the digest with the TOC's.
///
/// [`Checked::new`] reads the logical bytes (`entry.size`); for a digest of the
/// [`DigestForm::SparseMap`] form only the stored segments are hashed and the holes must read
/// as zeros. [`Checked::stored`] reads only the stored segments (`entry.stored_len()`).
pub struct Checked<'a> {
    inner: Box<dyn Read + 'a>,
    entry: &'a TocEntry,
    left: u64,
    hasher: Hasher,
    /// For logical reads of a sparse-form file: its segments `(length, stored)`, the current
    /// one and the bytes done in it.
    holes: Option<(Runs, usize, u64)>,
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
    /// Wraps the logical content reader of `entry` ([`ContentPass::open`]).
    pub fn new(inner: Box<dyn Read + 'a>, entry: &'a TocEntry) -> Self {
        let holes = entry
            .is_sparse_form()
            .then(|| (segments(entry.size, entry.sparse.as_deref()), 0, 0));
        Checked {
            inner,
            entry,
            left: entry.size,
            hasher: content_hasher(entry),
            holes,
            failed: None,
        }
    }

    /// Wraps the stored-segments reader of a sparse-form `entry` ([`ContentPass::open_stored`]).
    /// `InvalidArgument` for an entry whose digest covers its logical bytes.
    pub fn stored(inner: Box<dyn Read + 'a>, entry: &'a TocEntry) -> Result<Self> {
        if !entry.is_sparse_form() {
            return Err(Error::invalid(format!(
                "{:?}: its digest covers its logical bytes, not its stored segments",
                entry.path
            )));
        }
        Ok(Checked {
            inner,
            entry,
            left: entry.stored_len(),
            hasher: content_hasher(entry),
            holes: None,
            failed: None,
        })
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

    /// Hashes `bytes` of a logical read: stored segments go to the hasher, holes must be zero.
    fn take(&mut self, mut bytes: &[u8]) -> std::result::Result<(), String> {
        let Some((segs, seg, done)) = self.holes.as_mut() else {
            self.hasher.update(bytes);
            return Ok(());
        };
        while !bytes.is_empty() {
            let Some(&(len, stored)) = segs.get(*seg) else {
                return Err("more data than the file's size".to_owned());
            };
            let k = ((len - *done).min(bytes.len() as u64)) as usize;
            let (now, rest) = bytes.split_at(k);
            if stored {
                self.hasher.update(now);
            } else if now.iter().any(|b| *b != 0) {
                return Err(format!(
                    "a hole reads as non-zero bytes near offset {}",
                    segs[..*seg].iter().map(|s| s.0).sum::<u64>() + *done
                ));
            }
            *done += k as u64;
            if *done == len {
                *seg += 1;
                *done = 0;
            }
            bytes = rest;
        }
        Ok(())
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
        if let Err(why) = self.take(&buf[..n]) {
            self.failed = Some(why.clone());
            return Err(io::Error::new(io::ErrorKind::InvalidData, why));
        }
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
