//! Applying a layer to an ext4 filesystem through the `rust-fs-ext4` writer, with exactly the
//! semantics of the engine's merged view (`imagestore_core::layer::compose`): whiteouts and
//! opaque markers first (they only touch lower layers), then entries in archive order; a later
//! entry replaces the path (a directory over a directory only takes the new metadata); a
//! non-directory replacing a directory takes its contents with it; missing parents are
//! implied (0755, root); a hardlink to a missing path or a directory is ignored.
//!
//! Paths are resolved one component at a time and never through a symlink. Replaced files
//! are unlinked and created anew, never rewritten in place, so a hardlink keeps the content
//! its target had when it was made.

use std::collections::HashMap;
use std::io::Read;

use imagestore_core::layer::export::LayerReader;
use imagestore_core::layer::path;
use imagestore_core::layer::toc::{EntryKind, Toc, TocEntry};
use imagestore_core::{Error, Result};
use rust_fs_ext4::Filesystem;
use rust_fs_ext4::inode::{Inode, S_IFBLK, S_IFCHR, S_IFIFO};

use crate::error::BACKEND;

/// The root directory's inode number.
pub const ROOT_INO: u32 = 2;
/// Bytes moved per write call.
const CHUNK: usize = 4 << 20;

/// What an apply did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Entries created or updated.
    pub entries: u64,
    /// Paths removed by whiteouts, opaque markers and replacements.
    pub removed: u64,
    /// File bytes written.
    pub bytes: u64,
}

/// Applies layers to one mounted filesystem.
pub struct Applier<'a> {
    fs: &'a Filesystem,
    dirs: HashMap<String, u32>,
    buf: Vec<u8>,
    /// Statistics so far.
    pub stats: ApplyStats,
}

impl std::fmt::Debug for Applier<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn fail(p: &str, what: &str, e: impl std::fmt::Display) -> Error {
    Error::backend(BACKEND, format!("ext4: {what} /{p}: {e}"), false)
}

fn not_found(e: &rust_fs_ext4::Error) -> bool {
    matches!(
        e,
        rust_fs_ext4::Error::NotFound | rust_fs_ext4::Error::NotADirectory
    )
}

impl<'a> Applier<'a> {
    /// An applier for `fs` (mounted read-write).
    pub fn new(fs: &'a Filesystem) -> Self {
        Applier {
            fs,
            dirs: HashMap::new(),
            buf: vec![0u8; CHUNK],
            stats: ApplyStats::default(),
        }
    }

    fn stat(&self, p: &str, ino: u32) -> Result<Inode> {
        self.fs.stat_ino(ino).map_err(|e| fail(p, "reading", e))
    }

    /// The inode of directory `p`, `None` if a component is missing or not a directory.
    fn dir(&mut self, p: &str) -> Result<Option<u32>> {
        if p.is_empty() {
            return Ok(Some(ROOT_INO));
        }
        if let Some(ino) = self.dirs.get(p) {
            return Ok(Some(*ino));
        }
        let Some(parent) = self.dir(path::parent(p))? else {
            return Ok(None);
        };
        match self.fs.lookup_at(parent, path::base(p).as_bytes()) {
            Ok(ino) => {
                if self.stat(p, ino)?.is_dir() {
                    self.dirs.insert(p.to_owned(), ino);
                    Ok(Some(ino))
                } else {
                    Ok(None)
                }
            }
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(fail(p, "looking up", e)),
        }
    }

    /// The inode at `p` (not following a final symlink), `None` if absent.
    fn lookup(&mut self, p: &str) -> Result<Option<(u32, Inode)>> {
        if p.is_empty() {
            return Ok(Some((ROOT_INO, self.stat(p, ROOT_INO)?)));
        }
        let Some(parent) = self.dir(path::parent(p))? else {
            return Ok(None);
        };
        match self.fs.lookup_at(parent, path::base(p).as_bytes()) {
            Ok(ino) => Ok(Some((ino, self.stat(p, ino)?))),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(fail(p, "looking up", e)),
        }
    }

