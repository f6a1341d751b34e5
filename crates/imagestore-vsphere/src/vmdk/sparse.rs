//! Opening one disk: its descriptor and its grain map, whatever its format: a hosted sparse
//! disk (`KDMV`, descriptor embedded), or a descriptor file naming a `VMFSSPARSE` (`COWD`),
//! `SESPARSE` or `VMFS` (flat) extent beside it.

use std::io;
use std::sync::Arc;

use super::descriptor::Descriptor;
use super::format::ExtentKind;
use super::header::{FLAG_COMPRESSED, FLAG_ZERO_GRAIN, Header};
use super::{GRAIN, GTES_PER_GT, ReadAt, SECTOR, bad, grains_of, gts_of};

/// Where a grain's data is, in one disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrainLoc {
    /// Stored at this sector of the disk's file.
    At(u64),
    /// Explicitly zero.
    Zero,
}

/// One opened disk: its identity and which grains it holds.
pub struct SparseDisk {
    /// What the disk is called in errors (its path).
    pub name: String,
    /// Capacity in sectors.
    pub capacity: u64,
    /// The descriptor.
    pub descriptor: Descriptor,
    /// Grains this disk holds, sorted by grain number.
    pub grains: Vec<(u32, GrainLoc)>,
    /// The bytes of the disk's (only) extent, where its grains are.
    pub file: Arc<dyn ReadAt>,
}

/// Largest capacity of a disk opened from a descriptor file, in sectors (2 TiB).
pub const MAX_NATIVE_CAPACITY: u64 = 1 << 32;

/// Largest descriptor file read, in bytes (ESXi's are well under 2 KiB).
pub const MAX_DESCRIPTOR_FILE: u64 = 64 * 1024;

/// Opens the extent file named in a descriptor, in the descriptor's folder.
pub type OpenExtent<'a> = &'a dyn Fn(&str) -> io::Result<Arc<dyn ReadAt>>;

/// An extent file name from a descriptor: a plain name in the descriptor's folder.
fn plain_name<'a>(name: &'a str, what: &str) -> io::Result<&'a str> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        return Err(bad(
            what,
            format!("extent file {name:?} is not a file name in the disk's folder"),
        ));
    }
    Ok(name)
}

impl std::fmt::Debug for SparseDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SparseDisk")
            .field("name", &self.name)
            .field("cid", &format_args!("{:08x}", self.descriptor.cid))
            .field("grains", &self.grains.len())
            .finish()
    }
}

