//! Hooks that reach into the `file://` backend's layout (`docs/layouts.md`), shared by its
//! conformance and crash tests.

use std::path::PathBuf;

use anyhow::Result;
use async_trait::async_trait;
use imagestore::{ImageId, StoreName};
use imagestore_conformance::{Hooks, catalog_files};

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
        catalog_files::leave_crashed_write(&self.store(s), id, "layer")
    }

    async fn usage_file(&self, s: &StoreName) -> Result<PathBuf> {
        Ok(self.store(s).join("usage"))
    }

    async fn leave_dangling_child(&self, s: &StoreName, p: &ImageId, c: &ImageId) -> Result<()> {
        catalog_files::leave_dangling_child(&self.store(s), p, c)
    }

    async fn leftovers(&self, s: &StoreName) -> Result<usize> {
        catalog_files::leftovers(&self.store(s), "COMMITTED")
    }

    async fn fingerprint(&self, s: &StoreName) -> Result<String> {
        let sd = self.store(s);
        imagestore_conformance::tree::fingerprint(&sd)
    }
}
