//! A streaming tar reader that owns every decision a hostile archive could exploit.
//!
//! The `tar` crate decodes header fields; this module walks the archive itself so that it can
//! bound extension headers (PAX, GNU long names) before reading them, reject PAX/ustar size
//! disagreements (tar smuggling), decode GNU sparse maps, report exact stream offsets and
//! tell a truncated archive from a finished one. Memory use is bounded by
//! [`TarLimits::max_extension_bytes`] whatever the archive.
//!
//! The end of an archive is exact, as in Go's archive/tar: two zero blocks end it (or the
//! stream ending at an entry boundary); a lone zero block followed by a header, or anything
//! but zeros after the end-of-archive marker, is refused, because such bytes would be kept in
//! the stored layer while no reader of its TOC sees them.

use std::collections::BTreeMap;
use std::io::{self, Read};

use tar::{EntryType, Header};

use crate::error::{Error, Result};

mod fields;
#[cfg(test)]
mod tests;
mod trailer;

pub use fields::map_read_error;
use fields::{
    check_checksum, num, num_field, pad, parse_pax, parse_pax_time, parse_pax_u64, trim_nul,
    truncated, utf8,
};

const BLOCK: u64 = 512;

/// Bounds the reader enforces.
#[derive(Debug, Clone, Copy)]
pub struct TarLimits {
    /// Largest single PAX extended header or GNU long name/link payload, and largest GNU
    /// sparse map, in bytes (default 1 MiB).
    pub max_header_bytes: u64,
    /// Most bytes of extension headers (PAX, PAX global, GNU long name and long link) before
    /// one entry, all of them together: each counts its 512-byte header block plus its payload
    /// padded to a block (default 1 MiB). A chain of extension headers cannot accumulate past
    /// it.
    pub max_extension_bytes: u64,
    /// Most PAX records (keys) one entry's PAX headers may carry together (default 1,024).
    pub max_pax_records: u64,
}

impl Default for TarLimits {
    fn default() -> Self {
        TarLimits {
            max_header_bytes: 1 << 20,
            max_extension_bytes: 1 << 20,
            max_pax_records: 1024,
        }
    }
}

/// The kind of a tar entry, as far as layers care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawKind {
    /// Regular file (including GNU sparse files).
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Hard link to an earlier entry.
    Hardlink,
    /// Character device.
    Char,
    /// Block device.
    Block,
    /// Named pipe.
    Fifo,
}

/// One archive entry with extension headers applied.
#[derive(Debug, Clone)]
pub struct RawEntry {
    /// Offset of the entry's first header block (its first extension header, if any).
    pub header_offset: u64,
    /// Offset of the entry's data.
    pub data_offset: u64,
    /// The entry name as written (after PAX / GNU long-name overrides), not yet normalised.
    pub name: String,
    /// Link target for symlinks and hardlinks.
    pub link: Option<String>,
    /// Entry kind.
    pub kind: RawKind,
    /// Permission bits and set-id/sticky bits (`0o7777`).
    pub mode: u32,
    /// Owner uid.
    pub uid: u64,
    /// Owner gid.
    pub gid: u64,
    /// Owner user name, if recorded.
    pub uname: Option<String>,
    /// Owner group name, if recorded.
    pub gname: Option<String>,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Sub-second part of the modification time (from PAX), nanoseconds.
    pub mtime_nsec: u32,
    /// Device numbers for character and block devices.
    pub dev: Option<(u32, u32)>,
    /// Logical size of the file (the real size for sparse files).
    pub size: u64,
    /// Bytes of data stored in the archive for this entry (before padding).
    pub stored: u64,
    /// For GNU sparse files: the `(offset, length)` segments of the logical file that are
    /// stored, in order; the rest reads as zeros.
    pub sparse: Option<Vec<(u64, u64)>>,
    /// Extended attributes (from `SCHILY.xattr.*` PAX records).
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

#[cfg(test)]
impl RawEntry {
    /// A bare entry for tests: `name` of `kind`, mode 0644, everything else zero or empty.
    pub(crate) fn bare(name: &str, kind: RawKind, link: Option<&str>) -> RawEntry {
        RawEntry {
            header_offset: 0,
            data_offset: 0,
            name: name.into(),
            link: link.map(String::from),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            uname: None,
            gname: None,
            mtime: 0,
            mtime_nsec: 0,
            dev: None,
            size: 0,
            stored: 0,
            sparse: None,
            xattrs: BTreeMap::new(),
        }
    }
}

/// Reads entries from an uncompressed tar stream.
#[derive(Debug)]
pub struct TarReader<R> {
    inner: R,
    pos: u64,
    /// Data bytes of the current entry not yet consumed.
    remaining: u64,
    /// Padding after the current entry's data.
    padding: u64,
    limits: TarLimits,
    finished: bool,
}

impl<R: Read> TarReader<R> {
    /// A reader over `inner`, positioned at offset 0.
    pub fn new(inner: R, limits: TarLimits) -> Self {
        TarReader {
            inner,
            pos: 0,
            remaining: 0,
            padding: 0,
            limits,
            finished: false,
        }
    }

