//! Writing images (a store's scratch image, a layer image on a committed parent) and
//! importing into writable layers: the backend handle's [`BlockingBackend`] hooks.
//!
//! ```text
//! id lock ─► outbox/build-<pid>-<n>/<id>.vmdk: a new disk over the parent chain, ext4 open
//!         ─► core ingest pipeline (hash, parse, TOC); each file streams into that ext4
//!         ─► digest ok? ─► links, removals, directories written; the disk read back
//!         ─► image folder: imageMetadata/, <id>.toc, <id>.vmdk
//!         ─► the catalogue's commit: record, child link, manifest, usage counter
//! ```
//! The id lock makes concurrent writers of one id queue: the first writes, the others find the
//! committed image and return it without reading their body. Until the manifest exists the
//! folder is invisible; a write that fails or is dropped removes it.

use std::sync::Arc;
use std::time::Instant;

use tracing::debug;

use async_trait::async_trait;

use imagestore_core::backend::blocking::{BlockingBackend, BlockingCatalog};
use imagestore_core::backend::catalog::{
    Begin, ImagePaths, StorePaths, begin_write, image_name, lock_id,
};
use imagestore_core::backend::record::ImageRecord;
use imagestore_core::backend::storage::StorageLock;
use imagestore_core::layer::ingest::{IngestLimits, NullSink, ingest_tapped};
use imagestore_core::layer::validate::LowerView;
use imagestore_core::{
    ByteStream, Capabilities, Digest, Image, ImageId, ImportSummary, JoinedImage, Metadata, Result,
    StoreName,
};

use crate::build::{DeltaBuild, WorkDir};
use crate::content::{ImageLayers, finish_import, image_layers, open_chain, start_import, view_of};
use crate::ext4::LayerData;
use crate::layout;
use crate::store::{DiskStore, MAX_CHAIN_DEPTH};

impl DiskStore {
    /// Builds the delta disk of image `p` on `parent` from `body` in the outbox and puts it,
    /// its TOC and its metadata in the image's (staged) folder; returns the record and
    /// metadata to commit.
    #[allow(clippy::too_many_arguments)]
    async fn build_layer(
        &self,
        s: StoreName,
        sp: StorePaths,
        p: ImagePaths,
        parent: ImageRecord,
        lower: ImageLayers,
        meta: Metadata,
        sum: Option<Digest>,
        body: ByteStream,
    ) -> Result<(ImageRecord, Metadata)> {
        let view: Arc<dyn LowerView> = Arc::new(view_of(&lower.tocs));
        // The new disk is started over the parent's chain before the layer is read, so its
        // files stream straight into the filesystem as the layer is parsed; the tar itself
        // is not kept.
        let (s2, sp2, p2, parent_id, ids) = (
            s.clone(),
            sp.clone(),
            p.clone(),
            parent.id.clone(),
            lower.ids.clone(),
        );
        let (outbox, disk, build) = self
            .run(move |c| {
                let outbox = WorkDir::create(&c.rep().ds.outbox_dir())?;
                let disk = outbox.path().join(format!("{}.vmdk", p2.id));
                let chain = open_chain(c.rep(), &sp2, &ids)
                    .map_err(|e| c.unless_parent_gone(e, &s2, &sp2, &parent_id, &p2.id))?;
                let hint = layout::parent_hint(&p2.dir, &sp2.image(&parent_id));
                let build = DeltaBuild::start(&chain, &chain, &hint, &disk)?;
                Ok((outbox, disk, build))
            })
            .await?;
        let limits = self.cat.rep().options.ingest_limits();
        let tap = build.tap();
        let ingested =
            ingest_tapped(body, sum.as_ref(), &mut NullSink, view, limits, Some(tap)).await?;
        let toc = Arc::new(ingested.toc);
        let (p2, parent_id, m) = (p.clone(), parent.id.clone(), meta.clone());
        let format = build.format();
        let size = self
            .run(move |c| {
                let stats = build
                    .finish(&lower.tocs, toc.clone(), LayerData::Streamed)
                    .map_err(|e| c.unless_parent_gone(e, &s, &sp, &parent_id, &p2.id))?;
                let toc = toc.to_bytes()?;
                let rep = c.rep();
                rep.write_metadata(&p2, &m)?;
                rep.ds.write(&layout::toc(&p2), &toc)?;
                rep.put_disk(&disk, &layout::disk(&p2), format)?;
                drop(outbox);
                Ok(stats.disk.bytes + toc.len() as u64)
            })
            .await?;
        let record = ImageRecord::new(
            p.id.clone(),
            Some(parent.id),
            Some(ingested.digest),
            size,
            parent.depth + 1,
            &Metadata::new(),
        );
        Ok((record, meta))
    }
}

/// The disk backends' handle; core derives the storage traits from it and the catalogue.
#[async_trait]
impl BlockingBackend for DiskStore {
    type IdLock = StorageLock;

    fn catalog(&self) -> Arc<dyn BlockingCatalog> {
        self.cat.clone()
    }

    fn scheme(&self) -> &'static str {
        self.cat.scheme()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(false, MAX_CHAIN_DEPTH, self.cat.storage().shared_writers())
    }

    async fn join_image(
        &self,
        store: &StoreName,
        id: &ImageId,
        vm: &str,
        disk: &ImageId,
    ) -> Result<JoinedImage> {
        let (vm, ds) = (vm.to_owned(), self.datastore());
        self.with_child_disk(store, id, disk, move |parent, child| {
            ds.attach_child_disk(&vm, parent, child)
        })
        .await
    }

    fn ingest_limits(&self) -> IngestLimits {
        self.cat.rep().options.ingest_limits()
    }

    async fn lock_id(&self, store: &StoreName, id: &ImageId) -> Result<StorageLock> {
        lock_id(&self.cat, store, id).await
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
        let slot = match begin_write(&self.cat, store, parent, id, sum.as_ref()).await? {
            Begin::Found(img) => return Ok(img),
            Begin::Write(slot) => slot,
        };
        let (s, pr, sp, i) = (
            store.clone(),
            slot.parent.clone(),
            slot.store.clone(),
            id.clone(),
        );
        let lower = self
            .run(move |c| {
                let parent = pr.id.clone();
                image_layers(c, &s, pr).map_err(|e| c.unless_parent_gone(e, &s, &sp, &parent, &i))
            })
            .await?;
        let staged = slot.stage(&self.cat, id).await?;
        let started = Instant::now();
        let (s, sp, p, parent_rec) = (
            store.clone(),
            staged.store.clone(),
            staged.paths.clone(),
            staged.parent.clone(),
        );
        let filled = self
            .build_layer(s, sp, p, parent_rec, lower, meta, sum, body)
            .await;
        let built_at = Instant::now();
        let image = staged.finish(store, filled).await?;
        debug!(
            image = %image_name(store, id),
            build_ms = (built_at - started).as_millis(),
            commit_ms = built_at.elapsed().as_millis(),
            "wrote an image"
        );
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
        let (s, i) = (store.clone(), id.clone());
        let import = self.run(move |c| start_import(c, &s, &i)).await?;
        let tap = import.build.tap();
        let ingested = ingest_tapped(tar, None, &mut NullSink, lower, limits, Some(tap)).await?;
        let summary = ImportSummary::of_toc(&ingested.toc, ingested.size);
        self.run(move |c| finish_import(c.rep(), import, ingested.toc))
            .await?;
        Ok(summary)
    }
}
