//! Writing images (a store's scratch image, a layer image on a committed parent) and
//! importing into writable layers: the backend handle's [`BlockingBackend`] hooks.
//!
//! ```text
//! id lock ─► outbox/build-<pid>-<n>/<id>.vmdk: a new disk over the parent chain, ext4 open
//!         ─► core ingest pipeline (hash, parse, TOC); each file streams into that ext4
//!         ─► digest ok? ─► links, removals, directories written; the disk read back
//!         ─► image folder: imageMetadata/, <id>.toc, image.json, <id>.vmdk
//!         ─► store lock: parent still committed? child marker, manifest, usage counter
//! ```
//! The id lock makes concurrent writers of one id queue: the first writes, the others find the
//! committed image and return it without reading their body. The store lock makes a commit
//! and a delete of its parent exclusive. Until the manifest exists the folder is invisible,
//! and the sweep removes it once its id lock is free.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, warn};

use async_trait::async_trait;

use imagestore_core::blocking::{BlockingBackend, BlockingCatalog};
use imagestore_core::layer::chain::ChainView;
use imagestore_core::layer::ingest::{IngestLimits, NullSink, ingest_tapped, read_toc};
use imagestore_core::layer::scratch::skeleton_tar;
use imagestore_core::layer::toc::Toc;
use imagestore_core::layer::validate::LowerView;
use imagestore_core::record::{self, ImageRecord};
use imagestore_core::{
    ByteStream, Capabilities, Digest, Error, Image, ImageId, ImportSummary, Metadata, ObjectKind,
    Result, StoreName,
};

use crate::datastore::{Datastore, DsLock};
use crate::ext4::LayerData;
use crate::layer::{DeltaBuild, WorkDir, build_scratch};
use crate::layout::{self, ImagePaths, StorePaths};
use crate::store::{DiskStore, Inner, MAX_CHAIN_DEPTH, Precheck, image_name};

/// An image built in the work folder, ready to be put on the datastore.
pub(crate) struct Built {
    /// The disk file (moved onto the datastore).
    pub disk: PathBuf,
    /// The encoded TOC.
    pub toc: Vec<u8>,
    /// The record.
    pub record: ImageRecord,
    /// The metadata, one file per key.
    pub metadata: Metadata,
}

/// Writes everything of an image but its manifest into its folder, replacing what an earlier
/// writer of the id left (the caller holds the id lock).
pub(crate) fn stage(ds: &dyn Datastore, p: &ImagePaths, built: &Built) -> Result<()> {
    ds.remove_all(&p.dir)?;
    ds.mkdir(&p.dir)?;
    ds.mkdir(&p.metadata())?;
    for (k, v) in &built.metadata {
        let (name, bytes) = layout::metadata_file(k, v);
        ds.write(&p.metadata().child(&name), &bytes)?;
    }
    ds.write(&p.toc(), &built.toc)?;
    ds.write(&p.record(), &record::encode(&built.record))?;
    ds.put_file(&built.disk, &p.disk)?;
    Ok(())
}

/// Makes a staged image visible: its child marker in the parent, the manifest, the usage
/// counter. Takes the store lock; refuses when the parent is gone.
pub(crate) fn publish(
    inner: &Inner,
    s: &StoreName,
    sp: &StorePaths,
    record: &ImageRecord,
) -> Result<()> {
    let _guard = inner.store_lock(sp)?;
    let id = &record.id;
    let p = sp.image(id);
    let parent = match &record.parent {
        Some(parent) => {
            let pp = sp.image(parent);
            if !layout::is_committed(inner.ds.as_ref(), &pp)? {
                // The parent was deleted while we wrote: never leave a dangling child.
                return Err(Error::not_found(
                    ObjectKind::Image,
                    format!("{s}/{parent} (the parent of {id}, deleted during the write)"),
                ));
            }
            Some(pp)
        }
        None => None,
    };
    inner.usage_begin(sp)?;
    if let Some(pp) = parent {
        inner.ds.mkdir(&pp.children())?;
        inner.ds.create_new(&pp.child(id), b"")?;
    }
    match inner.ds.create_new(&p.manifest(), b"") {
        Ok(true) => {}
        Ok(false) => return Err(Error::already_exists(ObjectKind::Image, image_name(s, id))),
        // The manifest may be in place though the answer was lost: then the image is
        // committed, and what follows is the same as after a success.
        Err(e) if !layout::is_committed(inner.ds.as_ref(), &p)? => return Err(e),
        Err(_) => {}
    }
    // From here the image is visible, so a failure must not undo it: the usage change
    // stays marked pending and is recomputed by the next reader of the counter.
    if let Err(e) = inner.usage_end(sp, i128::from(record.size)) {
        warn!(image = %image_name(s, id), error = %e, "usage counter left to recompute");
    }
    Ok(())
}

