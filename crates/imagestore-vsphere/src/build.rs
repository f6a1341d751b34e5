//! Building the disks of a chain in a local folder: the scratch base disk, and one delta disk
//! per layer. The ext4 writer ([`crate::ext4`]) works on the new disk itself, over its parent
//! chain ([`crate::vmdk::overlay`]): blocks it reads come from the chain's grains, blocks it
//! writes go into the new disk's, and the parent disks are only read. Before the disk is
//! handed on, every path the layer names is read back through the new chain
//! ([`crate::verify`]).

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tracing::debug;

use imagestore_core::Result;
use imagestore_core::layer::toc::Toc;

use crate::disk::{self, DiskStats, descriptor, flat_descriptor, new_cid};
use crate::error::IoContext;
use crate::ext4::{self, ApplyStats, LayerData};
use crate::fsread::FsContent;
use crate::vmdk::SECTOR;
use crate::vmdk::chain::Chain;
use crate::vmdk::cowd::CowdWriter;
use crate::vmdk::descriptor::Descriptor;
use crate::vmdk::format::DiskFormat;
use crate::vmdk::overlay::Overlay;
use crate::vmdk::sesparse::SeSparseWriter;
use crate::vmdk::sparse::SparseDisk;
use crate::vmdk::writer::{GrainWriter, SparseWriter};

/// VIC's default scratch capacity: 8,000,000 KiB.
pub const DEFAULT_CAPACITY_KIB: u64 = 8_000_000;

/// Writes the scratch disk at `out` (stored as `file_name`): a thin disk of `capacity_kib`
/// KiB holding ext4 labelled `containerfs` with VIC's skeleton, made in process. In
/// monolithicSparse that is a base disk; in a native format it is the first delta disk on
/// the flat base disk beside it named [`base_name`]`(file_name)`, whose CID is `base` (all
/// zero: nothing of it is read).
pub fn build_scratch(
    out: &Path,
    file_name: &str,
    capacity_kib: u64,
    format: DiskFormat,
    base: Option<u32>,
) -> Result<DiskStats> {
    let size = capacity_kib * 1024;
    let cid = new_cid();
    let hint = base_name(file_name);
    let parent = match (format.is_native(), base) {
        (true, Some(c)) => Some((c, hint.as_str())),
        (false, None) => None,
        _ => {
            return Err(imagestore_core::Error::invalid(format!(
                "scratch disk {file_name}: a {format} scratch disk {} a base disk",
                if format.is_native() {
                    "needs"
                } else {
                    "cannot have"
                }
            )));
        }
    };
    let d = descriptor(format, size / SECTOR, file_name, cid, parent);
    let w = new_disk(out, &d, format)?;
    let overlay = Overlay::boxed(None, w, size).at(out)?;
    let mut overlay = ext4::make_scratch(overlay)?;
    let grains = overlay.grains().at(out)? as u64;
    let (_, bytes) = overlay.finish().at(out)?;
    Ok(DiskStats {
        cid,
        grains,
        bytes: bytes + descriptor_bytes(&d, format),
    })
}

/// The file name of the base disk under the scratch disk `file_name` in a native format:
/// `<stem>-base.vmdk`, in the same folder.
pub fn base_name(file_name: &str) -> String {
    let stem = file_name.strip_suffix(".vmdk").unwrap_or(file_name);
    format!("{stem}-base.vmdk")
}

/// Writes at `out` the flat base disk a server creates for a thin disk of `capacity_kib`
/// KiB (`vmfs`: a descriptor and `<stem>-flat.vmdk`, a sparse file all zero), for a local
/// datastore, where no server makes it. Returns the descriptor's CID.
pub fn build_base(out: &Path, capacity_kib: u64) -> Result<u32> {
    let name = file_name_of(out);
    let cid = new_cid();
    let d = flat_descriptor(capacity_kib * 1024 / SECTOR, &name, cid);
    let flat = out.with_file_name(&d.extent_file);
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&flat)
        .at(&flat)?;
    f.set_len(capacity_kib * 1024).at(&flat)?;
    write_new(out, d.to_text().as_bytes())?;
    Ok(cid)
}

