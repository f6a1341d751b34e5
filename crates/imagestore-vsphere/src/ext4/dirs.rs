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
use std::collections::hash_map::Entry;

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
        match self.dirs.entry(ino) {
            Entry::Occupied(o) => Ok(o.into_mut()),
            Entry::Vacant(v) => Ok(v.insert(read_dir(fs, ino)?)),
        }
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

/// Packs directory entries into leaf blocks, each ending in the checksum tail when the
/// filesystem has one.
struct Leaves {
    bs: usize,
    tail: usize,
    filetype: bool,
    blocks: Vec<Vec<u8>>,
    block: Vec<u8>,
    /// Where the next entry goes in `block`, and where the last one written starts.
    at: usize,
    last: Option<usize>,
}

impl Leaves {
    fn new(fs: &Fs) -> Leaves {
        let bs = fs.blocksize;
        Leaves {
            bs,
            tail: if fs.has_csum() { 12 } else { 0 },
            filetype: fs.has_filetype(),
            blocks: Vec::new(),
            block: vec![0u8; bs],
            at: 0,
            last: None,
        }
    }

    /// True if an entry named `name` does not fit in the current block.
    fn full(&self, name: &[u8]) -> bool {
        self.at + rec_len(name.len()) > self.bs - self.tail
    }

    /// Ends the current block and starts a new one.
    fn next_block(&mut self) {
        let done = std::mem::replace(&mut self.block, vec![0u8; self.bs]);
        self.blocks.push(close_block(done, self.last, self.tail));
        self.at = 0;
        self.last = None;
    }

    /// Adds an entry, in a new block if the current one is full.
    fn put(&mut self, name: &[u8], ino: u32, ftype: u8) {
        if self.full(name) {
            self.next_block();
        }
        let need = rec_len(name.len());
        let b = &mut self.block[self.at..self.at + need];
        b[0..4].copy_from_slice(&ino.to_le_bytes());
        b[4..6].copy_from_slice(&(need as u16).to_le_bytes());
        b[6] = name.len() as u8;
        b[7] = if self.filetype { ftype } else { 0 };
        b[8..8 + name.len()].copy_from_slice(name);
        self.last = Some(self.at);
        self.at += need;
    }

    /// The blocks, the current one ended.
    fn finish(mut self) -> Vec<Vec<u8>> {
        self.next_block();
        self.blocks
    }
}

