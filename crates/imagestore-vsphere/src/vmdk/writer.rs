//! Writing a monolithicSparse disk: header, descriptor, redundant and primary grain
//! directories with every grain table allocated (as VMware and qemu do), then the grains.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

use super::descriptor::Descriptor;
use super::header::Header;
use super::{GRAIN, GRAIN_SECTORS, GTES_PER_GT, SECTOR, bad, grains_of, gts_of};

/// Where a new disk's 64 KiB grains go in its (extent) file, whatever the format: the
/// overlay ([`super::overlay::Overlay`]) places grains and writes their bytes through
/// [`GrainWriter::file`]; the format's tables are written at the end.
pub trait GrainWriter: Send + std::fmt::Debug {
    /// Gives grain `g` a place in the file, in any order, and returns its byte offset there.
    /// Nothing is written: the grain reads as zeros until its bytes are written at that
    /// offset. Fails if `g` is out of range or placed already.
    fn allocate(&mut self, g: u32) -> io::Result<u64>;
    /// The byte offset of grain `g` in the file, if it has been given one.
    fn grain_offset(&self, g: u32) -> Option<u64>;
    /// The file being written.
    fn file(&self) -> &File;
    /// Number of grains placed.
    fn grains(&self) -> usize;
    /// Writes the format's tables and headers and returns the file and its size; the
    /// caller syncs the file before relying on it being on disk.
    fn finish_unsynced(self: Box<Self>) -> io::Result<(File, u64)>;
}

/// Writes a disk grain by grain into a file.
#[derive(Debug)]
pub struct SparseWriter {
    file: File,
    name: String,
    header: Header,
    gt: Vec<u32>,
    next_sector: u64,
    last_grain: Option<u32>,
}

impl SparseWriter {
    /// Starts a disk in `file` (empty, fresh) with `descriptor`; `name` names it in errors.
    pub fn create(file: File, descriptor: &Descriptor, name: &str) -> io::Result<SparseWriter> {
        let capacity = descriptor.capacity;
        let num_gts = gts_of(capacity);
        let gd_sectors = (num_gts * 4).div_ceil(SECTOR);
        let gt_sectors = num_gts * 4;
        let rgd = 1 + 20;
        let gd = rgd + gd_sectors + gt_sectors;
        let end = gd + gd_sectors + gt_sectors;
        let overhead = end.div_ceil(GRAIN_SECTORS) * GRAIN_SECTORS;
        let header = Header::sparse(capacity, rgd, gd, overhead);
        let text = descriptor.to_text();
        if text.len() as u64 > header.descriptor_size * SECTOR {
            return Err(bad(name, "descriptor does not fit in 20 sectors"));
        }
        file.write_all_at(&header.to_bytes(), 0)?;
        let mut desc = vec![0u8; (header.descriptor_size * SECTOR) as usize];
        desc[..text.len()].copy_from_slice(text.as_bytes());
        file.write_all_at(&desc, SECTOR)?;
        Ok(SparseWriter {
            file,
            name: name.to_owned(),
            header,
            gt: vec![0; (num_gts * GTES_PER_GT) as usize],
            next_sector: overhead,
            last_grain: None,
        })
    }

    /// Appends grain `g` (exactly 64 KiB). Grains must come in increasing order.
    pub fn push(&mut self, g: u32, data: &[u8]) -> io::Result<()> {
        if data.len() as u64 != GRAIN {
            return Err(bad(&self.name, "a grain must be 64 KiB"));
        }
        if u64::from(g) >= grains_of(self.header.capacity)
            || self.last_grain.is_some_and(|l| l >= g)
        {
            return Err(bad(&self.name, format!("grain {g} out of range or order")));
        }
        let sector = u32::try_from(self.next_sector)
            .map_err(|_| bad(&self.name, "disk larger than 2 TiB"))?;
        self.file.write_all_at(data, self.next_sector * SECTOR)?;
        self.gt[g as usize] = sector;
        self.next_sector += GRAIN_SECTORS;
        self.last_grain = Some(g);
        Ok(())
    }

    /// Gives grain `g` a place in the file, in any order, and returns its byte offset there.
    /// Nothing is written: the grain reads as zeros until its bytes are written at that
    /// offset (through [`SparseWriter::file`]). Fails if `g` is out of range or placed already.
    pub fn allocate(&mut self, g: u32) -> io::Result<u64> {
        if u64::from(g) >= grains_of(self.header.capacity) || self.gt[g as usize] != 0 {
            return Err(bad(
                &self.name,
                format!("grain {g} out of range or allocated twice"),
            ));
        }
        let sector = u32::try_from(self.next_sector)
            .map_err(|_| bad(&self.name, "disk larger than 2 TiB"))?;
        self.gt[g as usize] = sector;
        self.next_sector += GRAIN_SECTORS;
        self.last_grain = self.last_grain.max(Some(g));
        Ok(u64::from(sector) * SECTOR)
    }

