//! The identity of disks (content ids, descriptors) and opening a chain of local disk files.
//! New disks are written through [`crate::vmdk::overlay::Overlay`].

use std::fs::File;
use std::io;
use std::path::Path;

use crate::vmdk::NO_PARENT_CID;
use crate::vmdk::chain::Chain;
use crate::vmdk::descriptor::Descriptor;
use crate::vmdk::format::{DiskFormat, ExtentKind};

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

/// The descriptor of a disk in `format` stored as `file_name` (its descriptor file for the
/// native formats), optionally with a parent (its CID and file name hint).
pub fn descriptor(
    format: DiskFormat,
    capacity: u64,
    file_name: &str,
    cid: u32,
    parent: Option<(u32, &str)>,
) -> Descriptor {
    Descriptor {
        cid,
        parent_cid: parent.map_or(NO_PARENT_CID, |(c, _)| c),
        create_type: format.create_type().into(),
        parent_hint: parent.map(|(_, h)| h.to_owned()),
        capacity,
        extent_file: format.extent_name(file_name),
        extent_kind: format.extent_kind(),
    }
}

/// The descriptor of a flat base disk stored as `file_name` (`vmfs`, one `VMFS` extent
/// `<name>-flat.vmdk`), what ESXi writes for a thin disk it creates.
pub fn flat_descriptor(capacity: u64, file_name: &str, cid: u32) -> Descriptor {
    let stem = file_name.strip_suffix(".vmdk").unwrap_or(file_name);
    Descriptor {
        cid,
        parent_cid: NO_PARENT_CID,
        create_type: "vmfs".into(),
        parent_hint: None,
        capacity,
        extent_file: format!("{stem}-flat.vmdk"),
        extent_kind: ExtentKind::Vmfs,
    }
}

/// Opens the local disk whose descriptor (or hosted sparse file) is `path`, its extent
/// beside it.
pub fn open_disk(path: &Path) -> io::Result<crate::vmdk::sparse::SparseDisk> {
    use std::sync::Arc;

    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let f = File::open(path)?;
    let open_extent = |name: &str| -> io::Result<Arc<dyn crate::vmdk::ReadAt>> {
        Ok(Arc::new(File::open(dir.join(name))?))
    };
    crate::vmdk::sparse::SparseDisk::open_with(
        Arc::new(f),
        &path.display().to_string(),
        &open_extent,
    )
}

/// Opens the chain whose top disk is the local file `top`, following each disk's
/// `parentFileNameHint` (relative to the disk's folder, or absolute) down to the base.
pub fn open_chain(top: &Path) -> io::Result<Chain> {
    use std::sync::Arc;

    let mut disks = Vec::new();
    let mut at = top.to_path_buf();
    loop {
        if disks.len() > 4096 {
            return Err(crate::vmdk::bad(
                &top.display().to_string(),
                "disk chain longer than 4096",
            ));
        }
        let disk = open_disk(&at)?;
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
