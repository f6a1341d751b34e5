//! VIC's datastore layout and commit protocol, on any [`Datastore`]:
//!
//! ```text
//! VIC/<store>/images/<id>/<id>.vmdk        the disk (scratch: base disk; layers: delta disks)
//! VIC/<store>/images/<id>/imageMetadata/   one file per metadata key
//! VIC/<store>/images/<id>/<id>.layer       the layer tar as written (export/diff/checkout)
//! VIC/<store>/images/<id>/<id>.toc         its table of contents
//! VIC/<store>/images/<id>/manifest         empty; written last: the image is committed
//! ```
//!
//! An image folder without `manifest` or without its disk is invisible and is removed by
//! [`sweep`]. Deleting removes `manifest` first, then the disk, then the folder, so a delete
//! that stops half way leaves an uncommitted folder, which the next sweep removes.

use std::collections::BTreeMap;
use std::path::Path;

use imagestore_core::{Error, Result};

use crate::datastore::{Datastore, DsPath};

/// The commit marker's file name.
pub const MANIFEST: &str = "manifest";
/// The metadata folder's name.
pub const METADATA: &str = "imageMetadata";
/// The scratch image's id.
pub const SCRATCH: &str = "scratch";

/// The paths of one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePaths {
    /// `VIC/<store>/images/<id>`.
    pub dir: DsPath,
    /// `<id>.vmdk`.
    pub disk: DsPath,
    /// `imageMetadata`.
    pub metadata: DsPath,
    /// `<id>.layer`.
    pub layer: DsPath,
    /// `<id>.toc`.
    pub toc: DsPath,
    /// `manifest`.
    pub manifest: DsPath,
}

/// `VIC/<store>/images`.
pub fn images_dir(store: &str) -> Result<DsPath> {
    DsPath::root().join("VIC")?.join(store)?.join("images")
}

/// The paths of image `id` of `store`.
pub fn image_paths(store: &str, id: &str) -> Result<ImagePaths> {
    let dir = images_dir(store)?.join(id)?;
    Ok(ImagePaths {
        disk: dir.join(&format!("{id}.vmdk"))?,
        metadata: dir.join(METADATA)?,
        layer: dir.join(&format!("{id}.layer"))?,
        toc: dir.join(&format!("{id}.toc"))?,
        manifest: dir.join(MANIFEST)?,
        dir,
    })
}

/// The `parentFileNameHint` of a child of image `parent` (relative to the child's folder).
pub fn parent_hint(parent: &str) -> String {
    format!("../{parent}/{parent}.vmdk")
}

/// Creates `VIC/<store>/images` (and its parents). False if it already existed.
pub fn create_store_dirs(ds: &dyn Datastore, store: &str) -> Result<bool> {
    let vic = DsPath::root().join("VIC")?;
    ds.mkdir(&vic)?;
    ds.mkdir(&vic.join(store)?)?;
    ds.mkdir(&images_dir(store)?)
}

/// What a committed image consists of, built in the local work folder.
#[derive(Debug)]
pub struct NewImage<'a> {
    /// The disk file.
    pub disk: &'a Path,
    /// The layer tar, if the image has one (scratch keeps its skeleton tar here too).
    pub layer: Option<&'a Path>,
    /// The encoded TOC.
    pub toc: &'a [u8],
    /// Metadata, key to value.
    pub metadata: &'a BTreeMap<String, Vec<u8>>,
}

/// Writes image `id` in VIC's order: folder (which must not exist), metadata, layer data,
/// disk, and the empty `manifest` last. On failure the folder is removed again.
pub fn commit_image(ds: &dyn Datastore, store: &str, id: &str, img: NewImage<'_>) -> Result<()> {
    let p = image_paths(store, id)?;
    if !ds.mkdir(&p.dir)? {
        return Err(Error::invalid(format!(
            "image folder {} already exists",
            ds.describe(&p.dir)
        )));
    }
    let r = (|| {
        ds.mkdir(&p.metadata)?;
        for (k, v) in img.metadata {
            ds.write(&p.metadata.join(k)?, v)?;
        }
        if let Some(layer) = img.layer {
            ds.put_file(layer, &p.layer)?;
        }
        ds.write(&p.toc, img.toc)?;
        ds.put_file(img.disk, &p.disk)?;
        if !ds.create_new(&p.manifest, b"")? {
            return Err(Error::invalid(format!(
                "{} already exists",
                ds.describe(&p.manifest)
            )));
        }
        Ok(())
    })();
    if r.is_err() {
        let _ = ds.remove_all(&p.dir);
    }
    r
}