    /// Makes sure every ancestor of `p` is a directory, creating missing ones (0755, root,
    /// time 0). Returns the parent's inode, or `None` if an ancestor is not a directory.
    fn parent_of(&mut self, p: &str) -> Result<Option<u32>> {
        let parent = path::parent(p);
        if let Some(ino) = self.dir(parent)? {
            return Ok(Some(ino));
        }
        let mut missing: Vec<&str> = path::ancestors(p).collect();
        missing.reverse();
        let mut at = ROOT_INO;
        for anc in missing {
            if anc.is_empty() {
                continue;
            }
            at = match self.lookup(anc)? {
                Some((ino, inode)) if inode.is_dir() => ino,
                Some(_) => return Ok(None),
                None => {
                    let ino = self
                        .fs
                        .apply_mkdir_at(at, path::base(anc).as_bytes(), 0o755)
                        .map_err(|e| fail(anc, "creating directory", e))?;
                    self.fs
                        .apply_chown_ino(ino, 0, 0)
                        .map_err(|e| fail(anc, "setting the owner of", e))?;
                    self.fs
                        .apply_utimens_ino(ino, 0, 0, 0, 0)
                        .map_err(|e| fail(anc, "setting the times of", e))?;
                    self.dirs.insert(anc.to_owned(), ino);
                    ino
                }
            };
        }
        Ok(Some(at))
    }

    /// Removes `p` and everything below it; absent is fine.
    pub fn remove(&mut self, p: &str) -> Result<()> {
        let Some((_, inode)) = self.lookup(p)? else {
            return Ok(());
        };
        let Some(parent) = self.dir(path::parent(p))? else {
            return Ok(());
        };
        if inode.is_dir() {
            self.clear(p, false)?;
            self.fs
                .apply_rmdir_at(parent, path::base(p).as_bytes())
                .map_err(|e| fail(p, "removing directory", e))?;
            self.dirs.retain(|k, _| !path::is_within(k, p));
        } else {
            self.fs
                .apply_unlink_at(parent, path::base(p).as_bytes())
                .map_err(|e| fail(p, "removing", e))?;
        }
        self.stats.removed += 1;
        Ok(())
    }

    /// Removes everything inside directory `p` (at the root, `lost+found` stays when
    /// `keep_lost_found`).
    fn clear(&mut self, p: &str, keep_lost_found: bool) -> Result<()> {
        let Some(ino) = self.dir(p)? else {
            return Ok(());
        };
        let entries = self
            .fs
            .read_dir_ino(ino)
            .map_err(|e| fail(p, "listing", e))?;
        for e in entries {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            if keep_lost_found && p.is_empty() && e.name == b"lost+found" {
                continue;
            }
            let name = String::from_utf8_lossy(&e.name).into_owned();
            if name.as_bytes() != e.name.as_slice() {
                // Not UTF-8: remove it by its bytes (it can only be a leaf we cannot name).
                let _ = self.fs.apply_unlink_at(ino, &e.name);
                continue;
            }
            self.remove(&path::join(p, &name))?;
        }
        Ok(())
    }

    fn set_meta(&mut self, p: &str, ino: u32, e: &TocEntry, mode: bool) -> Result<()> {
        let uid = u32::try_from(e.uid).map_err(|_| fail(p, "owner of", "uid out of range"))?;
        let gid = u32::try_from(e.gid).map_err(|_| fail(p, "owner of", "gid out of range"))?;
        self.fs
            .apply_chown_ino(ino, uid, gid)
            .map_err(|err| fail(p, "setting the owner of", err))?;
        if mode {
            self.fs
                .apply_chmod_ino(ino, (e.mode & 0o7777) as u16)
                .map_err(|err| fail(p, "setting the mode of", err))?;
        }
        if !e.xattrs.is_empty() {
            let full = format!("/{p}");
            for (name, value) in &e.xattrs {
                self.fs
                    .apply_setxattr(&full, name, value)
                    .map_err(|err| fail(p, &format!("setting xattr {name} on"), err))?;
            }
        }
        self.fs
            .apply_utimens_ino(ino, e.mtime, e.mtime_nsec, e.mtime, e.mtime_nsec)
            .map_err(|err| fail(p, "setting the times of", err))
    }

    /// Drops xattrs of directory `p` that entry `e` does not carry (a directory over a
    /// directory takes the new metadata as a whole).
    fn drop_stale_xattrs(&mut self, p: &str, ino: u32, e: &TocEntry) -> Result<()> {
        let (inode, raw) = self
            .fs
            .read_inode_verified(ino)
            .map_err(|err| fail(p, "reading", err))?;
        let names = rust_fs_ext4::xattr::list_names(self.fs, &inode, &raw)
            .map_err(|err| fail(p, "listing xattrs of", err))?;
        let full = format!("/{p}");
        for name in names {
            if !e.xattrs.contains_key(&name) && !name.starts_with("system.data") {
                self.fs
                    .apply_removexattr(&full, &name)
                    .map_err(|err| fail(p, &format!("removing xattr {name} from"), err))?;
            }
        }
        Ok(())
    }

