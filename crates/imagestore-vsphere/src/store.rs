//! The disk backends' stores, images, deletes, usage and owners, on any [`Datastore`] (a
//! local folder for `vmdk://`, vSphere for `vsphere://`).
//!
//! Datastore calls block, so `Inner` is a [`BlockingCatalog`] (the writable layers' part is in
//! `content.rs`) and [`DiskStore`] a `BlockingBackend` (its hooks are in `write.rs`); core
//! turns the pair into the storage traits. The protocol is the local backend's
//! (`docs/reliability.md`), over datastore files: a store lock serialises commits, deletes and
//! owner changes of a store; an id lock lets one writer of an id work at a time.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tracing::warn;

use imagestore_core::blocking::{BlockingCatalog, run_blocking};
use imagestore_core::cache::Cache;
use imagestore_core::image::{Metadata, store_url};
use imagestore_core::layer::stack::Stack;
use imagestore_core::layer::toc::Toc;
use imagestore_core::lock::{STORE_RANGE, range_for};
use imagestore_core::record::{self, ImageRecord, WritableRecord};
use imagestore_core::{
    ByteStream, Digest, Error, Image, ImageId, ObjectKind, OwnerName, Result, StoreName, Url,
    Writable,
};

use crate::config::Options;
use crate::datastore::{Datastore, DsLock, DsPath};
use crate::error::BACKEND;
use crate::layout::{self, ImagePaths, StorePaths, WritablePaths};

/// Longest chain of layers above scratch: each layer is one more delta disk in the chain
/// vSphere follows on every read (`docs/backends.md`).
pub const MAX_CHAIN_DEPTH: u32 = 128;

/// Decoded TOCs kept in memory per backend instance.
const TOC_CACHE: usize = 4096;

/// An image store on a datastore, in VIC's layout.
#[derive(Debug, Clone)]
pub struct DiskStore {
    pub(crate) inner: Arc<Inner>,
}

/// State shared by clones of a [`DiskStore`].
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) ds: Arc<dyn Datastore>,
    pub(crate) options: Options,
    /// Stores swept by this instance.
    swept: Mutex<HashSet<StoreName>>,
    /// Decoded TOCs by `store/id@sum` (images are immutable; the sum tells a rewritten id
    /// apart).
    pub(crate) tocs: Cache<Arc<Toc>>,
}

pub(crate) fn image_name(s: &StoreName, id: &ImageId) -> String {
    format!("{s}/{id}")
}

impl DiskStore {
    /// Opens the backend on `ds`: creates `VIC/` if needed and removes work folders of
    /// builds whose process is gone.
    pub async fn open(ds: Arc<dyn Datastore>, options: Options) -> Result<DiskStore> {
        let store = DiskStore {
            inner: Arc::new(Inner {
                ds,
                options,
                swept: Mutex::new(HashSet::new()),
                tocs: Cache::new(TOC_CACHE),
            }),
        };
        store
            .run(|i| {
                i.ds.mkdir(&layout::vic())?;
                crate::sweep::sweep_work(i.ds.as_ref())
            })
            .await?;
        Ok(store)
    }

