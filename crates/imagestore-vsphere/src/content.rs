//! Image contents: the layers of an image for the layer engine, export, checkout, writable
//! layers and import.
//!
//! The engine plans exports, diffs and checkouts from the TOCs kept beside the disks and reads
//! file data from the ext4 inside the image's own disk chain ([`FsContent`]). A writable layer
//! is a delta disk on its parent's disk, like a container's disk: each import is applied to
//! a new version of that disk (`<n>.vmdk`, a child of the parent, holding everything imported
//! so far), and its TOC (`<n>.toc`) is written last, which completes the import.

use std::path::PathBuf;
use std::sync::Arc;

use imagestore_core::layer::chain::{ChainView, LayerToc, MemoryToc};
use imagestore_core::layer::stack::Stack;
use imagestore_core::layer::stream::spawn_producer;
use imagestore_core::layer::toc::Toc;
use imagestore_core::record::{self, ImageRecord, WritableRecord};
use imagestore_core::{ByteStream, Error, ImageId, ObjectKind, Result, StoreName, Writable};

use crate::datastore::DsPath;
use crate::disk::new_cid;
use crate::error::disk_err;
use crate::ext4::LayerData;
use crate::fsread::FsContent;
use crate::layer::{DeltaBuild, WorkDir};
use crate::layout::{self, StorePaths, WritablePaths};
use crate::store::{Inner, image_name};
use crate::vmdk::chain::Chain;
use crate::vmdk::sparse::SparseDisk;
use crate::vmdk::stream::write_stream_optimized;
use crate::write::read_toc_file;

/// The layers of a committed image, scratch first.
#[derive(Debug, Clone)]
pub(crate) struct ImageLayers {
    /// The image ids.
    pub ids: Vec<ImageId>,
    /// Their TOCs.
    pub tocs: Vec<Arc<Toc>>,
}

/// A writable layer's state: its record and the number of completed imports.
struct WritableState {
    record: WritableRecord,
    imports: u32,
}

fn memory_tocs(tocs: &[Arc<Toc>]) -> Vec<Arc<dyn LayerToc>> {
    tocs.iter()
        .map(|t| Arc::new(MemoryToc::new(t.clone())) as Arc<dyn LayerToc>)
        .collect()
}

impl Inner {
    /// The ids and TOCs of the chain ending at image record `top`.
    pub(crate) fn image_layers(&self, s: &StoreName, top: ImageRecord) -> Result<ImageLayers> {
        let sp = StorePaths::new(s);
        let records = self.chain_records(s, &sp, top)?;
        let mut out = ImageLayers {
            ids: Vec::new(),
            tocs: Vec::new(),
        };
        for r in records {
            let key = format!(
                "{s}/{}@{}",
                r.id,
                r.sum
                    .as_ref()
                    .map_or_else(|| "scratch".to_owned(), ToString::to_string)
            );
            let p = sp.image(&r.id);
            let toc = self.tocs.get_or_load(&key, || {
                Ok::<_, Error>(Arc::new(read_toc_file(self.ds.as_ref(), &p)?))
            })?;
            out.tocs.push(toc);
            out.ids.push(r.id);
        }
        Ok(out)
    }

    /// The disk chain of images `ids` (scratch first), plus `extra` disks on top.
    pub(crate) fn open_chain(&self, sp: &StorePaths, ids: &[ImageId]) -> Result<Chain> {
        self.open_disks(ids.iter().map(|id| sp.image(id).disk).collect())
    }

    fn open_disks(&self, paths: Vec<DsPath>) -> Result<Chain> {
        let mut disks = Vec::new();
        for p in &paths {
            let what = self.ds.describe(p);
            let disk = SparseDisk::open(self.ds.open(p)?, &what).map_err(|e| disk_err(&what, e))?;
            disks.push(Arc::new(disk));
        }
        let top = paths
            .last()
            .map(|p| self.ds.describe(p))
            .unwrap_or_default();
        Chain::new(disks).map_err(|e| disk_err(&top, e))
    }

