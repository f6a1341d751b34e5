//! A file tree held in memory, written out as a tar whose bytes depend on nothing but the
//! tree: entries sorted by path, every time stamp `SOURCE_DATE_EPOCH`, owner root:root, modes
//! 0755 (directories, programs) or 0644.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{Context, Result, bail};

/// One entry of a [`Tree`].
#[derive(Debug, Clone)]
pub enum Node {
    /// A directory.
    Dir,
    /// A regular file with its bytes and permission bits.
    File {
        /// The content.
        data: Vec<u8>,
        /// Permission bits: 0o755 or 0o644.
        mode: u32,
    },
}

/// Files and directories by relative path (`usr/bin/imagestore`), parents added on insert.
#[derive(Debug, Default, Clone)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

impl Tree {
    /// Adds a file (0o644) and its missing parent directories.
    pub fn file(&mut self, path: &str, data: Vec<u8>) -> Result<()> {
        self.insert(path, data, 0o644)
    }

    /// Adds a program (0o755) and its missing parent directories.
    pub fn program(&mut self, path: &str, data: Vec<u8>) -> Result<()> {
        self.insert(path, data, 0o755)
    }

    fn insert(&mut self, path: &str, data: Vec<u8>, mode: u32) -> Result<()> {
        if path.is_empty()
            || path.starts_with('/')
            || path.ends_with('/')
            || path
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            bail!("{path:?} is not a relative path of plain components");
        }
        let mut parent = String::new();
        for component in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, p)| p)
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(component);
            match self.nodes.get(&parent) {
                Some(Node::File { .. }) => bail!("{parent} is a file, {path} cannot be under it"),
                Some(Node::Dir) => {}
                None => {
                    self.nodes.insert(parent.clone(), Node::Dir);
                }
            }
        }
        if self
            .nodes
            .insert(path.to_string(), Node::File { data, mode })
            .is_some()
        {
            bail!("{path} added twice");
        }
        Ok(())
    }

    /// Every entry in path order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.nodes.iter().map(|(p, n)| (p.as_str(), n))
    }

    /// The tree as a tar, each path under `prefix` (`"imagestore-0.1.0/"`; `"./"` for a
    /// Debian package gives `./` as the first entry and the paths as they are), with `mtime`
    /// as every entry's time stamp. With a prefix ending in a `/`, the prefix directory
    /// itself is the first entry.
    pub fn tar(&self, prefix: &str, mtime: u64) -> Result<Vec<u8>> {
        let mut tar = tar::Builder::new(Vec::new());
        let header = |kind: tar::EntryType, mode: u32, size: u64| -> Result<tar::Header> {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(size);
            h.set_mtime(mtime);
            h.set_uid(0);
            h.set_gid(0);
            h.set_username("root").context("tar user name")?;
            h.set_groupname("root").context("tar group name")?;
            Ok(h)
        };
        if let Some(dir) = prefix.strip_suffix('/').filter(|d| !d.is_empty()) {
            let mut h = header(tar::EntryType::Directory, 0o755, 0)?;
            tar.append_data(&mut h, format!("{dir}/"), std::io::empty())
                .with_context(|| format!("adding {dir}/"))?;
        }
        for (path, node) in &self.nodes {
            let name = format!("{prefix}{path}");
            match node {
                Node::Dir => {
                    let mut h = header(tar::EntryType::Directory, 0o755, 0)?;
                    tar.append_data(&mut h, format!("{name}/"), std::io::empty())
                }
                Node::File { data, mode } => {
                    let mut h = header(tar::EntryType::Regular, *mode, data.len() as u64)?;
                    tar.append_data(&mut h, &name, data.as_slice())
                }
            }
            .with_context(|| format!("adding {name}"))?;
        }
        tar.into_inner().context("finishing the tar")
    }
}

/// gzip with a fixed header (no name, time stamp 0) and the best compression: the same bytes
/// in give the same bytes out.
pub fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(data).context("gzip")?;
    gz.finish().context("gzip")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(tar: &[u8]) -> Vec<(String, u32, u64, u64, u64)> {
        let mut a = tar::Archive::new(tar);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.mode().unwrap(),
                    h.mtime().unwrap(),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn entries_are_sorted_with_parents_and_fixed_metadata() {
        let mut t = Tree::default();
        t.file("share/man/man1/b.1", b"b".to_vec()).unwrap();
        t.program("bin/imagestore", b"elf".to_vec()).unwrap();
        t.file("share/man/man1/a.1", b"a".to_vec()).unwrap();
        let tar = t.tar("pkg/", 1_700_000_000).unwrap();
        let got = listing(&tar);
        let names: Vec<_> = got.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "pkg/",
                "pkg/bin/",
                "pkg/bin/imagestore",
                "pkg/share/",
                "pkg/share/man/",
                "pkg/share/man/man1/",
                "pkg/share/man/man1/a.1",
                "pkg/share/man/man1/b.1",
            ]
        );
        assert!(
            got.iter()
                .all(|e| e.2 == 1_700_000_000 && e.3 == 0 && e.4 == 0)
        );
        assert_eq!(got[2].1, 0o755);
        assert_eq!(got[6].1, 0o644);
        assert_eq!(got[1].1, 0o755);
    }

    #[test]
    fn insertion_order_does_not_change_the_bytes() {
        let mut a = Tree::default();
        a.file("x/1", b"1".to_vec()).unwrap();
        a.file("y", b"2".to_vec()).unwrap();
        let mut b = Tree::default();
        b.file("y", b"2".to_vec()).unwrap();
        b.file("x/1", b"1".to_vec()).unwrap();
        assert_eq!(
            gzip(&a.tar("./", 5).unwrap()).unwrap(),
            gzip(&b.tar("./", 5).unwrap()).unwrap()
        );
    }

    #[test]
    fn refuses_paths_that_leave_the_tree_or_collide() {
        let mut t = Tree::default();
        assert!(t.file("../x", vec![]).is_err());
        assert!(t.file("/abs", vec![]).is_err());
        assert!(t.file("a//b", vec![]).is_err());
        t.file("a", vec![]).unwrap();
        assert!(t.file("a/b", vec![]).is_err());
        assert!(t.file("a", vec![]).is_err());
    }
}
