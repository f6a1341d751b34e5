//! Named files of an image source: a directory, or a tar archive indexed once so that each
//! member is read in place (by offset) without unpacking the archive.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use imagestore_core::ByteStream;
use imagestore_core::layer::stream::spawn_producer;
use imagestore_core::layer::tar_reader::{RawKind, TarLimits, TarReader};

use crate::error::{Error, Result};

/// How many symlinks are followed when resolving an archive member.
const MAX_LINKS: usize = 8;

/// A directory or an indexed tar archive.
#[derive(Debug, Clone)]
pub enum Files {
    /// Members are files below this directory.
    Dir(PathBuf),
    /// Members are regular files inside this archive.
    Tar(Arc<TarIndex>),
}

/// Where each regular member of an archive lies.
#[derive(Debug)]
pub struct TarIndex {
    path: PathBuf,
    members: HashMap<String, (u64, u64)>,
}

/// Normalises a member name: no leading `./` or `/`, no `.` components; `None` if it climbs
/// out with `..` or is empty.
pub fn normalize(name: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            p => out.push(p),
        }
    }
    if out.is_empty() {
        None
    } else {
        Some(out.join("/"))
    }
}

fn link_target(member: &str, target: &str, symlink: bool) -> Option<String> {
    if target.starts_with('/') || !symlink {
        // Hardlinks name a member from the archive root; absolute symlinks are taken as such.
        return normalize(target);
    }
    let dir = member.rsplit_once('/').map_or("", |(d, _)| d);
    normalize(&format!("{dir}/{target}"))
}

impl TarIndex {
    /// Reads every header of the archive at `path` (seeking over member data). The archive
    /// is as untrusted as a layer, so it is walked by the core tar reader with its limits
    /// (bounded extension headers, exact end of archive, no smuggled sizes); a malformed or
    /// hostile archive is [`Error::Context`] around the core's `BadArchive`.
    pub fn build(path: &Path) -> Result<TarIndex> {
        Self::build_with(path, TarLimits::default())
    }

    /// [`TarIndex::build`] with explicit tar limits.
    pub fn build_with(path: &Path, limits: TarLimits) -> Result<TarIndex> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut reader = TarReader::new(BufReader::new(file), limits);
        let refused = |e: imagestore_core::Error| Error::context(path.display(), e);
        let mut members = HashMap::new();
        let mut links: Vec<(String, String, bool)> = Vec::new();
        while let Some(entry) = reader.next_entry().map_err(refused)? {
            reader.seek_past_data().map_err(refused)?;
            let Some(name) = normalize(&entry.name) else {
                continue;
            };
            match (entry.kind, entry.link) {
                (RawKind::File, _) if entry.sparse.is_none() => {
                    members.insert(name, (entry.data_offset, entry.stored));
                }
                (RawKind::Symlink, Some(target)) => links.push((name, target, true)),
                (RawKind::Hardlink, Some(target)) => links.push((name, target, false)),
                _ => {}
            }
        }
        // Links to regular members (docker-archives link `<id>/layer.tar` to `<digest>.tar`).
        for _ in 0..MAX_LINKS {
            let mut changed = false;
            for (name, target, symlink) in &links {
                if members.contains_key(name) {
                    continue;
                }
                if let Some(t) = link_target(name, target, *symlink)
                    && let Some(loc) = members.get(&t).copied()
                {
                    members.insert(name.clone(), loc);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        Ok(TarIndex {
            path: path.to_path_buf(),
            members,
        })
    }

    /// True if the archive has a regular member `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.members.contains_key(name)
    }
}

impl Files {
    /// A description of member `name` for messages.
    pub fn describe(&self, name: &str) -> String {
        match self {
            Files::Dir(d) => d.join(name).display().to_string(),
            Files::Tar(t) => format!("{}:{name}", t.path.display()),
        }
    }

    /// The directory or archive.
    pub fn root(&self) -> &Path {
        match self {
            Files::Dir(d) => d,
            Files::Tar(t) => &t.path,
        }
    }