/// Stretches the last entry of a block to the end of its room and adds the checksum tail.
fn close_block(mut block: Vec<u8>, last: Option<usize>, tail: usize) -> Vec<u8> {
    let room = block.len() - tail;
    match last {
        Some(l) => {
            let len = (room - l) as u16;
            block[l + 4..l + 6].copy_from_slice(&len.to_le_bytes());
        }
        None => {
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
    block
}

/// Writes directory `ino` holding `d`'s entries: one block as a linear directory; more, on a
/// filesystem with `dir_index`, as a hash-indexed directory ([`htree`]) the kernel and every
/// reader look names up in without scanning.
fn write_dir(fs: &mut Fs, ino: u32, d: &Dir) -> Result<()> {
    let bs = fs.blocksize;
    let mut linear = Leaves::new(fs);
    linear.put(b".", ino, 2);
    linear.put(b"..", d.parent, 2);
    for (name, e_ino, ftype) in d.entries.iter().flatten() {
        linear.put(name, *e_ino, *ftype);
    }
    let mut blocks = linear.finish();
    let mut indexed = false;
    if blocks.len() > 1
        && fs.has_dir_index()
        && let Some(tree) = htree(fs, ino, d)?
    {
        blocks = tree;
        indexed = true;
    }
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
    if indexed {
        inode.set_flags(inode.flags() | INDEX_FL);
    } else {
        inode.set_flags(inode.flags() & !INDEX_FL);
    }
    fs.write_inode(ino, &inode)
}

/// The blocks of directory `ino` as an HTree: block 0 the root (`.`, `..` and the index),
/// then, when the leaves outnumber what the root indexes, one level of index nodes, then
/// the leaves holding the entries in hash order. `None` when the directory needs more than
/// two index levels (the `largedir` feature, which this writer does not set): it stays
/// linear.
fn htree(fs: &Fs, ino: u32, d: &Dir) -> Result<Option<Vec<Vec<u8>>>> {
    let bs = fs.blocksize;
    let csum = if fs.has_csum() { 8 } else { 0 };
    let (version, seed) = fs.hash_params();
    let mut hashed: Vec<(u32, u32, &[u8], u32, u8)> = Vec::with_capacity(d.entries.len());
    for (name, e_ino, ftype) in d.entries.iter().flatten() {
        let (hash, minor) = fs.dirhash(version, &seed, name)?;
        hashed.push((hash, minor, name, *e_ino, *ftype));
    }
    hashed.sort_unstable_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
    // The leaves, and the hash each starts at (odd when it continues the previous leaf's
    // last hash: a collision the lookup must follow into this block).
    let mut leaves = Leaves::new(fs);
    let mut starts: Vec<u32> = vec![0];
    let mut prev: Option<u32> = None;
    for (hash, _, name, e_ino, ftype) in &hashed {
        if leaves.full(name) {
            leaves.next_block();
            starts.push(if prev == Some(*hash) { hash | 1 } else { *hash });
        }
        leaves.put(name, *e_ino, *ftype);
        prev = Some(*hash);
    }
    let leaves = leaves.finish();
    let root_limit = (bs - 32 - csum) / 8;
    let node_limit = (bs - 8 - csum) / 8;
    let levels = if leaves.len() <= root_limit {
        0
    } else if leaves.len() <= root_limit * node_limit {
        1
    } else {
        return Ok(None);
    };
    let mut root = vec![0u8; bs];
    let dot = |b: &mut [u8], at: usize, ino: u32, name: &[u8], len: u16| {
        b[at..at + 4].copy_from_slice(&ino.to_le_bytes());
        b[at + 4..at + 6].copy_from_slice(&len.to_le_bytes());
        b[at + 6] = name.len() as u8;
        b[at + 7] = 2;
        b[at + 8..at + 8 + name.len()].copy_from_slice(name);
    };
    dot(&mut root, 0, ino, b".", 12);
    dot(&mut root, 12, d.parent, b"..", (bs - 12) as u16);
    // dx_root_info: reserved, hash version, info length 8, indirect levels, flags.
    root[28] = version as u8;
    root[29] = 8;
    root[30] = levels;
    let mut blocks = Vec::new();
    if levels == 0 {
        let children: Vec<(u32, u32)> = starts
            .iter()
            .enumerate()
            .map(|(i, h)| (*h, 1 + i as u32))
            .collect();
        put_index(&mut root, 32, root_limit, &children);
        blocks.push(root);
        blocks.extend(leaves);
    } else {
        let nodes = leaves.len().div_ceil(node_limit);
        let first_leaf = 1 + nodes as u32;
        let mut root_children = Vec::new();
        let mut node_blocks = Vec::new();
        for n in 0..nodes {
            let range = n * node_limit..((n + 1) * node_limit).min(leaves.len());
            let children: Vec<(u32, u32)> = range
                .clone()
                .map(|i| (starts[i], first_leaf + i as u32))
                .collect();
            root_children.push((starts[range.start], 1 + n as u32));
            let mut node = vec![0u8; bs];
            // A fake entry spanning the block hides the index from linear readers.
            node[4..6].copy_from_slice(&(bs as u16).to_le_bytes());
            put_index(&mut node, 8, node_limit, &children);
            node_blocks.push(node);
        }
        put_index(&mut root, 32, root_limit, &root_children);
        blocks.push(root);
        blocks.extend(node_blocks);
        blocks.extend(leaves);
    }
    Ok(Some(blocks))
}

/// Writes an index (`limit`, `count`, then `(hash, block)` pairs, the first hash implied)
/// at byte `at` of an index block.
fn put_index(b: &mut [u8], at: usize, limit: usize, children: &[(u32, u32)]) {
    b[at..at + 2].copy_from_slice(&(limit as u16).to_le_bytes());
    b[at + 2..at + 4].copy_from_slice(&(children.len() as u16).to_le_bytes());
    for (i, (hash, block)) in children.iter().enumerate() {
        let e = at + 8 * i;
        if i > 0 {
            b[e..e + 4].copy_from_slice(&hash.to_le_bytes());
        }
        b[e + 4..e + 8].copy_from_slice(&block.to_le_bytes());
    }
}
