//! Image contents: stacks for the layer engine, export, checkout, writable layers and import.

use std::path::Path as FsPath;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;

use imagestore_core::image::validate_metadata;
use imagestore_core::layer::chain::{LayerToc, MemoryToc};
use imagestore_core::layer::checkout::{CheckoutOptions, CheckoutReport};
use imagestore_core::layer::export::{LayerReader, LayerSource, layer_reader};
use imagestore_core::layer::ingest::{IngestLimits, ingest};
use imagestore_core::layer::rewrite::filter_tar;
use imagestore_core::layer::stack::Stack;
use imagestore_core::layer::stream::spawn_producer;
use imagestore_core::layer::toc::{Compression, Toc};
use imagestore_core::layer::validate::LowerView;
use imagestore_core::storer::check_write_id;
use imagestore_core::{
    ByteStream, Error, Exporter, FilterSpec, Image, ImageId, ImportSummary, Importer, Metadata,
    ObjectKind, Result, StoreName, Writable,
};

use crate::lease::{self, Acquired, LeaseGuard, LeaseOp};
use crate::objects::{Created, Objects};
use crate::reader::ObjectReader;
use crate::record::{LayerRef, LinkKind, LinkRecord, WritableRecord, encode};
use crate::store::{S3Store, StoreCtx};
use crate::upload::UploadSink;

/// Concurrent TOC reads when building a stack.
const TOC_READS: usize = 16;

/// Reads layers from the bucket with ranged GETs.
struct S3Source {
    objects: Arc<Objects>,
    handle: tokio::runtime::Handle,
    layers: Vec<(String, Compression)>,
}

impl LayerSource for S3Source {
    fn open(&self, index: usize) -> Result<Box<dyn LayerReader>> {
        let (key, compression) = self
            .layers
            .get(index)
            .ok_or_else(|| Error::invalid(format!("no layer {index} in this stack")))?;
        let r = ObjectReader::new(self.objects.clone(), self.handle.clone(), key.clone());
        layer_reader(r, *compression)
    }
}

/// One layer of a stack: where its TOC and bytes are, and whose it is.
struct Part {
    owner: ImageId,
    toc: String,
    layer: String,
}

impl S3Store {
    /// Reads (or recalls) a TOC.
    async fn toc(&self, key: &str) -> Result<Arc<Toc>> {
        if let Some(t) = self.cached_toc(key) {
            return Ok(t);
        }
        let got = self
            .objects()
            .get(key)
            .await?
            .ok_or_else(|| crate::objects::missing(&self.objects().show(key)))?;
        let toc = Arc::new(Toc::from_bytes(&got.bytes, &self.objects().show(key))?);
        self.cache_toc(key.to_owned(), toc.clone());
        Ok(toc)
    }

    /// The stack of a chain of images (scratch first) plus a writable layer's imports.
    pub(crate) async fn stack_of_chain(
        &self,
        st: &StoreCtx,
        chain: &[LayerRef],
        imports: &[(String, String)],
        top: &ImageId,
    ) -> Result<Stack> {
        let mut parts: Vec<Part> = chain
            .iter()
            .map(|l| Part {
                owner: l.id.clone(),
                toc: st.keys.toc(&l.id, &l.nonce),
                layer: st.keys.layer(&l.id, &l.nonce),
            })
            .collect();
        parts.extend(imports.iter().map(|(toc, layer)| Part {
            owner: top.clone(),
            toc: toc.clone(),
            layer: layer.clone(),
        }));
        let keys: Vec<String> = parts.iter().map(|p| p.toc.clone()).collect();
        let tocs: Vec<Result<Arc<Toc>>> = futures::stream::iter(keys)
            .map(|k| async move { self.toc(&k).await })
            .buffered(TOC_READS)
            .collect()
            .await;
        let tocs = tocs.into_iter().collect::<Result<Vec<_>>>()?;
        let layers = parts
            .iter()
            .zip(&tocs)
            .map(|(p, t)| (p.layer.clone(), t.compression))
            .collect();
        // TOCs are fetched up front (concurrently, and cached): the engine's lookups are
        // synchronous and must not wait on the network one path at a time.
        let tocs = tocs
            .into_iter()
            .map(|t| Arc::new(MemoryToc::new(t)) as Arc<dyn LayerToc>)
            .collect();
        Ok(Stack {
            owners: parts.into_iter().map(|p| p.owner).collect(),
            layers: tocs,
            source: Arc::new(S3Source {
                objects: self.objects().clone(),
                handle: tokio::runtime::Handle::current(),
                layers,
            }),
        })
    }

