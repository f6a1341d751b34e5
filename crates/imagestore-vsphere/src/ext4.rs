//! The ext4 filesystem inside the disks, written with e2fsprogs on a raw image
//! (`docs/decisions/0007-ext4-writer-debugfs.md`): `mke2fs` makes the scratch filesystem,
//! and each layer becomes one `debugfs -w -f SCRIPT` run.
//!
//! A layer is applied as the changes between the image below it and the image with it
//! ([`imagestore_core::layer::chain::diff`]), so the filesystem ends up holding exactly the
//! merged view the engine computes: deletions (whiteouts, opaque directories, replaced paths)
//! are removals of what the lower image holds, then every new or changed path is created with
//! its owner, mode, mtime and xattrs; hardlinks come last, when their targets exist. The
//! lower image includes VIC's skeleton ([`skeleton`]), which the scratch disk holds.
//!
//! `debugfs` exits 0 even when a command fails, so every line it writes to stderr other than
//! its version banner fails the apply.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use tracing::debug;

use imagestore_core::layer::chain::{ChainView, Change, LayerToc, MemoryToc, diff};
use imagestore_core::layer::compose::{EntryRef, MergedView};
use imagestore_core::layer::content::{Checked, ContentSource};
use imagestore_core::layer::export::layer_reader;
use imagestore_core::layer::ingest::FileTap;
use imagestore_core::layer::path;
use imagestore_core::layer::toc::{EntryKind, Toc, TocEntry};
use imagestore_core::layer::validate::NodeKind;
use imagestore_core::{Error, Result};

use crate::error::{BACKEND, IoContext};
use crate::fsread::FsContent;
use crate::script::{Arg, Script};

/// The label of the scratch filesystem (VIC's `containerfs`).
pub const LABEL: &str = "containerfs";

fn fail(what: impl std::fmt::Display) -> Error {
    Error::backend(BACKEND, format!("ext4: {what}"), false)
}

fn entry(p: &str, kind: EntryKind, mode: u32) -> TocEntry {
    TocEntry::new(p, kind, mode)
}

/// VIC's base structure of the scratch filesystem (`lost+found` comes from `mke2fs`): dirs
/// `/etc`, `/lib/modules`, `/proc`, `/sys`, `/run`, `/.tether`; empty `/etc/hostname`,
/// `/etc/hosts`, `/etc/resolv.conf`; `/etc/mtab -> /proc/mounts`. It is the lowest layer of
/// every apply, never part of an image's exported contents.
pub fn skeleton() -> Toc {
    let mut mtab = entry("etc/mtab", EntryKind::Symlink, 0o777);
    mtab.link = Some("/proc/mounts".into());
    let entries = vec![
        entry("lost+found", EntryKind::Dir, 0o700),
        entry("etc", EntryKind::Dir, 0o755),
        entry("lib", EntryKind::Dir, 0o755),
        entry("lib/modules", EntryKind::Dir, 0o755),
        entry("proc", EntryKind::Dir, 0o555),
        entry("sys", EntryKind::Dir, 0o555),
        entry("run", EntryKind::Dir, 0o755),
        entry(".tether", EntryKind::Dir, 0o777),
        entry("etc/hostname", EntryKind::File, 0o644),
        entry("etc/hosts", EntryKind::File, 0o644),
        entry("etc/resolv.conf", EntryKind::File, 0o644),
        mtab,
    ];
    let entries = entries
        .into_iter()
        .map(|mut e| {
            if e.path != "lost+found" {
                e.mtime = imagestore_core::layer::scratch::SCRATCH_MTIME as i64;
            }
            e
        })
        .collect();
    Toc {
        entries,
        ..Toc::default()
    }
}

/// Runs a tool, failing with its stderr when it exits non-zero.
fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .map_err(|e| fail(format!("cannot run {what}: {e}")))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(fail(format!("{what} failed ({}): {stderr}", out.status)));
    }
    Ok(stderr)
}

/// Makes a raw image of `size` bytes at `raw` holding an empty ext4 labelled `containerfs`
/// (inode tables and journal left unwritten, so the image stays sparse).
pub fn mkfs(raw: &Path, size: u64) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(raw)
        .at(raw)?;
    f.set_len(size).at(raw)?;
    drop(f);
    run(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-L", LABEL])
            .args([
                "-E",
                "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0",
            ])
            .arg(raw),
        "mke2fs",
    )?;
    Ok(())
}

