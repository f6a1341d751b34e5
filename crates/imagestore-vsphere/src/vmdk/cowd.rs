//! The ESX Server sparse extent (`COWD`, the extent of a `vmfsSparse` delta disk): a
//! 2048-byte header, a grain directory of 32-bit sector numbers of grain tables, and grain
//! tables of 4096 32-bit sector numbers of grains, all little endian. ESXi's own delta disks
//! use 512-byte grains (`grainSize` 1), and so does [`CowdWriter`]: each 64 KiB block this
//! crate writes is 128 grains stored one after another, so the reader maps a file it wrote
//! back onto 64 KiB blocks; a file whose grains of one block are scattered is refused.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::sparse::GrainLoc;
use super::writer::{Blocks, GrainWriter, seal};
use super::{GRAIN, GRAIN_SECTORS, ReadAt, SECTOR, bad, grains_of};

/// `COWD`, as the bytes at the start of the file.
pub const MAGIC: [u8; 4] = *b"COWD";
/// Size of the header in bytes.
pub const HEADER_BYTES: usize = 2048;
/// Grain table entries per grain table.
pub const GTES_PER_GT: u64 = 4096;
/// Sectors per grain in the disks [`CowdWriter`] writes (as ESXi's own).
pub const WRITE_GRAIN_SECTORS: u64 = 1;
/// Largest capacity in sectors (the header's fields are 32 bits).
pub const MAX_CAPACITY: u64 = u32::MAX as u64;

/// The header fields this crate reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CowdHeader {
    /// Capacity in sectors.
    pub capacity: u32,
    /// Sectors per grain.
    pub grain_size: u32,
    /// Sector of the grain directory.
    pub gd_offset: u32,
    /// Entries in the grain directory.
    pub gd_entries: u32,
    /// First sector past the data in use (the file's end).
    pub free_sector: u32,
}

impl CowdHeader {
    /// Grain directory entries a disk of `capacity` sectors with `grain_size` needs.
    pub fn gd_entries_for(capacity: u64, grain_size: u64) -> u64 {
        capacity.div_ceil(GTES_PER_GT * grain_size)
    }

    /// The header as its 2048 bytes: version 1, flags 3, the geometry VMware records for a
    /// disk of this size, generation 1, and nothing else set.
    pub fn to_bytes(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        let mut put = |at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put(4, 1);
        put(8, 3);
        put(12, self.capacity);
        put(16, self.grain_size);
        put(20, self.gd_offset);
        put(24, self.gd_entries);
        put(28, self.free_sector);
        let cylinders = (u64::from(self.capacity) / (255 * 63)).clamp(1, 65535) as u32;
        put(32, cylinders);
        put(36, 255);
        put(40, 63);
        put(1060, 1);
        b[0..4].copy_from_slice(&MAGIC);
        b
    }

    /// Parses and checks a header of a file of `file_len` bytes; `what` names it in errors.
    pub fn parse(b: &[u8; HEADER_BYTES], file_len: u64, what: &str) -> io::Result<CowdHeader> {
        let at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        if b[0..4] != MAGIC {
            return Err(bad(what, "not an ESX sparse extent (no COWD magic)"));
        }
        if at(4) != 1 {
            return Err(bad(what, format!("unsupported COWD version {}", at(4))));
        }
        let h = CowdHeader {
            capacity: at(12),
            grain_size: at(16),
            gd_offset: at(20),
            gd_entries: at(24),
            free_sector: at(28),
        };
        let gs = u64::from(h.grain_size);
        if gs == 0 || !gs.is_power_of_two() || gs > GRAIN_SECTORS {
            return Err(bad(
                what,
                format!(
                    "grain size of {gs} sectors is not supported (a power of two up to {GRAIN_SECTORS})"
                ),
            ));
        }
        if h.capacity == 0 {
            return Err(bad(what, "capacity of 0 sectors"));
        }
        let want = Self::gd_entries_for(u64::from(h.capacity), gs);
        if u64::from(h.gd_entries) != want {
            return Err(bad(
                what,
                format!(
                    "{} grain directory entries where a capacity of {} sectors needs {want}",
                    h.gd_entries, h.capacity
                ),
            ));
        }
        let gd_end = u64::from(h.gd_offset) * SECTOR + u64::from(h.gd_entries) * 4;
        if h.gd_offset < 4 || gd_end > file_len {
            return Err(bad(
                what,
                format!(
                    "grain directory at sector {} lies outside the file",
                    h.gd_offset
                ),
            ));
        }
        Ok(h)
    }
}

