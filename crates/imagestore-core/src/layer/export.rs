//! Export: writing a merged view, or the changes between two views, as a tar stream.
//!
//! The plan comes from TOCs alone; file data is read lazily, only for the entries emitted, with
//! one forward-only reader per layer. Order of the output:
//! 1. directories, whiteouts and opaque markers, in path order (parents first);
//! 2. everything else, grouped by the layer holding its data and in that layer's stream order,
//!    so each layer is read once from front to back; the second and later paths of a
//!    hardlink group follow their first path as hardlinks.
//!
//! Sparse files are written as GNU sparse entries (their map, then only the stored data), so an
//! export costs what the layer stores, not the logical size; sparse files recorded before the
//! sparse digest form (see `docs/decisions/0012-sparse-files.md`) are written with their holes
//! filled. File data is checked against the TOC digest as it is copied.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Read, Seek, SeekFrom, Write};

use tar::{EntryType, Header};

use crate::error::{Error, Result};
use crate::layer::chain::Change;
use crate::layer::compose::{EntryRef, MergedView};
use crate::layer::content::{Checked, ContentPass, ContentSource};
use crate::layer::filter::FilterSpec;
use crate::layer::path;
use crate::layer::sparse::{Pieces, gnu_sparse_header};
use crate::layer::toc::{Compression, EntryKind, TocEntry};
use crate::layer::validate::{OPAQUE_MARKER, WHITEOUT_PREFIX};

/// A forward-only reader over the uncompressed tar stream of one layer.
pub trait LayerReader: Read + Send {
    /// Moves forward to `offset` of the uncompressed stream. Moving backwards is an error.
    fn skip_to(&mut self, offset: u64) -> io::Result<()>;
}

/// Opens the layers of a view for reading.
pub trait LayerSource: Send + Sync {
    /// A reader over layer `index` (an index into the view's layers), at offset 0.
    fn open(&self, index: usize) -> Result<Box<dyn LayerReader>>;
}

/// A [`LayerReader`] over a seekable plain tar.
#[derive(Debug)]
pub struct SeekingReader<F> {
    inner: F,
    pos: u64,
}

impl<F: Read + Seek> SeekingReader<F> {
    /// Wraps a reader positioned at offset 0.
    pub fn new(inner: F) -> Self {
        SeekingReader { inner, pos: 0 }
    }
}

impl<F: Read + Seek + Send> Read for SeekingReader<F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<F: Read + Seek + Send> LayerReader for SeekingReader<F> {
    fn skip_to(&mut self, offset: u64) -> io::Result<()> {
        if offset != self.pos {
            self.inner.seek(SeekFrom::Start(offset))?;
            self.pos = offset;
        }
        Ok(())
    }
}

/// A [`LayerReader`] that skips by reading (for compressed layers).
#[derive(Debug)]
pub struct SkippingReader<R> {
    inner: R,
    pos: u64,
}

impl<R: Read + Send> SkippingReader<R> {
    /// Wraps a reader positioned at offset 0.
    pub fn new(inner: R) -> Self {
        SkippingReader { inner, pos: 0 }
    }
}

impl<R: Read + Send> Read for SkippingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read + Send> LayerReader for SkippingReader<R> {
    fn skip_to(&mut self, offset: u64) -> io::Result<()> {
        if offset < self.pos {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot move backwards in a compressed layer",
            ));
        }
        let want = offset - self.pos;
        let got = io::copy(&mut (&mut self.inner).take(want), &mut io::sink())?;
        self.pos += got;
        if got < want {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "layer ends early",
            ));
        }
        Ok(())
    }
}

