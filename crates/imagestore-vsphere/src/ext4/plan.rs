//! Applying a layer to the open filesystem: removals, creations, hardlinks, then file data,
//! then the changed directories written back once ([`super::dirs`]).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::sync::Arc;

use imagestore_core::layer::chain::{ChainView, Change, LayerToc, MemoryToc, diff};
use imagestore_core::layer::compose::{EntryRef, MergedView};
use imagestore_core::layer::content::{Checked, ContentSource};
use imagestore_core::layer::export::layer_reader;
use imagestore_core::layer::path;
use imagestore_core::layer::toc::{EntryKind, Toc, TocEntry};
use imagestore_core::{Error, Result};

use super::dirs::{Dirs, ROOT};
use super::fs::{Fs, MkfsParams, fail};
use super::inode::{Inode, dirent_type, type_bits};
use super::{LABEL, LayerData, Streamed, disk_mtime, skeleton};
use crate::error::IoContext;
use crate::fsread::FsContent;
use crate::vmdk::overlay::Overlay;

/// What an apply did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Changes applied.
    pub changes: u64,
    /// Inodes made.
    pub inodes: u64,
    /// Directories written back.
    pub directories: u64,
    /// File bytes written.
    pub bytes: u64,
}

/// What an apply did, and the inodes of the paths it wrote.
#[derive(Debug, Default)]
pub struct Applied {
    /// Counts.
    pub stats: ApplyStats,
    /// The inode of every path the apply made, linked or restamped.
    pub inodes: HashMap<String, u32>,
}

/// Makes the scratch filesystem on `overlay` (a base disk of `size` bytes): an empty ext4
/// labelled `containerfs` with VIC's [`skeleton`]. Returns the disk, every superblock
/// written.
pub fn make_scratch(overlay: Overlay) -> Result<Overlay> {
    let size = overlay.size();
    let mut fs = Fs::create(
        overlay,
        &MkfsParams {
            size,
            label: LABEL.to_owned(),
        },
    )?;
    // lost+found exists already: apply the rest on a view where it is the lower image.
    let lf = Toc {
        entries: vec![TocEntry::new("lost+found", EntryKind::Dir, 0o700)],
        ..Toc::default()
    };
    apply(
        &mut fs,
        &[Arc::new(lf)],
        Arc::new(skeleton()),
        LayerData::None,
        None,
    )?;
    fs.close(true)
}

/// A file whose data is written after the structure.
struct Fill {
    ino: u32,
    content: EntryRef,
}

/// The state of one apply.
struct Writer<'a> {
    fs: &'a mut Fs,
    dirs: Dirs,
    fills: Vec<Fill>,
    stats: ApplyStats,
    /// The paths made, linked or restamped, and their inodes.
    inodes: HashMap<String, u32>,
    /// Files of the layer already in the filesystem, and which of them are linked.
    streamed: Option<&'a Streamed>,
    taken: HashSet<u32>,
    top: u32,
}

fn name_of(p: &str) -> &str {
    path::base(p)
}