    fn dir_path(dir: &Path, name: &str) -> Result<PathBuf> {
        match normalize(name) {
            Some(n) if n == name.trim_start_matches("./") => Ok(dir.join(n)),
            _ => Err(Error::invalid(
                dir.display(),
                format!("member name {name:?} leaves the directory"),
            )),
        }
    }

    /// True if member `name` exists.
    pub fn exists(&self, name: &str) -> bool {
        match self {
            Files::Dir(d) => Self::dir_path(d, name).is_ok_and(|p| p.is_file()),
            Files::Tar(t) => normalize(name).is_some_and(|n| t.contains(&n)),
        }
    }

    /// Opens member `name` as a blocking reader and returns it with its size.
    pub fn open_blocking(&self, name: &str) -> Result<(Box<dyn Read + Send>, u64)> {
        match self {
            Files::Dir(d) => {
                let p = Self::dir_path(d, name)?;
                let f = File::open(&p).map_err(|e| Error::io(&p, e))?;
                let size = f.metadata().map_err(|e| Error::io(&p, e))?.len();
                Ok((Box::new(f), size))
            }
            Files::Tar(t) => {
                let n = normalize(name).unwrap_or_default();
                let (offset, size) =
                    t.members.get(&n).copied().ok_or_else(|| {
                        Error::NotFound(format!("{} not found", self.describe(name)))
                    })?;
                let mut f = File::open(&t.path).map_err(|e| Error::io(&t.path, e))?;
                f.seek(SeekFrom::Start(offset))
                    .map_err(|e| Error::io(&t.path, e))?;
                Ok((Box::new(f.take(size)), size))
            }
        }
    }

    /// Reads member `name` into memory, refusing more than `max` bytes.
    pub async fn read(&self, name: &str, max: u64) -> Result<Vec<u8>> {
        let files = self.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || {
            let (r, size) = files.open_blocking(&name)?;
            if size > max {
                return Err(Error::invalid(
                    files.describe(&name),
                    format!("{size} bytes; at most {max} are read into memory"),
                ));
            }
            let mut buf = Vec::with_capacity(size as usize);
            r.take(max)
                .read_to_end(&mut buf)
                .map_err(|e| Error::io(files.describe(&name), e))?;
            Ok(buf)
        })
        .await
        .map_err(|e| Error::invalid(name_of(self), format!("reader task failed: {e}")))?
    }

    /// Member `name` as a stream, read on a blocking thread in large chunks.
    pub fn stream(&self, name: &str) -> Result<(ByteStream, u64)> {
        let (mut r, size) = self.open_blocking(name)?;
        let what = self.describe(name);
        let stream = spawn_producer(move |w| {
            std::io::copy(&mut r, w)
                .map(|_| ())
                .map_err(|e| imagestore_core::Error::invalid(format!("reading {what}: {e}")))
        });
        Ok((stream, size))
    }

    /// The first bytes of member `name` (fewer if it is shorter).
    pub async fn peek(&self, name: &str, n: usize) -> Result<Vec<u8>> {
        let files = self.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || {
            let (r, _) = files.open_blocking(&name)?;
            let mut buf = Vec::with_capacity(n);
            r.take(n as u64)
                .read_to_end(&mut buf)
                .map_err(|e| Error::io(files.describe(&name), e))?;
            Ok(buf)
        })
        .await
        .map_err(|e| Error::invalid(name_of(self), format!("reader task failed: {e}")))?
    }
}

