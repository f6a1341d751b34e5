//! Image contents: stacks for the layer engine, export, checkout, writable layers and import.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use imagestore_core::image::validate_metadata;
use imagestore_core::layer::chain::LayerToc;
use imagestore_core::layer::checkout::{CheckoutOptions, CheckoutReport};
use imagestore_core::layer::export::{LayerReader, LayerSource, layer_reader};
use imagestore_core::layer::index;
use imagestore_core::layer::ingest::{IngestLimits, ingest, sniff};
use imagestore_core::layer::rewrite::filter_tar;
use imagestore_core::layer::stack::Stack;
use imagestore_core::layer::validate::LowerView;
use imagestore_core::storer::check_write_id;
use imagestore_core::{
    ByteStream, Error, Exporter, FilterSpec, Image, ImageId, ImportSummary, Importer, Metadata,
    ObjectKind, Result, StoreName, Writable,
};

use crate::error::{BACKEND, IoContext};
use crate::fsx;
use crate::layout::{ImageDir, StoreDir};
use crate::lock;
use crate::record::WritableRecord;
use crate::store::{Inner, LocalStore};
use crate::tocs::LocalLayerToc;
use crate::write::StagingDir;
use imagestore_core::layer::sink::FileSink;
use imagestore_core::record;

/// Reads layer files from disk; the compression is read from each file's first bytes.
#[derive(Debug)]
struct LocalSource {
    layers: Vec<PathBuf>,
}

impl LayerSource for LocalSource {
    fn open(&self, index: usize) -> Result<Box<dyn LayerReader>> {
        let path = self
            .layers
            .get(index)
            .ok_or_else(|| Error::invalid(format!("no layer {index} in this stack")))?;
        let mut f = std::fs::File::open(path).at(path)?;
        let mut magic = [0u8; 6];
        let n = f.read(&mut magic).at(path)?;
        f.seek(SeekFrom::Start(0)).at(path)?;
        layer_reader(f, sniff(&magic[..n])?)
    }
}

impl Inner {
    /// A stored layer's TOC for the engine.
    fn layer_toc(&self, key: String, what: String, dir: ImageDir) -> Arc<dyn LayerToc> {
        Arc::new(LocalLayerToc::new(self.tocs.clone(), key, what, dir))
    }

    /// The stack of an image or writable layer, scratch first.
    pub(crate) fn stack_sync(&self, s: &StoreName, id: &ImageId) -> Result<Stack> {
        let sd = self.open_store(s)?;
        let (mut chain_top, imports) = if let Some(r) = self.find_record(&sd, id)? {
            (r, Vec::new())
        } else if self.writable_exists(&sd, id)? {
            let w = self.writable_record(s, &sd, id)?;
            let r = self.record(s, &sd, &w.parent)?;
            let wd = sd.writable(id);
            let mut imports = Vec::new();
            for name in fsx::list_names(&wd.imports())? {
                if name.starts_with('.') {
                    continue;
                }
                let n: u32 = name.parse().map_err(|_| {
                    Error::corrupt(
                        wd.imports().display().to_string(),
                        format!("bad import {name:?}"),
                    )
                })?;
                imports.push(wd.import(n));
            }
            (r, imports)
        } else {
            return Err(Error::not_found(ObjectKind::Image, format!("{s}/{id}")));
        };
        let mut chain = vec![chain_top.clone()];
        while let Some(p) = chain_top.parent.clone() {
            chain_top = self.record(s, &sd, &p)?;
            chain.push(chain_top.clone());
        }
        chain.reverse();
        let mut owners = Vec::new();
        let mut tocs: Vec<Arc<dyn LayerToc>> = Vec::new();
        let mut layers = Vec::new();
        for r in &chain {
            let dir = sd.image(&r.id);
            let key = format!(
                "{s}/{}@{}",
                r.id,
                r.sum
                    .as_ref()
                    .map_or_else(|| "scratch".to_owned(), ToString::to_string)
            );
            tocs.push(self.layer_toc(key, format!("{s}/{}", r.id), dir.clone()));
            layers.push(dir.layer());
            owners.push(r.id.clone());
        }
        for imp in imports {
            let key = format!("import:{}", imp.dir.display());
            tocs.push(self.layer_toc(key, format!("{s}/{id} import"), imp.clone()));
            layers.push(imp.layer());
            owners.push(id.clone());
        }
        Ok(Stack {
            owners,
            layers: tocs,
            source: Arc::new(LocalSource { layers }),
        })
    }

