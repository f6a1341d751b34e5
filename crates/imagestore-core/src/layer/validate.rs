//! Ingest defence: turns raw tar entries into TOC entries, refusing anything that could leave
//! the root or make readers disagree about the layer.
//!
//! Checks, each a [`Error::BadArchive`] naming the entry:
//! * names that escape the root after normalisation, or replace the root itself;
//! * writing through a symlink, or below a non-directory, in the layer's view (this layer's
//!   earlier entries over the parent image);
//! * hardlinks whose target escapes, is a directory, or does not exist earlier in that view;
//! * whiteouts that are bare (`.wh.`) or name `.` or `..`;
//! * whiteout names used as directories: an entry below a `.wh.`-prefixed component, or a
//!   directory entry named as a whiteout or an opaque marker;
//! * anything no Linux file system could hold (the rule of [`represent`]);
//! * too many entries.

use std::collections::{HashMap, HashSet};

use crate::error::{Error, Result};
use crate::layer::path;
use crate::layer::represent;
use crate::layer::tar_reader::{RawEntry, RawKind};
use crate::layer::toc::{EntryKind, TocEntry};

/// Prefix of whiteout names.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the opaque-directory marker.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Prefix of AUFS metadata names (`.wh..wh.plnk`, ...), which are skipped.
pub const AUFS_META_PREFIX: &str = ".wh..wh.";

/// What a path is in an image, as far as the checks need to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// Anything else (file, device, fifo).
    Other,
}

/// Read access to the image a layer is applied on, for the checks that need it.
pub trait LowerView: Send + Sync {
    /// What `path` (normalised) is in the image, or `None` if absent.
    fn kind(&self, path: &str) -> Option<NodeKind>;
}

/// An image with nothing in it.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmptyView;

impl LowerView for EmptyView {
    fn kind(&self, _path: &str) -> Option<NodeKind> {
        None
    }
}

/// State of a path within the layer being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Here {
    Node(NodeKind),
    Removed,
}

/// Builds TOC entries from raw entries, one layer at a time.
pub struct EntryChecker<'a> {
    lower: &'a dyn LowerView,
    here: HashMap<String, Here>,
    /// Directories made opaque by this layer: their lower contents are hidden.
    opaque: HashSet<String>,
    max_entries: u64,
    count: u64,
}

impl std::fmt::Debug for EntryChecker<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryChecker")
            .field("entries", &self.count)
            .finish()
    }
}

impl<'a> EntryChecker<'a> {
    /// A checker for a layer applied on `lower`, accepting at most `max_entries` entries.
    pub fn new(lower: &'a dyn LowerView, max_entries: u64) -> Self {
        EntryChecker {
            lower,
            here: HashMap::new(),
            opaque: HashSet::new(),
            max_entries,
            count: 0,
        }
    }

    /// What `p` is in the layer's view so far.
    fn lookup(&self, p: &str) -> Option<NodeKind> {
        if let Some(h) = self.here.get(p) {
            return match h {
                Here::Node(k) => Some(*k),
                Here::Removed => None,
            };
        }
        // Below something this layer removed or replaced, or inside a directory it made
        // opaque, the lower image no longer shows through.
        for anc in path::ancestors(p) {
            match self.here.get(anc) {
                Some(Here::Removed)
                | Some(Here::Node(NodeKind::Other))
                | Some(Here::Node(NodeKind::Symlink)) => {
                    return None;
                }
                _ => {}
            }
            if self.opaque.contains(anc) {
                return None;
            }
        }
        if self.opaque.contains("") && !p.is_empty() {
            return None;
        }
        self.lower.kind(p)
    }

    fn check_parents(&self, p: &str, raw: &str) -> Result<()> {
        // Nearest-first would report the deepest symlink; walk from the root down instead so
        // the message names the first component that is not a plain directory.
        let mut ancestors: Vec<&str> = path::ancestors(p).collect();
        ancestors.reverse();
        for anc in ancestors {
            match self.lookup(anc) {
                None | Some(NodeKind::Dir) => {}
                Some(NodeKind::Symlink) => {
                    return Err(Error::bad_entry(
                        raw,
                        format!("writes through the symlink {anc:?}"),
                    ));
                }
                Some(NodeKind::Other) => {
                    return Err(Error::bad_entry(raw, format!("{anc:?} is not a directory")));
                }
            }
        }
        Ok(())
    }

