//! Writing a layer (stage, verify, commit) and importing into a writable layer: the
//! backend handle's [`BlockingBackend`] hooks.
//!
//! ```text
//! id lock ─► staging/<id>.<nonce>/layer ◄─ core ingest pipeline (hash, parse, TOC)
//!         ─► digest ok? ─► toc + image.json, fsync files and staging dir
//!         ─► store lock: parent still committed? child link, rename into images/<id>,
//!            fsync images/, COMMITTED marker, fsync, usage counter
//! ```
//! The id lock makes concurrent writers of one id (threads or processes) queue: the first
//! writes, the others find the committed image and return it without reading their body.
//! The store lock makes a commit and a delete of its parent mutually exclusive.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use imagestore_core::blocking::{BlockingBackend, BlockingCatalog};
use imagestore_core::layer::index;
use imagestore_core::layer::ingest::{IngestLimits, ingest};
use imagestore_core::layer::sink::FileSink;
use imagestore_core::layer::validate::LowerView;
use imagestore_core::storer::{check_depth, check_existing_write};
use imagestore_core::{
    ByteStream, Capabilities, Digest, Error, Image, ImageId, ImportSummary, Metadata, ObjectKind,
    Result, StoreName,
};

use crate::error::{BACKEND, IoContext};
use crate::fsx;
use crate::layout::{ImageDir, StoreDir};
use crate::lock::{self, LockGuard};
use crate::record::ImageRecord;
use crate::store::{Inner, LocalStore, MAX_CHAIN_DEPTH};

/// Removes a staging directory when dropped, unless disarmed.
pub(crate) struct StagingDir {
    pub(crate) dir: PathBuf,
    armed: bool,
}

impl StagingDir {
    pub(crate) fn create(sd: &StoreDir, id: &ImageId) -> Result<StagingDir> {
        let dir = sd.staging().join(format!("{id}.{}", fsx::nonce()));
        fsx::mkdir(&dir, false)?;
        Ok(StagingDir { dir, armed: true })
    }

    pub(crate) fn layout(&self) -> ImageDir {
        ImageDir {
            dir: self.dir.clone(),
        }
    }

    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if self.armed {
            let _ = fsx::remove_all(&self.dir);
        }
    }
}

/// What to do about an id that may already exist.
fn existing_or_conflict(
    inner: &Inner,
    s: &StoreName,
    sd: &StoreDir,
    id: &ImageId,
    parent: &ImageId,
    sum: Option<&Digest>,
) -> Result<Option<Image>> {
    if inner.writable_exists(sd, id)? {
        return Err(Error::Conflict {
            kind: ObjectKind::Image,
            name: format!("{s}/{id}"),
            reason: "a writable layer has this id".to_owned(),
        });
    }
    let Some(r) = inner.find_record(sd, id)? else {
        return Ok(None);
    };
    check_existing_write(
        format!("{s}/{id}"),
        r.parent.as_ref(),
        r.sum.as_ref(),
        parent,
        sum,
    )?;
    Ok(Some(inner.image_of(s, &r)?))
}

/// Outcome of the checks made before a write.
enum Precheck {
    /// The image exists already: return it.
    Found(Image),
    /// Go ahead: the store's directory and the parent's record.
    Write(StoreDir, ImageRecord),
}

fn precheck(
    inner: &Inner,
    s: &StoreName,
    p: &ImageId,
    id: &ImageId,
    sum: Option<&Digest>,
) -> Result<Precheck> {
    let sd = inner.open_store(s)?;
    let parent = inner.find_record(&sd, p)?.ok_or_else(|| {
        Error::not_found(ObjectKind::Image, format!("{s}/{p} (the parent of {id})"))
    })?;
    if let Some(img) = existing_or_conflict(inner, s, &sd, id, p, sum)? {
        return Ok(Precheck::Found(img));
    }
    check_depth(parent.depth, MAX_CHAIN_DEPTH)?;
    Ok(Precheck::Write(sd, parent))
}

/// The local handle; core derives the storage traits from it and `Inner`'s catalogue.
#[async_trait]
impl BlockingBackend for LocalStore {
    type IdLock = LockGuard;

    fn catalog(&self) -> Arc<dyn BlockingCatalog> {
        self.inner.clone()
    }

    fn scheme(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(true, MAX_CHAIN_DEPTH, true)
    }

    async fn lock_id(&self, store: &StoreName, id: &ImageId) -> Result<LockGuard> {
        let s = store.clone();
        let sd = self.run(move |i| i.open_store(&s)).await?;
        lock::lock_async(sd.lock_file(), lock::range_for(id.as_str())).await
    }