    fn create_writable_sync(
        &self,
        s: &StoreName,
        parent: &ImageId,
        id: &ImageId,
    ) -> Result<Writable> {
        let sd = self.open_store(s)?;
        let _guard = self.store_lock(&sd)?;
        self.record(s, &sd, parent)?;
        if self.find_record(&sd, id)?.is_some() || self.writable_exists(&sd, id)? {
            return Err(Error::already_exists(
                ObjectKind::Writable,
                format!("{s}/{id}"),
            ));
        }
        let w = sd.writable(id);
        fsx::remove_all(&w.dir)?;
        let staged = sd.staging().join(format!("{id}.{}", fsx::nonce()));
        fsx::mkdir(&staged, false)?;
        let rec = WritableRecord::new(id.clone(), parent.clone());
        fsx::write_new_synced(&staged.join("writable.json"), &record::encode(&rec))?;
        fsx::mkdir(&staged.join("imports"), false)?;
        fsx::sync_dir(&staged)?;
        let pd = sd.image(parent);
        fsx::mkdir(&pd.children(), true)?;
        fsx::write_new_synced(&pd.child(id), b"")?;
        fsx::sync_dir(&pd.children())?;
        std::fs::rename(&staged, &w.dir).at(&w.dir)?;
        fsx::sync_dir(&sd.writables())?;
        fsx::write_new_synced(&w.committed(), b"")?;
        fsx::sync_dir(&w.dir)?;
        Ok(Writable {
            id: id.clone(),
            store: s.clone(),
            parent: parent.clone(),
            imports: 0,
        })
    }

    fn get_writable_sync(&self, s: &StoreName, id: &ImageId) -> Result<Writable> {
        let sd = self.open_store(s)?;
        let rec = self.writable_record(s, &sd, id)?;
        let imports = fsx::list_names(&sd.writable(id).imports())?
            .iter()
            .filter(|n| !n.starts_with('.'))
            .count() as u32;
        Ok(Writable {
            id: id.clone(),
            store: s.clone(),
            parent: rec.parent,
            imports,
        })
    }

    fn delete_writable_sync(&self, s: &StoreName, sd: &StoreDir, id: &ImageId) -> Result<()> {
        let _guard = self.store_lock(sd)?;
        let rec = self.writable_record(s, sd, id)?;
        let w = sd.writable(id);
        fsx::remove_file(&w.committed())?;
        fsx::sync_dir(&w.dir)?;
        let pd = sd.image(&rec.parent);
        fsx::remove_file(&pd.child(id))?;
        fsx::sync_dir(&pd.children())?;
        let doomed = sd.trash().join(format!("{id}.{}", fsx::nonce()));
        std::fs::rename(&w.dir, &doomed).at(&w.dir)?;
        fsx::sync_dir(&sd.writables())?;
        fsx::remove_all(&doomed)
    }
}

impl LocalStore {
    /// The stack of an image or writable layer.
    pub(crate) async fn stack(&self, s: &StoreName, id: &ImageId) -> Result<Stack> {
        let (s, id) = (s.clone(), id.clone());
        self.run(move |i| i.stack_sync(&s, &id)).await
    }

    async fn store_dir_checked(&self, s: &StoreName) -> Result<StoreDir> {
        let s = s.clone();
        self.run(move |i| i.open_store(&s)).await
    }
}

