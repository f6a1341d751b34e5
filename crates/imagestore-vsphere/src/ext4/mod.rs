//! The ext4 filesystem inside the disks, written in-process with libext2fs
//! (`docs/decisions/0014-ext4-in-process.md`, superseding 0007): no script, no external
//! program. [`fs::Fs`] opens the filesystem on a [`crate::vmdk::overlay::Overlay`] through a
//! Rust I/O manager (`device`), so blocks are read from the parent chain's grains and
//! written straight into the new delta disk's; [`apply`] applies a layer to it and
//! [`make_scratch`] makes the scratch filesystem.
//!
//! A layer is applied as the changes between the image below it and the image with it
//! ([`imagestore_core::layer::chain::diff`]), so the filesystem ends up holding exactly the
//! merged view the engine computes: deletions (whiteouts, opaque directories, replaced paths)
//! remove what the lower image holds, then every new or changed path is created with its
//! owner, mode, times and xattrs; hardlinks come last, when their targets exist.

mod device;
mod dirs;
mod ffi;
pub mod fs;
mod inode;
mod plan;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use imagestore_core::Result;
use imagestore_core::layer::ingest::FileTap;
use imagestore_core::layer::toc::{EntryKind, Toc, TocEntry};

use fs::Fs;

pub use plan::{Applied, ApplyStats, apply, make_scratch};

/// The label of the scratch filesystem (VIC's `containerfs`).
pub const LABEL: &str = "containerfs";

fn entry(p: &str, kind: EntryKind, mode: u32) -> TocEntry {
    TocEntry::new(p, kind, mode)
}

/// VIC's base structure of the scratch filesystem (`lost+found` comes with the filesystem,
/// [`fs::Fs::create`]): dirs `/etc`, `/lib/modules`, `/proc`, `/sys`, `/run`, `/.tether`;
/// empty `/etc/hostname`, `/etc/hosts`, `/etc/resolv.conf`; `/etc/mtab -> /proc/mounts`. It
/// is the lowest layer of every apply, never part of an image's exported contents.
pub fn skeleton() -> Toc {
    let mut mtab = entry("etc/mtab", EntryKind::Symlink, 0o777);
    mtab.link = Some("/proc/mounts".into());
    let entries = vec![
        entry("lost+found", EntryKind::Dir, 0o700),
        entry("etc", EntryKind::Dir, 0o755),
        entry("lib", EntryKind::Dir, 0o755),
        entry("lib/modules", EntryKind::Dir, 0o755),
        entry("proc", EntryKind::Dir, 0o555),
        entry("sys", EntryKind::Dir, 0o555),
        entry("run", EntryKind::Dir, 0o755),
        entry(".tether", EntryKind::Dir, 0o777),
        entry("etc/hostname", EntryKind::File, 0o644),
        entry("etc/hosts", EntryKind::File, 0o644),
        entry("etc/resolv.conf", EntryKind::File, 0o644),
        mtab,
    ];
    let entries = entries
        .into_iter()
        .map(|mut e| {
            if e.path != "lost+found" {
                e.mtime = imagestore_core::layer::scratch::SCRATCH_MTIME as i64;
            }
            e
        })
        .collect();
    Toc {
        entries,
        ..Toc::default()
    }
}

/// The modification time the filesystem holds for an entry's `mtime`: clamped to 1970-01-01
/// ..= 2038-01-19 (0 ..= `i32::MAX` seconds). ext4 holds more, but the reader the disk
/// backends use for export and checkout (`ext4-view`) refuses any inode whose time has the
/// sign bit of its low 32 bits set, so a wider time would commit an image that cannot be read
/// back. The TOC keeps the exact time, and exports and checkouts take metadata from it.
pub fn disk_mtime(mtime: i64) -> i64 {
    mtime.clamp(0, i64::from(i32::MAX))
}