/// A reader for a stored layer: seeks in plain tars, decompresses others.
pub fn layer_reader<F: Read + Seek + Send + 'static>(
    file: F,
    compression: Compression,
) -> Result<Box<dyn LayerReader>> {
    Ok(match compression {
        Compression::None => Box::new(SeekingReader::new(file)),
        Compression::Gzip => Box::new(SkippingReader::new(flate2::read::MultiGzDecoder::new(
            io::BufReader::new(file),
        ))),
        Compression::Zstd => Box::new(SkippingReader::new(
            zstd::stream::read::Decoder::new(file)
                .map_err(|e| Error::corrupt("layer", format!("zstd: {e}")))?,
        )),
    })
}

/// The PAX record a headers-only export puts on every entry: VIC's `change_type` xattr.
pub const CHANGE_TYPE_RECORD: &str = "SCHILY.xattr.change_type";

/// What an exported entry is to the image it is compared with (VIC's docker change kinds):
/// carried by headers-only exports as the `change_type` xattr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    /// `A`: the path is new (every path of a whole-image export).
    Added,
    /// `C`: the path replaces one the ancestor had.
    Modified,
    /// `D`: a whiteout or an opaque marker: the path (or a directory's lower contents) is gone.
    Deleted,
}

impl ChangeType {
    /// The marker's value: `A`, `C` or `D`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Added => "A",
            ChangeType::Modified => "C",
            ChangeType::Deleted => "D",
        }
    }
}

/// Counts of what an export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Entries written (markers included).
    pub entries: u64,
    /// Bytes of file data written.
    pub data_bytes: u64,
}

struct Writer<'a, W: Write> {
    out: tar::Builder<W>,
    pass: Box<dyn ContentPass + 'a>,
    stats: ExportStats,
    data: bool,
    filter: &'a FilterSpec,
    modified: &'a BTreeSet<String>,
}

fn io_err(e: io::Error) -> Error {
    crate::layer::stream::error_from_io(e, "export")
}

/// Writes a [`Plan`] as a tar to `out`, filtered by `filter`; `data = false` writes headers
/// only (sizes zero), each carrying VIC's `change_type` marker ([`CHANGE_TYPE_RECORD`], a
/// [`ChangeType`]) as VIC's headers-only exports do. File data is read through `source`.
pub fn write_tar<W: Write>(
    out: W,
    plan: &Plan,
    filter: &FilterSpec,
    data: bool,
    source: &dyn ContentSource,
) -> Result<ExportStats> {
    let mut w = Writer {
        out: tar::Builder::new(out),
        pass: source.pass()?,
        stats: ExportStats::default(),
        data,
        filter,
        modified: &plan.modified,
    };
    w.out.mode(tar::HeaderMode::Complete);
    for item in &plan.first {
        match item {
            First::Dir(p, e) => w.dir(p, e.as_deref())?,
            First::Delete(p) => w.marker(p, false)?,
            First::Opaque(p) => w.marker(p, true)?,
        }
    }
    let mut emitted: HashMap<EntryRef, String> = HashMap::new();
    for node in &plan.rest {
        let Some(mapped) = filter.apply(&node.path)? else {
            continue;
        };
        if let Some(first) = emitted.get(&node.content) {
            let mut h = base_header(&node.entry, EntryType::Link);
            let first = first.clone();
            let change = w.change_of(&node.path);
            w.append_link(&mut h, &mapped, &first, &node.entry, change)?;
            continue;
        }
        w.node(&mapped, node)?;
        if node.entry.kind != EntryKind::Symlink {
            emitted.insert(node.content, mapped);
        }
    }
    w.out.finish().map_err(io_err)?;
    Ok(w.stats)
}

/// An item of the first phase of an export or checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum First {
    /// A directory, with its entry (`None` when implied by deeper entries).
    Dir(String, Option<Box<TocEntry>>),
    /// A whiteout for a deleted path.
    Delete(String),
    /// An opaque marker for a directory.
    Opaque(String),
}

/// A non-directory of an export or checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeItem {
    /// Its path.
    pub path: String,
    /// The entry holding its content (shared by every path of a hardlink group).
    pub content: EntryRef,
    /// That entry.
    pub entry: TocEntry,
    /// True when the path is where the content was originally written (not a hardlink).
    pub original: bool,
}

