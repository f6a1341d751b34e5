//! The `scratch` root image every store starts with: VIC's base skeleton, as a layer tar.
//!
//! Directories `/etc /lib/modules /proc /sys /run /.tether`, empty `/etc/hostname /etc/hosts
//! /etc/resolv.conf` and the symlink `/etc/mtab -> /proc/mounts`. The tar is deterministic
//! (fixed times and owners), so every backend stores the same bytes and the same digest.

use tar::{EntryType, Header};

use crate::error::{Error, Result};

/// Modification time given to every skeleton entry (2000-01-01T00:00:00Z).
pub const SCRATCH_MTIME: u64 = 946_684_800;

/// `(path, kind, mode, link target)` of each skeleton entry, in archive order.
pub const SKELETON: &[(&str, EntryType, u32, Option<&str>)] = &[
    (".tether/", EntryType::Directory, 0o777, None),
    ("etc/", EntryType::Directory, 0o755, None),
    ("etc/hostname", EntryType::Regular, 0o644, None),
    ("etc/hosts", EntryType::Regular, 0o644, None),
    ("etc/mtab", EntryType::Symlink, 0o777, Some("/proc/mounts")),
    ("etc/resolv.conf", EntryType::Regular, 0o644, None),
    ("lib/", EntryType::Directory, 0o755, None),
    ("lib/modules/", EntryType::Directory, 0o755, None),
    ("proc/", EntryType::Directory, 0o555, None),
    ("run/", EntryType::Directory, 0o755, None),
    ("sys/", EntryType::Directory, 0o555, None),
];

/// The skeleton as an uncompressed tar.
pub fn skeleton_tar() -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let err = |e: std::io::Error| Error::invalid(format!("building the scratch skeleton: {e}"));
    for (path, kind, mode, link) in SKELETON {
        let mut h = Header::new_ustar();
        h.set_entry_type(*kind);
        h.set_mode(*mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(SCRATCH_MTIME);
        h.set_size(0);
        if let Some(target) = link {
            h.set_link_name(target).map_err(err)?;
        }
        h.set_path(path).map_err(err)?;
        h.set_cksum();
        b.append(&h, std::io::empty()).map_err(err)?;
    }
    b.into_inner().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::layer::ingest::ingest_bytes;
    use crate::layer::toc::EntryKind;

    #[tokio::test]
    async fn skeleton_is_a_valid_deterministic_layer() -> Result<()> {
        let a = skeleton_tar()?;
        assert_eq!(a, skeleton_tar()?);
        let ing = ingest_bytes(a.clone(), &Digest::sha256_of(&a)).await?;
        let paths: Vec<(&str, EntryKind)> = ing
            .toc
            .entries
            .iter()
            .map(|e| (e.path.as_str(), e.kind))
            .collect();
        assert!(paths.contains(&("etc/mtab", EntryKind::Symlink)));
        assert!(paths.contains(&("lib/modules", EntryKind::Dir)));
        assert!(paths.contains(&(".tether", EntryKind::Dir)));
        assert_eq!(paths.len(), SKELETON.len());
        Ok(())
    }
}