    fn writable_state(
        &self,
        s: &StoreName,
        sp: &StorePaths,
        id: &ImageId,
    ) -> Result<WritableState> {
        let record = self.writable_record(s, sp, id)?;
        let w = sp.writable(id);
        let mut imports = 0;
        while self.ds.stat(&w.toc(imports))?.is_some() {
            imports += 1;
        }
        Ok(WritableState { record, imports })
    }

    /// The engine's stack of an image or writable layer.
    pub(crate) fn stack_sync(&self, s: &StoreName, id: &ImageId) -> Result<Stack> {
        let sp = self.open_store(s)?;
        if let Some(r) = self.find_record(&sp.image(id))? {
            let layers = self.image_layers(s, r)?;
            let chain = self.open_chain(&sp, &layers.ids)?;
            return Ok(Stack {
                owners: layers.ids,
                layers: memory_tocs(&layers.tocs),
                source: Arc::new(FsContent::of_chain(Arc::new(chain), image_name(s, id))),
            });
        }
        let Some(record) = self.find_writable(&sp.writable(id))? else {
            return Err(Error::not_found(ObjectKind::Image, image_name(s, id)));
        };
        let (layers, imports, chain) = self.writable_layers(s, &sp, id, &record)?;
        let mut owners = layers.ids;
        let mut tocs = layers.tocs;
        for t in imports {
            owners.push(id.clone());
            tocs.push(t);
        }
        Ok(Stack {
            owners,
            layers: memory_tocs(&tocs),
            source: Arc::new(FsContent::of_chain(Arc::new(chain), image_name(s, id))),
        })
    }

    /// A writable layer's parent layers, its imports' TOCs, and its disk chain (the parent's
    /// chain plus its current disk, if it has imports).
    fn writable_layers(
        &self,
        s: &StoreName,
        sp: &StorePaths,
        id: &ImageId,
        record: &WritableRecord,
    ) -> Result<(ImageLayers, Vec<Arc<Toc>>, Chain)> {
        let parent = self.record(s, sp, &record.parent)?;
        let layers = self.image_layers(s, parent)?;
        let w = sp.writable(id);
        let state = self.writable_state(s, sp, id)?;
        let mut imports = Vec::new();
        for n in 0..state.imports {
            imports.push(Arc::new(self.read_import_toc(&w, n)?));
        }
        let mut disks: Vec<_> = layers.ids.iter().map(|i| sp.image(i).disk).collect();
        if state.imports > 0 {
            disks.push(w.disk(state.imports - 1));
        }
        let chain = self.open_disks(disks)?;
        Ok((layers, imports, chain))
    }

    fn read_import_toc(&self, w: &WritablePaths, n: u32) -> Result<Toc> {
        let path = w.toc(n);
        let bytes = self
            .ds
            .read(&path)?
            .ok_or_else(|| Error::corrupt(self.ds.describe(&path), "an import TOC vanished"))?;
        Toc::from_bytes(&bytes, &self.ds.describe(&path))
    }

    pub(crate) fn create_writable_sync(
        &self,
        s: &StoreName,
        parent: &ImageId,
        id: &ImageId,
    ) -> Result<Writable> {
        let sp = self.open_store(s)?;
        let _guard = self.store_lock(&sp)?;
        self.record(s, &sp, parent)?;
        if self.find_record(&sp.image(id))?.is_some()
            || self.find_writable(&sp.writable(id))?.is_some()
        {
            return Err(Error::already_exists(
                ObjectKind::Writable,
                image_name(s, id),
            ));
        }
        let w = sp.writable(id);
        self.ds.remove_all(&w.dir)?;
        self.ds.mkdir(&w.dir)?;
        let pp = sp.image(parent);
        self.ds.mkdir(&pp.children())?;
        self.ds.create_new(&pp.child(id), b"")?;
        let rec = WritableRecord::new(id.clone(), parent.clone());
        self.ds.write(&w.record(), &record::encode(&rec))?;
        Ok(Writable {
            id: id.clone(),
            store: s.clone(),
            parent: parent.clone(),
            imports: 0,
        })
    }

