//! The ext4 filesystem inside the disks, written in-process with libext2fs
//! (`docs/decisions/0014-ext4-in-process.md`, superseding 0007): no script, no external
//! program. [`fs::Fs`] opens the filesystem on a [`crate::vmdk::overlay::Overlay`] through a
//! Rust I/O manager ([`device`]), so blocks are read from the parent chain's grains and
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

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use imagestore_core::Result;
use imagestore_core::layer::ingest::FileTap;
use imagestore_core::layer::toc::{EntryKind, Toc, TocEntry};

use crate::error::IoContext;

pub use plan::{ApplyStats, apply, make_scratch};

/// The label of the scratch filesystem (VIC's `containerfs`).
pub const LABEL: &str = "containerfs";

fn entry(p: &str, kind: EntryKind, mode: u32) -> TocEntry {
    TocEntry::new(p, kind, mode)
}

/// VIC's base structure of the scratch filesystem (`lost+found` comes with the filesystem, [`fs::Fs::create`]): dirs
/// `/etc`, `/lib/modules`, `/proc`, `/sys`, `/run`, `/.tether`; empty `/etc/hostname`,
/// `/etc/hosts`, `/etc/resolv.conf`; `/etc/mtab -> /proc/mounts`. It is the lowest layer of
/// every apply, never part of an image's exported contents.
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
    /// In a folder holding each regular file's contents as `f<entry index>`, written by a
    /// [`StageTap`] while the layer was ingested.
    Staged(&'a Path),
}

/// Writes each regular file of a layer being ingested into a folder as `f<entry index>`,
/// with its holes, to be copied into the filesystem after the ingest ([`LayerData::Staged`]).
#[derive(Debug)]
pub struct StageTap {
    dir: PathBuf,
    file: Option<(File, PathBuf, u64)>,
}

impl StageTap {
    /// A tap writing into `dir`, which must exist.
    pub fn new(dir: PathBuf) -> StageTap {
        StageTap { dir, file: None }
    }
}

impl FileTap for StageTap {
    fn file(&mut self, index: usize, entry: &TocEntry) -> Result<()> {
        let p = self.dir.join(format!("f{index}"));
        let f = File::create(&p).at(&p)?;
        self.file = Some((f, p, entry.size));
        Ok(())
    }

    fn data(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        match &self.file {
            Some((f, p, _)) => f.write_all_at(bytes, offset).at(p),
            None => Err(fs::fail("file data without a file")),
        }
    }

    fn end_file(&mut self) -> Result<()> {
        match self.file.take() {
            Some((f, p, size)) => f.set_len(size).at(&p),
            None => Ok(()),
        }
    }
}
