//! Shared by the disk backends' test files (`vmdk://`, `vsphere://`): hooks that reach into
//! VIC's layout (`docs/layouts.md`) in the local folder holding a datastore's `VIC/`, to fake
//! crashes, count leftovers and fingerprint a store.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use anyhow::Result;
use imagestore::{ImageId, StoreName};

/// The folder holding `VIC/`.
pub struct DiskHooks {
    root: PathBuf,
}

fn names(dir: &Path) -> Result<Vec<String>> {
    match std::fs::read_dir(dir) {
        Ok(rd) => Ok(rd
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

impl DiskHooks {
    /// Hooks for the datastore folder `root`.
    pub fn new(root: &Path) -> DiskHooks {
        DiskHooks {
            root: root.to_path_buf(),
        }
    }

    fn store(&self, s: &StoreName) -> PathBuf {
        self.root.join("VIC").join(s.as_str())
    }

    /// What a write of `id` that crashed before its manifest leaves: a half-built image
    /// folder, its child marker in scratch, a usage change in flight, a writable layer that
    /// was never recorded and an import that never finished.
    pub fn leave_crashed_write(&self, s: &StoreName, id: &ImageId) -> Result<()> {
        let sd = self.store(s);
        let img = sd.join("images").join(id.as_str());
        std::fs::create_dir_all(img.join("imageMetadata"))?;
        std::fs::write(img.join(format!("{id}.vmdk")), b"half a disk")?;
        std::fs::write(img.join("image.json"), b"{}")?;
        let children = sd.join("images/scratch/children");
        std::fs::create_dir_all(&children)?;
        std::fs::write(children.join(id.as_str()), b"")?;
        std::fs::write(sd.join("usage.pending"), b"")?;
        std::fs::create_dir_all(sd.join("writable").join(format!("{id}-w")))?;
        Ok(())
    }

    /// Leftovers of crashed writes in store `s`.
    pub fn leftovers(&self, s: &StoreName) -> Result<usize> {
        let sd = self.store(s);
        let images = sd.join("images");
        let mut n = 0;
        for name in names(&images)? {
            let dir = images.join(&name);
            if !dir.join("manifest").exists() {
                n += 1;
            }
            for c in names(&dir.join("children"))? {
                let live = images.join(&c).join("manifest").exists()
                    || sd.join("writable").join(&c).join("writable.json").exists();
                if !live {
                    n += 1;
                }
            }
        }
        for name in names(&sd.join("writable"))? {
            let dir = sd.join("writable").join(&name);
            if !dir.join("writable.json").exists() {
                n += 1;
            }
        }
        if sd.join("usage.pending").exists() {
            n += 1;
        }
        Ok(n)
    }

    /// A digest of everything stored for `s`, byte for byte.
    pub fn fingerprint(&self, s: &StoreName) -> Result<String> {
        let sd = self.store(s);
        imagestore_conformance::tree::fingerprint(&sd)
    }
}
