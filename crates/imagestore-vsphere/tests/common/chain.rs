//! A chain of scratch and layer disks built in a folder, checked with the real tools after
//! every layer, and an in-memory tar builder for test layers.

use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Result, bail};
use imagestore_conformance::tree;
use imagestore_core::layer::chain::{ChainView, LayerToc, MemoryToc};
use imagestore_core::layer::checkout::{CheckoutOptions, checkout};
use imagestore_core::layer::compose::MergedView;
use imagestore_core::layer::export::{LayerReader, LayerSource, Plan, SeekingReader};
use imagestore_core::layer::ingest::{IngestLimits, toc_of_slice};
use imagestore_core::layer::toc::Toc;
use imagestore_vsphere::build::{base_name, build_base, build_layer, build_scratch};
use imagestore_vsphere::ext4::LayerData;
use imagestore_vsphere::fsread::FsContent;
use imagestore_vsphere::vmdk::format::DiskFormat;
use tar::{EntryType, Header};

use super::*;

/// Builds a tar in memory.
pub struct TarB {
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
    pub fn dir(mut self, p: &str, mode: u32) -> Result<Self> {
        let mut h = Self::header(p, EntryType::Directory, mode);
        h.set_cksum();
        self.b.append(&h, &[][..])?;
        Ok(self)
    }
    pub fn file(self, p: &str, data: &[u8]) -> Result<Self> {
        self.file_as(p, data, 0o644, 0, 0, &[])
    }
    pub fn file_as(
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
        // Paths longer than the header holds go in GNU long-name entries.
        self.b.append_data(&mut h, p, data)?;
        Ok(self)
    }
    pub fn link(mut self, p: &str, t: EntryType, target: &str) -> Result<Self> {
        let mut h = Self::header(p, t, 0o777);
        self.b.append_link(&mut h, p, target)?;
        Ok(self)
    }
    pub fn dev(mut self, p: &str, t: EntryType, major: u32, minor: u32) -> Result<Self> {
        let mut h = Self::header(p, t, 0o660);
        h.set_device_major(major)?;
        h.set_device_minor(minor)?;
        h.set_cksum();
        self.b.append(&h, &[][..])?;
        Ok(self)
    }
    /// A GNU sparse file of logical size `size` holding `segments` (offset, bytes).
    pub fn sparse(mut self, p: &str, size: u64, segments: &[(u64, Vec<u8>)]) -> Result<Self> {
        let mut h = Self::header(p, EntryType::GNUSparse, 0o644);
        let stored: Vec<u8> = segments.iter().flat_map(|(_, d)| d.clone()).collect();
        h.set_size(stored.len() as u64);
        let octal = |v: u64| {
            let mut f = [0u8; 12];
            f[..11].copy_from_slice(format!("{v:011o}").as_bytes());
            f
        };
        let gnu = h
            .as_gnu_mut()
            .ok_or_else(|| anyhow::anyhow!("not a GNU header"))?;
        if segments.len() > 4 {
            bail!("at most 4 segments");
        }
        for (i, (off, d)) in segments.iter().enumerate() {
            gnu.sparse[i].offset = octal(*off);
            gnu.sparse[i].numbytes = octal(d.len() as u64);
        }
        gnu.realsize = octal(size);
        h.set_cksum();
        self.b.append(&h, &stored[..])?;
        Ok(self)
    }
    pub fn done(self) -> Result<Vec<u8>> {
        Ok(self.b.into_inner()?)
    }
}

/// Plain (uncompressed) layer tars shared without copying.
#[derive(Clone)]
pub struct Bytes(pub Arc<Vec<u8>>);

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Layer data by index.
pub struct Mem(pub Vec<Bytes>);

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
pub struct Chain {
    pub root: PathBuf,
    pub disks: Vec<PathBuf>,
    pub tocs: Vec<Arc<Toc>>,
    pub tars: Vec<Bytes>,
    pub format: DiskFormat,
}

impl Chain {
    pub fn new(root: &Path, capacity_kib: u64) -> Result<Chain> {
        Self::with_format(root, capacity_kib, DiskFormat::MonolithicSparse)
    }

    /// A chain whose deltas are in `format`; in a native format it starts with a flat base
    /// disk under scratch's.
    pub fn with_format(root: &Path, capacity_kib: u64, format: DiskFormat) -> Result<Chain> {
        let dir = root.join("scratch");
        std::fs::create_dir_all(&dir)?;
        let disk = dir.join("scratch.vmdk");
        let mut disks = Vec::new();
        let mut base_cid = None;
        if format.is_native() {
            let base = dir.join(base_name("scratch.vmdk"));
            base_cid = Some(build_base(&base, capacity_kib)?);
            qemu_check(&base)?;
            disks.push(base);
        }
        build_scratch(&disk, "scratch.vmdk", capacity_kib, format, base_cid)?;
        qemu_check(&disk)?;
        disks.push(disk);
        let c = Chain {
            root: root.to_path_buf(),
            disks,
            tocs: Vec::new(),
            tars: Vec::new(),
            format,
        };
        c.check_disks()?;
        Ok(c)
    }

    /// Adds a layer (a plain tar) and checks the chain; returns the delta disk's size.
    pub fn push(&mut self, id: &str, tar: Vec<u8>) -> Result<u64> {
        self.push_checked(id, tar, true)
    }

