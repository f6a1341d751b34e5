//! Path-at-a-time answers about a chain of layers, without composing it.
//!
//! [`ChainView`] answers "what is path P in the image made of the first N layers" by walking
//! the layers from the top down and asking each only about P and its ancestors (through
//! [`LayerToc::lookup`], which an index makes cheap). It follows exactly the rules of
//! [`crate::layer::compose::MergedView`], except that directories implied by deeper entries
//! (without an entry of their own) read as absent. [`diff`] uses it so that a diff costs what
//! the layers above the ancestor touch, not the size of the layers below; ingest uses it as
//! the parent's view for its checks.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::Result;
use crate::layer::compose::EntryRef;
use crate::layer::path;
use crate::layer::toc::{EntryKind, Toc, TocEntry};
use crate::layer::validate::{LowerView, NodeKind};

/// One layer's TOC as the engine needs it: whole, or one path at a time.
pub trait LayerToc: Send + Sync {
    /// The whole TOC.
    fn toc(&self) -> Result<Arc<Toc>>;
    /// Every entry for `path` (whiteouts under the path they delete, opaque markers under
    /// their directory), as `(position in the TOC, entry)` in TOC order.
    fn lookup(&self, path: &str) -> Result<Vec<(u32, TocEntry)>>;
}

/// A TOC held in memory; lookups use a path map built on first use.
#[derive(Debug)]
pub struct MemoryToc {
    toc: Arc<Toc>,
    map: OnceLock<HashMap<String, Vec<u32>>>,
}

impl MemoryToc {
    /// Wraps a TOC.
    pub fn new(toc: Arc<Toc>) -> Self {
        MemoryToc {
            toc,
            map: OnceLock::new(),
        }
    }
}

impl LayerToc for MemoryToc {
    fn toc(&self) -> Result<Arc<Toc>> {
        Ok(self.toc.clone())
    }

