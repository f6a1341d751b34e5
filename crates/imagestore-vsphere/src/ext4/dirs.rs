//! The directories of the filesystem being written, held in memory while a layer is applied
//! and written back once at the end.
//!
//! libext2fs inserts a name by scanning a directory's blocks for room (`ext2fs_link`), which
//! makes filling a directory of N entries cost N²; looking a name up scans too. Here a
//! directory is read once, the first time the layer touches it, into a name index; adds and
//! removals change the index; and every changed directory is written back in one pass as a
//! linear directory (valid ext4 with or without `dir_index`: an indexed directory is written
//! back unindexed, and `e2fsck -fD` or the kernel can index it again). So a layer costs time
//! linear in the entries it touches plus the directories it changes.

use std::collections::HashMap;

use imagestore_core::{Error, Result};

use super::fs::{Fs, fail};
use super::inode::INDEX_FL;

/// The root directory's inode.
pub const ROOT: u32 = 2;

/// One directory: its entries other than `.` and `..`, in order, and a name index.
#[derive(Debug, Default)]
struct Dir {
    /// `(name, inode, file type)`; `None` where an entry was removed.
    entries: Vec<Option<(Vec<u8>, u32, u8)>>,
    index: HashMap<Vec<u8>, usize>,
    /// The `..` entry.
    parent: u32,
    dirty: bool,
}

impl Dir {
    fn push(&mut self, name: Vec<u8>, ino: u32, ftype: u8) {
        self.index.insert(name.clone(), self.entries.len());
        self.entries.push(Some((name, ino, ftype)));
    }
}

/// The directories touched so far.
#[derive(Debug, Default)]
pub struct Dirs {
    dirs: HashMap<u32, Dir>,
}

fn rec_len(name_len: usize) -> usize {
    (8 + name_len).div_ceil(4) * 4
}

impl Dirs {
    /// Registers new directory `ino` (made by [`Fs::mkdir`], empty) under `parent`.
    pub fn created(&mut self, ino: u32, parent: u32) {
        self.dirs.insert(
            ino,
            Dir {
                parent,
                ..Dir::default()
            },
        );
    }

    fn load(&mut self, fs: &mut Fs, ino: u32) -> Result<&mut Dir> {
        if !self.dirs.contains_key(&ino) {
            let dir = read_dir(fs, ino)?;
            self.dirs.insert(ino, dir);
        }
        self.dirs
            .get_mut(&ino)
            .ok_or_else(|| fail("a directory vanished from the cache"))
    }

    /// The inode and file type of `name` in directory `dir`.
    pub fn lookup(&mut self, fs: &mut Fs, dir: u32, name: &str) -> Result<Option<(u32, u8)>> {
        let d = self.load(fs, dir)?;
        Ok(d.index
            .get(name.as_bytes())
            .and_then(|i| d.entries[*i].as_ref())
            .map(|(_, ino, t)| (*ino, *t)))
    }

    /// The entries of directory `dir`: `(name, inode, file type)`.
    pub fn list(&mut self, fs: &mut Fs, dir: u32) -> Result<Vec<(String, u32, u8)>> {
        let d = self.load(fs, dir)?;
        Ok(d.entries
            .iter()
            .flatten()
            .map(|(n, i, t)| (String::from_utf8_lossy(n).into_owned(), *i, *t))
            .collect())
    }

    /// Adds `name` → `ino` to directory `dir`; the name must not be there.
    pub fn add(&mut self, fs: &mut Fs, dir: u32, name: &str, ino: u32, ftype: u8) -> Result<()> {
        let d = self.load(fs, dir)?;
        if d.index.contains_key(name.as_bytes()) {
            return Err(fail(format!(
                "{name:?} is already in directory inode {dir}"
            )));
        }
        d.push(name.as_bytes().to_vec(), ino, ftype);
        d.dirty = true;
        Ok(())
    }

    /// Removes `name` from directory `dir`; what it named.
    pub fn remove(&mut self, fs: &mut Fs, dir: u32, name: &str) -> Result<Option<(u32, u8)>> {
        let d = self.load(fs, dir)?;
        let Some(i) = d.index.remove(name.as_bytes()) else {
            return Ok(None);
        };
        d.dirty = true;
        Ok(d.entries[i].take().map(|(_, ino, t)| (ino, t)))
    }

    /// Forgets directory `ino` (it was freed).
    pub fn forget(&mut self, ino: u32) {
        self.dirs.remove(&ino);
    }

    /// Writes every changed directory back; how many.
    pub fn flush(&mut self, fs: &mut Fs) -> Result<u64> {
        let mut inos: Vec<u32> = self
            .dirs
            .iter()
            .filter(|(_, d)| d.dirty)
            .map(|(i, _)| *i)
            .collect();
        inos.sort_unstable();
        for ino in &inos {
            if let Some(d) = self.dirs.get_mut(ino) {
                write_dir(fs, *ino, d)?;
                d.dirty = false;
            }
        }
        Ok(inos.len() as u64)
    }
}