/// The order in which an export or checkout handles its items.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Directories and markers, in path order.
    pub first: Vec<First>,
    /// Everything else, sorted by content entry (so by layer and stream position), with the
    /// path that originally held the content first in its hardlink group.
    pub rest: Vec<NodeItem>,
    /// The paths of a diff that replace a path the ancestor had ([`ChangeType::Modified`]);
    /// every other path is [`ChangeType::Added`].
    pub modified: BTreeSet<String>,
}

impl Plan {
    /// Orders items given in path order.
    pub fn new(first: Vec<First>, mut rest: Vec<NodeItem>) -> Plan {
        rest.sort_by(|a, b| {
            (a.content, !a.original, &a.path).cmp(&(b.content, !b.original, &b.path))
        });
        Plan {
            first,
            rest,
            modified: BTreeSet::new(),
        }
    }

    /// Every node of a merged view (a whole image).
    pub fn of_view(view: &MergedView) -> Plan {
        let (mut first, mut rest) = (Vec::new(), Vec::new());
        for (p, node) in view.iter() {
            match (view.content_of(node), node.content) {
                (Some(e), Some(content)) if e.kind != EntryKind::Dir => rest.push(NodeItem {
                    path: p.to_owned(),
                    content,
                    entry: e.clone(),
                    original: node.source == node.content,
                }),
                (e, _) => first.push(First::Dir(p.to_owned(), e.cloned().map(Box::new))),
            }
        }
        Plan::new(first, rest)
    }

    /// The changes of a diff, with the paths among them the ancestor had (from
    /// [`crate::layer::chain::diff_with_kinds`]).
    pub fn of_diff(changes: Vec<Change>, modified: BTreeSet<String>) -> Plan {
        Plan {
            modified,
            ..Plan::of_changes(changes)
        }
    }

    /// The changes of a diff (every upsert counted as [`ChangeType::Added`]).
    pub fn of_changes(changes: Vec<Change>) -> Plan {
        let (mut first, mut rest) = (Vec::new(), Vec::new());
        for c in changes {
            match c {
                Change::Upsert(p, r) if r.entry.kind == EntryKind::Dir => {
                    first.push(First::Dir(p, Some(Box::new(r.entry))))
                }
                Change::Upsert(p, r) => rest.push(NodeItem {
                    path: p,
                    content: r.content,
                    original: r.source == r.content,
                    entry: r.entry,
                }),
                Change::Delete(p) => first.push(First::Delete(p)),
                Change::Opaque(p) => first.push(First::Opaque(p)),
            }
        }
        Plan::new(first, rest)
    }
}

fn base_header(e: &TocEntry, kind: EntryType) -> Header {
    let mut h = Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(e.mode);
    h.set_uid(e.uid.min(0o7777777));
    h.set_gid(e.gid.min(0o7777777));
    h.set_mtime(e.mtime.max(0) as u64);
    if let Some(u) = &e.uname {
        let _ = h.set_username(u);
    }
    if let Some(g) = &e.gname {
        let _ = h.set_groupname(g);
    }
    h.set_size(0);
    h
}

/// PAX records for what a ustar header cannot hold.
fn pax_records(e: Option<&TocEntry>, name: &str, link: Option<&str>) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    if name.len() > 99 || !name.is_ascii() {
        v.push(("path".to_owned(), name.as_bytes().to_vec()));
    }
    if let Some(l) = link
        && (l.len() > 99 || !l.is_ascii())
    {
        v.push(("linkpath".to_owned(), l.as_bytes().to_vec()));
    }
    if let Some(e) = e {
        if e.uid > 0o7777777 {
            v.push(("uid".to_owned(), e.uid.to_string().into_bytes()));
        }
        if e.gid > 0o7777777 {
            v.push(("gid".to_owned(), e.gid.to_string().into_bytes()));
        }
        if e.mtime_nsec != 0 || e.mtime < 0 {
            v.push((
                "mtime".to_owned(),
                format!("{}.{:09}", e.mtime, e.mtime_nsec).into_bytes(),
            ));
        }
        for (k, val) in &e.xattrs {
            v.push((format!("SCHILY.xattr.{k}"), val.clone()));
        }
    }
    v
}