/// Makes the scratch filesystem: [`mkfs`] plus the [`skeleton`].
pub fn make_scratch(raw: &Path, size: u64, work: &Path) -> Result<()> {
    mkfs(raw, size)?;
    let skel = Arc::new(skeleton());
    // lost+found exists already: apply the rest on a view where it is the lower image.
    let lf = Toc {
        entries: vec![entry("lost+found", EntryKind::Dir, 0o700)],
        ..Toc::default()
    };
    apply(raw, &[Arc::new(lf)], skel, LayerData::None, work).map(|_| ())
}

/// What an apply did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Changes applied.
    pub changes: u64,
    /// debugfs commands run.
    pub commands: u64,
    /// File bytes written.
    pub bytes: u64,
}

/// The modification time the filesystem holds for an entry's `mtime`: clamped to 1970-01-01
/// ..= 2038-01-19 (0 ..= `i32::MAX` seconds). ext4 holds more, but the reader the disk
/// backends use for export and checkout (`ext4-view`) refuses any inode whose time has the
/// sign bit of its low 32 bits set, so a wider time would commit an image that cannot be read
/// back. The TOC keeps the exact time, and exports and checkouts take metadata from it.
pub fn disk_mtime(mtime: i64) -> i64 {
    mtime.clamp(0, i64::from(i32::MAX))
}

fn type_bits(kind: EntryKind) -> u32 {
    match kind {
        EntryKind::Dir => 0o040000,
        EntryKind::Symlink => 0o120000,
        EntryKind::Char => 0o020000,
        EntryKind::Block => 0o060000,
        EntryKind::Fifo => 0o010000,
        _ => 0o100000,
    }
}

/// The state of the filesystem while a script is being planned.
struct Plan<'a> {
    lower: &'a MergedView,
    /// Paths this script created (`Some(kind)`) or removed (`None`).
    now: BTreeMap<String, Option<NodeKind>>,
    /// Directories whose lower contents this script removed.
    cleared: Vec<String>,
    script: Script,
    /// The time debugfs gives new inodes (`set_current_time`), once set.
    time: Option<i64>,
    /// The index of the layer being applied.
    top: u32,
    /// Where its files were staged while it was ingested, if they were.
    staged: Option<PathBuf>,
}

