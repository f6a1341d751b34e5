//! [`LocalStore`], the `file://` backend's handle, and [`LocalLayers`], how it keeps layers:
//! the shared catalogue ([`Catalog`]) over a [`LocalStorage`] in this crate's layout, with
//! each layer's bytes kept exactly as received beside its TOC.
//!
//! The handle's streaming hooks (writing an image, importing into a writable layer) are in
//! `write.rs`; the engine's view of stored layers is in `content.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use imagestore_core::backend::blocking::run_blocking;
use imagestore_core::backend::catalog::{Catalog, ImagePaths, Representation, WritablePaths};
use imagestore_core::backend::local::LocalStorage;
use imagestore_core::backend::storage::{Storage, StoragePath};
use imagestore_core::layer::index;
use imagestore_core::layer::ingest::{IngestLimits, read_toc};
use imagestore_core::layer::scratch::skeleton_tar;
use imagestore_core::layer::stack::Stack;
use imagestore_core::layer::validate::EmptyView;
use imagestore_core::{ByteStream, Error, ImageId, Result, StoreName};

use crate::config::Config;
use crate::error::BACKEND;
use crate::layout::{self, FORMAT_FILE};

/// Longest chain of layers above scratch this backend accepts.
pub const MAX_CHAIN_DEPTH: u32 = 256;

/// The format file's contents.
const FORMAT: &[u8] = br#"{"format":"imagestore-local","version":1}"#;

/// A local image-store backend rooted at a directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    pub(crate) cat: Arc<Catalog<LocalLayers>>,
}

/// How `file://` keeps layers: raw bytes, TOC and TOC index in each image folder, and each
/// import of a writable layer as one more such layer.
#[derive(Debug)]
pub struct LocalLayers {
    pub(crate) storage: Arc<LocalStorage>,
}

impl LocalStore {
    /// Opens a local backend for `config`, creating nothing: the root directory is made by the
    /// first store creation, so reading a root that does not exist finds no stores.
    pub async fn open(config: Config) -> Result<LocalStore> {
        let storage = Arc::new(LocalStorage::new(BACKEND, config.root)?);
        let cat = Arc::new(Catalog::new(
            storage.clone(),
            layout::layout(),
            LocalLayers { storage },
        ));
        run_blocking(BACKEND, cat.clone(), |c| c.rep().check_root()).await?;
        Ok(LocalStore { cat })
    }

    /// The root directory.
    pub fn root(&self) -> PathBuf {
        self.cat.rep().storage.root().to_owned()
    }

    /// Runs blocking work on the catalogue, on the blocking pool.
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Catalog<LocalLayers>) -> Result<T> + Send + 'static,
    {
        run_blocking(BACKEND, self.cat.clone(), f).await
    }
}

/// The error for a root that is a file.
fn not_a_directory(dir: &Path) -> Error {
    Error::invalid(format!(
        "{} is a file, not a directory; a file:// URL names the directory holding the stores",
        dir.display()
    ))
}

impl LocalLayers {
    /// The local path of a storage path.
    pub(crate) fn local(&self, p: &StoragePath) -> PathBuf {
        self.storage.local(p)
    }

    /// Opens the layer file of committed image `id` of store `s` (`NotFound` without the
    /// image).
    fn open_layer(
        &self,
        cat: &Catalog<Self>,
        s: &StoreName,
        id: &ImageId,
    ) -> Result<std::fs::File> {
        let sp = cat.open_store(s)?;
        cat.record(s, &sp, id)?;
        let path = self.local(&layout::image_files(&sp.image(id)).layer());
        std::fs::File::open(&path).map_err(|e| Error::io(BACKEND, &path, e))
    }

    /// Checks the root when a backend is opened, creating nothing: a missing root is a backend
    /// without stores; an existing one must be a directory, and if it holds the format file,
    /// an imagestore-local version 1 root.
    fn check_root(&self) -> Result<()> {
        let dir = self.storage.root();
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(not_a_directory(dir)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(BACKEND, dir, e)),
        }
        let fmt = StoragePath::root().child(FORMAT_FILE);
        let Some(bytes) = self.storage.read(&fmt)? else {
            return Ok(());
        };
        let what = self.storage.describe(&fmt);
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| Error::corrupt(&what, e.to_string()))?;
        if v.get("format").and_then(|f| f.as_str()) != Some("imagestore-local")
            || v.get("version").and_then(|v| v.as_u64()) != Some(1)
        {
            return Err(Error::corrupt(
                what,
                "not an imagestore-local version 1 root",
            ));
        }
        Ok(())
    }
}