/// Appends one entry: PAX records for what ustar cannot hold, then the header (name, link and
/// checksum filled in here) and `data` (exactly the header's size).
pub(crate) fn append_entry<W: Write>(
    out: &mut tar::Builder<W>,
    h: &mut Header,
    name: &str,
    e: Option<&TocEntry>,
    link: Option<&str>,
    data: &mut dyn Read,
) -> Result<()> {
    append_marked(out, h, name, e, link, None, data)
}

/// [`append_entry`], with VIC's `change_type` record when `change` is given (replacing any
/// `change_type` xattr of the entry's own).
fn append_marked<W: Write>(
    out: &mut tar::Builder<W>,
    h: &mut Header,
    name: &str,
    e: Option<&TocEntry>,
    link: Option<&str>,
    change: Option<ChangeType>,
    data: &mut dyn Read,
) -> Result<()> {
    let mut records = pax_records(e, name, link);
    if let Some(c) = change {
        records.retain(|(k, _)| k != CHANGE_TYPE_RECORD);
        records.push((
            CHANGE_TYPE_RECORD.to_owned(),
            c.as_str().as_bytes().to_vec(),
        ));
    }
    if !records.is_empty() {
        out.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .map_err(io_err)?;
    }
    set_name_field(&mut h.as_old_mut().name, name);
    if let Some(l) = link {
        set_name_field(&mut h.as_old_mut().linkname, l);
    }
    h.set_cksum();
    out.append(h, data).map_err(io_err)
}

/// The header an entry gets (type, mode, owners, times, device numbers), size zero.
pub(crate) fn header_for(e: &TocEntry) -> Result<Header> {
    let kind = match e.kind {
        EntryKind::File | EntryKind::Whiteout | EntryKind::Opaque => EntryType::Regular,
        EntryKind::Dir => EntryType::Directory,
        EntryKind::Symlink => EntryType::Symlink,
        EntryKind::Hardlink => EntryType::Link,
        EntryKind::Char => EntryType::Char,
        EntryKind::Block => EntryType::Block,
        EntryKind::Fifo => EntryType::Fifo,
    };
    let mut h = base_header(e, kind);
    if let Some((major, minor)) = e.dev {
        h.set_device_major(major).map_err(io_err)?;
        h.set_device_minor(minor).map_err(io_err)?;
    }
    Ok(h)
}

fn set_name_field(field: &mut [u8], name: &str) {
    field.fill(0);
    let b = name.as_bytes();
    let n = b.len().min(field.len());
    field[..n].copy_from_slice(&b[..n]);
}

