//! VIC's datastore layout, with what imagestore adds beside it (`docs/layouts.md`):
//!
//! ```text
//! VIC/.lock                                   store creation and deletion locks
//! VIC/<store>/.lock                           the store's lock and per-id write locks
//! VIC/<store>/usage, usage.pending            the usage counter (decision 0004)
//! VIC/<store>/images/<id>/<id>.vmdk           the disk (scratch: base disk; layers: deltas)
//! VIC/<store>/images/<id>/imageMetadata/<k>   one file per metadata key (VIC's; a key too
//!                                             long for a file name: `%%<sha256>`, see
//!                                             [`metadata_file`])
//! VIC/<store>/images/<id>/<id>.toc            the layer's table of contents
//! VIC/<store>/images/<id>/image.json          parent, sum, size, depth
//! VIC/<store>/images/<id>/children/<child>    images and writable layers on this one
//! VIC/<store>/images/<id>/owners/<owner>      registered owners
//! VIC/<store>/images/<id>/manifest            empty; written last: the image is committed
//! VIC/<store>/writable/<id>/writable.json     a writable layer on an image: its parent,
//! VIC/<store>/writable/<id>/<n>.toc, <n>.vmdk    its imports' TOCs, and its disk after import n
//! ```
//!
//! An image folder without `manifest` is invisible and is removed by the sweep once no writer
//! holds its id. Deleting removes `manifest` first, then the disk, then the folder, so a
//! delete that stops half way leaves an uncommitted folder, which the next sweep removes.

use imagestore_core::names::SCRATCH_ID;
use imagestore_core::{ImageId, OwnerName, Result, StoreName};

use crate::datastore::{Datastore, DsPath};

/// The commit marker's file name.
pub const MANIFEST: &str = "manifest";
/// The metadata folder's name.
pub const METADATA: &str = "imageMetadata";

/// The datastore folder every store lives in.
pub fn vic() -> DsPath {
    DsPath::root().child("VIC")
}

/// The lock file of store creation and deletion.
pub fn root_lock() -> DsPath {
    vic().child(".lock")
}

/// Paths of one store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorePaths {
    /// `VIC/<store>`.
    pub dir: DsPath,
}

impl StorePaths {
    /// The paths of store `s` (a validated name, so a valid path segment).
    pub fn new(s: &StoreName) -> StorePaths {
        StorePaths {
            dir: vic().child(s.as_str()),
        }
    }
    /// The store's lock file.
    pub fn lock(&self) -> DsPath {
        self.dir.child(".lock")
    }
    /// The usage counter.
    pub fn usage(&self) -> DsPath {
        self.dir.child("usage")
    }
    /// Present while the usage counter is being changed.
    pub fn usage_pending(&self) -> DsPath {
        self.dir.child("usage.pending")
    }
    /// The images folder.
    pub fn images(&self) -> DsPath {
        self.dir.child("images")
    }
    /// The writable layers folder.
    pub fn writables(&self) -> DsPath {
        self.dir.child("writable")
    }
    /// One image.
    pub fn image(&self, id: &ImageId) -> ImagePaths {
        let dir = self.images().child(id.as_str());
        ImagePaths {
            disk: dir.child(&format!("{id}.vmdk")),
            dir,
            id: id.clone(),
        }
    }
    /// The scratch image.
    pub fn scratch(&self) -> ImagePaths {
        self.image(&ImageId::scratch())
    }
    /// One writable layer.
    pub fn writable(&self, id: &ImageId) -> WritablePaths {
        WritablePaths {
            dir: self.writables().child(id.as_str()),
        }
    }
}

/// Paths of one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePaths {
    /// `VIC/<store>/images/<id>`.
    pub dir: DsPath,
    /// `<id>.vmdk`.
    pub disk: DsPath,
    id: ImageId,
}

impl ImagePaths {
    /// `imageMetadata`.
    pub fn metadata(&self) -> DsPath {
        self.dir.child(METADATA)
    }
    /// `<id>.toc`.
    pub fn toc(&self) -> DsPath {
        self.dir.child(&format!("{}.toc", self.id))
    }
    /// `image.json`.
    pub fn record(&self) -> DsPath {
        self.dir.child("image.json")
    }
    /// `children`.
    pub fn children(&self) -> DsPath {
        self.dir.child("children")
    }
    /// The marker of child `c`.
    pub fn child(&self, c: &ImageId) -> DsPath {
        self.children().child(c.as_str())
    }
    /// `owners`.
    pub fn owners(&self) -> DsPath {
        self.dir.child("owners")
    }
    /// The marker of owner `o`.
    pub fn owner(&self, o: &OwnerName) -> DsPath {
        self.owners().child(o.as_str())
    }
    /// `manifest`.
    pub fn manifest(&self) -> DsPath {
        self.dir.child(MANIFEST)
    }
}

/// Paths of one writable layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritablePaths {
    /// `VIC/<store>/writable/<id>`.
    pub dir: DsPath,
}

impl WritablePaths {
    /// `writable.json`: written last when the layer is created, first removed when deleted.
    pub fn record(&self) -> DsPath {
        self.dir.child("writable.json")
    }
    /// The TOC of import `n`; present once the import is complete.
    pub fn toc(&self, n: u32) -> DsPath {
        self.dir.child(&format!("{n}.toc"))
    }
    /// The disk holding the layer after import `n`.
    pub fn disk(&self, n: u32) -> DsPath {
        self.dir.child(&format!("{n}.vmdk"))
    }
}

