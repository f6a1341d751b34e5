//! Reading a file's data out of the ext4 in a disk chain by inode number: superblock, group
//! descriptor, inode, extent tree, then the data in runs as long as its extents. It is the
//! read-back's content reader ([`crate::verify`]): written apart from both libext2fs (which
//! wrote the filesystem) and `ext4-view` (which reads metadata by path), and fast, since it
//! reads whole extents instead of one block per call after a lookup per path component.

use std::collections::BTreeMap;
use std::io::{self, Read};

use crate::vmdk::chain::Chain;

fn bad(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("ext4: {what}"))
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The magic of an extended-attribute area (in the inode) or block.
const XATTR_MAGIC: u32 = 0xea02_0000;

/// The name prefixes of extended-attribute name indexes.
fn xattr_prefix(index: u8) -> Option<&'static str> {
    Some(match index {
        0 => "",
        1 => "user.",
        2 => "system.posix_acl_access",
        3 => "system.posix_acl_default",
        4 => "trusted.",
        6 => "security.",
        7 => "system.",
        8 => "system.richacl",
        _ => return None,
    })
}

/// Reads the attribute entries of `area` from byte `at` on (values at offsets into `values`)
/// into `out`.
fn read_entries(
    area: &[u8],
    mut at: usize,
    values: &[u8],
    out: &mut BTreeMap<String, Vec<u8>>,
) -> io::Result<()> {
    while at + 16 <= area.len() && u32_at(area, at) != 0 {
        let name_len = usize::from(area[at]);
        let prefix = xattr_prefix(area[at + 1])
            .ok_or_else(|| bad(format!("unknown attribute name index {}", area[at + 1])))?;
        let offs = usize::from(u16_at(area, at + 2));
        let inum = u32_at(area, at + 4);
        let size = u32_at(area, at + 8) as usize;
        let name_end = at + 16 + name_len;
        if name_end > area.len() || inum != 0 || offs + size > values.len() {
            return Err(bad("a bad extended-attribute entry"));
        }
        let name = format!(
            "{prefix}{}",
            String::from_utf8_lossy(&area[at + 16..name_end])
        );
        out.insert(name, values[offs..offs + size].to_vec());
        at = (name_end + 3) & !3;
    }
    Ok(())
}

/// Extent trees deeper than this are refused (ext4 stops at 5).
const MAX_DEPTH: u16 = 5;

/// The layout facts needed to find inodes.
#[derive(Debug)]
pub struct Layout<'a> {
    chain: &'a Chain,
    block_size: u64,
    inodes_per_group: u32,
    inode_size: usize,
    desc_size: usize,
    gdt: u64,
}

/// One extent: logical block, physical block, length in blocks, and whether it holds data
/// (an uninitialised extent reads as zeros).
#[derive(Debug, Clone, Copy)]
struct Extent {
    logical: u64,
    physical: u64,
    len: u64,
    written: bool,
}

/// A regular file found by inode number.
#[derive(Debug)]
pub struct FileData<'a> {
    layout: &'a Layout<'a>,
    /// Its size in bytes.
    pub size: u64,
    extents: Vec<Extent>,
}

impl<'a> Layout<'a> {
    /// Reads the superblock of the ext4 in `chain`.
    pub fn load(chain: &'a Chain) -> io::Result<Layout<'a>> {
        let mut sb = [0u8; 1024];
        chain.read_at(1024, &mut sb)?;
        if u16_at(&sb, 0x38) != 0xef53 {
            return Err(bad("no superblock"));
        }
        let log = u32_at(&sb, 0x18);
        if log > 6 {
            return Err(bad(format!("block size 2^{} KiB", log)));
        }
        let block_size = 1024u64 << log;
        let incompat = u32_at(&sb, 0x60);
        let desc_size = if incompat & 0x80 != 0 {
            usize::from(u16_at(&sb, 0xfe)).max(32)
        } else {
            32
        };
        let inode_size = if u32_at(&sb, 0x4c) == 0 {
            128
        } else {
            usize::from(u16_at(&sb, 0x58))
        };
        let inodes_per_group = u32_at(&sb, 0x28);
        if inodes_per_group == 0 || inode_size < 128 {
            return Err(bad("bad inode geometry"));
        }
        Ok(Layout {
            chain,
            block_size,
            inodes_per_group,
            inode_size,
            desc_size,
            gdt: (u64::from(u32_at(&sb, 0x14)) + 1) * block_size,
        })
    }

    fn read(&self, at: u64, buf: &mut [u8]) -> io::Result<()> {
        self.chain.read_at(at, buf)
    }

    /// The bytes of inode `ino`, as long as the filesystem's inodes.
    pub fn inode(&self, ino: u32) -> io::Result<Vec<u8>> {
        let index = ino.checked_sub(1).ok_or_else(|| bad("inode 0"))?;
        let group = u64::from(index / self.inodes_per_group);
        let mut desc = vec![0u8; self.desc_size];
        self.read(self.gdt + group * self.desc_size as u64, &mut desc)?;
        let mut table = u64::from(u32_at(&desc, 0x08));
        if self.desc_size >= 64 {
            table |= u64::from(u32_at(&desc, 0x28)) << 32;
        }
        let within = u64::from(index % self.inodes_per_group) * self.inode_size as u64;
        let mut inode = vec![0u8; self.inode_size];
        self.read(table * self.block_size + within, &mut inode)?;
        Ok(inode)
    }

    /// The extended attributes of inode `ino`, in the inode and in its attribute block, by
    /// full name (`user.x`; POSIX ACLs as `system.posix_acl_access` / `_default`, their values
    /// in ext4's own encoding).
    pub fn xattrs(&self, ino: u32) -> io::Result<BTreeMap<String, Vec<u8>>> {
        let inode = self.inode(ino)?;
        let mut out = BTreeMap::new();
        if inode.len() > 132 {
            let start = 128 + usize::from(u16_at(&inode, 128));
            if start + 4 <= inode.len() && u32_at(&inode, start) == XATTR_MAGIC {
                // Values are placed relative to the first entry.
                let region = &inode[start + 4..];
                read_entries(region, 0, region, &mut out)?;
            }
        }
        let block = u64::from(u32_at(&inode, 104)) | u64::from(u16_at(&inode, 118)) << 32;
        if block != 0 {
            let mut b = vec![0u8; self.block_size as usize];
            self.read(block * self.block_size, &mut b)?;
            if u32_at(&b, 0) != XATTR_MAGIC {
                return Err(bad(format!("inode {ino}: bad attribute block {block}")));
            }
            read_entries(&b, 32, &b, &mut out)?;
        }
        Ok(out)
    }

    /// The device numbers `(major, minor)` of device inode `ino`.
    pub fn device(&self, ino: u32) -> io::Result<(u32, u32)> {
        let inode = self.inode(ino)?;
        let old = u32_at(&inode, 40);
        if old != 0 {
            return Ok(((old >> 8) & 0xff, old & 0xff));
        }
        let new = u32_at(&inode, 44);
        Ok(((new & 0xfff00) >> 8, (new & 0xff) | ((new >> 12) & 0xfff00)))
    }

    /// The data of regular file `ino`.
    pub fn file(&self, ino: u32) -> io::Result<FileData<'_>> {
        let inode = self.inode(ino)?;
        let mode = u16_at(&inode, 0);
        let size = u64::from(u32_at(&inode, 4)) | u64::from(u32_at(&inode, 108)) << 32;
        let flags = u32_at(&inode, 32);
        if mode & 0o170000 != 0o100000 {
            return Err(bad(format!("inode {ino} is not a regular file")));
        }
        let mut extents = Vec::new();
        if size > 0 {
            if flags & 0x0008_0000 == 0 {
                return Err(bad(format!("inode {ino} does not use extents")));
            }
            self.walk(&inode[40..100], MAX_DEPTH, &mut extents)?;
        }
        extents.sort_by_key(|e| e.logical);
        Ok(FileData {
            layout: self,
            size,
            extents,
        })
    }