/// True if image `id` is committed: its `manifest` and its disk exist.
pub fn is_committed(ds: &dyn Datastore, store: &str, id: &str) -> Result<bool> {
    let p = image_paths(store, id)?;
    Ok(ds.stat(&p.manifest)?.is_some() && ds.stat(&p.disk)?.is_some())
}

/// The committed images of `store`, sorted.
pub fn list_images(ds: &dyn Datastore, store: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for name in ds.list(&images_dir(store)?)? {
        if DsPath::root().join(&name).is_ok() && is_committed(ds, store, &name)? {
            out.push(name);
        }
    }
    Ok(out)
}

/// Reads the metadata of image `id`.
pub fn read_metadata(
    ds: &dyn Datastore,
    store: &str,
    id: &str,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let p = image_paths(store, id)?;
    let mut out = BTreeMap::new();
    for k in ds.list(&p.metadata)? {
        if let Some(v) = ds.read(&p.metadata.join(&k)?)? {
            out.insert(k, v);
        }
    }
    Ok(out)
}

/// Deletes image `id`: `manifest`, then the disk, then the folder.
pub fn delete_image(ds: &dyn Datastore, store: &str, id: &str) -> Result<()> {
    let p = image_paths(store, id)?;
    ds.remove_file(&p.manifest)?;
    ds.remove_file(&p.disk)?;
    ds.remove_all(&p.dir)
}

/// Removes every image folder of `store` that is not committed; returns their names.
/// `scratch` is never removed (VIC: an unverifiable scratch is reported, not deleted).
pub fn sweep(ds: &dyn Datastore, store: &str) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for name in ds.list(&images_dir(store)?)? {
        if name == SCRATCH || name.starts_with('.') {
            continue;
        }
        let Ok(p) = image_paths(store, &name) else {
            continue;
        };
        if ds.stat(&p.dir)?.is_some_and(|s| s.is_dir) && !is_committed(ds, store, &name)? {
            ds.remove_all(&p.dir)?;
            removed.push(name);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local_ds::LocalDatastore;

    fn image(ds: &dyn Datastore, work: &Path, store: &str, id: &str) -> Result<()> {
        let disk = work.join(format!("{id}.disk"));
        std::fs::write(&disk, b"disk").map_err(|e| Error::invalid(e.to_string()))?;
        let mut meta = BTreeMap::new();
        meta.insert("k".to_owned(), b"v".to_vec());
        commit_image(
            ds,
            store,
            id,
            NewImage {
                disk: &disk,
                layer: None,
                toc: b"toc",
                metadata: &meta,
            },
        )
    }

    #[test]
    fn commit_list_delete_and_sweep() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::invalid(e.to_string()))?;
        let root = dir.path().join("ds");
        let ds = LocalDatastore::open(root.clone())?;
        let work = dir.path();
        assert!(create_store_dirs(&ds, "s1")?);
        assert!(!create_store_dirs(&ds, "s1")?);
        image(&ds, work, "s1", SCRATCH)?;
        image(&ds, work, "s1", "a")?;
        image(&ds, work, "s1", "b")?;
        let on_disk = root.join("VIC/s1/images/a");
        assert!(on_disk.join("a.vmdk").is_file());
        assert!(on_disk.join("manifest").is_file());
        assert_eq!(
            std::fs::read(on_disk.join("imageMetadata/k")).ok(),
            Some(b"v".to_vec())
        );
        assert!(
            image(&ds, work, "s1", "a").is_err(),
            "an existing folder is refused"
        );
        assert!(on_disk.join("a.vmdk").is_file(), "and left alone");
        assert_eq!(list_images(&ds, "s1")?, vec!["a", "b", "scratch"]);
        assert_eq!(
            read_metadata(&ds, "s1", "a")?.get("k"),
            Some(&b"v".to_vec())
        );

        // An interrupted write (no manifest) and an interrupted delete (manifest gone) are
        // invisible and swept; a committed image is not.
        std::fs::remove_file(on_disk.join("manifest"))
            .map_err(|e| Error::invalid(e.to_string()))?;
        std::fs::create_dir(root.join("VIC/s1/images/half"))
            .map_err(|e| Error::invalid(e.to_string()))?;
        assert_eq!(list_images(&ds, "s1")?, vec!["b", "scratch"]);
        assert_eq!(sweep(&ds, "s1")?, vec!["a", "half"]);
        assert!(!on_disk.exists());
        delete_image(&ds, "s1", "b")?;
        assert_eq!(list_images(&ds, "s1")?, vec!["scratch"]);
        assert!(!root.join("VIC/s1/images/b").exists());
        Ok(())
    }
}
