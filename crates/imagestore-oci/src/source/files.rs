//! Named files of an image source: a directory, or a tar archive indexed once so that each
//! member is read in place (by offset) without unpacking the archive.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use imagestore_core::ByteStream;
use imagestore_core::layer::stream::spawn_producer;

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
    /// Reads every header of the archive at `path` (seeking over member data).
    pub fn build(path: &Path) -> Result<TarIndex> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut archive = tar::Archive::new(file);
        let bad =
            |e: std::io::Error| Error::invalid(path.display(), format!("not a tar archive: {e}"));
        let mut members = HashMap::new();
        let mut links: Vec<(String, String, bool)> = Vec::new();
        for entry in archive.entries_with_seek().map_err(bad)? {
            let entry = entry.map_err(bad)?;
            let name = entry.path().map_err(bad)?.to_string_lossy().into_owned();
            let Some(name) = normalize(&name) else {
                continue;
            };
            let kind = entry.header().entry_type();
            if kind.is_file() || kind == tar::EntryType::Continuous {
                members.insert(name, (entry.raw_file_position(), entry.size()));
            } else if (kind.is_symlink() || kind.is_hard_link())
                && let Ok(Some(target)) = entry.link_name()
            {
                links.push((
                    name,
                    target.to_string_lossy().into_owned(),
                    kind.is_symlink(),
                ));
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

    #[test]
    fn directory_members_cannot_escape() {
        let files = Files::Dir(PathBuf::from("/tmp/layout"));
        assert!(files.open_blocking("../etc/passwd").is_err());
        assert!(!files.exists("../../etc/passwd"));
    }
}