    /// The imports of a writable layer, in order: `(toc key, layer key)` of those whose TOC
    /// exists (an import is committed by its TOC).
    async fn imports(&self, st: &StoreCtx, w: &WritableRecord) -> Result<Vec<(String, String)>> {
        let o = self.objects();
        let mut seqs: Vec<u32> = o
            .list(&st.keys.imports_dir(&w.id, &w.nonce))
            .await?
            .iter()
            .filter_map(|m| {
                let rel = o.rel(&m.location);
                let dir = rel.strip_suffix("/toc")?;
                crate::layout::last_segment(dir).parse().ok()
            })
            .collect();
        seqs.sort_unstable();
        Ok(seqs
            .into_iter()
            .map(|n| {
                let dir = st.keys.import_dir(&w.id, &w.nonce, n);
                (format!("{dir}/toc"), format!("{dir}/layer"))
            })
            .collect())
    }

    /// The stack of an image or writable layer.
    pub(crate) async fn stack(&self, st: &StoreCtx, id: &ImageId) -> Result<Stack> {
        if let Some(r) = self.find_record(st, id).await? {
            return self.stack_of_chain(st, &r.child_chain(), &[], id).await;
        }
        if let Some(w) = self.find_writable(st, id).await? {
            let imports = self.imports(st, &w).await?;
            return self.stack_of_chain(st, &w.chain, &imports, id).await;
        }
        Err(Error::not_found(ObjectKind::Image, st.name_of(id)))
    }

    async fn writable_record(&self, st: &StoreCtx, id: &ImageId) -> Result<WritableRecord> {
        self.find_writable(st, id)
            .await?
            .ok_or_else(|| Error::not_found(ObjectKind::Writable, st.name_of(id)))
    }

    /// Takes the lease of writable layer `id` for `op`; `NotFound` if it disappears while
    /// waiting.
    async fn writable_lease(&self, st: &StoreCtx, id: &ImageId, op: LeaseOp) -> Result<LeaseGuard> {
        let acquired = lease::acquire(
            self.objects(),
            &st.keys.lease(id),
            self.lease_record(op),
            || async {
                Ok(match self.find_writable(st, id).await? {
                    None => Some(()),
                    Some(_) => None,
                })
            },
        )
        .await?;
        match acquired {
            Acquired::Held { guard, taken_over } => {
                if taken_over.is_some() {
                    crate::sweep::resolve_pending(self, st, id, &guard.record().await).await?;
                }
                Ok(guard)
            }
            Acquired::Answered(()) => Err(Error::not_found(ObjectKind::Writable, st.name_of(id))),
        }
    }

