//! Tests of [`super`]: cleanup after a failed checkout, holes of sparse files.
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;

use super::*;
use crate::digest::Digest;
use crate::layer::content::content_hasher;
use crate::layer::export::NodeItem;
use crate::layer::toc::DigestForm;

/// File data by path; a path missing from the map fails to read.
struct Source(HashMap<String, Vec<u8>>);

struct Pass<'a>(&'a Source);

impl ContentSource for Source {
    fn pass(&self) -> Result<Box<dyn ContentPass + '_>> {
        Ok(Box::new(Pass(self)))
    }
}

impl ContentPass for Pass<'_> {
    fn open(&mut self, path: &str, _: EntryRef, _: &TocEntry) -> Result<Box<dyn Read + '_>> {
        match self.0.0.get(path) {
            Some(d) => Ok(Box::new(d.as_slice())),
            None => Err(Error::corrupt(path, "unreadable")),
        }
    }

    fn open_stored(
        &mut self,
        path: &str,
        content: EntryRef,
        entry: &TocEntry,
    ) -> Result<Box<dyn Read + '_>> {
        self.open(path, content, entry)
    }
}

fn file(i: u32, p: &str, data: &[u8]) -> NodeItem {
    let mut e = TocEntry::new(p, EntryKind::File, 0o644);
    e.size = data.len() as u64;
    e.digest = Some(Digest::sha256_of(data));
    NodeItem {
        path: p.to_owned(),
        content: EntryRef { layer: 0, entry: i },
        entry: e,
        original: true,
    }
}

fn plan() -> Plan {
    Plan::new(
        vec![First::Dir(
            "ro".into(),
            Some(Box::new(TocEntry::new("ro", EntryKind::Dir, 0o555))),
        )],
        vec![
            file(0, "ro/a", b"alpha"),
            file(1, "b", b"beta"),
            file(2, "c", b"gamma"),
        ],
    )
}

fn source(skip: Option<&str>) -> Source {
    let mut m = HashMap::new();
    for (p, d) in [
        ("ro/a", b"alpha".as_slice()),
        ("b", b"beta"),
        ("c", b"gamma"),
    ] {
        if Some(p) != skip {
            m.insert(p.to_owned(), d.to_vec());
        }
    }
    Source(m)
}

fn names(dir: &Path) -> Result<Vec<String>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::invalid(e.to_string()))? {
        let e = e.map_err(|e| Error::invalid(e.to_string()))?;
        v.push(e.file_name().to_string_lossy().into_owned());
    }
    v.sort();
    Ok(v)
}

#[test]
fn a_failed_checkout_leaves_the_destination_as_it_was() -> Result<()> {
    let tmp = tempfile::tempdir().map_err(|e| Error::invalid(e.to_string()))?;
    let opts = CheckoutOptions { rootless: true };
    // Absent destination: still absent after a failure on the second file.
    let dest = tmp.path().join("root");
    let r = checkout(&plan(), &source(Some("c")), &dest, &opts);
    assert!(matches!(r, Err(Error::Corrupt { .. })), "{r:?}");
    assert!(!dest.exists());
    assert!(names(tmp.path())?.is_empty(), "staging left behind");
    // Existing empty destination: still empty.
    std::fs::create_dir(&dest).map_err(|e| Error::invalid(e.to_string()))?;
    let r = checkout(&plan(), &source(Some("c")), &dest, &opts);
    assert!(matches!(r, Err(Error::Corrupt { .. })), "{r:?}");
    assert!(names(&dest)?.is_empty());
    assert_eq!(names(tmp.path())?, vec!["root"]);
    // The retry succeeds into the same place.
    let report = checkout(&plan(), &source(None), &dest, &opts)?;
    assert_eq!(report.bytes, 14);
    assert_eq!(names(&dest)?, vec!["b", "c", "ro"]);
    assert_eq!(
        std::fs::read(dest.join("ro/a")).map_err(|e| Error::invalid(e.to_string()))?,
        b"alpha"
    );
    assert_eq!(names(tmp.path())?, vec!["root"]);
    // A tree whose read-only directory was finished is removed too.
    let fail_last = Plan::new(plan().first, vec![file(0, "ro/a", b"alpha")]);
    let other = tmp.path().join("other");
    let r = checkout(&fail_last, &source(Some("ro/a")), &other, &opts);
    assert!(r.is_err());
    assert!(!other.exists());
    Ok(())
}

#[test]
fn sparse_files_keep_their_holes() -> Result<()> {
    let size = 64u64 << 30;
    let map = vec![(0, 5), (size - 3, 3)];
    let mut e = TocEntry::new("big", EntryKind::File, 0o644);
    e.size = size;
    e.sparse = Some(map);
    e.digest_form = DigestForm::SparseMap;
    let mut h = content_hasher(&e);
    h.update(b"startend");
    e.digest = Some(h.finish());
    let node = NodeItem {
        path: "big".into(),
        content: EntryRef { layer: 0, entry: 0 },
        entry: e.clone(),
        original: true,
    };
    let src = Source(HashMap::from([("big".to_owned(), b"startend".to_vec())]));
    let tmp = tempfile::tempdir().map_err(|e| Error::invalid(e.to_string()))?;
    let dest = tmp.path().join("root");
    let opts = CheckoutOptions { rootless: true };
    let report = checkout(&Plan::new(vec![], vec![node.clone()]), &src, &dest, &opts)?;
    assert_eq!(report.bytes, 8);
    let meta = std::fs::metadata(dest.join("big")).map_err(|e| Error::invalid(e.to_string()))?;
    assert_eq!(meta.len(), size);
    assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());
    let mut f = std::fs::File::open(dest.join("big")).map_err(|e| Error::invalid(e.to_string()))?;
    let mut tail = [0u8; 8];
    std::io::Seek::seek(&mut f, io::SeekFrom::Start(size - 8))
        .and_then(|_| f.read_exact(&mut tail))
        .map_err(|e| Error::invalid(e.to_string()))?;
    assert_eq!(&tail, b"\0\0\0\0\0end");
    // Stored data that does not match the digest is refused.
    let bad = Source(HashMap::from([("big".to_owned(), b"startEND".to_vec())]));
    let r = checkout(
        &Plan::new(vec![], vec![node]),
        &bad,
        &tmp.path().join("x"),
        &opts,
    );
    assert!(matches!(r, Err(Error::Corrupt { .. })), "{r:?}");
    Ok(())
}
