//! Comparing two directory trees the way a container runtime would see them: paths, types,
//! permission bits, symlink targets, file contents and hardlink groups.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};

/// What a path is, for comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// `f` file, `d` dir, `l` symlink, `c`/`b` device, `p` fifo.
    pub kind: char,
    /// Permission, set-id and sticky bits.
    pub mode: u32,
    /// Symlink target.
    pub link: Option<String>,
    /// sha256 of a file's contents.
    pub digest: Option<String>,
    /// Number of paths sharing the inode (files only).
    pub nlink: u64,
}

/// A walked tree: relative path → node, and the hardlink groups (sets of paths per inode).
#[derive(Debug, Default)]
pub struct Tree {
    /// Every path below the root.
    pub nodes: BTreeMap<String, Node>,
    /// Paths grouped by inode, for inodes with more than one path.
    pub links: BTreeSet<BTreeSet<String>>,
}

/// Walks `root` without following symlinks.
pub fn walk(root: &Path) -> Result<Tree> {
    let mut t = Tree::default();
    let mut by_inode: BTreeMap<(u64, u64), BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let p = e.path();
            let rel = p.strip_prefix(root)?.to_string_lossy().into_owned();
            let m = std::fs::symlink_metadata(&p)?;
            let ft = m.file_type();
            let (kind, link, digest) = if ft.is_dir() {
                stack.push(p.clone());
                ('d', None, None)
            } else if ft.is_symlink() {
                (
                    'l',
                    Some(std::fs::read_link(&p)?.to_string_lossy().into_owned()),
                    None,
                )
            } else if ft.is_file() {
                let bytes =
                    std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
                ('f', None, Some(format!("{:x}", Sha256::digest(&bytes))))
            } else if ft.is_char_device() {
                ('c', None, None)
            } else if ft.is_block_device() {
                ('b', None, None)
            } else {
                ('p', None, None)
            };
            let nlink = if kind == 'f' { m.nlink() } else { 1 };
            if nlink > 1 {
                by_inode
                    .entry((m.dev(), m.ino()))
                    .or_default()
                    .insert(rel.clone());
            }
            t.nodes.insert(
                rel,
                Node {
                    kind,
                    mode: m.mode() & 0o7777,
                    link,
                    digest,
                    nlink,
                },
            );
        }
    }
    t.links = by_inode.into_values().filter(|g| g.len() > 1).collect();
    Ok(t)
}

/// The differences between two trees, as readable lines (empty when equal). Paths in
/// `only_left_ok` may exist on the left only.
pub fn differences(left: &Tree, right: &Tree, only_left_ok: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    for (p, l) in &left.nodes {
        match right.nodes.get(p) {
            None if only_left_ok.contains(p) => {}
            None => out.push(format!("only left: {p}")),
            Some(r) if r != l => out.push(format!("differs: {p}: {l:?} vs {r:?}")),
            Some(_) => {}
        }
    }
    for p in right.nodes.keys() {
        if !left.nodes.contains_key(p) {
            out.push(format!("only right: {p}"));
        }
    }
    if left.links != right.links {
        let l: BTreeSet<_> = left.links.difference(&right.links).collect();
        let r: BTreeSet<_> = right.links.difference(&left.links).collect();
        out.push(format!("hardlink groups differ: left {l:?}, right {r:?}"));
    }
    out
}

/// Hashes a file's length and each of its data extents (offset and bytes): a sparse file,
/// such as a thin flat disk as large as the disk, costs what it stores, not its length.
fn hash_data(p: &Path, h: &mut Sha256) -> Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;

    let f = std::fs::File::open(p)?;
    let len = f.metadata()?.len();
    h.update(len.to_le_bytes());
    let seek = |at: u64, whence: libc::c_int| -> Option<u64> {
        let at = libc::off_t::try_from(at).ok()?;
        // SAFETY: lseek on a file descriptor this function owns; no memory is passed.
        let r = unsafe { libc::lseek(f.as_raw_fd(), at, whence) };
        u64::try_from(r).ok()
    };
    let mut at = 0;
    let mut buf = vec![0u8; 1 << 20];
    while at < len {
        // No data past `at` (ENXIO): the rest is a hole.
        let Some(start) = seek(at, libc::SEEK_DATA) else {
            break;
        };
        let end = seek(start, libc::SEEK_HOLE).unwrap_or(len).min(len);
        h.update(start.to_le_bytes());
        let mut pos = start;
        while pos < end {
            let n = ((end - pos) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], pos)?;
            h.update(&buf[..n]);
            pos += n as u64;
        }
        at = end;
    }
    Ok(())
}

/// A digest of everything below `dir`, byte for byte: names, kinds and file contents (the data
/// extents of sparse files), in name order (for "nothing changed" checks on a backend's own files).
pub fn fingerprint(dir: &Path) -> Result<String> {
    fn walk(dir: &Path, base: &Path, h: &mut Sha256) -> Result<()> {
        let mut names: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let p = e.path();
            let rel = p.strip_prefix(base)?.to_string_lossy().into_owned();
            h.update(rel.as_bytes());
            if e.file_type()?.is_dir() {
                h.update(b"/");
                walk(&p, base, h)?;
            } else {
                h.update(b"=");
                hash_data(&p, h)?;
            }
            h.update(b"\n");
        }
        Ok(())
    }
    let mut h = Sha256::new();
    walk(dir, dir, &mut h)?;
    Ok(format!("{:x}", h.finalize()))
}