/// Reads directory `ino` whole.
fn read_dir(fs: &mut Fs, ino: u32) -> Result<Dir> {
    let mut inode = fs.read_inode(ino)?;
    if !inode.is_dir() {
        return Err(fail(format!("inode {ino} is not a directory")));
    }
    if inode.flags() & 0x1000_0000 != 0 {
        return Err(fail(format!(
            "directory inode {ino} keeps its entries inline, which this writer does not change"
        )));
    }
    let bs = fs.blocksize;
    let blocks = inode.size().div_ceil(bs as u64);
    let mut dir = Dir::default();
    let mut buf = vec![0u8; bs];
    for lblk in 0..blocks {
        let Some(phys) = fs.map_block(ino, &mut inode, lblk, false)? else {
            continue;
        };
        fs.read_dir_block(phys, ino, &mut buf)?;
        let mut at = 0usize;
        while at + 8 <= bs {
            let e_ino = u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
            let len = usize::from(u16::from_le_bytes([buf[at + 4], buf[at + 5]]));
            let name_len = usize::from(buf[at + 6]);
            let ftype = buf[at + 7];
            if len < 8 || at + len > bs || 8 + name_len > len {
                return Err(Error::corrupt(
                    format!("ext4 directory inode {ino}"),
                    format!("a bad entry at byte {at} of block {lblk}"),
                ));
            }
            if e_ino != 0 && name_len > 0 {
                let name = &buf[at + 8..at + 8 + name_len];
                if name == b"." {
                } else if name == b".." {
                    dir.parent = e_ino;
                } else {
                    dir.push(name.to_vec(), e_ino, ftype);
                }
            }
            at += len;
        }
    }
    Ok(dir)
}

/// Writes directory `ino` as a linear directory holding `d`'s entries.
fn write_dir(fs: &mut Fs, ino: u32, d: &Dir) -> Result<()> {
    let bs = fs.blocksize;
    let tail = if fs.has_csum() { 12 } else { 0 };
    let room = bs - tail;
    let filetype = fs.has_filetype();
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    let mut block = vec![0u8; bs];
    // The last entry written in the current block, to stretch to the block's end.
    let mut last: Option<usize> = None;
    let mut at = 0usize;
    let put = |block: &mut Vec<u8>,
               blocks: &mut Vec<Vec<u8>>,
               at: &mut usize,
               last: &mut Option<usize>,
               name: &[u8],
               e_ino: u32,
               ftype: u8| {
        let need = rec_len(name.len());
        if *at + need > room {
            close_block(block, *last, *at, room, tail);
            blocks.push(std::mem::replace(block, vec![0u8; bs]));
            *at = 0;
        }
        let b = &mut block[*at..*at + need];
        b[0..4].copy_from_slice(&e_ino.to_le_bytes());
        b[4..6].copy_from_slice(&(need as u16).to_le_bytes());
        b[6] = name.len() as u8;
        b[7] = if filetype { ftype } else { 0 };
        b[8..8 + name.len()].copy_from_slice(name);
        *last = Some(*at);
        *at += need;
    };
    put(&mut block, &mut blocks, &mut at, &mut last, b".", ino, 2);
    put(
        &mut block,
        &mut blocks,
        &mut at,
        &mut last,
        b"..",
        d.parent,
        2,
    );
    for (name, e_ino, ftype) in d.entries.iter().flatten() {
        put(
            &mut block,
            &mut blocks,
            &mut at,
            &mut last,
            name,
            *e_ino,
            *ftype,
        );
    }
    close_block(&mut block, last, at, room, tail);
    blocks.push(block);

    let mut inode = fs.read_inode(ino)?;
    let old_blocks = inode.size().div_ceil(bs as u64);
    for (lblk, b) in blocks.iter_mut().enumerate() {
        let phys = fs
            .map_block(ino, &mut inode, lblk as u64, true)?
            .ok_or_else(|| fail(format!("no block for directory inode {ino}")))?;
        fs.write_dir_block(phys, ino, b)?;
    }
    let n = blocks.len() as u64;
    if old_blocks > n {
        fs.truncate_blocks(ino, &mut inode, n)?;
    }
    // Re-read: mapping and truncating updated the inode on disk.
    let mut inode = fs.read_inode(ino)?;
    inode.set_size(n * bs as u64);
    inode.set_flags(inode.flags() & !INDEX_FL);
    fs.write_inode(ino, &inode)
}

/// Stretches the last entry of a block to the end of its room and adds the checksum tail.
fn close_block(block: &mut [u8], last: Option<usize>, at: usize, room: usize, tail: usize) {
    match last {
        Some(l) if l < at => {
            let len = (room - l) as u16;
            block[l + 4..l + 6].copy_from_slice(&len.to_le_bytes());
        }
        _ => {
            // An empty block: one unused entry spanning it.
            block[4..6].copy_from_slice(&(room as u16).to_le_bytes());
        }
    }
    if tail > 0 {
        let t = &mut block[room..room + 12];
        t.fill(0);
        t[4..6].copy_from_slice(&12u16.to_le_bytes());
        t[6..8].copy_from_slice(&0xde00u16.to_le_bytes());
    }
}