    /// Current offset in the stream.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Gives back the underlying reader (positioned wherever reading stopped).
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn read_exact_or_eof(&mut self, buf: &mut [u8]) -> Result<bool> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(map_read_error(e)),
            }
        }
        self.pos += got as u64;
        if got == 0 {
            return Ok(false);
        }
        if got < buf.len() {
            return Err(truncated(self.pos));
        }
        Ok(true)
    }

    fn skip(&mut self, mut n: u64) -> Result<()> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let want = n.min(buf.len() as u64) as usize;
            let got = match self.inner.read(&mut buf[..want]) {
                Ok(0) => return Err(truncated(self.pos)),
                Ok(g) => g,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(map_read_error(e)),
            };
            self.pos += got as u64;
            n -= got as u64;
        }
        Ok(())
    }

    fn read_block(&mut self) -> Result<Option<[u8; 512]>> {
        let mut b = [0u8; 512];
        if self.read_exact_or_eof(&mut b)? {
            Ok(Some(b))
        } else {
            Ok(None)
        }
    }

    fn read_payload(&mut self, size: u64, what: &str) -> Result<Vec<u8>> {
        if size > self.limits.max_header_bytes {
            return Err(Error::bad_archive(format!(
                "{what} header at byte {} is {size} bytes; the maximum is {}",
                self.pos, self.limits.max_header_bytes
            )));
        }
        let mut v = vec![0u8; size as usize];
        if size > 0 && !self.read_exact_or_eof(&mut v)? {
            return Err(truncated(self.pos));
        }
        self.skip(pad(size))?;
        Ok(v)
    }

    /// Skips whatever is left of the current entry's data, then its padding. The stream may
    /// end right after the data: Go's writer (umoci, for one) leaves out the padding and the
    /// end-of-archive blocks of a layer's last entry. Returns false at such an end.
    fn finish_entry(&mut self) -> Result<bool> {
        let data = self.remaining;
        self.remaining = 0;
        self.skip(data)?;
        let mut pad = [0u8; 512];
        let want = self.padding as usize;
        self.padding = 0;
        if want == 0 {
            return Ok(true);
        }
        let mut got = 0;
        while got < want {
            match self.inner.read(&mut pad[got..want]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(map_read_error(e)),
            }
        }
        self.pos += got as u64;
        if got == 0 {
            return Ok(false);
        }
        if got < want {
            return Err(truncated(self.pos));
        }
        Ok(true)
    }

    /// Reads up to `buf.len()` bytes of the current entry's stored data; 0 at its end.
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(self.remaining) as usize;
        loop {
            match self.inner.read(&mut buf[..want]) {
                Ok(0) => return Err(truncated(self.pos)),
                Ok(n) => {
                    self.pos += n as u64;
                    self.remaining -= n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(map_read_error(e)),
            }
        }
    }

    /// The next entry, or `None` at the end-of-archive marker. Data of the previous entry that
    /// was not read is skipped. An empty stream is an empty archive.
    pub fn next_entry(&mut self) -> Result<Option<RawEntry>> {
        if self.finished {
            return Ok(None);
        }
        if !self.finish_entry()? {
            self.finished = true;
            return Ok(None);
        }

        let mut pax: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut header_offset = self.pos;
        let mut in_extension = false;
        // Bytes of extension headers and PAX records so far, for this entry.
        let mut extension_bytes = 0u64;
        let mut pax_records = 0u64;
        let mut pax_headers = 0u32;

        loop {
            let block_at = self.pos;
            let Some(block) = self.read_block()? else {
                if in_extension {
                    return Err(truncated(self.pos));
                }
                // The stream ends at an entry boundary: an empty stream is an empty layer, and
                // writers that leave out the end-of-archive blocks are common. (A download cut
                // at a boundary is caught by the digest, which covers every byte.)
                self.finished = true;
                return Ok(None);
            };
            if block.iter().all(|b| *b == 0) {
                if in_extension {
                    return Err(Error::bad_archive(format!(
                        "extension header at byte {header_offset} is followed by the end-of-archive marker"
                    )));
                }
                self.finished = true;
                self.end_of_archive(block_at)?;
                return Ok(None);
            }
            let header = Header::from_byte_slice(&block);
            check_checksum(header, block_at)?;
            let size = header.entry_size().map_err(|e| {
                Error::bad_archive(format!("bad size field in header at byte {block_at}: {e}"))
            })?;
            let entry_type = header.entry_type();
            if matches!(
                entry_type,
                EntryType::XHeader
                    | EntryType::XGlobalHeader
                    | EntryType::GNULongName
                    | EntryType::GNULongLink
            ) {
                extension_bytes = extension_bytes
                    .saturating_add(BLOCK)
                    .saturating_add(size.saturating_add(pad(size)));
                if size <= self.limits.max_header_bytes
                    && extension_bytes > self.limits.max_extension_bytes
                {
                    return Err(Error::bad_archive(format!(
                        "extension headers from byte {header_offset} to {} add up to {extension_bytes} bytes before one entry; the maximum is {}",
                        self.pos.saturating_add(size).saturating_add(pad(size)),
                        self.limits.max_extension_bytes
                    )));
                }
            }
            match entry_type {
                EntryType::XHeader => {
                    pax_headers += 1;
                    if pax_headers > 1 {
                        // Readers disagree: some merge the records, some use the last header.
                        return Err(Error::bad_archive(format!(
                            "a second PAX extended header at byte {block_at} for the entry whose headers start at byte {header_offset}"
                        )));
                    }
                    let payload = self.read_payload(size, "PAX extended")?;
                    parse_pax(
                        &payload,
                        &mut pax,
                        block_at,
                        &mut pax_records,
                        self.limits.max_pax_records,
                    )?;
                    in_extension = true;
                    continue;
                }
                EntryType::XGlobalHeader => {
                    // Global records (comments from `git archive`, for example) carry nothing
                    // layers use; they are bounded and skipped.
                    self.read_payload(size, "PAX global")?;
                    if !in_extension {
                        header_offset = self.pos;
                    }
                    continue;
                }
                EntryType::GNULongName => {
                    long_name = Some(trim_nul(self.read_payload(size, "GNU long name")?));
                    in_extension = true;
                    continue;
                }
                EntryType::GNULongLink => {
                    long_link = Some(trim_nul(self.read_payload(size, "GNU long link")?));
                    in_extension = true;
                    continue;
                }
                _ => {}
            }
            return self
                .finish_header(header, header_offset, size, pax, long_name, long_link)
                .map(Some);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_header(
        &mut self,
        header: &Header,
        header_offset: u64,
        size_field: u64,
        pax: BTreeMap<String, Vec<u8>>,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
    ) -> Result<RawEntry> {
        if (pax.contains_key("path") && long_name.is_some())
            || (pax.contains_key("linkpath") && long_link.is_some())
        {
            // Readers disagree on which of the two names counts.
            return Err(Error::bad_archive(format!(
                "the entry at byte {header_offset} has both a GNU long name and a PAX path (or long link and PAX linkpath)"
            )));
        }
        check_gnu_times(header, header_offset)?;
        let name_bytes = match (pax.get("path"), &long_name) {
            (Some(p), _) => p.clone(),
            (None, Some(l)) => l.clone(),
            (None, None) => header.path_bytes().into_owned(),
        };
        let display = String::from_utf8_lossy(&name_bytes).into_owned();
        let name = utf8("path", &name_bytes, &display)?;

        if pax.keys().any(|k| k.starts_with("GNU.sparse.")) {
            return Err(Error::bad_entry(
                &name,
                "PAX-format sparse files (GNU.sparse.*) are not supported; write sparse files in GNU format",
            ));
        }

        let entry_type = header.entry_type();
        let kind = match entry_type {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => RawKind::File,
            EntryType::Directory => RawKind::Dir,
            EntryType::Symlink => RawKind::Symlink,
            EntryType::Link => RawKind::Hardlink,
            EntryType::Char => RawKind::Char,
            EntryType::Block => RawKind::Block,
            EntryType::Fifo => RawKind::Fifo,
            other => {
                return Err(Error::bad_entry(
                    &name,
                    format!("unsupported entry type {:?}", other.as_byte() as char),
                ));
            }
        };
        // Tar smuggling: a PAX size that disagrees with a non-zero ustar size makes readers
        // see different archives. Refuse it.
        let mut stored = size_field;
        if let Some(v) = pax.get("size") {
            let pax_size = parse_pax_u64(v)
                .ok_or_else(|| Error::bad_entry(&name, "PAX size record is not a number"))?;
            if size_field != 0 && size_field != pax_size {
                return Err(Error::bad_entry(
                    &name,
                    format!(
                        "PAX size {pax_size} disagrees with the header size {size_field} (tar smuggling)"
                    ),
                ));
            }
            stored = pax_size;
        }

        // Entries that are only a header carry no data; a size on one makes readers disagree
        // on where the next header is (Go's reader takes the next block, others skip the size).
        if stored != 0
            && matches!(
                kind,
                RawKind::Dir
                    | RawKind::Symlink
                    | RawKind::Hardlink
                    | RawKind::Char
                    | RawKind::Block
                    | RawKind::Fifo
            )
        {
            return Err(Error::bad_entry(
                &name,
                format!(
                    "a {kind:?} entry declares {stored} bytes of data; such entries are only a header (tar smuggling)"
                ),
            ));
        }
        // Old-style archives (type NUL) mark directories by a trailing slash; a trailing slash
        // on anything else that is not a directory, a type '0' file included, is malformed
        // (readers would disagree on whether it is a file or a directory).
        let old_style = header.as_old().linkflag[0] == 0;
        let kind = match kind {
            RawKind::Dir => kind,
            _ if !name.ends_with('/') => kind,
            RawKind::File if old_style && stored == 0 => RawKind::Dir,
            RawKind::File if entry_type == EntryType::Regular => {
                return Err(Error::bad_entry(
                    &name,
                    format!(
                        "a regular file whose name ends with '/' (type {:?}, {stored} bytes of data): a trailing slash on a non-directory is malformed",
                        header.as_old().linkflag[0] as char
                    ),
                ));
            }
            other => {
                return Err(Error::bad_entry(
                    &name,
                    format!(
                        "a {other:?} entry's name ends with '/' (a trailing slash on a non-directory is malformed)"
                    ),
                ));
            }
        };

        let link = match kind {
            RawKind::Symlink | RawKind::Hardlink => {
                let bytes = match (pax.get("linkpath"), &long_link) {
                    (Some(p), _) => p.clone(),
                    (None, Some(l)) => l.clone(),
                    (None, None) => header
                        .link_name_bytes()
                        .map(|c| c.into_owned())
                        .unwrap_or_default(),
                };
                if bytes.is_empty() {
                    return Err(Error::bad_entry(&name, "link has an empty target"));
                }
                Some(utf8("link target", &bytes, &name)?)
            }
            _ => None,
        };

        let old = header.as_old();
        let mode =
            num_field(&old.mode, header.mode().map(u64::from), "mode", &name)? as u32 & 0o7777;
        let uid = match pax.get("uid") {
            Some(v) => parse_pax_u64(v).ok_or_else(|| Error::bad_entry(&name, "bad PAX uid"))?,
            None => num_field(&old.uid, header.uid(), "uid", &name)?,
        };
        let gid = match pax.get("gid") {
            Some(v) => parse_pax_u64(v).ok_or_else(|| Error::bad_entry(&name, "bad PAX gid"))?,
            None => num_field(&old.gid, header.gid(), "gid", &name)?,
        };
        let (mtime, mtime_nsec) = match pax.get("mtime") {
            Some(v) => parse_pax_time(v).ok_or_else(|| Error::bad_entry(&name, "bad PAX mtime"))?,
            None => (
                i64::try_from(num_field(&old.mtime, header.mtime(), "mtime", &name)?)
                    .unwrap_or(i64::MAX),
                0,
            ),
        };
        let uname = match pax.get("uname") {
            Some(v) => Some(utf8("uname", v, &name)?),
            None => header
                .username_bytes()
                .filter(|b| !b.is_empty())
                .map(|b| String::from_utf8_lossy(b).into_owned()),
        };
        let gname = match pax.get("gname") {
            Some(v) => Some(utf8("gname", v, &name)?),
            None => header
                .groupname_bytes()
                .filter(|b| !b.is_empty())
                .map(|b| String::from_utf8_lossy(b).into_owned()),
        };
        let dev = match kind {
            RawKind::Char | RawKind::Block => {
                let major = num(header.device_major(), "device major", &name)?.unwrap_or(0);
                let minor = num(header.device_minor(), "device minor", &name)?.unwrap_or(0);
                Some((major, minor))
            }
            _ => None,
        };
        let mut xattrs = BTreeMap::new();
        for (k, v) in &pax {
            if let Some(x) = k.strip_prefix("SCHILY.xattr.") {
                xattrs.insert(x.to_owned(), v.clone());
            }
        }

        let (size, sparse) = if entry_type == EntryType::GNUSparse {
            let (real, map) = self.read_gnu_sparse(header, &name, stored)?;
            (real, Some(map))
        } else {
            (stored, None)
        };
        let data_offset = self.pos;
        self.remaining = stored;
        self.padding = pad(stored);
        Ok(RawEntry {
            header_offset,
            data_offset,
            name,
            link,
            kind,
            mode,
            uid,
            gid,
            uname,
            gname,
            mtime,
            mtime_nsec,
            dev,
            size: if kind == RawKind::File { size } else { 0 },
            stored,
            sparse,
            xattrs,
        })
    }

    fn read_gnu_sparse(
        &mut self,
        header: &Header,
        name: &str,
        stored: u64,
    ) -> Result<(u64, Vec<(u64, u64)>)> {
        let gnu = header
            .as_gnu()
            .ok_or_else(|| Error::bad_entry(name, "sparse entry without a GNU header"))?;
        let real = num(gnu.real_size(), "sparse real size", name)?;
        let mut map = Vec::new();
        let mut push = |s: &tar::GnuSparseHeader| -> Result<()> {
            if s.is_empty() {
                return Ok(());
            }
            let off = num(s.offset(), "sparse offset", name)?;
            let len = num(s.length(), "sparse length", name)?;
            map.push((off, len));
            Ok(())
        };
        for s in &gnu.sparse {
            push(s)?;
        }
        let mut extended = gnu.is_extended();
        let mut blocks = 0u64;
        while extended {
            blocks += 1;
            if blocks * BLOCK > self.limits.max_header_bytes {
                return Err(Error::bad_entry(
                    name,
                    "sparse map is larger than the header limit",
                ));
            }
            let block = self.read_block()?.ok_or_else(|| truncated(self.pos))?;
            let mut ext = tar::GnuExtSparseHeader::new();
            ext.as_mut_bytes().copy_from_slice(&block);
            for s in ext.sparse() {
                push(s)?;
            }
            extended = ext.is_extended();
        }
        // The map must be ordered, inside the file, and account for exactly the stored bytes.
        let mut end = 0u64;
        let mut total = 0u64;
        for &(off, len) in &map {
            let stop = off
                .checked_add(len)
                .ok_or_else(|| Error::bad_entry(name, "sparse map overflows"))?;
            if off < end || stop > real {
                return Err(Error::bad_entry(
                    name,
                    "sparse map is out of order or beyond the file size",
                ));
            }
            end = stop;
            total += len;
        }
        if total != stored {
            return Err(Error::bad_entry(
                name,
                format!("sparse map covers {total} bytes but {stored} are stored"),
            ));
        }
        Ok((real, map))
    }
}

/// Refuses a GNU header whose access or change time field holds anything but a number: Go's
/// reader takes such text as a ustar name prefix (its 1.7 writer put one there), other readers
/// ignore it, so the entry's name would differ between readers.
fn check_gnu_times(header: &Header, at: u64) -> Result<()> {
    let Some(gnu) = header.as_gnu() else {
        return Ok(());
    };
    for (what, field) in [("access", &gnu.atime[..]), ("change", &gnu.ctime[..])] {
        let numeric = field.first().is_some_and(|b| b & 0x80 != 0)
            || field.iter().all(|b| matches!(b, b'0'..=b'7' | b' ' | 0));
        if !numeric {
            return Err(Error::bad_archive(format!(
                "the GNU header at byte {at} has text in its {what} time field"
            )));
        }
    }
    Ok(())
}
