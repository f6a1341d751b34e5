//! Building the disks of a chain in a local folder: the scratch base disk, and one delta disk
//! per layer. Each build works on a sparse raw image in a work folder (the parent chain's
//! contents), changes it with [`crate::ext4`], and keeps only the grains that changed
//! ([`crate::disk::delta_from_raw`]); the parent disks are only read.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use imagestore_core::Result;
use imagestore_core::layer::export::{LayerReader, LayerSource};
use imagestore_core::layer::toc::Toc;

use crate::disk::{self, DiskStats};
use crate::error::IoContext;
use crate::ext4::{self, ApplyStats};
use crate::vmdk::chain::Chain;

/// VIC's default scratch capacity: 8,000,000 KiB.
pub const DEFAULT_CAPACITY_KIB: u64 = 8_000_000;

/// Writes the scratch disk at `out` (stored as `file_name`): a thin base disk of
/// `capacity_kib` KiB holding ext4 labelled `containerfs` with VIC's skeleton.
pub fn build_scratch(
    out: &Path,
    file_name: &str,
    capacity_kib: u64,
    work: &Path,
) -> Result<DiskStats> {
    let dir = tempfile_dir(work)?;
    let raw = dir.join("scratch.raw");
    ext4::make_scratch(&raw, capacity_kib * 1024, &dir)?;
    let stats = disk::base_from_raw(&raw, out, file_name).at(out)?;
    let _ = fs::remove_dir_all(&dir);
    Ok(stats)
}

/// What building a layer disk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerStats {
    /// The new disk.
    pub disk: DiskStats,
    /// The apply.
    pub apply: ApplyStats,
}

/// Opens real layer `i` as view layer `i + 1` (view layer 0 is the skeleton).
struct Shifted<'a>(&'a dyn LayerSource);

impl LayerSource for Shifted<'_> {
    fn open(&self, index: usize) -> Result<Box<dyn LayerReader>> {
        match index.checked_sub(1) {
            Some(i) => self.0.open(i),
            None => Err(imagestore_core::Error::invalid(
                "the skeleton has no file data",
            )),
        }
    }
}

/// Writes the delta disk of layer `top` at `out` (its file name goes in the descriptor), a
/// child of the disk `parent` (named `parent_hint` relative to `out`'s folder). `lower` are
/// the TOCs of the layers the parent holds, lowest first (scratch's skeleton not included);
/// `source` opens the data of `lower` followed by `top` by index.
pub fn build_layer(
    parent: &Path,
    parent_hint: &str,
    out: &Path,
    lower: &[Arc<Toc>],
    top: Arc<Toc>,
    source: &dyn LayerSource,
    work: &Path,
) -> Result<LayerStats> {
    let chain = disk::open_chain(parent).at(parent)?;
    build_layer_on(&chain, parent_hint, out, lower, top, source, work)
}

/// [`build_layer`] on an opened parent chain.
pub fn build_layer_on(
    chain: &Chain,
    parent_hint: &str,
    out: &Path,
    lower: &[Arc<Toc>],
    top: Arc<Toc>,
    source: &dyn LayerSource,
    work: &Path,
) -> Result<LayerStats> {
    let file_name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = tempfile_dir(work)?;
    let raw = dir.join("layer.raw");
    let r = (|| {
        disk::chain_to_raw(chain, &raw).at(&raw)?;
        let mut view = vec![Arc::new(ext4::skeleton())];
        view.extend(lower.iter().cloned());
        let apply = ext4::apply(&raw, &view, top, &Shifted(source), &dir)?;
        let disk = disk::delta_from_raw(chain, &raw, out, &file_name, parent_hint).at(out)?;
        Ok(LayerStats { disk, apply })
    })();
    let _ = fs::remove_dir_all(&dir);
    r
}

/// A fresh folder in `work`.
pub fn tempfile_dir(work: &Path) -> Result<std::path::PathBuf> {
    fs::create_dir_all(work).at(work)?;
    let d = work.join(format!("build-{:016x}", rand::random::<u64>()));
    fs::create_dir(&d).at(&d)?;
    Ok(d)
}
