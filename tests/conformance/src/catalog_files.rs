//! The catalogue's files (`imagestore::backend::catalog`, `docs/layouts.md`) as the hooks of
//! every file-like backend see them on a local folder: faking what a crashed write leaves, and
//! counting leftovers, the same way for `file://` and the disk backends.

use std::path::Path;

use anyhow::Result;
use imagestore::ImageId;

/// Names in `dir`; none for a missing folder.
pub fn names(dir: &Path) -> Result<Vec<String>> {
    match std::fs::read_dir(dir) {
        Ok(rd) => Ok(rd
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// Leaves in store folder `store` what a write of `id` that crashed before its commit marker
/// leaves: an image folder holding `file` (a half-written layer file of the backend) and a
/// record, its child link in scratch, a usage change in flight, and a writable layer folder
/// that was never recorded.
pub fn leave_crashed_write(store: &Path, id: &ImageId, file: &str) -> Result<()> {
    let img = store.join("images").join(id.as_str());
    std::fs::create_dir_all(&img)?;
    std::fs::write(img.join(file), b"half a layer")?;
    std::fs::write(img.join("image.json"), b"{}")?;
    let children = store.join("images/scratch/children");
    std::fs::create_dir_all(&children)?;
    std::fs::write(children.join(id.as_str()), b"")?;
    std::fs::write(store.join("usage.pending"), b"")?;
    std::fs::create_dir_all(store.join("writable").join(format!("{id}-w")))?;
    Ok(())
}

/// Leaves in store folder `store` a child link from `parent` to `child`, which does not exist.
pub fn leave_dangling_child(store: &Path, parent: &ImageId, child: &ImageId) -> Result<()> {
    let children = store.join("images").join(parent.as_str()).join("children");
    std::fs::create_dir_all(&children)?;
    std::fs::write(children.join(child.as_str()), b"")?;
    Ok(())
}

/// Leftovers of crashed writes in store folder `store` whose images are committed by the file
/// `marker`: uncommitted image folders, child links of children that do not exist,
/// reference links on images their reference does not name, unrecorded writable layers, and
/// a pending usage change.
pub fn leftovers(store: &Path, marker: &str) -> Result<usize> {
    let images = store.join("images");
    let writable = |name: &str| store.join("writable").join(name).join("writable.json");
    let mut n = 0;
    for name in names(&images)? {
        let dir = images.join(&name);
        if !dir.join(marker).exists() {
            n += 1;
        }
        for c in names(&dir.join("children"))? {
            if !images.join(&c).join(marker).exists() && !writable(&c).exists() {
                n += 1;
            }
        }
        for key in names(&dir.join("refs"))? {
            if referenced_image(store, &key)?.as_deref() != Some(name.as_str()) {
                n += 1;
            }
        }
    }
    for name in names(&store.join("writable"))? {
        if !writable(&name).exists() {
            n += 1;
        }
    }
    if store.join("usage.pending").exists() {
        n += 1;
    }
    Ok(n)
}

/// The image the reference record with key `key` in store folder `store` names, `None` if
/// there is no such record.
fn referenced_image(store: &Path, key: &str) -> Result<Option<String>> {
    let bytes = match std::fs::read(store.join("refs").join(key)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let record: serde_json::Value = serde_json::from_slice(&bytes)?;
    Ok(record["target"]["image"].as_str().map(str::to_owned))
}
