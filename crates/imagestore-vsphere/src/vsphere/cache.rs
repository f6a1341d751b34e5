//! A local cache of disks read from the datastore. A committed disk never changes, and a disk
//! written again under the same name (an image deleted and written anew) has a new content
//! id, so a disk is known by its datastore path, its size and the `CID` in its descriptor:
//! reading it costs one ranged GET of its first bytes when cached, and one download when not.
//! The extent of a native delta disk (`COWD`, SEsparse) holds no CID; it is known by its
//! path, its size and a digest of its first bytes (its header and grain directory).
//! Disks this process uploads go into the cache as they are (the next layer's build reads its
//! parent first). The cache is bounded (`cache_mib=`, [`DEFAULT_BUDGET`] by default); the
//! least recently used files go first (a file still open stays readable after it is
//! removed). A hit touches the file's modification time, so the order survives a restart.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use imagestore_core::{Error, Result};
use sha2::Digest as _;

use super::soap::BACKEND;
use crate::vmdk::SECTOR;
use crate::vmdk::descriptor::Descriptor;
use crate::vmdk::header::Header;

/// Bytes read to identify a disk: the header and, for this crate's disks, the descriptor.
pub const HEAD_BYTES: u64 = 64 << 10;

/// Total size the cache keeps unless told otherwise: 4 GiB.
pub const DEFAULT_BUDGET: u64 = 4 << 30;

/// The identity of the disk file whose first bytes are `head`: the `CID` of a hosted sparse
/// disk or of a descriptor file, or for the extent of a native delta disk a digest of its
/// first bytes.
fn cid_of(head: &[u8], what: &str) -> Option<u32> {
    let is_extent = head.starts_with(&crate::vmdk::cowd::MAGIC)
        || head.starts_with(&crate::vmdk::sesparse::CONST_MAGIC.to_le_bytes());
    if is_extent {
        let d = sha2::Sha256::digest(head);
        return Some(u32::from_le_bytes([d[0], d[1], d[2], d[3]]));
    }
    let Some(h) = head.get(..512).and_then(|h| <&[u8; 512]>::try_from(h).ok()) else {
        return descriptor_cid(head, what);
    };
    let Ok(header) = Header::parse(h, what) else {
        return descriptor_cid(head, what);
    };
    let start = (header.descriptor_offset * SECTOR) as usize;
    let end = start + (header.descriptor_size * SECTOR) as usize;
    let text = String::from_utf8_lossy(head.get(start..end.min(head.len()))?);
    Descriptor::parse(&text, what).ok().map(|d| d.cid)
}