    fn write_data(
        &mut self,
        p: &str,
        ino: u32,
        e: &TocEntry,
        data: &mut dyn LayerReader,
    ) -> Result<()> {
        if e.size == 0 {
            return Ok(());
        }
        data.skip_to(e.data_offset)
            .map_err(|err| fail(p, "reading the layer data of", err))?;
        let segments: Vec<(u64, u64)> = match &e.sparse {
            Some(map) => map.clone(),
            None => vec![(0, e.size)],
        };
        let mut end = 0;
        for (off, len) in segments {
            let mut done = 0u64;
            while done < len {
                let want = ((len - done) as usize).min(self.buf.len());
                data.read_exact(&mut self.buf[..want])
                    .map_err(|err| fail(p, "reading the layer data of", err))?;
                self.fs
                    .apply_pwrite_ino(ino, off + done, &self.buf[..want])
                    .map_err(|err| fail(p, "writing", err))?;
                done += want as u64;
            }
            end = off + len;
            self.stats.bytes += len;
        }
        if end < e.size {
            self.fs
                .apply_truncate_ino(ino, e.size)
                .map_err(|err| fail(p, "extending", err))?;
        }
        Ok(())
    }

    /// Applies one layer: its markers, then its entries, reading file data from `data` (the
    /// layer's uncompressed tar, read forwards).
    pub fn apply(&mut self, toc: &Toc, data: &mut dyn LayerReader) -> Result<()> {
        for e in &toc.entries {
            match e.kind {
                EntryKind::Whiteout => self.remove(&e.path)?,
                EntryKind::Opaque => self.clear(&e.path, true)?,
                _ => {}
            }
        }
        for e in &toc.entries {
            if e.kind.is_marker() || e.path.is_empty() {
                continue;
            }
            self.entry(e, data)?;
        }
        Ok(())
    }

    fn entry(&mut self, e: &TocEntry, data: &mut dyn LayerReader) -> Result<()> {
        let p = e.path.as_str();
        let Some(parent) = self.parent_of(p)? else {
            return Ok(());
        };
        let name = path::base(p).as_bytes();
        let existing = self.lookup(p)?;
        if e.kind == EntryKind::Hardlink {
            let target = e.link.as_deref().unwrap_or_default();
            let Some((tino, tinode)) = self.lookup(target)? else {
                return Ok(());
            };
            if tinode.is_dir() {
                return Ok(());
            }
            if existing.as_ref().is_some_and(|(ino, _)| *ino == tino) {
                return Ok(());
            }
            if existing.is_some() {
                self.remove(p)?;
            }
            self.fs
                .apply_link_at(tino, parent, name)
                .map_err(|err| fail(p, "linking", err))?;
            self.stats.entries += 1;
            return Ok(());
        }
        if e.kind == EntryKind::Dir {
            if let Some((ino, inode)) = &existing
                && inode.is_dir()
            {
                let ino = *ino;
                self.drop_stale_xattrs(p, ino, e)?;
                self.set_meta(p, ino, e, true)?;
                self.stats.entries += 1;
                return Ok(());
            }
        }
        if existing.is_some() {
            self.remove(p)?;
        }
        let perm = (e.mode & 0o7777) as u16;
        let ino = match e.kind {
            EntryKind::Dir => {
                let ino = self
                    .fs
                    .apply_mkdir_at(parent, name, perm)
                    .map_err(|err| fail(p, "creating directory", err))?;
                self.dirs.insert(p.to_owned(), ino);
                ino
            }
            EntryKind::File => {
                let ino = self
                    .fs
                    .apply_create_at(parent, name, perm)
                    .map_err(|err| fail(p, "creating", err))?;
                self.write_data(p, ino, e, data)?;
                ino
            }
            EntryKind::Symlink => {
                let target = e.link.as_deref().unwrap_or_default();
                self.fs
                    .apply_symlink_at(parent, name, target.as_bytes())
                    .map_err(|err| fail(p, "creating symlink", err))?
            }
            EntryKind::Char | EntryKind::Block | EntryKind::Fifo => {
                let ty = match e.kind {
                    EntryKind::Char => S_IFCHR,
                    EntryKind::Block => S_IFBLK,
                    _ => S_IFIFO,
                };
                let (major, minor) = e.dev.unwrap_or((0, 0));
                self.fs
                    .apply_mknod_at(parent, name, ty | perm, major, minor)
                    .map_err(|err| fail(p, "creating node", err))?
            }
            EntryKind::Hardlink | EntryKind::Whiteout | EntryKind::Opaque => return Ok(()),
        };
        let mode = !matches!(e.kind, EntryKind::Symlink);
        self.set_meta(p, ino, e, mode)?;
        self.stats.entries += 1;
        Ok(())
    }
}
