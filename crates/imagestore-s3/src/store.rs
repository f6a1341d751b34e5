//! The S3 backend: the [`ImageStorer`] implementation over a bucket.
//!
//! Every method is async all the way down to `object_store`; blocking work (tar parsing,
//! export, checkout) runs on the blocking pool inside the layer engine.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use imagestore_core::backend::cache::Cache;
use imagestore_core::backend::record::OwnerLease;
use imagestore_core::image::{store_url, validate_metadata};
use imagestore_core::layer::toc::Toc;
use imagestore_core::storer::check_write_id;
use imagestore_core::{
    ByteStream, Capabilities, Digest, Error, Image, ImageId, ImageStorer, Metadata, ObjectKind,
    OwnerName, Resolver, Result, StoreName, Url,
};

use crate::config::Config;
use crate::error::{BACKEND, corrupt};
use crate::index::Index;
use crate::layout::{self, StoreKeys};
use crate::lease::{self, Acquired, LeaseOp, LeaseRecord};
use crate::objects::{Created, Fetch, Objects};
use crate::record::{ImageRecord, OwnerRecord, StoreRecord, WritableRecord, encode};

/// Longest chain of layers above scratch this backend accepts.
pub const MAX_CHAIN_DEPTH: u32 = 128;

/// Largest number of TOCs and records kept in memory per backend instance.
const CACHE_ENTRIES: usize = 8192;

/// The format marker's content.
const FORMAT: &str = r#"{"format":"imagestore-s3","version":1}"#;

/// An S3 image-store backend over a bucket and prefix.
#[derive(Debug, Clone)]
pub struct S3Store {
    pub(crate) inner: Arc<Inner>,
}

/// State shared by clones of an [`S3Store`].
pub(crate) struct Inner {
    pub(crate) objects: Arc<Objects>,
    pub(crate) config: Config,
    pub(crate) base_url: Url,
    /// Store generations swept by this instance.
    swept: Mutex<HashSet<(StoreName, String)>>,
    /// TOCs by key: a TOC key names one write attempt, so it never changes.
    tocs: Cache<Arc<Toc>>,
    /// Image records by key, with their ETag, for reads answered `304 Not Modified`.
    records: Cache<(String, ImageRecord)>,
    /// Index snapshots by key, with their ETag.
    pub(crate) indexes: Mutex<HashMap<String, (String, Arc<Index>)>>,
    /// Commits and deletes by this instance, to pace index folds.
    pub(crate) changes: AtomicUsize,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("base_url", &self.base_url.as_str())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What a delete listed about an image under its lease (keys relative to the prefix).
#[derive(Debug, Clone, Default)]
pub(crate) struct Listed {
    /// `children/<id>/<child>`.
    pub(crate) children: Vec<String>,
    /// `owners/<id>/<owner>`.
    pub(crate) owners: Vec<String>,
    /// `reflinks/<id>/<key>`.
    pub(crate) reflinks: Vec<String>,
}

/// How a batch delete sees a child id whose link it found: see [`S3Store::users`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Sibling<'a> {
    /// Not in the batch (or its lease is someone else's): judged as a single delete judges.
    Other,
    /// Its lease is the caller's: a committed child (its record) counts, a link without one
    /// does not.
    Held(Option<&'a ImageRecord>),
    /// The batch deletes it before this image: its link no longer counts.
    Gone,
}

/// `record` naming `r` as the victim of a delete: its nonce as the target, its parent.
pub(crate) fn victim(mut record: LeaseRecord, r: &ImageRecord) -> LeaseRecord {
    record.target = Some(r.nonce.clone());
    record.parent = r.parent.clone();
    record
}

/// One store, as found when an operation started.
#[derive(Debug, Clone)]
pub(crate) struct StoreCtx {
    /// The store's name.
    pub(crate) name: StoreName,
    /// Its keys (under its generation).
    pub(crate) keys: StoreKeys,
    /// Its record.
    pub(crate) record: StoreRecord,
}

impl StoreCtx {
    /// `store/id`, for messages.
    pub(crate) fn name_of(&self, id: &ImageId) -> String {
        format!("{}/{id}", self.name)
    }
}

impl S3Store {
    /// Opens an S3 backend for `config`: checks (or writes) the format marker and finishes or
    /// undoes store creations and deletions whose hosts died.
    pub async fn open(config: Config) -> Result<S3Store> {
        let objects = Arc::new(Objects::connect(&config)?);
        let base_url = config.base_url()?;
        let inner = Arc::new(Inner {
            objects,
            config,
            base_url,
            swept: Mutex::new(HashSet::new()),
            tocs: Cache::new(CACHE_ENTRIES),
            records: Cache::new(CACHE_ENTRIES),
            indexes: Mutex::new(HashMap::new()),
            changes: AtomicUsize::new(0),
        });
        let store = S3Store { inner };
        store.init_root().await?;
        crate::sweep::sweep_root(&store).await?;
        Ok(store)
    }

