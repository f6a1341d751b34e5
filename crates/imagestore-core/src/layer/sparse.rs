//! GNU sparse files on the way out: the header an export (or an import's rewrite) writes so
//! that a sparse file keeps its holes, and the copy a checkout makes of its stored segments.
//! Both cost what the stored data costs, never the logical size (see
//! `docs/decisions/0012-sparse-files.md`).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

use tar::{EntryType, GnuExtSparseHeader, GnuSparseHeader, Header};

use crate::error::{Error, Result};
use crate::layer::content::Runs;
use crate::layer::toc::TocEntry;

/// A sparse map: `(offset, length)` segments in order.
type SparseMap = Vec<(u64, u64)>;

/// The GNU magic and version (`"ustar  \0"`), at offset 257 of a header.
const GNU_MAGIC: &[u8; 8] = b"ustar  \0";

/// Writes `v` into a 12-byte numeric field: octal when it fits, GNU base-256 otherwise.
fn put_num(field: &mut [u8; 12], v: u64) {
    if v < 1 << 33 {
        let s = format!("{v:011o}");
        field[..11].copy_from_slice(s.as_bytes());
        field[11] = 0;
    } else {
        field.fill(0);
        field[0] = 0x80;
        field[4..].copy_from_slice(&v.to_be_bytes());
    }
}

fn put_segment(slot: &mut GnuSparseHeader, (off, len): (u64, u64)) {
    put_num(&mut slot.offset, off);
    put_num(&mut slot.numbytes, len);
}

/// The map an export writes for a sparse file of `size` bytes stored as `map`, and how to
/// produce its data from the stored bytes: `(length, stored)` pieces, zeros where not stored.
///
/// Common readers (GNU tar, the `tar` crate) want every segment but the last to hold a multiple
/// of 512 bytes and the map to reach the real size, as GNU tar writes it. So each segment is
/// padded with zeros from the hole after it up to the next multiple of 512 (merged with the
/// next segment when they meet), empty segments are dropped, and a final `(size, 0)` segment
/// ends a map that stops short. The padding is at most 511 bytes a segment.
pub(crate) fn export_map(map: &[(u64, u64)], size: u64) -> (SparseMap, Runs) {
    let segs: Vec<(u64, u64)> = map.iter().copied().filter(|s| s.1 > 0).collect();
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut pieces: Vec<(u64, bool)> = Vec::new();
    let mut i = 0;
    while i < segs.len() {
        let (off, mut len) = segs[i];
        pieces.push((len, true));
        i += 1;
        while i < segs.len() {
            let padded = len.div_ceil(512) * 512;
            let (next_off, next_len) = segs[i];
            if off + padded < next_off {
                pieces.push((padded - len, false));
                len = padded;
                break;
            }
            // Padding would reach the next segment: fill the gap and take it in.
            pieces.push((next_off - off - len, false));
            pieces.push((next_len, true));
            len = next_off + next_len - off;
            i += 1;
        }
        out.push((off, len));
    }
    let end = out.last().map_or(0, |(o, l)| o + l);
    if end < size || out.is_empty() {
        out.push((size, 0));
    }
    pieces.retain(|p| p.0 > 0);
    (out, pieces)
}

/// Stored bytes from `inner` laid out as [`export_map`]'s pieces (zeros between).
pub(crate) struct Pieces<R> {
    inner: R,
    pieces: Vec<(u64, bool)>,
    at: usize,
    done: u64,
}

impl<R: Read> Pieces<R> {
    /// Lays out `inner` as `pieces`.
    pub(crate) fn new(inner: R, pieces: Vec<(u64, bool)>) -> Self {
        Pieces {
            inner,
            pieces,
            at: 0,
            done: 0,
        }
    }
}

impl<R: Read> Read for Pieces<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(&(len, stored)) = self.pieces.get(self.at) {
            if self.done == len {
                self.at += 1;
                self.done = 0;
                continue;
            }
            let want = (buf.len() as u64).min(len - self.done) as usize;
            let n = if stored {
                self.inner.read(&mut buf[..want])?
            } else {
                buf[..want].fill(0);
                want
            };
            if n == 0 && want > 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "sparse data ends early",
                ));
            }
            self.done += n as u64;
            return Ok(n);
        }
        Ok(0)
    }
}

