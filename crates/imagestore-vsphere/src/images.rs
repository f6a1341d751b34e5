//! Writing images onto a datastore: the scratch image of a store, and a layer image on top of
//! a committed parent. Disks are built in the datastore's local work folder from the parent
//! chain read through the [`Datastore`], then committed with [`layout::commit_image`].
//!
//! An image's parent is the parent of its disk (`parentFileNameHint` `../<id>/<id>.vmdk`), as
//! in VIC; there is no other record of it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use imagestore_core::layer::chain::{ChainView, LayerToc, MemoryToc};
use imagestore_core::layer::export::{LayerReader, LayerSource, layer_reader};
use imagestore_core::layer::ingest::{IngestLimits, decompressor, read_toc, sniff};
use imagestore_core::layer::scratch::skeleton_tar;
use imagestore_core::layer::toc::Toc;
use imagestore_core::{Error, Result};

use crate::datastore::Datastore;
use crate::error::{IoContext, disk_err};
use crate::layer::{build_layer_on, build_scratch, tempfile_dir};
use crate::layout::{self, NewImage, SCRATCH, image_paths, parent_hint};
use crate::vmdk::ReadAt;
use crate::vmdk::chain::Chain;
use crate::vmdk::sparse::SparseDisk;

/// Longest chain followed through parent hints.
const MAX_DEPTH: usize = 4096;

/// A [`ReadAt`] as a seekable reader.
struct Cursor {
    inner: Arc<dyn ReadAt>,
    pos: u64,
    len: u64,
}

impl Read for Cursor {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.len.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.inner.read_exact_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Cursor {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let p = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = p.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad seek"))?;
        Ok(self.pos)
    }
}

/// The ids of the chain ending at `id`, base (scratch) first, found through the disks'
/// parent hints.
pub fn chain_ids(ds: &dyn Datastore, store: &str, id: &str) -> Result<Vec<String>> {
    let mut ids = vec![id.to_owned()];
    loop {
        if ids.len() > MAX_DEPTH {
            return Err(disk_err(id, "disk chain too long"));
        }
        let at = ids.last().cloned().unwrap_or_default();
        let p = image_paths(store, &at)?;
        let disk = SparseDisk::open(ds.open(&p.disk)?, &ds.describe(&p.disk))
            .map_err(|e| disk_err(&at, e))?;
        let Some(hint) = disk.descriptor.parent_hint else {
            break;
        };
        let parent = hint
            .strip_prefix("../")
            .and_then(|h| h.split_once('/'))
            .map(|(d, f)| (d.to_owned(), f.to_owned()))
            .filter(|(d, f)| *f == format!("{d}.vmdk"))
            .map(|(d, _)| d)
            .ok_or_else(|| {
                disk_err(
                    &at,
                    format!("parent hint {hint:?} is not ../<id>/<id>.vmdk"),
                )
            })?;
        ids.push(parent);
    }
    ids.reverse();
    Ok(ids)
}

/// Opens the disk chain of `ids` (base first).
pub fn open_chain(ds: &dyn Datastore, store: &str, ids: &[String]) -> Result<Chain> {
    let mut disks = Vec::new();
    for id in ids {
        let p = image_paths(store, id)?;
        let disk = SparseDisk::open(ds.open(&p.disk)?, &ds.describe(&p.disk))
            .map_err(|e| disk_err(id, e))?;
        disks.push(Arc::new(disk));
    }
    Chain::new(disks).map_err(|e| disk_err(ids.last().map_or("", |s| s), e))
}

/// The TOC stored beside image `id`'s disk.
pub fn read_toc_of(ds: &dyn Datastore, store: &str, id: &str) -> Result<Arc<Toc>> {
    let p = image_paths(store, id)?;
    let bytes = ds
        .read(&p.toc)?
        .ok_or_else(|| disk_err(id, "no TOC beside the disk"))?;
    Ok(Arc::new(Toc::from_bytes(&bytes, &ds.describe(&p.toc))?))
}

/// The stored layers of a chain as a [`LayerSource`], by index.
struct StoredLayers<'a> {
    ds: &'a dyn Datastore,
    store: &'a str,
    ids: Vec<String>,
    tocs: Vec<Arc<Toc>>,
    /// A layer not yet on the datastore (the one being written), as the last index.
    pending: Option<(std::path::PathBuf, imagestore_core::layer::toc::Compression)>,
}

