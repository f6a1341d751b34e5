//! [`LocalStorage`]: a [`Storage`] on a directory of a local file system, shared by
//! `file://` and `vmdk://`. Writes go to a temporary sibling, are fsynced and renamed into
//! place, and the folder is fsynced; locks are the open-file-description locks of
//! [`super::lock`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use url::Url;

use crate::error::{Error, Result};

use super::storage::{Stat, Storage, StorageLock, StoragePath, temp_name};

/// A storage rooted at a local directory.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
    base: Url,
    scheme: &'static str,
}

/// fsyncs a directory, making creations, renames and removals inside it durable.
pub fn sync_dir(backend: &'static str, dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(backend, dir, e))
}

impl LocalStorage {
    /// The storage at directory `root` (which need not exist yet), for the backend of URL
    /// scheme `scheme`; its URLs are `<scheme>://<absolute path>`.
    pub fn new(scheme: &'static str, root: PathBuf) -> Result<LocalStorage> {
        if !root.is_absolute() {
            return Err(Error::invalid(format!(
                "{} is not an absolute path",
                root.display()
            )));
        }
        let mut base = Url::parse(&format!("{scheme}:///"))
            .map_err(|e| Error::invalid(format!("{scheme} URL: {e}")))?;
        let mut path = root.to_string_lossy().into_owned();
        if !path.ends_with('/') {
            path.push('/');
        }
        base.set_path(&path);
        Ok(LocalStorage { root, base, scheme })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The local path of a storage path.
    pub fn local(&self, p: &StoragePath) -> PathBuf {
        if p.as_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(p.as_str())
        }
    }

    fn parent_of(&self, p: &StoragePath) -> PathBuf {
        let l = self.local(p);
        l.parent().map(Path::to_path_buf).unwrap_or(l)
    }

    fn io<T>(&self, path: &Path, r: io::Result<T>) -> Result<T> {
        r.map_err(|e| Error::io(self.scheme, path, e))
    }

    fn sync(&self, dir: &Path) -> Result<()> {
        sync_dir(self.scheme, dir)
    }
}

