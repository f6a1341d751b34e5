//! The catalogue: the protocol that makes a file-like store safe, written once over
//! [`Storage`] for every backend that keeps its stores as folders and files (`file://`,
//! `vmdk://`, `vsphere://`). The rules are in `docs/reliability.md`; in short:
//!
//! ```text
//! <stores>/<store>/<lock>                   the store lock (byte 0) and per-id write locks
//! <stores>/<store>/usage, usage.pending     the usage counter and its change marker
//! <stores>/<store>/images/<id>/image.json   the record
//! <stores>/<store>/images/<id>/children/<c> an image or writable layer on this one
//! <stores>/<store>/images/<id>/owners/<o>   a registered owner
//! <stores>/<store>/images/<id>/<marker>     written last: the image is committed
//! <stores>/<store>/writable/<id>/writable.json  written last: the writable layer exists
//! ```
//! plus whatever files the backend's [`Representation`] keeps beside them (a layer tar and its
//! TOC, a delta disk, metadata files).
//!
//! * A store exists while its scratch image is committed; creation writes scratch's marker
//!   last, deletion removes it first.
//! * A write takes the id lock, fills the image folder (left over folders of its id are
//!   uncommitted, so its own), then under the store lock checks the parent is still
//!   committed, marks the usage counter pending, links the child and writes the marker: the
//!   commit point. What fails after it is logged and left to the sweep, never returned.
//! * A delete, under the store lock, refuses an image with committed children, writable
//!   layers or owners; it removes the marker first (the image is gone), then tidies.
//! * The sweep, on the first use of a store by a backend instance and under the store lock,
//!   removes what only a crash leaves: uncommitted folders and dangling child links whose id
//!   lock is free, unfinished imports, and a counter left pending.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use tracing::{info, warn};
use url::Url;

use crate::digest::Digest;
use crate::error::{Error, ObjectKind, Result};
use crate::image::{Image, Metadata, store_url};
use crate::layer::stack::Stack;
use crate::layer::toc::Toc;
use crate::names::{ImageId, OwnerName, SCRATCH_ID, StoreName};
use crate::storer::{ByteStream, Writable, check_depth, check_existing_write, store_not_empty};

use super::blocking::{BlockingCatalog, run_blocking};
use super::cache::Cache;
use super::lock::{STORE_RANGE, range_for};
use super::record::{self, ImageRecord, WritableRecord};
use super::storage::{Storage, StorageLock, StoragePath};

/// Decoded TOCs kept in memory per backend instance.
const TOC_CACHE: usize = 4096;

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

/// How a backend keeps layers in its image and writable folders: what the catalogue cannot
/// know. Every method blocks and runs on the blocking pool.
pub trait Representation: Sized + Send + Sync + fmt::Debug + 'static {
    /// Longest chain of layers above scratch the backend accepts.
    fn max_chain_depth(&self) -> u32;

    /// Makes the storage ready for its first store (called by every store creation, under
    /// the root lock): by default, creates the stores folder.
    fn prepare_root(&self, cat: &Catalog<Self>) -> Result<()> {
        cat.storage().mkdir(&cat.layout().stores)?;
        Ok(())
    }

    /// Writes the scratch image's files into `p` (which exists), all but its record and
    /// marker, and returns the bytes they occupy.
    fn write_scratch(&self, cat: &Catalog<Self>, p: &ImagePaths) -> Result<u64>;

    /// The path an image's locator URL names (by default its folder).
    fn locator(&self, p: &ImagePaths) -> StoragePath {
        p.dir.clone()
    }

    /// The image's metadata when the backend keeps it outside the record; `None` (the
    /// default) takes the record's.
    fn metadata(&self, _cat: &Catalog<Self>, _p: &ImagePaths) -> Result<Option<Metadata>> {
        Ok(None)
    }

    /// The file whose presence completes import `n` of writable layer `w` (imports are
    /// numbered from 0 and complete in order).
    fn import_marker(&self, w: &WritablePaths, n: u32) -> StoragePath;

    /// Removes the leftovers of imports into `w` that never completed (`done` did); returns
    /// how many things it removed. Called by the sweep with the layer's id lock held.
    fn sweep_imports(&self, cat: &Catalog<Self>, w: &WritablePaths, done: u32) -> Result<usize>;

    /// Removes backend-specific leftovers of store `sp` (the sweep holds the store lock).
    fn sweep_store(&self, _cat: &Catalog<Self>, _sp: &StorePaths) -> Result<usize> {
        Ok(0)
    }

    /// The layers of image or writable layer `id`, for export, diff and checkout.
    fn stack(&self, cat: &Catalog<Self>, s: &StoreName, id: &ImageId) -> Result<Stack>;

    /// The layer of image `id` exactly as written; by default `Unsupported`.
    fn raw_layer(&self, cat: &Catalog<Self>, _s: &StoreName, _id: &ImageId) -> Result<ByteStream> {
        Err(Error::Unsupported {
            operation: "raw layer export",
            backend: cat.scheme(),
        })
    }
}