/// Where the file data of a layer being applied is.
#[derive(Debug, Clone, Copy)]
pub enum LayerData<'a> {
    /// Nowhere: the layer has no file data (the skeleton).
    None,
    /// In the layer's tar, compressed as its TOC says.
    Tar(&'a Path),
    /// Already in the filesystem: streamed in while the layer was ingested, through the tap
    /// of the build ([`crate::build::DeltaBuild::tap`]).
    Streamed,
    /// Already in the filesystem, as these inodes ([`Stream::into_parts`]).
    Files(&'a Streamed),
}

/// The regular files a [`Stream`] wrote: unlinked inodes by TOC entry index, linked into
/// place (or freed) by [`apply`].
#[derive(Debug, Default)]
pub struct Streamed {
    files: HashMap<u32, u32>,
}

impl Streamed {
    /// The inode holding the data of the layer's entry `index`.
    pub fn inode(&self, index: u32) -> Option<u32> {
        self.files.get(&index).copied()
    }

    /// Every inode written, by entry index.
    pub fn all(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.files.iter().map(|(i, n)| (*i, *n))
    }
}

/// The filesystem of a disk being built, with the files streamed into it so far.
#[derive(Debug)]
struct StreamState {
    fs: Fs,
    files: Streamed,
    /// The file being written: entry index, inode, length.
    current: Option<(u32, u32, u64)>,
}

/// A filesystem the regular files of a layer stream into as the layer is ingested, each as a
/// new inode linked nowhere yet ([`Stream::tap`]); [`apply`] links them into place. No file
/// content is staged anywhere else.
#[derive(Debug, Clone)]
pub struct Stream {
    state: Arc<Mutex<Option<StreamState>>>,
}

impl Stream {
    /// A stream into `fs`.
    pub fn new(fs: Fs) -> Stream {
        Stream {
            state: Arc::new(Mutex::new(Some(StreamState {
                fs,
                files: Streamed::default(),
                current: None,
            }))),
        }
    }

    /// A tap for the layer's ingest.
    pub fn tap(&self) -> StreamTap {
        StreamTap {
            stream: self.clone(),
        }
    }

    /// The filesystem and the files written into it.
    pub fn into_parts(self) -> Result<(Fs, Streamed)> {
        let state = self
            .state
            .lock()
            .ok()
            .and_then(|mut s| s.take())
            .ok_or_else(|| fs::fail("the filesystem being written was lost"))?;
        Ok((state.fs, state.files))
    }

    fn with<T>(&self, f: impl FnOnce(&mut StreamState) -> Result<T>) -> Result<T> {
        let mut guard = self
            .state
            .lock()
            .map_err(|_| fs::fail("the filesystem being written is poisoned"))?;
        let state = guard
            .as_mut()
            .ok_or_else(|| fs::fail("the filesystem being written is closed"))?;
        f(state)
    }
}

/// The [`FileTap`] of a [`Stream`].
#[derive(Debug)]
pub struct StreamTap {
    stream: Stream,
}

impl FileTap for StreamTap {
    fn file(&mut self, index: usize, entry: &TocEntry) -> Result<()> {
        let index = u32::try_from(index).map_err(|_| fs::fail("too many entries"))?;
        self.stream.with(|s| {
            let mode = inode::type_bits(EntryKind::File) | (entry.mode & 0o7777) as u16;
            let ino = s.fs.new_inode(dirs::ROOT, mode)?;
            let i = s.fs.blank_inode(mode, true);
            s.fs.write_inode(ino, &i)?;
            s.files.files.insert(index, ino);
            s.current = Some((index, ino, entry.size));
            Ok(())
        })
    }

    fn data(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        self.stream.with(|s| {
            let (_, ino, _) = s
                .current
                .ok_or_else(|| fs::fail("file data without a file"))?;
            let mut f = s.fs.file(ino)?;
            f.write_at(offset, bytes)?;
            f.close()
        })
    }

    fn end_file(&mut self) -> Result<()> {
        self.stream.with(|s| {
            let (_, ino, size) = s.current.take().ok_or_else(|| fs::fail("no file to end"))?;
            if size > 0 {
                s.fs.file(ino)?.finish(size)?;
            }
            Ok(())
        })
    }
}
