//! The local backend over a directory: [`LocalStore`], its handle, and `Inner`, its
//! catalogue (a [`BlockingCatalog`]: stores, images, deletes, usage and owners; the writable
//! layers' part is in `content.rs`). The handle's streaming hooks (id lock, write, import) are
//! in `write.rs`; core turns the pair into the storage traits.
//!
//! Every catalogue call is synchronous file-system work, run on the blocking pool.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use imagestore_core::blocking::{BlockingCatalog, run_blocking};
use imagestore_core::image::store_url;
use imagestore_core::layer::stack::Stack;
use imagestore_core::names::SCRATCH_ID;
use imagestore_core::{
    ByteStream, Error, Image, ImageId, ObjectKind, OwnerName, Result, StoreName, Url, Writable,
};

use crate::config::Config;
use crate::error::{BACKEND, IoContext};
use crate::fsx;
use crate::layout::{Root, StoreDir};
use crate::lock::{self, LockGuard};
use crate::record::{ImageRecord, WritableRecord};
use crate::tocs::TocCache;

/// Longest chain of layers above scratch this backend accepts.
pub const MAX_CHAIN_DEPTH: u32 = 256;

/// A local image-store backend rooted at a directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    pub(crate) inner: Arc<Inner>,
}

/// State shared by clones of a [`LocalStore`].
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) root: Root,
    pub(crate) base_url: Url,
    /// Stores swept by this instance.
    swept: Mutex<HashSet<StoreName>>,
    /// Decoded TOCs by `store/id@sum`: images are immutable, and the sum tells a rewritten id
    /// apart.
    pub(crate) tocs: Arc<TocCache>,
}

impl LocalStore {
    /// Opens a local backend for `config`, creating nothing: the root directory is made by the
    /// first store creation, so reading a root that does not exist finds no stores. Leftovers
    /// of crashed store creations are swept.
    pub async fn open(config: Config) -> Result<LocalStore> {
        let base_url = Url::from_directory_path(&config.root).map_err(|()| {
            Error::invalid(format!("{} is not an absolute path", config.root.display()))
        })?;
        let inner = Arc::new(Inner {
            root: Root { dir: config.root },
            base_url,
            swept: Mutex::new(HashSet::new()),
            tocs: Arc::new(TocCache::default()),
        });
        let store = LocalStore { inner };
        store.run(|i| i.check_root()).await?;
        Ok(store)
    }

    /// The root directory.
    pub fn root(&self) -> PathBuf {
        self.inner.root.dir.clone()
    }

    /// Runs blocking work on the blocking pool.
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        run_blocking(BACKEND, self.inner.clone(), f).await
    }
}

fn image_name(store: &StoreName, id: &ImageId) -> String {
    format!("{store}/{id}")
}