    /// Checks one raw entry and returns its TOC entry, or `None` for entries layers ignore
    /// (the root directory itself, AUFS metadata).
    pub fn check(&mut self, e: &RawEntry) -> Result<Option<TocEntry>> {
        self.count += 1;
        if self.count > self.max_entries {
            return Err(Error::LimitExceeded {
                what: "entries in one layer",
                value: self.count,
                max: self.max_entries,
            });
        }
        let raw = e.name.as_str();
        let p = path::normalize(raw)?;
        if p.is_empty() {
            if e.kind == RawKind::Dir {
                return Ok(None);
            }
            return Err(Error::bad_entry(
                raw,
                "entry would replace the root directory",
            ));
        }
        let name = path::base(&p);
        let dir = path::parent(&p);
        if let Some(marker) = dir.split('/').find(|c| c.starts_with(WHITEOUT_PREFIX)) {
            return Err(Error::bad_entry(
                raw,
                format!("lies below {marker:?}, a whiteout name used as a directory"),
            ));
        }
        represent::check_entry(e)?;
        represent::check_components(raw, dir)?;

        if let Some(rest) = name.strip_prefix(WHITEOUT_PREFIX) {
            let aufs_meta = name.starts_with(AUFS_META_PREFIX) && name != OPAQUE_MARKER;
            if e.kind == RawKind::Dir && !aufs_meta {
                return Err(Error::bad_entry(
                    raw,
                    format!("{name:?} is a whiteout name but the entry is a directory"),
                ));
            }
            self.check_parents(&p, raw)?;
            if name == OPAQUE_MARKER {
                self.opaque.insert(dir.to_owned());
                let mut t = TocEntry::new(dir, EntryKind::Opaque, 0);
                fill_meta(&mut t, e);
                return Ok(Some(t));
            }
            if name.starts_with(AUFS_META_PREFIX) {
                return Ok(None);
            }
            if rest.is_empty() {
                return Err(Error::bad_entry(
                    raw,
                    "bare whiteout \".wh.\" names nothing",
                ));
            }
            if rest == "." || rest == ".." {
                return Err(Error::bad_entry(raw, "whiteout targets \".\" or \"..\""));
            }
            represent::check_components(raw, rest)?;
            let target = path::join(dir, rest);
            self.here.insert(target.clone(), Here::Removed);
            let mut t = TocEntry::new(target, EntryKind::Whiteout, 0);
            fill_meta(&mut t, e);
            return Ok(Some(t));
        }

        represent::check_components(raw, name)?;
        self.check_parents(&p, raw)?;
        let kind = match e.kind {
            RawKind::File => EntryKind::File,
            RawKind::Dir => EntryKind::Dir,
            RawKind::Symlink => EntryKind::Symlink,
            RawKind::Hardlink => EntryKind::Hardlink,
            RawKind::Char => EntryKind::Char,
            RawKind::Block => EntryKind::Block,
            RawKind::Fifo => EntryKind::Fifo,
        };
        let mut t = TocEntry::new(p.clone(), kind, e.mode);
        fill_meta(&mut t, e);
        match kind {
            EntryKind::Hardlink => {
                let link = e.link.as_deref().unwrap_or_default();
                if link.contains('\0') {
                    return Err(Error::bad_entry(raw, "hardlink target contains a NUL byte"));
                }
                let target = path::normalize(link).map_err(|_| {
                    Error::bad_entry(raw, format!("hardlink target {link:?} escapes the root"))
                })?;
                if target.is_empty() || target == p {
                    return Err(Error::bad_entry(
                        raw,
                        format!("hardlink target {link:?} is not a file"),
                    ));
                }
                self.check_parents(&target, raw)?;
                match self.lookup(&target) {
                    Some(NodeKind::Other) | Some(NodeKind::Symlink) => {}
                    Some(NodeKind::Dir) => {
                        return Err(Error::bad_entry(
                            raw,
                            format!("hardlink target {link:?} is a directory"),
                        ));
                    }
                    None => {
                        return Err(Error::bad_entry(
                            raw,
                            format!(
                                "hardlink target {link:?} does not exist earlier in the layer or below it"
                            ),
                        ));
                    }
                }
                let target_kind = self.lookup(&target).unwrap_or(NodeKind::Other);
                t.link = Some(target);
                self.here.insert(p, Here::Node(target_kind));
            }
            EntryKind::Symlink => {
                t.link = e.link.clone();
                self.here.insert(p, Here::Node(NodeKind::Symlink));
            }
            EntryKind::Dir => {
                self.here.insert(p, Here::Node(NodeKind::Dir));
            }
            _ => {
                t.size = e.size;
                t.sparse = e.sparse.clone();
                self.here.insert(p, Here::Node(NodeKind::Other));
            }
        }
        Ok(Some(t))
    }
}