impl Writer<'_> {
    /// The inode and directory-entry type at `p` (root-relative), if there is one.
    fn resolve(&mut self, p: &str) -> Result<Option<(u32, u8)>> {
        if p.is_empty() {
            return Ok(Some((ROOT, 2)));
        }
        let mut at = ROOT;
        let mut found = None;
        for part in p.split('/') {
            if found.is_some() {
                // The previous component was not a directory.
                match found {
                    Some((_, 2)) => {}
                    _ => return Ok(None),
                }
            }
            match self.dirs.lookup(self.fs, at, part)? {
                Some((ino, t)) => {
                    let t = if t == 0 {
                        dirent_type(self.fs.read_inode(ino)?.mode())
                    } else {
                        t
                    };
                    at = ino;
                    found = Some((ino, t));
                }
                None => return Ok(None),
            }
        }
        Ok(found)
    }

    /// The inode of directory `p`, which must exist.
    fn dir(&mut self, p: &str) -> Result<u32> {
        match self.resolve(p)? {
            Some((ino, 2)) => Ok(ino),
            _ => Err(fail(format!(
                "/{p} is not a directory after its parents were made"
            ))),
        }
    }

    /// Drops one link to inode `ino` (named in directory `parent`), freeing it and, for a
    /// directory, everything below it when none is left.
    fn drop_link(&mut self, parent: u32, ino: u32) -> Result<()> {
        let mut inode = self.fs.read_inode(ino)?;
        if inode.is_dir() {
            self.clear_dir(ino)?;
            self.fs.free_inode(ino, &mut inode)?;
            self.dirs.forget(ino);
            let mut p = self.fs.read_inode(parent)?;
            p.set_links(p.links().saturating_sub(1).max(2));
            return self.fs.write_inode(parent, &p);
        }
        let links = inode.links().saturating_sub(1);
        if links == 0 {
            self.fs.free_inode(ino, &mut inode)
        } else {
            inode.set_links(links);
            self.fs.write_inode(ino, &inode)
        }
    }

    /// Removes everything in directory `ino`.
    fn clear_dir(&mut self, ino: u32) -> Result<()> {
        for (name, child, _) in self.dirs.list(self.fs, ino)? {
            self.dirs.remove(self.fs, ino, &name)?;
            self.drop_link(ino, child)?;
        }
        Ok(())
    }

    /// Removes `p` and everything below it.
    fn remove(&mut self, p: &str) -> Result<()> {
        let parent = path::parent(p);
        let Some((pino, 2)) = self.resolve(parent)? else {
            return Ok(());
        };
        if let Some((ino, _)) = self.dirs.remove(self.fs, pino, name_of(p))? {
            self.drop_link(pino, ino)?;
        }
        Ok(())
    }

    /// Removes everything below `p` if it is a directory.
    fn clear(&mut self, p: &str) -> Result<()> {
        if let Some((ino, 2)) = self.resolve(p)? {
            self.clear_dir(ino)?;
        }
        Ok(())
    }

    /// Makes every ancestor of `p` a directory (implied ones: 0755, root, time 0).
    fn parents(&mut self, p: &str) -> Result<()> {
        let mut anc: Vec<&str> = path::ancestors(p).filter(|a| !a.is_empty()).collect();
        anc.reverse();
        for a in anc {
            match self.resolve(a)? {
                Some((_, 2)) => continue,
                Some(_) => self.remove(a)?,
                None => {}
            }
            let implied = TocEntry::new(a, EntryKind::Dir, 0o755);
            self.make(a, &implied, None)?;
        }
        Ok(())
    }

    /// Sets mode, owner and times of `i` to `e`'s.
    fn stamp(i: &mut Inode, e: &TocEntry) {
        i.set_mode(type_bits(e.kind) | (e.mode & 0o7777) as u16);
        i.set_owner(e.uid as u32, e.gid as u32);
        let t = disk_mtime(e.mtime);
        let nanos = if t == e.mtime { e.mtime_nsec } else { 0 };
        i.set_times(t, nanos);
    }

    fn xattrs(&mut self, ino: u32, e: &TocEntry) -> Result<()> {
        for (name, value) in &e.xattrs {
            self.fs.set_xattr(ino, name, value)?;
        }
        Ok(())
    }

    /// Creates `p` (absent, its parent a directory) as `e` says; `content` is where a
    /// regular file's data comes from.
    fn make(&mut self, p: &str, e: &TocEntry, content: Option<EntryRef>) -> Result<()> {
        let parent = self.dir(path::parent(p))?;
        let mode = type_bits(e.kind) | (e.mode & 0o7777) as u16;
        let ino = match e.kind {
            EntryKind::Dir => {
                let ino = self.fs.mkdir(parent)?;
                self.dirs.created(ino, parent);
                let mut i = self.fs.read_inode(ino)?;
                Self::stamp(&mut i, e);
                self.fs.write_inode(ino, &i)?;
                ino
            }
            EntryKind::Symlink => {
                let target = e.link.as_deref().unwrap_or_default();
                let ino = self.fs.symlink(parent, target)?;
                let mut i = self.fs.read_inode(ino)?;
                Self::stamp(&mut i, e);
                self.fs.write_inode(ino, &i)?;
                ino
            }
            EntryKind::File | EntryKind::Hardlink
                if let Some(ino) = content.and_then(|c| self.streamed_inode(c)) =>
            {
                if !self.taken.insert(ino) {
                    // Two names for one streamed file: a hardlink.
                    return self.hardlink(p, ino);
                }
                let mut i = self.fs.read_inode(ino)?;
                Self::stamp(&mut i, e);
                i.set_links(1);
                self.fs.write_inode(ino, &i)?;
                ino
            }
            EntryKind::File | EntryKind::Hardlink => {
                let ino = self.fs.new_inode(parent, mode)?;
                let mut i = self.fs.blank_inode(mode, true);
                Self::stamp(&mut i, e);
                i.set_links(1);
                self.fs.write_inode(ino, &i)?;
                if let Some(c) = content
                    && e.stored_len() > 0
                {
                    self.fills.push(Fill { ino, content: c });
                } else if e.size > 0 {
                    // A file of holes only: its length, no blocks.
                    let mut i = self.fs.read_inode(ino)?;
                    i.set_size(e.size);
                    self.fs.write_inode(ino, &i)?;
                }
                ino
            }
            EntryKind::Char | EntryKind::Block | EntryKind::Fifo => {
                let ino = self.fs.new_inode(parent, mode)?;
                let mut i = self.fs.blank_inode(mode, false);
                Self::stamp(&mut i, e);
                i.set_links(1);
                if e.kind != EntryKind::Fifo {
                    let (major, minor) = e.dev.unwrap_or((0, 0));
                    if major < 256 && minor < 256 {
                        i.set_block_word(0, (major << 8) | minor);
                    } else {
                        i.set_block_word(
                            1,
                            (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12),
                        );
                    }
                }
                self.fs.write_inode(ino, &i)?;
                ino
            }
            EntryKind::Whiteout | EntryKind::Opaque => return Ok(()),
        };
        self.stats.inodes += 1;
        self.inodes.insert(p.to_owned(), ino);
        self.xattrs(ino, e)?;
        self.dirs
            .add(self.fs, parent, name_of(p), ino, dirent_type(mode))
    }

    /// The inode a streamed file of the layer was written to.
    fn streamed_inode(&self, c: EntryRef) -> Option<u32> {
        if c.layer != self.top {
            return None;
        }
        self.streamed.and_then(|s| s.inode(c.entry))
    }

    /// Gives existing directory `ino` the metadata of `e`.
    fn restamp_dir(&mut self, p: &str, ino: u32, e: &TocEntry) -> Result<()> {
        self.inodes.insert(p.to_owned(), ino);
        let mut i = self.fs.read_inode(ino)?;
        Self::stamp(&mut i, e);
        self.fs.write_inode(ino, &i)?;
        self.xattrs(ino, e)
    }

    /// Makes `p` another name of the inode at `target`.
    fn hardlink(&mut self, p: &str, target: u32) -> Result<()> {
        let parent = self.dir(path::parent(p))?;
        let mut i = self.fs.read_inode(target)?;
        if i.links() == u16::MAX {
            return Err(Error::invalid(format!(
                "/{p}: the file has {} links, the most ext4 holds",
                u16::MAX
            )));
        }
        i.set_links(i.links() + 1);
        self.fs.write_inode(target, &i)?;
        self.inodes.insert(p.to_owned(), target);
        self.dirs
            .add(self.fs, parent, name_of(p), target, dirent_type(i.mode()))
    }
}

