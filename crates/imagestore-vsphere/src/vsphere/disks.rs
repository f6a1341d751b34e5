//! The `VirtualDiskManager` calls: create, copy, delete and query virtual disks on the
//! datastore. The image store uploads its disks as files and never needs them to commit;
//! they are there for what vSphere itself does with disks (a thin disk for a VM, copying an
//! image's chain into one disk, checking a chain the way vSphere sees it).
//!
//! Querying the chain of a disk (`QueryVirtualDiskInfo_Task`, with its parents) is an
//! internal method that vcsim does not implement; where the server refuses it, the chain is
//! read from the disks' own descriptors through `/folder` (`CID`, `parentCID`,
//! `parentFileNameHint`), which is what the method reports.

use imagestore_core::{Error, Result};

use super::VsphereDatastore;
use super::cache::HEAD_BYTES;
use super::soap::BACKEND;
use super::xml::{self, child_text};
use crate::datastore::DsPath;
use crate::vmdk::descriptor::Descriptor;
use crate::vmdk::header::Header;
use crate::vmdk::{NO_PARENT_CID, SECTOR};

/// One disk of a chain, as [`VsphereDatastore::disk_chain`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    /// The disk's datastore path (`[ds] path`).
    pub name: String,
    /// Its capacity in KiB.
    pub capacity_kib: u64,
    /// Its parent's datastore path, if it has one.
    pub parent: Option<String>,
}

impl VsphereDatastore {
    /// Creates a thin virtual disk of `capacity_kib` KiB at `path` (its folder must exist).
    pub fn create_disk(&self, path: &DsPath, capacity_kib: u64) -> Result<()> {
        let name = self.ds_path(path);
        let body = format!(
            "<CreateVirtualDisk_Task>{}{}{}<spec xsi:type=\"FileBackedVirtualDiskSpec\">\
             <diskType>thin</diskType><adapterType>lsiLogic</adapterType>\
             <capacityKb>{capacity_kib}</capacityKb></spec></CreateVirtualDisk_Task>",
            xml::moref("_this", &self.service.virtual_disk_manager),
            xml::el("name", &name),
            self.dc()
        );
        self.soap.run_task_ok(&body, &name).map(|_| ())
    }

    /// Copies the virtual disk at `from` (with whatever chain it has) to a new disk `to`.
    pub fn copy_disk(&self, from: &DsPath, to: &DsPath) -> Result<()> {
        let (src, dst) = (self.ds_path(from), self.ds_path(to));
        let body = format!(
            "<CopyVirtualDisk_Task>{}{}{}{}{}</CopyVirtualDisk_Task>",
            xml::moref("_this", &self.service.virtual_disk_manager),
            xml::el("sourceName", &src),
            xml::moref("sourceDatacenter", &self.datacenter),
            xml::el("destName", &dst),
            xml::moref("destDatacenter", &self.datacenter),
        );
        self.soap.run_task_ok(&body, &dst).map(|_| ())
    }

    /// Deletes the virtual disk at `path` with all its extents; false if it was absent.
    pub fn delete_disk(&self, path: &DsPath) -> Result<bool> {
        let name = self.ds_path(path);
        let body = format!(
            "<DeleteVirtualDisk_Task>{}{}{}</DeleteVirtualDisk_Task>",
            xml::moref("_this", &self.service.virtual_disk_manager),
            xml::el("name", &name),
            self.dc()
        );
        self.run_removal(&body, &name)
    }

    /// The chain of the disk at `path`, the disk first and its base last: from the server's
    /// `QueryVirtualDiskInfo_Task`, or, where the server does not offer it, from the disks'
    /// descriptors.
    pub fn disk_chain(&self, path: &DsPath) -> Result<Vec<DiskInfo>> {
        let name = self.ds_path(path);
        let body = format!(
            "<QueryVirtualDiskInfo_Task>{}{}{}<includeParents>true</includeParents></QueryVirtualDiskInfo_Task>",
            xml::moref("_this", &self.service.virtual_disk_manager),
            xml::el("name", &name),
            self.dc()
        );
        match self.soap.run_task(&body, &name)? {
            Ok(result) => parse_disk_info(&result.unwrap_or_default(), &name),
            Err(f)
                if matches!(
                    f.kind.as_str(),
                    "InvalidRequest" | "NotSupported" | "MethodNotFound"
                ) =>
            {
                self.chain_from_descriptors(path)
            }
            Err(f) => Err(f.into_error(&name)),
        }
    }

