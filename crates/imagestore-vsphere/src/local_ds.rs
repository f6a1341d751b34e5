//! The datastore of `vmdk://`: a directory on a local file system. Writes go to a temporary
//! sibling, are fsynced and renamed into place, and the folder is fsynced; locks are the
//! open-file-description locks of `imagestore_core::lock`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use imagestore_core::{Error, Result, Url};

use crate::datastore::{Datastore, DsLock, DsPath, Stat};
use crate::error::{BACKEND, IoContext};
use crate::vmdk::ReadAt;

/// A datastore rooted at a local directory.
#[derive(Debug, Clone)]
pub struct LocalDatastore {
    root: PathBuf,
    work: PathBuf,
    base: Url,
}

/// fsyncs a directory.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).at(dir)
}

impl LocalDatastore {
    /// A datastore at `root` (created if missing) that builds layers in `work` (default
    /// `<root>/.imagestore-work`, created if missing).
    pub fn open(root: PathBuf, work: Option<PathBuf>) -> Result<LocalDatastore> {
        fs::create_dir_all(&root).at(&root)?;
        let mut base =
            Url::parse("vmdk:///").map_err(|e| Error::invalid(format!("vmdk URL: {e}")))?;
        base.set_path(&root.to_string_lossy());
        let work = work.unwrap_or_else(|| root.join(".imagestore-work"));
        let ds = LocalDatastore { root, work, base };
        for d in [ds.work_dir(), ds.outbox_dir()] {
            fs::create_dir_all(&d).at(&d)?;
        }
        Ok(ds)
    }

    /// The local path of a datastore path.
    pub fn local(&self, p: &DsPath) -> PathBuf {
        if p.as_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(p.as_str())
        }
    }

    fn parent_of(&self, p: &DsPath) -> PathBuf {
        let l = self.local(p);
        l.parent().map(Path::to_path_buf).unwrap_or(l)
    }
}

impl Datastore for LocalDatastore {
    fn scheme(&self) -> &'static str {
        BACKEND
    }

    fn base_url(&self) -> Url {
        self.base.clone()
    }

    fn url(&self, path: &DsPath) -> Url {
        let mut u = self.base_url();
        u.set_path(&self.local(path).to_string_lossy());
        u
    }

    fn path_of(&self, url: &Url) -> Option<DsPath> {
        if url.scheme() != BACKEND || url.host_str().is_some_and(|h| !h.is_empty()) {
            return None;
        }
        let decoded = crate::config::percent_decode(url.path())?;
        let rel = Path::new(&decoded).strip_prefix(&self.root).ok()?;
        DsPath::parse(rel.to_str()?).ok()
    }

    fn shared_writers(&self) -> bool {
        true
    }

    fn describe(&self, path: &DsPath) -> String {
        self.local(path).display().to_string()
    }

    fn mkdir(&self, path: &DsPath) -> Result<bool> {
        let l = self.local(path);
        match fs::create_dir(&l) {
            Ok(()) => {
                sync_dir(&self.parent_of(path))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e).at(&l),
        }
    }

    fn stat(&self, path: &DsPath) -> Result<Option<Stat>> {
        let l = self.local(path);
        match fs::symlink_metadata(&l) {
            Ok(m) => Ok(Some(Stat {
                is_dir: m.is_dir(),
                size: m.len(),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).at(&l),
        }
    }

    fn list(&self, path: &DsPath) -> Result<Vec<String>> {
        let l = self.local(path);
        let rd = match fs::read_dir(&l) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).at(&l),
        };
        let mut names = Vec::new();
        for entry in rd {
            if let Ok(name) = entry.at(&l)?.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn read(&self, path: &DsPath) -> Result<Option<Vec<u8>>> {
        let l = self.local(path);
        match fs::read(&l) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).at(&l),
        }
    }

    fn write(&self, path: &DsPath, bytes: &[u8]) -> Result<()> {
        let l = self.local(path);
        let dir = self.parent_of(path);
        let tmp = dir.join(crate::datastore::temp_name(path.name()));
        let r = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .at(&tmp)?;
            f.write_all(bytes).at(&tmp)?;
            f.sync_all().at(&tmp)?;
            fs::rename(&tmp, &l).at(&l)
        })();
        if r.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        r?;
        sync_dir(&dir)
    }

    fn create_new(&self, path: &DsPath, bytes: &[u8]) -> Result<bool> {
        let l = self.local(path);
        let mut f = match OpenOptions::new().write(true).create_new(true).open(&l) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(e).at(&l),
        };
        f.write_all(bytes).at(&l)?;
        f.sync_all().at(&l)?;
        sync_dir(&self.parent_of(path))?;
        Ok(true)
    }

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
        sync_dir(&self.parent_of(path))?;
        Ok(size)
    }

    fn open(&self, path: &DsPath) -> Result<Arc<dyn ReadAt>> {
        let l = self.local(path);
        let f = File::open(&l).at(&l)?;
        Ok(Arc::new(f))
    }

    fn remove_file(&self, path: &DsPath) -> Result<bool> {
        let l = self.local(path);
        match fs::remove_file(&l) {
            Ok(()) => {
                sync_dir(&self.parent_of(path))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).at(&l),
        }
    }

    fn remove_all(&self, path: &DsPath) -> Result<()> {
        let l = self.local(path);
        match fs::remove_dir_all(&l) {
            Ok(()) => sync_dir(&self.parent_of(path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).at(&l),
        }
    }

    fn lock(&self, path: &DsPath, range: u64, wait: bool) -> Result<Option<DsLock>> {
        let l = self.local(path);
        if wait {
            let g = imagestore_core::lock::lock_blocking(BACKEND, &l, range)?;
            Ok(Some(DsLock::new(g)))
        } else {
            Ok(imagestore_core::lock::try_lock(BACKEND, &l, range)?.map(DsLock::new))
        }
    }

    fn work_dir(&self) -> PathBuf {
        self.work.clone()
    }

    fn outbox_dir(&self) -> PathBuf {
        self.root.join(".imagestore-work")
    }
}

impl From<LocalDatastore> for Arc<dyn Datastore> {
    fn from(d: LocalDatastore) -> Self {
        Arc::new(d)
    }
}
