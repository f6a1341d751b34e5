//! Reading through a disk and its parents: a grain comes from the topmost disk that holds it,
//! and reads as zeros when none does.

use std::io;
use std::sync::Arc;

use super::sparse::{GrainLoc, SparseDisk};
use super::{GRAIN, NO_PARENT_CID, SECTOR, bad, grains_of};

const NONE: u64 = 0;
const ZERO: u64 = (1 << 48) - 1;

/// A chain of disks, base first, with a merged grain map.
#[derive(Debug)]
pub struct Chain {
    disks: Vec<Arc<SparseDisk>>,
    /// Per grain: `(disk index + 1) << 48 | sector` (or [`ZERO`]); 0 when no disk holds it.
    map: Vec<u64>,
    capacity: u64,
}

impl Chain {
    /// Builds a chain from disks ordered base first, checking that each disk names the one
    /// below it as its parent (`parentCID`) and that all have the same capacity.
    pub fn new(disks: Vec<Arc<SparseDisk>>) -> io::Result<Chain> {
        let base = disks.first().ok_or_else(|| bad("disk chain", "no disks"))?;
        let capacity = base.capacity;
        if base.descriptor.parent_cid != NO_PARENT_CID {
            return Err(bad(
                &base.name,
                format!(
                    "is the base of the chain but names parent CID {:08x}",
                    base.descriptor.parent_cid
                ),
            ));
        }
        let mut map = vec![NONE; grains_of(capacity) as usize];
        for (i, d) in disks.iter().enumerate() {
            if d.capacity != capacity {
                return Err(bad(
                    &d.name,
                    format!(
                        "capacity {} differs from its chain's {capacity}",
                        d.capacity
                    ),
                ));
            }
            if i > 0 {
                let parent = &disks[i - 1];
                if d.descriptor.parent_cid != parent.descriptor.cid {
                    return Err(bad(
                        &d.name,
                        format!(
                            "parentCID {:08x} does not match CID {:08x} of its parent {}",
                            d.descriptor.parent_cid, parent.descriptor.cid, parent.name
                        ),
                    ));
                }
            }
            let tag = (i as u64 + 1) << 48;
            for (g, loc) in &d.grains {
                map[*g as usize] = tag
                    | match loc {
                        GrainLoc::At(s) => *s,
                        GrainLoc::Zero => ZERO,
                    };
            }
        }
        Ok(Chain {
            disks,
            map,
            capacity,
        })
    }

    /// Capacity in sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Capacity in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.capacity * SECTOR
    }

    /// The disks, base first.
    pub fn disks(&self) -> &[Arc<SparseDisk>] {
        &self.disks
    }

    /// The format new delta disks on this chain are written in: its top disk's (a chain must
    /// not mix formats on ESXi). An error if the top disk is not a delta format this crate
    /// writes (a flat base disk is never the top of an image's chain).
    pub fn delta_format(&self) -> io::Result<super::format::DiskFormat> {
        let top = self
            .disks
            .last()
            .ok_or_else(|| bad("disk chain", "no disks"))?;
        top.descriptor
            .create_type
            .parse()
            .map_err(|e| bad(&top.name, e))
    }

    /// The top disk's CID.
    pub fn top_cid(&self) -> u32 {
        self.disks
            .last()
            .map_or(NO_PARENT_CID, |d| d.descriptor.cid)
    }

    fn locate(&self, g: u64) -> Option<(&SparseDisk, GrainLoc)> {
        let e = *self.map.get(g as usize)?;
        if e == NONE {
            return None;
        }
        let disk = &self.disks[((e >> 48) - 1) as usize];
        let low = e & ZERO;
        let loc = if low == ZERO {
            GrainLoc::Zero
        } else {
            GrainLoc::At(low)
        };
        Some((disk, loc))
    }

    /// True if some disk of the chain holds grain `g`.
    pub fn is_allocated(&self, g: u64) -> bool {
        self.map.get(g as usize).is_some_and(|e| *e != NONE)
    }

    /// Grains held by some disk of the chain, in order.
    pub fn allocated(&self) -> impl Iterator<Item = u64> + '_ {
        self.map
            .iter()
            .enumerate()
            .filter(|(_, e)| **e != NONE)
            .map(|(g, _)| g as u64)
    }

    /// Reads grain `g` in full (zeros when unallocated).
    pub fn read_grain(&self, g: u64, buf: &mut [u8]) -> io::Result<()> {
        match self.locate(g) {
            Some((d, loc)) => d.read_grain(loc, buf),
            None => {
                buf.fill(0);
                Ok(())
            }
        }
    }

    /// Reads `buf.len()` bytes of the virtual disk at `offset`.
    pub fn read_at(&self, mut offset: u64, mut buf: &mut [u8]) -> io::Result<()> {
        if offset + buf.len() as u64 > self.size_bytes() {
            return Err(bad("disk chain", "read past the end of the disk"));
        }
        while !buf.is_empty() {
            let g = offset / GRAIN;
            let within = offset % GRAIN;
            let n = ((GRAIN - within) as usize).min(buf.len());
            let (now, rest) = buf.split_at_mut(n);
            match self.locate(g) {
                Some((d, GrainLoc::At(s))) => d.file.read_exact_at(now, s * SECTOR + within)?,
                _ => now.fill(0),
            }
            buf = rest;
            offset += n as u64;
        }
        Ok(())
    }
}
