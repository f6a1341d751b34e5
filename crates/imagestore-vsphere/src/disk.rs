//! The identity of disks (content ids, descriptors) and opening a chain of local disk files.
//! New disks are written through [`crate::vmdk::overlay::Overlay`].

use std::fs::File;
use std::io;
use std::path::Path;

use crate::vmdk::NO_PARENT_CID;
use crate::vmdk::chain::Chain;
use crate::vmdk::descriptor::Descriptor;

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