    pub(crate) fn get_writable_sync(&self, s: &StoreName, id: &ImageId) -> Result<Writable> {
        let sp = self.open_store(s)?;
        let state = self.writable_state(s, &sp, id)?;
        Ok(Writable {
            id: id.clone(),
            store: s.clone(),
            parent: state.record.parent,
            imports: state.imports,
        })
    }

    pub(crate) fn delete_writable_sync(&self, s: &StoreName, id: &ImageId) -> Result<()> {
        let sp = self.open_store(s)?;
        let _guard = self.store_lock(&sp)?;
        let rec = self.writable_record(s, &sp, id)?;
        let w = sp.writable(id);
        // The record first: from then on the layer is gone, whatever remains is swept.
        self.ds.remove_file(&w.record())?;
        self.ds.remove_file(&sp.image(&rec.parent).child(id))?;
        self.ds.remove_all(&w.dir)
    }

    /// Starts the next disk of writable layer `id` for an import: a new disk over the
    /// layer's parent chain holding everything imported so far, ready for the import's
    /// files to stream into.
    pub(crate) fn start_import(&self, s: &StoreName, id: &ImageId) -> Result<ImportBuild> {
        let sp = self.open_store(s)?;
        let record = self.writable_record(s, &sp, id)?;
        let (layers, imports, chain) = self.writable_layers(s, &sp, id, &record)?;
        let n = imports.len() as u32;
        let w = sp.writable(id);
        let parent_chain = self.open_chain(&sp, &layers.ids)?;
        let mut lower = layers.tocs;
        lower.extend(imports);
        let outbox = WorkDir::create(&self.ds.outbox_dir())?;
        let disk = outbox.path().join(format!("{n}.vmdk"));
        let hint = layout::parent_hint(&w.dir, &sp.image(&record.parent));
        let build = DeltaBuild::start(&chain, &parent_chain, &hint, &disk)?;
        Ok(ImportBuild {
            build,
            outbox,
            disk,
            lower,
            n,
            w,
        })
    }

    /// Finishes an import started by [`Inner::start_import`] whose layer had TOC `toc`: the
    /// new disk replaces the layer's previous one, then the import's TOC is recorded.
    pub(crate) fn finish_import(&self, b: ImportBuild, toc: Toc) -> Result<()> {
        let top = Arc::new(toc);
        b.build.finish(&b.lower, top.clone(), LayerData::Streamed)?;
        self.ds.put_file(&b.disk, &b.w.disk(b.n))?;
        self.ds.write(&b.w.toc(b.n), &top.to_bytes()?)?;
        if b.n > 0 {
            self.ds.remove_file(&b.w.disk(b.n - 1))?;
        }
        drop(b.outbox);
        Ok(())
    }
}

/// An import into a writable layer under way ([`Inner::start_import`]).
#[derive(Debug)]
pub(crate) struct ImportBuild {
    /// The new disk.
    pub build: DeltaBuild,
    outbox: WorkDir,
    disk: PathBuf,
    lower: Vec<Arc<Toc>>,
    n: u32,
    w: WritablePaths,
}

impl Inner {
    /// Image `id` flattened into one streamOptimized disk, produced as it is read.
    pub(crate) fn export_vmdk_sync(&self, s: &StoreName, id: &ImageId) -> Result<ByteStream> {
        let sp = self.open_store(s)?;
        let r = self.record(s, &sp, id)?;
        let layers = self.image_layers(s, r)?;
        let chain = self.open_chain(&sp, &layers.ids)?;
        let name = format!("{id}.vmdk");
        Ok(spawn_producer(move |w| {
            write_stream_optimized(&chain, &name, new_cid(), w)
                .map(|_| ())
                .map_err(|e| disk_err(&name, e))
        }))
    }
}

/// A [`ChainView`] of TOCs, for checks.
pub(crate) fn view_of(tocs: &[Arc<Toc>]) -> ChainView {
    ChainView::new(memory_tocs(tocs))
}
