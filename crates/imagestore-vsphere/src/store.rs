//! [`DiskStore`], the disk backends' handle, and [`DiskLayers`], how they keep layers: the
//! shared catalogue ([`Catalog`]) on any [`Datastore`] (a local folder for `vmdk://`,
//! vSphere for `vsphere://`) in VIC's layout, with each layer a delta disk beside its TOC
//! and VIC's metadata files.
//!
//! The handle's streaming hooks (writing an image, importing into a writable layer) are in
//! `write.rs`; stacks, imports and the VMDK export in `content.rs`.

use std::sync::Arc;

use tracing::info;

use imagestore_core::backend::blocking::run_blocking;
use imagestore_core::backend::catalog::{
    Catalog, ImagePaths, Representation, StorePaths, WritablePaths,
};
use imagestore_core::backend::storage::Storage;
use imagestore_core::layer::chain::ChainView;
use imagestore_core::layer::ingest::{IngestLimits, read_toc};
use imagestore_core::layer::scratch::skeleton_tar;
use imagestore_core::layer::stack::Stack;
use imagestore_core::{ByteStream, Error, ImageId, Metadata, Result, StoreName};

use crate::build::{WorkDir, base_name, build_scratch};
use crate::config::Options;
use crate::datastore::{Datastore, DsPath};
use crate::error::in_backend;
use crate::layout;
use crate::vmdk::format::DiskFormat;

/// Longest chain of layers above scratch: each layer is one more delta disk in the chain
/// vSphere follows on every read (`docs/backends.md`).
pub const MAX_CHAIN_DEPTH: u32 = 128;

/// An image store on a datastore, in VIC's layout.
#[derive(Debug, Clone)]
pub struct DiskStore {
    pub(crate) cat: Arc<Catalog<DiskLayers>>,
}

/// How the disk backends keep layers: a delta disk, its TOC and VIC's metadata files in each
/// image folder; a writable layer's disk after each import beside that import's TOC.
#[derive(Debug)]
pub struct DiskLayers {
    pub(crate) ds: Arc<dyn Datastore>,
    pub(crate) options: Options,
}

impl DiskStore {
    /// Opens the backend on `ds`: creates `VIC/` if needed and removes work folders of
    /// builds whose process is gone.
    pub async fn open(ds: Arc<dyn Datastore>, options: Options) -> Result<DiskStore> {
        let storage: Arc<dyn Storage> = ds.clone();
        let cat = Arc::new(Catalog::new(
            storage,
            layout::layout(),
            DiskLayers { ds, options },
        ));
        let store = DiskStore { cat };
        store
            .run(|c| {
                c.storage().mkdir(&layout::vic())?;
                sweep_work(c.rep().ds.as_ref());
                Ok(())
            })
            .await?;
        Ok(store)
    }

    /// The datastore.
    pub fn datastore(&self) -> Arc<dyn Datastore> {
        self.cat.rep().ds.clone()
    }

    /// Runs `attach(parent, child)` under the store lock of `store` with image `id`'s disk and
    /// the path of a new container disk `disk`
    /// (`VIC/<store>/containers/<disk>/<disk>.vmdk`), once the image is known to exist: a
    /// concurrent delete of the image either sees what `attach` made or happens first.
    pub(crate) async fn with_child_disk<T, F>(
        &self,
        store: &StoreName,
        id: &ImageId,
        disk: &ImageId,
        attach: F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&DsPath, &DsPath) -> Result<T> + Send + 'static,
    {
        let (s, id, disk) = (store.clone(), id.clone(), disk.clone());
        self.run(move |cat| {
            let sp = cat.open_store(&s)?;
            let _guard = cat.store_lock(&sp)?;
            cat.record(&s, &sp, &id)?;
            let child = sp
                .dir
                .child("containers")
                .child(disk.as_str())
                .child(&format!("{disk}.vmdk"));
            attach(&image_disk(&sp, &id), &child)
        })
        .await
    }

    /// Runs blocking work on the catalogue, on the blocking pool.
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Catalog<DiskLayers>) -> Result<T> + Send + 'static,
    {
        let scheme = self.cat.scheme();
        run_blocking(scheme, self.cat.clone(), f)
            .await
            .map_err(|e| in_backend(e, scheme))
    }
}

