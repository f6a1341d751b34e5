//! Image contents: the layers of an image for the layer engine, export, checkout, writable
//! layers' imports and the VMDK export.
//!
//! The engine plans exports, diffs and checkouts from the TOCs kept beside the disks and reads
//! file data from the ext4 inside the image's own disk chain ([`FsContent`]). A writable layer
//! is a delta disk on its parent's disk, like a container's disk: each import is applied to
//! a new version of that disk (`<n>.vmdk`, a child of the parent, holding everything imported
//! so far), and its TOC (`<n>.toc`) is written last, which completes the import.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use imagestore_core::backend::catalog::{Catalog, StorePaths, WritablePaths};
use imagestore_core::backend::record::{ImageRecord, WritableRecord};
use imagestore_core::layer::chain::{ChainView, LayerToc, MemoryToc};
use imagestore_core::layer::stack::Stack;
use imagestore_core::layer::stream::spawn_producer;
use imagestore_core::layer::toc::Toc;
use imagestore_core::{ByteStream, Error, ImageId, ObjectKind, Result, StoreName};

use crate::build::{DeltaBuild, WorkDir};
use crate::datastore::DsPath;
use crate::disk::new_cid;
use crate::error::{disk_err, in_backend};
use crate::ext4::LayerData;
use crate::fsread::FsContent;
use crate::layout;
use crate::store::{DiskLayers, DiskStore, image_disk};
use crate::vmdk::chain::Chain;
use crate::vmdk::sparse::SparseDisk;
use crate::vmdk::stream::write_stream_optimized;

/// The layers of a committed image, scratch first.
#[derive(Debug, Clone)]
pub(crate) struct ImageLayers {
    /// The image ids.
    pub ids: Vec<ImageId>,
    /// Their TOCs.
    pub tocs: Vec<Arc<Toc>>,
}

fn memory_tocs(tocs: &[Arc<Toc>]) -> Vec<Arc<dyn LayerToc>> {
    tocs.iter()
        .map(|t| Arc::new(MemoryToc::new(t.clone())) as Arc<dyn LayerToc>)
        .collect()
}

/// A [`ChainView`] of TOCs, for checks.
pub(crate) fn view_of(tocs: &[Arc<Toc>]) -> ChainView {
    ChainView::new(memory_tocs(tocs))
}

/// The ids and TOCs of the chain ending at image record `top`.
pub(crate) fn image_layers(
    cat: &Catalog<DiskLayers>,
    s: &StoreName,
    top: ImageRecord,
) -> Result<ImageLayers> {
    let sp = cat.store_paths(s);
    let mut out = ImageLayers {
        ids: Vec::new(),
        tocs: Vec::new(),
    };
    for r in cat.chain(s, &sp, top)? {
        let key = Catalog::<DiskLayers>::toc_key(s, &r);
        let path = layout::toc(&sp.image(&r.id));
        let toc = cat.toc_cache().get_or_load(&key, || {
            Ok::<_, Error>(Arc::new(cat.rep().read_toc(&path)?))
        })?;
        out.tocs.push(toc);
        out.ids.push(r.id);
    }
    Ok(out)
}

/// The disk chain of images `ids` (scratch first).
pub(crate) fn open_chain(rep: &DiskLayers, sp: &StorePaths, ids: &[ImageId]) -> Result<Chain> {
    open_disks(rep, ids.iter().map(|id| image_disk(sp, id)).collect())
}

/// Opens the disk at `p` on the datastore, its extent beside it.
fn open_disk(rep: &DiskLayers, p: &DsPath) -> Result<SparseDisk> {
    let what = rep.ds.describe(p);
    let dir = p.parent();
    let extent = |name: &str| {
        rep.ds
            .open(&dir.child(name))
            .map_err(|e| std::io::Error::other(e.to_string()))
    };
    SparseDisk::open_with(rep.ds.open(p)?, &what, &extent).map_err(|e| disk_err(&what, e))
}

/// The chain of the disks at `paths` (base first), below them the base disk the first one
/// names (in a native format, scratch's disk is a delta on a flat base disk beside it).
fn open_disks(rep: &DiskLayers, paths: Vec<DsPath>) -> Result<Chain> {
    let mut disks = Vec::new();
    for p in &paths {
        disks.push(Arc::new(open_disk(rep, p)?));
    }
    if let (Some(first), Some(first_path)) = (disks.first(), paths.first())
        && first.descriptor.parent_cid != crate::vmdk::NO_PARENT_CID
    {
        let what = rep.ds.describe(first_path);
        let hint = first
            .descriptor
            .parent_hint
            .as_deref()
            .filter(|h| !h.is_empty() && !h.contains('/') && *h != "..")
            .ok_or_else(|| {
                disk_err(
                    &what,
                    "the lowest disk of the image names a parent outside its folder",
                )
            })?;
        let base = open_disk(rep, &first_path.parent().child(hint))?;
        if base.descriptor.parent_cid != crate::vmdk::NO_PARENT_CID {
            return Err(disk_err(&what, "the base disk below scratch has a parent"));
        }
        disks.insert(0, Arc::new(base));
    }
    let top = paths.last().map(|p| rep.ds.describe(p)).unwrap_or_default();
    Chain::new(disks).map_err(|e| disk_err(&top, e))
}

