//! The table of contents (TOC) of a layer: one record per tar entry, built during the write
//! pass and stored beside the layer, so that export, diff and checkout know what a layer holds
//! without reading it.
//!
//! Encoding (version 1, documented in `docs/layouts.md`): JSON Lines. The first line is a
//! header object `{"format":"imagestore-toc","version":1,...}`; every further line is one
//! [`TocEntry`]. Decoding is strict and bounded per line, so a damaged TOC is an error, never
//! a panic or an unbounded allocation.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};

/// The TOC format version this build writes and reads.
pub const TOC_VERSION: u32 = 1;
/// The `format` field of the header line.
pub const TOC_FORMAT: &str = "imagestore-toc";
/// Longest line a TOC decoder accepts (an entry with a 4 KiB path, link and xattrs).
pub const MAX_TOC_LINE: usize = 8 << 20;

/// How a layer's bytes were compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// A plain tar.
    #[default]
    None,
    /// gzip (one or more members).
    Gzip,
    /// zstd (one or more frames).
    Zstd,
}

/// The type of a TOC entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link (`link` is the target exactly as written).
    Symlink,
    /// Hard link (`link` is the normalised path of the earlier entry it shares data with).
    Hardlink,
    /// Character device.
    Char,
    /// Block device.
    Block,
    /// Named pipe.
    Fifo,
    /// A `.wh.<name>` whiteout: `path` is the path it deletes from lower layers.
    Whiteout,
    /// A `.wh..wh..opq` marker: `path` is the directory whose lower contents it hides.
    Opaque,
}

impl EntryKind {
    /// True for whiteouts and opaque markers.
    pub fn is_marker(self) -> bool {
        matches!(self, EntryKind::Whiteout | EntryKind::Opaque)
    }
}