impl Representation for LocalLayers {
    fn max_chain_depth(&self) -> u32 {
        MAX_CHAIN_DEPTH
    }

    /// Makes the root directory, its format file and the stores folder.
    fn prepare_root(&self, cat: &Catalog<Self>) -> Result<()> {
        let dir = self.storage.root();
        if dir.exists() && !dir.is_dir() {
            return Err(not_a_directory(dir));
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(BACKEND, dir, e))?;
        let fmt = StoragePath::root().child(FORMAT_FILE);
        if self.storage.stat(&fmt)?.is_none() {
            self.storage.create_new(&fmt, FORMAT)?;
        }
        self.storage.mkdir(&cat.layout().stores)?;
        Ok(())
    }

    /// VIC's skeleton as a tar, with its TOC and index.
    fn write_scratch(&self, _cat: &Catalog<Self>, p: &ImagePaths) -> Result<u64> {
        let files = layout::image_files(p);
        let tar = skeleton_tar()?;
        let toc = read_toc(tar.as_slice(), &EmptyView, IngestLimits::default())?;
        self.storage.write(&files.layer(), &tar)?;
        self.storage.write(&files.toc(), &toc.to_bytes()?)?;
        self.storage
            .write(&files.toc_index(), &index::build(&toc)?)?;
        Ok(tar.len() as u64)
    }

    fn import_marker(&self, w: &WritablePaths, n: u32) -> StoragePath {
        layout::import_files(w, n).toc()
    }

    /// Import folders past the completed ones (or not named by a number).
    fn sweep_imports(&self, _cat: &Catalog<Self>, w: &WritablePaths, done: u32) -> Result<usize> {
        let mut removed = 0;
        for name in self.storage.list(&layout::imports(w))? {
            if name.parse::<u32>().is_ok_and(|n| n < done) {
                continue;
            }
            self.storage.remove_all(&layout::imports(w).child(&name))?;
            removed += 1;
        }
        Ok(removed)
    }

    fn stack(&self, cat: &Catalog<Self>, s: &StoreName, id: &ImageId) -> Result<Stack> {
        crate::content::stack(cat, s, id)
    }

    fn raw_layer(&self, cat: &Catalog<Self>, s: &StoreName, id: &ImageId) -> Result<ByteStream> {
        let f = self.open_layer(cat, s, id)?;
        Ok(Box::pin(tokio::fs::File::from_std(f)))
    }

    fn raw_layer_file(
        &self,
        cat: &Catalog<Self>,
        s: &StoreName,
        id: &ImageId,
    ) -> Result<Option<std::fs::File>> {
        self.open_layer(cat, s, id).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use imagestore_core::{ImageStorer, ImageStorerExt, Metadata};

    use super::*;

    fn layer(name: &str, size: usize) -> anyhow::Result<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(size as u64);
        b.append_data(&mut h, name, vec![1u8; size].as_slice())?;
        Ok(b.into_inner()?)
    }

    /// A change that failed after marking the counter (simulated: the marker is there and the
    /// counter misses an image) is repaired by the next reader and by the next change, whose
    /// own marker must not bury it.
    #[tokio::test]
    async fn a_usage_change_left_pending_is_recomputed() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let store = LocalStore::open(Config {
            root: root.path().to_owned(),
        })
        .await?;
        let s = StoreName::new("u")?;
        store.create_image_store(&s).await?;
        let scratch = store.scratch(&s).await?;
        let a = store
            .write_image_bytes(
                &scratch,
                &ImageId::new("a")?,
                Metadata::new(),
                layer("a", 5000)?,
            )
            .await?;
        let sp = store.cat.store_paths(&s);
        let st = store.cat.storage();
        let expect = a.size;
        assert_eq!(store.image_storage_usage(&s).await?, expect);

        // The reader repairs it.
        st.write(&sp.usage(), b"0")?;
        st.write(&sp.usage_pending(), b"")?;
        assert_eq!(store.image_storage_usage(&s).await?, expect);
        assert!(st.stat(&sp.usage_pending())?.is_none());

        // So does the next change.
        st.write(&sp.usage(), b"0")?;
        st.write(&sp.usage_pending(), b"")?;
        let b = store
            .write_image_bytes(&a, &ImageId::new("b")?, Metadata::new(), layer("b", 7000)?)
            .await?;
        assert_eq!(store.image_storage_usage(&s).await?, expect + b.size);
        Ok(())
    }
}