impl Plan<'_> {
    fn cmd(&mut self, command: &'static str, args: &[Arg<'_>]) -> Result<()> {
        self.script.line(command, args)
    }

    /// New inodes from here on get `t` as their atime, ctime and mtime (a [`disk_mtime`],
    /// which `set_current_time` takes as it is, except 0: debugfs then stamps new inodes
    /// with the clock, so an inode made at time 0 gets its times with `sif` afterwards).
    fn at_time(&mut self, t: i64) -> Result<()> {
        if self.time != Some(t) {
            self.cmd("set_current_time", &[Arg::Time(t)])?;
            self.time = Some(t);
        }
        Ok(())
    }

    /// Sets the three times of existing inode `p` to `t` (a [`disk_mtime`]).
    fn times(&mut self, p: &str, t: i64) -> Result<()> {
        for field in ["mtime", "atime", "ctime"] {
            self.cmd("sif", &[Arg::Image(p), Arg::Word(field), Arg::Time(t)])?;
        }
        Ok(())
    }

    fn state(&self, p: &str) -> Option<NodeKind> {
        if let Some(s) = self.now.get(p) {
            return *s;
        }
        if self.cleared.iter().any(|d| path::is_within(p, d) && p != d) {
            return None;
        }
        self.lower.get(p).map(|n| self.lower.node_kind(n))
    }

    /// Removes `p` and everything below it.
    fn remove(&mut self, p: &str) -> Result<()> {
        let Some(kind) = self.state(p) else {
            return Ok(());
        };
        if kind == NodeKind::Dir {
            self.clear(p)?;
            self.cmd("rmdir", &[Arg::Image(p)])?;
        } else {
            self.cmd("rm", &[Arg::Image(p)])?;
        }
        self.now.insert(p.to_owned(), None);
        Ok(())
    }

    /// Removes everything below directory `p`.
    fn clear(&mut self, p: &str) -> Result<()> {
        let mut below: BTreeSet<String> = self
            .lower
            .below(p)
            .map(|(c, _)| c.to_owned())
            .filter(|c| c != p)
            .collect();
        below.extend(
            self.now
                .keys()
                .filter(|c| path::is_within(c, p) && c.as_str() != p)
                .cloned(),
        );
        let mut present: Vec<(String, NodeKind)> = below
            .into_iter()
            .filter_map(|c| self.state(&c).map(|k| (c, k)))
            .collect();
        // Deepest first, so directories are empty when removed.
        present.sort_by_key(|(c, _)| std::cmp::Reverse(c.matches('/').count()));
        for (c, k) in &present {
            if *k == NodeKind::Dir {
                self.cmd("rmdir", &[Arg::Image(c)])?;
            } else {
                self.cmd("rm", &[Arg::Image(c)])?;
            }
        }
        for (c, _) in present {
            self.now.insert(c, None);
        }
        self.cleared.push(p.to_owned());
        Ok(())
    }

    /// Makes every ancestor of `p` a directory (implied ones: 0755, root).
    fn parents(&mut self, p: &str) -> Result<()> {
        let mut anc: Vec<&str> = path::ancestors(p).filter(|a| !a.is_empty()).collect();
        anc.reverse();
        for a in anc {
            match self.state(a) {
                Some(NodeKind::Dir) => continue,
                Some(_) => self.remove(a)?,
                None => {}
            }
            // debugfs makes directories 0755 and owned by root.
            self.at_time(0)?;
            self.cmd("mkdir", &[Arg::Image(a)])?;
            self.now.insert(a.to_owned(), Some(NodeKind::Dir));
        }
        Ok(())
    }

    /// Sets every field of an existing inode at `p` to `e`'s.
    fn meta(&mut self, p: &str, e: &TocEntry) -> Result<()> {
        let mode = type_bits(e.kind) | (e.mode & 0o7777);
        self.cmd("sif", &[Arg::Image(p), Arg::Word("mode"), Arg::Mode(mode)])?;
        self.owner(p, e, true)?;
        self.times(p, disk_mtime(e.mtime))
    }

    /// Sets the owner (debugfs creates inodes owned by root; `always` for existing ones).
    fn owner(&mut self, p: &str, e: &TocEntry, always: bool) -> Result<()> {
        if always || e.uid != 0 {
            self.cmd("sif", &[Arg::Image(p), Arg::Word("uid"), Arg::Id(e.uid)])?;
        }
        if always || e.gid != 0 {
            self.cmd("sif", &[Arg::Image(p), Arg::Word("gid"), Arg::Id(e.gid)])?;
        }
        Ok(())
    }
}

