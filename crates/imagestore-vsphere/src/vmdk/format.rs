//! The disk formats this crate writes for layers, and the extent kinds a descriptor names.

use std::fmt;
use std::str::FromStr;

/// The format of the delta disks a store writes (the `format=` URL option).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskFormat {
    /// The hosted sparse format (`monolithicSparse`, one `KDMV` file) that Workstation,
    /// Fusion and QEMU run; the scratch disk is itself a sparse base disk holding ext4.
    #[default]
    MonolithicSparse,
    /// ESXi's VMFSsparse delta (`vmfsSparse`: a descriptor and a `COWD` extent
    /// `<name>-delta.vmdk`), the delta format of VMFS 5 and earlier.
    VmfsSparse,
    /// ESXi's SEsparse delta (`seSparse`: a descriptor and an extent `<name>-sesparse.vmdk`),
    /// the delta format of VMFS 6.
    SeSparse,
}

/// What `format=` accepts, in the order the error message lists them.
pub const FORMAT_NAMES: &[&str] = &["monolithicSparse", "vmfsSparse", "seSparse"];

/// A `format=` value that names no format this crate writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownFormat(pub String);

impl fmt::Display for UnknownFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown disk format {:?} (known: {})",
            self.0,
            FORMAT_NAMES.join(", ")
        )
    }
}

impl std::error::Error for UnknownFormat {}

impl DiskFormat {
    /// The descriptor's `createType` of a delta disk in this format.
    pub fn create_type(self) -> &'static str {
        match self {
            DiskFormat::MonolithicSparse => "monolithicSparse",
            DiskFormat::VmfsSparse => "vmfsSparse",
            DiskFormat::SeSparse => "seSparse",
        }
    }

    /// True for ESXi's native formats: a descriptor file beside a separate extent file,
    /// and a chain that starts at a flat base disk.
    pub fn is_native(self) -> bool {
        self != DiskFormat::MonolithicSparse
    }

    /// The extent kind of a delta disk in this format.
    pub fn extent_kind(self) -> ExtentKind {
        match self {
            DiskFormat::MonolithicSparse => ExtentKind::Sparse,
            DiskFormat::VmfsSparse => ExtentKind::VmfsSparse,
            DiskFormat::SeSparse => ExtentKind::SeSparse,
        }
    }

    /// The file name of the extent of the disk whose descriptor is `descriptor_name`
    /// (`x.vmdk` → `x-delta.vmdk` / `x-sesparse.vmdk`); the descriptor itself for
    /// monolithicSparse.
    pub fn extent_name(self, descriptor_name: &str) -> String {
        let stem = descriptor_name
            .strip_suffix(".vmdk")
            .unwrap_or(descriptor_name);
        match self {
            DiskFormat::MonolithicSparse => descriptor_name.to_owned(),
            DiskFormat::VmfsSparse => format!("{stem}-delta.vmdk"),
            DiskFormat::SeSparse => format!("{stem}-sesparse.vmdk"),
        }
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.create_type())
    }
}

impl FromStr for DiskFormat {
    type Err = UnknownFormat;

    /// Parses a create type name (`monolithicSparse`, `vmfsSparse`, `seSparse`), in any case.
    fn from_str(s: &str) -> Result<DiskFormat, UnknownFormat> {
        match s.to_ascii_lowercase().as_str() {
            "monolithicsparse" => Ok(DiskFormat::MonolithicSparse),
            "vmfssparse" => Ok(DiskFormat::VmfsSparse),
            "sesparse" => Ok(DiskFormat::SeSparse),
            _ => Err(UnknownFormat(s.to_owned())),
        }
    }
}

/// The kind of an extent line in a descriptor (`RW <sectors> <KIND> "<file>"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    /// `SPARSE`: a hosted sparse extent (`KDMV`; the descriptor is embedded in it).
    Sparse,
    /// `VMFSSPARSE`: an ESX sparse (`COWD`) extent.
    VmfsSparse,
    /// `SESPARSE`: an SEsparse extent.
    SeSparse,
    /// `VMFS`: a flat extent on VMFS (the base disk a server creates).
    Vmfs,
}

impl ExtentKind {
    /// The keyword in the extent line.
    pub fn keyword(self) -> &'static str {
        match self {
            ExtentKind::Sparse => "SPARSE",
            ExtentKind::VmfsSparse => "VMFSSPARSE",
            ExtentKind::SeSparse => "SESPARSE",
            ExtentKind::Vmfs => "VMFS",
        }
    }

    /// The kind a keyword names.
    pub fn from_keyword(k: &str) -> Option<ExtentKind> {
        [
            ExtentKind::Sparse,
            ExtentKind::VmfsSparse,
            ExtentKind::SeSparse,
            ExtentKind::Vmfs,
        ]
        .into_iter()
        .find(|e| e.keyword() == k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for n in FORMAT_NAMES {
            assert_eq!(n.parse::<DiskFormat>().map(DiskFormat::create_type), Ok(*n));
        }
        assert_eq!("VMFSSPARSE".parse(), Ok(DiskFormat::VmfsSparse));
        assert_eq!(
            "vmfs".parse::<DiskFormat>(),
            Err(UnknownFormat("vmfs".into()))
        );
        assert_eq!(DiskFormat::VmfsSparse.extent_name("a.vmdk"), "a-delta.vmdk");
        assert_eq!(
            DiskFormat::SeSparse.extent_name("a.vmdk"),
            "a-sesparse.vmdk"
        );
        assert_eq!(DiskFormat::MonolithicSparse.extent_name("a.vmdk"), "a.vmdk");
    }
}