/// The catalogue of one backend instance: the protocol over `storage` in `layout`, with the
/// layers kept as `R` keeps them.
#[derive(Debug)]
pub struct Catalog<R> {
    storage: Arc<dyn Storage>,
    layout: Layout,
    rep: R,
    /// Stores swept by this instance.
    swept: Mutex<HashSet<StoreName>>,
    /// Decoded TOCs by [`Catalog::toc_key`].
    tocs: Arc<Cache<Arc<Toc>>>,
}

/// What a write should do, decided before it reads its body.
#[derive(Debug)]
pub enum Precheck {
    /// The image exists already (same parent and sum): return it.
    Found(Image),
    /// Go ahead: the store's paths and the parent's record.
    Write(StorePaths, ImageRecord),
}

/// A write that may go ahead ([`begin_write`]).
#[derive(Debug)]
pub struct WriteSlot {
    /// The id lock, held until the write ends.
    pub lock: StorageLock,
    /// The store.
    pub store: StorePaths,
    /// The parent's record.
    pub parent: ImageRecord,
}

/// What [`begin_write`] found.
#[derive(Debug)]
pub enum Begin {
    /// The image exists already: return it.
    Found(Image),
    /// Write it.
    Write(WriteSlot),
}

/// Waits for and takes the id lock of `id` in store `s` (`NotFound` if the store does not
/// exist), on the blocking pool: the `lock_id` of every catalogue backend.
pub async fn lock_id<R: Representation>(
    cat: &Arc<Catalog<R>>,
    s: &StoreName,
    id: &ImageId,
) -> Result<StorageLock> {
    let (s, id) = (s.clone(), id.clone());
    run_blocking(cat.scheme(), cat.clone(), move |c| {
        c.id_lock(&c.open_store(&s)?, &id)
    })
    .await
}

/// Checks a write of `id` on `parent` expecting `sum`, takes the id lock and checks again (a
/// writer that held the lock may have committed): the start of every image write. A hit
/// returns at once, without touching the body.
pub async fn begin_write<R: Representation>(
    cat: &Arc<Catalog<R>>,
    s: &StoreName,
    parent: &ImageId,
    id: &ImageId,
    sum: Option<&Digest>,
) -> Result<Begin> {
    let check = |cat: &Arc<Catalog<R>>| {
        let (s, p, i, sm) = (s.clone(), parent.clone(), id.clone(), sum.cloned());
        run_blocking(cat.scheme(), cat.clone(), move |c| {
            c.precheck(&s, &p, &i, sm.as_ref())
        })
    };
    let sp = match check(cat).await? {
        Precheck::Found(img) => return Ok(Begin::Found(img)),
        Precheck::Write(sp, _) => sp,
    };
    let (sp2, i) = (sp.clone(), id.clone());
    let lock = run_blocking(cat.scheme(), cat.clone(), move |c| c.id_lock(&sp2, &i)).await?;
    match check(cat).await? {
        Precheck::Found(img) => Ok(Begin::Found(img)),
        Precheck::Write(store, parent) => Ok(Begin::Write(WriteSlot {
            lock,
            store,
            parent,
        })),
    }
}

impl WriteSlot {
    /// Empties and creates image `id`'s folder (what an earlier writer of the id left there
    /// is uncommitted, and this write holds the id lock) and hands it to the write.
    pub async fn stage<R: Representation>(
        self,
        cat: &Arc<Catalog<R>>,
        id: &ImageId,
    ) -> Result<StagedImage<R>> {
        let paths = self.store.image(id);
        let p = paths.clone();
        run_blocking(cat.scheme(), cat.clone(), move |c| {
            c.storage().remove_all(&p.dir)?;
            c.storage().mkdir(&p.dir)?;
            Ok(())
        })
        .await?;
        Ok(StagedImage {
            cat: cat.clone(),
            store: self.store,
            paths,
            parent: self.parent,
            lock: Some(self.lock),
            committed: false,
        })
    }
}