/// Removes the build folders of processes that are gone from the work and outbox
/// directories.
fn sweep_work(ds: &dyn Datastore) {
    for dir in [ds.work_dir(), ds.outbox_dir()] {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if WorkDir::owner_alive(&name) == Some(false) {
                info!(leftover = %name, "removing the work folder of a build that stopped");
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

impl DiskLayers {
    /// Writes an image's metadata, one file per key (VIC's form, see
    /// [`layout::metadata_file`]).
    pub(crate) fn write_metadata(&self, p: &ImagePaths, meta: &Metadata) -> Result<()> {
        self.ds.mkdir(&layout::metadata(p))?;
        for (k, v) in meta {
            let (name, bytes) = layout::metadata_file(k, v);
            self.ds.write(&layout::metadata(p).child(&name), &bytes)?;
        }
        Ok(())
    }

    /// The TOC file `path`.
    pub(crate) fn read_toc(&self, path: &DsPath) -> Result<imagestore_core::layer::toc::Toc> {
        let what = self.ds.describe(path);
        let bytes = self
            .ds
            .read(path)?
            .ok_or_else(|| Error::corrupt(&what, "the TOC is missing"))?;
        imagestore_core::layer::toc::Toc::from_bytes(&bytes, &what)
    }

    /// The scratch image's files: a base disk of the configured capacity holding ext4 with
    /// VIC's skeleton, beside the skeleton's TOC.
    fn scratch_files(&self, p: &ImagePaths) -> Result<u64> {
        let format = self.options.format;
        let name = format!("{}.vmdk", p.id);
        // In a native format, scratch's file system goes into the first delta disk, on a
        // base disk the datastore creates.
        let base = if format.is_native() {
            self.ds.mkdir(&p.dir)?;
            let base = p.dir.child(&base_name(&name));
            Some(self.ds.create_base_disk(&base, self.options.capacity_kib)?)
        } else {
            None
        };
        let work = WorkDir::create(&self.ds.work_dir())?;
        let disk = work.path().join(&name);
        let stats = build_scratch(&disk, &name, self.options.capacity_kib, format, base)?;
        let toc = read_toc(
            &skeleton_tar()?[..],
            &ChainView::new(Vec::new()),
            IngestLimits::default(),
        )?
        .to_bytes()?;
        self.write_metadata(p, &Metadata::new())?;
        self.ds.write(&layout::toc(p), &toc)?;
        self.put_disk(&disk, &layout::disk(p), format)?;
        Ok(stats.bytes + toc.len() as u64)
    }

    /// Puts the disk built at `local` in `format` in place at `dest` (the same file name): a
    /// native format's extent first, then the descriptor that makes it a disk.
    pub(crate) fn put_disk(
        &self,
        local: &std::path::Path,
        dest: &DsPath,
        format: DiskFormat,
    ) -> Result<u64> {
        let mut size = 0;
        if format.is_native() {
            let extent = format.extent_name(dest.name());
            size += self.ds.put_file(
                &local.with_file_name(&extent),
                &dest.parent().child(&extent),
            )?;
        }
        Ok(size + self.ds.put_file(local, dest)?)
    }

    /// Removes the disk at `path` and, in a native `format`, its extent.
    pub(crate) fn remove_disk(&self, path: &DsPath, format: DiskFormat) -> Result<()> {
        self.ds.remove_file(path)?;
        if format.is_native() {
            self.ds
                .remove_file(&path.parent().child(&format.extent_name(path.name())))?;
        }
        Ok(())
    }

    /// The files of `imageMetadata`.
    fn read_metadata(&self, p: &ImagePaths) -> Result<Metadata> {
        let mut out = Metadata::new();
        let dir = layout::metadata(p);
        for name in self.ds.list(&dir)? {
            // Temporary files of a write in progress start with a dot; no key's file does.
            if name.starts_with('.') {
                continue;
            }
            if let Some(bytes) = self.ds.read(&dir.child(&name))?
                && let Some((key, value)) = layout::metadata_entry(&name, bytes)
            {
                out.insert(key, value);
            }
        }
        Ok(out)
    }
}

impl Representation for DiskLayers {
    fn max_chain_depth(&self) -> u32 {
        MAX_CHAIN_DEPTH
    }

    /// A base disk of the configured capacity holding ext4 with VIC's skeleton, beside the
    /// skeleton's TOC.
    fn write_scratch(&self, cat: &Catalog<Self>, p: &ImagePaths) -> Result<u64> {
        self.scratch_files(p)
            .map_err(|e| in_backend(e, cat.scheme()))
    }

    fn locator(&self, p: &ImagePaths) -> DsPath {
        layout::disk(p)
    }

    /// The files of `imageMetadata`.
    fn metadata(&self, _cat: &Catalog<Self>, p: &ImagePaths) -> Result<Option<Metadata>> {
        self.read_metadata(p).map(Some)
    }

    fn import_marker(&self, w: &WritablePaths, n: u32) -> DsPath {
        layout::import_toc(w, n)
    }

    /// Disks of imports that never finished, and disks a later import replaced.
    fn sweep_imports(&self, _cat: &Catalog<Self>, w: &WritablePaths, done: u32) -> Result<usize> {
        let mut removed = 0;
        for f in self.ds.list(&w.dir)? {
            // `<n>.vmdk`, and a native format's extent `<n>-<kind>.vmdk`.
            let Some(n) = f
                .strip_suffix(".vmdk")
                .and_then(|n| n.split('-').next())
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if n + 1 != done {
                self.ds.remove_file(&w.dir.child(&f))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn stack(&self, cat: &Catalog<Self>, s: &StoreName, id: &ImageId) -> Result<Stack> {
        crate::content::stack(cat, s, id).map_err(|e| in_backend(e, cat.scheme()))
    }

    fn raw_layer(&self, cat: &Catalog<Self>, _s: &StoreName, _id: &ImageId) -> Result<ByteStream> {
        Err(Error::Unsupported {
            operation: "raw layer export (layers are kept as delta disks, not as tars)",
            backend: cat.scheme(),
        })
    }
}

/// The paths of image `id` in store `sp`, and its disk.
pub(crate) fn image_disk(sp: &StorePaths, id: &ImageId) -> DsPath {
    layout::disk(&sp.image(id))
}