fn fill_meta(t: &mut TocEntry, e: &RawEntry) {
    t.mode = e.mode;
    t.uid = e.uid;
    t.gid = e.gid;
    t.uname = e.uname.clone();
    t.gname = e.gname.clone();
    t.mtime = e.mtime;
    t.mtime_nsec = e.mtime_nsec;
    t.xattrs = e.xattrs.clone();
    t.dev = e.dev;
    t.offset = e.header_offset;
    t.data_offset = e.data_offset;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(name: &str, kind: RawKind, link: Option<&str>) -> RawEntry {
        RawEntry::bare(name, kind, link)
    }

    struct Lower(Vec<(&'static str, NodeKind)>);
    impl LowerView for Lower {
        fn kind(&self, p: &str) -> Option<NodeKind> {
            self.0.iter().find(|(q, _)| *q == p).map(|(_, k)| *k)
        }
    }

    fn reason(r: Result<Option<TocEntry>>) -> String {
        match r {
            Err(Error::BadArchive { reason, .. }) => reason,
            other => panic!("expected a bad archive, got {other:?}"),
        }
    }

    #[test]
    fn symlink_then_write_through_is_refused() -> Result<()> {
        let mut c = EntryChecker::new(&EmptyView, 100);
        c.check(&raw("lnk", RawKind::Symlink, Some("/etc")))?;
        assert!(reason(c.check(&raw("lnk/passwd", RawKind::File, None))).contains("symlink"));
        Ok(())
    }

    #[test]
    fn lower_symlink_is_respected_unless_removed() -> Result<()> {
        let lower = Lower(vec![("lib", NodeKind::Symlink), ("usr", NodeKind::Dir)]);
        let mut c = EntryChecker::new(&lower, 100);
        assert!(reason(c.check(&raw("lib/x.so", RawKind::File, None))).contains("symlink"));
        let mut c = EntryChecker::new(&lower, 100);
        c.check(&raw(".wh.lib", RawKind::File, None))?;
        assert!(c.check(&raw("lib/x.so", RawKind::File, None))?.is_some());
        Ok(())
    }

    #[test]
    fn hardlinks_need_an_earlier_target_inside() -> Result<()> {
        let lower = Lower(vec![("bin/sh", NodeKind::Other), ("etc", NodeKind::Dir)]);
        let mut c = EntryChecker::new(&lower, 100);
        assert!(
            c.check(&raw("bin/dash", RawKind::Hardlink, Some("bin/sh")))?
                .is_some()
        );
        assert!(
            reason(c.check(&raw("x", RawKind::Hardlink, Some("../../etc/shadow"))))
                .contains("escapes")
        );
        assert!(
            reason(c.check(&raw("y", RawKind::Hardlink, Some("nope")))).contains("does not exist")
        );
        assert!(reason(c.check(&raw("z", RawKind::Hardlink, Some("etc")))).contains("directory"));
        c.check(&raw("later", RawKind::File, None))?;
        assert!(
            c.check(&raw("l2", RawKind::Hardlink, Some("./later")))?
                .is_some()
        );
        Ok(())
    }

    #[test]
    fn whiteouts_are_checked() -> Result<()> {
        let mut c = EntryChecker::new(&EmptyView, 100);
        assert!(reason(c.check(&raw("a/.wh.", RawKind::File, None))).contains("bare"));
        assert!(reason(c.check(&raw("a/.wh..", RawKind::File, None))).contains("\".\""));
        assert!(reason(c.check(&raw("a/.wh...", RawKind::File, None))).contains("\"..\""));
        let w = c
            .check(&raw("a/.wh.b", RawKind::File, None))?
            .map(|t| (t.path, t.kind));
        assert_eq!(w, Some(("a/b".into(), EntryKind::Whiteout)));
        let o = c
            .check(&raw("a/.wh..wh..opq", RawKind::File, None))?
            .map(|t| (t.path, t.kind));
        assert_eq!(o, Some(("a".into(), EntryKind::Opaque)));
        assert_eq!(c.check(&raw("a/.wh..wh.plnk", RawKind::Dir, None))?, None);
        Ok(())
    }

    #[test]
    fn whiteout_names_are_not_directories() -> Result<()> {
        let mut c = EntryChecker::new(&EmptyView, 100);
        assert_eq!(
            reason(c.check(&raw("a/.wh.b/c", RawKind::File, None))),
            "lies below \".wh.b\", a whiteout name used as a directory"
        );
        assert!(
            reason(c.check(&raw(".wh..wh..opq/x", RawKind::File, None)))
                .contains("below \".wh..wh..opq\"")
        );
        assert!(
            reason(c.check(&raw(".wh..wh.plnk/123", RawKind::File, None)))
                .contains("below \".wh..wh.plnk\"")
        );
        assert_eq!(
            reason(c.check(&raw("a/.wh.b/", RawKind::Dir, None))),
            "\".wh.b\" is a whiteout name but the entry is a directory"
        );
        assert!(
            reason(c.check(&raw("a/.wh..wh..opq", RawKind::Dir, None)))
                .contains("is a whiteout name but the entry is a directory")
        );
        // AUFS keeps its metadata in directories; those are skipped, as before.
        assert_eq!(c.check(&raw(".wh..wh.plnk/", RawKind::Dir, None))?, None);
        Ok(())
    }

    #[test]
    fn unrepresentable_entries_are_refused_with_the_rule() -> Result<()> {
        let mut c = EntryChecker::new(&EmptyView, 100);
        let long = "n".repeat(256);
        assert!(
            reason(c.check(&raw(&format!("d/{long}"), RawKind::File, None))).contains("NAME_MAX")
        );
        assert!(
            reason(c.check(&raw(&format!("{long}/f"), RawKind::File, None))).contains("NAME_MAX")
        );
        // A whiteout of a 255-byte name is itself 259 bytes long: what counts is the target.
        let max = "n".repeat(255);
        let w = c.check(&raw(&format!(".wh.{max}"), RawKind::File, None))?;
        assert_eq!(w.map(|t| t.kind), Some(EntryKind::Whiteout));
        assert!(
            reason(c.check(&raw(&format!(".wh.{long}"), RawKind::File, None))).contains("NAME_MAX")
        );
        let mut late = raw("late", RawKind::File, None);
        late.mtime = represent::MAX_MTIME + 1;
        assert!(reason(c.check(&late)).contains("outside what ext4 holds"));
        let mut dev = raw("dev", RawKind::Char, None);
        dev.dev = Some((5000, 1));
        assert!(reason(c.check(&dev)).contains("dev_t"));
        let mut x = raw("x", RawKind::File, None);
        x.xattrs.insert("plain".into(), b"v".to_vec());
        assert!(reason(c.check(&x)).contains("no Linux namespace"));
        Ok(())
    }

    #[test]
    fn root_replacement_and_escape_are_refused() -> Result<()> {
        let mut c = EntryChecker::new(&EmptyView, 100);
        assert_eq!(c.check(&raw("./", RawKind::Dir, None))?, None);
        assert!(reason(c.check(&raw(".", RawKind::Symlink, Some("/")))).contains("root"));
        assert!(reason(c.check(&raw("../x", RawKind::File, None))).contains("escapes"));
        assert!(matches!(
            EntryChecker::new(&EmptyView, 1)
                .check(&raw("a", RawKind::File, None))
                .map(|_| ()),
            Ok(())
        ));
        Ok(())
    }
}