    /// The configuration this backend was opened with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub(crate) fn objects(&self) -> &Arc<Objects> {
        &self.inner.objects
    }

    async fn init_root(&self) -> Result<()> {
        let o = self.objects();
        match o
            .create(layout::FORMAT_KEY, FORMAT.as_bytes().to_vec())
            .await?
        {
            Created::Created(_) => Ok(()),
            Created::Exists => {
                let got = o
                    .get(layout::FORMAT_KEY)
                    .await?
                    .ok_or_else(|| crate::objects::missing(&o.show(layout::FORMAT_KEY)))?;
                let v: serde_json::Value = serde_json::from_slice(&got.bytes)
                    .map_err(|e| corrupt(o.show(layout::FORMAT_KEY), e))?;
                if v.get("format").and_then(|f| f.as_str()) != Some("imagestore-s3")
                    || v.get("version").and_then(serde_json::Value::as_u64) != Some(1)
                {
                    return Err(corrupt(
                        o.show(layout::FORMAT_KEY),
                        "not an imagestore-s3 version 1 root",
                    ));
                }
                Ok(())
            }
        }
    }

    /// The lease TTL of this instance.
    pub(crate) fn ttl(&self) -> std::time::Duration {
        self.inner.config.lease_ttl
    }

    /// A lease record for `op` with a fresh nonce.
    pub(crate) fn lease_record(&self, op: LeaseOp) -> LeaseRecord {
        LeaseRecord::new(op, layout::nonce(), self.ttl())
    }

    /// The store's record, read now; `None` if the store does not exist.
    pub(crate) async fn read_store(&self, s: &StoreName) -> Result<Option<StoreRecord>> {
        let key = layout::store_record(s);
        match self.objects().get(&key).await? {
            None => Ok(None),
            Some(got) => Ok(Some(StoreRecord::parse(&key, &got.bytes)?)),
        }
    }

    /// The store, after checking it exists and sweeping it on its first use by this instance.
    pub(crate) async fn open_store(&self, s: &StoreName) -> Result<StoreCtx> {
        let record = self
            .read_store(s)
            .await?
            .ok_or_else(|| Error::not_found(ObjectKind::Store, s))?;
        let st = StoreCtx {
            name: s.clone(),
            keys: StoreKeys::new(s, &record.generation),
            record,
        };
        let first = self
            .inner
            .swept
            .lock()
            .map(|mut set| set.insert((s.clone(), st.record.generation.clone())))
            .unwrap_or(true);
        if first && let Err(e) = crate::sweep::sweep_store(self, &st).await {
            // A sweep that fails leaves work for the next one; the operation goes on.
            tracing::warn!(store = %s, error = %e, "sweeping the store failed");
            if let Ok(mut set) = self.inner.swept.lock() {
                set.remove(&(s.clone(), st.record.generation.clone()));
            }
        }
        Ok(st)
    }

    pub(crate) fn mark_swept(&self, s: &StoreName, generation: &str) {
        if let Ok(mut set) = self.inner.swept.lock() {
            set.insert((s.clone(), generation.to_owned()));
        }
    }