/// Creates the folders of store `sp` and its scratch image: a base disk of the configured
/// capacity holding ext4 with VIC's skeleton, beside the skeleton's TOC. The caller holds the
/// store's creation lock.
pub(crate) fn create_scratch(inner: &Inner, sp: &StorePaths) -> Result<()> {
    let ds = inner.ds.as_ref();
    ds.mkdir(&sp.dir)?;
    ds.mkdir(&sp.images())?;
    ds.mkdir(&sp.writables())?;
    ds.write(&sp.lock(), b"")?;
    ds.write(&sp.usage(), b"0")?;
    let work = WorkDir::create(&ds.work_dir())?;
    let disk = work.path().join("scratch.vmdk");
    let stats = build_scratch(&disk, "scratch.vmdk", inner.options.capacity_kib)?;
    let toc = read_toc(
        &skeleton_tar()?[..],
        &ChainView::new(Vec::new()),
        IngestLimits::default(),
    )?
    .to_bytes()?;
    let built = Built {
        disk,
        record: ImageRecord::new(
            ImageId::scratch(),
            None,
            None,
            stats.bytes + toc.len() as u64,
            0,
            &Metadata::new(),
        ),
        toc,
        metadata: Metadata::new(),
    };
    let p = sp.scratch();
    stage(ds, &p, &built)?;
    if !ds.create_new(&p.manifest(), b"")? {
        return Err(Error::invalid(format!(
            "{} appeared while the store was created",
            ds.describe(&p.manifest())
        )));
    }
    Ok(())
}

impl Inner {
    /// `e`, or `NotFound` if it happened because a concurrent delete removed `parent`.
    fn unless_parent_gone(
        &self,
        e: Error,
        s: &StoreName,
        sp: &StorePaths,
        parent: &ImageId,
        id: &ImageId,
    ) -> Error {
        match layout::is_committed(self.ds.as_ref(), &sp.image(parent)) {
            Ok(false) => Error::not_found(
                ObjectKind::Image,
                format!("{s}/{parent} (the parent of {id}, deleted during the write)"),
            ),
            _ => e,
        }
    }
}

/// The disk backends' handle; core derives the storage traits from it and `Inner`'s
/// catalogue.
#[async_trait]
impl BlockingBackend for DiskStore {
    type IdLock = DsLock;

    fn catalog(&self) -> Arc<dyn BlockingCatalog> {
        self.inner.clone()
    }