    /// The chain read from the disks' descriptors, following `parentFileNameHint`.
    fn chain_from_descriptors(&self, path: &DsPath) -> Result<Vec<DiskInfo>> {
        let mut out: Vec<DiskInfo> = Vec::new();
        let mut at = Some(path.clone());
        while let Some(p) = at.take() {
            let name = self.ds_path(&p);
            if out.len() > crate::MAX_CHAIN_DEPTH as usize + 1 {
                return Err(Error::corrupt(name, "the disk chain has a loop"));
            }
            let (head, _) = self
                .head_bytes(&p, HEAD_BYTES)?
                .ok_or_else(|| Error::not_found(imagestore_core::ObjectKind::Path, &name))?;
            let bad = |e: std::io::Error| Error::corrupt(name.clone(), e.to_string());
            let d = match head.get(..512).and_then(|h| <&[u8; 512]>::try_from(h).ok()) {
                Some(h) if h.starts_with(&crate::vmdk::header::MAGIC.to_le_bytes()) => {
                    let header = Header::parse(h, &name).map_err(bad)?;
                    let start = (header.descriptor_offset * SECTOR) as usize;
                    let end = (start + (header.descriptor_size * SECTOR) as usize).min(head.len());
                    let text = String::from_utf8_lossy(head.get(start..end).unwrap_or_default());
                    Descriptor::parse(&text, &name).map_err(bad)?
                }
                // A native disk's descriptor file.
                _ => Descriptor::parse(&String::from_utf8_lossy(&head), &name).map_err(bad)?,
            };
            let parent = match (&d.parent_hint, d.parent_cid) {
                (Some(hint), cid) if cid != NO_PARENT_CID => {
                    let joined = format!("{}/{hint}", p.parent().as_str());
                    Some(normalize(&joined).ok_or_else(|| {
                        Error::corrupt(
                            name.clone(),
                            format!("parent hint {hint:?} leaves the folder"),
                        )
                    })?)
                }
                _ => None,
            };
            out.push(DiskInfo {
                name,
                capacity_kib: d.capacity * SECTOR / 1024,
                parent: parent.as_ref().map(|pp| self.ds_path(pp)),
            });
            at = parent;
        }
        Ok(out)
    }
}

/// `a/b/../c` as a path without `..`; `None` if it climbs above the root.
fn normalize(path: &str) -> Option<DsPath> {
    let mut parts: Vec<&str> = Vec::new();
    for seg in path.split('/').filter(|s| !s.is_empty() && *s != ".") {
        if seg == ".." {
            parts.pop()?;
        } else {
            parts.push(seg);
        }
    }
    DsPath::parse(&parts.join("/")).ok()
}

/// The `VirtualDiskInfo` entries of a `QueryVirtualDiskInfo_Task` result.
fn parse_disk_info(result: &str, what: &str) -> Result<Vec<DiskInfo>> {
    let doc = xml::parse(result).map_err(|e| {
        Error::backend(BACKEND, format!("{what}: unreadable disk info: {e}"), false)
    })?;
    let infos: Vec<_> = doc
        .root_element()
        .descendants()
        .filter(|n| {
            n.is_element()
                && child_text(*n, "name").is_some()
                && child_text(*n, "capacityKb").is_some()
        })
        .map(|n| DiskInfo {
            name: child_text(n, "name").unwrap_or_default(),
            capacity_kib: child_text(n, "capacityKb")
                .and_then(|c| c.parse().ok())
                .unwrap_or(0),
            parent: child_text(n, "parent").filter(|p| !p.is_empty()),
        })
        .collect();
    // The server lists the chain base first, the disk last; report the disk first.
    Ok(infos.into_iter().rev().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_are_resolved_inside_the_folder() -> Result<()> {
        assert_eq!(
            normalize("VIC/s/images/b/../a/a.vmdk").map(|p| p.as_str().to_owned()),
            Some("VIC/s/images/a/a.vmdk".to_owned())
        );
        assert!(normalize("VIC/../../x").is_none());
        let r = r#"<val xmlns:X="http://www.w3.org/2001/XMLSchema-instance" X:type="ArrayOfVirtualDiskInfo"><VirtualDiskInfo><unit>0</unit><name>[ds] s/s.vmdk</name><diskType>thin</diskType><capacityKb>1024</capacityKb></VirtualDiskInfo><VirtualDiskInfo><unit>0</unit><name>[ds] c/c.vmdk</name><diskType>delta</diskType><parent>[ds] s/s.vmdk</parent><capacityKb>1024</capacityKb></VirtualDiskInfo></val>"#;
        let chain = parse_disk_info(r, "x")?;
        assert_eq!(chain[0].name, "[ds] c/c.vmdk");
        assert_eq!(chain[0].parent.as_deref(), Some("[ds] s/s.vmdk"));
        assert_eq!(chain[1].parent, None);
        Ok(())
    }
}
