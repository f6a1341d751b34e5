//! The datastore: where image folders live. Everything the backend does to a datastore goes
//! through the [`Datastore`] trait (the catalogue's [`Storage`] and the disks' extras), so a remote datastore (vSphere's `/folder` HTTP plus file
//! manager calls) can replace the local directory without touching the layer logic: layers
//! are always built in a local work directory and then put in place as whole files.
//!
//! Every method blocks; call them from the blocking pool.

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use imagestore_core::backend::storage::{
    MAX_FILE_NAME, Stat, Storage, StorageLock as DsLock, StoragePath as DsPath, temp_name,
};
use imagestore_core::{JoinedImage, Result};

use crate::vmdk::ReadAt;

/// A datastore: the [`Storage`] the shared catalogue runs on, plus what disks need: whole
/// files put in place, random access for reading chains, and local folders to build in.
///
/// [`Datastore::put_file`] keeps [`Storage`]'s contract: durable when it returns, and a
/// reader sees either the old file or the whole new one.
pub trait Datastore: Storage {
    /// Puts a file built in the work directory at `path`, replacing any old one; the local file
    /// is consumed. Returns its size.
    fn put_file(&self, local: &Path, path: &DsPath) -> Result<u64>;

    /// Random access to the file at `path` (the disks of a chain are read this way).
    fn open(&self, path: &DsPath) -> Result<Arc<dyn ReadAt>>;

    /// A local directory for building layers (each new disk while it is written).
    fn work_dir(&self) -> PathBuf;

    /// A local directory where finished files (disks) are written before
    /// [`Datastore::put_file`] puts them in place: on the datastore's own file system where it
    /// has one, so that the put is a rename; the work directory otherwise.
    fn outbox_dir(&self) -> PathBuf {
        self.work_dir()
    }

    /// VIC's ImageJoin on the datastore's side: attaches to the virtual machine named `vm` a
    /// new disk at `child`, a child of the disk at `parent`. `Unsupported` where the
    /// datastore runs no virtual machines; `NotFound` for an unknown VM.
    fn attach_child_disk(&self, vm: &str, parent: &DsPath, child: &DsPath) -> Result<JoinedImage>;

    /// Creates at `path` the flat base disk under a native format's chain: all zero, thin,
    /// `capacity_kib` KiB (`vmfs`: a descriptor and `<name>-flat.vmdk`), and returns its
    /// CID. A server makes it itself; by default it is built in the outbox (a sparse file as
    /// large as the disk) and put in place, flat file first.
    fn create_base_disk(&self, path: &DsPath, capacity_kib: u64) -> Result<u32> {
        let work = crate::build::WorkDir::create(&self.outbox_dir())?;
        let local = work.path().join(path.name());
        let cid = crate::build::build_base(&local, capacity_kib)?;
        let flat = crate::disk::flat_descriptor(0, path.name(), 0).extent_file;
        self.put_file(&work.path().join(&flat), &path.parent().child(&flat))?;
        self.put_file(&local, path)?;
        Ok(cid)
    }
}
