//! Writing a layer and importing into a writable layer: the handle's [`BlockingBackend`]
//! hooks.
//!
//! ```text
//! id lock ─► images/<id>/layer ◄─ core ingest pipeline (hash, parse, TOC), fsynced
//!         ─► digest ok? ─► toc, toc.idx ─► the catalogue's commit (record, child link,
//!            COMMITTED, usage counter)
//! ```
//! The id lock makes concurrent writers of one id (threads or processes) queue: the first
//! writes, the others find the committed image and return it without reading their body.

use std::sync::Arc;

use async_trait::async_trait;

use imagestore_core::backend::blocking::{BlockingBackend, BlockingCatalog};
use imagestore_core::backend::catalog::{Begin, begin_write, lock_id};
use imagestore_core::backend::record::ImageRecord;
use imagestore_core::backend::storage::{Storage, StorageLock};
use imagestore_core::layer::index;
use imagestore_core::layer::ingest::{IngestLimits, Ingested, ingest};
use imagestore_core::layer::sink::FileSink;
use imagestore_core::layer::toc::Toc;
use imagestore_core::layer::validate::LowerView;
use imagestore_core::{
    ByteStream, Capabilities, Digest, Image, ImageId, ImportSummary, Metadata, Result, StoreName,
};

use crate::error::BACKEND;
use crate::layout::{self, LayerFiles};
use crate::store::{LocalStore, MAX_CHAIN_DEPTH};

impl LocalStore {
    /// Streams `body` into the layer file of `files` (a folder that exists and holds no
    /// layer yet), checking it against `sum` and `lower`; the layer is fsynced.
    async fn ingest_into(
        &self,
        files: &LayerFiles,
        body: ByteStream,
        sum: Option<&Digest>,
        lower: Arc<dyn LowerView>,
        limits: IngestLimits,
    ) -> Result<Ingested> {
        let path = self.cat.rep().local(&files.layer());
        let mut sink = FileSink::create(BACKEND, path)?;
        let ingested = ingest(body, sum, &mut sink, lower, limits).await?;
        sink.finish().await?;
        Ok(ingested)
    }
}

/// Writes a layer's TOC index, then its TOC.
fn write_tocs(storage: &dyn Storage, files: &LayerFiles, toc: &Toc) -> Result<()> {
    storage.write(&files.toc_index(), &index::build(toc)?)?;
    storage.write(&files.toc(), &toc.to_bytes()?)
}

#[async_trait]
impl BlockingBackend for LocalStore {
    type IdLock = StorageLock;

    fn catalog(&self) -> Arc<dyn BlockingCatalog> {
        self.cat.clone()
    }

    fn scheme(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(true, MAX_CHAIN_DEPTH, true)
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
        let (s, p) = (store.clone(), parent.clone());
        let lower: Arc<dyn LowerView> = Arc::new(
            self.run(move |c| crate::content::stack(c, &s, &p))
                .await?
                .chain(),
        );
        let staged = slot.stage(&self.cat, id).await?;
        let files = layout::image_files(&staged.paths);
        let depth = staged.parent.depth + 1;
        let filled = async {
            let ingested = self
                .ingest_into(&files, body, sum.as_ref(), lower, IngestLimits::default())
                .await?;
            let (digest, size, toc) = (ingested.digest, ingested.size, ingested.toc);
            self.run(move |c| write_tocs(c.storage(), &files, &toc))
                .await?;
            let record = ImageRecord::new(
                id.clone(),
                Some(parent.clone()),
                Some(digest),
                size,
                depth,
                &meta,
            );
            Ok((record, meta))
        }
        .await;
        staged.finish(store, filled).await
    }

    async fn import_layer(
        &self,
        store: &StoreName,
        id: &ImageId,
        lower: Arc<dyn LowerView>,
        tar: ByteStream,
        limits: IngestLimits,
    ) -> Result<ImportSummary> {
        // The caller holds the id lock, so no one else changes this layer's imports.
        let (s, i) = (store.clone(), id.clone());
        let files = self
            .run(move |c| {
                let w = c.open_store(&s)?.writable(&i);
                let files = layout::import_files(&w, c.imports(&w)?);
                c.storage().mkdir(&layout::imports(&w))?;
                c.storage().remove_all(&files.dir)?;
                c.storage().mkdir(&files.dir)?;
                Ok(files)
            })
            .await?;
        let ingested = match self.ingest_into(&files, tar, None, lower, limits).await {
            Ok(i) => i,
            Err(e) => {
                let dir = files.dir.clone();
                let _ = self.run(move |c| c.storage().remove_all(&dir)).await;
                return Err(e);
            }
        };
        let summary = ImportSummary::of_toc(&ingested.toc, ingested.size);
        self.run(move |c| write_tocs(c.storage(), &files, &ingested.toc))
            .await?;
        Ok(summary)
    }
}
