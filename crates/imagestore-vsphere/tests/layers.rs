//! Scratch and layer disks checked with the real tools after every layer: `qemu-img check`
//! passes, `qemu-img info --backing-chain` shows the chain, the chain converted to raw is an
//! ext4 that `e2fsck -fn` finds clean, and the files `debugfs` reads back are exactly the
//! image the engine computes (core checkout of the same layers).

mod common;

use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Result, bail};
use common::*;
use imagestore_conformance::tree;
use imagestore_core::layer::chain::{ChainView, LayerToc, MemoryToc};
use imagestore_core::layer::checkout::{CheckoutOptions, checkout};
use imagestore_core::layer::compose::MergedView;
use imagestore_core::layer::export::{LayerReader, LayerSource, Plan, SeekingReader};
use imagestore_core::layer::ingest::{IngestLimits, toc_of_slice};
use imagestore_core::layer::toc::Toc;
use imagestore_vsphere::layer::{build_layer, build_scratch};
use tar::{EntryType, Header};

/// Builds a tar in memory.
struct TarB {
    b: tar::Builder<Vec<u8>>,
}

impl Default for TarB {
    fn default() -> Self {
        TarB {
            b: tar::Builder::new(Vec::new()),
        }
    }
}

impl TarB {
    fn header(path: &str, t: EntryType, mode: u32) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(t);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_size(0);
        let _ = h.set_path(path);
        h
    }
    fn dir(mut self, p: &str, mode: u32) -> Result<Self> {
        let mut h = Self::header(p, EntryType::Directory, mode);
        h.set_cksum();
        self.b.append(&h, &[][..])?;
        Ok(self)
    }
    fn file(self, p: &str, data: &[u8]) -> Result<Self> {
        self.file_as(p, data, 0o644, 0, 0, &[])
    }
    fn file_as(
        mut self,
        p: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
        xattrs: &[(&str, &[u8])],
    ) -> Result<Self> {
        if !xattrs.is_empty() {
            let ext: Vec<(String, &[u8])> = xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
                .collect();
            self.b
                .append_pax_extensions(ext.iter().map(|(k, v)| (k.as_str(), *v)))?;
        }
        let mut h = Self::header(p, EntryType::Regular, mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.b.append(&h, data)?;
        Ok(self)
    }
    fn link(mut self, p: &str, t: EntryType, target: &str) -> Result<Self> {
        let mut h = Self::header(p, t, 0o777);
        h.set_link_name(target)?;
        h.set_cksum();
        self.b.append(&h, &[][..])?;
        Ok(self)
    }
    fn dev(mut self, p: &str, t: EntryType, major: u32, minor: u32) -> Result<Self> {
        let mut h = Self::header(p, t, 0o660);
        h.set_device_major(major)?;
        h.set_device_minor(minor)?;
        h.set_cksum();
        self.b.append(&h, &[][..])?;
        Ok(self)
    }
    fn done(self) -> Result<Vec<u8>> {
        Ok(self.b.into_inner()?)
    }
}

struct Mem(Vec<Vec<u8>>);

impl LayerSource for Mem {
    fn open(&self, index: usize) -> imagestore_core::Result<Box<dyn LayerReader>> {
        let bytes = self
            .0
            .get(index)
            .cloned()
            .ok_or_else(|| imagestore_core::Error::invalid("no such layer"))?;
        Ok(Box::new(SeekingReader::new(Cursor::new(bytes))))
    }
}

/// A chain of layer disks in a datastore-like folder, checked after every layer.
struct Chain {
    root: PathBuf,
    disks: Vec<PathBuf>,
    tocs: Vec<Arc<Toc>>,
    tars: Vec<Vec<u8>>,
}

