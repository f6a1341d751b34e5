//! The SEsparse extent (the extent of a `seSparse` delta disk, VMFS 6's delta format). VMware
//! publishes no specification; the layout here is what QEMU's reader (`block/vmdk.c`) checks
//! and reads, and the reader here is as strict as QEMU's:
//!
//! * sector 0, the constant header (64-bit little-endian fields): magic `0xcafebabe`,
//!   version `0x0000000200000001`, capacity in sectors, grain size 8 sectors (4 KiB), grain
//!   table size 64 sectors (4096 entries of 8 bytes, covering 16 MiB), flags 0, four reserved
//!   zeros, then (offset, size) in sectors of the volatile header, journal header, journal,
//!   grain directory, grain tables, free bitmap, backmap and grains; the rest zero;
//! * the volatile header: magic `0xcafecafe`, the number of grain tables in use, the next
//!   transaction number, and "replay journal" 0;
//! * a directory entry is 0 (no table) or `0x1000_0000 << 32 | table index`, the table at
//!   `grain tables + index × 64` sectors;
//! * a table entry is 0 (read the parent), `0x1…`/`0x2…` in the top nibble for a zeroed
//!   grain, or `0x3…` for a stored grain whose index `i` (the grain at `grains + i × 8`) is
//!   split: its low 12 bits in bits 48–59, the rest in bits 0–47.
//!
//! [`SeSparseWriter`] puts the grain tables region (sized for the whole disk, as a file of
//! holes) before the grains, stores each 64 KiB block as 16 grains with consecutive indexes,
//! and writes the journal, free bitmap and backmap regions empty. The reader maps a file back
//! onto 64 KiB blocks; a block whose grains are scattered or partly zeroed is refused.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::sparse::GrainLoc;
use super::writer::{Blocks, GrainWriter, seal};
use super::{GRAIN, GRAIN_SECTORS, ReadAt, SECTOR, bad, grains_of};

/// Magic of the constant header.
pub const CONST_MAGIC: u64 = 0xcafe_babe;
/// Magic of the volatile header.
pub const VOLATILE_MAGIC: u64 = 0xcafe_cafe;
/// The only version known.
pub const VERSION: u64 = 0x0000_0002_0000_0001;
/// Sectors per grain.
pub const GRAIN_SIZE: u64 = 8;
/// Sectors per grain table.
pub const GT_SECTORS: u64 = 64;
/// Entries per grain table.
pub const GTES_PER_GT: u64 = GT_SECTORS * SECTOR / 8;
/// Sectors one grain table covers (16 MiB).
pub const GT_COVERS: u64 = GTES_PER_GT * GRAIN_SIZE;
/// Largest capacity this crate reads or writes, in sectors (2 TiB).
pub const MAX_CAPACITY: u64 = 1 << 32;
/// Grains per 64 KiB block.
const PER_BLOCK: u64 = GRAIN_SECTORS / GRAIN_SIZE;
/// Top bits of an allocated directory entry.
const GD_ALLOCATED: u64 = 0x1000_0000_0000_0000;
/// Top nibble of a stored grain's table entry.
const GTE_STORED: u64 = 0x3000_0000_0000_0000;

/// The regions of an SEsparse extent, in sectors (offset, size), and its capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConstHeader {
    /// Capacity in sectors.
    pub capacity: u64,
    /// The volatile header.
    pub volatile: (u64, u64),
    /// The journal header.
    pub journal_header: (u64, u64),
    /// The journal.
    pub journal: (u64, u64),
    /// The grain directory.
    pub grain_dir: (u64, u64),
    /// The grain tables.
    pub grain_tables: (u64, u64),
    /// The free bitmap.
    pub free_bitmap: (u64, u64),
    /// The backmap.
    pub backmap: (u64, u64),
    /// The grains.
    pub grains: (u64, u64),
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

impl ConstHeader {
    fn regions(&self) -> [(u64, u64); 8] {
        [
            self.volatile,
            self.journal_header,
            self.journal,
            self.grain_dir,
            self.grain_tables,
            self.free_bitmap,
            self.backmap,
            self.grains,
        ]
    }

