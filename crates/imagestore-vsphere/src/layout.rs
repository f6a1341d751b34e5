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

use imagestore_core::backend::catalog::{ImagePaths, Layout, WritablePaths};
use imagestore_core::backend::storage::{decode_name, encode_name};

use crate::datastore::DsPath;

/// The commit marker's file name.
pub const MANIFEST: &str = "manifest";
/// The metadata folder's name.
pub const METADATA: &str = "imageMetadata";

/// The datastore folder every store lives in.
pub fn vic() -> DsPath {
    DsPath::root().child("VIC")
}

/// The catalogue's names in VIC's layout.
pub fn layout() -> Layout {
    Layout {
        stores: vic(),
        root_lock: vic().child(".lock"),
        store_lock: ".lock",
        marker: MANIFEST,
    }
}

/// `<id>.vmdk`: the image's disk (scratch: the base disk; layers: deltas).
pub fn disk(p: &ImagePaths) -> DsPath {
    p.dir.child(&format!("{}.vmdk", p.id))
}

/// `<id>.toc`: the layer's table of contents.
pub fn toc(p: &ImagePaths) -> DsPath {
    p.dir.child(&format!("{}.toc", p.id))
}

/// `imageMetadata`: one file per metadata key.
pub fn metadata(p: &ImagePaths) -> DsPath {
    p.dir.child(METADATA)
}

/// The TOC of import `n` of a writable layer; present once the import is complete.
pub fn import_toc(w: &WritablePaths, n: u32) -> DsPath {
    w.dir.child(&format!("{n}.toc"))
}

/// The disk holding a writable layer after import `n`.
pub fn import_disk(w: &WritablePaths, n: u32) -> DsPath {
    w.dir.child(&format!("{n}.vmdk"))
}

/// The `parentFileNameHint` of a disk in image folder or writable folder `child_dir` whose
/// parent is the disk of image `parent` (relative to the child's folder, as VIC's are).
pub fn parent_hint(child_dir: &DsPath, parent: &ImagePaths) -> String {
    let parent_disk = disk(parent);
    let from: Vec<&str> = child_dir.as_str().split('/').collect();
    let to: Vec<&str> = parent_disk.as_str().split('/').collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts = vec![".."; from.len() - common];
    parts.extend(&to[common..]);
    parts.join("/")
}

/// The prefix of the file names of keys too long to be their own file names.
const LONG_KEY: &str = "%%";

/// The file holding metadata `key` with `value`: its name, and its bytes. A key whose
/// encoded name fits in [`MAX_FILE_NAME`](crate::datastore::MAX_FILE_NAME) bytes is the file
/// name and the value its contents (VIC's form). A longer one (any key of up to 255 bytes
/// is valid, and encoding can triple it) is stored as `%%<sha256 of the key>` holding the
/// encoded key, a line break, then the value; [`metadata_entry`] reads both forms.
pub fn metadata_file(key: &str, value: &[u8]) -> (String, Vec<u8>) {
    let name = encode_name(key);
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

/// The metadata key a file name of [`encode_name`] stands for; `None` for names it
/// cannot have made.
pub fn metadata_key(file: &str) -> Option<String> {
    decode_name(file).filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use imagestore_core::{ImageId, Result, StoreName};

    use super::*;

    #[test]
    fn hints_climb_out_of_the_child_folder() -> Result<()> {
        let s = layout().store(&StoreName::new("s1")?);
        let parent = s.image(&ImageId::new("p")?);
        let child = s.image(&ImageId::new("c")?);
        assert_eq!(parent_hint(&child.dir, &parent), "../p/p.vmdk");
        let w = s.writable(&ImageId::new("w")?);
        assert_eq!(parent_hint(&w.dir, &parent), "../../images/p/p.vmdk");
        Ok(())
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
