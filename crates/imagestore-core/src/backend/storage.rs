//! [`Storage`]: the few file operations the catalogue protocol needs from a file-like place
//! (a directory on local disk, a vSphere datastore), and [`StoragePath`], the checked paths it
//! takes.
//!
//! Every method blocks; call them from the blocking pool.

use std::fmt;

use url::Url;

use crate::error::{Error, Result};

/// The longest file name a storage holds (VMFS and Linux file systems alike).
pub const MAX_FILE_NAME: usize = 255;

/// A path inside a storage: `/`-separated segments, none empty, `.`, `..` or holding `/`,
/// `\` or NUL; the empty path is the storage's root.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoragePath(String);

impl StoragePath {
    /// The storage's root.
    pub fn root() -> StoragePath {
        StoragePath(String::new())
    }

    /// This path with one more segment. Refuses segments that could leave the path.
    pub fn join(&self, segment: &str) -> Result<StoragePath> {
        if segment.is_empty()
            || segment == "."
            || segment == ".."
            || segment.contains(['/', '\0', '\\'])
        {
            return Err(Error::invalid(format!(
                "{segment:?} cannot be a storage path segment"
            )));
        }
        Ok(if self.0.is_empty() {
            StoragePath(segment.to_owned())
        } else {
            StoragePath(format!("{}/{segment}", self.0))
        })
    }

    /// [`StoragePath::join`] for segments known to be valid (layout constants, validated
    /// names). A segment that is not valid after all is percent-encoded ([`encode_name`]),
    /// never dropped.
    pub fn child(&self, segment: &str) -> StoragePath {
        self.join(segment)
            .or_else(|_| self.join(&encode_name(segment)))
            .unwrap_or_else(|_| StoragePath(format!("{}/_", self.0)))
    }

