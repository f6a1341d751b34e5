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
//! <stores>/<store>/images/<id>/refs/<key>   a reference naming this image
//! <stores>/<store>/refs/<key>, blobs/<d>    references and their manifests and configs
//! <stores>/<store>/quota                    the store's quota in bytes
//! <stores>/<store>/images/<id>/<marker>     written last: the image is committed
//! <stores>/<store>/writable/<id>/writable.json  written last: the writable layer exists
//! ```
//! plus whatever files the backend's [`Representation`] keeps beside them (a layer tar and its
//! TOC, a delta disk, metadata files).
//!
//! * A store exists while its scratch image is committed; creation writes scratch's marker
//!   last, deletion removes it first.
//! * A write takes the id lock and, under the store lock, links itself as a child of its
//!   parent (which keeps the parent from being deleted while the write holds the id lock),
//!   fills the image folder (left over folders of its id are uncommitted, so its own), then
//!   under the store lock checks the parent is still committed and the quota, marks the usage counter pending, links the child and writes the marker: the
//!   commit point. What fails after it is logged and left to the sweep, never returned.
//! * A delete, under the store lock, refuses an image with committed children, writes in
//!   progress, writable layers, owners or references; it removes the marker first (the image is gone), then tidies.
//! * The sweep, on the first use of a store by a backend instance and under the store lock,
//!   removes what only a crash leaves: uncommitted folders and dangling child links whose id
//!   lock is free, unfinished imports, and a counter left pending.

mod ops;
mod paths;
mod refs;
mod sweep;
mod write;

pub use paths::{ImagePaths, Layout, StorePaths, WritablePaths};
pub use write::{Begin, Precheck, StagedImage, WriteSlot, begin_write, lock_id};

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use url::Url;

use crate::error::{Error, ObjectKind, Result};
use crate::image::{Image, Metadata};
use crate::layer::stack::Stack;
use crate::layer::toc::Toc;
use crate::names::{ImageId, SCRATCH_ID, StoreName};
use crate::storer::ByteStream;

use crate::backend::cache::Cache;
use crate::backend::lock::{STORE_RANGE, range_for};
use crate::backend::record::{self, ImageRecord, OwnerLease, WritableRecord};
use crate::backend::storage::{Storage, StorageLock, StoragePath};

/// Decoded TOCs kept in memory per backend instance.
const TOC_CACHE: usize = 4096;

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

    /// The layer of image `id` exactly as written, as an open local file where the backend
    /// keeps it as one ([`crate::Exporter::export_raw_file`]); by default `None`.
    fn raw_layer_file(
        &self,
        _cat: &Catalog<Self>,
        _s: &StoreName,
        _id: &ImageId,
    ) -> Result<Option<std::fs::File>> {
        Ok(None)
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

    /// The owners registered on image `p` whose lease has not expired (temporary files of a
    /// renewal in progress start with a dot and are not owners).
    pub fn live_owners(&self, p: &ImagePaths) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for o in self.storage.list(&p.owners())? {
            if o.starts_with('.') {
                continue;
            }
            // Released between the listing and the read: not an owner.
            if let Some(bytes) = self.storage.read(&p.owner_file(&o))?
                && OwnerLease::from_file(&bytes).is_live()
            {
                out.push(o);
            }
        }
        Ok(out)
    }

    /// Who uses an image: committed children, writes in progress on it, writable layers,
    /// owners, references, and what the storage knows (virtual machines on vSphere). A child
    /// link whose child never committed and whose id lock is free counts for nothing (the
    /// sweep removes it).
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
            } else if self.try_id_lock(sp, cid.as_str())?.is_none() {
                users.push(format!("write {cid}"));
            }
        }
        for o in self.live_owners(&p)? {
            users.push(format!("owner {o}"));
        }
        users.extend(self.ref_users(sp, &p)?);
        users.extend(self.storage.disk_users(&self.rep.locator(&p))?);
        Ok(users)
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
