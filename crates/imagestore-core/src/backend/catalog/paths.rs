//! Where the catalogue's files are, in a backend's [`Layout`].

use crate::names::{ImageId, OwnerName, StoreName};

use crate::backend::storage::StoragePath;

/// The names a backend's layout gives the catalogue's files.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The folder holding one folder per store (`stores`, VIC's `VIC`).
    pub stores: StoragePath,
    /// The lock file of store creation and deletion.
    pub root_lock: StoragePath,
    /// The file name of a store's lock file.
    pub store_lock: &'static str,
    /// The file name of an image's commit marker (`COMMITTED`, VIC's `manifest`).
    pub marker: &'static str,
}

impl Layout {
    /// The paths of store `s`, whether it exists or not.
    pub fn store(&self, s: &StoreName) -> StorePaths {
        StorePaths {
            dir: self.stores.child(s.as_str()),
            lock: self.store_lock,
            marker: self.marker,
        }
    }
}

/// Paths of one store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorePaths {
    /// `<stores>/<store>`.
    pub dir: StoragePath,
    lock: &'static str,
    marker: &'static str,
}

impl StorePaths {
    /// The store's lock file.
    pub fn lock(&self) -> StoragePath {
        self.dir.child(self.lock)
    }
    /// The usage counter.
    pub fn usage(&self) -> StoragePath {
        self.dir.child("usage")
    }
    /// Present while the usage counter is being changed.
    pub fn usage_pending(&self) -> StoragePath {
        self.dir.child("usage.pending")
    }
    /// The store's quota in bytes, absent without one.
    pub fn quota(&self) -> StoragePath {
        self.dir.child("quota")
    }
    /// The references folder.
    pub fn refs(&self) -> StoragePath {
        self.dir.child("refs")
    }
    /// The record of the reference whose key ([`crate::refs::RefName::key`]) is `key`.
    pub fn reference(&self, key: &str) -> StoragePath {
        self.refs().child(key)
    }
    /// The blobs folder.
    pub fn blobs(&self) -> StoragePath {
        self.dir.child("blobs")
    }
    /// Blob `d`, as `<algorithm>-<hex>`.
    pub fn blob(&self, d: &crate::digest::Digest) -> StoragePath {
        self.blobs()
            .child(&format!("{}-{}", d.algorithm().name(), d.hex()))
    }
    /// The images folder.
    pub fn images(&self) -> StoragePath {
        self.dir.child("images")
    }
    /// The writable layers folder.
    pub fn writables(&self) -> StoragePath {
        self.dir.child("writable")
    }
    /// One image.
    pub fn image(&self, id: &ImageId) -> ImagePaths {
        ImagePaths {
            dir: self.images().child(id.as_str()),
            id: id.clone(),
            marker: self.marker,
        }
    }
    /// The scratch image.
    pub fn scratch(&self) -> ImagePaths {
        self.image(&ImageId::scratch())
    }
    /// One writable layer.
    pub fn writable(&self, id: &ImageId) -> WritablePaths {
        WritablePaths {
            dir: self.writables().child(id.as_str()),
            id: id.clone(),
        }
    }
}

/// Paths of one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePaths {
    /// `<store>/images/<id>`.
    pub dir: StoragePath,
    /// The image id.
    pub id: ImageId,
    marker: &'static str,
}

impl ImagePaths {
    /// `image.json`.
    pub fn record(&self) -> StoragePath {
        self.dir.child("image.json")
    }
    /// `children`.
    pub fn children(&self) -> StoragePath {
        self.dir.child("children")
    }
    /// The link of child `c`.
    pub fn child(&self, c: &ImageId) -> StoragePath {
        self.children().child(c.as_str())
    }
    /// `owners`.
    pub fn owners(&self) -> StoragePath {
        self.dir.child("owners")
    }
    /// The registration of owner `o`.
    pub fn owner(&self, o: &OwnerName) -> StoragePath {
        self.owners().child(o.as_str())
    }
    /// The registration file named `name` in `owners`.
    pub fn owner_file(&self, name: &str) -> StoragePath {
        self.owners().child(name)
    }
    /// `refs`: one link per reference naming this image, by the reference's key.
    pub fn ref_links(&self) -> StoragePath {
        self.dir.child("refs")
    }
    /// The link of the reference whose key is `key`.
    pub fn ref_link(&self, key: &str) -> StoragePath {
        self.ref_links().child(key)
    }
    /// The commit marker.
    pub fn marker(&self) -> StoragePath {
        self.dir.child(self.marker)
    }
}

/// Paths of one writable layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritablePaths {
    /// `<store>/writable/<id>`.
    pub dir: StoragePath,
    /// The writable layer's id.
    pub id: ImageId,
}

impl WritablePaths {
    /// `writable.json`: written last when the layer is created, removed first when deleted.
    pub fn record(&self) -> StoragePath {
        self.dir.child("writable.json")
    }
}