    /// Parses a `/`-separated path, checking every segment.
    pub fn parse(path: &str) -> Result<StoragePath> {
        let mut p = StoragePath::root();
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            p = p.join(seg)?;
        }
        Ok(p)
    }

    /// The path without its last segment (the root for the root).
    pub fn parent(&self) -> StoragePath {
        match self.0.rsplit_once('/') {
            Some((dir, _)) => StoragePath(dir.to_owned()),
            None => StoragePath::root(),
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

    /// The segments after `prefix`, if this path lies under it.
    pub fn strip_prefix(&self, prefix: &StoragePath) -> Option<Vec<&str>> {
        let rest = if prefix.0.is_empty() {
            self.0.as_str()
        } else {
            self.0.strip_prefix(prefix.0.as_str())?.strip_prefix('/')?
        };
        Some(rest.split('/').filter(|s| !s.is_empty()).collect())
    }
}

impl fmt::Display for StoragePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Percent-encodes any string into one file name: letters, digits, `_`, `-` and non-leading
/// `.` are kept; every other byte becomes `%XX`. [`decode_name`] reverses it. The result can
/// be longer than [`MAX_FILE_NAME`]; callers that take arbitrary input check that.
pub fn encode_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (of [`encode_name`] or a URL path); `None` if an escape is broken or
/// the result is not UTF-8.
pub fn decode_name(name: &str) -> Option<String> {
    let b = name.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(name.get(i + 1..i + 3)?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The name of a temporary sibling of the file `name`, for writing it whole before a rename:
/// `.<name>.tmp-<random>`, with `name` cut short so the result stays a legal file name.
pub fn temp_name(name: &str) -> String {
    let mut end = name.len().min(64);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!(".{}.tmp-{:016x}", &name[..end], rand::random::<u64>())
}

/// What [`Storage::stat`] tells about a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// A folder.
    pub is_dir: bool,
    /// Size in bytes (files).
    pub size: u64,
    /// When it was last modified, in milliseconds since the Unix epoch, if the storage tells.
    pub modified_unix_ms: Option<u64>,
}

/// A held storage lock; released when dropped.
pub struct StorageLock(#[allow(dead_code)] Box<dyn Send + Sync>);

impl StorageLock {
    /// Wraps whatever keeps the lock held.
    pub fn new(inner: impl Send + Sync + 'static) -> StorageLock {
        StorageLock(Box::new(inner))
    }
}

impl fmt::Debug for StorageLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StorageLock")
    }
}

/// File operations on a storage, as whole small files and folders.
///
/// Contract, relied on by the catalogue protocol (`docs/reliability.md`):
/// * [`Storage::write`] and [`Storage::create_new`] are durable when they return, and a
///   reader sees either the old file or the whole new one;
/// * [`Storage::mkdir`], [`Storage::remove_file`] and [`Storage::remove_all`] are durable when
///   they return;
/// * missing files and folders are not errors where the method says so (`stat`, `list`,
///   `read`, `remove_*`);
/// * locks exclude every thread and process (and, where [`Storage::shared_writers`] says so,
///   host) that uses the same storage through this trait, and are released when their holder
///   dies.
pub trait Storage: Send + Sync + fmt::Debug {
    /// The URL scheme of the backend on this storage (`file`, `vmdk`, `vsphere`); names the
    /// backend in errors.
    fn scheme(&self) -> &'static str;

    /// The URL of the storage's root (store URLs are this plus the store name).
    fn base_url(&self) -> Url;

    /// A URL that locates `path` without further context.
    fn url(&self, path: &StoragePath) -> Url;

    /// The path a URL of [`Storage::url`] names; `None` for other URLs.
    fn path_of(&self, url: &Url) -> Option<StoragePath>;

    /// True if several processes (and hosts) may use the storage at once: its locks exclude
    /// them all.
    fn shared_writers(&self) -> bool;

    /// How `path` is named in messages (a local path, or `[ds] folder/file`).
    fn describe(&self, path: &StoragePath) -> String;

    /// Users of the file at `path` that the storage itself knows of (on vSphere: the virtual
    /// machines with a disk backed by it), as `vm <name>`.
    fn disk_users(&self, _path: &StoragePath) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Creates folder `path` (its parent must exist). False if it already existed.
    fn mkdir(&self, path: &StoragePath) -> Result<bool>;

    /// What `path` is, or `None` if absent.
    fn stat(&self, path: &StoragePath) -> Result<Option<Stat>>;

    /// Names in folder `path`, sorted; a missing folder has none.
    fn list(&self, path: &StoragePath) -> Result<Vec<String>>;

    /// The whole (small) file at `path`; `None` if absent.
    fn read(&self, path: &StoragePath) -> Result<Option<Vec<u8>>>;

    /// Writes the whole file at `path`, replacing any old one.
    fn write(&self, path: &StoragePath, bytes: &[u8]) -> Result<()>;

    /// Creates the file at `path` with `bytes`; false (and nothing written) if it exists.
    fn create_new(&self, path: &StoragePath, bytes: &[u8]) -> Result<bool>;

    /// Removes the file at `path`. False if it was absent.
    fn remove_file(&self, path: &StoragePath) -> Result<bool>;

    /// Removes folder `path` and everything in it; absent is fine.
    fn remove_all(&self, path: &StoragePath) -> Result<()>;

    /// Removes the files and folders at `paths` (absent ones are fine); all removals are
    /// durable when it returns, though a crash part way may leave any subset of them done.
    /// The batch form of [`Storage::remove_file`] and [`Storage::remove_all`]: a storage may
    /// make the whole batch durable at once instead of path by path.
    fn remove_batch(&self, paths: &[StoragePath]) -> Result<()> {
        for p in paths {
            match self.stat(p)? {
                Some(st) if st.is_dir => self.remove_all(p)?,
                Some(_) => {
                    self.remove_file(p)?;
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Takes lock `range` of lock file `path`, waiting when `wait`; `None` if not waiting and
    /// held by someone else.
    fn lock(&self, path: &StoragePath, range: u64, wait: bool) -> Result<Option<StorageLock>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_refuse_segments_that_leave_them() {
        let root = StoragePath::root();
        for bad in ["", ".", "..", "a/b", "a\\b", "a\0b"] {
            assert!(root.join(bad).is_err(), "{bad:?}");
        }
        let p = root.child("VIC").child("s").child("..");
        assert_eq!(p.as_str(), "VIC/s/%2E.");
        assert_eq!(p.parent().as_str(), "VIC/s");
        assert_eq!(p.strip_prefix(&root.child("VIC")), Some(vec!["s", "%2E."]));
        assert_eq!(p.strip_prefix(&root.child("VI")), None);
        assert!(StoragePath::parse("a/../b").is_err());
    }

    #[test]
    fn names_round_trip_through_encoding() {
        for k in [
            "metaData", "a/b", ".hidden", "..", "x y", "ü", "a.b-c_d", "%",
        ] {
            let f = encode_name(k);
            assert!(!f.contains('/') && f != "." && f != ".." && !f.starts_with('.'));
            assert_eq!(decode_name(&f).as_deref(), Some(k), "{k}");
        }
        assert_eq!(encode_name("metaData"), "metaData");
        assert_eq!(decode_name("%zz"), None);
        assert!(temp_name(&"x".repeat(300)).len() <= MAX_FILE_NAME);
    }
}
