//! Hooks that reach into the `file://` backend's layout (`docs/layouts.md`), shared by its
//! conformance and crash tests.

use std::path::PathBuf;

use anyhow::Result;
use async_trait::async_trait;
use imagestore::{ImageId, StoreName};
use imagestore_conformance::Hooks;

/// Reaches into the local layout (docs/layouts.md) to fake crashes and fingerprint stores.
pub struct LocalHooks {
    /// The backend's root directory.
    pub root: PathBuf,
}

impl LocalHooks {
    fn store(&self, s: &StoreName) -> PathBuf {
        self.root.join("stores").join(s.as_str())
    }
}

#[async_trait]
impl Hooks for LocalHooks {
    async fn leave_crashed_write(&self, s: &StoreName, id: &ImageId) -> Result<()> {
        let sd = self.store(s);
        let staging = sd.join("staging").join(format!("{id}.deadbeef"));
        std::fs::create_dir_all(&staging)?;
        std::fs::write(staging.join("layer"), b"half a layer")?;
        let img = sd.join("images").join(id.as_str());
        std::fs::create_dir_all(&img)?;
        std::fs::write(img.join("layer"), b"renamed but never committed")?;
        std::fs::write(sd.join("usage.pending"), b"")?;
        std::fs::create_dir_all(sd.join("trash").join("old.1"))?;
        std::fs::create_dir_all(sd.join("images").join("scratch").join("children"))?;
        std::fs::write(
            sd.join("images")
                .join("scratch")
                .join("children")
                .join(id.as_str()),
            b"",
        )?;
        Ok(())
    }

    async fn leftovers(&self, s: &StoreName) -> Result<usize> {
        let sd = self.store(s);
        let mut n = std::fs::read_dir(sd.join("staging"))?.count()
            + std::fs::read_dir(sd.join("trash"))?.count();
        for e in std::fs::read_dir(sd.join("images"))? {
            let e = e?;
            if !e.path().join("COMMITTED").exists() {
                n += 1;
            }
            if let Ok(children) = std::fs::read_dir(e.path().join("children")) {
                for c in children {
                    let c = c?;
                    let name = c.file_name();
                    if !sd.join("images").join(&name).join("COMMITTED").exists()
                        && !sd.join("writable").join(&name).join("COMMITTED").exists()
                    {
                        n += 1;
                    }
                }
            }
        }
        for e in std::fs::read_dir(sd.join("writable"))? {
            if !e?.path().join("COMMITTED").exists() {
                n += 1;
            }
        }
        if sd.join("usage.pending").exists() {
            n += 1;
        }
        Ok(n)
    }

    async fn fingerprint(&self, s: &StoreName) -> Result<String> {
        let sd = self.store(s);
        imagestore_conformance::tree::fingerprint(&sd)
    }
}