/// An image folder a write is filling, with the write's id lock. [`StagedImage::finish`]
/// commits it, or removes it after a failure before the error is returned; dropped without
/// either (the write's future dropped mid way), the folder is removed on the blocking pool
/// before the id lock is released. Either way nothing of it is ever visible and the id can be
/// written again at once.
#[derive(Debug)]
pub struct StagedImage<R: Representation> {
    cat: Arc<Catalog<R>>,
    /// The store.
    pub store: StorePaths,
    /// The image's paths.
    pub paths: ImagePaths,
    /// The parent's record.
    pub parent: ImageRecord,
    lock: Option<StorageLock>,
    committed: bool,
}

impl<R: Representation> StagedImage<R> {
    /// Ends the write with what filling the folder gave: with `Ok((record, metadata))`,
    /// commits the image ([`Catalog::publish`]); with an error, or if the commit fails,
    /// removes the folder before the id lock is released and returns the error.
    pub async fn finish(
        mut self,
        s: &StoreName,
        filled: Result<(ImageRecord, Metadata)>,
    ) -> Result<Image> {
        let published = match filled {
            Ok((r, meta)) => {
                let (s, sp) = (s.clone(), self.store.clone());
                run_blocking(self.cat.scheme(), self.cat.clone(), move |c| {
                    c.publish(&s, &sp, &r, &meta)
                })
                .await
            }
            Err(e) => Err(e),
        };
        if published.is_err() {
            let (p, lock) = (self.paths.clone(), self.lock.take());
            let _ = run_blocking(self.cat.scheme(), self.cat.clone(), move |c| {
                c.abandon(&p);
                drop(lock);
                Ok(())
            })
            .await;
        }
        self.committed = true;
        published
    }
}

impl<R: Representation> Drop for StagedImage<R> {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        // Dropped mid-write: no one waits for the answer, so the cleanup runs on its own.
        let (cat, p, lock) = (self.cat.clone(), self.paths.clone(), self.lock.take());
        let clean = move || {
            cat.abandon(&p);
            drop(lock);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(clean);
            }
            Err(_) => clean(),
        }
    }
}

/// `store/id`, as images are named in errors.
pub fn image_name(s: &StoreName, id: &ImageId) -> String {
    format!("{s}/{id}")
}

impl<R: Representation> Catalog<R> {
    /// The catalogue over `storage` in `layout`, keeping layers as `rep` does.
    pub fn new(storage: Arc<dyn Storage>, layout: Layout, rep: R) -> Catalog<R> {
        Catalog {
            storage,
            layout,
            rep,
            swept: Mutex::new(HashSet::new()),
            tocs: Arc::new(Cache::new(TOC_CACHE)),
        }
    }

    /// The storage.
    pub fn storage(&self) -> &dyn Storage {
        self.storage.as_ref()
    }

    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The representation.
    pub fn rep(&self) -> &R {
        &self.rep
    }

