//! Moving between disks and raw images: a base disk from a raw image, a raw image from a
//! chain, and a delta disk from a raw image and the chain it was made from.
//!
//! The ext4 writer works on a sparse raw image in the work directory that starts as the
//! parent chain's contents (only the chain's allocated grains are written, so the image costs
//! what the chain holds). Afterwards every grain that can differ from the chain — the raw
//! image's data regions and the chain's allocated grains — is compared with the chain, and
//! only the grains that really changed go into the new delta disk. The chain is never written.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::vmdk::chain::Chain;
use crate::vmdk::descriptor::Descriptor;
use crate::vmdk::writer::SparseWriter;
use crate::vmdk::{GRAIN, NO_PARENT_CID, SECTOR, grains_of};

/// What building a disk wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskStats {
    /// The new disk's CID.
    pub cid: u32,
    /// Grains stored in the new disk.
    pub grains: u64,
    /// Size of the disk file in bytes.
    pub bytes: u64,
}

/// A fresh content id: random, never the "no parent" value.
pub fn new_cid() -> u32 {
    loop {
        let c = rand::random::<u32>();
        if c != NO_PARENT_CID && c != 0xffff_fffe && c != 0 {
            return c;
        }
    }
}

/// The descriptor of a disk stored as `file_name`, optionally with a parent.
pub fn descriptor(
    capacity: u64,
    file_name: &str,
    cid: u32,
    parent: Option<(u32, &str)>,
) -> Descriptor {
    Descriptor {
        cid,
        parent_cid: parent.map_or(NO_PARENT_CID, |(c, _)| c),
        create_type: "monolithicSparse".into(),
        parent_hint: parent.map(|(_, h)| h.to_owned()),
        capacity,
        extent_file: file_name.to_owned(),
    }
}

/// The grain-aligned data regions of a sparse file, as grain numbers in order.
fn data_grains(file: &File, size: u64) -> io::Result<Vec<u64>> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: i64 = 0;
    let end = size as i64;
    while pos < end {
        // SAFETY: plain lseek on an open descriptor owned by `file` for the whole call.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        let first = data as u64 / GRAIN;
        let last = (hole as u64).div_ceil(GRAIN);
        for g in first..last {
            if out.last().is_none_or(|l| *l < g) {
                out.push(g);
            }
        }
        pos = hole;
    }
    Ok(out)
}

fn read_raw_grain(raw: &File, g: u64, size: u64, buf: &mut [u8]) -> io::Result<()> {
    let off = g * GRAIN;
    let n = (size.saturating_sub(off)).min(GRAIN) as usize;
    buf.fill(0);
    raw.read_exact_at(&mut buf[..n], off)
}

/// Writes a base disk (no parent) at `out` holding the non-zero grains of raw image `raw`.
pub fn base_from_raw(raw: &Path, out: &Path, file_name: &str) -> io::Result<DiskStats> {
    let rf = File::open(raw)?;
    let size = rf.metadata()?.len();
    if size % SECTOR != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: size is not a whole number of sectors", raw.display()),
        ));
    }
    let capacity = size / SECTOR;
    let cid = new_cid();
    let d = descriptor(capacity, file_name, cid, None);
    let f = OpenOptions::new().write(true).create_new(true).open(out)?;
    let mut w = SparseWriter::create(f, &d, &out.display().to_string())?;
    let mut buf = vec![0u8; GRAIN as usize];
    for g in data_grains(&rf, size)? {
        read_raw_grain(&rf, g, size, &mut buf)?;
        if buf.iter().all(|b| *b == 0) {
            continue;
        }
        w.push(g as u32, &buf)?;
    }
    let grains = w.grains() as u64;
    let (_, bytes) = w.finish()?;
    Ok(DiskStats { cid, grains, bytes })
}