fn u32s(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

/// Reads the grain map of the COWD extent `file` as 64 KiB blocks, sorted, with the
/// capacity in sectors; `what` names the extent in errors.
pub fn read_map(file: &dyn ReadAt, what: &str) -> io::Result<(u64, Vec<(u32, GrainLoc)>)> {
    let file_len = file.size()?;
    if file_len < HEADER_BYTES as u64 {
        return Err(bad(what, "shorter than a COWD header"));
    }
    let mut hb = [0u8; HEADER_BYTES];
    file.read_exact_at(&mut hb, 0)?;
    let h = CowdHeader::parse(&hb, file_len, what)?;
    let capacity = u64::from(h.capacity);
    let gs = u64::from(h.grain_size);
    let per_block = GRAIN_SECTORS / gs;
    let mut gd = vec![0u8; h.gd_entries as usize * 4];
    file.read_exact_at(&mut gd, u64::from(h.gd_offset) * SECTOR)?;
    let blocks = grains_of(capacity);
    let mut out = Vec::new();
    let mut gt = vec![0u8; (GTES_PER_GT * 4) as usize];
    let mut entries = Vec::with_capacity(GTES_PER_GT as usize);
    for (t, gt_sector) in u32s(&gd).enumerate() {
        if gt_sector == 0 {
            continue;
        }
        let gt_at = u64::from(gt_sector) * SECTOR;
        if gt_at + GTES_PER_GT * 4 > file_len {
            return Err(bad(
                what,
                format!("grain table {t} at sector {gt_sector} lies past the end of the file"),
            ));
        }
        file.read_exact_at(&mut gt, gt_at)?;
        entries.clear();
        entries.extend(u32s(&gt));
        // The table covers whole 64 KiB blocks: 4096 grains of a power of two up to 128
        // sectors.
        let first_sector = t as u64 * GTES_PER_GT * gs;
        for (i, run) in entries.chunks(per_block as usize).enumerate() {
            let block = first_sector / GRAIN_SECTORS + i as u64;
            if block >= blocks {
                break;
            }
            // Grains past the end of the disk in its last block are never read.
            let in_disk = (capacity - block * GRAIN_SECTORS)
                .div_ceil(gs)
                .min(per_block) as usize;
            let run = &run[..in_disk];
            if run.iter().all(|s| *s == 0) {
                continue;
            }
            let start = u64::from(run[0]);
            let contiguous = run
                .iter()
                .enumerate()
                .all(|(k, s)| u64::from(*s) == start + k as u64 * gs);
            if !contiguous || start == 0 {
                return Err(bad(
                    what,
                    format!(
                        "the grains of 64 KiB block {block} are not stored together; only \
                         extents whose blocks are whole runs of grains (as this crate writes \
                         them) can be read"
                    ),
                ));
            }
            if start * SECTOR + GRAIN > file_len {
                return Err(bad(
                    what,
                    format!("block {block} at sector {start} lies past the end of the file"),
                ));
            }
            out.push((block as u32, GrainLoc::At(start)));
        }
    }
    Ok((capacity, out))
}

/// Writes a COWD extent: grains as they are placed (each 64 KiB block as 128 consecutive
/// 512-byte grains), then at [`GrainWriter::finish_unsynced`] the grain tables the blocks
/// need, the grain directory and the header.
#[derive(Debug)]
pub struct CowdWriter {
    file: File,
    capacity: u64,
    /// Each block's first sector.
    blocks: Blocks,
}

impl CowdWriter {
    /// Starts an extent of `capacity` sectors in `file` (empty, fresh); `name` names it in
    /// errors.
    pub fn create(file: File, capacity: u64, name: &str) -> io::Result<CowdWriter> {
        if capacity == 0 || capacity > MAX_CAPACITY {
            return Err(bad(name, format!("capacity of {capacity} sectors")));
        }
        let gd_entries = CowdHeader::gd_entries_for(capacity, WRITE_GRAIN_SECTORS);
        let gd_sectors = (gd_entries * 4).div_ceil(SECTOR);
        // Header (4 sectors), the directory, then grains from a 4 KiB boundary.
        let first = (4 + gd_sectors).div_ceil(8) * 8;
        file.set_len(first * SECTOR)?;
        Ok(CowdWriter {
            file,
            capacity,
            blocks: Blocks::new(capacity, name, first, GRAIN_SECTORS),
        })
    }

    fn sector32(&self, s: u64) -> io::Result<u32> {
        u32::try_from(s).map_err(|_| bad(self.blocks.name(), "extent larger than 2 TiB"))
    }
}

impl GrainWriter for CowdWriter {
    fn allocate(&mut self, g: u32) -> io::Result<u64> {
        self.sector32(self.blocks.next() + GRAIN_SECTORS)?;
        Ok(self.blocks.place(g)? * SECTOR)
    }

    fn grain_offset(&self, g: u32) -> Option<u64> {
        self.blocks.position(g).map(|s| s * SECTOR)
    }

    fn file(&self) -> &File {
        &self.file
    }

    fn grains(&self) -> usize {
        self.blocks.placed()
    }

    fn finish_unsynced(self: Box<Self>) -> io::Result<(File, u64)> {
        let gs = WRITE_GRAIN_SECTORS;
        let gd_entries = CowdHeader::gd_entries_for(self.capacity, gs);
        let blocks_per_gt = (GTES_PER_GT * gs / GRAIN_SECTORS) as usize;
        let mut gd = vec![0u32; gd_entries as usize];
        let mut at = self.blocks.next();
        let mut table = Vec::with_capacity((GTES_PER_GT * 4) as usize);
        for (t, blocks) in self.blocks.tables(blocks_per_gt) {
            table.clear();
            for b in blocks {
                for k in 0..GRAIN_SECTORS / gs {
                    let s = b.map_or(Ok(0), |b| self.sector32(b + k * gs))?;
                    table.extend_from_slice(&s.to_le_bytes());
                }
            }
            table.resize((GTES_PER_GT * 4) as usize, 0);
            self.file.write_all_at(&table, at * SECTOR)?;
            gd[t] = self.sector32(at)?;
            at += GTES_PER_GT * 4 / SECTOR;
        }
        let gd_bytes: Vec<u8> = gd.iter().flat_map(|s| s.to_le_bytes()).collect();
        self.file.write_all_at(&gd_bytes, 4 * SECTOR)?;
        let header = CowdHeader {
            capacity: self.capacity as u32,
            grain_size: gs as u32,
            gd_offset: 4,
            gd_entries: gd_entries as u32,
            free_sector: self.sector32(at)?,
        };
        self.file.write_all_at(&header.to_bytes(), 0)?;
        seal(self.file, at * SECTOR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_bad_headers_are_refused() -> io::Result<()> {
        let h = CowdHeader {
            capacity: 1 << 21,
            grain_size: 1,
            gd_offset: 4,
            gd_entries: 512,
            free_sector: 100,
        };
        let b = h.to_bytes();
        assert_eq!(&b[0..4], b"COWD");
        assert_eq!(CowdHeader::parse(&b, 1 << 20, "t")?, h);
        let mut wrong = b;
        wrong[24] = 7; // directory size that does not match the capacity
        assert!(CowdHeader::parse(&wrong, 1 << 20, "t").is_err());
        let mut wrong = b;
        wrong[16] = 3; // grain size not a power of two
        assert!(CowdHeader::parse(&wrong, 1 << 20, "t").is_err());
        // A directory past the end of the file.
        assert!(CowdHeader::parse(&b, 4095, "t").is_err());
        assert!(CowdHeader::parse(&b, 4096, "t").is_ok());
        Ok(())
    }
}