    /// [`Chain::push`]; without `full` the files are not read back (only the disk and
    /// filesystem checks run).
    pub fn push_checked(&mut self, id: &str, tar: Vec<u8>, full: bool) -> Result<u64> {
        let lower = ChainView::new(
            self.tocs
                .iter()
                .map(|t| Arc::new(MemoryToc::new(t.clone())) as Arc<dyn LayerToc>)
                .collect(),
        );
        let toc = Arc::new(toc_of_slice(&tar, &lower, IngestLimits::default())?);
        self.tars.push(Bytes(Arc::new(tar)));
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
        let tar_file = self.root.join(format!("{id}.tar"));
        std::fs::write(
            &tar_file,
            self.tars.last().map(|b| b.0.as_slice()).unwrap_or_default(),
        )?;
        let stats = build_layer(
            &parent,
            &format!("../{pdir}/{pname}"),
            &out,
            &self.tocs,
            toc.clone(),
            LayerData::Tar(&tar_file),
        )?;
        std::fs::remove_file(&tar_file)?;
        self.tocs.push(toc);
        self.disks.push(out);
        if full {
            self.check()?;
        } else {
            self.check_disks()?;
        }
        Ok(stats.disk.bytes)
    }

    /// Every check after a layer; returns the raw image of the top.
    /// The disk and filesystem checks; returns the raw image of the top.
    pub fn check_disks(&self) -> Result<PathBuf> {
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
        let types = create_types(&top)?;
        let mut want_types = vec![self.format.create_type(); self.disks.len()];
        if self.format.is_native() {
            want_types[self.disks.len() - 1] = "vmfs";
        }
        if types != want_types {
            bail!("create types {types:?}, want {want_types:?}");
        }
        let raw = self.root.join("top.raw");
        let _ = std::fs::remove_file(&raw);
        to_raw(&top, &raw)?;
        e2fsck_clean(&raw)?;
        Ok(raw)
    }

    /// Every check after a layer; returns the raw image of the top.
    pub fn check(&self) -> Result<PathBuf> {
        let raw = self.check_disks()?;
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
        let skeleton = skeleton_paths();
        compare(&raw, &got, &want, &skeleton)?;
        // The same image checked out with its file data read through the disk chain.
        let top = self.disks.last().cloned().unwrap_or_default();
        let chain = Arc::new(imagestore_vsphere::disk::open_chain(&top)?);
        let through = self.root.join("through-chain");
        let _ = std::fs::remove_dir_all(&through);
        checkout(
            &Plan::of_view(&view),
            &FsContent::of_chain(chain, top.display().to_string()),
            &through,
            &CheckoutOptions::default(),
        )?;
        let d = tree::differences(
            &tree::walk(&through)?,
            &tree::walk(&want)?,
            &BTreeSet::new(),
        );
        if !d.is_empty() {
            bail!("reading through the chain differs:\n{}", d.join("\n"));
        }
        Ok(raw)
    }
}

/// The paths of VIC's skeleton, which the disks hold and an image's checkout does not.
pub fn skeleton_paths() -> BTreeSet<String> {
    imagestore_vsphere::ext4::skeleton()
        .entries
        .into_iter()
        .map(|e| e.path)
        .collect()
}

pub fn stat(raw: &Path, p: &str) -> Result<String> {
    debugfs(raw, &format!("stat \"{p}\""))
}

pub fn inode_of(raw: &Path, p: &str) -> Result<String> {
    let s = stat(raw, p)?;
    Ok(s.split_whitespace().nth(1).unwrap_or_default().to_owned())
}

/// Compares the tree `rdump` wrote from `raw` into `got` with the checkout `want`. rdump
/// writes neither device nodes nor hardlinks and drops set-id and sticky bits, so those are
/// checked on the filesystem itself with `debugfs stat`.
pub fn compare(raw: &Path, got: &Path, want: &Path, only_left_ok: &BTreeSet<String>) -> Result<()> {
    let mut left = tree::walk(got)?;
    let mut right = tree::walk(want)?;
    let mut by_stat: Vec<(String, u32)> = Vec::new();
    for (p, n) in &right.nodes {
        if matches!(n.kind, 'c' | 'b' | 'p') || n.mode & 0o7000 != 0 {
            by_stat.push((p.clone(), n.mode));
        }
    }
    right
        .nodes
        .retain(|_, n| !matches!(n.kind, 'c' | 'b' | 'p'));
    for t in [&mut left, &mut right] {
        t.links.clear();
        for n in t.nodes.values_mut() {
            n.nlink = 1;
            n.mode &= 0o777;
        }
    }
    let mut d = tree::differences(&left, &right, only_left_ok);
    for (p, mode) in by_stat {
        let s = stat(raw, &format!("/{p}"))?;
        let shown = s
            .split("Mode:")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|m| u32::from_str_radix(m, 8).ok());
        if shown != Some(mode) {
            d.push(format!(
                "{p}: mode {shown:?} on ext4, {mode:o} in the image"
            ));
        }
    }
    if !d.is_empty() {
        bail!("ext4 differs from the image:\n{}", d.join("\n"));
    }
    Ok(())
}
