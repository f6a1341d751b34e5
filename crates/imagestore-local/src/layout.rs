//! Where everything lives under a local root (documented in `docs/layouts.md`).

use std::path::PathBuf;

use imagestore_core::{ImageId, OwnerName, StoreName};

/// Name of the file that marks a committed image or writable layer; written last.
pub const COMMITTED: &str = "COMMITTED";

/// Paths under a backend root.
#[derive(Debug, Clone)]
pub struct Root {
    /// The root directory.
    pub dir: PathBuf,
}

impl Root {
    /// The root's format file.
    pub fn format_file(&self) -> PathBuf {
        self.dir.join("imagestore-local.json")
    }
    /// Lock file for store creation.
    pub fn lock_file(&self) -> PathBuf {
        self.dir.join("root.lock")
    }
    /// Directory of all stores.
    pub fn stores(&self) -> PathBuf {
        self.dir.join("stores")
    }
    /// Staging area for store creation.
    pub fn tmp(&self) -> PathBuf {
        self.dir.join("tmp")
    }
    /// Deleted stores on their way out.
    pub fn trash(&self) -> PathBuf {
        self.dir.join("trash")
    }
    /// One store.
    pub fn store(&self, s: &StoreName) -> StoreDir {
        StoreDir {
            dir: self.stores().join(s.as_str()),
        }
    }
}

/// Paths inside one store.
#[derive(Debug, Clone)]
pub struct StoreDir {
    /// The store directory.
    pub dir: PathBuf,
}

impl StoreDir {
    /// The store's lock file (metadata lock and per-id write locks).
    pub fn lock_file(&self) -> PathBuf {
        self.dir.join("store.lock")
    }
    /// The usage counter.
    pub fn usage(&self) -> PathBuf {
        self.dir.join("usage")
    }
    /// Present while the usage counter is being changed; recomputed at open if found.
    pub fn usage_pending(&self) -> PathBuf {
        self.dir.join("usage.pending")
    }
    /// Committed images.
    pub fn images(&self) -> PathBuf {
        self.dir.join("images")
    }
    /// Writable layers.
    pub fn writables(&self) -> PathBuf {
        self.dir.join("writable")
    }
    /// In-flight writes.
    pub fn staging(&self) -> PathBuf {
        self.dir.join("staging")
    }
    /// Deleted images on their way out.
    pub fn trash(&self) -> PathBuf {
        self.dir.join("trash")
    }
    /// One image.
    pub fn image(&self, id: &ImageId) -> ImageDir {
        ImageDir {
            dir: self.images().join(id.as_str()),
        }
    }
    /// One writable layer.
    pub fn writable(&self, id: &ImageId) -> WritableDir {
        WritableDir {
            dir: self.writables().join(id.as_str()),
        }
    }
}

/// Paths inside one image directory.
#[derive(Debug, Clone)]
pub struct ImageDir {
    /// The image directory.
    pub dir: PathBuf,
}

impl ImageDir {
    /// The layer's raw bytes.
    pub fn layer(&self) -> PathBuf {
        self.dir.join("layer")
    }
    /// The layer's TOC.
    pub fn toc(&self) -> PathBuf {
        self.dir.join("toc")
    }
    /// The layer's TOC index (sorted by path; see `imagestore_core::layer::index`).
    pub fn toc_index(&self) -> PathBuf {
        self.dir.join("toc.idx")
    }
    /// The image record.
    pub fn record(&self) -> PathBuf {
        self.dir.join("image.json")
    }
    /// Child links (one empty file per child image or writable layer).
    pub fn children(&self) -> PathBuf {
        self.dir.join("children")
    }
    /// One child link.
    pub fn child(&self, id: &ImageId) -> PathBuf {
        self.children().join(id.as_str())
    }
    /// Owner registrations.
    pub fn owners(&self) -> PathBuf {
        self.dir.join("owners")
    }
    /// One owner registration.
    pub fn owner(&self, o: &OwnerName) -> PathBuf {
        self.owners().join(o.as_str())
    }
    /// The commit marker.
    pub fn committed(&self) -> PathBuf {
        self.dir.join(COMMITTED)
    }
}

/// Paths inside one writable layer directory.
#[derive(Debug, Clone)]
pub struct WritableDir {
    /// The writable layer's directory.
    pub dir: PathBuf,
}

impl WritableDir {
    /// The writable layer's record.
    pub fn record(&self) -> PathBuf {
        self.dir.join("writable.json")
    }
    /// Imported tars, one directory each (`0`, `1`, ...), holding `layer` and `toc`.
    pub fn imports(&self) -> PathBuf {
        self.dir.join("imports")
    }
    /// One import.
    pub fn import(&self, n: u32) -> ImageDir {
        ImageDir {
            dir: self.imports().join(format!("{n:06}")),
        }
    }
    /// The commit marker.
    pub fn committed(&self) -> PathBuf {
        self.dir.join(COMMITTED)
    }
}
