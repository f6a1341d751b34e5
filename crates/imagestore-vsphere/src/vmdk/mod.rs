//! The sparse VMDK formats (VMware Virtual Disk Format 1.1), read and written by this crate
//! itself, with parent chains: the hosted "monolithicSparse", ESXi's native delta disks
//! ("vmfsSparse", "seSparse") over a flat "vmfs" base disk, and the stream-optimized variant
//! vSphere imports.
//!
//! * [`header`] — the 512-byte `SparseExtentHeader`;
//! * [`descriptor`] — the text descriptor (`CID`, `parentCID`, `parentFileNameHint`, extent);
//! * [`sparse`] — opening one disk: its grain directory and tables as a grain map;
//! * [`writer`] — writing a monolithicSparse disk from a set of 64 KiB grains, and the
//!   [`writer::GrainWriter`] every format's writer is;
//! * [`format`](mod@format) — the formats layers are written in (`format=`) and the extent kinds;
//! * [`cowd`] — the ESX Server sparse extent of `vmfsSparse` delta disks;
//! * [`sesparse`] — the SEsparse extent of `seSparse` delta disks;
//! * [`chain`] — reading through a disk and its parents;
//! * [`overlay`] — a new disk written block by block over its parent chain;
//! * [`stream`] — writing a flattened stream-optimized disk.

pub mod chain;
pub mod cowd;
pub mod descriptor;
pub mod format;
pub mod header;
pub mod overlay;
pub mod sesparse;
pub mod sparse;
pub mod stream;
pub mod writer;

use std::io;

/// Bytes per sector.
pub const SECTOR: u64 = 512;
/// Sectors per grain (64 KiB grains).
pub const GRAIN_SECTORS: u64 = 128;
/// Bytes per grain.
pub const GRAIN: u64 = GRAIN_SECTORS * SECTOR;
/// Grain table entries per grain table.
pub const GTES_PER_GT: u64 = 512;
/// The `parentCID` of a disk without a parent.
pub const NO_PARENT_CID: u32 = 0xffff_ffff;

/// Positional reads of a file (a local file, or a remote datastore object).
pub trait ReadAt: Send + Sync {
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Size of the file in bytes.
    fn size(&self) -> io::Result<u64>;
}

impl ReadAt for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

/// Number of grains of a disk of `capacity` sectors.
pub fn grains_of(capacity: u64) -> u64 {
    capacity.div_ceil(GRAIN_SECTORS)
}

/// Number of grain tables of a disk of `capacity` sectors.
pub fn gts_of(capacity: u64) -> u64 {
    grains_of(capacity).div_ceil(GTES_PER_GT)
}

/// A format error about a named disk.
pub fn bad(what: &str, reason: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {reason}"))
}