/// Applies layer `top` to `fs`, which holds the image of `lower` (lowest first, the skeleton
/// included). `top_data` says where the layer's file data is; `lower_data` reads file
/// contents of the lower image (needed only by a hardlink whose target the layer replaces).
pub fn apply(
    fs: &mut Fs,
    lower: &[Arc<Toc>],
    top: Arc<Toc>,
    top_data: LayerData<'_>,
    lower_data: Option<&FsContent>,
) -> Result<Applied> {
    let lower_view = MergedView::build(lower.to_vec());
    let mut all: Vec<Arc<Toc>> = lower.to_vec();
    all.push(top.clone());
    let top_index = lower.len();
    let chain = ChainView::new(
        all.iter()
            .map(|t| Arc::new(MemoryToc::new(t.clone())) as Arc<dyn LayerToc>)
            .collect(),
    );
    let changes = diff(&chain, top_index)?;
    let mut w = Writer {
        fs,
        dirs: Dirs::default(),
        fills: Vec::new(),
        stats: ApplyStats::default(),
        inodes: HashMap::new(),
        streamed: match top_data {
            LayerData::Files(s) => Some(s),
            _ => None,
        },
        taken: HashSet::new(),
        top: top_index as u32,
    };
    // Markers first: they remove from the lower image only. They are taken from the layer
    // itself, because the change list leaves out paths the lower image only implies.
    for e in &top.entries {
        match e.kind {
            EntryKind::Whiteout => w.remove(&e.path)?,
            EntryKind::Opaque => w.clear(&e.path)?,
            _ => {}
        }
    }
    let mut links: Vec<(String, String, EntryRef)> = Vec::new();
    for change in &changes {
        w.stats.changes += 1;
        match change {
            Change::Delete(p) => w.remove(p)?,
            Change::Opaque(p) => w.clear(p)?,
            Change::Upsert(p, r) => {
                let source_entry = &all[r.source.layer as usize].entries[r.source.entry as usize];
                let e = &r.entry;
                if source_entry.kind == EntryKind::Hardlink {
                    links.push((
                        p.clone(),
                        source_entry.link.clone().unwrap_or_default(),
                        r.content,
                    ));
                    continue;
                }
                w.parents(p)?;
                let existing = w.resolve(p)?;
                if e.kind == EntryKind::Dir
                    && let Some((ino, 2)) = existing
                {
                    w.restamp_dir(p, ino, e)?;
                    continue;
                }
                if existing.is_some() {
                    w.remove(p)?;
                }
                w.make(p, e, Some(r.content))?;
            }
        }
    }
    // Hardlinks, now that every target exists.
    let top_view = {
        let mut v = lower_view.clone();
        v.push(top.clone());
        v
    };
    for (p, target, content) in &links {
        w.parents(p)?;
        if w.resolve(p)?.is_some() {
            w.remove(p)?;
        }
        let target_now = top_view.get(target).and_then(|n| n.content);
        let target_ino = match w.resolve(target)? {
            Some((ino, t)) if t != 2 && target_now == Some(*content) => Some(ino),
            _ => None,
        };
        match target_ino {
            Some(ino) => w.hardlink(p, ino)?,
            None => {
                // The target was replaced after the link was made: the link keeps the old data.
                let e = all[content.layer as usize].entries[content.entry as usize].clone();
                w.make(p, &e, Some(*content))?;
            }
        }
    }
    // Streamed files no path took (an entry a later one of the same path replaced).
    if let Some(streamed) = w.streamed {
        for (_, ino) in streamed.all() {
            if !w.taken.contains(&ino) {
                let mut i = w.fs.read_inode(ino)?;
                w.fs.free_inode(ino, &mut i)?;
            }
        }
    }
    let fills = std::mem::take(&mut w.fills);
    w.stats.bytes = write_contents(w.fs, &all, fills, top_data, &lower_view, lower_data)?;
    w.stats.directories = w.dirs.flush(w.fs)?;
    Ok(Applied {
        stats: w.stats,
        inodes: w.inodes,
    })
}