    /// The backend's scheme, for errors.
    pub fn scheme(&self) -> &'static str {
        self.storage.scheme()
    }

    /// The cache of decoded TOCs.
    pub fn toc_cache(&self) -> &Arc<Cache<Arc<Toc>>> {
        &self.tocs
    }

    /// The key under which an image's TOC is cached: `store/id@sum` (images are immutable,
    /// and the sum tells a rewritten id apart).
    pub fn toc_key(s: &StoreName, r: &ImageRecord) -> String {
        let sum = r
            .sum
            .as_ref()
            .map_or_else(|| "scratch".to_owned(), ToString::to_string);
        format!("{s}/{}@{sum}", r.id)
    }

    /// The paths of store `s`, whether it exists or not.
    pub fn store_paths(&self, s: &StoreName) -> StorePaths {
        self.layout.store(s)
    }

    /// The store's paths, after checking it exists and sweeping it on first use.
    pub fn open_store(&self, s: &StoreName) -> Result<StorePaths> {
        let sp = self.store_paths(s);
        if !self.is_committed(&sp.scratch())? {
            return Err(Error::not_found(ObjectKind::Store, s));
        }
        let first = self
            .swept
            .lock()
            .map(|mut set| set.insert(s.clone()))
            .unwrap_or(true);
        if first {
            self.sweep_store(s, &sp)?;
        }
        Ok(sp)
    }

    fn lock(&self, path: &StoragePath, range: u64) -> Result<StorageLock> {
        self.storage
            .lock(path, range, true)?
            .ok_or_else(|| Error::backend(self.scheme(), "a waiting lock returned nothing", true))
    }

    /// The store lock: commits, deletes and owner changes of one store exclude each other.
    pub fn store_lock(&self, sp: &StorePaths) -> Result<StorageLock> {
        self.lock(&sp.lock(), STORE_RANGE)
    }

    /// The write lock of `id` (images and writable layers share the namespace).
    pub fn id_lock(&self, sp: &StorePaths, id: &ImageId) -> Result<StorageLock> {
        self.lock(&sp.lock(), range_for(id.as_str()))
    }

    /// The id lock of `name` if no one holds it.
    pub fn try_id_lock(&self, sp: &StorePaths, name: &str) -> Result<Option<StorageLock>> {
        self.storage.lock(&sp.lock(), range_for(name), false)
    }

    /// True if image `p` is committed: its marker exists.
    pub fn is_committed(&self, p: &ImagePaths) -> Result<bool> {
        Ok(self.storage.stat(&p.marker())?.is_some())
    }

    /// The committed image's record, `None` if absent.
    pub fn find_record(&self, p: &ImagePaths) -> Result<Option<ImageRecord>> {
        if !self.is_committed(p)? {
            return Ok(None);
        }
        match self.storage.read(&p.record())? {
            Some(bytes) => Ok(Some(record::decode(
                &self.storage.describe(&p.record()),
                &bytes,
            )?)),
            // Deleted between the two reads.
            None if !self.is_committed(p)? => Ok(None),
            None => Err(Error::corrupt(
                self.storage.describe(&p.record()),
                "a committed image has no record",
            )),
        }
    }

    /// The committed image's record; `NotFound` if absent.
    pub fn record(&self, s: &StoreName, sp: &StorePaths, id: &ImageId) -> Result<ImageRecord> {
        self.find_record(&sp.image(id))?
            .ok_or_else(|| Error::not_found(ObjectKind::Image, image_name(s, id)))
    }

    /// The records of the chain ending at `top`, scratch first.
    pub fn chain(
        &self,
        s: &StoreName,
        sp: &StorePaths,
        top: ImageRecord,
    ) -> Result<Vec<ImageRecord>> {
        let mut chain = vec![top];
        while let Some(p) = chain.last().and_then(|r| r.parent.clone()) {
            if chain.len() > self.rep.max_chain_depth() as usize + 1 {
                return Err(Error::corrupt(image_name(s, &p), "the chain has a loop"));
            }
            chain.push(self.record(s, sp, &p)?);
        }
        chain.reverse();
        Ok(chain)
    }

    /// The image's locator URL.
    pub fn locator(&self, p: &ImagePaths) -> Url {
        self.storage.url(&self.rep.locator(p))
    }

    /// The image a record describes, with its metadata.
    pub fn image_of(&self, s: &StoreName, sp: &StorePaths, r: &ImageRecord) -> Result<Image> {
        let p = sp.image(&r.id);
        let mut image = r.to_image(s, self.locator(&p))?;
        if let Some(meta) = self.rep.metadata(self, &p)? {
            image.metadata = meta;
        }
        Ok(image)
    }

    /// The writable layer's record, `None` if absent.
    pub fn find_writable(&self, w: &WritablePaths) -> Result<Option<WritableRecord>> {
        match self.storage.read(&w.record())? {
            Some(bytes) => Ok(Some(record::decode(
                &self.storage.describe(&w.record()),
                &bytes,
            )?)),
            None => Ok(None),
        }
    }

    /// The writable layer's record; `NotFound` if absent.
    pub fn writable_record(
        &self,
        s: &StoreName,
        sp: &StorePaths,
        id: &ImageId,
    ) -> Result<WritableRecord> {
        self.find_writable(&sp.writable(id))?
            .ok_or_else(|| Error::not_found(ObjectKind::Writable, image_name(s, id)))
    }

    /// The number of completed imports into writable layer `w`.
    pub fn imports(&self, w: &WritablePaths) -> Result<u32> {
        let mut n = 0;
        while self.storage.stat(&self.rep.import_marker(w, n))?.is_some() {
            n += 1;
        }
        Ok(n)
    }

    fn read_usage(&self, sp: &StorePaths) -> Result<u64> {
        let p = sp.usage();
        let bytes = self.storage.read(&p)?.unwrap_or_default();
        String::from_utf8_lossy(&bytes)
            .trim()
            .parse()
            .map_err(|_| Error::corrupt(self.storage.describe(&p), "usage counter is not a number"))
    }

    /// Marks the usage counter as being changed: if the change stops before
    /// [`Catalog::usage_end`], the next reader or sweep recomputes it. Call with the store lock
    /// held, before the change the counter follows becomes visible. A marker already there
    /// was left by a change that failed half-way, so the counter is recomputed first:
    /// clearing the marker at the end of this change must not bury that one.
    fn usage_begin(&self, sp: &StorePaths) -> Result<()> {
        if self.storage.stat(&sp.usage_pending())?.is_some() {
            self.recompute_usage(sp)?;
        }
        self.storage.write(&sp.usage_pending(), b"")
    }

    /// Adds `delta` to the usage counter and ends the change [`Catalog::usage_begin`] began.
    fn usage_end(&self, sp: &StorePaths, delta: i128) -> Result<()> {
        let next = (i128::from(self.read_usage(sp)?) + delta).max(0);
        self.storage
            .write(&sp.usage(), next.to_string().as_bytes())?;
        self.storage.remove_file(&sp.usage_pending())?;
        Ok(())
    }

    /// Sets the usage counter to the sum of the committed images' sizes and clears the
    /// pending marker. Call with the store lock held.
    fn recompute_usage(&self, sp: &StorePaths) -> Result<()> {
        let mut total = 0u64;
        for id in self.image_ids(sp)? {
            if let Some(r) = self.find_record(&sp.image(&id))? {
                total += r.size;
            }
        }
        self.storage
            .write(&sp.usage(), total.to_string().as_bytes())?;
        self.storage.remove_file(&sp.usage_pending())?;
        Ok(())
    }

    /// Ids of the image folders of a store other than scratch, committed or not.
    fn image_ids(&self, sp: &StorePaths) -> Result<Vec<ImageId>> {
        Ok(self
            .storage
            .list(&sp.images())?
            .into_iter()
            .filter(|n| n != SCRATCH_ID)
            .filter_map(|n| ImageId::new(n).ok())
            .collect())
    }

    /// Who uses an image: committed children, writable layers, owners, and what the storage
    /// knows (virtual machines on vSphere). A child link whose child never committed counts
    /// for nothing (the sweep removes it).
    pub fn users(&self, sp: &StorePaths, id: &ImageId) -> Result<Vec<String>> {
        let p = sp.image(id);
        let mut users = Vec::new();
        for c in self.storage.list(&p.children())? {
            let Ok(cid) = ImageId::new(c.as_str()) else {
                continue;
            };
            if self.find_writable(&sp.writable(&cid))?.is_some() {
                users.push(format!("writable {cid}"));
            } else if self.is_committed(&sp.image(&cid))? {
                users.push(format!("child {cid}"));
            }
        }
        for o in self.storage.list(&p.owners())? {
            users.push(format!("owner {o}"));
        }
        users.extend(self.storage.disk_users(&self.rep.locator(&p))?);
        Ok(users)
    }

    /// What a write of `id` on `parent` (expecting `sum`) should do now.
    pub fn precheck(
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
            check_existing_write(
                image_name(s, id),
                r.parent.as_ref(),
                r.sum.as_ref(),
                parent,
                sum,
            )?;
            return Ok(Precheck::Found(self.image_of(s, &sp, &r)?));
        }
        check_depth(parent_rec.depth, self.rep.max_chain_depth())?;
        Ok(Precheck::Write(sp, parent_rec))
    }

    /// Removes the folder of image `p` after a failed write, unless it is committed; if even
    /// that cannot be told, the sweep removes it later.
    pub fn abandon(&self, p: &ImagePaths) {
        if let Ok(false) = self.is_committed(p) {
            let _ = self.storage.remove_all(&p.dir);
        }
    }

    /// `e`, or `NotFound` if it happened because a concurrent delete removed `parent`.
    pub fn unless_parent_gone(
        &self,
        e: Error,
        s: &StoreName,
        sp: &StorePaths,
        parent: &ImageId,
        id: &ImageId,
    ) -> Error {
        match self.is_committed(&sp.image(parent)) {
            Ok(false) => parent_deleted(s, parent, id),
            _ => e,
        }
    }

    /// Commits an image whose files are in its folder: writes its record, then, under the
    /// store lock, checks the parent is still committed, marks the usage counter, links the
    /// child and writes the marker (the commit point). `meta` is the image's metadata.
    pub fn publish(
        &self,
        s: &StoreName,
        sp: &StorePaths,
        r: &ImageRecord,
        meta: &Metadata,
    ) -> Result<Image> {
        let p = sp.image(&r.id);
        self.storage.write(&p.record(), &record::encode(r))?;
        let _guard = self.store_lock(sp)?;
        let parent = match &r.parent {
            Some(parent) => {
                let pp = sp.image(parent);
                if !self.is_committed(&pp)? {
                    // Deleted while we wrote: never leave a dangling child.
                    return Err(parent_deleted(s, parent, &r.id));
                }
                Some(pp)
            }
            None => None,
        };
        self.usage_begin(sp)?;
        if let Some(pp) = parent {
            self.storage.mkdir(&pp.children())?;
            self.storage.create_new(&pp.child(&r.id), b"")?;
        }
        match self.storage.create_new(&p.marker(), b"") {
            Ok(true) => {}
            Ok(false) => {
                return Err(Error::already_exists(
                    ObjectKind::Image,
                    image_name(s, &r.id),
                ));
            }
            // The marker may be in place though the answer was lost: then the image is
            // committed, and what follows is the same as after a success.
            Err(e) if !self.is_committed(&p)? => return Err(e),
            Err(_) => {}
        }
        // From here the image is visible, so a failure must not undo it or be reported as
        // the write's: the usage change stays marked and the next reader recomputes it.
        if let Err(e) = self.usage_end(sp, i128::from(r.size)) {
            warn!(image = %image_name(s, &r.id), error = %e, "committed; usage counter left to recompute");
        }
        let mut image = r.to_image(s, self.locator(&p))?;
        image.metadata = meta.clone();
        Ok(image)
    }

    /// The store and image a locator of this backend names.
    fn parse_locator(&self, url: &Url) -> Result<(StoreName, ImageId)> {
        let bad = || {
            Error::invalid(format!(
                "{url} is not an image URL of the store at {}",
                self.storage.base_url()
            ))
        };
        let path = self.storage.path_of(url).ok_or_else(bad)?;
        let parts = path.strip_prefix(&self.layout.stores).ok_or_else(bad)?;
        let (s, id) = match parts.as_slice() {
            [store, "images", id, ..] => (StoreName::new(*store)?, ImageId::new(*id)?),
            _ => return Err(bad()),
        };
        if self.rep.locator(&self.store_paths(&s).image(&id)) != path {
            return Err(bad());
        }
        Ok((s, id))
    }

    /// Sweeps one store (see the module's documentation).
    fn sweep_store(&self, s: &StoreName, sp: &StorePaths) -> Result<()> {
        let ds = self.storage.as_ref();
        let _guard = self.store_lock(sp)?;
        let mut removed = 0usize;
        let mut recompute =
            ds.stat(&sp.usage_pending())?.is_some() || ds.stat(&sp.usage())?.is_none();
        for id in self.image_ids(sp)? {
            let p = sp.image(&id);
            if self.is_committed(&p)? {
                continue;
            }
            let Some(_writer) = self.try_id_lock(sp, id.as_str())? else {
                continue;
            };
            ds.remove_all(&p.dir)?;
            removed += 1;
            recompute = true;
        }
        for name in ds.list(&sp.writables())? {
            let Ok(id) = ImageId::new(name.as_str()) else {
                continue;
            };
            let Some(_writer) = self.try_id_lock(sp, &name)? else {
                continue;
            };
            let w = sp.writable(&id);
            if self.find_writable(&w)?.is_none() {
                ds.remove_all(&w.dir)?;
                removed += 1;
                continue;
            }
            let done = self.imports(&w)?;
            removed += self.rep.sweep_imports(self, &w, done)?;
        }
        // Child links whose child never committed.
        for name in ds.list(&sp.images())? {
            let Ok(id) = ImageId::new(name.as_str()) else {
                continue;
            };
            let p = sp.image(&id);
            for c in ds.list(&p.children())? {
                let Ok(cid) = ImageId::new(c.as_str()) else {
                    continue;
                };
                let live = self.is_committed(&sp.image(&cid))?
                    || self.find_writable(&sp.writable(&cid))?.is_some();
                if !live && self.try_id_lock(sp, &c)?.is_some() {
                    ds.remove_file(&p.child(&cid))?;
                    removed += 1;
                }
            }
        }
        removed += self.rep.sweep_store(self, sp)?;
        if recompute {
            self.recompute_usage(sp)?;
        }
        if removed > 0 {
            info!(store = %s, removed, "swept leftovers");
        }
        Ok(())
    }

    fn forget_swept(&self, s: &StoreName, swept: bool) {
        if let Ok(mut set) = self.swept.lock() {
            if swept {
                set.insert(s.clone());
            } else {
                set.remove(s);
            }
        }
    }
}

