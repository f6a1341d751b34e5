//! The conformance suite against the `vmdk://` backend, on a datastore folder in a temporary
//! directory. Needs e2fsprogs (`mke2fs`, `debugfs`), which CI installs; under `CI=true` their
//! absence fails the run.

#![allow(clippy::expect_used)]

mod disk;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use async_trait::async_trait;
use imagestore::{ImageId, StoreName};
use imagestore_conformance::{Ctx, Hooks, conformance_tests, require_tool};

use disk::DiskHooks;

/// Reaches into VIC's layout on the datastore folder (docs/layouts.md).
struct VmdkHooks {
    root: PathBuf,
}

#[async_trait]
impl Hooks for VmdkHooks {
    async fn leave_crashed_write(&self, s: &StoreName, id: &ImageId) -> Result<()> {
        DiskHooks::new(&self.root).leave_crashed_write(s, id)?;
        // A build folder of a process that is gone.
        let work = self
            .root
            .join(".imagestore-work")
            .join("build-4194399-0123456789abcdef");
        std::fs::create_dir_all(&work)?;
        std::fs::write(work.join("layer.tar"), b"half a layer")?;
        Ok(())
    }

    async fn leftovers(&self, s: &StoreName) -> Result<usize> {
        let mut n = DiskHooks::new(&self.root).leftovers(s)?;
        n += dead_builds(&self.root.join(".imagestore-work"))?;
        Ok(n)
    }

    async fn fingerprint(&self, s: &StoreName) -> Result<String> {
        DiskHooks::new(&self.root).fingerprint(s)
    }
}

fn dead_builds(work: &Path) -> Result<usize> {
    let Ok(rd) = std::fs::read_dir(work) else {
        return Ok(0);
    };
    let mut n = 0;
    for e in rd {
        let name = e?.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name
            .strip_prefix("build-")
            .and_then(|r| r.split('-').next())
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            n += 1;
        }
    }
    Ok(n)
}

async fn ctx() -> Option<Ctx> {
    for tool in ["mke2fs", "debugfs"] {
        if !require_tool(tool) {
            return None;
        }
    }
    // One datastore per test binary run: every case makes its own stores inside it.
    static ROOT: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let root = ROOT
        .get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
        .join("ds");
    let url = format!("vmdk://{}", root.display());
    Some(
        Ctx::open(url, Arc::new(VmdkHooks { root }))
            .await
            .expect("open the vmdk backend"),
    )
}

conformance_tests!(ctx);