/// Writes the contents of `chain` into a new sparse raw image at `raw`.
pub fn chain_to_raw(chain: &Chain, raw: &Path) -> io::Result<()> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(raw)?;
    f.set_len(chain.size_bytes())?;
    let mut buf = vec![0u8; GRAIN as usize];
    for g in chain.allocated() {
        chain.read_grain(g, &mut buf)?;
        if buf.iter().any(|b| *b != 0) {
            f.write_all_at(&buf, g * GRAIN)?;
        }
    }
    Ok(())
}

/// A writer of a new disk at `out` whose parent is the top of `chain`, and its CID.
fn child_writer(
    chain: &Chain,
    out: &Path,
    file_name: &str,
    parent_hint: &str,
) -> io::Result<(u32, SparseWriter)> {
    let cid = new_cid();
    let d = descriptor(
        chain.capacity(),
        file_name,
        cid,
        Some((chain.top_cid(), parent_hint)),
    );
    let f = OpenOptions::new().write(true).create_new(true).open(out)?;
    Ok((
        cid,
        SparseWriter::create(f, &d, &out.display().to_string())?,
    ))
}

/// Writes a delta disk at `out` whose parent is the top of `chain` (named `parent_hint`
/// relative to `out`'s folder), holding the grains where raw image `raw` differs from the
/// chain.
pub fn delta_from_raw(
    chain: &Chain,
    raw: &Path,
    out: &Path,
    file_name: &str,
    parent_hint: &str,
) -> io::Result<DiskStats> {
    let rf = File::open(raw)?;
    let size = rf.metadata()?.len();
    if size != chain.size_bytes() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{}: {size} bytes, but the chain has {}",
                raw.display(),
                chain.size_bytes()
            ),
        ));
    }
    let mut candidates = data_grains(&rf, size)?;
    candidates.extend(chain.allocated());
    candidates.sort_unstable();
    candidates.dedup();
    let (cid, mut w) = child_writer(chain, out, file_name, parent_hint)?;
    let mut new = vec![0u8; GRAIN as usize];
    let mut old = vec![0u8; GRAIN as usize];
    for g in candidates {
        if g >= grains_of(chain.capacity()) {
            break;
        }
        read_raw_grain(&rf, g, size, &mut new)?;
        chain.read_grain(g, &mut old)?;
        if new != old {
            w.push(g as u32, &new)?;
        }
    }
    let grains = w.grains() as u64;
    let (_, bytes) = w.finish()?;
    Ok(DiskStats { cid, grains, bytes })
}

/// Writes a delta disk at `out` holding no grains: a child of the top of `chain` that
/// changes nothing (an empty layer).
pub fn empty_delta(
    chain: &Chain,
    out: &Path,
    file_name: &str,
    parent_hint: &str,
) -> io::Result<DiskStats> {
    let (cid, w) = child_writer(chain, out, file_name, parent_hint)?;
    let (_, bytes) = w.finish()?;
    Ok(DiskStats {
        cid,
        grains: 0,
        bytes,
    })
}

/// Opens the chain whose top disk is the local file `top`, following each disk's
/// `parentFileNameHint` (relative to the disk's folder, or absolute) down to the base.
pub fn open_chain(top: &Path) -> io::Result<Chain> {
    use std::sync::Arc;

    use crate::vmdk::sparse::SparseDisk;

    let mut disks = Vec::new();
    let mut at = top.to_path_buf();
    loop {
        if disks.len() > 4096 {
            return Err(crate::vmdk::bad(
                &top.display().to_string(),
                "disk chain longer than 4096",
            ));
        }
        let f = File::open(&at)?;
        let disk = SparseDisk::open(Arc::new(f), &at.display().to_string())?;
        let next = disk.descriptor.parent_hint.clone();
        disks.push(Arc::new(disk));
        match next {
            Some(h)
                if disks
                    .last()
                    .is_some_and(|d| d.descriptor.parent_cid != NO_PARENT_CID) =>
            {
                let dir = at.parent().map(Path::to_path_buf).unwrap_or_default();
                at = dir.join(h);
            }
            _ => break,
        }
    }
    disks.reverse();
    Chain::new(disks)
}
