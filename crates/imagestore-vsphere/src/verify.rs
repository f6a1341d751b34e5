//! The check before a disk backend's commit point: the ext4 a layer was just applied to is
//! read back, and every path the layer names must hold what the engine's merged view says
//! (kind, permission bits, owner, mtime as the disk holds it ([`crate::ext4::disk_mtime`]),
//! size, link target, and for regular files the
//! content digest; whiteouts absent, opaque directories holding only what the view has).
//! A layer the filesystem could not take exactly is refused here, before it is committed, so
//! a committed image always reads back (`docs/security.md`, invariant 10).
//!
//! Extended attributes (POSIX ACLs aside, which ext4 stores in its own encoding) and device
//! numbers, which `ext4-view` does not expose, are read from the inode the writer gave the
//! path, by `crate::extents`. A symlink
//! target with a component longer than 255 bytes (legal, but not a path `ext4-view` reads) is
//! checked by its length only.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read};
use std::sync::Arc;

use ext4_view::{Ext4, FileType, Metadata};

use imagestore_core::layer::compose::{EntryRef, MergedView};
use imagestore_core::layer::content::{Checked, ContentSource};
use imagestore_core::layer::path;
use imagestore_core::layer::toc::{EntryKind, Toc, TocEntry};
use imagestore_core::{Error, Result};

use crate::extents::Layout;
use crate::fsread::FsContent;

/// What a read-back checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadBack {
    /// Paths checked.
    pub paths: u64,
    /// File bytes read and hashed.
    pub bytes: u64,
}

fn mismatch(p: &str, what: impl std::fmt::Display) -> Error {
    Error::invalid(format!(
        "vmdk: /{p} does not read back from the written ext4 as the layer says ({what}); \
         the layer cannot be represented on this backend"
    ))
}

fn kind_of(t: FileType) -> &'static str {
    match t {
        FileType::BlockDevice => "block device",
        FileType::CharacterDevice => "character device",
        FileType::Directory => "directory",
        FileType::Fifo => "fifo",
        FileType::Regular => "regular file",
        FileType::Socket => "socket",
        FileType::Symlink => "symlink",
    }
}

fn expected_kind(e: &TocEntry) -> FileType {
    match e.kind {
        EntryKind::Dir => FileType::Directory,
        EntryKind::Symlink => FileType::Symlink,
        EntryKind::Char => FileType::CharacterDevice,
        EntryKind::Block => FileType::BlockDevice,
        EntryKind::Fifo => FileType::Fifo,
        _ => FileType::Regular,
    }
}

/// The inodes of the paths a layer names, found by reading each of their directories once
/// (a lookup by path scans the whole directory, so looking up each of a large directory's
/// entries by path would cost the square of its size).
struct Listing<'a> {
    fs: &'a Ext4,
    /// The names wanted, by directory.
    wanted: HashMap<&'a str, HashSet<&'a str>>,
    /// What each directory read so far holds of them.
    found: HashMap<&'a str, HashMap<String, Metadata>>,
}

impl<'a> Listing<'a> {
    fn new(fs: &'a Ext4, top: &'a Toc) -> Listing<'a> {
        let mut wanted: HashMap<&str, HashSet<&str>> = HashMap::new();
        for e in &top.entries {
            wanted
                .entry(path::parent(&e.path))
                .or_default()
                .insert(path::base(&e.path));
        }
        Listing {
            fs,
            wanted,
            found: HashMap::new(),
        }
    }

    /// The inode at `p`, `None` if there is none.
    fn stat(&mut self, p: &'a str) -> Result<Option<Metadata>> {
        if p.is_empty() {
            return self
                .fs
                .symlink_metadata("/")
                .map(Some)
                .map_err(|e| mismatch(p, e));
        }
        let dir = path::parent(p);
        if !self.found.contains_key(dir) {
            let names = self.wanted.get(dir);
            let mut found = HashMap::new();
            match self.fs.read_dir(format!("/{dir}").as_str()) {
                Ok(entries) => {
                    for entry in entries {
                        let entry = entry.map_err(|e| mismatch(dir, e))?;
                        let name = entry.file_name();
                        let name = name.as_str().map_err(|e| mismatch(dir, e))?;
                        if names.is_some_and(|n| n.contains(name)) {
                            let m = entry.metadata().map_err(|e| mismatch(p, e))?;
                            found.insert(name.to_owned(), m);
                        }
                    }
                }
                Err(ext4_view::Ext4Error::NotFound | ext4_view::Ext4Error::NotADirectory) => {}
                Err(e) => return Err(mismatch(dir, e)),
            }
            self.found.insert(dir, found);
        }
        Ok(self
            .found
            .get(dir)
            .and_then(|f| f.get(path::base(p)))
            .cloned())
    }
}