/// Turns `h` (a ustar header made for `e`, name and checksum still to be set) into a GNU sparse
/// header for `e`'s map as [`export_map`] lays it out: type `S`, size the bytes written, real
/// size the logical one, the first four segments inside. Returns the extension blocks that
/// must follow the header and the pieces for [`Pieces`].
pub(crate) fn gnu_sparse_header(h: &mut Header, e: &TocEntry) -> Result<(Vec<u8>, Runs)> {
    let (map, pieces) = export_map(e.sparse.as_deref().unwrap_or_default(), e.size);
    h.set_entry_type(EntryType::GNUSparse);
    h.set_size(pieces.iter().map(|p| p.0).sum());
    h.as_mut_bytes()[257..265].copy_from_slice(GNU_MAGIC);
    let gnu = h
        .as_gnu_mut()
        .ok_or_else(|| Error::invalid("a GNU header does not read as one"))?;
    put_num(&mut gnu.realsize, e.size);
    let (first, rest) = map.split_at(map.len().min(gnu.sparse.len()));
    for (slot, seg) in gnu.sparse.iter_mut().zip(first) {
        put_segment(slot, *seg);
    }
    gnu.isextended[0] = u8::from(!rest.is_empty());
    let mut blocks = Vec::new();
    let mut chunks = rest.chunks(21).peekable();
    while let Some(chunk) = chunks.next() {
        let mut ext = GnuExtSparseHeader::new();
        for (slot, seg) in ext.sparse.iter_mut().zip(chunk) {
            put_segment(slot, *seg);
        }
        ext.isextended[0] = u8::from(chunks.peek().is_some());
        blocks.extend_from_slice(ext.as_bytes());
    }
    Ok((blocks, pieces))
}

/// Writes the stored segments of a sparse file, read one after the other from `body`, at their
/// offsets in `file`, and sets its length to `size`: the holes are never written.
// Only the Linux checkout writes files.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) fn write_segments(
    body: &mut dyn Read,
    file: &mut File,
    map: &[(u64, u64)],
    size: u64,
) -> io::Result<()> {
    for &(off, len) in map {
        if len == 0 {
            continue;
        }
        file.seek(SeekFrom::Start(off))?;
        let copied = io::copy(&mut body.take(len), file)?;
        if copied < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "sparse data ends early",
            ));
        }
    }
    file.set_len(size)?;
    file.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::tar_reader::{TarLimits, TarReader};
    use crate::layer::toc::EntryKind;

    #[test]
    fn exported_maps_are_block_aligned_and_reach_the_size() {
        let (map, pieces) = export_map(&[(0, 4), (600, 0), (1000, 10), (1100, 3)], 5000);
        assert_eq!(map, vec![(0, 512), (1000, 103), (5000, 0)]);
        assert_eq!(
            pieces,
            vec![(4, true), (508, false), (10, true), (90, false), (3, true)]
        );
        let (map, _) = export_map(&[], 7);
        assert_eq!(map, vec![(7, 0)]);
    }

    #[test]
    fn headers_round_trip_through_the_reader_and_the_tar_crate() -> Result<()> {
        // Offsets past 8 GiB need base-256 fields; 31 segments need two extension blocks.
        let mut map: Vec<(u64, u64)> = (0..30u64).map(|i| (i << 34, 3)).collect();
        map.push(((30 << 34) + 5, 1));
        let mut e = TocEntry::new("f", EntryKind::File, 0o640);
        e.size = (31 << 34) + 7;
        e.sparse = Some(map.clone());
        let mut h = crate::layer::export::header_for(&e)?;
        let (blocks, pieces) = gnu_sparse_header(&mut h, &e)?;
        assert_eq!(blocks.len(), 2 * 512);
        let data = vec![7u8; e.stored_len() as usize];
        let mut out = tar::Builder::new(Vec::new());
        crate::layer::export::append_entry(
            &mut out,
            &mut h,
            "f",
            Some(&e),
            None,
            &mut blocks
                .as_slice()
                .chain(Pieces::new(data.as_slice(), pieces)),
        )?;
        let bytes = out
            .into_inner()
            .map_err(|err| Error::invalid(err.to_string()))?;
        let mut r = TarReader::new(bytes.as_slice(), TarLimits::default());
        let raw = r.next_entry()?.ok_or_else(|| Error::invalid("no entry"))?;
        assert_eq!(raw.size, e.size);
        assert_eq!(raw.stored, 30 * 512 + 1);
        let mut want: Vec<(u64, u64)> = (0..30u64).map(|i| (i << 34, 512)).collect();
        want.push(((30 << 34) + 5, 1));
        want.push((e.size, 0));
        assert_eq!(raw.sparse, Some(want));
        assert_eq!(raw.mode, 0o640);
        // The tar crate reads it too (it checks alignment and the map's end).
        let mut a = tar::Archive::new(bytes.as_slice());
        let mut entries = a.entries().map_err(|err| Error::invalid(err.to_string()))?;
        let first = entries
            .next()
            .ok_or_else(|| Error::invalid("no entry"))?
            .map_err(|err| Error::invalid(err.to_string()))?;
        assert_eq!(first.size(), e.size);
        Ok(())
    }
}