/// The `parentFileNameHint` of a disk in image folder or writable folder `child_dir` whose
/// parent is the disk of image `parent` (relative to the child's folder, as VIC's are).
pub fn parent_hint(child_dir: &DsPath, parent: &ImagePaths) -> String {
    let from: Vec<&str> = child_dir.as_str().split('/').collect();
    let to: Vec<&str> = parent.disk.as_str().split('/').collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts = vec![".."; from.len() - common];
    parts.extend(&to[common..]);
    parts.join("/")
}

/// Percent-encodes a metadata key into a file name: keys made of letters, digits, `_`, `-`
/// and non-leading `.` are kept verbatim (as VIC stores them); anything else is `%XX`. The
/// result can be longer than a file name may be; [`metadata_file`] handles that.
pub fn metadata_file_name(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for (i, b) in key.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The prefix of the file names of keys too long to be their own file names.
const LONG_KEY: &str = "%%";

/// The file holding metadata `key` with `value`: its name, and its bytes. A key whose
/// encoded name fits in [`MAX_FILE_NAME`](crate::datastore::MAX_FILE_NAME) bytes is the file
/// name and the value its contents (VIC's form). A longer one (any key of up to 255 bytes
/// is valid, and encoding can triple it) is stored as `%%<sha256 of the key>` holding the
/// encoded key, a line break, then the value; [`metadata_entry`] reads both forms.
pub fn metadata_file(key: &str, value: &[u8]) -> (String, Vec<u8>) {
    let name = metadata_file_name(key);
    if name.len() <= crate::datastore::MAX_FILE_NAME {
        return (name, value.to_vec());
    }
    use sha2::Digest as _;
    let hashed = format!(
        "{LONG_KEY}{}",
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    );
    let mut bytes = Vec::with_capacity(name.len() + 1 + value.len());
    bytes.extend_from_slice(name.as_bytes());
    bytes.push(b'\n');
    bytes.extend_from_slice(value);
    (hashed, bytes)
}

/// The key and value that the metadata file `file` with contents `bytes` holds (written by
/// [`metadata_file`]); `None` for a file it cannot have written.
pub fn metadata_entry(file: &str, bytes: Vec<u8>) -> Option<(String, Vec<u8>)> {
    if file.starts_with(LONG_KEY) {
        let nl = bytes.iter().position(|b| *b == b'\n')?;
        let key = metadata_key(std::str::from_utf8(&bytes[..nl]).ok()?)?;
        let (name, _) = metadata_file(&key, &[]);
        return (name == file).then(|| (key, bytes[nl + 1..].to_vec()));
    }
    Some((metadata_key(file)?, bytes))
}

/// The metadata key a file name of [`metadata_file_name`] stands for; `None` for names it
/// cannot have made.
pub fn metadata_key(file: &str) -> Option<String> {
    crate::config::percent_decode(file).filter(|k| !k.is_empty())
}

/// True if `name` (an entry of a store's `images` folder) is an image id other than scratch.
pub fn is_layer_folder(name: &str) -> bool {
    name != SCRATCH_ID && ImageId::new(name).is_ok()
}

/// True if image `p` is committed: its `manifest` exists.
pub fn is_committed(ds: &dyn Datastore, p: &ImagePaths) -> Result<bool> {
    Ok(ds.stat(&p.manifest())?.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_climb_out_of_the_child_folder() -> Result<()> {
        let s = StorePaths::new(&StoreName::new("s1")?);
        let parent = s.image(&ImageId::new("p")?);
        let child = s.image(&ImageId::new("c")?);
        assert_eq!(parent_hint(&child.dir, &parent), "../p/p.vmdk");
        let w = s.writable(&ImageId::new("w")?);
        assert_eq!(parent_hint(&w.dir, &parent), "../../images/p/p.vmdk");
        Ok(())
    }

    #[test]
    fn metadata_keys_round_trip_through_file_names() {
        for k in [
            "metaData", "a/b", ".hidden", "..", "x y", "ü", "a.b-c_d", "%",
        ] {
            let f = metadata_file_name(k);
            assert!(!f.contains('/') && f != "." && f != ".." && !f.starts_with('.'));
            assert_eq!(metadata_key(&f).as_deref(), Some(k), "{k}");
        }
        assert_eq!(metadata_file_name("metaData"), "metaData");
        assert_eq!(metadata_key("%zz"), None);
    }

    #[test]
    fn keys_of_any_valid_length_fit_in_a_file_name() {
        let plain = "k".repeat(255);
        let escaped = "é".repeat(127);
        for k in [plain.as_str(), escaped.as_str(), "short"] {
            let (name, bytes) = metadata_file(k, b"value");
            assert!(name.len() <= crate::datastore::MAX_FILE_NAME, "{k}");
            let temp = crate::datastore::temp_name(&name);
            assert!(temp.len() <= crate::datastore::MAX_FILE_NAME);
            assert_eq!(
                metadata_entry(&name, bytes),
                Some((k.to_owned(), b"value".to_vec()))
            );
        }
        // A hashed name whose contents name another key is not taken.
        let (name, _) = metadata_file(&escaped, b"v");
        assert_eq!(metadata_entry(&name, b"short\nv".to_vec()), None);
    }
}
