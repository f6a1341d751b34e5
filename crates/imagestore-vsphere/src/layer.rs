//! Building the disks of a chain in a local folder: the scratch base disk, and one delta disk
//! per layer. Each build works on a sparse raw image in a work folder (the parent chain's
//! contents), changes it with [`crate::ext4`], reads every path the layer names back
//! ([`crate::verify`]), and keeps only the grains that changed
//! ([`crate::disk::delta_from_raw`]); the parent disks are only read.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tracing::debug;

use imagestore_core::Result;
use imagestore_core::layer::toc::Toc;

use crate::disk::{self, DiskStats};
use crate::error::IoContext;
use crate::ext4::{self, ApplyStats, LayerData};
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
    let dir = WorkDir::create(work)?;
    let raw = dir.path().join("scratch.raw");
    ext4::make_scratch(&raw, capacity_kib * 1024, dir.path())?;
    disk::base_from_raw(&raw, out, file_name).at(out)
}

/// What building a layer disk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerStats {
    /// The new disk.
    pub disk: DiskStats,
    /// The apply.
    pub apply: ApplyStats,
}

/// Writes the delta disk of layer `top` at `out` (its file name goes in the descriptor), a
/// child of the disk `parent` (named `parent_hint` relative to `out`'s folder). `lower` are
/// the TOCs of the layers the parent holds, lowest first (scratch's skeleton not included);
/// `top_data` says where the layer's file data is (see [`ext4::apply`]).
pub fn build_layer(
    parent: &Path,
    parent_hint: &str,
    out: &Path,
    lower: &[Arc<Toc>],
    top: Arc<Toc>,
    top_data: LayerData<'_>,
    work: &Path,
) -> Result<LayerStats> {
    let chain = disk::open_chain(parent).at(parent)?;
    build_layer_on(&chain, parent_hint, out, lower, top, top_data, work)
}

/// [`build_layer`] on an opened parent chain.
pub fn build_layer_on(
    chain: &Chain,
    parent_hint: &str,
    out: &Path,
    lower: &[Arc<Toc>],
    top: Arc<Toc>,
    top_data: LayerData<'_>,
    work: &Path,
) -> Result<LayerStats> {
    let file_name = file_name_of(out);
    if top.entries.is_empty() {
        // Nothing changes: an empty delta, without a copy of the chain or a debugfs run.
        let disk = disk::empty_delta(chain, out, &file_name, parent_hint).at(out)?;
        return Ok(LayerStats {
            disk,
            apply: ApplyStats::default(),
        });
    }
    build_delta(chain, chain, parent_hint, out, lower, top, top_data, work)
}

/// Writes the disk of a writable layer after an import at `out`: the contents of `current`
/// (the parent's chain, plus the layer's disk after the earlier imports) with `top` applied,
/// as a delta on the top of `parent` (named `parent_hint`). `lower` are the TOCs below `top`.
#[allow(clippy::too_many_arguments)]
pub fn build_import(
    current: &Chain,
    parent: &Chain,
    parent_hint: &str,
    out: &Path,
    lower: &[Arc<Toc>],
    top: Arc<Toc>,
    top_data: LayerData<'_>,
    work: &Path,
) -> Result<LayerStats> {
    build_delta(
        current,
        parent,
        parent_hint,
        out,
        lower,
        top,
        top_data,
        work,
    )
}

/// The contents of `source` with `top` applied, as a delta disk on the top of `base`.
#[allow(clippy::too_many_arguments)]
fn build_delta(
    source: &Chain,
    base: &Chain,
    parent_hint: &str,
    out: &Path,
    lower: &[Arc<Toc>],
    top: Arc<Toc>,
    top_data: LayerData<'_>,
    work: &Path,
) -> Result<LayerStats> {
    let file_name = file_name_of(out);
    let dir = WorkDir::create(work)?;
    let raw = dir.path().join("layer.raw");
    let started = Instant::now();
    disk::chain_to_raw(source, &raw).at(&raw)?;
    let copied = started.elapsed();
    let apply = if top.entries.is_empty() {
        ApplyStats::default()
    } else {
        let mut view = vec![Arc::new(ext4::skeleton())];
        view.extend(lower.iter().cloned());
        let stats = ext4::apply(&raw, &view, top.clone(), top_data, dir.path())?;
        crate::verify::check_applied(&raw, &view, &top)?;
        stats
    };
    let applied = started.elapsed();
    let disk = disk::delta_from_raw(base, &raw, out, &file_name, parent_hint).at(out)?;
    debug!(
        disk = %out.display(),
        grains = disk.grains,
        commands = apply.commands,
        copy_ms = copied.as_millis(),
        apply_ms = (applied - copied).as_millis(),
        delta_ms = (started.elapsed() - applied).as_millis(),
        "built a delta disk"
    );
    Ok(LayerStats { disk, apply })
}

/// The file name a disk built at `out` records in its descriptor.
fn file_name_of(out: &Path) -> String {
    out.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A fresh folder in a work directory, removed (with everything in it) when dropped. Its
/// name carries the process id, so the sweep can tell the folders of dead processes
/// ([`WorkDir::owner_alive`]).
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    /// Creates `build-<pid>-<random>` in `work` (created if missing).
    pub fn create(work: &Path) -> Result<WorkDir> {
        fs::create_dir_all(work).at(work)?;
        let path = work.join(format!(
            "build-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        fs::create_dir(&path).at(&path)?;
        Ok(WorkDir { path })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// For a folder name in a work directory: `Some(true)` if it is a build folder whose
    /// process still runs, `Some(false)` if its process is gone, `None` if it is not one.
    pub fn owner_alive(name: &str) -> Option<bool> {
        let pid: u32 = name
            .strip_prefix("build-")?
            .split('-')
            .next()?
            .parse()
            .ok()?;
        Some(pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists())
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}