    fn scheme(&self) -> &'static str {
        self.inner.ds.scheme()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(false, MAX_CHAIN_DEPTH, self.inner.ds.shared_writers())
    }

    fn ingest_limits(&self) -> IngestLimits {
        self.inner.options.ingest_limits()
    }

    async fn lock_id(&self, store: &StoreName, id: &ImageId) -> Result<DsLock> {
        let (s, id) = (store.clone(), id.clone());
        self.run(move |inner| {
            let sp = inner.open_store(&s)?;
            inner.id_lock(&sp, &id)
        })
        .await
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
        let sp = match self
            .run(move |inner| inner.precheck(&s, &p, &i, sm.as_ref()))
            .await?
        {
            Precheck::Found(img) => return Ok(img),
            Precheck::Write(sp, _) => sp,
        };
        let _id_lock = self.lock_id(store, id).await?;
        // Someone may have committed while we waited for the lock.
        let (s, p, i, sm) = (store.clone(), parent.clone(), id.clone(), sum.clone());
        let parent_rec = match self
            .run(move |inner| inner.precheck(&s, &p, &i, sm.as_ref()))
            .await?
        {
            Precheck::Found(img) => return Ok(img),
            Precheck::Write(_, r) => r,
        };
        let (s, pr, sp2, i) = (store.clone(), parent_rec.clone(), sp.clone(), id.clone());
        let lower = self
            .run(move |inner| {
                let parent = pr.id.clone();
                inner
                    .image_layers(&s, pr)
                    .map_err(|e| inner.unless_parent_gone(e, &s, &sp2, &parent, &i))
            })
            .await?;
        let view: Arc<dyn LowerView> = Arc::new(crate::content::view_of(&lower.tocs));
        // The new disk is started over the parent's chain before the layer is read, so its
        // files stream straight into the filesystem as the layer is parsed; the tar itself
        // is not kept.
        let (s, sp2, pr, i, ids) = (
            store.clone(),
            sp.clone(),
            parent_rec.clone(),
            id.clone(),
            lower.ids.clone(),
        );
        let (outbox, disk, build) = self
            .run(move |inner| {
                let parent_gone = |e| inner.unless_parent_gone(e, &s, &sp2, &pr.id, &i);
                let outbox = WorkDir::create(&inner.ds.outbox_dir())?;
                let disk = outbox.path().join(format!("{i}.vmdk"));
                let chain = inner.open_chain(&sp2, &ids).map_err(parent_gone)?;
                let hint = layout::parent_hint(&sp2.image(&i).dir, &sp2.image(&pr.id));
                let build = DeltaBuild::start(&chain, &chain, &hint, &disk)?;
                Ok((outbox, disk, build))
            })
            .await?;
        let limits = self.inner.options.ingest_limits();
        let started = Instant::now();
        let tap = build.tap();
        let ingested =
            ingest_tapped(body, sum.as_ref(), &mut NullSink, view, limits, Some(tap)).await?;
        let ingest_ms = started.elapsed().as_millis();

        let (s, id) = (store.clone(), id.clone());
        self.run(move |inner| {
            let parent_gone = |e| inner.unless_parent_gone(e, &s, &sp, &parent_rec.id, &id);
            let top = Arc::new(ingested.toc);
            let p = sp.image(&id);
            let stats = build
                .finish(&lower.tocs, top.clone(), LayerData::Streamed)
                .map_err(parent_gone)?;
            let _outbox = &outbox;
            let toc = top.to_bytes()?;
            let built = Built {
                disk,
                record: ImageRecord::new(
                    id.clone(),
                    Some(parent_rec.id.clone()),
                    Some(ingested.digest),
                    stats.disk.bytes + toc.len() as u64,
                    parent_rec.depth + 1,
                    &Metadata::new(),
                ),
                toc,
                metadata: meta,
            };
            let built_at = Instant::now();
            let r = stage(inner.ds.as_ref(), &p, &built)
                .and_then(|()| publish(inner, &s, &sp, &built.record));
            if let Err(e) = r {
                // Only an image that never became visible is removed; if even that cannot
                // be told, the sweep removes the folder once it is known uncommitted.
                if let Ok(false) = layout::is_committed(inner.ds.as_ref(), &p) {
                    let _ = inner.ds.remove_all(&p.dir);
                }
                return Err(e);
            }
            debug!(
                image = %image_name(&s, &id),
                ingest_ms,
                build_ms = (built_at - started).as_millis() - ingest_ms,
                commit_ms = built_at.elapsed().as_millis(),
                "wrote an image"
            );
            inner.image_of(&s, &sp, &built.record)
        })
        .await
    }

    async fn import_layer(
        &self,
        store: &StoreName,
        id: &ImageId,
        lower: Arc<dyn LowerView>,
        tar: ByteStream,
        limits: IngestLimits,
    ) -> Result<ImportSummary> {
        let (s, i) = (store.clone(), id.clone());
        let import = self.run(move |inner| inner.start_import(&s, &i)).await?;
        let tap = import.build.tap();
        let ingested = ingest_tapped(tar, None, &mut NullSink, lower, limits, Some(tap)).await?;
        let summary = ImportSummary::of_toc(&ingested.toc, ingested.size);
        self.run(move |inner| inner.finish_import(import, ingested.toc))
            .await?;
        Ok(summary)
    }
}

/// The TOC stored beside image `p`'s disk.
pub(crate) fn read_toc_file(ds: &dyn Datastore, p: &ImagePaths) -> Result<Toc> {
    let path = p.toc();
    let bytes = ds
        .read(&path)?
        .ok_or_else(|| Error::corrupt(ds.describe(&path), "the image has no TOC"))?;
    Toc::from_bytes(&bytes, &ds.describe(&path))
}