impl Chain {
    fn new(root: &Path) -> Result<Chain> {
        let dir = root.join("scratch");
        std::fs::create_dir_all(&dir)?;
        let disk = dir.join("scratch.vmdk");
        // A small capacity keeps the test quick; the default is covered by the bench.
        build_scratch(&disk, "scratch.vmdk", 1 << 20, &root.join("work"))?;
        qemu_check(&disk)?;
        Ok(Chain {
            root: root.to_path_buf(),
            disks: vec![disk],
            tocs: Vec::new(),
            tars: Vec::new(),
        })
    }

    fn push(&mut self, id: &str, tar: Vec<u8>) -> Result<u64> {
        let lower = ChainView::new(
            self.tocs
                .iter()
                .map(|t| Arc::new(MemoryToc::new(t.clone())) as Arc<dyn LayerToc>)
                .collect(),
        );
        let toc = Arc::new(toc_of_slice(&tar, &lower, IngestLimits::default())?);
        self.tars.push(tar);
        let dir = self.root.join(id);
        std::fs::create_dir_all(&dir)?;
        let out = dir.join(format!("{id}.vmdk"));
        let parent = self.disks.last().cloned().unwrap_or_default();
        let pname = parent
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let pdir = parent
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stats = build_layer(
            &parent,
            &format!("../{pdir}/{pname}"),
            &out,
            &self.tocs,
            toc.clone(),
            &Mem(self.tars.clone()),
            &self.root.join("work"),
        )?;
        self.tocs.push(toc);
        self.disks.push(out);
        self.check()?;
        Ok(stats.disk.bytes)
    }