    /// The header as its 512 bytes.
    pub fn to_bytes(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        let fixed = [
            CONST_MAGIC,
            VERSION,
            self.capacity,
            GRAIN_SIZE,
            GT_SECTORS,
            0,
            0,
            0,
            0,
            0,
        ];
        let regions = self.regions().into_iter().flat_map(|(o, s)| [o, s]);
        for (i, v) in fixed.into_iter().chain(regions).enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// Parses and checks the header of a file of `file_len` bytes; `what` names it.
    pub fn parse(b: &[u8; 512], file_len: u64, what: &str) -> io::Result<ConstHeader> {
        if u64_at(b, 0) != CONST_MAGIC {
            return Err(bad(what, "not an SEsparse extent (bad magic)"));
        }
        let expect = [
            (8, VERSION, "version"),
            (24, GRAIN_SIZE, "grain size"),
            (32, GT_SECTORS, "grain table size"),
            (40, 0, "flags"),
        ];
        for (at, want, name) in expect {
            let got = u64_at(b, at);
            if got != want {
                return Err(bad(
                    what,
                    format!("unsupported {name} {got:#x} (only {want:#x})"),
                ));
            }
        }
        if b[48..80].iter().chain(&b[208..]).any(|x| *x != 0) {
            return Err(bad(what, "reserved header bytes are not zero"));
        }
        let r = |i: usize| (u64_at(b, 80 + i * 16), u64_at(b, 88 + i * 16));
        let h = ConstHeader {
            capacity: u64_at(b, 16),
            volatile: r(0),
            journal_header: r(1),
            journal: r(2),
            grain_dir: r(3),
            grain_tables: r(4),
            free_bitmap: r(5),
            backmap: r(6),
            grains: r(7),
        };
        if h.capacity == 0 || h.capacity > MAX_CAPACITY {
            return Err(bad(what, format!("capacity of {} sectors", h.capacity)));
        }
        let file_sectors = file_len / SECTOR;
        for (name, (o, s)) in [
            ("volatile header", h.volatile),
            ("grain directory", h.grain_dir),
            ("grain tables", h.grain_tables),
        ] {
            if o.checked_add(s).is_none_or(|end| end > file_sectors) || s == 0 {
                return Err(bad(
                    what,
                    format!("{name} ({s} sectors at {o}) lies outside the file"),
                ));
            }
        }
        if h.grain_dir.1 * SECTOR / 8 < h.capacity.div_ceil(GT_COVERS) {
            return Err(bad(what, "grain directory too small for the capacity"));
        }
        Ok(h)
    }
}

/// Reads the grain map of the SEsparse extent `file` as 64 KiB blocks, sorted, with the
/// capacity in sectors; `what` names the extent in errors.
pub fn read_map(file: &dyn ReadAt, what: &str) -> io::Result<(u64, Vec<(u32, GrainLoc)>)> {
    let file_len = file.size()?;
    if file_len < SECTOR {
        return Err(bad(what, "shorter than an SEsparse header"));
    }
    let mut hb = [0u8; 512];
    file.read_exact_at(&mut hb, 0)?;
    let h = ConstHeader::parse(&hb, file_len, what)?;
    let mut vb = [0u8; 512];
    file.read_exact_at(&mut vb, h.volatile.0 * SECTOR)?;
    if u64_at(&vb, 0) != VOLATILE_MAGIC {
        return Err(bad(what, "bad volatile header magic"));
    }
    if u64_at(&vb, 24) != 0 {
        return Err(bad(what, "the journal must be replayed first (dirty disk)"));
    }
    let tables = h.capacity.div_ceil(GT_COVERS);
    let mut gd = vec![0u8; (tables * 8) as usize];
    file.read_exact_at(&mut gd, h.grain_dir.0 * SECTOR)?;
    let blocks = grains_of(h.capacity);
    let mut out = Vec::new();
    let mut gt = vec![0u8; (GT_SECTORS * SECTOR) as usize];
    for (t, e) in gd.chunks_exact(8).map(|c| u64_at(c, 0)).enumerate() {
        if e == 0 {
            continue;
        }
        if e & 0xffff_ffff_0000_0000 != GD_ALLOCATED {
            return Err(bad(what, format!("bad grain directory entry {t}: {e:#x}")));
        }
        let index = e & 0xffff_ffff;
        if index >= h.grain_tables.1 / GT_SECTORS {
            return Err(bad(
                what,
                format!("grain table {index} lies outside the tables region"),
            ));
        }
        file.read_exact_at(&mut gt, (h.grain_tables.0 + index * GT_SECTORS) * SECTOR)?;
        let entries: Vec<u64> = gt.chunks_exact(8).map(|c| u64_at(c, 0)).collect();
        for (i, run) in entries.chunks(PER_BLOCK as usize).enumerate() {
            let block = t as u64 * (GT_COVERS / GRAIN_SECTORS) + i as u64;
            if block >= blocks {
                break;
            }
            if let Some(loc) = block_loc(run, &h, file_len, block, what)? {
                out.push((block as u32, loc));
            }
        }
    }
    Ok((h.capacity, out))
}

/// Where the 16 grains `run` of 64 KiB block `block` are: nowhere (all read the parent),
/// zeroed, or stored as one run.
fn block_loc(
    run: &[u64],
    h: &ConstHeader,
    file_len: u64,
    block: u64,
    what: &str,
) -> io::Result<Option<GrainLoc>> {
    let kind = |e: u64| e >> 60;
    let scattered = || {
        bad(
            what,
            format!(
                "the grains of 64 KiB block {block} are not one run of stored grains; only \
                 extents written in whole 64 KiB blocks (as this crate writes them) can be read"
            ),
        )
    };
    match kind(run[0]) {
        0 if run.iter().all(|e| *e == 0) => Ok(None),
        1 | 2 if run.iter().all(|e| matches!(kind(*e), 1 | 2)) => Ok(Some(GrainLoc::Zero)),
        3 => {
            let index =
                |e: u64| ((e & 0x0fff_0000_0000_0000) >> 48) | ((e & 0x0000_ffff_ffff_ffff) << 12);
            let first = index(run[0]);
            if !run
                .iter()
                .enumerate()
                .all(|(k, e)| kind(*e) == 3 && index(*e) == first + k as u64)
            {
                return Err(scattered());
            }
            let sector = first
                .checked_mul(GRAIN_SIZE)
                .and_then(|s| s.checked_add(h.grains.0))
                .filter(|s| s.checked_mul(SECTOR).is_some_and(|b| b + GRAIN <= file_len))
                .ok_or_else(|| {
                    bad(
                        what,
                        format!("block {block} (grain {first}) lies past the end of the file"),
                    )
                })?;
            Ok(Some(GrainLoc::At(sector)))
        }
        _ => Err(scattered()),
    }
}

/// A table entry for stored grain `index`.
pub fn stored_entry(index: u64) -> u64 {
    GTE_STORED | ((index & 0xfff) << 48) | (index >> 12)
}

/// Writes an SEsparse extent: headers and the (empty) directory and tables regions first,
/// grains as they are placed, and at [`GrainWriter::finish_unsynced`] the tables the blocks
/// need, the directory, the free bitmap and backmap regions, and the headers.
#[derive(Debug)]
pub struct SeSparseWriter {
    file: File,
    header: ConstHeader,
    /// Each block's first grain index.
    blocks: Blocks,
}

impl SeSparseWriter {
    /// Starts an extent of `capacity` sectors in `file` (empty, fresh); `name` names it.
    pub fn create(file: File, capacity: u64, name: &str) -> io::Result<SeSparseWriter> {
        if capacity == 0 || capacity > MAX_CAPACITY {
            return Err(bad(name, format!("capacity of {capacity} sectors")));
        }
        let tables = capacity.div_ceil(GT_COVERS);
        let gd_sectors = (tables * 8).div_ceil(SECTOR);
        let align = |s: u64| s.div_ceil(GRAIN_SIZE) * GRAIN_SIZE;
        let grain_dir = (GRAIN_SIZE, gd_sectors);
        let grain_tables = (align(grain_dir.0 + gd_sectors), tables * GT_SECTORS);
        let grains_at =
            align(grain_tables.0 + grain_tables.1).div_ceil(GRAIN_SECTORS) * GRAIN_SECTORS;
        let header = ConstHeader {
            capacity,
            volatile: (1, 1),
            journal_header: (2, 1),
            journal: (3, 1),
            grain_dir,
            grain_tables,
            grains: (grains_at, 0),
            ..ConstHeader::default()
        };
        file.set_len(grains_at * SECTOR)?;
        Ok(SeSparseWriter {
            file,
            header,
            blocks: Blocks::new(capacity, name, 0, PER_BLOCK),
        })
    }
}

impl GrainWriter for SeSparseWriter {
    fn allocate(&mut self, g: u32) -> io::Result<u64> {
        let first = self.blocks.place(g)?;
        Ok((self.header.grains.0 + first * GRAIN_SIZE) * SECTOR)
    }