    /// The datastore.
    pub fn datastore(&self) -> Arc<dyn Datastore> {
        self.inner.ds.clone()
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

impl Inner {
    /// The store's paths, after checking it exists and sweeping it on first use.
    pub(crate) fn open_store(&self, s: &StoreName) -> Result<StorePaths> {
        let sp = StorePaths::new(s);
        if !layout::is_committed(self.ds.as_ref(), &sp.scratch())? {
            return Err(Error::not_found(ObjectKind::Store, s));
        }
        let first = self
            .swept
            .lock()
            .map(|mut set| set.insert(s.clone()))
            .unwrap_or(true);
        if first {
            crate::sweep::sweep_store(self, s, &sp)?;
        }
        Ok(sp)
    }

    /// The store lock: commits, deletes and owner changes of one store exclude each other.
    pub(crate) fn store_lock(&self, sp: &StorePaths) -> Result<DsLock> {
        self.lock(&sp.lock(), STORE_RANGE)
    }

    /// The write lock of id `id` (images and writable layers share the namespace).
    pub(crate) fn id_lock(&self, sp: &StorePaths, id: &ImageId) -> Result<DsLock> {
        self.lock(&sp.lock(), range_for(id.as_str()))
    }

    /// The id lock if no one holds it.
    pub(crate) fn try_id_lock(&self, sp: &StorePaths, id: &str) -> Result<Option<DsLock>> {
        self.ds.lock(&sp.lock(), range_for(id), false)
    }

    fn lock(&self, path: &DsPath, range: u64) -> Result<DsLock> {
        self.ds
            .lock(path, range, true)?
            .ok_or_else(|| Error::backend(BACKEND, "a waiting lock returned nothing", true))
    }

    /// The committed image's record, `None` if absent.
    pub(crate) fn find_record(&self, p: &ImagePaths) -> Result<Option<ImageRecord>> {
        if !layout::is_committed(self.ds.as_ref(), p)? {
            return Ok(None);
        }
        match self.ds.read(&p.record())? {
            Some(bytes) => Ok(Some(record::decode(
                &self.ds.describe(&p.record()),
                &bytes,
            )?)),
            // Deleted between the two reads.
            None if !layout::is_committed(self.ds.as_ref(), p)? => Ok(None),
            None => Err(Error::corrupt(
                self.ds.describe(&p.record()),
                "a committed image has no record",
            )),
        }
    }

    /// The committed image's record; `NotFound` if absent.
    pub(crate) fn record(
        &self,
        s: &StoreName,
        sp: &StorePaths,
        id: &ImageId,
    ) -> Result<ImageRecord> {
        self.find_record(&sp.image(id))?
            .ok_or_else(|| Error::not_found(ObjectKind::Image, image_name(s, id)))
    }

    /// The records of the chain ending at `id`, scratch first.
    pub(crate) fn chain_records(
        &self,
        s: &StoreName,
        sp: &StorePaths,
        top: ImageRecord,
    ) -> Result<Vec<ImageRecord>> {
        let mut chain = vec![top];
        while let Some(p) = chain.last().and_then(|r| r.parent.clone()) {
            if chain.len() > MAX_CHAIN_DEPTH as usize + 1 {
                return Err(Error::corrupt(image_name(s, &p), "the chain has a loop"));
            }
            chain.push(self.record(s, sp, &p)?);
        }
        chain.reverse();
        Ok(chain)
    }

    /// The image a record describes, with the metadata stored beside it.
    pub(crate) fn image_of(
        &self,
        s: &StoreName,
        sp: &StorePaths,
        r: &ImageRecord,
    ) -> Result<Image> {
        let p = sp.image(&r.id);
        let mut image = r.to_image(s, self.ds.url(&p.disk))?;
        image.metadata = self.read_metadata(&p)?;
        Ok(image)
    }

    /// The metadata files of an image.
    fn read_metadata(&self, p: &ImagePaths) -> Result<Metadata> {
        let mut out = Metadata::new();
        for name in self.ds.list(&p.metadata())? {
            // Temporary files of a write in progress start with a dot; no key's file does.
            if name.starts_with('.') {
                continue;
            }
            if let Some(bytes) = self.ds.read(&p.metadata().child(&name))?
                && let Some((key, value)) = layout::metadata_entry(&name, bytes)
            {
                out.insert(key, value);
            }
        }
        Ok(out)
    }

    /// The writable layer's record, `None` if absent.
    pub(crate) fn find_writable(&self, w: &WritablePaths) -> Result<Option<WritableRecord>> {
        match self.ds.read(&w.record())? {
            Some(bytes) => Ok(Some(record::decode(
                &self.ds.describe(&w.record()),
                &bytes,
            )?)),
            None => Ok(None),
        }
    }

    /// The writable layer's record; `NotFound` if absent.
    pub(crate) fn writable_record(
        &self,
        s: &StoreName,
        sp: &StorePaths,
        id: &ImageId,
    ) -> Result<WritableRecord> {
        self.find_writable(&sp.writable(id))?
            .ok_or_else(|| Error::not_found(ObjectKind::Writable, image_name(s, id)))
    }

    pub(crate) fn read_usage(&self, sp: &StorePaths) -> Result<u64> {
        let p = sp.usage();
        let bytes = self.ds.read(&p)?.unwrap_or_default();
        String::from_utf8_lossy(&bytes)
            .trim()
            .parse()
            .map_err(|_| Error::corrupt(self.ds.describe(&p), "usage counter is not a number"))
    }

    /// Marks the usage counter as being changed: if the process dies before
    /// [`Inner::usage_end`], the next sweep recomputes it. Call with the store lock held,
    /// before the change that the counter follows becomes visible.
    ///
    /// A marker already there was left by a change that failed half-way (the store lock is
    /// held), so the counter is recomputed first: clearing that marker at the end of this
    /// change must not bury the failed one.
    pub(crate) fn usage_begin(&self, sp: &StorePaths) -> Result<()> {
        if self.ds.stat(&sp.usage_pending())?.is_some() {
            self.recompute_usage(sp)?;
        }
        self.ds.write(&sp.usage_pending(), b"")
    }

    /// Adds `delta` to the usage counter and ends the change begun by [`Inner::usage_begin`].
    pub(crate) fn usage_end(&self, sp: &StorePaths, delta: i128) -> Result<()> {
        let next = (i128::from(self.read_usage(sp)?) + delta).max(0);
        self.ds.write(&sp.usage(), next.to_string().as_bytes())?;
        self.ds.remove_file(&sp.usage_pending())?;
        Ok(())
    }

    /// Sets the usage counter to the sum of the committed images' sizes and clears the
    /// pending marker. Call with the store lock held.
    pub(crate) fn recompute_usage(&self, sp: &StorePaths) -> Result<()> {
        let mut total = 0u64;
        for name in self.ds.list(&sp.images())? {
            if !layout::is_layer_folder(&name) {
                continue;
            }
            let Ok(id) = ImageId::new(name.as_str()) else {
                continue;
            };
            if let Some(r) = self.find_record(&sp.image(&id))? {
                total += r.size;
            }
        }
        self.ds.write(&sp.usage(), total.to_string().as_bytes())?;
        self.ds.remove_file(&sp.usage_pending())?;
        Ok(())
    }

    /// Marks store `s` as swept by this instance.
    pub(crate) fn mark_swept(&self, s: &StoreName) {
        if let Ok(mut set) = self.swept.lock() {
            set.insert(s.clone());
        }
    }

    /// Who uses an image: children, writable layers, owners, and what the datastore knows
    /// (virtual machines on vSphere).
    pub(crate) fn users(&self, sp: &StorePaths, id: &ImageId) -> Result<Vec<String>> {
        let p = sp.image(id);
        let mut users = Vec::new();
        for c in self.ds.list(&p.children())? {
            let Ok(cid) = ImageId::new(c.as_str()) else {
                continue;
            };
            if self.find_writable(&sp.writable(&cid))?.is_some() {
                users.push(format!("writable {cid}"));
            } else if layout::is_committed(self.ds.as_ref(), &sp.image(&cid))? {
                users.push(format!("child {cid}"));
            }
        }
        for o in self.ds.list(&p.owners())? {
            users.push(format!("owner {o}"));
        }
        users.extend(self.ds.disk_users(&p.disk)?);
        Ok(users)
    }

    /// The store and image a locator of this backend names.
    fn parse_locator(&self, url: &Url) -> Result<(StoreName, ImageId)> {
        let bad = || {
            Error::invalid(format!(
                "{url} is not an image URL of the store at {}",
                self.ds.base_url()
            ))
        };
        let path = self.ds.path_of(url).ok_or_else(bad)?;
        let parts: Vec<&str> = path.as_str().split('/').collect();
        match parts.as_slice() {
            ["VIC", store, "images", id, disk] if *disk == format!("{id}.vmdk") => {
                Ok((StoreName::new(*store)?, ImageId::new(*id)?))
            }
            _ => Err(bad()),
        }
    }
}

/// The catalogue half of the disk backends; the writable layers' part is in `content.rs`'s
/// helpers, called from here.
impl BlockingCatalog for Inner {
    fn create_store(&self, s: &StoreName) -> Result<Url> {
        let _guard = self.lock(&layout::root_lock(), range_for(s.as_str()))?;
        let sp = StorePaths::new(s);
        if layout::is_committed(self.ds.as_ref(), &sp.scratch())? {
            return Err(Error::already_exists(ObjectKind::Store, s));
        }
        // What a crashed creation or deletion left.
        self.ds.remove_all(&sp.dir)?;
        let r = crate::write::create_scratch(self, &sp);
        if let Err(e) = r {
            let _ = self.ds.remove_all(&sp.dir);
            return Err(e);
        }
        self.mark_swept(s);
        Ok(store_url(&self.ds.base_url(), s))
    }

    fn delete_store(&self, s: &StoreName) -> Result<()> {
        let sp = self.open_store(s)?;
        let _root = self.lock(&layout::root_lock(), range_for(s.as_str()))?;
        let _guard = self.store_lock(&sp)?;
        let mut left: Vec<String> = Vec::new();
        for name in self.ds.list(&sp.images())? {
            if !layout::is_layer_folder(&name) {
                continue;
            }
            let Ok(id) = ImageId::new(name.as_str()) else {
                continue;
            };
            if layout::is_committed(self.ds.as_ref(), &sp.image(&id))? {
                left.push(name);
            }
        }
        for name in self.ds.list(&sp.writables())? {
            if let Ok(id) = ImageId::new(name.as_str())
                && self.find_writable(&sp.writable(&id))?.is_some()
            {
                left.push(format!("writable {name}"));
            }
        }
        if !left.is_empty() {
            return Err(imagestore_core::storer::store_not_empty(s, &left));
        }
        // Invisible first; a stop half way leaves a folder the next creation replaces.
        self.ds.remove_file(&sp.scratch().manifest())?;
        if let Ok(mut set) = self.swept.lock() {
            set.remove(s);
        }
        self.ds.remove_all(&sp.dir)
    }

    fn store_url(&self, s: &StoreName) -> Result<Url> {
        self.open_store(s)?;
        Ok(store_url(&self.ds.base_url(), s))
    }

    fn list_stores(&self) -> Result<Vec<Url>> {
        let mut out = Vec::new();
        for name in self.ds.list(&layout::vic())? {
            if let Ok(s) = StoreName::new(name)
                && layout::is_committed(self.ds.as_ref(), &StorePaths::new(&s).scratch())?
            {
                out.push(store_url(&self.ds.base_url(), &s));
            }
        }
        Ok(out)
    }

    fn image(&self, s: &StoreName, id: &ImageId) -> Result<Image> {
        let sp = self.open_store(s)?;
        let r = self.record(s, &sp, id)?;
        self.image_of(s, &sp, &r)
    }

    fn images(&self, s: &StoreName, ids: &[ImageId]) -> Result<Vec<Image>> {
        let sp = self.open_store(s)?;
        let wanted: Vec<ImageId> = if ids.is_empty() {
            self.ds
                .list(&sp.images())?
                .into_iter()
                .filter(|n| layout::is_layer_folder(n))
                .filter_map(|n| ImageId::new(n).ok())
                .collect()
        } else {
            ids.to_vec()
        };
        let mut out = Vec::new();
        for id in &wanted {
            if let Some(r) = self.find_record(&sp.image(id))? {
                out.push(self.image_of(s, &sp, &r)?);
            }
        }
        Ok(out)
    }

    fn delete_image(&self, image: &Image) -> Result<Image> {
        let (s, id) = (&image.store, &image.id);
        if id.is_scratch() {
            return Err(Error::invalid(format!(
                "the scratch image of store {s} cannot be deleted"
            )));
        }
        let sp = self.open_store(s)?;
        let _guard = self.store_lock(&sp)?;
        let r = self.record(s, &sp, id)?;
        let users = self.users(&sp, id)?;
        if !users.is_empty() {
            return Err(Error::ImageInUse {
                image: image_name(s, id),
                users,
            });
        }
        let found = self.image_of(s, &sp, &r)?;
        let p = sp.image(id);
        self.usage_begin(&sp)?;
        // VIC's order: the manifest (the image is gone), then the disk, then the folder.
        if let Err(e) = self.ds.remove_file(&p.manifest()) {
            // The answer may be lost though the manifest is gone; then the delete happened.
            if layout::is_committed(self.ds.as_ref(), &p)? {
                return Err(e);
            }
        }
        // From here the image is gone, so the rest is tidying: a child marker without its
        // child counts for nothing, a folder without a manifest is swept, a pending usage
        // change is recomputed by the next reader.
        let tidy = || -> Result<()> {
            if let Some(parent) = &r.parent {
                self.ds.remove_file(&sp.image(parent).child(id))?;
            }
            self.usage_end(&sp, -i128::from(r.size))?;
            self.ds.remove_file(&p.disk)?;
            self.ds.remove_all(&p.dir)
        };
        if let Err(e) = tidy() {
            warn!(image = %image_name(s, id), error = %e, "deleted; leftovers left to the sweep");
        }
        Ok(found)
    }

    /// The usage counter; one a failed change left pending is recomputed first.
    fn store_usage(&self, s: &StoreName) -> Result<u64> {
        let sp = self.open_store(s)?;
        if self.ds.stat(&sp.usage_pending())?.is_some() {
            // Commits and deletes hold the store lock from marking to clearing, so a marker
            // seen under the lock is one a failure left.
            let _guard = self.store_lock(&sp)?;
            if self.ds.stat(&sp.usage_pending())?.is_some() {
                self.recompute_usage(&sp)?;
            }
        }
        self.read_usage(&sp)
    }

    fn layer_usage(&self, s: &StoreName, id: &ImageId) -> Result<u64> {
        let sp = self.open_store(s)?;
        let r = self.record(s, &sp, id)?;
        Ok(if id.is_scratch() { 0 } else { r.size })
    }

    fn url(&self, s: &StoreName, id: &ImageId) -> Result<Url> {
        let sp = self.open_store(s)?;
        self.record(s, &sp, id)?;
        Ok(self.ds.url(&sp.image(id).disk))
    }

    /// Registered owners, and the VMs with a disk backed by the image's disk (as `vm-<name>`).
    fn owners(&self, url: &Url) -> Result<Vec<OwnerName>> {
        let (s, id) = self.parse_locator(url)?;
        let sp = self.open_store(&s)?;
        self.record(&s, &sp, &id)?;
        let p = sp.image(&id);
        let mut names: Vec<OwnerName> = self
            .ds
            .list(&p.owners())?
            .into_iter()
            .filter_map(|n| OwnerName::new(n).ok())
            .collect();
        for user in self.ds.disk_users(&p.disk)? {
            let name = user.strip_prefix("vm ").unwrap_or(&user);
            if let Ok(o) = OwnerName::new(format!("vm-{name}")) {
                names.push(o);
            }
        }
        Ok(names)
    }

    fn set_owner(&self, s: &StoreName, id: &ImageId, owner: &OwnerName, held: bool) -> Result<()> {
        let sp = self.open_store(s)?;
        let _guard = self.store_lock(&sp)?;
        self.record(s, &sp, id)?;
        let p = sp.image(id);
        let marker = p.owner(owner);
        if held {
            self.ds.mkdir(&p.owners())?;
            self.ds.create_new(&marker, b"")?;
            Ok(())
        } else if self.ds.remove_file(&marker)? {
            Ok(())
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
        self.delete_writable_sync(s, id)
    }

    fn raw_layer(&self, _s: &StoreName, _id: &ImageId) -> Result<ByteStream> {
        Err(Error::Unsupported {
            operation: "raw layer export (layers are kept as delta disks, not as tars)",
            backend: self.ds.scheme(),
        })
    }

    fn flat_vmdk(&self, s: &StoreName, id: &ImageId) -> Result<ByteStream> {
        self.export_vmdk_sync(s, id)
    }
}

/// Checks made by every write before it reads its body.
pub(crate) enum Precheck {
    /// The image exists already: return it.
    Found(Image),
    /// Go ahead: the store's paths and the parent's record.
    Write(StorePaths, ImageRecord),
}

impl Inner {
    /// What a write of `id` on `parent` (expecting `sum`) should do now.
    pub(crate) fn precheck(
        &self,
        s: &StoreName,
        parent: &ImageId,
        id: &ImageId,
        sum: Option<&Digest>,
    ) -> Result<Precheck> {
        let sp = self.open_store(s)?;
        let parent_rec = self.find_record(&sp.image(parent))?.ok_or_else(|| {
            Error::not_found(
                ObjectKind::Image,
                format!("{s}/{parent} (the parent of {id})"),
            )
        })?;
        if self.find_writable(&sp.writable(id))?.is_some() {
            return Err(Error::Conflict {
                kind: ObjectKind::Image,
                name: image_name(s, id),
                reason: "a writable layer has this id".to_owned(),
            });
        }
        if let Some(r) = self.find_record(&sp.image(id))? {
            imagestore_core::storer::check_existing_write(
                image_name(s, id),
                r.parent.as_ref(),
                r.sum.as_ref(),
                parent,
                sum,
            )?;
            return Ok(Precheck::Found(self.image_of(s, &sp, &r)?));
        }
        imagestore_core::storer::check_depth(parent_rec.depth, MAX_CHAIN_DEPTH)?;
        Ok(Precheck::Write(sp, parent_rec))
    }
}