fn name_of(f: &Files) -> String {
    f.root().display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_inside() {
        assert_eq!(
            normalize("./blobs/sha256/ab").as_deref(),
            Some("blobs/sha256/ab")
        );
        assert_eq!(
            normalize("/manifest.json").as_deref(),
            Some("manifest.json")
        );
        assert_eq!(normalize("a/../b").as_deref(), Some("b"));
        assert_eq!(normalize("../x"), None);
        assert_eq!(normalize("./"), None);
        assert_eq!(
            link_target("abc/layer.tar", "../0123.tar", true).as_deref(),
            Some("0123.tar")
        );
        assert_eq!(link_target("abc/layer.tar", "../../x", true), None);
    }

    #[test]
    fn archive_members_are_read_in_place_and_links_resolved() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        let path = dir.path().join("a.tar");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(5);
        h.set_mode(0o644);
        b.append_data(&mut h, "blob.tar", &b"hello"[..])
            .map_err(|e| Error::io(&path, e))?;
        let mut l = tar::Header::new_ustar();
        l.set_entry_type(tar::EntryType::Symlink);
        l.set_size(0);
        b.append_link(&mut l, "id/layer.tar", "../blob.tar")
            .map_err(|e| Error::io(&path, e))?;
        let mut l = tar::Header::new_ustar();
        l.set_entry_type(tar::EntryType::Symlink);
        l.set_size(0);
        b.append_link(&mut l, "evil/layer.tar", "../../../etc/passwd")
            .map_err(|e| Error::io(&path, e))?;
        std::fs::write(&path, b.into_inner().map_err(|e| Error::io(&path, e))?)
            .map_err(|e| Error::io(&path, e))?;
        let files = Files::Tar(Arc::new(TarIndex::build(&path)?));
        assert!(files.exists("blob.tar"));
        assert!(files.exists("./id/layer.tar"));
        assert!(!files.exists("evil/layer.tar"));
        let (mut r, size) = files.open_blocking("id/layer.tar")?;
        let mut s = String::new();
        r.read_to_string(&mut s).map_err(|e| Error::io(&path, e))?;
        assert_eq!((s.as_str(), size), ("hello", 5));
        Ok(())
    }

    /// Writes `bytes` as an archive and indexes it.
    fn index_of(bytes: &[u8]) -> Result<TarIndex> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        let path = dir.path().join("outer.tar");
        std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
        TarIndex::build(&path)
    }

    fn refusal(r: Result<TarIndex>) -> String {
        match r {
            Err(Error::Context { source, .. }) => match *source {
                Error::Store(imagestore_core::Error::BadArchive { reason, .. }) => reason,
                other => panic!("expected a bad archive, got {other:?}"),
            },
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn outer(f: impl FnOnce(&mut tar::Builder<Vec<u8>>) -> std::io::Result<()>) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        f(&mut b).expect("build");
        let mut h = tar::Header::new_ustar();
        h.set_size(2);
        h.set_mode(0o644);
        b.append_data(&mut h, "manifest.json", &b"[]"[..])
            .expect("member");
        b.into_inner().expect("finish")
    }

    #[test]
    fn outer_archives_go_through_the_core_reader_and_its_limits() -> Result<()> {
        // One oversized PAX header.
        let big = vec![b'a'; (1 << 20) + 10];
        let r = refusal(index_of(&outer(|b| {
            b.append_pax_extensions([("comment", big.as_slice())])
        })));
        assert!(r.contains("the maximum is 1048576"), "{r}");
        // A chain of PAX headers, each under the bound: refused at the second.
        let part = vec![b'v'; 100_000];
        let keys: Vec<String> = (0..12).map(|i| format!("comment.{i}")).collect();
        let r = refusal(index_of(&outer(|b| {
            for k in &keys {
                b.append_pax_extensions([(k.as_str(), part.as_slice())])?;
            }
            Ok(())
        })));
        assert!(r.contains("a second PAX extended header"), "{r}");
        // Hidden data after the end of the archive.
        let mut hidden = outer(|_| Ok(()));
        hidden.extend_from_slice(b"more");
        assert!(refusal(index_of(&hidden)).contains("after the end-of-archive marker"));
        // Not a tar at all.
        assert!(refusal(index_of(&b"plain text, no tar".repeat(40))).contains("not a tar"));
        // The same archive without the hostile header indexes fine.
        let index = index_of(&outer(|_| Ok(())))?;
        assert!(index.contains("manifest.json"));
        Ok(())
    }

    #[test]
    fn directory_members_cannot_escape() {
        let files = Files::Dir(PathBuf::from("/tmp/layout"));
        assert!(files.open_blocking("../etc/passwd").is_err());
        assert!(!files.exists("../../etc/passwd"));
    }
}