    /// Collects the leaf extents of the tree node `node` (an extent header and entries).
    fn walk(&self, node: &[u8], depth_left: u16, out: &mut Vec<Extent>) -> io::Result<()> {
        if node.len() < 12 || u16_at(node, 0) != 0xf30a {
            return Err(bad("bad extent header"));
        }
        let entries = usize::from(u16_at(node, 2));
        let depth = u16_at(node, 6);
        if depth > depth_left || 12 + entries * 12 > node.len() {
            return Err(bad("bad extent tree"));
        }
        for i in 0..entries {
            let e = &node[12 + 12 * i..24 + 12 * i];
            if depth == 0 {
                let raw_len = u16_at(e, 4);
                let (len, written) = if raw_len > 32768 {
                    (raw_len - 32768, false)
                } else {
                    (raw_len, true)
                };
                out.push(Extent {
                    logical: u64::from(u32_at(e, 0)),
                    physical: u64::from(u32_at(e, 8)) | u64::from(u16_at(e, 6)) << 32,
                    len: u64::from(len),
                    written,
                });
            } else {
                let child = u64::from(u32_at(e, 4)) | u64::from(u16_at(e, 8)) << 32;
                let mut block = vec![0u8; self.block_size as usize];
                self.read(child * self.block_size, &mut block)?;
                self.walk(&block, depth - 1, out)?;
            }
        }
        Ok(())
    }
}

impl FileData<'_> {
    /// A reader of the byte ranges `ranges` (offset, length) of the file, one after the
    /// other; holes and unwritten extents read as zeros.
    pub fn reader(&self, ranges: Vec<(u64, u64)>) -> RangeReader<'_> {
        RangeReader {
            file: self,
            ranges,
            next: 0,
            at: 0,
            left: 0,
        }
    }

    /// Fills `buf` with the file's bytes at `offset` (within the file).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let bs = self.layout.block_size;
        let block = offset / bs;
        let within = offset % bs;
        // The extent holding `block`, or the hole before the next one.
        let i = self.extents.partition_point(|e| e.logical + e.len <= block);
        let n = match self.extents.get(i) {
            Some(e) if e.logical <= block => {
                let avail = (e.logical + e.len - block) * bs - within;
                let n = (buf.len() as u64).min(avail) as usize;
                if e.written {
                    let at = (e.physical + block - e.logical) * bs + within;
                    self.layout.read(at, &mut buf[..n])?;
                } else {
                    buf[..n].fill(0);
                }
                n
            }
            Some(e) => {
                let n = (buf.len() as u64).min(e.logical * bs - offset) as usize;
                buf[..n].fill(0);
                n
            }
            None => {
                buf.fill(0);
                buf.len()
            }
        };
        Ok(n)
    }
}

/// Reads byte ranges of a file in order ([`FileData::reader`]).
#[derive(Debug)]
pub struct RangeReader<'a> {
    file: &'a FileData<'a>,
    ranges: Vec<(u64, u64)>,
    next: usize,
    at: u64,
    left: u64,
}

impl Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.left == 0 {
            let Some(&(offset, len)) = self.ranges.get(self.next) else {
                return Ok(0);
            };
            self.next += 1;
            if offset
                .checked_add(len)
                .is_none_or(|end| end > self.file.size)
            {
                return Err(bad("a range past the end of the file"));
            }
            self.at = offset;
            self.left = len;
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.file.read_at(self.at, &mut buf[..want])?;
        self.at += n as u64;
        self.left -= n as u64;
        Ok(n)
    }
}