/// Where the file data of a layer being applied is.
#[derive(Debug, Clone, Copy)]
pub enum LayerData<'a> {
    /// Nowhere: the layer has no file data (the skeleton).
    None,
    /// In the layer's tar, compressed as its TOC says.
    Tar(&'a Path),
    /// In a folder holding each regular file's contents as `f<entry index>`, written by a
    /// [`StageTap`] while the layer was ingested.
    Staged(&'a Path),
}

/// Writes each regular file of a layer being ingested into a folder as `f<entry index>`,
/// with its permission bits and holes, ready for `debugfs write` ([`LayerData::Staged`]).
#[derive(Debug)]
pub struct StageTap {
    dir: PathBuf,
    file: Option<(File, PathBuf, u64)>,
}

impl StageTap {
    /// A tap writing into `dir`, which must exist.
    pub fn new(dir: PathBuf) -> StageTap {
        StageTap { dir, file: None }
    }
}

impl FileTap for StageTap {
    fn file(&mut self, index: usize, entry: &TocEntry) -> Result<()> {
        let p = self.dir.join(format!("f{index}"));
        let f = File::create(&p).at(&p)?;
        f.set_permissions(fs::Permissions::from_mode(entry.mode & 0o7777))
            .at(&p)?;
        self.file = Some((f, p, entry.size));
        Ok(())
    }

    fn data(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        match &self.file {
            Some((f, p, _)) => f.write_all_at(bytes, offset).at(p),
            None => Err(fail("file data without a file")),
        }
    }

    fn end_file(&mut self) -> Result<()> {
        match self.file.take() {
            Some((f, p, size)) => f.set_len(size).at(&p),
            None => Ok(()),
        }
    }
}

/// Applies layer `top` onto the ext4 in raw image `raw`, which holds the image of `lower`
/// (lowest first, the skeleton included); `top_data` says where its file data is. File
/// contents that come from lower layers (a hardlink whose target the layer replaces) are
/// read from `raw` itself. `work` is a scratch folder for staged file contents.
pub fn apply(
    raw: &Path,
    lower: &[Arc<Toc>],
    top: Arc<Toc>,
    top_data: LayerData<'_>,
    work: &Path,
) -> Result<ApplyStats> {
    let lower_view = MergedView::build(lower.to_vec());
    let mut all: Vec<Arc<Toc>> = lower.to_vec();
    all.push(top.clone());
    let top_index = lower.len();
    let chain = ChainView::new(
        all.iter()
            .map(|t| Arc::new(MemoryToc::new(t.clone())) as Arc<dyn LayerToc>)
            .collect(),
    );
    let changes = diff(&chain, top_index)?;
    let mut plan = Plan {
        lower: &lower_view,
        now: BTreeMap::new(),
        cleared: Vec::new(),
        script: Script::new(),
        time: None,
        top: top_index as u32,
        staged: match top_data {
            LayerData::Staged(dir) => Some(dir.to_path_buf()),
            _ => None,
        },
    };
    let stage = work.join("stage");
    fs::create_dir_all(&stage).at(&stage)?;
    // Content entries to stage: (layer, entry) -> staged file.
    let mut wanted: BTreeMap<EntryRef, PathBuf> = BTreeMap::new();
    let mut links: Vec<(String, String, EntryRef)> = Vec::new();
    let mut link_groups: BTreeSet<String> = BTreeSet::new();
    let mut stats = ApplyStats::default();
    // Markers first: they remove from the lower image only. They are taken from the layer
    // itself, because the change list leaves out paths the lower image only implies.
    for e in &top.entries {
        match e.kind {
            EntryKind::Whiteout => plan.remove(&e.path)?,
            EntryKind::Opaque if plan.state(&e.path) == Some(NodeKind::Dir) => {
                plan.clear(&e.path)?
            }
            _ => {}
        }
    }
    for change in &changes {
        stats.changes += 1;
        match change {
            Change::Delete(p) => plan.remove(p)?,
            Change::Opaque(p) => {
                if plan.state(p) == Some(NodeKind::Dir) {
                    plan.clear(p)?;
                }
            }
            Change::Upsert(p, r) => {
                let source_entry = &all[r.source.layer as usize].entries[r.source.entry as usize];
                let e = &r.entry;
                if source_entry.kind == EntryKind::Hardlink {
                    links.push((
                        p.clone(),
                        source_entry.link.clone().unwrap_or_default(),
                        r.content,
                    ));
                    continue;
                }
                plan.parents(p)?;
                let existing = plan.state(p);
                if e.kind == EntryKind::Dir && existing == Some(NodeKind::Dir) {
                    plan.meta(p, e)?;
                    plan.now.insert(p.clone(), Some(NodeKind::Dir));
                    xattrs(&mut plan, p, e, &stage)?;
                    continue;
                }
                if existing.is_some() {
                    plan.remove(p)?;
                }
                create(&mut plan, p, e, r.content, &stage, &mut wanted)?;
            }
        }
    }
    // Hardlinks, now that every target exists.
    let top_view = {
        let mut v = lower_view.clone();
        v.push(top.clone());
        v
    };
    for (p, target, content) in &links {
        plan.parents(p)?;
        if plan.state(p).is_some() {
            plan.remove(p)?;
        }
        let target_now = top_view.get(target).and_then(|n| n.content);
        if target_now == Some(*content) && plan.state(target).is_some() {
            plan.cmd("ln", &[Arg::Image(target), Arg::Image(p)])?;
            plan.now.insert(p.clone(), Some(NodeKind::Other));
            link_groups.insert(target.clone());
        } else {
            // The target was replaced after the link was made: the link keeps the old data.
            let e = all[content.layer as usize].entries[content.entry as usize].clone();
            create(&mut plan, p, &e, *content, &stage, &mut wanted)?;
        }
    }
    if !link_groups.is_empty() {
        let mut counts: HashMap<EntryRef, u32> = HashMap::new();
        for (_, n) in top_view.iter() {
            if top_view.node_kind(n) != NodeKind::Dir
                && let Some(c) = n.content
            {
                *counts.entry(c).or_default() += 1;
            }
        }
        for t in &link_groups {
            if let Some(c) = top_view.get(t).and_then(|n| n.content) {
                let n = counts.get(&c).copied().unwrap_or(1);
                let n = i64::from(n);
                plan.cmd(
                    "sif",
                    &[Arg::Image(t), Arg::Word("links_count"), Arg::Int(n)],
                )?;
            }
        }
    }
    let planned = Instant::now();
    stats.bytes = stage_contents(&all, &wanted, top_data, &lower_view, raw)?;
    stats.commands = plan.script.lines();
    let script_path = work.join("apply.debugfs");
    fs::write(&script_path, plan.script.as_bytes()).at(&script_path)?;
    let staged = Instant::now();
    debugfs_write(raw, &script_path)?;
    debug!(
        stage_ms = (staged - planned).as_millis(),
        debugfs_ms = staged.elapsed().as_millis(),
        commands = stats.commands,
        "applied a layer"
    );
    let _ = fs::remove_dir_all(&stage);
    let _ = fs::remove_file(&script_path);
    Ok(stats)
}

fn xattrs(plan: &mut Plan<'_>, p: &str, e: &TocEntry, stage: &Path) -> Result<()> {
    for (i, (name, value)) in e.xattrs.iter().enumerate() {
        let f = stage.join(format!("x{}-{i}", plan.script.lines()));
        fs::write(&f, value).at(&f)?;
        plan.cmd(
            "ea_set",
            &[
                Arg::Word("-f"),
                Arg::Host(&f),
                Arg::Image(p),
                Arg::Xattr(name),
            ],
        )?;
    }
    Ok(())
}

fn create(
    plan: &mut Plan<'_>,
    p: &str,
    e: &TocEntry,
    content: EntryRef,
    stage: &Path,
    wanted: &mut BTreeMap<EntryRef, PathBuf>,
) -> Result<()> {
    // New inodes take their times from debugfs' current time, their permission bits from
    // the staged file (files) or the defaults (0755 directories, 0777 symlinks).
    plan.at_time(disk_mtime(e.mtime))?;
    let mut set_mode = false;
    let kind = match e.kind {
        EntryKind::Dir => {
            set_mode = e.mode & 0o7777 != 0o755;
            plan.cmd("mkdir", &[Arg::Image(p)])?;
            NodeKind::Dir
        }
        EntryKind::File | EntryKind::Hardlink => {
            let f = match &plan.staged {
                Some(dir) if content.layer == plan.top => dir.join(format!("f{}", content.entry)),
                _ => {
                    let n = wanted.len();
                    wanted
                        .entry(content)
                        .or_insert_with(|| stage.join(format!("f{n}")))
                        .clone()
                }
            };
            plan.cmd("write", &[Arg::Host(&f), Arg::Image(p)])?;
            NodeKind::Other
        }
        EntryKind::Symlink => {
            let target = e.link.as_deref().unwrap_or_default();
            plan.cmd("symlink", &[Arg::Image(p), Arg::Target(target)])?;
            NodeKind::Symlink
        }
        EntryKind::Char | EntryKind::Block | EntryKind::Fifo => {
            let (kind_word, (major, minor)) = match (e.kind, e.dev) {
                (EntryKind::Fifo, _) => ("p", (0, 0)),
                (EntryKind::Char, dev) => ("c", dev.unwrap_or((0, 0))),
                (_, dev) => ("b", dev.unwrap_or((0, 0))),
            };
            // mknod takes a name in the current directory.
            match path::parent(p) {
                "" => plan.cmd("cd", &[Arg::Word("/")])?,
                dir => plan.cmd("cd", &[Arg::Image(dir)])?,
            }
            let name = Arg::Name(path::base(p));
            if e.kind == EntryKind::Fifo {
                plan.cmd("mknod", &[name, Arg::Word(kind_word)])?;
            } else {
                let (major, minor) = (i64::from(major), i64::from(minor));
                plan.cmd(
                    "mknod",
                    &[name, Arg::Word(kind_word), Arg::Int(major), Arg::Int(minor)],
                )?;
            }
            plan.cmd("cd", &[Arg::Word("/")])?;
            set_mode = true;
            NodeKind::Other
        }
        EntryKind::Whiteout | EntryKind::Opaque => return Ok(()),
    };
    plan.now.insert(p.to_owned(), Some(kind));
    if set_mode {
        let mode = type_bits(e.kind) | (e.mode & 0o7777);
        plan.cmd("sif", &[Arg::Image(p), Arg::Word("mode"), Arg::Mode(mode)])?;
    }
    plan.owner(p, e, false)?;
    if disk_mtime(e.mtime) == 0 {
        plan.times(p, 0)?;
    }
    xattrs(plan, p, e, stage)?;
    Ok(())
}

/// Writes the staged file contents: those of the new layer from its tar, read once forward,
/// and the few that come from lower layers from the filesystem in `raw`, before the script
/// changes it.
fn stage_contents(
    all: &[Arc<Toc>],
    wanted: &BTreeMap<EntryRef, PathBuf>,
    top_data: LayerData<'_>,
    lower_view: &MergedView,
    raw: &Path,
) -> Result<u64> {
    let top_index = all.len() - 1;
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut from_top: Vec<(&TocEntry, &PathBuf)> = Vec::new();
    let mut from_lower: Vec<(EntryRef, &TocEntry, &PathBuf)> = Vec::new();
    for (r, f) in wanted {
        let e = &all[r.layer as usize].entries[r.entry as usize];
        let out = File::create(f).at(f)?;
        out.set_permissions(fs::Permissions::from_mode(e.mode & 0o7777))
            .at(f)?;
        out.set_len(e.size).at(f)?;
        if e.stored_len() == 0 {
            continue;
        }
        if r.layer as usize == top_index {
            from_top.push((e, f));
        } else {
            from_lower.push((*r, e, f));
        }
    }
    if !from_top.is_empty() {
        let LayerData::Tar(data) = top_data else {
            return Err(fail("the layer has file data but no tar was given"));
        };
        let compression = all[top_index].compression;
        let mut reader = layer_reader(File::open(data).at(data)?, compression)?;
        from_top.sort_by_key(|(e, _)| e.data_offset);
        for (e, f) in from_top {
            let out = OpenOptions::new().write(true).open(f).at(f)?;
            reader.skip_to(e.data_offset).at(f)?;
            let segments = match &e.sparse {
                Some(map) => map.clone(),
                None => vec![(0, e.size)],
            };
            for (off, len) in segments {
                let mut left = len;
                let mut at = off;
                while left > 0 {
                    let n = (buf.len() as u64).min(left) as usize;
                    reader.read_exact(&mut buf[..n]).at(f)?;
                    out.write_all_at(&buf[..n], at).at(f)?;
                    left -= n as u64;
                    at += n as u64;
                }
                bytes += len;
            }
        }
    }
    if !from_lower.is_empty() {
        // A path of the lower image holding each wanted content.
        let mut paths: HashMap<EntryRef, &str> = HashMap::new();
        for (p, n) in lower_view.iter() {
            if let Some(c) = n.content {
                paths.entry(c).or_insert(p);
            }
        }
        let fs = FsContent::of_raw(raw.to_path_buf());
        let mut pass = fs.pass()?;
        for (r, e, f) in from_lower {
            let p = paths
                .get(&r)
                .ok_or_else(|| fail(format!("/{}: its data is not in the lower image", e.path)))?;
            let mut body = Checked::new(pass.open(p, r, e)?, e);
            let mut out = OpenOptions::new().write(true).open(f).at(f)?;
            copy_holes(&mut body, &mut out, &mut buf).at(f)?;
            body.finish()?;
            bytes += e.size;
        }
    }
    Ok(bytes)
}

/// Copies `body` into `out` from offset 0, leaving all-zero blocks as holes.
fn copy_holes(body: &mut impl Read, out: &mut File, buf: &mut [u8]) -> std::io::Result<()> {
    let mut at = 0u64;
    loop {
        let n = body.read(buf)?;
        if n == 0 {
            return Ok(());
        }
        for chunk in buf[..n].chunks(4096) {
            if chunk.iter().any(|b| *b != 0) {
                out.write_all_at(chunk, at)?;
            }
            at += chunk.len() as u64;
        }
    }
}

/// Runs `debugfs -w -f script raw`; any diagnostic on stderr fails it.
pub fn debugfs_write(raw: &Path, script: &Path) -> Result<()> {
    let stderr = run(
        Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(script)
            .arg(raw),
        "debugfs",
    )?;
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .take(20)
        .collect();
    if !errors.is_empty() {
        return Err(fail(format!(
            "debugfs reported errors applying the layer: {}",
            errors.join("; ")
        )));
    }
    Ok(())
}

/// Reads one file of the image in raw image `raw` (for checks).
pub fn cat(raw: &Path, p: &str) -> Result<Vec<u8>> {
    let mut request = Script::new();
    request.line("cat", &[Arg::Image(p)])?;
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(request.text().trim_end())
        .arg(raw)
        .output()
        .map_err(|e| fail(format!("cannot run debugfs: {e}")))?;
    Ok(out.stdout)
}