    /// The committed image's record, read now; `None` if absent. Scratch comes from the
    /// store record the context was opened with.
    pub(crate) async fn find_record(
        &self,
        st: &StoreCtx,
        id: &ImageId,
    ) -> Result<Option<ImageRecord>> {
        if id.is_scratch() {
            return Ok(Some(st.record.scratch.clone()));
        }
        let key = st.keys.image(id);
        let cached = self.inner.records.get(&key);
        match self
            .objects()
            .get_cached(&key, cached.as_ref().map(|(e, _)| e.as_str()))
            .await?
        {
            Fetch::Missing => Ok(None),
            Fetch::Unchanged => Ok(cached.map(|(_, r)| r)),
            Fetch::Found(got) => {
                let r = ImageRecord::parse(&self.objects().show(&key), &got.bytes)?;
                if r.id != *id {
                    return Err(corrupt(
                        self.objects().show(&key),
                        "record names another id",
                    ));
                }
                if let Some(etag) = got.etag {
                    self.inner.records.put(key, (etag, r.clone()));
                }
                Ok(Some(r))
            }
        }
    }

    /// Like [`S3Store::find_record`], but reads scratch from a fresh store record, so a store
    /// deleted meanwhile shows as a missing scratch.
    pub(crate) async fn find_record_fresh(
        &self,
        st: &StoreCtx,
        id: &ImageId,
    ) -> Result<Option<ImageRecord>> {
        if !id.is_scratch() {
            return self.find_record(st, id).await;
        }
        Ok(self
            .read_store(&st.name)
            .await?
            .filter(|r| r.generation == st.record.generation)
            .map(|r| r.scratch))
    }

    /// The committed image's record; `NotFound` if absent.
    pub(crate) async fn record(&self, st: &StoreCtx, id: &ImageId) -> Result<ImageRecord> {
        self.find_record(st, id)
            .await?
            .ok_or_else(|| Error::not_found(ObjectKind::Image, st.name_of(id)))
    }

    /// The writable layer's record; `None` if absent.
    pub(crate) async fn find_writable(
        &self,
        st: &StoreCtx,
        id: &ImageId,
    ) -> Result<Option<WritableRecord>> {
        let key = st.keys.writable(id);
        match self.objects().get(&key).await? {
            None => Ok(None),
            Some(got) => Ok(Some(WritableRecord::parse(
                &self.objects().show(&key),
                &got.bytes,
            )?)),
        }
    }

    /// A cached TOC.
    pub(crate) fn cached_toc(&self, key: &str) -> Option<Arc<Toc>> {
        self.inner.tocs.get(key)
    }

    /// Remembers a TOC.
    pub(crate) fn cache_toc(&self, key: String, toc: Arc<Toc>) {
        self.inner.tocs.put(key, toc);
    }

    /// Remembers a record just written.
    pub(crate) fn cache_record(&self, key: String, etag: Option<String>, r: ImageRecord) {
        if let Some(etag) = etag {
            self.inner.records.put(key, (etag, r));
        }
    }

    /// The image's locator: the URL of its record object.
    pub(crate) fn image_url(&self, st: &StoreCtx, id: &ImageId) -> Url {
        let mut u = self.inner.base_url.clone();
        let path = if id.is_scratch() {
            layout::store_record(&st.name)
        } else {
            st.keys.image(id)
        };
        let full = if self.inner.config.prefix.is_empty() {
            format!("/{path}")
        } else {
            format!("/{}/{path}", self.inner.config.prefix)
        };
        u.set_path(&full);
        u
    }

    pub(crate) fn image_of(&self, st: &StoreCtx, r: &ImageRecord) -> Result<Image> {
        r.to_image(&st.name, self.image_url(st, &r.id))
    }

