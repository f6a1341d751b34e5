//! The text descriptor of a VMDK: identity (`CID`), parent link (`parentCID`,
//! `parentFileNameHint`), create type, extents and the disk database.

use std::fmt::Write as _;
use std::io;

use super::format::ExtentKind;
use super::{NO_PARENT_CID, bad};

/// The descriptor fields this crate reads and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Content id of this disk.
    pub cid: u32,
    /// Content id of the parent ([`NO_PARENT_CID`] for none).
    pub parent_cid: u32,
    /// `monolithicSparse`, `streamOptimized`, `vmfsSparse`, `seSparse` or `vmfs`.
    pub create_type: String,
    /// Path of the parent disk relative to this disk's directory.
    pub parent_hint: Option<String>,
    /// Capacity in sectors (from the extent line).
    pub capacity: u64,
    /// File name of the extent (the disk itself for a monolithic disk).
    pub extent_file: String,
    /// The kind of the extent.
    pub extent_kind: ExtentKind,
}

impl Descriptor {
    /// The descriptor text (NUL padding is added by the writer).
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Disk DescriptorFile");
        let _ = writeln!(s, "version=1");
        let _ = writeln!(s, "encoding=\"UTF-8\"");
        let _ = writeln!(s, "CID={:08x}", self.cid);
        let _ = writeln!(s, "parentCID={:08x}", self.parent_cid);
        let _ = writeln!(s, "createType=\"{}\"", self.create_type);
        if let Some(h) = &self.parent_hint {
            let _ = writeln!(s, "parentFileNameHint=\"{h}\"");
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "# Extent description");
        let _ = writeln!(
            s,
            "RW {} {} \"{}\"",
            self.capacity,
            self.extent_kind.keyword(),
            self.extent_file
        );
        let _ = writeln!(s);
        let _ = writeln!(s, "# The Disk Data Base");
        let _ = writeln!(s, "#DDB");
        let _ = writeln!(s);
        let cylinders = (self.capacity / (255 * 63)).clamp(1, 65535);
        let _ = writeln!(s, "ddb.adapterType = \"lsilogic\"");
        let _ = writeln!(s, "ddb.geometry.cylinders = \"{cylinders}\"");
        let _ = writeln!(s, "ddb.geometry.heads = \"255\"");
        let _ = writeln!(s, "ddb.geometry.sectors = \"63\"");
        let _ = writeln!(s, "ddb.virtualHWVersion = \"4\"");
        s
    }

    /// Parses a descriptor; `what` names the disk in errors.
    pub fn parse(text: &str, what: &str) -> io::Result<Descriptor> {
        let mut cid = None;
        let mut parent_cid = None;
        let mut create_type = None;
        let mut parent_hint = None;
        let mut extent = None;
        for line in text.split(['\n', '\0']) {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(rest) = line
                .strip_prefix("RW ")
                .or_else(|| line.strip_prefix("RDONLY "))
            {
                let mut parts = rest.splitn(3, ' ');
                let sectors = parts.next().and_then(|n| n.parse::<u64>().ok());
                let kind = parts.next();
                let file = parts.next().map(|f| f.trim().trim_matches('"').to_owned());
                let kind = kind.and_then(ExtentKind::from_keyword);
                match (sectors, kind, file, &extent) {
                    (Some(n), Some(k), Some(f), None) if !f.is_empty() => extent = Some((n, k, f)),
                    (_, _, _, Some(_)) => {
                        return Err(bad(what, "more than one extent is not supported"));
                    }
                    _ => return Err(bad(what, format!("unsupported extent line {line:?}"))),
                }
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"');
            let hex = |v: &str| {
                u32::from_str_radix(v, 16).map_err(|_| bad(what, format!("bad {k} {v:?}")))
            };
            match k.trim() {
                "CID" => cid = Some(hex(v)?),
                "parentCID" => parent_cid = Some(hex(v)?),
                "createType" => create_type = Some(v.to_owned()),
                "parentFileNameHint" => parent_hint = Some(v.to_owned()),
                _ => {}
            }
        }
        let (capacity, extent_kind, extent_file) =
            extent.ok_or_else(|| bad(what, "no extent line"))?;
        Ok(Descriptor {
            cid: cid.ok_or_else(|| bad(what, "no CID"))?,
            parent_cid: parent_cid.unwrap_or(NO_PARENT_CID),
            create_type: create_type.ok_or_else(|| bad(what, "no createType"))?,
            parent_hint,
            capacity,
            extent_file,
            extent_kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() -> io::Result<()> {
        let d = Descriptor {
            cid: 0x1234abcd,
            parent_cid: 0xfffffffe,
            create_type: "monolithicSparse".into(),
            parent_hint: Some("../p/p.vmdk".into()),
            capacity: 16_000_000,
            extent_file: "c.vmdk".into(),
            extent_kind: ExtentKind::Sparse,
        };
        assert_eq!(Descriptor::parse(&d.to_text(), "t")?, d);
        let d = Descriptor {
            create_type: "vmfsSparse".into(),
            extent_file: "c-delta.vmdk".into(),
            extent_kind: ExtentKind::VmfsSparse,
            ..d
        };
        assert!(
            d.to_text()
                .contains("RW 16000000 VMFSSPARSE \"c-delta.vmdk\"\n")
        );
        assert_eq!(Descriptor::parse(&d.to_text(), "t")?, d);
        Ok(())
    }

    #[test]
    fn parses_qemus_descriptor() -> io::Result<()> {
        let text = "# Disk DescriptorFile\nversion=1\nCID=965e6e02\nparentCID=27fc2f49\ncreateType=\"monolithicSparse\"\nparentFileNameHint=\"parent.vmdk\"\n# Extent description\nRW 131072 SPARSE \"child.vmdk\"\n\0\0\0";
        let d = Descriptor::parse(text, "t")?;
        assert_eq!(d.cid, 0x965e6e02);
        assert_eq!(d.parent_cid, 0x27fc2f49);
        assert_eq!(d.parent_hint.as_deref(), Some("parent.vmdk"));
        assert_eq!(d.capacity, 131072);
        assert_eq!(d.extent_kind, ExtentKind::Sparse);
        Ok(())
    }

    #[test]
    fn parses_an_esxi_base_descriptor_and_refuses_flat_offsets() -> io::Result<()> {
        let text = "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=5352cace\nparentCID=ffffffff\nisNativeSnapshot=\"no\"\ncreateType=\"vmfs\"\n\n# Extent description\nRW 268435456 VMFS \"sql-flat.vmdk\"\n";
        let d = Descriptor::parse(text, "t")?;
        assert_eq!(d.create_type, "vmfs");
        assert_eq!(d.extent_kind, ExtentKind::Vmfs);
        assert_eq!(d.extent_file, "sql-flat.vmdk");
        assert!(Descriptor::parse("CID=1\ncreateType=\"x\"\nRW 8 FLAT \"f\" 0\n", "t").is_err());
        assert!(Descriptor::parse("CID=1\ncreateType=\"x\"\nRW 8 ZERO\n", "t").is_err());
        Ok(())
    }
}
