//! ESXi's native delta formats on a vSphere datastore: which one the datastore wants (from its
//! file system type and VMFS version, read through the property collector), and the base
//! disk under a store's scratch image, which the server creates
//! (`VirtualDiskManager.CreateVirtualDisk_Task`, thin) so that it is a disk ESXi owns.

use imagestore_core::{Error, Result};

use super::VsphereDatastore;
use super::soap::BACKEND;
use super::xml;
use crate::datastore::{DsPath, Storage};
use crate::disk::{flat_descriptor, new_cid};
use crate::vmdk::SECTOR;
use crate::vmdk::descriptor::Descriptor;
use crate::vmdk::format::{DiskFormat, ExtentKind};

/// What a datastore is, as far as the delta format goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatastoreKind {
    /// `summary.type`: `VMFS`, `NFS`, `NFS41`, `vsan`, `VVOL`, `OTHER` (vcsim's), ...
    pub fs_type: String,
    /// `info.vmfs.majorVersion` of a VMFS datastore.
    pub vmfs_major: Option<u32>,
}

impl DatastoreKind {
    /// Parses the `summary.type` and `info` property values (their `<val>` elements).
    pub fn of_properties(summary_type: &str, info: Option<&str>) -> Result<DatastoreKind> {
        let bad = |e: roxmltree::Error| {
            Error::backend(BACKEND, format!("datastore properties: {e}"), false)
        };
        let doc = xml::parse(summary_type).map_err(bad)?;
        let fs_type = xml::text(doc.root_element()).trim().to_owned();
        let vmfs_major = match info {
            Some(info) => {
                let doc = xml::parse(info).map_err(bad)?;
                xml::find(doc.root_element(), "vmfs")
                    .and_then(|v| xml::child_text(v, "majorVersion"))
                    .and_then(|m| m.trim().parse().ok())
            }
            None => None,
        };
        Ok(DatastoreKind {
            fs_type,
            vmfs_major,
        })
    }

    /// The delta format for this datastore: seSparse on VMFS 6 and later, vmfsSparse on
    /// older VMFS and on the other file systems this backend writes to (NFS, and vcsim's
    /// `OTHER`). vSAN and vVols keep deltas in their own objects, which are not files this
    /// backend can upload: a typed error, unless `format=` names one.
    pub fn delta_format(&self) -> Result<DiskFormat> {
        match (self.fs_type.to_ascii_uppercase().as_str(), self.vmfs_major) {
            ("VMFS", Some(v)) if v >= 6 => Ok(DiskFormat::SeSparse),
            ("VMFS", _) => Ok(DiskFormat::VmfsSparse),
            ("VSAN" | "VVOL" | "PMEM", _) => Err(Error::Unsupported {
                operation: "delta disks on vSAN, vVols and PMem datastores (set format= to \
                            write vmfsSparse or seSparse files anyway)",
                backend: "vsphere",
            }),
            _ => Ok(DiskFormat::VmfsSparse),
        }
    }
}

impl VsphereDatastore {
    /// The datastore's file system type and VMFS version, through the property collector.
    pub fn datastore_kind(&self) -> Result<DatastoreKind> {
        let props = self
            .soap
            .properties(&self.datastore, &["summary.type", "info"])?;
        let get = |name: &str| {
            props
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let summary_type = get("summary.type").ok_or_else(|| {
            Error::backend(
                BACKEND,
                format!(
                    "datastore {} reports no summary.type",
                    self.config.datastore
                ),
                false,
            )
        })?;
        DatastoreKind::of_properties(summary_type, get("info"))
    }

    /// Has the server create a thin flat disk of `capacity_kib` KiB at `path` (its folder
    /// must exist) and returns its CID. The server writes the descriptor; vcsim leaves it
    /// empty (it never writes disk contents), and then the descriptor ESXi writes for such a
    /// disk (`vmfs`, one `VMFS` extent `<name>-flat.vmdk`) is put in its place.
    pub fn create_base_disk(&self, path: &DsPath, capacity_kib: u64) -> Result<u32> {
        self.create_disk(path, capacity_kib)?;
        let name = self.ds_path(path);
        let capacity = capacity_kib * 1024 / SECTOR;
        let bytes = self.read(path)?.unwrap_or_default();
        if bytes.iter().any(|b| *b != 0) {
            let d = Descriptor::parse(&String::from_utf8_lossy(&bytes), &name)
                .map_err(|e| Error::corrupt(&name, e.to_string()))?;
            if d.extent_kind != ExtentKind::Vmfs || d.capacity != capacity {
                return Err(Error::corrupt(
                    &name,
                    format!(
                        "the server made a {} disk of {} sectors, not a flat disk of {capacity}",
                        d.create_type, d.capacity
                    ),
                ));
            }
            return Ok(d.cid);
        }
        let d = flat_descriptor(capacity, path.name(), new_cid());
        self.write(path, d.to_text().as_bytes())?;
        Ok(d.cid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(t: &str, major: Option<u32>) -> DatastoreKind {
        DatastoreKind {
            fs_type: t.into(),
            vmfs_major: major,
        }
    }

    #[test]
    fn formats_follow_the_file_system() -> Result<()> {
        assert_eq!(kind("VMFS", Some(6)).delta_format()?, DiskFormat::SeSparse);
        assert_eq!(
            kind("VMFS", Some(5)).delta_format()?,
            DiskFormat::VmfsSparse
        );
        assert_eq!(kind("NFS", None).delta_format()?, DiskFormat::VmfsSparse);
        assert_eq!(kind("OTHER", None).delta_format()?, DiskFormat::VmfsSparse);
        assert!(matches!(
            kind("vsan", None).delta_format(),
            Err(Error::Unsupported { .. })
        ));
        Ok(())
    }

    #[test]
    fn properties_parse() -> Result<()> {
        let k = DatastoreKind::of_properties(
            r#"<val xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="xsd:string">VMFS</val>"#,
            Some(
                r#"<val xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="VmfsDatastoreInfo"><name>ds</name><vmfs><type>VMFS</type><name>ds</name><majorVersion>6</majorVersion><version>6.82</version></vmfs></val>"#,
            ),
        )?;
        assert_eq!(k, kind("VMFS", Some(6)));
        Ok(())
    }
}