    async fn create_writable_at(
        &self,
        st: &StoreCtx,
        parent: &ImageId,
        id: &ImageId,
    ) -> Result<Writable> {
        let exists = || Error::already_exists(ObjectKind::Writable, st.name_of(id));
        self.record(st, parent).await?;
        if self.find_record(st, id).await?.is_some() || self.find_writable(st, id).await?.is_some()
        {
            return Err(exists());
        }
        let record = self
            .lease_record(LeaseOp::CreateWritable)
            .with_parent(parent.clone());
        let nonce = record.nonce.clone();
        let (guard, taken_over) =
            match lease::acquire(self.objects(), &st.keys.lease(id), record, || async {
                let taken = self.find_record(st, id).await?.is_some()
                    || self.find_writable(st, id).await?.is_some();
                Ok(taken.then_some(()))
            })
            .await?
            {
                Acquired::Held { guard, taken_over } => (guard, taken_over),
                Acquired::Answered(()) => return Err(exists()),
            };
        if taken_over.is_some() {
            crate::sweep::resolve_pending(self, st, id, &guard.record().await).await?;
        }
        let r: Result<Writable> = async {
            if self.find_record(st, id).await?.is_some()
                || self.find_writable(st, id).await?.is_some()
            {
                return Err(exists());
            }
            let o = self.objects();
            let parent_rec = self.record(st, parent).await?;
            o.put(
                &st.keys.child(parent, id),
                encode(&LinkRecord {
                    nonce: nonce.clone(),
                    kind: LinkKind::Writable,
                    parent_nonce: parent_rec.nonce.clone(),
                }),
            )
            .await?;
            let parent_rec = crate::write::check_parent(self, st, parent).await?;
            let rec = WritableRecord {
                version: crate::record::RECORD_VERSION,
                id: id.clone(),
                nonce: nonce.clone(),
                parent: parent.clone(),
                chain: parent_rec.child_chain(),
            };
            guard.ensure_fresh().await?;
            match o.create(&st.keys.writable(id), encode(&rec)).await? {
                Created::Created(_) => {}
                Created::Exists => {
                    if self.find_writable(st, id).await?.map(|w| w.nonce) != Some(nonce.clone()) {
                        return Err(exists());
                    }
                }
            }
            Ok(Writable {
                id: id.clone(),
                store: st.name.clone(),
                parent: parent.clone(),
                imports: 0,
            })
        }
        .await;
        match r {
            Ok(w) => {
                guard.release().await?;
                Ok(w)
            }
            Err(e) => {
                let undo = crate::sweep::undo_create_writable(self, st, id, parent, &nonce).await;
                if undo.is_ok() {
                    guard.release().await?;
                }
                Err(e)
            }
        }
    }

    /// Removes a writable layer: its record (invisible from then on), its imports, its link.
    /// Call with its lease.
    async fn delete_writable_locked(&self, st: &StoreCtx, id: &ImageId) -> Result<()> {
        let w = self.writable_record(st, id).await?;
        self.objects().delete(&st.keys.writable(id)).await?;
        crate::sweep::finish_delete_writable(self, st, id, &w.nonce, &w.parent).await
    }
}

#[async_trait]
impl Importer for S3Store {
    async fn create_writable(&self, parent: &Image, id: &ImageId) -> Result<Writable> {
        check_write_id(id)?;
        let st = self.open_store(&parent.store).await?;
        self.create_writable_at(&st, &parent.id, id).await
    }

    async fn get_writable(&self, store: &StoreName, id: &ImageId) -> Result<Writable> {
        let st = self.open_store(store).await?;
        let w = self.writable_record(&st, id).await?;
        let imports = self.imports(&st, &w).await?.len() as u32;
        Ok(Writable {
            id: id.clone(),
            store: store.clone(),
            parent: w.parent,
            imports,
        })
    }

    async fn import(
        &self,
        store: &StoreName,
        id: &ImageId,
        filter: &FilterSpec,
        tar: ByteStream,
    ) -> Result<ImportSummary> {
        let st = self.open_store(store).await?;
        self.writable_record(&st, id).await?;
        let guard = self.writable_lease(&st, id, LeaseOp::Import).await?;
        let r: Result<(ImportSummary, String)> = async {
            let w = self.writable_record(&st, id).await?;
            guard.set_target(&w.nonce).await?;
            let imports = self.imports(&st, &w).await?;
            let stack = self.stack_of_chain(&st, &w.chain, &imports, id).await?;
            let lower: Arc<dyn LowerView> = Arc::new(stack.chain());
            let limits = IngestLimits::default();
            let filtered = filter_tar(tar, filter.clone(), limits.tar);
            let dir = st.keys.import_dir(id, &w.nonce, imports.len() as u32);
            let cfg = &self.inner.config;
            let mut sink = UploadSink::new(
                self.objects().clone(),
                format!("{dir}/layer"),
                cfg.part_size,
                cfg.upload_concurrency,
            );
            let ingested = match ingest(filtered, None, &mut sink, lower, limits).await {
                Ok(i) => i,
                Err(e) => {
                    sink.abort().await;
                    return Err(e);
                }
            };
            guard.ensure_fresh().await?;
            sink.finish().await?;
            let toc = ingested.toc.to_bytes()?;
            let summary = ImportSummary::of_toc(&ingested.toc, ingested.size);
            guard.ensure_fresh().await?;
            // The TOC commits the import.
            self.objects().put(&format!("{dir}/toc"), toc).await?;
            self.cache_toc(format!("{dir}/toc"), Arc::new(ingested.toc));
            Ok((summary, dir))
        }
        .await;
        match r {
            Ok((summary, _)) => {
                guard.release().await?;
                Ok(summary)
            }
            Err(e) => {
                let w = self.find_writable(&st, id).await.ok().flatten();
                let undo = match w {
                    Some(w) => crate::sweep::undo_imports(self, &st, id, &w.nonce, false).await,
                    None => Ok(()),
                };
                if undo.is_ok() {
                    guard.release().await?;
                }
                Err(e)
            }
        }
    }

