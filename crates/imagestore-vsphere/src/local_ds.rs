//! The datastore of `vmdk://`: a directory on a local file system, the shared
//! [`LocalStorage`] plus the folders layers are built in.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use imagestore_core::backend::local::{LocalStorage, sync_dir};
use imagestore_core::{JoinedImage, Result, Url};

use crate::datastore::{Datastore, DsLock, DsPath, Stat, Storage};
use crate::error::{BACKEND, IoContext};
use crate::vmdk::ReadAt;

/// A datastore rooted at a local directory.
#[derive(Debug, Clone)]
pub struct LocalDatastore {
    storage: LocalStorage,
    work: PathBuf,
}

impl LocalDatastore {
    /// A datastore at `root` (created if missing) that builds layers in `work` (default
    /// `<root>/.imagestore-work`, created if missing).
    pub fn open(root: PathBuf, work: Option<PathBuf>) -> Result<LocalDatastore> {
        fs::create_dir_all(&root).at(&root)?;
        let work = work.unwrap_or_else(|| root.join(".imagestore-work"));
        let ds = LocalDatastore {
            storage: LocalStorage::new(BACKEND, root)?,
            work,
        };
        for d in [ds.work_dir(), ds.outbox_dir()] {
            fs::create_dir_all(&d).at(&d)?;
        }
        Ok(ds)
    }

    /// The local path of a datastore path.
    pub fn local(&self, p: &DsPath) -> PathBuf {
        self.storage.local(p)
    }
}

/// Everything but the disks' extras is the local storage's.
impl Storage for LocalDatastore {
    fn scheme(&self) -> &'static str {
        self.storage.scheme()
    }
    fn base_url(&self) -> Url {
        self.storage.base_url()
    }
    fn url(&self, path: &DsPath) -> Url {
        self.storage.url(path)
    }
    fn path_of(&self, url: &Url) -> Option<DsPath> {
        self.storage.path_of(url)
    }
    fn shared_writers(&self) -> bool {
        self.storage.shared_writers()
    }
    fn describe(&self, path: &DsPath) -> String {
        self.storage.describe(path)
    }
    fn mkdir(&self, path: &DsPath) -> Result<bool> {
        self.storage.mkdir(path)
    }
    fn stat(&self, path: &DsPath) -> Result<Option<Stat>> {
        self.storage.stat(path)
    }
    fn list(&self, path: &DsPath) -> Result<Vec<String>> {
        self.storage.list(path)
    }
    fn read(&self, path: &DsPath) -> Result<Option<Vec<u8>>> {
        self.storage.read(path)
    }
    fn write(&self, path: &DsPath, bytes: &[u8]) -> Result<()> {
        self.storage.write(path, bytes)
    }
    fn create_new(&self, path: &DsPath, bytes: &[u8]) -> Result<bool> {
        self.storage.create_new(path, bytes)
    }
    fn remove_file(&self, path: &DsPath) -> Result<bool> {
        self.storage.remove_file(path)
    }
    fn remove_all(&self, path: &DsPath) -> Result<()> {
        self.storage.remove_all(path)
    }
    fn lock(&self, path: &DsPath, range: u64, wait: bool) -> Result<Option<DsLock>> {
        self.storage.lock(path, range, wait)
    }
}

impl Datastore for LocalDatastore {
    fn put_file(&self, local: &Path, path: &DsPath) -> Result<u64> {
        let l = self.local(path);
        File::open(local).and_then(|f| f.sync_all()).at(local)?;
        let size = fs::metadata(local).at(local)?.len();
        match fs::rename(local, &l) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
                fs::copy(local, &l).at(&l)?;
                File::open(&l).and_then(|f| f.sync_all()).at(&l)?;
                fs::remove_file(local).at(local)?;
            }
            Err(e) => return Err(e).at(&l),
        }
        let dir = l.parent().map(Path::to_path_buf).unwrap_or_default();
        sync_dir(BACKEND, &dir)?;
        Ok(size)
    }

    /// A directory of disk files runs no virtual machines.
    fn attach_child_disk(&self, _: &str, _: &DsPath, _: &DsPath) -> Result<JoinedImage> {
        Err(JoinedImage::unsupported(BACKEND))
    }

    fn open(&self, path: &DsPath) -> Result<Arc<dyn ReadAt>> {
        let l = self.local(path);
        let f = File::open(&l).at(&l)?;
        Ok(Arc::new(f))
    }

    fn work_dir(&self) -> PathBuf {
        self.work.clone()
    }

    fn outbox_dir(&self) -> PathBuf {
        self.storage.root().join(".imagestore-work")
    }
}

impl From<LocalDatastore> for Arc<dyn Datastore> {
    fn from(d: LocalDatastore) -> Self {
        Arc::new(d)
    }
}