    /// Parses an image locator of this backend back into `(store, id)`.
    async fn parse_locator(&self, url: &Url) -> Result<(StoreCtx, ImageId)> {
        let bad = || {
            Error::invalid(format!(
                "{url} is not an image URL of the store at {}",
                self.inner.base_url
            ))
        };
        if url.scheme() != "s3" || url.host_str() != Some(self.inner.config.bucket.as_str()) {
            return Err(bad());
        }
        let mut path = url.path().trim_start_matches('/');
        if !self.inner.config.prefix.is_empty() {
            path = path
                .strip_prefix(self.inner.config.prefix.as_str())
                .and_then(|p| p.strip_prefix('/'))
                .ok_or_else(bad)?;
        }
        let parts: Vec<&str> = path.split('/').collect();
        let (store, generation, id) = match parts.as_slice() {
            [layout::STORES_DIR, store, generation, "images", id] => (
                StoreName::new(*store)?,
                Some(*generation),
                ImageId::new(*id)?,
            ),
            [layout::STORES_DIR, file] => {
                let store = file.strip_suffix(".json").ok_or_else(bad)?;
                (StoreName::new(store)?, None, ImageId::scratch())
            }
            _ => return Err(bad()),
        };
        let st = self.open_store(&store).await?;
        if generation.is_some_and(|g| g != st.record.generation) {
            return Err(Error::not_found(ObjectKind::Image, st.name_of(&id)));
        }
        Ok((st, id))
    }

    /// What a delete of `id` lists before deciding, one listing each: child links, owner
    /// registrations, reference links. Call with the image's lease.
    pub(crate) async fn list_users(&self, st: &StoreCtx, id: &ImageId) -> Result<Listed> {
        let o = self.objects();
        Ok(Listed {
            children: o.list_keys(&st.keys.children_dir(id)).await?,
            owners: o.list_keys(&st.keys.owners_dir(id)).await?,
            reflinks: o.list_keys(&st.keys.ref_links_dir(id)).await?,
        })
    }

    /// Who uses an image, judged from what a delete listed under its lease (`listed`):
    /// children, writable layers, owners and references. `sibling` tells about child ids
    /// whose leases the caller holds itself (a batch): their links are judged by their
    /// records alone, or not at all once the batch deletes them first.
    ///
    /// Links and registrations left by writes that never committed count for nothing and are
    /// not removed here: a new writer of the same child id may have just rewritten one, and
    /// this delete may still be refused for another reason. The delete removes them once the
    /// image's record is gone; the sweep removes a dead writer's.
    pub(crate) async fn users<'a>(
        &self,
        st: &StoreCtx,
        rec: &ImageRecord,
        listed: &Listed,
        sibling: &(dyn Fn(&ImageId) -> Sibling<'a> + Sync),
    ) -> Result<Vec<String>> {
        let o = self.objects();
        let id = &rec.id;
        let mut users = Vec::new();
        for rel in &listed.children {
            let Ok(child) = ImageId::new(layout::last_segment(rel)) else {
                continue;
            };
            match sibling(&child) {
                Sibling::Gone => continue,
                Sibling::Held(r) => {
                    // Its lease is ours, so nothing of that id is in progress: a committed
                    // child or writable layer counts, a link without one does not.
                    if r.is_some_and(|c| c.parent.as_ref() == Some(id)) {
                        users.push(format!("child {child}"));
                    } else if r.is_none()
                        && let Some(w) = self.find_writable(st, &child).await?
                        && w.parent == *id
                    {
                        users.push(format!("writable {child}"));
                    }
                    continue;
                }
                Sibling::Other => {}
            }
            // The lease first: a link is written under the child's lease, and the lease is
            // released only after the child committed or gave up.
            if let Some(l) = lease::read(o, &st.keys.lease(&child)).await? {
                let what = match l.record.op {
                    LeaseOp::CreateWritable
                    | LeaseOp::Import
                    | LeaseOp::DeleteWritable
                    | LeaseOp::CommitWritable => "writable",
                    _ => "child",
                };
                users.push(format!("{what} {child} (in progress)"));
                continue;
            }
            if let Some(c) = self.find_record(st, &child).await?
                && c.parent.as_ref() == Some(id)
            {
                users.push(format!("child {child}"));
                continue;
            }
            if let Some(w) = self.find_writable(st, &child).await?
                && w.parent == *id
            {
                users.push(format!("writable {child}"));
                continue;
            }
            tracing::debug!(link = %rel, "a link of a write that never committed");
        }
        for rel in &listed.owners {
            // A registration of an earlier image of this id, or a damaged one, is no owner of
            // this one. An expired lease no longer protects the image; its owner may still
            // renew it, so it is left in place.
            if let Some(got) = o.get(rel).await?
                && OwnerRecord::parse(rel, &got.bytes)
                    .is_ok_and(|r| r.image_nonce == rec.nonce && r.is_live())
            {
                users.push(format!("owner {}", layout::last_segment(rel)));
            }
        }
        users.extend(
            self.link_users_of(st, &layout::LinkTarget::Image(id.clone()), &listed.reflinks)
                .await?,
        );
        Ok(users)
    }

