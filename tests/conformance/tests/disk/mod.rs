//! Shared by the disk backends' test files (`vmdk://`, `vsphere://`): hooks that reach into
//! VIC's layout (`docs/layouts.md`) in the local folder holding a datastore's `VIC/`, to fake
//! crashes, count leftovers, fingerprint a store and check its disks with `qemu-img`.

#![allow(dead_code)]

pub mod vsphere;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Result, bail};
use async_trait::async_trait;
use imagestore::{Image, ImageId, StoreName};
use imagestore_conformance::catalog_files::{self, names};
use imagestore_conformance::{Ctx, Hooks, catalogue_trials, support, trials};

/// Runs the whole suite against `vmdk://` on a datastore folder in a temporary directory,
/// with URL query `query` (`""` or `?format=...`).
pub fn vmdk_suite(query: &'static str) -> Result<ExitCode> {
    async fn ctx(root: PathBuf, query: &'static str) -> Result<Ctx> {
        let url = format!("vmdk://{}{query}", root.display());
        let hooks = DiskHooks::new(&root, &root.join(".imagestore-work"));
        Ctx::open(url, Arc::new(hooks)).await
    }
    // One datastore per test binary run: every case makes its own stores inside it.
    let dir = tempfile::tempdir()?;
    let root = support::program("qemu-img").map(|()| dir.path().join("ds"));
    let open = move |root| ctx(root, query);
    let mut all = trials("", root.clone(), open);
    all.extend(catalogue_trials("", root, open));
    Ok(support::run(all))
}

/// The folder holding `VIC/`, and the backend's local work folder.
pub struct DiskHooks {
    root: PathBuf,
    work: PathBuf,
}

/// Build folders in `work` whose process is gone.
fn dead_builds(work: &Path) -> Result<usize> {
    let mut n = 0;
    for name in names(work)? {
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

impl DiskHooks {
    /// Hooks for the datastore folder `root` of a backend building in `work`.
    pub fn new(root: &Path, work: &Path) -> DiskHooks {
        DiskHooks {
            root: root.to_path_buf(),
            work: work.to_path_buf(),
        }
    }

    fn store(&self, s: &StoreName) -> PathBuf {
        self.root.join("VIC").join(s.as_str())
    }
}

#[async_trait]
impl Hooks for DiskHooks {
    /// What a write of `id` that crashed before its manifest leaves: a half-built image
    /// folder, its child marker in scratch, a usage change in flight, a writable layer that
    /// was never recorded, and the build folder of a process that is gone.
    async fn leave_crashed_write(&self, s: &StoreName, id: &ImageId) -> Result<()> {
        catalog_files::leave_crashed_write(&self.store(s), id, &format!("{id}.vmdk"))?;
        let build = self.work.join("build-4194399-0123456789abcdef");
        std::fs::create_dir_all(&build)?;
        std::fs::write(build.join("layer.tar"), b"half a layer")?;
        Ok(())
    }

    async fn usage_file(&self, s: &StoreName) -> Result<PathBuf> {
        Ok(self.store(s).join("usage"))
    }

    async fn leave_dangling_child(&self, s: &StoreName, p: &ImageId, c: &ImageId) -> Result<()> {
        catalog_files::leave_dangling_child(&self.store(s), p, c)
    }

    /// Leftovers of crashed writes in store `s`, and dead build folders.
    async fn leftovers(&self, s: &StoreName) -> Result<usize> {
        Ok(catalog_files::leftovers(&self.store(s), "manifest")? + dead_builds(&self.work)?)
    }

    /// A digest of everything stored for `s`, byte for byte.
    async fn fingerprint(&self, s: &StoreName) -> Result<String> {
        imagestore_conformance::tree::fingerprint(&self.store(s))
    }

    /// `qemu-img check` passes on the image's disk and its chain.
    async fn check_image(&self, s: &StoreName, image: &Image) -> Result<()> {
        let disk = self
            .store(s)
            .join("images")
            .join(image.id.as_str())
            .join(format!("{}.vmdk", image.id));
        let out = std::process::Command::new("qemu-img")
            .args(["check", "-f", "vmdk"])
            .arg(&disk)
            .output()?;
        if !out.status.success() {
            bail!(
                "qemu-img check {}: {}{}",
                disk.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}