fn parent_deleted(s: &StoreName, parent: &ImageId, id: &ImageId) -> Error {
    Error::not_found(
        ObjectKind::Image,
        format!("{s}/{parent} (the parent of {id}, deleted during the write)"),
    )
}

impl<R: Representation> BlockingCatalog for Catalog<R> {
    fn create_store(&self, s: &StoreName) -> Result<Url> {
        self.rep.prepare_root(self)?;
        let _guard = self.lock(&self.layout.root_lock, range_for(s.as_str()))?;
        let sp = self.store_paths(s);
        if self.is_committed(&sp.scratch())? {
            return Err(Error::already_exists(ObjectKind::Store, s));
        }
        // What a crashed creation or deletion left.
        self.storage.remove_all(&sp.dir)?;
        let made = (|| {
            let ds = self.storage.as_ref();
            ds.mkdir(&sp.dir)?;
            ds.mkdir(&sp.images())?;
            ds.mkdir(&sp.writables())?;
            ds.write(&sp.lock(), b"")?;
            ds.write(&sp.usage(), b"0")?;
            let p = sp.scratch();
            ds.mkdir(&p.dir)?;
            let size = self.rep.write_scratch(self, &p)?;
            let r = ImageRecord::new(ImageId::scratch(), None, None, size, 0, &Metadata::new());
            ds.write(&p.record(), &record::encode(&r))?;
            if !ds.create_new(&p.marker(), b"")? {
                return Err(Error::invalid(format!(
                    "{} appeared while the store was created",
                    ds.describe(&p.marker())
                )));
            }
            Ok(())
        })();
        if let Err(e) = made {
            let _ = self.storage.remove_all(&sp.dir);
            return Err(e);
        }
        self.forget_swept(s, true);
        Ok(store_url(&self.storage.base_url(), s))
    }