impl Inner {
    /// Checks the root when a backend is opened, creating nothing: a missing root is a backend
    /// without stores (the first store creation makes it); an existing one must be a
    /// directory, and if it holds the format file, an imagestore-local version 1 root, whose
    /// leftovers are swept.
    fn check_root(&self) -> Result<()> {
        let dir = &self.root.dir;
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::invalid(format!(
                    "{} is a file, not a directory; a file:// URL names the directory holding the stores",
                    dir.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).at(dir),
        }
        let fmt = self.root.format_file();
        if !fsx::exists(&fmt)? {
            return Ok(());
        }
        let bytes = std::fs::read(&fmt).at(&fmt)?;
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::corrupt(fmt.display().to_string(), e.to_string()))?;
        if v.get("format").and_then(|f| f.as_str()) != Some("imagestore-local")
            || v.get("version").and_then(|v| v.as_u64()) != Some(1)
        {
            return Err(Error::corrupt(
                fmt.display().to_string(),
                "not an imagestore-local version 1 root",
            ));
        }
        crate::sweep::sweep_root(self)
    }

    /// Makes the root (directory, format file, subdirectories) if it is not there yet; only
    /// writing operations call this.
    fn ensure_root(&self) -> Result<()> {
        let dir = &self.root.dir;
        if dir.exists() && !dir.is_dir() {
            return Err(Error::invalid(format!(
                "{} is a file, not a directory; a file:// URL names the directory holding the stores",
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir).at(dir)?;
        let fmt = self.root.format_file();
        if !fsx::exists(&fmt)? {
            let body = br#"{"format":"imagestore-local","version":1}"#;
            match fsx::write_new_synced(&fmt, body) {
                Ok(()) => {}
                Err(_) if fsx::exists(&fmt)? => {}
                Err(e) => return Err(e),
            }
        }
        for d in [self.root.stores(), self.root.tmp(), self.root.trash()] {
            fsx::mkdir(&d, true)?;
        }
        Ok(())
    }

    pub(crate) fn store_dir(&self, s: &StoreName) -> StoreDir {
        self.root.store(s)
    }

    /// The store's directory, after checking it exists and sweeping it on first use.
    pub(crate) fn open_store(&self, s: &StoreName) -> Result<StoreDir> {
        let sd = self.store_dir(s);
        if !fsx::exists(&sd.images())? {
            return Err(Error::not_found(ObjectKind::Store, s));
        }
        let first = self
            .swept
            .lock()
            .map(|mut set| set.insert(s.clone()))
            .unwrap_or(true);
        if first {
            crate::sweep::sweep_store(self, s, &sd)?;
        }
        Ok(sd)
    }

    pub(crate) fn store_lock(&self, sd: &StoreDir) -> Result<LockGuard> {
        lock::lock_blocking(&sd.lock_file(), lock::STORE_RANGE)
    }

    pub(crate) fn image_url(&self, s: &StoreName, id: &ImageId) -> Url {
        let mut u = self.base_url.clone();
        let path = self.store_dir(s).image(id).dir;
        u.set_path(&path.to_string_lossy());
        u
    }

    /// The committed image's record, `None` if absent.
    pub(crate) fn find_record(&self, sd: &StoreDir, id: &ImageId) -> Result<Option<ImageRecord>> {
        let d = sd.image(id);
        if !fsx::exists(&d.committed())? {
            return Ok(None);
        }
        match crate::record::read::<ImageRecord>(&d.record()) {
            Ok(r) => Ok(Some(r)),
            // Deleted between the two reads.
            Err(_) if !fsx::exists(&d.committed())? => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn record(&self, s: &StoreName, sd: &StoreDir, id: &ImageId) -> Result<ImageRecord> {
        self.find_record(sd, id)?
            .ok_or_else(|| Error::not_found(ObjectKind::Image, image_name(s, id)))
    }

    pub(crate) fn image_of(&self, s: &StoreName, r: &ImageRecord) -> Result<Image> {
        r.to_image(s, self.image_url(s, &r.id))
    }

    pub(crate) fn writable_exists(&self, sd: &StoreDir, id: &ImageId) -> Result<bool> {
        fsx::exists(&sd.writable(id).committed())
    }

    pub(crate) fn writable_record(
        &self,
        s: &StoreName,
        sd: &StoreDir,
        id: &ImageId,
    ) -> Result<WritableRecord> {
        let w = sd.writable(id);
        if !fsx::exists(&w.committed())? {
            return Err(Error::not_found(ObjectKind::Writable, image_name(s, id)));
        }
        crate::record::read::<WritableRecord>(&w.record())
    }

    pub(crate) fn read_usage(&self, sd: &StoreDir) -> Result<u64> {
        let p = sd.usage();
        let text = std::fs::read_to_string(&p).at(&p)?;
        text.trim()
            .parse()
            .map_err(|_| Error::corrupt(p.display().to_string(), "usage counter is not a number"))
    }

    /// Adds `delta` to the usage counter. Call with the store lock held, between
    /// [`Inner::usage_begin`] and [`Inner::usage_end`].
    pub(crate) fn usage_add(&self, sd: &StoreDir, delta: i128) -> Result<()> {
        let cur = i128::from(self.read_usage(sd)?);
        let next = (cur + delta).max(0);
        fsx::replace_synced(&sd.usage(), next.to_string().as_bytes())
    }

    /// Marks the usage counter as being changed: if the process dies before
    /// [`Inner::usage_end`], the next open recomputes it. A marker already there was left
    /// by a change that failed half-way (the store lock is held), so the counter is
    /// recomputed first: clearing that marker must not bury the failed change.
    pub(crate) fn usage_begin(&self, sd: &StoreDir) -> Result<()> {
        if fsx::exists(&sd.usage_pending())? {
            self.recompute_usage(sd)?;
        }
        fsx::replace_synced(&sd.usage_pending(), b"")
    }

    /// Sets the usage counter to the sum of the committed images' sizes and clears the
    /// pending marker. Call with the store lock held.
    pub(crate) fn recompute_usage(&self, sd: &StoreDir) -> Result<()> {
        let mut total = 0u64;
        for name in fsx::list_names(&sd.images())? {
            let Ok(id) = ImageId::new(name.as_str()) else {
                continue;
            };
            if id.is_scratch() {
                continue;
            }
            if let Some(r) = self.find_record(sd, &id)? {
                total += r.size;
            }
        }
        fsx::replace_synced(&sd.usage(), total.to_string().as_bytes())?;
        fsx::remove_file(&sd.usage_pending())?;
        fsx::sync_dir(&sd.dir)
    }

    /// Ends a usage change.
    pub(crate) fn usage_end(&self, sd: &StoreDir) -> Result<()> {
        fsx::remove_file(&sd.usage_pending())?;
        fsx::sync_dir(&sd.dir)
    }

    /// Who uses an image: children, writable layers and owners.
    pub(crate) fn users(&self, sd: &StoreDir, id: &ImageId) -> Result<Vec<String>> {
        let d = sd.image(id);
        let mut users = Vec::new();
        for c in fsx::list_names(&d.children())? {
            let Ok(cid) = ImageId::new(c.as_str()) else {
                continue;
            };
            if self.writable_exists(sd, &cid)? {
                users.push(format!("writable {cid}"));
            } else {
                users.push(format!("child {cid}"));
            }
        }
        for o in fsx::list_names(&d.owners())? {
            users.push(format!("owner {o}"));
        }
        Ok(users)
    }

    /// Parses an image locator of this backend back into `(store, id)`.
    fn parse_locator(&self, url: &Url) -> Result<(StoreName, ImageId)> {
        let bad = || {
            Error::invalid(format!(
                "{url} is not an image URL of the store at {}",
                self.base_url
            ))
        };
        if url.scheme() != "file" {
            return Err(bad());
        }
        let path = url.to_file_path().map_err(|()| bad())?;
        let rel = path.strip_prefix(self.root.stores()).map_err(|_| bad())?;
        let parts: Vec<&str> = rel.iter().filter_map(|c| c.to_str()).collect();
        match parts.as_slice() {
            [store, "images", id] => Ok((StoreName::new(*store)?, ImageId::new(*id)?)),
            _ => Err(bad()),
        }
    }
}

/// The catalogue half of the local backend; the writable layers' part is in `content.rs`'s
/// helpers, called from here.
impl BlockingCatalog for Inner {
    fn create_store(&self, s: &StoreName) -> Result<Url> {
        self.ensure_root()?;
        let _guard = lock::lock_blocking(&self.root.lock_file(), lock::range_for(s.as_str()))?;
        let final_dir = self.store_dir(s);
        if fsx::exists(&final_dir.dir)? {
            return Err(Error::already_exists(ObjectKind::Store, s));
        }
        let tmp = self.root.tmp().join(format!("{s}.{}", fsx::nonce()));
        let built = crate::scratch::build_store(&tmp);
        if let Err(e) = built {
            let _ = fsx::remove_all(&tmp);
            return Err(e);
        }
        if let Err(e) = std::fs::rename(&tmp, &final_dir.dir).at(&final_dir.dir) {
            let _ = fsx::remove_all(&tmp);
            return Err(e);
        }
        fsx::sync_dir(&self.root.stores())?;
        if let Ok(mut set) = self.swept.lock() {
            set.insert(s.clone());
        }
        Ok(store_url(&self.base_url, s))
    }

    fn delete_store(&self, s: &StoreName) -> Result<()> {
        let sd = self.open_store(s)?;
        let _root_guard = lock::lock_blocking(&self.root.lock_file(), lock::range_for(s.as_str()))?;
        let _guard = self.store_lock(&sd)?;
        let mut left: Vec<String> = fsx::list_names(&sd.images())?
            .into_iter()
            .filter(|n| n != SCRATCH_ID)
            .filter(|n| {
                ImageId::new(n.as_str())
                    .ok()
                    .is_some_and(|id| fsx::exists(&sd.image(&id).committed()).unwrap_or(true))
            })
            .collect();
        left.extend(
            fsx::list_names(&sd.writables())?
                .into_iter()
                .map(|w| format!("writable {w}")),
        );
        if !left.is_empty() {
            return Err(imagestore_core::storer::store_not_empty(s, &left));
        }
        let doomed = self.root.trash().join(format!("{s}.{}", fsx::nonce()));
        std::fs::rename(&sd.dir, &doomed).at(&sd.dir)?;
        fsx::sync_dir(&self.root.stores())?;
        if let Ok(mut set) = self.swept.lock() {
            set.remove(s);
        }
        fsx::remove_all(&doomed)
    }

    fn store_url(&self, s: &StoreName) -> Result<Url> {
        self.open_store(s)?;
        Ok(store_url(&self.base_url, s))
    }

    fn list_stores(&self) -> Result<Vec<Url>> {
        let mut out = Vec::new();
        for name in fsx::list_names(&self.root.stores())? {
            if let Ok(s) = StoreName::new(name) {
                out.push(store_url(&self.base_url, &s));
            }
        }
        Ok(out)
    }

    fn image(&self, s: &StoreName, id: &ImageId) -> Result<Image> {
        let sd = self.open_store(s)?;
        let r = self.record(s, &sd, id)?;
        self.image_of(s, &r)
    }

    fn images(&self, s: &StoreName, ids: &[ImageId]) -> Result<Vec<Image>> {
        let sd = self.open_store(s)?;
        let mut out = Vec::new();
        if ids.is_empty() {
            for name in fsx::list_names(&sd.images())? {
                let Ok(id) = ImageId::new(name) else { continue };
                if id.is_scratch() {
                    continue;
                }
                if let Some(r) = self.find_record(&sd, &id)? {
                    out.push(self.image_of(s, &r)?);
                }
            }
        } else {
            for id in ids {
                if let Some(r) = self.find_record(&sd, id)? {
                    out.push(self.image_of(s, &r)?);
                }
            }
        }
        Ok(out)
    }

    fn delete_image(&self, image: &Image) -> Result<Image> {
        let s = &image.store;
        let id = &image.id;
        if id.is_scratch() {
            return Err(Error::invalid(format!(
                "the scratch image of store {s} cannot be deleted"
            )));
        }
        let sd = self.open_store(s)?;
        let guard = self.store_lock(&sd)?;
        let r = self.record(s, &sd, id)?;
        let users = self.users(&sd, id)?;
        if !users.is_empty() {
            return Err(Error::ImageInUse {
                image: image_name(s, id),
                users,
            });
        }
        let found = self.image_of(s, &r)?;
        let d = sd.image(id);
        self.usage_begin(&sd)?;
        // Invisible first, then unlinked from the parent, then moved out of the way.
        fsx::remove_file(&d.committed())?;
        fsx::sync_dir(&d.dir)?;
        if let Some(p) = &r.parent {
            let pd = sd.image(p);
            fsx::remove_file(&pd.child(id))?;
            fsx::sync_dir(&pd.children())?;
        }
        let doomed = sd.trash().join(format!("{id}.{}", fsx::nonce()));
        std::fs::rename(&d.dir, &doomed).at(&d.dir)?;
        fsx::sync_dir(&sd.images())?;
        self.usage_add(&sd, -i128::from(r.size))?;
        self.usage_end(&sd)?;
        drop(guard);
        fsx::remove_all(&doomed)?;
        Ok(found)
    }

    /// The usage counter; one a failed change left pending is recomputed first.
    fn store_usage(&self, s: &StoreName) -> Result<u64> {
        let sd = self.open_store(s)?;
        if fsx::exists(&sd.usage_pending())? {
            // Commits and deletes hold the store lock from marking to clearing, so a marker
            // seen under the lock is one a failure left.
            let _guard = self.store_lock(&sd)?;
            if fsx::exists(&sd.usage_pending())? {
                self.recompute_usage(&sd)?;
            }
        }
        self.read_usage(&sd)
    }

    fn layer_usage(&self, s: &StoreName, id: &ImageId) -> Result<u64> {
        let sd = self.open_store(s)?;
        let r = self.record(s, &sd, id)?;
        Ok(if id.is_scratch() { 0 } else { r.size })
    }

    fn url(&self, s: &StoreName, id: &ImageId) -> Result<Url> {
        let sd = self.open_store(s)?;
        self.record(s, &sd, id)?;
        Ok(self.image_url(s, id))
    }

    fn owners(&self, url: &Url) -> Result<Vec<OwnerName>> {
        let (s, id) = self.parse_locator(url)?;
        let sd = self.open_store(&s)?;
        self.record(&s, &sd, &id)?;
        let names = fsx::list_names(&sd.image(&id).owners())?;
        Ok(names
            .into_iter()
            .filter_map(|n| OwnerName::new(n).ok())
            .collect())
    }

    fn set_owner(&self, s: &StoreName, id: &ImageId, owner: &OwnerName, held: bool) -> Result<()> {
        let sd = self.open_store(s)?;
        let _guard = self.store_lock(&sd)?;
        self.record(s, &sd, id)?;
        let d = sd.image(id);
        let p = d.owner(owner);
        if held {
            fsx::mkdir(&d.owners(), true)?;
            if !fsx::exists(&p)? {
                fsx::write_new_synced(&p, b"")?;
                fsx::sync_dir(&d.owners())?;
            }
            Ok(())
        } else if fsx::remove_file(&p)? {
            fsx::sync_dir(&d.owners())
        } else {
            Err(Error::not_found(
                ObjectKind::Owner,
                format!("{owner} on {}", image_name(s, id)),
            ))
        }
    }

    fn stack(&self, s: &StoreName, id: &ImageId) -> Result<Stack> {
        self.stack_sync(s, id)
    }

    fn create_writable(&self, parent: &Image, id: &ImageId) -> Result<Writable> {
        self.create_writable_sync(&parent.store, &parent.id, id)
    }

    fn writable(&self, s: &StoreName, id: &ImageId) -> Result<Writable> {
        self.get_writable_sync(s, id)
    }

    fn delete_writable(&self, s: &StoreName, id: &ImageId) -> Result<()> {
        let sd = self.open_store(s)?;
        self.delete_writable_sync(s, &sd, id)
    }

    fn raw_layer(&self, s: &StoreName, id: &ImageId) -> Result<ByteStream> {
        let sd = self.open_store(s)?;
        self.record(s, &sd, id)?;
        let path = sd.image(id).layer();
        let f = std::fs::File::open(&path).at(&path)?;
        Ok(Box::pin(tokio::fs::File::from_std(f)))
    }

    fn flat_vmdk(&self, _s: &StoreName, _id: &ImageId) -> Result<ByteStream> {
        Err(Error::Unsupported {
            operation: "VMDK export (images are kept as layer tars, not disks)",
            backend: BACKEND,
        })
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
        let sd = store.inner.store_dir(&s);
        let expect = a.size;
        assert_eq!(store.image_storage_usage(&s).await?, expect);

        // The reader repairs it.
        std::fs::write(sd.usage(), "0")?;
        std::fs::write(sd.usage_pending(), "")?;
        assert_eq!(store.image_storage_usage(&s).await?, expect);
        assert!(!sd.usage_pending().exists());

        // So does the next change.
        std::fs::write(sd.usage(), "0")?;
        std::fs::write(sd.usage_pending(), "")?;
        let b = store
            .write_image_bytes(&a, &ImageId::new("b")?, Metadata::new(), layer("b", 7000)?)
            .await?;
        assert_eq!(store.image_storage_usage(&s).await?, expect + b.size);
        Ok(())
    }
}
