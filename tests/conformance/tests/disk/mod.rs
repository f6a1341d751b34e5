//! Shared by the disk backends' test files (`vmdk://`, `vsphere://`): hooks that reach into
//! VIC's layout (`docs/layouts.md`) in the local folder holding a datastore's `VIC/`, to fake
//! crashes, count leftovers, fingerprint a store and check its disks with `qemu-img`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use async_trait::async_trait;
use imagestore::{Image, ImageId, StoreName};
use imagestore_conformance::Hooks;

/// The folder holding `VIC/`, and the backend's local work folder.
pub struct DiskHooks {
    root: PathBuf,
    work: PathBuf,
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
        let build = self.work.join("build-4194399-0123456789abcdef");
        std::fs::create_dir_all(&build)?;
        std::fs::write(build.join("layer.tar"), b"half a layer")?;
        Ok(())
    }

    /// Leftovers of crashed writes in store `s`, and dead build folders.
    async fn leftovers(&self, s: &StoreName) -> Result<usize> {
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
        Ok(n + dead_builds(&self.work)?)
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