    async fn list(&self, s: &StoreName, ids: &[ImageId]) -> Result<Vec<Image>> {
        let st = self.open_store(s).await?;
        if ids.is_empty() {
            let view = self.view(&st).await?;
            return view
                .records
                .values()
                .map(|r| self.image_of(&st, r))
                .collect();
        }
        let mut out = Vec::new();
        for id in ids {
            if let Some(r) = self.find_record(&st, id).await? {
                out.push(self.image_of(&st, &r)?);
            }
        }
        Ok(out)
    }

    pub(crate) async fn delete(&self, image: &Image) -> Result<Image> {
        let s = &image.store;
        let id = &image.id;
        if id.is_scratch() {
            return Err(Error::invalid(format!(
                "the scratch image of store {s} cannot be deleted"
            )));
        }
        let st = self.open_store(s).await?;
        // The victim goes into the lease when it is known without a request (a record this
        // instance read before); otherwise it is set once the record is read under the lease.
        let record = self.delete_lease_record(&st, id, layout::nonce());
        let key = st.keys.lease(id);
        let (guard, taken_over) = match lease::acquire(self.objects(), &key, record, || async {
            Ok(match self.find_record(&st, id).await? {
                None => Some(()),
                Some(_) => None,
            })
        })
        .await?
        {
            Acquired::Held { guard, taken_over } => (guard, taken_over),
            Acquired::Answered(()) => {
                return Err(Error::not_found(ObjectKind::Image, st.name_of(id)));
            }
        };
        if taken_over.is_some() {
            crate::sweep::resolve_pending(self, &st, id, &guard.record().await).await?;
        }
        let o = self.objects();
        let (rec, listed) = match self.prepare_delete(&st, id, &guard).await {
            Ok(r) => r,
            Err(e) => {
                guard.release().await?;
                return Err(e);
            }
        };
        let found = self.image_of(&st, &rec)?;
        // Invisible from here on.
        if let Err(e) = o.delete(&st.keys.image(id)).await {
            // The request may have gone through before the connection broke.
            if self.find_record(&st, id).await?.is_some() {
                guard.release().await?;
                return Err(e);
            }
        }
        match o.delete_many(self.leftovers(&st, &rec, &listed)).await {
            Ok(()) => guard.release().await?,
            Err(e) => {
                // The image is gone; its lease stays until it expires, and whoever comes next
                // (a sweep, a writer of the same id) removes the rest.
                tracing::warn!(image = %st.name_of(id), error = %e, "cleanup after a delete failed");
                drop(guard);
            }
        }
        self.note_change(&st).await;
        Ok(found)
    }

    /// A delete lease for `id` with `nonce`, naming the victim (nonce and parent) when this
    /// instance has its record cached.
    pub(crate) fn delete_lease_record(
        &self,
        st: &StoreCtx,
        id: &ImageId,
        nonce: String,
    ) -> LeaseRecord {
        let record = LeaseRecord::new(LeaseOp::Delete, nonce, self.ttl());
        match self.inner.records.get(&st.keys.image(id)) {
            Some((_, r)) => victim(record, &r),
            None => record,
        }
    }