    /// The byte offset of grain `g` in the file, if it has been given one.
    pub fn grain_offset(&self, g: u32) -> Option<u64> {
        match self.gt.get(g as usize) {
            Some(s) if *s != 0 => Some(u64::from(*s) * SECTOR),
            _ => None,
        }
    }

    /// The file being written.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Number of grains written.
    pub fn grains(&self) -> usize {
        self.gt.iter().filter(|s| **s != 0).count()
    }

    /// Writes the grain directories and tables, syncs, and returns the file and its size.
    pub fn finish(self) -> io::Result<(File, u64)> {
        let (file, size) = self.finish_unsynced()?;
        file.sync_all()?;
        Ok((file, size))
    }

    /// [`SparseWriter::finish`] without the sync: the caller syncs the file before relying
    /// on it being on disk.
    pub fn finish_unsynced(self) -> io::Result<(File, u64)> {
        let h = self.header;
        let num_gts = gts_of(h.capacity);
        let gd_sectors = (num_gts * 4).div_ceil(SECTOR);
        let mut tables = Vec::with_capacity(self.gt.len() * 4);
        for s in &self.gt {
            tables.extend_from_slice(&s.to_le_bytes());
        }
        for gd_at in [h.rgd_offset, h.gd_offset] {
            let gts_at = gd_at + gd_sectors;
            let mut gd = vec![0u8; (gd_sectors * SECTOR) as usize];
            for t in 0..num_gts {
                let sector = (gts_at + t * 4) as u32;
                gd[(t * 4) as usize..(t * 4 + 4) as usize].copy_from_slice(&sector.to_le_bytes());
            }
            self.file.write_all_at(&gd, gd_at * SECTOR)?;
            self.file.write_all_at(&tables, gts_at * SECTOR)?;
        }
        let size = self.next_sector * SECTOR;
        self.file.set_len(size)?;
        let mut file = self.file;
        file.flush()?;
        Ok((file, size))
    }
}

impl GrainWriter for SparseWriter {
    fn allocate(&mut self, g: u32) -> io::Result<u64> {
        SparseWriter::allocate(self, g)
    }

    fn grain_offset(&self, g: u32) -> Option<u64> {
        SparseWriter::grain_offset(self, g)
    }

    fn file(&self) -> &File {
        SparseWriter::file(self)
    }

    fn grains(&self) -> usize {
        SparseWriter::grains(self)
    }

    fn finish_unsynced(self: Box<Self>) -> io::Result<(File, u64)> {
        SparseWriter::finish_unsynced(*self)
    }
}

/// The 64 KiB blocks placed in a new native extent, each stored as one run of grains from a
/// position the format counts in its own unit (a sector, a grain index); what the vmfsSparse
/// and seSparse writers share.
#[derive(Debug)]
pub struct Blocks {
    name: String,
    /// Per block: 1 + the position of its run, 0 when not placed.
    at: Vec<u64>,
    next: u64,
    step: u64,
}

impl Blocks {
    /// The blocks of a disk of `capacity` sectors (`name` names it in errors), placed from
    /// position `first` on, `step` units apart.
    pub fn new(capacity: u64, name: &str, first: u64, step: u64) -> Blocks {
        Blocks {
            name: name.to_owned(),
            at: vec![0; grains_of(capacity) as usize],
            next: first,
            step,
        }
    }

    /// Places block `g` at the next position and returns it; fails if `g` is out of range
    /// or placed already.
    pub fn place(&mut self, g: u32) -> io::Result<u64> {
        match self.at.get_mut(g as usize) {
            Some(slot) if *slot == 0 => {
                let pos = self.next;
                *slot = pos + 1;
                self.next += self.step;
                Ok(pos)
            }
            _ => Err(bad(
                &self.name,
                format!("block {g} out of range or allocated twice"),
            )),
        }
    }

    /// The position of block `g`, if placed.
    pub fn position(&self, g: u32) -> Option<u64> {
        self.at.get(g as usize).filter(|p| **p != 0).map(|p| p - 1)
    }

    /// Number of blocks placed.
    pub fn placed(&self) -> usize {
        self.at.iter().filter(|p| **p != 0).count()
    }

    /// The position after the last block placed.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// The name errors use.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The grain tables that hold blocks, `per_table` blocks each: each table's number and,
    /// per block of it, its position if placed.
    pub fn tables(&self, per_table: usize) -> impl Iterator<Item = (usize, Vec<Option<u64>>)> + '_ {
        self.at
            .chunks(per_table)
            .enumerate()
            .filter(|(_, c)| c.iter().any(|p| *p != 0))
            .map(|(t, c)| (t, c.iter().map(|p| p.checked_sub(1)).collect()))
    }
}

/// Gives a finished extent its length and flushes it: its file and size.
pub fn seal(file: File, size: u64) -> io::Result<(File, u64)> {
    file.set_len(size)?;
    let mut file = file;
    file.flush()?;
    Ok((file, size))
}
