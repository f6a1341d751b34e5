//! The TOC index: a layer's TOC entries sorted by path, in a binary file that answers "what
//! does this layer say about path P" with a binary search of a few small reads, without
//! loading the whole TOC. Diffs and write checks use it, so their cost follows the paths they
//! touch, not the size of the layers below.
//!
//! Format, version 1 (little-endian):
//! ```text
//! "ISTOCIDX" | version u32 = 1 | count u32 | count × record offset u64
//! records, sorted by (path, position): path_len u32 | path | position u32 | json_len u32 | entry JSON
//! ```
//! `position` is the entry's index in the TOC; the JSON is the TOC entry exactly as in the TOC.

use std::io;

use crate::error::{Error, Result};
use crate::layer::toc::{Toc, TocEntry};

const MAGIC: &[u8; 8] = b"ISTOCIDX";
const VERSION: u32 = 1;
const HEADER: u64 = 16;
/// Longest record a reader accepts (a path plus an entry with xattrs).
const MAX_RECORD: usize = 8 << 20;

/// Positional reads, for index files and in-memory buffers.
pub trait ReadAt: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

impl ReadAt for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

/// Encodes the index of a TOC.
pub fn build(toc: &Toc) -> Result<Vec<u8>> {
    let mut order: Vec<usize> = (0..toc.entries.len()).collect();
    order.sort_by(|a, b| {
        toc.entries[*a]
            .path
            .cmp(&toc.entries[*b].path)
            .then(a.cmp(b))
    });
    let count =
        u32::try_from(order.len()).map_err(|_| Error::invalid("too many TOC entries to index"))?;
    let mut records = Vec::new();
    let mut offsets = Vec::with_capacity(order.len());
    let base = HEADER + 8 * u64::from(count);
    for i in order {
        offsets.push(base + records.len() as u64);
        let e = &toc.entries[i];
        let json = serde_json::to_vec(e)
            .map_err(|err| Error::invalid(format!("encoding TOC index: {err}")))?;
        records.extend_from_slice(&(e.path.len() as u32).to_le_bytes());
        records.extend_from_slice(e.path.as_bytes());
        records.extend_from_slice(&(i as u32).to_le_bytes());
        records.extend_from_slice(&(json.len() as u32).to_le_bytes());
        records.extend_from_slice(&json);
    }
    let mut out = Vec::with_capacity(base as usize + records.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    for o in offsets {
        out.extend_from_slice(&o.to_le_bytes());
    }
    out.extend_from_slice(&records);
    Ok(out)
}

/// Reads an index through [`ReadAt`].
pub struct IndexReader<R> {
    inner: R,
    count: u32,
    what: String,
}

impl<R> std::fmt::Debug for IndexReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexReader")
            .field("what", &self.what)
            .field("count", &self.count)
            .finish()
    }
}

impl<R: ReadAt> IndexReader<R> {
    /// Opens an index; `what` names it in errors.
    pub fn open(inner: R, what: &str) -> Result<Self> {
        let mut h = [0u8; HEADER as usize];
        let mut r = IndexReader {
            inner,
            count: 0,
            what: what.to_owned(),
        };
        r.exact(&mut h, 0)?;
        if &h[..8] != MAGIC {
            return Err(r.corrupt("bad magic"));
        }
        let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
        if version != VERSION {
            return Err(r.corrupt(&format!("version {version} is not supported")));
        }
        r.count = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
        Ok(r)
    }

    fn corrupt(&self, reason: &str) -> Error {
        Error::corrupt(format!("TOC index of {}", self.what), reason)
    }

    fn exact(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut got = 0;
        while got < buf.len() {
            let n = self
                .inner
                .read_at(&mut buf[got..], offset + got as u64)
                .map_err(|e| {
                    Error::corrupt(format!("TOC index of {}", self.what), e.to_string())
                })?;
            if n == 0 {
                return Err(self.corrupt("ends early"));
            }
            got += n;
        }
        Ok(())
    }

    fn u32_at(&self, offset: u64) -> Result<u32> {
        let mut b = [0u8; 4];
        self.exact(&mut b, offset)?;
        Ok(u32::from_le_bytes(b))
    }

    fn record_offset(&self, i: u32) -> Result<u64> {
        let mut b = [0u8; 8];
        self.exact(&mut b, HEADER + 8 * u64::from(i))?;
        Ok(u64::from_le_bytes(b))
    }

    fn path_of(&self, i: u32) -> Result<(String, u64)> {
        let off = self.record_offset(i)?;
        let len = self.u32_at(off)? as usize;
        if len > MAX_RECORD {
            return Err(self.corrupt("record too long"));
        }
        let mut p = vec![0u8; len];
        self.exact(&mut p, off + 4)?;
        let path = String::from_utf8(p).map_err(|_| self.corrupt("path is not UTF-8"))?;
        Ok((path, off + 4 + len as u64))
    }

    fn record(&self, after_path: u64) -> Result<(u32, TocEntry)> {
        let pos = self.u32_at(after_path)?;
        let len = self.u32_at(after_path + 4)? as usize;
        if len > MAX_RECORD {
            return Err(self.corrupt("record too long"));
        }
        let mut j = vec![0u8; len];
        self.exact(&mut j, after_path + 8)?;
        let e: TocEntry = serde_json::from_slice(&j).map_err(|e| self.corrupt(&e.to_string()))?;
        Ok((pos, e))
    }

    /// Every entry for `path`, as `(position in the TOC, entry)`, in TOC order.
    pub fn lookup(&self, path: &str) -> Result<Vec<(u32, TocEntry)>> {
        // First record whose path is >= `path`.
        let (mut lo, mut hi) = (0u32, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.path_of(mid)?.0.as_str() < path {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let mut out = Vec::new();
        let mut i = lo;
        while i < self.count {
            let (p, after) = self.path_of(i)?;
            if p != path {
                break;
            }
            out.push(self.record(after)?);
            i += 1;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::toc::EntryKind;

    #[test]
    fn finds_every_entry_of_a_path() -> Result<()> {
        let mut toc = Toc::default();
        for (p, k) in [
            ("b", EntryKind::File),
            ("a", EntryKind::Dir),
            ("a/x", EntryKind::File),
            ("b", EntryKind::Whiteout),
            ("c", EntryKind::File),
        ] {
            toc.entries.push(TocEntry::new(p, k, 0o644));
        }
        let idx = IndexReader::open(build(&toc)?, "t")?;
        let b = idx.lookup("b")?;
        assert_eq!(
            b.iter().map(|(i, e)| (*i, e.kind)).collect::<Vec<_>>(),
            vec![(0, EntryKind::File), (3, EntryKind::Whiteout)]
        );
        assert_eq!(idx.lookup("a/x")?.len(), 1);
        assert!(idx.lookup("zz")?.is_empty());
        assert!(idx.lookup("")?.is_empty());
        assert!(IndexReader::open(b"junk".to_vec(), "t").is_err());
        let mut cut = build(&toc)?;
        cut.truncate(40);
        assert!(
            IndexReader::open(cut, "t")
                .and_then(|r| r.lookup("c"))
                .is_err()
        );
        Ok(())
    }
}