    /// What a delete removes once the record is gone, under the image's lease: the layer and
    /// TOC, its link on its parent, and every child link, owner registration and reference
    /// link the delete listed (each belongs to a write, registration or change that fails its
    /// check of the image, or to none; those made after the listing are removed by their own
    /// makers when that check fails, or by the sweep).
    pub(crate) fn leftovers(
        &self,
        st: &StoreCtx,
        rec: &ImageRecord,
        listed: &Listed,
    ) -> Vec<String> {
        let id = &rec.id;
        let mut keys = vec![st.keys.layer(id, &rec.nonce), st.keys.toc(id, &rec.nonce)];
        // Only writes and writable layers of this id write this link, all under this lease.
        if let Some(p) = &rec.parent {
            keys.push(st.keys.child(p, id));
        }
        keys.extend(listed.children.iter().cloned());
        keys.extend(listed.owners.iter().cloned());
        keys.extend(listed.reflinks.iter().cloned());
        keys
    }

    /// The checks of a delete, under the image's lease; the index intent is written last.
    async fn prepare_delete(
        &self,
        st: &StoreCtx,
        id: &ImageId,
        guard: &lease::LeaseGuard,
    ) -> Result<(ImageRecord, Listed)> {
        let rec = self.record(st, id).await?;
        let held = guard.record().await;
        if held.target.as_deref() != Some(rec.nonce.as_str()) || held.parent != rec.parent {
            guard.retarget(&rec.nonce, rec.parent.clone()).await?;
        }
        let listed = self.list_users(st, id).await?;
        let users = self.users(st, &rec, &listed, &|_| Sibling::Other).await?;
        if !users.is_empty() {
            return Err(Error::ImageInUse {
                image: st.name_of(id),
                users,
            });
        }
        self.objects()
            .put(
                &st.keys.log(id, &held.nonce, layout::LogOp::Delete),
                Vec::new(),
            )
            .await?;
        guard.ensure_fresh().await?;
        Ok((rec, listed))
    }

    /// Counts a commit or delete; every so often folds the index.
    pub(crate) async fn note_change(&self, st: &StoreCtx) {
        let n = self.inner.changes.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(crate::index::FOLD_EVERY)
            && let Err(e) = self.fold(st).await
        {
            tracing::debug!(store = %st.name, error = %e, "index fold failed");
        }
    }

    async fn owner_change(
        &self,
        s: &StoreName,
        id: &ImageId,
        owner: &OwnerName,
        lease: Option<OwnerLease>,
    ) -> Result<()> {
        let st = self.open_store(s).await?;
        let o = self.objects();
        let key = st.keys.owner(id, owner);
        let Some(lease) = lease else {
            let rec = self.record(&st, id).await?;
            let registered = match o.get(&key).await? {
                Some(got) => {
                    OwnerRecord::parse(&key, &got.bytes).is_ok_and(|r| r.image_nonce == rec.nonce)
                }
                None => false,
            };
            if !registered {
                return Err(Error::not_found(
                    ObjectKind::Owner,
                    format!("{owner} on {}", st.name_of(id)),
                ));
            }
            return o.delete(&key).await;
        };
        let mut rec = self.record(&st, id).await?;
        for _ in 0..3 {
            // Register first, then check the image is not being deleted: a delete takes the
            // image's lease first, then lists owners, so one of the two sees the other.
            o.put(
                &key,
                encode(&OwnerRecord {
                    image_nonce: rec.nonce.clone(),
                    expires_unix_ms: lease.expires_unix_ms,
                }),
            )
            .await?;
            match crate::write::check_parent(self, &st, id).await {
                Ok(now) if now.nonce == rec.nonce => return Ok(()),
                Ok(now) => rec = now,
                Err(e) => {
                    o.delete(&key).await?;
                    return Err(e);
                }
            }
        }
        Err(crate::error::backend(
            format!(
                "image {} kept changing while registering {owner}",
                st.name_of(id)
            ),
            true,
        ))
    }
}

#[async_trait]
impl ImageStorer for S3Store {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn scheme(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(true, MAX_CHAIN_DEPTH, true)
    }

    async fn create_image_store(&self, name: &StoreName) -> Result<Url> {
        crate::scratch::create_store(self, name).await?;
        Ok(store_url(&self.inner.base_url, name))
    }

    async fn delete_image_store(&self, name: &StoreName) -> Result<()> {
        crate::scratch::delete_store(self, name).await
    }

