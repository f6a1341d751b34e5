//! GNU sparse files on the way out: the header an export (or an import's rewrite) writes so
//! that a sparse file keeps its holes, and the copy a checkout makes of its stored segments.
//! Both cost what the stored data costs, never the logical size (see
//! `docs/decisions/0012-sparse-files.md`).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

use tar::{EntryType, GnuExtSparseHeader, GnuSparseHeader, Header};

use crate::error::{Error, Result};
use crate::layer::toc::TocEntry;

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

/// Turns `h` (a ustar header made for `e`, name and checksum still to be set) into a GNU sparse
/// header for `e`'s map: type `S`, size the stored bytes, real size the logical one, the first
/// four segments inside. Returns the extension blocks that must follow the header, before the
/// stored data.
pub(crate) fn gnu_sparse_header(h: &mut Header, e: &TocEntry) -> Result<Vec<u8>> {
    let map = e.sparse.as_deref().unwrap_or_default();
    h.set_entry_type(EntryType::GNUSparse);
    h.set_size(e.stored_len());
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
    Ok(blocks)
}

/// Writes the stored segments of a sparse file, read one after the other from `body`, at their
/// offsets in `file`, and sets its length to `size`: the holes are never written.
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
    fn headers_round_trip_through_the_reader() -> Result<()> {
        // Offsets past 8 GiB need base-256 fields; 30 segments need two extension blocks.
        let mut map: Vec<(u64, u64)> = (0..30u64).map(|i| (i << 34, 3)).collect();
        map.push(((30 << 34) + 5, 1));
        let mut e = TocEntry::new("f", EntryKind::File, 0o640);
        e.size = (31 << 34) + 7;
        e.sparse = Some(map.clone());
        let mut h = crate::layer::export::header_for(&e)?;
        let blocks = gnu_sparse_header(&mut h, &e)?;
        assert_eq!(blocks.len(), 2 * 512);
        let data = vec![7u8; e.stored_len() as usize];
        let mut out = tar::Builder::new(Vec::new());
        crate::layer::export::append_entry(
            &mut out,
            &mut h,
            "f",
            Some(&e),
            None,
            &mut blocks.as_slice().chain(data.as_slice()),
        )?;
        let bytes = out
            .into_inner()
            .map_err(|err| Error::invalid(err.to_string()))?;
        let mut r = TarReader::new(bytes.as_slice(), TarLimits::default());
        let raw = r.next_entry()?.ok_or_else(|| Error::invalid("no entry"))?;
        assert_eq!(raw.size, e.size);
        assert_eq!(raw.stored, 91);
        assert_eq!(raw.sparse, Some(map));
        assert_eq!(raw.mode, 0o640);
        let mut got = vec![0u8; 200];
        let mut n = 0;
        loop {
            let k = r.read_data(&mut got[n..])?;
            if k == 0 {
                break;
            }
            n += k;
        }
        assert_eq!(&got[..n], data.as_slice());
        Ok(())
    }
}
