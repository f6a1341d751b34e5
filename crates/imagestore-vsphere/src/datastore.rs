//! The datastore: where image folders live. Everything the backend does to a datastore goes
//! through the [`Datastore`] trait, so a remote datastore (vSphere's `/folder` HTTP plus file
//! manager calls) can replace the local directory without touching the layer logic: layers
//! are always built in a local work directory and then put in place as whole files.
//!
//! Every method blocks; call them from the blocking pool.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use imagestore_core::{Error, Result, Url};

use crate::vmdk::ReadAt;

/// A path inside a datastore: `/`-separated segments, each a validated name or a fixed file
/// name of the layout, never empty, `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DsPath(String);

/// The longest file name a datastore holds (VMFS and Linux file systems alike).
pub const MAX_FILE_NAME: usize = 255;

/// The name of a temporary sibling of the file `name`, for writing it whole before a rename:
/// `.<name>.tmp-<random>`, with `name` cut short so the result stays a legal file name.
pub fn temp_name(name: &str) -> String {
    let mut end = name.len().min(64);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!(".{}.tmp-{:016x}", &name[..end], rand::random::<u64>())
}

impl DsPath {
    /// The datastore's root.
    pub fn root() -> DsPath {
        DsPath(String::new())
    }

    /// This path with one more segment. Refuses segments that could leave the path.
    pub fn join(&self, segment: &str) -> Result<DsPath> {
        if segment.is_empty()
            || segment == "."
            || segment == ".."
            || segment.contains(['/', '\0', '\\'])
        {
            return Err(Error::invalid(format!(
                "{segment:?} cannot be a datastore path segment"
            )));
        }
        Ok(if self.0.is_empty() {
            DsPath(segment.to_owned())
        } else {
            DsPath(format!("{}/{segment}", self.0))
        })
    }

    /// [`DsPath::join`] for segments known to be valid (layout constants, validated names).
    /// A segment that is not valid after all is percent-encoded, never dropped.
    pub fn child(&self, segment: &str) -> DsPath {
        self.join(segment)
            .or_else(|_| self.join(&crate::layout::metadata_file_name(segment)))
            .unwrap_or_else(|_| DsPath(format!("{}/_", self.0)))
    }

    /// Parses a `/`-separated path, checking every segment.
    pub fn parse(path: &str) -> Result<DsPath> {
        let mut p = DsPath::root();
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            p = p.join(seg)?;
        }
        Ok(p)
    }

    /// The path without its last segment (the root for the root).
    pub fn parent(&self) -> DsPath {
        match self.0.rsplit_once('/') {
            Some((dir, _)) => DsPath(dir.to_owned()),
            None => DsPath::root(),
        }
    }

    /// The path as a string (`VIC/s1/images/a/a.vmdk`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last segment.
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or_default()
    }
}

impl fmt::Display for DsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What [`Datastore::stat`] tells about a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// A folder.
    pub is_dir: bool,
    /// Size in bytes (files).
    pub size: u64,
}

/// A held datastore lock; released when dropped.
pub struct DsLock(#[allow(dead_code)] Box<dyn Send + Sync>);

impl DsLock {
    /// Wraps whatever keeps the lock held.
    pub fn new(inner: impl Send + Sync + 'static) -> DsLock {
        DsLock(Box::new(inner))
    }
}

impl fmt::Debug for DsLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DsLock")
    }
}

/// File operations on a datastore, as whole files and folders.
///
/// Contract, relied on by the commit protocol (`docs/layouts.md`):
/// * [`Datastore::write`], [`Datastore::create_new`] and [`Datastore::put_file`] are durable
///   when they return, and a reader sees either the old file or the whole new one;
/// * missing files and folders are not errors where the method says so (`stat`, `list`,
///   `remove_*`);
/// * locks exclude every thread and process that uses the same datastore through this trait.
pub trait Datastore: Send + Sync + fmt::Debug {
    /// The URL scheme of the backend on this datastore (`vmdk`, `vsphere`).
    fn scheme(&self) -> &'static str;

    /// The URL of the datastore's root (store URLs are this plus the store name).
    fn base_url(&self) -> Url;

    /// A URL that locates `path` without further context.
    fn url(&self, path: &DsPath) -> Url;

    /// The datastore path a URL of [`Datastore::url`] names; `None` for other URLs.
    fn path_of(&self, url: &Url) -> Option<DsPath>;

    /// True if several processes (and hosts) may use the datastore at once: its locks
    /// exclude them all.
    fn shared_writers(&self) -> bool;

    /// How `path` is named in messages (a local path, or `[ds] folder/file`).
    fn describe(&self, path: &DsPath) -> String;

    /// Users of the disk at `path` that the datastore itself knows of (on vSphere: the
    /// virtual machines with a disk backed by it), as `vm <name>`.
    fn disk_users(&self, _path: &DsPath) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Creates folder `path` (its parent must exist). False if it already existed.
    fn mkdir(&self, path: &DsPath) -> Result<bool>;

    /// What `path` is, or `None` if absent.
    fn stat(&self, path: &DsPath) -> Result<Option<Stat>>;

    /// Names in folder `path`, sorted; a missing folder has none.
    fn list(&self, path: &DsPath) -> Result<Vec<String>>;

    /// The whole (small) file at `path`; `None` if absent.
    fn read(&self, path: &DsPath) -> Result<Option<Vec<u8>>>;

    /// Writes the whole file at `path`, replacing any old one.
    fn write(&self, path: &DsPath, bytes: &[u8]) -> Result<()>;

    /// Creates the file at `path` with `bytes`; false (and nothing written) if it exists.
    fn create_new(&self, path: &DsPath, bytes: &[u8]) -> Result<bool>;

    /// Puts a file built in the work directory at `path`, replacing any old one; the local file
    /// is consumed. Returns its size.
    fn put_file(&self, local: &Path, path: &DsPath) -> Result<u64>;

    /// Random access to the file at `path` (the disks of a chain are read this way).
    fn open(&self, path: &DsPath) -> Result<Arc<dyn ReadAt>>;

    /// Removes the file at `path`. False if it was absent.
    fn remove_file(&self, path: &DsPath) -> Result<bool>;

    /// Removes folder `path` and everything in it; absent is fine.
    fn remove_all(&self, path: &DsPath) -> Result<()>;

    /// Takes lock `range` of lock file `path`, waiting when `wait`; `None` if not waiting and
    /// held by someone else.
    fn lock(&self, path: &DsPath, range: u64, wait: bool) -> Result<Option<DsLock>>;

    /// A local directory for building layers (each new disk while it is written).
    fn work_dir(&self) -> PathBuf;

    /// A local directory where finished files (disks) are written before
    /// [`Datastore::put_file`] puts them in place: on the datastore's own file system where it
    /// has one, so that the put is a rename; the work directory otherwise.
    fn outbox_dir(&self) -> PathBuf {
        self.work_dir()
    }
}