    fn lookup(&self, p: &str) -> Result<Vec<(u32, TocEntry)>> {
        let map = self.map.get_or_init(|| {
            let mut m: HashMap<String, Vec<u32>> = HashMap::new();
            for (i, e) in self.toc.entries.iter().enumerate() {
                m.entry(e.path.clone()).or_default().push(i as u32);
            }
            m
        });
        Ok(map
            .get(p)
            .map(|v| {
                v.iter()
                    .map(|i| (*i, self.toc.entries[*i as usize].clone()))
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// What a path is in a chain: the entry that put it there and the entry holding its content
/// (they differ for hardlinks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The entry that put the path there.
    pub source: EntryRef,
    /// The entry holding the path's content and metadata.
    pub content: EntryRef,
    /// That content entry.
    pub entry: TocEntry,
    /// For directories: the layer from which on lower contents are hidden.
    pub fresh_at: Option<u32>,
}

impl Resolved {
    /// The path's kind as the ingest checks see it.
    pub fn kind(&self) -> NodeKind {
        match self.entry.kind {
            EntryKind::Dir => NodeKind::Dir,
            EntryKind::Symlink => NodeKind::Symlink,
            _ => NodeKind::Other,
        }
    }
}

type Entries = Arc<Vec<(u32, TocEntry)>>;

/// Lazy, memoised path resolution over a chain of layers.
pub struct ChainView {
    layers: Vec<Arc<dyn LayerToc>>,
    lookups: Mutex<HashMap<(usize, String), Entries>>,
}

impl std::fmt::Debug for ChainView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainView")
            .field("layers", &self.layers.len())
            .finish()
    }
}

impl ChainView {
    /// A view of `layers`, lowest first.
    pub fn new(layers: Vec<Arc<dyn LayerToc>>) -> Self {
        ChainView {
            layers,
            lookups: Mutex::new(HashMap::new()),
        }
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// True without layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    fn at(&self, layer: usize, p: &str) -> Result<Entries> {
        let key = (layer, p.to_owned());
        if let Some(e) = self.lookups.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(e);
        }
        let found = Arc::new(self.layers[layer].lookup(p)?);
        if let Ok(mut m) = self.lookups.lock() {
            m.insert(key, found.clone());
        }
        Ok(found)
    }

    /// True if layer `li`'s markers remove `p` from what lies below it.
    fn hidden_by_markers(&self, p: &str, li: usize) -> Result<bool> {
        if self
            .at(li, p)?
            .iter()
            .any(|(_, e)| e.kind == EntryKind::Whiteout)
        {
            return Ok(true);
        }
        for a in path::ancestors(p) {
            if self.at(li, a)?.iter().any(|(_, e)| e.kind.is_marker()) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// `p` after layer `li`'s markers and before its entries.
    fn before_entries(&self, p: &str, li: usize) -> Result<Option<Resolved>> {
        if self.hidden_by_markers(p, li)? {
            Ok(None)
        } else {
            self.resolve(p, li)
        }
    }

    /// The content a hardlink entry at `(li, pos)` shares.
    fn link_content(
        &self,
        li: usize,
        pos: u32,
        e: &TocEntry,
    ) -> Result<Option<(EntryRef, TocEntry)>> {
        if e.kind != EntryKind::Hardlink {
            return Ok(Some((
                EntryRef {
                    layer: li as u32,
                    entry: pos,
                },
                e.clone(),
            )));
        }
        let target = e.link.as_deref().unwrap_or_default();
        let here = self.at(li, target)?;
        if let Some((q, te)) = here
            .iter()
            .rev()
            .find(|(q, te)| *q < pos && !te.kind.is_marker())
        {
            return self.link_content(li, *q, te);
        }
        // Below this layer, before its markers: a marker that deletes the target later in the
        // layer does not take the link's data (see `compose`).
        Ok(self
            .resolve(target, li)?
            .filter(|r| r.entry.kind != EntryKind::Dir)
            .map(|r| (r.content, r.entry)))
    }

    /// True if a layer in `from..to` has a whiteout for `p` itself.
    fn whited_out_between(&self, p: &str, from: usize, to: usize) -> Result<bool> {
        for li in from..to.min(self.layers.len()) {
            if self
                .at(li, p)?
                .iter()
                .any(|(_, e)| e.kind == EntryKind::Whiteout)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// What `p` is in the image made of the first `upto` layers.
    pub fn resolve(&self, p: &str, upto: usize) -> Result<Option<Resolved>> {
        // The highest layer whose opaque marker on `p` hides what lies below, when that layer
        // has no entry of its own for `p` (the directory itself comes from further down).
        let mut opaque_above: Option<u32> = None;
        for li in (0..upto.min(self.layers.len())).rev() {
            let here = self.at(li, p)?;
            let whiteout_self = here.iter().any(|(_, e)| e.kind == EntryKind::Whiteout);
            let opaque_self = here.iter().any(|(_, e)| e.kind == EntryKind::Opaque);
            if let Some((pos, e)) = here.iter().rev().find(|(_, e)| !e.kind.is_marker()) {
                let source = EntryRef {
                    layer: li as u32,
                    entry: *pos,
                };
                return Ok(match e.kind {
                    EntryKind::Dir => {
                        let fresh_at = if opaque_above.is_some() {
                            opaque_above
                        } else if opaque_self || whiteout_self {
                            Some(li as u32)
                        } else {
                            match self.before_entries(p, li)? {
                                Some(below) if below.entry.kind == EntryKind::Dir => below.fresh_at,
                                _ => Some(li as u32),
                            }
                        };
                        Some(Resolved {
                            source,
                            content: source,
                            entry: e.clone(),
                            fresh_at,
                        })
                    }
                    EntryKind::Hardlink => {
                        self.link_content(li, *pos, e)?
                            .map(|(content, entry)| Resolved {
                                source,
                                content,
                                entry,
                                fresh_at: None,
                            })
                    }
                    _ => Some(Resolved {
                        source,
                        content: source,
                        entry: e.clone(),
                        fresh_at: None,
                    }),
                });
            }
            if whiteout_self {
                return Ok(None);
            }
            if opaque_self && opaque_above.is_none() {
                opaque_above = Some(li as u32);
            }
            for a in path::ancestors(p) {
                let ah = self.at(li, a)?;
                if ah.iter().any(|(_, e)| e.kind.is_marker()) {
                    return Ok(None);
                }
                if ah
                    .iter()
                    .rev()
                    .find(|(_, e)| !e.kind.is_marker())
                    .is_some_and(|(_, e)| e.kind != EntryKind::Dir)
                {
                    return Ok(None);
                }
            }
        }
        Ok(None)
    }
}

impl LowerView for ChainView {
    fn kind(&self, p: &str) -> Option<NodeKind> {
        // A lookup error reads as absence: the checks then refuse what needs the path to exist.
        self.resolve(p, self.layers.len())
            .ok()
            .flatten()
            .map(|r| r.kind())
    }
}

/// One change between an image and one of its ancestors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The path is new or different; its node in the image.
    Upsert(String, Box<Resolved>),
    /// The path is gone: a whiteout.
    Delete(String),
    /// The directory's lower contents are hidden: an opaque marker.
    Opaque(String),
}

/// The changes that turn the image of the first `ancestor_len` layers of `view` into the
/// image of all of them, in path order (a directory's marker before its contents). Only paths
/// the layers above the ancestor touch are looked at. Directories implied by deeper entries
/// are not emitted (tar extraction creates them).
pub fn diff(view: &ChainView, ancestor_len: usize) -> Result<Vec<Change>> {
    Ok(diff_with_kinds(view, ancestor_len)?.0)
}

/// [`diff`], plus the paths of its upserts that the ancestor already had: VIC's `C`
/// (modified) changes; every other upsert is an `A` (added) change.
pub fn diff_with_kinds(
    view: &ChainView,
    ancestor_len: usize,
) -> Result<(Vec<Change>, BTreeSet<String>)> {
    let top = view.len();
    let mut modified = BTreeSet::new();
    let mut touched: BTreeSet<String> = BTreeSet::new();
    for li in ancestor_len..top {
        for e in &view.layers[li].toc()?.entries {
            touched.insert(e.path.clone());
            for a in path::ancestors(&e.path) {
                touched.insert(a.to_owned());
            }
        }
    }
    let mut out = Vec::new();
    let mut gone_dirs: Vec<String> = Vec::new();
    let mut opaque_dirs: Vec<String> = Vec::new();
    for p in touched {
        if p.is_empty() {
            continue;
        }
        let covered = |dirs: &[String]| dirs.iter().any(|d| path::is_within(&p, d) && p != *d);
        match (view.resolve(&p, top)?, view.resolve(&p, ancestor_len)?) {
            (Some(u), Some(l)) => {
                let dirs = u.entry.kind == EntryKind::Dir && l.entry.kind == EntryKind::Dir;
                let opaque = dirs && u.fresh_at.is_some_and(|f| f as usize >= ancestor_len);
                if u.source != l.source || u.content != l.content {
                    modified.insert(p.clone());
                    out.push(Change::Upsert(p.clone(), Box::new(u)));
                }
                if opaque {
                    out.push(Change::Opaque(p.clone()));
                    opaque_dirs.push(p);
                }
            }
            (Some(u), None) => out.push(Change::Upsert(p, Box::new(u))),
            (None, Some(l)) => {
                if !covered(&gone_dirs) && !covered(&opaque_dirs) {
                    out.push(Change::Delete(p.clone()));
                }
                if l.entry.kind == EntryKind::Dir {
                    gone_dirs.push(p);
                }
            }
            // Absent on both sides can still hide a deletion: a directory the ancestor only
            // implies (no entry of its own, only deeper entries) reads as absent, yet a
            // whiteout above the ancestor removes it and everything below it.
            (None, None) => {
                if view.whited_out_between(&p, ancestor_len, top)? && !covered(&gone_dirs) {
                    out.push(Change::Delete(p.clone()));
                    gone_dirs.push(p);
                }
            }
        }
    }
    Ok((out, modified))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::compose::MergedView;

    fn toc(entries: &[(&str, EntryKind, Option<&str>)]) -> Arc<Toc> {
        Arc::new(Toc {
            entries: entries
                .iter()
                .map(|(p, k, l)| {
                    let mut e = TocEntry::new(*p, *k, 0o644);
                    e.link = l.map(String::from);
                    e
                })
                .collect(),
            ..Toc::default()
        })
    }

    fn view(tocs: &[Arc<Toc>]) -> ChainView {
        ChainView::new(
            tocs.iter()
                .map(|t| Arc::new(MemoryToc::new(t.clone())) as Arc<dyn LayerToc>)
                .collect(),
        )
    }

    use EntryKind::*;

    /// Changes as `+path`, `-path` and `opath` for compact assertions.
    fn show(changes: Vec<Change>) -> Vec<String> {
        changes
            .into_iter()
            .map(|c| match c {
                Change::Upsert(p, _) => format!("+{p}"),
                Change::Delete(p) => format!("-{p}"),
                Change::Opaque(p) => format!("o{p}"),
            })
            .collect()
    }

    fn layers() -> Vec<Arc<Toc>> {
        vec![
            toc(&[
                ("a", Dir, None),
                ("a/f", File, None),
                ("a/g", File, None),
                ("b", Dir, None),
                ("b/x", File, None),
                ("k", File, None),
                ("t", File, None),
                ("h", Hardlink, Some("t")),
            ]),
            toc(&[("k", File, None), ("t", File, None)]),
            toc(&[
                ("a/g", Whiteout, None),
                ("a/n", File, None),
                ("b", Opaque, None),
                ("b/y", File, None),
                ("d", Dir, None),
                ("d/z", File, None),
            ]),
            toc(&[
                ("k", Whiteout, None),
                ("a/f", File, None),
                ("d", File, None),
                ("h2", Hardlink, Some("h")),
            ]),
        ]
    }

    #[test]
    fn resolves_like_the_merged_view() -> Result<()> {
        let l = layers();
        for n in 1..=l.len() {
            let merged = MergedView::build(l[..n].to_vec());
            let lazy = view(&l);
            let mut paths: BTreeSet<String> = l
                .iter()
                .flat_map(|t| t.entries.iter().map(|e| e.path.clone()))
                .collect();
            paths.extend(merged.iter().map(|(p, _)| p.to_owned()));
            for p in paths {
                let m = merged.get(&p).filter(|n| n.source.is_some());
                let z = lazy.resolve(&p, n)?;
                assert_eq!(
                    m.map(|n| (n.source, n.content)),
                    z.as_ref().map(|r| (Some(r.source), Some(r.content))),
                    "{p} at {n}"
                );
                if let (Some(m), Some(z)) = (m, z) {
                    assert_eq!(m.fresh_at, z.fresh_at, "fresh_at of {p} at {n}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn hardlink_keeps_a_target_its_own_layer_deletes_after_it() -> Result<()> {
        let l = vec![
            toc(&[
                ("a", Dir, None),
                ("a/f", File, None),
                ("c", Dir, None),
                ("c/x", File, None),
            ]),
            toc(&[
                ("h", Hardlink, Some("a/f")),
                ("a/f", Whiteout, None),
                ("h3", Hardlink, Some("c/x")),
                ("c", Opaque, None),
            ]),
        ];
        let merged = MergedView::build(l.clone());
        let lazy = view(&l);
        let f = EntryRef { layer: 0, entry: 1 };
        let x = EntryRef { layer: 0, entry: 3 };
        for (p, want) in [
            ("h", Some(f)),
            ("h3", Some(x)),
            ("a/f", None),
            ("c/x", None),
        ] {
            assert_eq!(merged.get(p).and_then(|n| n.content), want, "merged {p}");
            assert_eq!(lazy.resolve(p, 2)?.map(|r| r.content), want, "lazy {p}");
        }
        assert_eq!(show(diff(&lazy, 1)?), vec!["-a/f", "oc", "+h", "+h3"]);
        Ok(())
    }

    #[test]
    fn diff_reports_only_what_changed() -> Result<()> {
        let v = view(&layers());
        let d = show(diff(&v, 2)?);
        assert_eq!(
            d,
            vec!["+a/f", "-a/g", "+a/n", "ob", "+b/y", "+d", "+h2", "-k"]
        );
        // Only a/f was there before (d was absent in the first two layers): VIC's `C`.
        let (_, modified) = diff_with_kinds(&v, 2)?;
        assert_eq!(modified.into_iter().collect::<Vec<_>>(), vec!["a/f"]);
        assert!(diff(&v, 4)?.is_empty());
        Ok(())
    }

    #[test]
    fn diff_deletes_a_directory_the_ancestor_only_implies() -> Result<()> {
        let v = view(&[
            toc(&[("x/y/f", File, None), ("x/g", File, None)]),
            toc(&[("x", Whiteout, None), ("x/new", File, None)]),
        ]);
        let d = show(diff(&v, 1)?);
        assert_eq!(d, vec!["-x", "+x/new"]);
        Ok(())
    }
}