impl LayerSource for StoredLayers<'_> {
    fn open(&self, index: usize) -> Result<Box<dyn LayerReader>> {
        if index == self.ids.len()
            && let Some((path, compression)) = &self.pending
        {
            return layer_reader(File::open(path).at(path)?, *compression);
        }
        let id = self
            .ids
            .get(index)
            .ok_or_else(|| Error::invalid(format!("no layer {index}")))?;
        let p = image_paths(self.store, id)?;
        let inner = self.ds.open(&p.layer)?;
        let len = inner.size().map_err(|e| disk_err(id, e))?;
        let compression = self.tocs[index].compression;
        layer_reader(Cursor { inner, pos: 0, len }, compression)
    }
}

/// Creates the store folders and its scratch image: a `capacity_kib` base disk with the
/// skeleton, and the skeleton tar and TOC beside it.
pub fn create_scratch(ds: &dyn Datastore, store: &str, capacity_kib: u64) -> Result<()> {
    layout::create_store_dirs(ds, store)?;
    let work = tempfile_dir(&ds.work_dir())?;
    let r = (|| {
        let disk = work.join("scratch.vmdk");
        build_scratch(&disk, "scratch.vmdk", capacity_kib, &work)?;
        let tar = skeleton_tar()?;
        let toc = read_toc(
            &tar[..],
            &ChainView::new(Vec::new()),
            IngestLimits::default(),
        )?;
        let layer = work.join("scratch.layer");
        std::fs::write(&layer, &tar).at(&layer)?;
        layout::commit_image(
            ds,
            store,
            SCRATCH,
            NewImage {
                disk: &disk,
                layer: Some(&layer),
                toc: &toc.to_bytes()?,
                metadata: &BTreeMap::new(),
            },
        )
    })();
    let _ = std::fs::remove_dir_all(&work);
    r
}

/// Writes image `id` on top of committed image `parent` from the layer tar (plain, gzip or
/// zstd) at `layer`, which is moved onto the datastore.
pub fn write_layer(
    ds: &dyn Datastore,
    store: &str,
    parent: &str,
    id: &str,
    layer: &Path,
    metadata: &BTreeMap<String, Vec<u8>>,
) -> Result<()> {
    if !layout::is_committed(ds, store, parent)? {
        return Err(Error::invalid(format!(
            "parent image {parent} of store {store} does not exist"
        )));
    }
    let ids = chain_ids(ds, store, parent)?;
    let mut tocs = Vec::new();
    for i in &ids {
        tocs.push(read_toc_of(ds, store, i)?);
    }
    let lower = ChainView::new(
        tocs.iter()
            .map(|t| Arc::new(MemoryToc::new(t.clone())) as Arc<dyn LayerToc>)
            .collect(),
    );
    let mut magic = [0u8; 6];
    let n = File::open(layer)
        .and_then(|mut f| f.read(&mut magic))
        .at(layer)?;
    let compression = sniff(&magic[..n])?;
    let input = io::BufReader::new(File::open(layer).at(layer)?);
    let mut toc = read_toc(
        decompressor(compression, input)?,
        &lower,
        IngestLimits::default(),
    )?;
    toc.compression = compression;
    let toc = Arc::new(toc);
    let chain = open_chain(ds, store, &ids)?;
    let work = tempfile_dir(&ds.work_dir())?;
    let r = (|| {
        let disk = work.join(format!("{id}.vmdk"));
        let source = StoredLayers {
            ds,
            store,
            ids: ids.clone(),
            tocs: tocs.clone(),
            pending: Some((layer.to_path_buf(), compression)),
        };
        build_layer_on(
            &chain,
            &parent_hint(parent),
            &disk,
            &tocs,
            toc.clone(),
            &source,
            &work,
        )?;
        layout::commit_image(
            ds,
            store,
            id,
            NewImage {
                disk: &disk,
                layer: Some(layer),
                toc: &toc.to_bytes()?,
                metadata,
            },
        )
    })();
    let _ = std::fs::remove_dir_all(&work);
    r
}

/// Writes image `id` flattened into one stream-optimized disk named `file_name` to `w` (the
/// form vSphere imports); returns the grains and bytes written.
pub fn export_stream_optimized<W: io::Write>(
    ds: &dyn Datastore,
    store: &str,
    id: &str,
    file_name: &str,
    w: W,
) -> Result<crate::vmdk::stream::StreamStats> {
    if !layout::is_committed(ds, store, id)? {
        return Err(Error::invalid(format!(
            "image {id} of store {store} does not exist"
        )));
    }
    let ids = chain_ids(ds, store, id)?;
    let chain = open_chain(ds, store, &ids)?;
    crate::vmdk::stream::write_stream_optimized(&chain, file_name, crate::disk::new_cid(), w)
        .map_err(|e| disk_err(id, e))
}
