//! The 512-byte sparse extent header at sector 0 of a hosted sparse VMDK (little endian).

use std::io;

use super::{GRAIN_SECTORS, GTES_PER_GT, bad};

/// `KDMV`.
pub const MAGIC: u32 = 0x564d_444b;
/// Flag: the newline-detection characters are valid.
pub const FLAG_NEWLINE: u32 = 1;
/// Flag: a redundant grain directory and tables exist.
pub const FLAG_RGD: u32 = 1 << 1;
/// Flag: grain table entry 1 means a zeroed grain (version 2 and later).
pub const FLAG_ZERO_GRAIN: u32 = 1 << 2;
/// Flag: grains are compressed.
pub const FLAG_COMPRESSED: u32 = 1 << 16;
/// Flag: the extent uses markers (stream-optimized).
pub const FLAG_MARKERS: u32 = 1 << 17;
/// `gdOffset` of a stream-optimized disk whose grain directory is found through the footer.
pub const GD_AT_END: u64 = u64::MAX;
/// `compressAlgorithm` for DEFLATE (zlib streams).
pub const COMPRESS_DEFLATE: u16 = 1;

/// The fields of a `SparseExtentHeader`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Format version (1 for monolithicSparse, 3 for streamOptimized).
    pub version: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Capacity in sectors.
    pub capacity: u64,
    /// Sectors per grain.
    pub grain_size: u64,
    /// Sector of the descriptor.
    pub descriptor_offset: u64,
    /// Sectors reserved for the descriptor.
    pub descriptor_size: u64,
    /// Entries per grain table.
    pub gtes_per_gt: u32,
    /// Sector of the redundant grain directory (0 when absent).
    pub rgd_offset: u64,
    /// Sector of the grain directory.
    pub gd_offset: u64,
    /// Sectors before the first grain.
    pub overhead: u64,
    /// Set while a writer has the disk open.
    pub unclean_shutdown: bool,
    /// Grain compression (0 none, 1 deflate).
    pub compress_algorithm: u16,
}

impl Header {
    /// A monolithicSparse header with 64 KiB grains and 512-entry grain tables.
    pub fn sparse(capacity: u64, rgd_offset: u64, gd_offset: u64, overhead: u64) -> Header {
        Header {
            version: 1,
            flags: FLAG_NEWLINE | FLAG_RGD,
            capacity,
            grain_size: GRAIN_SECTORS,
            descriptor_offset: 1,
            descriptor_size: 20,
            gtes_per_gt: GTES_PER_GT as u32,
            rgd_offset,
            gd_offset,
            overhead,
            unclean_shutdown: false,
            compress_algorithm: 0,
        }
    }

    /// The header as its 512 bytes.
    pub fn to_bytes(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..20].copy_from_slice(&self.capacity.to_le_bytes());
        b[20..28].copy_from_slice(&self.grain_size.to_le_bytes());
        b[28..36].copy_from_slice(&self.descriptor_offset.to_le_bytes());
        b[36..44].copy_from_slice(&self.descriptor_size.to_le_bytes());
        b[44..48].copy_from_slice(&self.gtes_per_gt.to_le_bytes());
        b[48..56].copy_from_slice(&self.rgd_offset.to_le_bytes());
        b[56..64].copy_from_slice(&self.gd_offset.to_le_bytes());
        b[64..72].copy_from_slice(&self.overhead.to_le_bytes());
        b[72] = u8::from(self.unclean_shutdown);
        b[73] = b'\n';
        b[74] = b' ';
        b[75] = b'\r';
        b[76] = b'\n';
        b[77..79].copy_from_slice(&self.compress_algorithm.to_le_bytes());
        b
    }

    /// Parses and checks a header; `what` names the disk in errors.
    pub fn parse(b: &[u8; 512], what: &str) -> io::Result<Header> {
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        if u32_at(0) != MAGIC {
            return Err(bad(what, "not a hosted sparse VMDK (bad magic)"));
        }
        let h = Header {
            version: u32_at(4),
            flags: u32_at(8),
            capacity: u64_at(12),
            grain_size: u64_at(20),
            descriptor_offset: u64_at(28),
            descriptor_size: u64_at(36),
            gtes_per_gt: u32_at(44),
            rgd_offset: u64_at(48),
            gd_offset: u64_at(56),
            overhead: u64_at(64),
            unclean_shutdown: b[72] != 0,
            compress_algorithm: u16::from_le_bytes([b[77], b[78]]),
        };
        if !(1..=3).contains(&h.version) {
            return Err(bad(what, format!("unsupported version {}", h.version)));
        }
        if h.flags & FLAG_NEWLINE != 0 && &b[73..77] != b"\n \r\n" {
            return Err(bad(
                what,
                "newline check characters damaged (text-mode transfer?)",
            ));
        }
        if h.grain_size != GRAIN_SECTORS || u64::from(h.gtes_per_gt) != GTES_PER_GT {
            return Err(bad(
                what,
                format!(
                    "grain size {} sectors and {} entries per table are not supported (only {GRAIN_SECTORS} and {GTES_PER_GT})",
                    h.grain_size, h.gtes_per_gt
                ),
            ));
        }
        if h.capacity == 0 || h.capacity > (1 << 42) {
            return Err(bad(what, format!("capacity of {} sectors", h.capacity)));
        }
        Ok(h)
    }
}