    /// Every check after a layer; returns the raw image of the top.
    fn check(&self) -> Result<PathBuf> {
        let top = self.disks.last().cloned().unwrap_or_default();
        qemu_check(&top)?;
        let names = backing_chain(&top)?;
        let want: Vec<String> = self
            .disks
            .iter()
            .rev()
            .map(|d| {
                d.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect();
        if names != want {
            bail!("backing chain {names:?}, want {want:?}");
        }
        let raw = self.root.join("top.raw");
        let _ = std::fs::remove_file(&raw);
        to_raw(&top, &raw)?;
        e2fsck_clean(&raw)?;
        // What the filesystem holds, against what the engine says the image is.
        let got = self.root.join("rdump");
        let _ = std::fs::remove_dir_all(&got);
        std::fs::create_dir(&got)?;
        debugfs(&raw, &format!("rdump / {}", got.display()))?;
        let want = self.root.join("checkout");
        let _ = std::fs::remove_dir_all(&want);
        let view = MergedView::build(self.tocs.clone());
        checkout(
            &Plan::of_view(&view),
            &Mem(self.tars.clone()),
            &want,
            &CheckoutOptions::default(),
        )?;
        let mut left = tree::walk(&got)?;
        let mut right = tree::walk(&want)?;
        // rdump writes neither device nodes nor hardlinks: those are checked by inode below.
        right
            .nodes
            .retain(|_, n| !matches!(n.kind, 'c' | 'b' | 'p'));
        for t in [&mut left, &mut right] {
            t.links.clear();
            for n in t.nodes.values_mut() {
                n.nlink = 1;
            }
        }
        let skeleton: BTreeSet<String> = [
            "lost+found",
            "etc",
            "lib",
            "lib/modules",
            "proc",
            "sys",
            "run",
            ".tether",
            "etc/hostname",
            "etc/hosts",
            "etc/resolv.conf",
            "etc/mtab",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        let d = tree::differences(&left, &right, &skeleton);
        if !d.is_empty() {
            bail!("ext4 differs from the image:\n{}", d.join("\n"));
        }
        Ok(raw)
    }
}

fn stat(raw: &Path, p: &str) -> Result<String> {
    debugfs(raw, &format!("stat \"{p}\""))
}

fn inode_of(raw: &Path, p: &str) -> Result<String> {
    let s = stat(raw, p)?;
    Ok(s.split_whitespace().nth(1).unwrap_or_default().to_owned())
}

#[test]
fn layers_apply_with_every_entry_kind() -> Result<()> {
    if !have(&["qemu-img", "e2fsck", "debugfs", "mke2fs"]) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mut c = Chain::new(dir.path())?;
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let l1 = TarB::default()
        .dir("app", 0o755)?
        .dir("app/data", 0o750)?
        .file("app/hello.txt", b"hello\n")?
        .file_as(
            "app/secret",
            b"s3cret",
            0o600,
            1000,
            2000,
            &[("user.tag", b"v1")],
        )?
        .file("app/data/big.bin", &big)?
        .file("deep/implied/dirs/file", b"x")?
        .link("app/link", EntryType::Symlink, "hello.txt")?
        .link("app/abs", EntryType::Symlink, "/etc/mtab")?
        .link("app/hard", EntryType::Link, "app/hello.txt")?
        .dev("dev/null", EntryType::Char, 1, 3)?
        .dev("dev/sda", EntryType::Block, 8, 0)?
        .dev("dev/fifo", EntryType::Fifo, 0, 0)?
        .file("etc/hostname", b"box\n")?
        .done()?;
    c.push("l1", l1)?;
    let raw = c.check()?;
    let s = stat(&raw, "/app/secret")?;
    assert!(
        s.contains("User:  1000") && s.contains("Group:  2000"),
        "{s}"
    );
    assert!(s.contains("Mode:  0600"), "{s}");
    assert!(s.contains("mtime: 0x5f5e1000"), "{s}");
    let x = debugfs(&raw, "ea_get /app/secret user.tag")?;
    assert!(x.contains("v1"), "{x}");
    let dev = stat(&raw, "/dev/null")?;
    assert!(
        dev.contains("character special") && dev.contains("01:03"),
        "{dev}"
    );
    assert!(stat(&raw, "/dev/sda")?.contains("block special"));
    assert!(stat(&raw, "/dev/fifo")?.contains("FIFO"));
    assert_eq!(
        inode_of(&raw, "/app/hard")?,
        inode_of(&raw, "/app/hello.txt")?
    );
    assert!(stat(&raw, "/app/hard")?.contains("Links: 2"));

    // Whiteouts, an opaque directory, replacements, and a hardlink to a lower file.
    let l2 = TarB::default()
        .file("app/.wh.link", b"")?
        .file("app/data/.wh..wh..opq", b"")?
        .file("app/data/new", b"new")?
        .file("deep/.wh.implied", b"")?
        .file("app/hello.txt", b"replaced\n")?
        .dir("app/secret", 0o700)?
        .file("etc/.wh.hosts", b"")?
        .link("app/hard2", EntryType::Link, "app/data/new")?
        .link("app/hello-old", EntryType::Link, "app/hard")?
        .done()?;
    c.push("l2", l2)?;
    let raw = c.check()?;
    assert!(debugfs(&raw, "ls /app")?.contains("hard2"));
    assert_eq!(
        debugfs(&raw, "cat /app/hard")?,
        "hello\n",
        "a link keeps its data"
    );
    assert_eq!(debugfs(&raw, "cat /app/hello.txt")?, "replaced\n");
    // A small layer makes a small delta disk.
    let l3 = TarB::default().file("one", &vec![7u8; 1 << 20])?.done()?;
    let bytes = c.push("l3", l3)?;
    assert!(bytes < 4 << 20, "1 MiB layer made a {bytes}-byte delta");
    Ok(())
}

#[test]
fn a_directory_of_ten_thousand_entries() -> Result<()> {
    if !have(&["qemu-img", "e2fsck", "debugfs", "mke2fs"]) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mut c = Chain::new(dir.path())?;
    let mut t = TarB::default().dir("many", 0o755)?;
    for i in 0..10_000 {
        t = t.file(&format!("many/f{i:05}"), format!("{i}").as_bytes())?;
    }
    c.push("big", t.done()?)?;
    let t = TarB::default().file("many/.wh.f00042", b"")?.done()?;
    c.push("less", t)?;
    Ok(())
}