/// The stored segments of a file: its sparse map, or all of it.
fn segments(e: &TocEntry) -> Vec<(u64, u64)> {
    match &e.sparse {
        Some(map) => map.clone(),
        None => vec![(0, e.size)],
    }
}

/// Writes the data of every file made: those of the new layer from where `top_data` says
/// (streamed in already, or a tar read once forward), and the few that come from lower layers
/// from `lower_data`.
fn write_contents(
    fs: &mut Fs,
    all: &[Arc<Toc>],
    mut fills: Vec<Fill>,
    top_data: LayerData<'_>,
    lower_view: &MergedView,
    lower_data: Option<&FsContent>,
) -> Result<u64> {
    let top_index = (all.len() - 1) as u32;
    let entry = |r: EntryRef| &all[r.layer as usize].entries[r.entry as usize];
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let (mut from_top, from_lower): (Vec<Fill>, Vec<Fill>) =
        fills.drain(..).partition(|f| f.content.layer == top_index);
    from_top.sort_by_key(|f| entry(f.content).data_offset);
    match top_data {
        _ if from_top.is_empty() => {}
        LayerData::None => return Err(fail("the layer has file data but no source was given")),
        LayerData::Tar(data) => {
            let compression = all[top_index as usize].compression;
            let mut reader = layer_reader(File::open(data).at(data)?, compression)?;
            for f in &from_top {
                let e = entry(f.content);
                reader.skip_to(e.data_offset).at(data)?;
                let mut file = fs.file(f.ino)?;
                for (off, len) in segments(e) {
                    let mut left = len;
                    let mut at = off;
                    while left > 0 {
                        let n = (buf.len() as u64).min(left) as usize;
                        reader.read_exact(&mut buf[..n]).at(data)?;
                        file.write_at(at, &buf[..n])?;
                        left -= n as u64;
                        at += n as u64;
                    }
                    bytes += len;
                }
                file.finish(e.size)?;
            }
        }
        LayerData::Streamed | LayerData::Files(_) => {
            return Err(fail(
                "a streamed file of the layer is missing from the filesystem",
            ));
        }
    }
    if !from_lower.is_empty() {
        let source = lower_data.ok_or_else(|| fail("lower file data needed but not given"))?;
        // A path of the lower image holding each wanted content.
        let mut paths: HashMap<EntryRef, &str> = HashMap::new();
        for (p, n) in lower_view.iter() {
            if let Some(c) = n.content {
                paths.entry(c).or_insert(p);
            }
        }
        let mut pass = source.pass()?;
        for f in &from_lower {
            let e = entry(f.content);
            let p = paths
                .get(&f.content)
                .ok_or_else(|| fail(format!("/{}: its data is not in the lower image", e.path)))?;
            let mut body = Checked::new(pass.open(p, f.content, e)?, e);
            let mut file = fs.file(f.ino)?;
            let mut at = 0u64;
            loop {
                let n = body
                    .read(&mut buf)
                    .map_err(|x| fail(format!("/{p}: {x}")))?;
                if n == 0 {
                    break;
                }
                // All-zero blocks stay holes.
                for chunk in buf[..n].chunks(4096) {
                    if chunk.iter().any(|b| *b != 0) {
                        file.write_at(at, chunk)?;
                    }
                    at += chunk.len() as u64;
                }
            }
            body.finish()?;
            file.finish(e.size)?;
            bytes += e.size;
        }
    }
    Ok(bytes)
}
