//! The `file://` layout (documented in `docs/layouts.md`): the catalogue's files under
//! `stores/`, and the layer files this backend keeps beside them.
//!
//! ```text
//! imagestore-local.json                     the root's format and version
//! root.lock                                 store creation and deletion locks
//! stores/<store>/store.lock, usage, ...     the catalogue (imagestore_core::backend::catalog)
//! stores/<store>/images/<id>/layer          the layer's bytes exactly as received
//! stores/<store>/images/<id>/toc, toc.idx   its TOC, and the TOC's index by path
//! stores/<store>/images/<id>/COMMITTED      written last: the image is committed
//! stores/<store>/writable/<id>/imports/<n>/ import n (six digits): layer, toc.idx, toc last
//! ```

use imagestore_core::backend::catalog::{ImagePaths, Layout, WritablePaths};
use imagestore_core::backend::storage::StoragePath;

/// The root's format file.
pub const FORMAT_FILE: &str = "imagestore-local.json";

/// The catalogue's names in this layout.
pub fn layout() -> Layout {
    Layout {
        stores: StoragePath::root().child("stores"),
        root_lock: StoragePath::root().child("root.lock"),
        store_lock: "store.lock",
        marker: "COMMITTED",
    }
}

/// The files of one stored layer: an image's, or one import's of a writable layer.
#[derive(Debug, Clone)]
pub struct LayerFiles {
    /// The folder holding them.
    pub dir: StoragePath,
}

impl LayerFiles {
    /// The layer's raw bytes.
    pub fn layer(&self) -> StoragePath {
        self.dir.child("layer")
    }
    /// The layer's TOC; written last in an import, so its presence completes it.
    pub fn toc(&self) -> StoragePath {
        self.dir.child("toc")
    }
    /// The TOC's index by path (see `imagestore_core::layer::index`).
    pub fn toc_index(&self) -> StoragePath {
        self.dir.child("toc.idx")
    }
}

/// The layer files of an image.
pub fn image_files(p: &ImagePaths) -> LayerFiles {
    LayerFiles { dir: p.dir.clone() }
}

/// The folder of a writable layer's imports.
pub fn imports(w: &WritablePaths) -> StoragePath {
    w.dir.child("imports")
}

/// The layer files of import `n` of a writable layer.
pub fn import_files(w: &WritablePaths, n: u32) -> LayerFiles {
    LayerFiles {
        dir: imports(w).child(&format!("{n:06}")),
    }
}