/// Reads the ext4 of `source` (the new disk's chain) back after `top` was applied over
/// `lower` (lowest first, the skeleton included) and checks every path `top` names.
/// The data of regular files whose inode the writer names in `inodes` (by path) is read by
/// inode (`crate::extents`), the others by path.
pub fn check_applied(
    source: &FsContent,
    lower: &[Arc<Toc>],
    top: &Arc<Toc>,
    inodes: &HashMap<String, u32>,
) -> Result<ReadBack> {
    let mut all = lower.to_vec();
    all.push(top.clone());
    let view = MergedView::build(all);
    let fs = source.load()?;
    let layout = Layout::load(source.chain()).map_err(|e| mismatch("", e))?;
    let mut listing = Listing::new(&fs, top);
    let mut files = Vec::new();
    let mut stats = ReadBack::default();
    for e in &top.entries {
        let p = e.path.as_str();
        stats.paths += 1;
        match e.kind {
            EntryKind::Whiteout => {
                if view.get(p).is_none() && listing.stat(p)?.is_some() {
                    return Err(mismatch(p, "whited out, but present"));
                }
                continue;
            }
            EntryKind::Opaque => {
                let Some(node) = view.get(p) else { continue };
                if view
                    .content_of(node)
                    .is_some_and(|w| w.kind != EntryKind::Dir)
                {
                    continue;
                }
                let dir = fs
                    .read_dir(format!("/{p}").as_str())
                    .map_err(|e| mismatch(p, e))?;
                for child in dir {
                    let child = child.map_err(|e| mismatch(p, e))?;
                    let name = child.file_name();
                    let name = name.as_str().map_err(|e| mismatch(p, e))?;
                    if name == "." || name == ".." {
                        continue;
                    }
                    let c = if p.is_empty() {
                        name.to_owned()
                    } else {
                        format!("{p}/{name}")
                    };
                    if view.get(&c).is_none() {
                        return Err(mismatch(&c, "hidden by an opaque directory, but present"));
                    }
                }
                continue;
            }
            _ => {}
        }
        let Some(node) = view.get(p) else {
            // A later entry of the layer removed it again.
            continue;
        };
        let Some(m) = listing.stat(p)? else {
            return Err(mismatch(p, "missing"));
        };
        let Some(want) = view.content_of(node) else {
            if !m.is_dir() {
                return Err(mismatch(
                    p,
                    format!("a {}, not a directory", kind_of(m.file_type())),
                ));
            }
            continue;
        };
        let kind = expected_kind(want);
        if m.file_type() != kind {
            return Err(mismatch(
                p,
                format!("a {}, not a {}", kind_of(m.file_type()), kind_of(kind)),
            ));
        }
        if kind != FileType::Symlink && u32::from(m.mode()) & 0o7777 != want.mode & 0o7777 {
            return Err(mismatch(
                p,
                format!("mode {:o}, not {:o}", m.mode() & 0o7777, want.mode & 0o7777),
            ));
        }
        if (u64::from(m.uid()), u64::from(m.gid())) != (want.uid, want.gid) {
            return Err(mismatch(
                p,
                format!(
                    "owner {}:{}, not {}:{}",
                    m.uid(),
                    m.gid(),
                    want.uid,
                    want.gid
                ),
            ));
        }
        let mtime = m.modified().seconds();
        let want_mtime = crate::ext4::disk_mtime(want.mtime);
        if mtime != want_mtime {
            return Err(mismatch(p, format!("mtime {mtime}, not {want_mtime}")));
        }
        if let Some(ino) = inodes.get(p) {
            check_inode(&layout, p, *ino, want)?;
        }
        match kind {
            FileType::Symlink => {
                let want_link = want.link.as_deref().unwrap_or_default();
                if m.len() != want_link.len() as u64 {
                    return Err(mismatch(
                        p,
                        format!("a link of {} bytes, not {}", m.len(), want_link.len()),
                    ));
                }
                // The reader takes only targets whose every component is a legal file
                // name; for others the length above is what can be checked.
                if want_link.split('/').all(|c| c.len() <= 255) {
                    let target = fs
                        .read_link(format!("/{p}").as_str())
                        .map_err(|e| mismatch(p, e))?;
                    let target = target.to_str().map_err(|e| mismatch(p, e))?;
                    if target != want_link {
                        return Err(mismatch(p, format!("links to {target:?}")));
                    }
                }
            }
            FileType::Regular => {
                if m.len() != want.size {
                    return Err(mismatch(p, format!("{} bytes, not {}", m.len(), want.size)));
                }
                let Some(content) = node.content else {
                    continue;
                };
                if want.size == 0 {
                    continue;
                }
                files.push((p, content, want));
            }
            _ => {}
        }
    }
    stats.bytes = check_contents(source, &files, inodes)?;
    Ok(stats)
}