    async fn commit_writable(
        &self,
        store: &StoreName,
        id: &ImageId,
        new_id: &ImageId,
        meta: Metadata,
    ) -> Result<Image> {
        check_write_id(new_id)?;
        validate_metadata(&meta)?;
        let st = self.open_store(store).await?;
        self.writable_record(&st, id).await?;
        let guard = self
            .writable_lease(&st, id, LeaseOp::CommitWritable)
            .await?;
        let r: Result<Image> = async {
            let w = self.writable_record(&st, id).await?;
            let imports = self.imports(&st, &w).await?;
            let stack = self.stack_of_chain(&st, &w.chain, &imports, id).await?;
            let diff = stack.export_since(Some(&w.parent), id, &FilterSpec::all(), true)?;
            let image = self
                .write_layer(store, &w.parent, new_id, meta, None, diff)
                .await?;
            guard.ensure_fresh().await?;
            self.delete_writable_locked(&st, id).await?;
            Ok(image)
        }
        .await;
        guard.release().await?;
        r
    }

    async fn delete_writable(&self, store: &StoreName, id: &ImageId) -> Result<()> {
        let st = self.open_store(store).await?;
        self.writable_record(&st, id).await?;
        let guard = self
            .writable_lease(&st, id, LeaseOp::DeleteWritable)
            .await?;
        let w = match self.writable_record(&st, id).await {
            Ok(w) => w,
            Err(e) => {
                guard.release().await?;
                return Err(e);
            }
        };
        guard.set_target(&w.nonce).await?;
        match self.delete_writable_locked(&st, id).await {
            Ok(()) => guard.release().await,
            Err(e) => {
                if self.find_writable(&st, id).await?.is_some() {
                    guard.release().await?;
                }
                Err(e)
            }
        }
    }
}

#[async_trait]
impl Exporter for S3Store {
    async fn export(
        &self,
        store: &StoreName,
        id: &ImageId,
        ancestor: Option<&ImageId>,
        filter: &FilterSpec,
        data: bool,
    ) -> Result<ByteStream> {
        let st = self.open_store(store).await?;
        let stack = self.stack(&st, id).await?;
        stack.export_since(ancestor, id, filter, data)
    }

    async fn export_raw(&self, store: &StoreName, id: &ImageId) -> Result<ByteStream> {
        let st = self.open_store(store).await?;
        let r = self.record(&st, id).await?;
        let key = st.keys.layer(id, &r.nonce);
        let mut reader = ObjectReader::new(
            self.objects().clone(),
            tokio::runtime::Handle::current(),
            key,
        );
        Ok(spawn_producer(move |w| {
            std::io::copy(&mut reader, w).map(|_| ()).map_err(|e| {
                imagestore_core::layer::stream::error_from_io(e, crate::error::BACKEND)
            })
        }))
    }

    async fn checkout(
        &self,
        store: &StoreName,
        id: &ImageId,
        dest: &FsPath,
        options: &CheckoutOptions,
    ) -> Result<CheckoutReport> {
        let st = self.open_store(store).await?;
        let stack = self.stack(&st, id).await?;
        stack.checkout(dest.to_owned(), options.clone()).await
    }
}