/// The `CID` of a descriptor file whose bytes are `head` (a native disk's descriptor).
fn descriptor_cid(head: &[u8], what: &str) -> Option<u32> {
    if head.len() as u64 >= HEAD_BYTES || head.contains(&0) {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    Descriptor::parse(text, what).ok().map(|d| d.cid)
}

/// The cache.
#[derive(Debug)]
pub struct DiskCache {
    dir: PathBuf,
    /// Bytes the cache keeps at most (one file larger than this is still kept alone).
    budget: u64,
    /// Cached files, least recently used first, with their sizes.
    files: Mutex<VecDeque<(PathBuf, u64)>>,
}

impl DiskCache {
    /// A cache in `dir` (created if missing) keeping at most `budget` bytes. Disks an
    /// earlier process cached stay usable and count towards the budget (the least recently
    /// used go first if they are over it); downloads it left half done are removed.
    pub fn new(dir: PathBuf, budget: u64) -> Result<DiskCache> {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(BACKEND, &dir, e))?;
        let mut found = Vec::new();
        let rd = std::fs::read_dir(&dir).map_err(|e| Error::io(BACKEND, &dir, e))?;
        for e in rd.flatten() {
            let (Ok(meta), name) = (e.metadata(), e.file_name()) else {
                continue;
            };
            let age = meta.modified().ok().and_then(|m| m.elapsed().ok());
            if name.to_string_lossy().starts_with(".fetch-") {
                if age.is_some_and(|a| a.as_secs() > 3600) {
                    let _ = std::fs::remove_file(e.path());
                }
                continue;
            }
            found.push((meta.modified().ok(), e.path(), meta.len()));
        }
        found.sort_by_key(|(m, _, _)| *m);
        let cache = DiskCache {
            dir,
            budget,
            files: Mutex::new(VecDeque::new()),
        };
        for (_, p, size) in found {
            cache.remember(p, size);
        }
        Ok(cache)
    }

    fn path_for(&self, name: &str, size: u64, cid: u32) -> PathBuf {
        let key = format!("{name}|{size}|{cid:08x}");
        let h = sha2::Sha256::digest(key.as_bytes());
        self.dir.join(format!("{}.vmdk", hex::encode(&h[..16])))
    }

    fn remember(&self, p: PathBuf, size: u64) {
        let Ok(mut files) = self.files.lock() else {
            return;
        };
        files.retain(|(f, _)| *f != p);
        files.push_back((p, size));
        let mut total: u64 = files.iter().map(|(_, s)| s).sum();
        while total > self.budget && files.len() > 1 {
            if let Some((old, s)) = files.pop_front() {
                let _ = std::fs::remove_file(old);
                total -= s;
            }
        }
    }

    /// The local file of the disk `name` whose first bytes are `head` and whose size is
    /// `size`; `fetch` downloads it into a given path when it is not cached. Files that are
    /// not sparse disks are fetched every time and not kept.
    pub fn get_or_fetch(
        &self,
        name: &str,
        head: &[u8],
        size: u64,
        fetch: impl FnOnce(&Path) -> Result<u64>,
    ) -> Result<File> {
        let tmp = self
            .dir
            .join(format!(".fetch-{:016x}", rand::random::<u64>()));
        let Some(cid) = cid_of(head, name) else {
            fetch(&tmp)?;
            let f = File::open(&tmp).map_err(|e| Error::io(BACKEND, &tmp, e));
            let _ = std::fs::remove_file(&tmp);
            return f;
        };
        let p = self.path_for(name, size, cid);
        if let Ok(f) = File::open(&p)
            && f.metadata().is_ok_and(|m| m.len() == size)
        {
            self.used(&f, &p, size);
            return Ok(f);
        }
        let got = fetch(&tmp);
        let checked = got.and_then(|n| {
            if n == size {
                Ok(())
            } else {
                Err(Error::backend(
                    BACKEND,
                    format!("{name}: downloaded {n} bytes of {size}"),
                    true,
                ))
            }
        });
        if let Err(e) =
            checked.and_then(|()| std::fs::rename(&tmp, &p).map_err(|e| Error::io(BACKEND, &p, e)))
        {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        self.remember(p.clone(), size);
        File::open(&p).map_err(|e| Error::io(BACKEND, &p, e))
    }

    /// Marks a cached file as just used: last in the eviction order, here and (through its
    /// modification time) for the next process.
    fn used(&self, f: &File, p: &Path, size: u64) {
        let _ = f.set_modified(std::time::SystemTime::now());
        self.remember(p.to_path_buf(), size);
    }

    /// The bytes the cache holds now.
    #[cfg(test)]
    fn size(&self) -> u64 {
        self.files
            .lock()
            .map(|f| f.iter().map(|(_, s)| s).sum())
            .unwrap_or(0)
    }

    /// Keeps the local file `local`, just uploaded as disk `name`, in the cache (it is moved;
    /// a file that is not a sparse disk is removed).
    pub fn adopt(&self, local: &Path, name: &str) -> Result<()> {
        let head = {
            use std::io::Read;
            let mut buf = vec![0u8; HEAD_BYTES as usize];
            let mut f = File::open(local).map_err(|e| Error::io(BACKEND, local, e))?;
            let n = f.read(&mut buf).map_err(|e| Error::io(BACKEND, local, e))?;
            buf.truncate(n);
            buf
        };
        let size = std::fs::metadata(local)
            .map_err(|e| Error::io(BACKEND, local, e))?
            .len();
        match cid_of(&head, name) {
            Some(cid) => {
                let p = self.path_for(name, size, cid);
                if std::fs::rename(local, &p).is_ok() {
                    self.remember(p, size);
                } else {
                    let _ = std::fs::remove_file(local);
                }
            }
            None => {
                let _ = std::fs::remove_file(local);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, size: u64) -> PathBuf {
        let p = dir.join(name);
        let f = File::create(&p).unwrap();
        f.set_len(size).unwrap();
        p
    }

    #[test]
    fn native_disks_are_known_by_their_descriptor_cid_and_their_extents_head() {
        let d = crate::disk::descriptor(
            crate::vmdk::format::DiskFormat::VmfsSparse,
            1 << 20,
            "a.vmdk",
            0x1234_5678,
            Some((0x0bad_cafe, "p.vmdk")),
        );
        assert_eq!(cid_of(d.to_text().as_bytes(), "a"), Some(0x1234_5678));
        let mut cowd = vec![0u8; 4096];
        cowd[..4].copy_from_slice(b"COWD");
        let one = cid_of(&cowd, "a-delta");
        cowd[3000] = 1;
        assert!(
            one.is_some() && cid_of(&cowd, "a-delta") != one,
            "the head's digest"
        );
        let mut se = vec![0u8; 4096];
        se[..8].copy_from_slice(&crate::vmdk::sesparse::CONST_MAGIC.to_le_bytes());
        assert!(cid_of(&se, "a-sesparse").is_some());
        assert_eq!(cid_of(b"not a disk", "x"), None);
    }

    #[test]
    fn least_recently_used_files_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::new(dir.path().join("c"), 300).unwrap();
        let a = file(&cache.dir, "a.vmdk", 100);
        let b = file(&cache.dir, "b.vmdk", 100);
        let c = file(&cache.dir, "c.vmdk", 100);
        for p in [&a, &b, &c] {
            cache.remember(p.clone(), 100);
        }
        // Using `a` makes `b` the least recently used.
        cache.used(&File::open(&a).unwrap(), &a, 100);
        let d = file(&cache.dir, "d.vmdk", 100);
        cache.remember(d.clone(), 100);
        assert!(a.exists() && c.exists() && d.exists());
        assert!(!b.exists());
        assert_eq!(cache.size(), 300);
    }

    #[test]
    fn a_new_cache_trims_what_an_earlier_process_left() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("c");
        std::fs::create_dir(&root).unwrap();
        let old = file(&root, "old.vmdk", 200);
        let t = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(t)
            .unwrap();
        let new = file(&root, "new.vmdk", 200);
        let cache = DiskCache::new(root, 300).unwrap();
        assert!(!old.exists() && new.exists());
        assert_eq!(cache.size(), 200);
    }
}