impl<W: Write> Writer<'_, W> {
    /// The marker path `p` (unmapped) gets: only headers-only exports carry one.
    fn change_of(&self, p: &str) -> Option<ChangeType> {
        if self.data {
            None
        } else if self.modified.contains(p) {
            Some(ChangeType::Modified)
        } else {
            Some(ChangeType::Added)
        }
    }

    fn append(
        &mut self,
        h: &mut Header,
        name: &str,
        e: Option<&TocEntry>,
        link: Option<&str>,
        change: Option<ChangeType>,
        data: &mut dyn Read,
    ) -> Result<()> {
        append_marked(&mut self.out, h, name, e, link, change, data)?;
        self.stats.entries += 1;
        Ok(())
    }

    fn append_link(
        &mut self,
        h: &mut Header,
        name: &str,
        target: &str,
        e: &TocEntry,
        change: Option<ChangeType>,
    ) -> Result<()> {
        self.append(h, name, Some(e), Some(target), change, &mut io::empty())
    }

    fn dir(&mut self, p: &str, e: Option<&TocEntry>) -> Result<()> {
        let Some(mapped) = self.filter.apply(p)? else {
            return Ok(());
        };
        let mut h = match e {
            Some(e) => base_header(e, EntryType::Directory),
            None => {
                let mut d = TocEntry::new(p, EntryKind::Dir, 0o755);
                d.uname = None;
                base_header(&d, EntryType::Directory)
            }
        };
        let change = self.change_of(p);
        self.append(
            &mut h,
            &format!("{mapped}/"),
            e,
            None,
            change,
            &mut io::empty(),
        )
    }

    fn marker(&mut self, p: &str, opaque: bool) -> Result<()> {
        if self.filter.excludes(p) {
            return Ok(());
        }
        let mapped = self.filter.map_path(p)?.unwrap_or_default();
        let name = if opaque {
            path::join(&mapped, OPAQUE_MARKER)
        } else if mapped.is_empty() {
            // The strip path itself was deleted: nothing names it in the output.
            return Ok(());
        } else {
            path::join(
                path::parent(&mapped),
                &format!("{WHITEOUT_PREFIX}{}", path::base(&mapped)),
            )
        };
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(0);
        h.set_mtime(0);
        let change = (!self.data).then_some(ChangeType::Deleted);
        self.append(&mut h, &name, None, None, change, &mut io::empty())
    }

    fn node(&mut self, mapped: &str, node: &NodeItem) -> Result<()> {
        let e = &node.entry;
        let change = self.change_of(&node.path);
        match e.kind {
            EntryKind::File => {
                let mut h = base_header(e, EntryType::Regular);
                let size = if self.data { e.size } else { 0 };
                h.set_size(size);
                if !self.data || e.size == 0 {
                    return self.append(&mut h, mapped, Some(e), None, change, &mut io::empty());
                }
                let (mut body, blocks, pieces) = if e.is_sparse_form() {
                    let (blocks, pieces) = gnu_sparse_header(&mut h, e)?;
                    let inner = self.pass.open_stored(&node.path, node.content, e)?;
                    (Checked::stored(inner, e)?, blocks, pieces)
                } else {
                    let inner = self.pass.open(&node.path, node.content, e)?;
                    (Checked::new(inner, e), Vec::new(), vec![(e.size, true)])
                };
                let appended = append_entry(
                    &mut self.out,
                    &mut h,
                    mapped,
                    Some(e),
                    None,
                    &mut blocks.as_slice().chain(Pieces::new(&mut body, pieces)),
                );
                if let Err(err) = appended {
                    if body.read_failed() {
                        body.finish()?;
                    }
                    return Err(err);
                }
                body.finish()?;
                self.stats.entries += 1;
                self.stats.data_bytes += e.stored_len();
                Ok(())
            }
            EntryKind::Symlink => {
                let mut h = base_header(e, EntryType::Symlink);
                let link = e.link.clone().unwrap_or_default();
                self.append(
                    &mut h,
                    mapped,
                    Some(e),
                    Some(&link),
                    change,
                    &mut io::empty(),
                )
            }
            EntryKind::Char | EntryKind::Block => {
                let kind = if e.kind == EntryKind::Char {
                    EntryType::Char
                } else {
                    EntryType::Block
                };
                let mut h = base_header(e, kind);
                let (major, minor) = e.dev.unwrap_or((0, 0));
                h.set_device_major(major).map_err(io_err)?;
                h.set_device_minor(minor).map_err(io_err)?;
                self.append(&mut h, mapped, Some(e), None, change, &mut io::empty())
            }
            EntryKind::Fifo => {
                let mut h = base_header(e, EntryType::Fifo);
                self.append(&mut h, mapped, Some(e), None, change, &mut io::empty())
            }
            EntryKind::Dir | EntryKind::Hardlink | EntryKind::Whiteout | EntryKind::Opaque => {
                Ok(())
            }
        }
    }
}