/// Checks what `ext4-view` does not show of path `p`, on the inode `ino` the writer gave it:
/// device numbers, and every extended attribute the entry has (POSIX ACLs aside: ext4 keeps
/// them in an encoding of its own).
fn check_inode(layout: &Layout<'_>, p: &str, ino: u32, want: &TocEntry) -> Result<()> {
    if matches!(want.kind, EntryKind::Char | EntryKind::Block) {
        let got = layout.device(ino).map_err(|e| mismatch(p, e))?;
        let w = want.dev.unwrap_or((0, 0));
        if got != w {
            return Err(mismatch(
                p,
                format!("device {}:{}, not {}:{}", got.0, got.1, w.0, w.1),
            ));
        }
    }
    if want.xattrs.is_empty() {
        return Ok(());
    }
    let got = layout.xattrs(ino).map_err(|e| mismatch(p, e))?;
    for (name, value) in &want.xattrs {
        if name.starts_with("system.posix_acl_") {
            continue;
        }
        match got.get(name) {
            Some(v) if v == value => {}
            Some(_) => return Err(mismatch(p, format!("xattr {name:?} holds other bytes"))),
            None => return Err(mismatch(p, format!("xattr {name:?} missing"))),
        }
    }
    Ok(())
}

/// Reads every file of `files` (path, content, entry) and checks its digest; the bytes read.
/// The files are shared between two threads (hashing is most of the work). A file whose
/// inode is in `inodes` is read by inode, its whole extents at a time; its inode's size and
/// type must match what the path reads as.
fn check_contents(
    source: &FsContent,
    files: &[(&str, EntryRef, &TocEntry)],
    inodes: &HashMap<String, u32>,
) -> Result<u64> {
    let check = |part: usize| -> Result<u64> {
        let mut pass = None;
        let layout = Layout::load(source.chain()).map_err(|e| mismatch("", e))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut bytes = 0;
        for (p, content, want) in files.iter().skip(part).step_by(2) {
            let file;
            let reader: Box<dyn io::Read + '_> = match inodes.get(*p) {
                Some(ino) => {
                    file = layout.file(*ino).map_err(|e| mismatch(p, e))?;
                    if file.size != want.size {
                        return Err(mismatch(
                            p,
                            format!("inode {ino} holds {} bytes, not {}", file.size, want.size),
                        ));
                    }
                    let ranges = if want.is_sparse_form() {
                        want.sparse.clone().unwrap_or_default()
                    } else {
                        vec![(0, want.size)]
                    };
                    Box::new(file.reader(ranges))
                }
                None => {
                    if pass.is_none() {
                        pass = Some(source.pass()?);
                    }
                    match pass.as_mut() {
                        Some(pass) => pass.open(p, *content, want)?,
                        None => continue,
                    }
                }
            };
            let mut body = if inodes.contains_key(*p) && want.is_sparse_form() {
                Checked::stored(reader, want)?
            } else {
                Checked::new(reader, want)
            };
            loop {
                let n = body.read(&mut buf).map_err(|e| mismatch(p, e))?;
                if n == 0 {
                    break;
                }
                bytes += n as u64;
            }
            body.finish().map_err(|e| mismatch(p, e))?;
        }
        Ok(bytes)
    };
    if files.len() < 64 {
        return check(0).and_then(|a| check(1).map(|b| a + b));
    }
    std::thread::scope(|scope| {
        let other = scope.spawn(|| check(1));
        let mine = check(0);
        let theirs = other
            .join()
            .unwrap_or_else(|_| Err(Error::invalid("the read-back thread panicked")));
        Ok(mine? + theirs?)
    })
}