    async fn write_layer(
        &self,
        store: &StoreName,
        parent: &ImageId,
        id: &ImageId,
        meta: Metadata,
        sum: Option<Digest>,
        body: ByteStream,
    ) -> Result<Image> {
        // Cheap checks first: a hit returns at once without touching the body.
        let (s, p, i, sm) = (store.clone(), parent.clone(), id.clone(), sum.clone());
        let sd = match self
            .run(move |inner| precheck(inner, &s, &p, &i, sm.as_ref()))
            .await?
        {
            Precheck::Found(img) => return Ok(img),
            Precheck::Write(sd, _) => sd,
        };
        let _id_lock = lock::lock_async(sd.lock_file(), lock::range_for(id.as_str())).await?;
        // Someone may have committed while we waited for the lock.
        let (s, p, i, sm) = (store.clone(), parent.clone(), id.clone(), sum.clone());
        let parent_rec = match self
            .run(move |inner| precheck(inner, &s, &p, &i, sm.as_ref()))
            .await?
        {
            Precheck::Found(img) => return Ok(img),
            Precheck::Write(_, r) => r,
        };

        let (s, p) = (store.clone(), parent.clone());
        let stack = self.run(move |inner| inner.stack_sync(&s, &p)).await?;
        let lower: Arc<dyn LowerView> = Arc::new(stack.chain());
        let mut staging = StagingDir::create(&sd, id)?;
        let staged = staging.layout();
        let mut sink = FileSink::create(BACKEND, staged.layer())?;
        let ingested = ingest(
            body,
            sum.as_ref(),
            &mut sink,
            lower,
            IngestLimits::default(),
        )
        .await?;
        sink.finish().await?;

        let record = ImageRecord::new(
            id.clone(),
            Some(parent.clone()),
            Some(ingested.digest.clone()),
            ingested.size,
            parent_rec.depth + 1,
            &meta,
        );
        let toc = ingested.toc.to_bytes()?;
        let toc_index = index::build(&ingested.toc)?;
        let (s, p, i) = (store.clone(), parent.clone(), id.clone());
        let staged_dir = staging.dir.clone();
        let image = self
            .run(move |inner| {
                fsx::write_new_synced(&staged.toc(), &toc)?;
                fsx::write_new_synced(&staged.toc_index(), &toc_index)?;
                fsx::write_new_synced(&staged.record(), &imagestore_core::record::encode(&record))?;
                fsx::mkdir(&staged.children(), false)?;
                fsx::mkdir(&staged.owners(), false)?;
                fsx::sync_dir(&staged_dir)?;
                commit(inner, &s, &sd, &p, &i, &staged_dir, &record)
            })
            .await?;
        staging.disarm();
        Ok(image)
    }

    async fn import_layer(
        &self,
        store: &StoreName,
        id: &ImageId,
        lower: Arc<dyn LowerView>,
        tar: ByteStream,
        limits: IngestLimits,
    ) -> Result<ImportSummary> {
        let s = store.clone();
        let sd = self.run(move |i| i.open_store(&s)).await?;
        let mut staging = StagingDir::create(&sd, id)?;
        let staged = staging.layout();
        let mut sink = FileSink::create(BACKEND, staged.layer())?;
        let ingested = ingest(tar, None, &mut sink, lower, limits).await?;
        sink.finish().await?;
        let toc = ingested.toc.to_bytes()?;
        let toc_index = index::build(&ingested.toc)?;
        let summary = ImportSummary::of_toc(&ingested.toc, ingested.size);
        let (s, id2, staged_dir) = (store.clone(), id.clone(), staging.dir.clone());
        self.run(move |inner| {
            fsx::write_new_synced(&staged.toc(), &toc)?;
            fsx::write_new_synced(&staged.toc_index(), &toc_index)?;
            fsx::sync_dir(&staged_dir)?;
            let _guard = inner.store_lock(&sd)?;
            inner.writable_record(&s, &sd, &id2)?;
            let wd = sd.writable(&id2);
            let n = fsx::list_names(&wd.imports())?
                .iter()
                .filter(|n| !n.starts_with('.'))
                .count() as u32;
            let target = wd.import(n);
            std::fs::rename(&staged_dir, &target.dir).at(&target.dir)?;
            fsx::sync_dir(&wd.imports())
        })
        .await?;
        staging.disarm();
        Ok(summary)
    }
}

/// Makes a staged image visible. Takes the store lock.
fn commit(
    inner: &Inner,
    s: &StoreName,
    sd: &StoreDir,
    parent: &ImageId,
    id: &ImageId,
    staged: &std::path::Path,
    record: &ImageRecord,
) -> Result<Image> {
    let _guard = inner.store_lock(sd)?;
    if inner.find_record(sd, parent)?.is_none() {
        // The parent was deleted while we wrote: never leave a dangling child.
        return Err(Error::not_found(
            ObjectKind::Image,
            format!("{s}/{parent} (the parent of {id}, deleted during the write)"),
        ));
    }
    let pd = sd.image(parent);
    let d = sd.image(id);
    inner.usage_begin(sd)?;
    fsx::mkdir(&pd.children(), true)?;
    if !fsx::exists(&pd.child(id))? {
        fsx::write_new_synced(&pd.child(id), b"")?;
    }
    fsx::sync_dir(&pd.children())?;
    if fsx::exists(&d.dir)? {
        // An uncommitted leftover (its writer crashed): it is ours to replace.
        let doomed = sd.trash().join(format!("{id}.{}", fsx::nonce()));
        std::fs::rename(&d.dir, &doomed).at(&d.dir)?;
        fsx::remove_all(&doomed)?;
    }
    std::fs::rename(staged, &d.dir).at(&d.dir)?;
    fsx::sync_dir(&sd.images())?;
    fsx::write_new_synced(&d.committed(), b"")?;
    fsx::sync_dir(&d.dir)?;
    inner.usage_add(sd, i128::from(record.size))?;
    inner.usage_end(sd)?;
    inner.image_of(s, record)
}