    fn delete_store(&self, s: &StoreName) -> Result<()> {
        let sp = self.open_store(s)?;
        let _root = self.lock(&self.layout.root_lock, range_for(s.as_str()))?;
        let _guard = self.store_lock(&sp)?;
        let mut left: Vec<String> = Vec::new();
        for id in self.image_ids(&sp)? {
            if self.is_committed(&sp.image(&id))? {
                left.push(id.to_string());
            }
        }
        for name in self.storage.list(&sp.writables())? {
            if let Ok(id) = ImageId::new(name.as_str())
                && self.find_writable(&sp.writable(&id))?.is_some()
            {
                left.push(format!("writable {name}"));
            }
        }
        if !left.is_empty() {
            return Err(store_not_empty(s, &left));
        }
        // Invisible first; a stop half way leaves a folder the next creation replaces.
        self.storage.remove_file(&sp.scratch().marker())?;
        self.forget_swept(s, false);
        self.storage.remove_all(&sp.dir)
    }

    fn store_url(&self, s: &StoreName) -> Result<Url> {
        self.open_store(s)?;
        Ok(store_url(&self.storage.base_url(), s))
    }

    fn list_stores(&self) -> Result<Vec<Url>> {
        let mut out = Vec::new();
        for name in self.storage.list(&self.layout.stores)? {
            if let Ok(s) = StoreName::new(name)
                && self.is_committed(&self.store_paths(&s).scratch())?
            {
                out.push(store_url(&self.storage.base_url(), &s));
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
        let wanted = if ids.is_empty() {
            self.image_ids(&sp)?
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
        if let Err(e) = self.storage.remove_file(&p.marker()) {
            // The answer may be lost though the marker is gone; then the delete happened.
            if self.is_committed(&p)? {
                return Err(e);
            }
        }
        // From here the image is gone, so the rest is tidying: a child link without its
        // child counts for nothing, a folder without a marker is swept, a pending usage
        // change is recomputed by the next reader.
        let tidy = || -> Result<()> {
            if let Some(parent) = &r.parent {
                self.storage.remove_file(&sp.image(parent).child(id))?;
            }
            self.usage_end(&sp, -i128::from(r.size))?;
            self.storage.remove_all(&p.dir)
        };
        if let Err(e) = tidy() {
            warn!(image = %image_name(s, id), error = %e, "deleted; leftovers left to the sweep");
        }
        Ok(found)
    }

    /// The usage counter; one a failed change left pending is recomputed first.
    fn store_usage(&self, s: &StoreName) -> Result<u64> {
        let sp = self.open_store(s)?;
        if self.storage.stat(&sp.usage_pending())?.is_some() {
            // Commits and deletes hold the store lock from marking to clearing, so a marker
            // seen under the lock is one a failure left.
            let _guard = self.store_lock(&sp)?;
            if self.storage.stat(&sp.usage_pending())?.is_some() {
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
        Ok(self.locator(&sp.image(id)))
    }

    /// Registered owners, and the VMs the storage knows use the image (as `vm-<name>`).
    fn owners(&self, url: &Url) -> Result<Vec<OwnerName>> {
        let (s, id) = self.parse_locator(url)?;
        let sp = self.open_store(&s)?;
        self.record(&s, &sp, &id)?;
        let p = sp.image(&id);
        let mut names: Vec<OwnerName> = self
            .storage
            .list(&p.owners())?
            .into_iter()
            .filter_map(|n| OwnerName::new(n).ok())
            .collect();
        for user in self.storage.disk_users(&self.rep.locator(&p))? {
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
            self.storage.mkdir(&p.owners())?;
            self.storage.create_new(&marker, b"")?;
            Ok(())
        } else if self.storage.remove_file(&marker)? {
            Ok(())
        } else {
            Err(Error::not_found(
                ObjectKind::Owner,
                format!("{owner} on {}", image_name(s, id)),
            ))
        }
    }

    fn stack(&self, s: &StoreName, id: &ImageId) -> Result<Stack> {
        self.rep.stack(self, s, id)
    }

    fn create_writable(&self, parent: &Image, id: &ImageId) -> Result<Writable> {
        let s = &parent.store;
        let sp = self.open_store(s)?;
        let _guard = self.store_lock(&sp)?;
        self.record(s, &sp, &parent.id)?;
        if self.find_record(&sp.image(id))?.is_some()
            || self.find_writable(&sp.writable(id))?.is_some()
        {
            return Err(Error::already_exists(
                ObjectKind::Writable,
                image_name(s, id),
            ));
        }
        let w = sp.writable(id);
        self.storage.remove_all(&w.dir)?;
        self.storage.mkdir(&w.dir)?;
        let pp = sp.image(&parent.id);
        self.storage.mkdir(&pp.children())?;
        self.storage.create_new(&pp.child(id), b"")?;
        let rec = WritableRecord::new(id.clone(), parent.id.clone());
        self.storage.write(&w.record(), &record::encode(&rec))?;
        Ok(Writable {
            id: id.clone(),
            store: s.clone(),
            parent: parent.id.clone(),
            imports: 0,
        })
    }

    fn writable(&self, s: &StoreName, id: &ImageId) -> Result<Writable> {
        let sp = self.open_store(s)?;
        let record = self.writable_record(s, &sp, id)?;
        Ok(Writable {
            id: id.clone(),
            store: s.clone(),
            parent: record.parent,
            imports: self.imports(&sp.writable(id))?,
        })
    }

    fn delete_writable(&self, s: &StoreName, id: &ImageId) -> Result<()> {
        let sp = self.open_store(s)?;
        let _guard = self.store_lock(&sp)?;
        let rec = self.writable_record(s, &sp, id)?;
        let w = sp.writable(id);
        // The record first: from then on the layer is gone, whatever remains is swept.
        self.storage.remove_file(&w.record())?;
        let tidy = || -> Result<()> {
            self.storage.remove_file(&sp.image(&rec.parent).child(id))?;
            self.storage.remove_all(&w.dir)
        };
        if let Err(e) = tidy() {
            warn!(writable = %image_name(s, id), error = %e, "deleted; leftovers left to the sweep");
        }
        Ok(())
    }

    fn raw_layer(&self, s: &StoreName, id: &ImageId) -> Result<ByteStream> {
        self.rep.raw_layer(self, s, id)
    }
}