fn u32s(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

impl SparseDisk {
    /// Opens the disk whose first (or only) file is `file`: a hosted sparse disk, or a
    /// descriptor file whose extent `extent` opens; `name` names it in errors. A flat `VMFS`
    /// extent is not read: it is the base disk the store had created empty and never writes,
    /// so it holds no grains.
    pub fn open_with(
        file: Arc<dyn ReadAt>,
        name: &str,
        extent: OpenExtent<'_>,
    ) -> io::Result<SparseDisk> {
        let size = file.size()?;
        let mut magic = [0u8; 4];
        if size >= 4 {
            file.read_exact_at(&mut magic, 0)?;
        }
        if magic == super::header::MAGIC.to_le_bytes() {
            return Self::open(file, name);
        }
        if size == 0 {
            return Err(bad(name, "the descriptor file is empty"));
        }
        if size > MAX_DESCRIPTOR_FILE {
            return Err(bad(
                name,
                format!("not a VMDK: {size} bytes is too long for a descriptor file"),
            ));
        }
        let mut text = vec![0u8; size as usize];
        file.read_exact_at(&mut text, 0)?;
        let descriptor = Descriptor::parse(&String::from_utf8_lossy(&text), name)?;
        let extent_name = plain_name(&descriptor.extent_file, name)?;
        let (capacity, grains, file) = match descriptor.extent_kind {
            ExtentKind::VmfsSparse => {
                let f = extent(extent_name)?;
                let what = format!("{name} (extent {extent_name})");
                let (capacity, grains) = super::cowd::read_map(f.as_ref(), &what)?;
                (capacity, grains, f)
            }
            ExtentKind::SeSparse => {
                let f = extent(extent_name)?;
                let what = format!("{name} (extent {extent_name})");
                let (capacity, grains) = super::sesparse::read_map(f.as_ref(), &what)?;
                (capacity, grains, f)
            }
            ExtentKind::Vmfs => {
                if descriptor.parent_cid != super::NO_PARENT_CID {
                    return Err(bad(name, "a flat disk cannot have a parent"));
                }
                (descriptor.capacity, Vec::new(), file)
            }
            ExtentKind::Sparse => {
                return Err(bad(
                    name,
                    "sparse extents in a separate descriptor are not supported",
                ));
            }
        };
        if capacity != descriptor.capacity {
            return Err(bad(
                name,
                format!(
                    "descriptor capacity {} differs from the extent's {capacity}",
                    descriptor.capacity
                ),
            ));
        }
        // The chain keeps a map entry per 64 KiB block: 2 TiB (the largest disk a store
        // makes) is the bound.
        if capacity == 0 || capacity > MAX_NATIVE_CAPACITY {
            return Err(bad(
                name,
                format!("capacity of {capacity} sectors (at most {MAX_NATIVE_CAPACITY})"),
            ));
        }
        Ok(SparseDisk {
            name: name.to_owned(),
            capacity,
            descriptor,
            grains,
            file,
        })
    }

    /// Opens a monolithicSparse disk held by `file`; `name` names it in errors.
    pub fn open(file: Arc<dyn ReadAt>, name: &str) -> io::Result<SparseDisk> {
        let mut hb = [0u8; 512];
        file.read_exact_at(&mut hb, 0)?;
        let header = Header::parse(&hb, name)?;
        if header.flags & FLAG_COMPRESSED != 0 {
            return Err(bad(
                name,
                "compressed (stream-optimized) disks cannot be opened as layers",
            ));
        }
        let dlen = header.descriptor_size.min(2048) * SECTOR;
        let mut db = vec![0u8; dlen as usize];
        file.read_exact_at(&mut db, header.descriptor_offset * SECTOR)?;
        let text = String::from_utf8_lossy(&db);
        let descriptor = Descriptor::parse(&text, name)?;
        if descriptor.capacity != header.capacity {
            return Err(bad(
                name,
                format!(
                    "descriptor capacity {} differs from the header's {}",
                    descriptor.capacity, header.capacity
                ),
            ));
        }
        let num_gts = gts_of(header.capacity);
        let num_grains = grains_of(header.capacity);
        let mut gd = vec![0u8; (num_gts * 4) as usize];
        file.read_exact_at(&mut gd, header.gd_offset * SECTOR)?;
        let file_len = file.size()?;
        let zero_grain = header.version >= 2 && header.flags & FLAG_ZERO_GRAIN != 0;
        let mut grains = Vec::new();
        let mut gt = vec![0u8; (GTES_PER_GT * 4) as usize];
        for (t, gt_sector) in u32s(&gd).enumerate() {
            if gt_sector == 0 {
                continue;
            }
            file.read_exact_at(&mut gt, u64::from(gt_sector) * SECTOR)?;
            for (i, sector) in u32s(&gt).enumerate() {
                let g = t as u64 * GTES_PER_GT + i as u64;
                if sector == 0 || g >= num_grains {
                    continue;
                }
                let loc = if zero_grain && sector == 1 {
                    GrainLoc::Zero
                } else {
                    let s = u64::from(sector);
                    if s * SECTOR + GRAIN > file_len {
                        return Err(bad(
                            name,
                            format!("grain {g} at sector {s} lies past the end of the file"),
                        ));
                    }
                    GrainLoc::At(s)
                };
                grains.push((g as u32, loc));
            }
        }
        if descriptor.extent_kind != ExtentKind::Sparse {
            return Err(bad(name, "a hosted sparse disk must name a SPARSE extent"));
        }
        Ok(SparseDisk {
            name: name.to_owned(),
            capacity: header.capacity,
            descriptor,
            grains,
            file,
        })
    }

    /// Reads a stored grain in full.
    pub fn read_grain(&self, loc: GrainLoc, buf: &mut [u8]) -> io::Result<()> {
        match loc {
            GrainLoc::Zero => {
                buf.fill(0);
                Ok(())
            }
            GrainLoc::At(s) => self.file.read_exact_at(buf, s * SECTOR),
        }
    }
}