impl Storage for LocalStorage {
    fn scheme(&self) -> &'static str {
        self.scheme
    }

    fn base_url(&self) -> Url {
        self.base.clone()
    }

    fn url(&self, path: &StoragePath) -> Url {
        let mut u = self.base.clone();
        u.set_path(&self.local(path).to_string_lossy());
        u
    }

    fn path_of(&self, url: &Url) -> Option<StoragePath> {
        if url.scheme() != self.scheme || url.host_str().is_some_and(|h| !h.is_empty()) {
            return None;
        }
        let decoded = super::storage::decode_name(url.path())?;
        let rel = Path::new(&decoded).strip_prefix(&self.root).ok()?;
        StoragePath::parse(rel.to_str()?).ok()
    }

    fn shared_writers(&self) -> bool {
        true
    }

    fn describe(&self, path: &StoragePath) -> String {
        self.local(path).display().to_string()
    }

    fn mkdir(&self, path: &StoragePath) -> Result<bool> {
        let l = self.local(path);
        match fs::create_dir(&l) {
            Ok(()) => {
                self.sync(&self.parent_of(path))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => self.io(&l, Err(e)),
        }
    }

    fn stat(&self, path: &StoragePath) -> Result<Option<Stat>> {
        let l = self.local(path);
        match fs::symlink_metadata(&l) {
            Ok(m) => Ok(Some(Stat {
                is_dir: m.is_dir(),
                size: m.len(),
                modified_unix_ms: m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as u64),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => self.io(&l, Err(e)),
        }
    }

    fn list(&self, path: &StoragePath) -> Result<Vec<String>> {
        let l = self.local(path);
        let rd = match fs::read_dir(&l) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return self.io(&l, Err(e)),
        };
        let mut names = Vec::new();
        for entry in rd {
            if let Ok(name) = self.io(&l, entry)?.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn read(&self, path: &StoragePath) -> Result<Option<Vec<u8>>> {
        let l = self.local(path);
        match fs::read(&l) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => self.io(&l, Err(e)),
        }
    }

    fn write(&self, path: &StoragePath, bytes: &[u8]) -> Result<()> {
        let l = self.local(path);
        let dir = self.parent_of(path);
        let tmp = dir.join(temp_name(path.name()));
        let r = (|| {
            let mut f = self.io(
                &tmp,
                OpenOptions::new().write(true).create_new(true).open(&tmp),
            )?;
            self.io(&tmp, f.write_all(bytes))?;
            self.io(&tmp, f.sync_all())?;
            self.io(&l, fs::rename(&tmp, &l))
        })();
        if r.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        r?;
        self.sync(&dir)
    }

    fn create_new(&self, path: &StoragePath, bytes: &[u8]) -> Result<bool> {
        let l = self.local(path);
        let mut f = match OpenOptions::new().write(true).create_new(true).open(&l) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return self.io(&l, Err(e)),
        };
        self.io(&l, f.write_all(bytes))?;
        self.io(&l, f.sync_all())?;
        self.sync(&self.parent_of(path))?;
        Ok(true)
    }

    fn remove_file(&self, path: &StoragePath) -> Result<bool> {
        let l = self.local(path);
        match fs::remove_file(&l) {
            Ok(()) => {
                self.sync(&self.parent_of(path))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => self.io(&l, Err(e)),
        }
    }

    fn remove_all(&self, path: &StoragePath) -> Result<()> {
        let l = self.local(path);
        match fs::remove_dir_all(&l) {
            Ok(()) => self.sync(&self.parent_of(path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => self.io(&l, Err(e)),
        }
    }

    /// Unlinks everything, then makes it durable with one `syncfs` of the file system (on
    /// Linux; elsewhere one `fsync` per parent folder): a garbage collection's thousands of
    /// removals cost two flushes instead of one each.
    fn remove_batch(&self, paths: &[StoragePath]) -> Result<()> {
        let mut parents = std::collections::BTreeSet::new();
        for p in paths {
            let l = self.local(p);
            let r = match fs::symlink_metadata(&l) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(&l),
                Ok(_) => fs::remove_file(&l),
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => {
                    parents.insert(self.parent_of(p));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return self.io(&l, Err(e)),
            }
        }
        if parents.is_empty() {
            return Ok(());
        }
        #[cfg(target_os = "linux")]
        {
            let root = self.io(&self.root, File::open(&self.root))?;
            self.io(
                &self.root,
                rustix::fs::syncfs(&root).map_err(io::Error::from),
            )
        }
        #[cfg(not(target_os = "linux"))]
        {
            for dir in parents {
                self.sync(&dir)?;
            }
            Ok(())
        }
    }

    fn lock(&self, path: &StoragePath, range: u64, wait: bool) -> Result<Option<StorageLock>> {
        let l = self.local(path);
        if wait {
            let g = super::lock::lock_blocking(self.scheme, &l, range)?;
            Ok(Some(StorageLock::new(g)))
        } else {
            Ok(super::lock::try_lock(self.scheme, &l, range)?.map(StorageLock::new))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_round_trip_and_writes_replace_whole_files() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::invalid(e.to_string()))?;
        let s = LocalStorage::new("file", dir.path().join("with space"))?;
        fs::create_dir_all(s.root()).map_err(|e| Error::invalid(e.to_string()))?;
        let p = StoragePath::root().child("a");
        assert!(s.mkdir(&p)?);
        assert!(!s.mkdir(&p)?);
        let f = p.child("f");
        assert_eq!(s.path_of(&s.url(&f)), Some(f.clone()));
        assert!(s.create_new(&f, b"1")?);
        assert!(!s.create_new(&f, b"2")?);
        s.write(&f, b"3")?;
        assert_eq!(s.read(&f)?, Some(b"3".to_vec()));
        assert_eq!(s.list(&p)?, vec!["f".to_owned()], "no temporary left");
        assert!(s.remove_file(&f)?);
        assert!(!s.remove_file(&f)?);
        s.remove_all(&p)?;
        assert_eq!(s.stat(&p)?, None);
        let other = Url::parse("vmdk:///x").map_err(|e| Error::invalid(e.to_string()))?;
        assert_eq!(s.path_of(&other), None);
        Ok(())
    }
}