#[async_trait]
impl Importer for LocalStore {
    async fn create_writable(&self, parent: &Image, id: &ImageId) -> Result<Writable> {
        check_write_id(id)?;
        let (s, p, id) = (parent.store.clone(), parent.id.clone(), id.clone());
        self.run(move |i| i.create_writable_sync(&s, &p, &id)).await
    }

    async fn get_writable(&self, store: &StoreName, id: &ImageId) -> Result<Writable> {
        let (s, id) = (store.clone(), id.clone());
        self.run(move |i| i.get_writable_sync(&s, &id)).await
    }

    async fn import(
        &self,
        store: &StoreName,
        id: &ImageId,
        filter: &FilterSpec,
        tar: ByteStream,
    ) -> Result<ImportSummary> {
        let sd = self.store_dir_checked(store).await?;
        let _lock = lock::lock_async(sd.lock_file(), lock::range_for(id.as_str())).await?;
        self.get_writable(store, id).await?;
        let lower: Arc<dyn LowerView> = Arc::new(self.stack(store, id).await?.chain());
        let limits = IngestLimits::default();
        let filtered = filter_tar(tar, filter.clone(), limits.tar);
        let mut staging = StagingDir::create(&sd, id)?;
        let staged = staging.layout();
        let mut sink = FileSink::create(BACKEND, staged.layer())?;
        let ingested = ingest(filtered, None, &mut sink, lower, limits).await?;
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

    async fn commit_writable(
        &self,
        store: &StoreName,
        id: &ImageId,
        new_id: &ImageId,
        meta: Metadata,
    ) -> Result<Image> {
        check_write_id(new_id)?;
        validate_metadata(&meta)?;
        let sd = self.store_dir_checked(store).await?;
        let _lock = lock::lock_async(sd.lock_file(), lock::range_for(id.as_str())).await?;
        let w = self.get_writable(store, id).await?;
        let stack = self.stack(store, id).await?;
        let diff = stack.export_since(Some(&w.parent), id, &FilterSpec::all(), true)?;
        let image = self
            .write_layer(store, &w.parent, new_id, meta, None, diff)
            .await?;
        let (s, id) = (store.clone(), id.clone());
        self.run(move |i| i.delete_writable_sync(&s, &sd, &id))
            .await?;
        Ok(image)
    }

    async fn delete_writable(&self, store: &StoreName, id: &ImageId) -> Result<()> {
        let sd = self.store_dir_checked(store).await?;
        let _lock = lock::lock_async(sd.lock_file(), lock::range_for(id.as_str())).await?;
        let (s, id) = (store.clone(), id.clone());
        self.run(move |i| i.delete_writable_sync(&s, &sd, &id))
            .await
    }
}

#[async_trait]
impl Exporter for LocalStore {
    async fn export(
        &self,
        store: &StoreName,
        id: &ImageId,
        ancestor: Option<&ImageId>,
        filter: &FilterSpec,
        data: bool,
    ) -> Result<ByteStream> {
        let stack = self.stack(store, id).await?;
        stack.export_since(ancestor, id, filter, data)
    }

    async fn export_vmdk(&self, _store: &StoreName, _id: &ImageId) -> Result<ByteStream> {
        Err(Error::Unsupported {
            operation: "VMDK export (images are kept as layer tars, not disks)",
            backend: BACKEND,
        })
    }

    async fn export_raw(&self, store: &StoreName, id: &ImageId) -> Result<ByteStream> {
        let (s, id) = (store.clone(), id.clone());
        let path = self
            .run(move |i| {
                let sd = i.open_store(&s)?;
                i.record(&s, &sd, &id)?;
                Ok(sd.image(&id).layer())
            })
            .await?;
        let f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| Error::io(BACKEND, &path, e))?;
        Ok(Box::pin(f))
    }

    async fn checkout(
        &self,
        store: &StoreName,
        id: &ImageId,
        dest: &Path,
        options: &CheckoutOptions,
    ) -> Result<CheckoutReport> {
        let stack = self.stack(store, id).await?;
        stack.checkout(dest.to_owned(), options.clone()).await
    }
}