    fn grain_offset(&self, g: u32) -> Option<u64> {
        self.blocks
            .position(g)
            .map(|i| (self.header.grains.0 + i * GRAIN_SIZE) * SECTOR)
    }

    fn file(&self) -> &File {
        &self.file
    }

    fn grains(&self) -> usize {
        self.blocks.placed()
    }

    fn finish_unsynced(self: Box<Self>) -> io::Result<(File, u64)> {
        let mut h = self.header;
        let blocks_per_gt = (GT_COVERS / GRAIN_SECTORS) as usize;
        let mut gd = vec![0u8; (h.grain_dir.1 * SECTOR) as usize];
        let mut used = 0u64;
        let mut table = Vec::with_capacity((GT_SECTORS * SECTOR) as usize);
        for (t, blocks) in self.blocks.tables(blocks_per_gt) {
            table.clear();
            for b in blocks {
                for k in 0..PER_BLOCK {
                    let e = b.map_or(0, |b| stored_entry(b + k));
                    table.extend_from_slice(&e.to_le_bytes());
                }
            }
            table.resize((GT_SECTORS * SECTOR) as usize, 0);
            self.file
                .write_all_at(&table, (h.grain_tables.0 + used * GT_SECTORS) * SECTOR)?;
            gd[t * 8..t * 8 + 8].copy_from_slice(&(GD_ALLOCATED | used).to_le_bytes());
            used += 1;
        }
        self.file.write_all_at(&gd, h.grain_dir.0 * SECTOR)?;
        h.grains.1 = self.blocks.next() * GRAIN_SIZE;
        let end = h.grains.0 + h.grains.1;
        // One bit per grain table, and one 8-byte entry per stored grain, left empty.
        h.free_bitmap = (end, (h.grain_tables.1 / GT_SECTORS).div_ceil(8 * SECTOR));
        h.backmap = (
            h.free_bitmap.0 + h.free_bitmap.1,
            (self.blocks.next() * 8).div_ceil(SECTOR).max(1),
        );
        let end = h.backmap.0 + h.backmap.1;
        let mut volatile = [0u8; 512];
        volatile[0..8].copy_from_slice(&VOLATILE_MAGIC.to_le_bytes());
        volatile[8..16].copy_from_slice(&used.to_le_bytes());
        volatile[16..24].copy_from_slice(&1u64.to_le_bytes());
        self.file.write_all_at(&volatile, h.volatile.0 * SECTOR)?;
        self.file.write_all_at(&h.to_bytes(), 0)?;
        seal(self.file, end * SECTOR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grain_entries_split_the_index_as_qemu_reads_it() {
        assert_eq!(stored_entry(0), 0x3000_0000_0000_0000);
        assert_eq!(stored_entry(5), 0x3005_0000_0000_0000);
        assert_eq!(stored_entry(0x1234_5678), 0x3678_0000_0001_2345);
    }

    #[test]
    fn headers_round_trip_and_bad_headers_are_refused() -> io::Result<()> {
        let h = ConstHeader {
            capacity: 1 << 21,
            volatile: (1, 1),
            journal_header: (2, 1),
            journal: (3, 1),
            grain_dir: (8, 1),
            grain_tables: (16, 64),
            free_bitmap: (200, 1),
            backmap: (201, 1),
            grains: (128, 72),
        };
        let b = h.to_bytes();
        assert_eq!(ConstHeader::parse(&b, 1 << 20, "t")?, h);
        for (at, v) in [
            (0usize, 1u8),
            (8, 2),
            (24, 16),
            (32, 1),
            (40, 1),
            (60, 1),
            (300, 1),
        ] {
            let mut wrong = b;
            wrong[at] = v;
            assert!(
                ConstHeader::parse(&wrong, 1 << 20, "t").is_err(),
                "byte {at}"
            );
        }
        // The tables region past the end of the file.
        assert!(ConstHeader::parse(&b, 40 * 512, "t").is_err());
        Ok(())
    }
}