    async fn get_image_store(&self, name: &StoreName) -> Result<Url> {
        self.open_store(name).await?;
        Ok(store_url(&self.inner.base_url, name))
    }

    async fn list_image_stores(&self) -> Result<Vec<Url>> {
        let (objects, _) = self.objects().list_dir(layout::STORES_DIR).await?;
        let mut names: Vec<StoreName> = objects
            .iter()
            .filter_map(|m| {
                let rel = self.objects().rel(&m.location);
                let file = layout::last_segment(&rel);
                StoreName::new(file.strip_suffix(".json")?).ok()
            })
            .collect();
        names.sort();
        Ok(names
            .iter()
            .map(|n| store_url(&self.inner.base_url, n))
            .collect())
    }

    async fn write_image(
        &self,
        parent: &Image,
        id: &ImageId,
        meta: Metadata,
        sum: &Digest,
        body: ByteStream,
    ) -> Result<Image> {
        check_write_id(id)?;
        validate_metadata(&meta)?;
        self.write_layer(&parent.store, &parent.id, id, meta, Some(sum.clone()), body)
            .await
    }

    async fn get_image(&self, store: &StoreName, id: &ImageId) -> Result<Image> {
        let st = self.open_store(store).await?;
        let r = self.record(&st, id).await?;
        self.image_of(&st, &r)
    }

    async fn list_images(&self, store: &StoreName, ids: &[ImageId]) -> Result<Vec<Image>> {
        self.list(store, ids).await
    }

    async fn delete_image(&self, image: &Image) -> Result<Image> {
        self.delete(image).await
    }

    /// Deletes the batch with its leases taken together, one listing of links, owners and
    /// reference links for all of it, one intent, bulk record deletes (children before their
    /// parents) and one index update (`docs/decisions/0021-s3-batch-deletes.md`).
    async fn delete_images(
        &self,
        store: &StoreName,
        images: &[Image],
    ) -> Result<Vec<Result<Image>>> {
        self.delete_batch(store, images).await
    }

    async fn image_storage_usage(&self, store: &StoreName) -> Result<u64> {
        let st = self.open_store(store).await?;
        Ok(self.view(&st).await?.records.values().map(|r| r.size).sum())
    }

    async fn image_layer_storage_usage(&self, store: &StoreName, id: &ImageId) -> Result<u64> {
        let st = self.open_store(store).await?;
        let r = self.record(&st, id).await?;
        Ok(if id.is_scratch() { 0 } else { r.size })
    }
}

#[async_trait]
impl Resolver for S3Store {
    async fn url(&self, store: &StoreName, id: &ImageId) -> Result<Url> {
        let st = self.open_store(store).await?;
        self.record(&st, id).await?;
        Ok(self.image_url(&st, id))
    }

    async fn owners(&self, url: &Url) -> Result<Vec<OwnerName>> {
        let (st, id) = self.parse_locator(url).await?;
        let rec = self.record(&st, &id).await?;
        let o = self.objects();
        let mut out = Vec::new();
        for meta in o.list(&st.keys.owners_dir(&id)).await? {
            let rel = o.rel(&meta.location);
            let Ok(name) = OwnerName::new(layout::last_segment(&rel)) else {
                continue;
            };
            if let Some(got) = o.get(&rel).await?
                && OwnerRecord::parse(&rel, &got.bytes)
                    .is_ok_and(|r| r.image_nonce == rec.nonce && r.is_live())
            {
                out.push(name);
            }
        }
        Ok(out)
    }

    async fn acquire(&self, store: &StoreName, id: &ImageId, owner: &OwnerName) -> Result<()> {
        self.owner_change(store, id, owner, Some(OwnerLease::new(None)))
            .await
    }

    async fn acquire_lease(
        &self,
        store: &StoreName,
        id: &ImageId,
        owner: &OwnerName,
        ttl: std::time::Duration,
    ) -> Result<()> {
        self.owner_change(store, id, owner, Some(OwnerLease::new(Some(ttl))))
            .await
    }

    async fn release(&self, store: &StoreName, id: &ImageId, owner: &OwnerName) -> Result<()> {
        self.owner_change(store, id, owner, None).await
    }
}