/// Bytes of a native disk's descriptor file (0 for monolithicSparse: it is in the disk).
fn descriptor_bytes(d: &Descriptor, format: DiskFormat) -> u64 {
    if format.is_native() {
        d.to_text().len() as u64
    } else {
        0
    }
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .at(path)?;
    f.write_all(bytes).at(path)
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
/// `top_data` says where the layer's file data is (see [`ext4::apply`]); the disk is
/// written in its parent's format.
pub fn build_layer(
    parent: &Path,
    parent_hint: &str,
    out: &Path,
    lower: &[Arc<Toc>],
    top: Arc<Toc>,
    top_data: LayerData<'_>,
) -> Result<LayerStats> {
    let chain = disk::open_chain(parent).at(parent)?;
    DeltaBuild::start(&chain, &chain, parent_hint, out)?.finish(lower, top, top_data)
}

/// A delta disk being built: created at `out` over its parent chain with the filesystem open
/// on it ([`DeltaBuild::start`]); the layer's files may stream into it while the layer is
/// ingested ([`DeltaBuild::tap`]); [`DeltaBuild::finish`] applies the layer, writes the disk
/// out and reads it back. Dropped unfinished, it leaves a partial file at `out` for the
/// caller's work folder to remove.
#[derive(Debug)]
pub struct DeltaBuild {
    out: PathBuf,
    cid: u32,
    format: DiskFormat,
    descriptor_bytes: u64,
    base: Vec<Arc<SparseDisk>>,
    source: FsContent,
    stream: ext4::Stream,
    started: Instant,
}

impl DeltaBuild {
    /// Starts the disk at `out` holding the contents of `source`, as a delta on the top of
    /// `base` (named `parent_hint`): `source` is `base`, or `base` with more disks on top
    /// (earlier imports into a writable layer) whose grains the new disk takes. The disk is
    /// written in the format of `base`'s top disk (a native format's extent goes beside
    /// `out`).
    pub fn start(
        source: &Chain,
        base: &Chain,
        parent_hint: &str,
        out: &Path,
    ) -> Result<DeltaBuild> {
        let started = Instant::now();
        let format = base.delta_format().at(out)?;
        let file_name = file_name_of(out);
        let cid = new_cid();
        let d = descriptor(
            format,
            base.capacity(),
            &file_name,
            cid,
            Some((base.top_cid(), parent_hint)),
        );
        let w = new_disk(out, &d, format)?;
        let base_disks = base.disks().to_vec();
        let lower_chain = Arc::new(Chain::new(base_disks.clone()).at(out)?);
        let mut overlay = Overlay::boxed(Some(lower_chain), w, base.size_bytes()).at(out)?;
        overlay.seed(source, base_disks.len()).at(out)?;
        let source = FsContent::of_chain(
            Arc::new(Chain::new(source.disks().to_vec()).at(out)?),
            out.display().to_string(),
        );
        let fs = ext4::fs::Fs::open(overlay)?;
        Ok(DeltaBuild {
            out: out.to_path_buf(),
            cid,
            format,
            descriptor_bytes: descriptor_bytes(&d, format),
            base: base_disks,
            source,
            stream: ext4::Stream::new(fs),
            started,
        })
    }

    /// The format the disk is written in.
    pub fn format(&self) -> DiskFormat {
        self.format
    }

    /// A tap writing each regular file of the layer being ingested straight into the
    /// filesystem; [`DeltaBuild::finish`] then takes them with [`LayerData::Streamed`].
    pub fn tap(&self) -> Box<dyn imagestore_core::layer::ingest::FileTap> {
        Box::new(self.stream.tap())
    }

    /// Applies layer `top` over `lower` (the TOCs below it, lowest first, scratch's skeleton
    /// not included), writes the disk out, and reads every path `top` names back through
    /// the chain with the new disk on top.
    pub fn finish(
        self,
        lower: &[Arc<Toc>],
        top: Arc<Toc>,
        top_data: LayerData<'_>,
    ) -> Result<LayerStats> {
        let out = self.out;
        let mut view = vec![Arc::new(ext4::skeleton())];
        view.extend(lower.iter().cloned());
        let (mut fs, streamed) = self.stream.into_parts()?;
        let top_data = match top_data {
            LayerData::Streamed => LayerData::Files(&streamed),
            other => other,
        };
        let applied = ext4::apply(&mut fs, &view, top.clone(), top_data, Some(&self.source))?;
        let apply = applied.stats;
        let mut overlay = fs.close(false)?;
        let applied_at = self.started.elapsed();
        let grains = overlay.grains().at(&out)? as u64;
        let (file, bytes) = overlay.finish_unsynced().at(&out)?;
        let disk = DiskStats {
            cid: self.cid,
            grains,
            bytes: bytes + self.descriptor_bytes,
        };
        let file = Arc::new(file);
        let new_top = if self.format.is_native() {
            disk::open_disk(&out).at(&out)?
        } else {
            SparseDisk::open(file.clone(), &out.display().to_string()).at(&out)?
        };
        let mut disks = self.base;
        disks.push(Arc::new(new_top));
        let chain = Arc::new(Chain::new(disks).at(&out)?);
        // The disk goes to stable storage while it is read back (from the page cache).
        let synced = std::thread::scope(|scope| {
            let sync = scope.spawn(|| file.sync_all());
            let checked = crate::verify::check_applied(
                &FsContent::of_chain(chain, out.display().to_string()),
                &view,
                &top,
                &applied.inodes,
            );
            let synced = sync
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the sync thread panicked")));
            checked.and_then(|_| synced.at(&out))
        });
        synced?;
        debug!(
            disk = %out.display(),
            grains = disk.grains,
            inodes = apply.inodes,
            directories = apply.directories,
            apply_ms = applied_at.as_millis(),
            check_and_sync_ms = (self.started.elapsed() - applied_at).as_millis(),
            "built a delta disk"
        );
        Ok(LayerStats { disk, apply })
    }
}

/// Creates a fresh disk at `out` with descriptor `d` in `format`, ready for grains: one
/// hosted sparse file, or a descriptor file at `out` and a fresh extent beside it.
pub fn new_disk(out: &Path, d: &Descriptor, format: DiskFormat) -> Result<Box<dyn GrainWriter>> {
    let fresh = |path: &Path| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .at(path)
    };
    match format {
        DiskFormat::MonolithicSparse => {
            let f = fresh(out)?;
            Ok(Box::new(
                SparseWriter::create(f, d, &out.display().to_string()).at(out)?,
            ))
        }
        DiskFormat::VmfsSparse | DiskFormat::SeSparse => {
            let extent = out.with_file_name(&d.extent_file);
            let f = fresh(&extent)?;
            let name = extent.display().to_string();
            let w: Box<dyn GrainWriter> = if format == DiskFormat::VmfsSparse {
                Box::new(CowdWriter::create(f, d.capacity, &name).at(&extent)?)
            } else {
                Box::new(SeSparseWriter::create(f, d.capacity, &name).at(&extent)?)
            };
            write_new(out, d.to_text().as_bytes())?;
            Ok(w)
        }
    }
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