mod b64_map {
    use std::collections::BTreeMap;

    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<String, Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let enc: BTreeMap<&str, String> = m
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    base64::engine::general_purpose::STANDARD.encode(v),
                )
            })
            .collect();
        enc.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
        let enc = BTreeMap::<String, String>::deserialize(d)?;
        enc.into_iter()
            .map(|(k, v)| {
                base64::engine::general_purpose::STANDARD
                    .decode(v.as_bytes())
                    .map(|b| (k, b))
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

/// What a file's content digest covers (see `docs/decisions/0012-sparse-files.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DigestForm {
    /// sha256 of the file's logical bytes, holes read as zeros (every plain file, and sparse
    /// files recorded before the sparse form existed).
    #[default]
    Logical,
    /// sha256 of the sparse map and the stored bytes only, so holes cost nothing to check:
    /// see [`crate::layer::content::content_hasher`].
    SparseMap,
}

impl DigestForm {
    fn is_logical(&self) -> bool {
        *self == DigestForm::Logical
    }
}

/// One entry of a layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TocEntry {
    /// Normalised path relative to the root (`etc/passwd`); for markers see [`EntryKind`].
    pub path: String,
    /// Entry type.
    #[serde(rename = "type")]
    pub kind: EntryKind,
    /// Permission, set-id and sticky bits.
    pub mode: u32,
    /// Owner uid.
    pub uid: u64,
    /// Owner gid.
    pub gid: u64,
    /// Owner user name, if the archive recorded one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uname: Option<String>,
    /// Owner group name, if the archive recorded one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gname: Option<String>,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Sub-second part of the modification time, nanoseconds.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub mtime_nsec: u32,
    /// Logical file size (0 for everything but files).
    pub size: u64,
    /// Symlink target or hardlink target path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// Extended attributes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", with = "b64_map")]
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Device numbers `[major, minor]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<(u32, u32)>,
    /// Offset of the entry's first header block in the uncompressed stream.
    pub offset: u64,
    /// Offset of the entry's data in the uncompressed stream.
    pub data_offset: u64,
    /// sha256 of the file's logical contents (files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// GNU sparse map: `[offset, length]` segments stored, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparse: Option<Vec<(u64, u64)>>,
    /// What `digest` covers; absent (logical bytes) for all but sparse files.
    #[serde(default, skip_serializing_if = "DigestForm::is_logical")]
    pub digest_form: DigestForm,
}

impl TocEntry {
    /// A bare entry of `kind` at `path` with mode `mode`, everything else zero.
    pub fn new(path: impl Into<String>, kind: EntryKind, mode: u32) -> Self {
        TocEntry {
            path: path.into(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            uname: None,
            gname: None,
            mtime: 0,
            mtime_nsec: 0,
            size: 0,
            link: None,
            xattrs: BTreeMap::new(),
            dev: None,
            offset: 0,
            data_offset: 0,
            digest: None,
            sparse: None,
            digest_form: DigestForm::Logical,
        }
    }

    /// Bytes of data the entry has in the tar stream (less than `size` for sparse files).
    pub fn stored_len(&self) -> u64 {
        match &self.sparse {
            Some(map) => map.iter().map(|(_, l)| l).sum(),
            None if self.kind == EntryKind::File => self.size,
            None => 0,
        }
    }

    /// True when the entry is a sparse file whose digest covers its map and stored bytes
    /// ([`DigestForm::SparseMap`]): its data can be copied and checked without its holes.
    pub fn is_sparse_form(&self) -> bool {
        self.sparse.is_some() && self.digest_form == DigestForm::SparseMap
    }
}

/// The header line of an encoded TOC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct TocHeader {
    format: String,
    version: u32,
    compression: Compression,
    uncompressed_size: u64,
    entries: u64,
}

/// A layer's table of contents.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Toc {
    /// Compression of the stored layer bytes.
    pub compression: Compression,
    /// Size of the uncompressed tar stream.
    pub uncompressed_size: u64,
    /// Entries in archive order.
    pub entries: Vec<TocEntry>,
}

impl Toc {
    /// Writes the TOC in its JSON Lines form.
    pub fn encode(&self, mut w: impl Write) -> Result<()> {
        let header = TocHeader {
            format: TOC_FORMAT.to_owned(),
            version: TOC_VERSION,
            compression: self.compression,
            uncompressed_size: self.uncompressed_size,
            entries: self.entries.len() as u64,
        };
        let io = |e: std::io::Error| Error::invalid(format!("writing TOC: {e}"));
        serde_json::to_writer(&mut w, &header)
            .map_err(|e| Error::invalid(format!("encoding TOC: {e}")))?;
        w.write_all(b"\n").map_err(io)?;
        for e in &self.entries {
            serde_json::to_writer(&mut w, e)
                .map_err(|e| Error::invalid(format!("encoding TOC: {e}")))?;
            w.write_all(b"\n").map_err(io)?;
        }
        Ok(())
    }

    /// The encoded TOC as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.encode(&mut v)?;
        Ok(v)
    }

    /// Decodes a TOC; `what` names it in errors (`store/id`).
    pub fn decode(r: impl BufRead, what: &str) -> Result<Toc> {
        let corrupt = |reason: String| Error::corrupt(format!("TOC of {what}"), reason);
        let mut lines = BoundedLines {
            inner: r,
            buf: Vec::new(),
        };
        let first = lines
            .next_line()
            .map_err(&corrupt)?
            .ok_or_else(|| corrupt("empty".into()))?;
        let header: TocHeader =
            serde_json::from_slice(first).map_err(|e| corrupt(format!("bad header line: {e}")))?;
        if header.format != TOC_FORMAT {
            return Err(corrupt(format!(
                "format is {:?}, expected {TOC_FORMAT:?}",
                header.format
            )));
        }
        if header.version != TOC_VERSION {
            return Err(corrupt(format!(
                "version {} is not supported by this build (it reads version {TOC_VERSION})",
                header.version
            )));
        }
        let mut entries = Vec::with_capacity(header.entries.min(1 << 16) as usize);
        while let Some(line) = lines.next_line().map_err(&corrupt)? {
            let e: TocEntry = serde_json::from_slice(line)
                .map_err(|e| corrupt(format!("bad entry on line {}: {e}", entries.len() + 2)))?;
            entries.push(e);
        }
        if entries.len() as u64 != header.entries {
            return Err(corrupt(format!(
                "header announces {} entries, found {}",
                header.entries,
                entries.len()
            )));
        }
        Ok(Toc {
            compression: header.compression,
            uncompressed_size: header.uncompressed_size,
            entries,
        })
    }

    /// Decodes a TOC held in memory.
    pub fn from_bytes(bytes: &[u8], what: &str) -> Result<Toc> {
        Self::decode(bytes, what)
    }
}

struct BoundedLines<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: BufRead> BoundedLines<R> {
    fn next_line(&mut self) -> std::result::Result<Option<&[u8]>, String> {
        self.buf.clear();
        loop {
            let avail = self.inner.fill_buf().map_err(|e| e.to_string())?;
            if avail.is_empty() {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err("last line is not terminated".into());
            }
            let (take, done) = match avail.iter().position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None => (avail.len(), false),
            };
            if self.buf.len() + take > MAX_TOC_LINE {
                return Err(format!("a line is longer than {MAX_TOC_LINE} bytes"));
            }
            self.buf.extend_from_slice(&avail[..take]);
            self.inner.consume(take);
            if done {
                self.buf.pop();
                return Ok(Some(&self.buf));
            }
        }
    }
}

/// Base64 (standard alphabet) of `bytes`, as used in TOC xattrs.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Toc {
        let mut f = TocEntry::new("etc/passwd", EntryKind::File, 0o644);
        f.size = 3;
        f.digest = Some(Digest::sha256_of(b"abc"));
        f.xattrs.insert("user.bin".into(), vec![0, 1, 255]);
        f.offset = 512;
        f.data_offset = 1024;
        let mut l = TocEntry::new("dev/fd", EntryKind::Symlink, 0o777);
        l.link = Some("/proc/self/fd".into());
        let mut c = TocEntry::new("dev/null", EntryKind::Char, 0o666);
        c.dev = Some((1, 3));
        Toc {
            compression: Compression::Gzip,
            uncompressed_size: 4096,
            entries: vec![
                TocEntry::new("etc", EntryKind::Dir, 0o755),
                f,
                l,
                c,
                TocEntry::new("x", EntryKind::Whiteout, 0),
            ],
        }
    }

    #[test]
    fn round_trips() -> Result<()> {
        let toc = sample();
        let bytes = toc.to_bytes()?;
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.starts_with("{\"format\":\"imagestore-toc\",\"version\":1"));
        assert!(text.contains("\"type\":\"whiteout\""));
        assert_eq!(Toc::from_bytes(&bytes, "t")?, toc);
        Ok(())
    }

    #[test]
    fn damaged_tocs_are_errors() -> Result<()> {
        let bytes = sample().to_bytes()?;
        for cut in [0, 10, bytes.len() - 1] {
            assert!(
                matches!(
                    Toc::from_bytes(&bytes[..cut], "t"),
                    Err(Error::Corrupt { .. })
                ),
                "cut {cut}"
            );
        }
        let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
        lines.remove(2);
        let dropped = lines.join(&b'\n');
        assert!(matches!(
            Toc::from_bytes(&dropped, "t"),
            Err(Error::Corrupt { .. })
        ));
        let v2 = String::from_utf8_lossy(&bytes).replacen("\"version\":1", "\"version\":2", 1);
        assert!(matches!(
            Toc::from_bytes(v2.as_bytes(), "t"),
            Err(Error::Corrupt { .. })
        ));
        Ok(())
    }
}