/// The engine's stack of an image or writable layer.
pub(crate) fn stack(cat: &Catalog<DiskLayers>, s: &StoreName, id: &ImageId) -> Result<Stack> {
    let sp = cat.open_store(s)?;
    let name = format!("{s}/{id}");
    if let Some(r) = cat.find_record(&sp.image(id))? {
        let layers = image_layers(cat, s, r)?;
        let chain = open_chain(cat.rep(), &sp, &layers.ids)?;
        return Ok(Stack {
            owners: layers.ids,
            layers: memory_tocs(&layers.tocs),
            source: Arc::new(FsContent::of_chain(Arc::new(chain), name)),
        });
    }
    let Some(record) = cat.find_writable(&sp.writable(id))? else {
        return Err(Error::not_found(ObjectKind::Image, name));
    };
    let (layers, imports, chain) = writable_layers(cat, s, &sp, id, &record)?;
    let mut owners = layers.ids;
    let mut tocs = layers.tocs;
    for t in imports {
        owners.push(id.clone());
        tocs.push(t);
    }
    Ok(Stack {
        owners,
        layers: memory_tocs(&tocs),
        source: Arc::new(FsContent::of_chain(Arc::new(chain), name)),
    })
}

/// A writable layer's parent layers, its imports' TOCs, and its disk chain (the parent's
/// chain plus its current disk, if it has imports).
fn writable_layers(
    cat: &Catalog<DiskLayers>,
    s: &StoreName,
    sp: &StorePaths,
    id: &ImageId,
    record: &WritableRecord,
) -> Result<(ImageLayers, Vec<Arc<Toc>>, Chain)> {
    let parent = cat.record(s, sp, &record.parent)?;
    let layers = image_layers(cat, s, parent)?;
    let w = sp.writable(id);
    let done = cat.imports(&w)?;
    let mut imports = Vec::new();
    for n in 0..done {
        imports.push(Arc::new(cat.rep().read_toc(&layout::import_toc(&w, n))?));
    }
    let mut disks: Vec<_> = layers.ids.iter().map(|i| image_disk(sp, i)).collect();
    if done > 0 {
        disks.push(layout::import_disk(&w, done - 1));
    }
    let chain = open_disks(cat.rep(), disks)?;
    Ok((layers, imports, chain))
}

/// An import into a writable layer under way ([`start_import`]).
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

/// Starts the next disk of writable layer `id` for an import: a new disk over the layer's
/// parent chain holding everything imported so far, ready for the import's files to stream
/// into.
pub(crate) fn start_import(
    cat: &Catalog<DiskLayers>,
    s: &StoreName,
    id: &ImageId,
) -> Result<ImportBuild> {
    let sp = cat.open_store(s)?;
    let record = cat.writable_record(s, &sp, id)?;
    let (layers, imports, chain) = writable_layers(cat, s, &sp, id, &record)?;
    let n = imports.len() as u32;
    let w = sp.writable(id);
    let parent_chain = open_chain(cat.rep(), &sp, &layers.ids)?;
    let mut lower = layers.tocs;
    lower.extend(imports);
    let outbox = WorkDir::create(&cat.rep().ds.outbox_dir())?;
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

/// Finishes an import started by [`start_import`] whose layer had TOC `toc`: the new disk
/// replaces the layer's previous one, then the import's TOC is recorded.
pub(crate) fn finish_import(rep: &DiskLayers, b: ImportBuild, toc: Toc) -> Result<()> {
    let top = Arc::new(toc);
    let format = b.build.format();
    b.build.finish(&b.lower, top.clone(), LayerData::Streamed)?;
    rep.put_disk(&b.disk, &layout::import_disk(&b.w, b.n), format)?;
    rep.ds
        .write(&layout::import_toc(&b.w, b.n), &top.to_bytes()?)?;
    if b.n > 0 {
        rep.remove_disk(&layout::import_disk(&b.w, b.n - 1), format)?;
    }
    drop(b.outbox);
    Ok(())
}

/// What only the disk backends can do: export an image as one VMDK disk.
#[async_trait]
pub trait VmdkExport {
    /// Image `id` flattened into one stream-optimized VMDK disk holding its ext4 filesystem
    /// (the form vSphere imports through OVF), produced as it is read.
    async fn export_vmdk(&self, store: &StoreName, id: &ImageId) -> Result<ByteStream>;
}

#[async_trait]
impl VmdkExport for DiskStore {
    async fn export_vmdk(&self, store: &StoreName, id: &ImageId) -> Result<ByteStream> {
        let (s, id) = (store.clone(), id.clone());
        self.run(move |cat| {
            let sp = cat.open_store(&s)?;
            let r = cat.record(&s, &sp, &id)?;
            let layers = image_layers(cat, &s, r)?;
            let chain = open_chain(cat.rep(), &sp, &layers.ids)?;
            let (name, scheme) = (format!("{id}.vmdk"), cat.scheme());
            Ok(spawn_producer(move |w| {
                write_stream_optimized(&chain, &name, new_cid(), w)
                    .map(|_| ())
                    .map_err(|e| in_backend(disk_err(&name, e), scheme))
            }))
        })
        .await
    }
}
