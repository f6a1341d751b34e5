//! Composing layers: the merged view of a chain of TOCs (whole exports and checkouts; diffs
//! use [`crate::layer::chain`], which resolves one path at a time).
//!
//! Rules (OCI image-spec "Applying changesets", which VIC's unpack follows):
//! * layers apply in order; a later entry for a path replaces the earlier one, except that a
//!   directory over a directory only replaces its metadata;
//! * a whiteout deletes its path and everything below it, an opaque marker everything below
//!   its directory, and both apply only to lower layers, wherever they stand in their tar;
//! * replacing a directory with anything else deletes what was below it;
//! * a hardlink shares the content (data and metadata) its target had when it was applied, so a
//!   later replacement of the target does not change the link, and neither does a whiteout (or
//!   opaque marker) of the same layer that deletes the target after the link: the link keeps
//!   the data;
//! * missing parent directories are implied (mode 0755, owned by root).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::layer::path;
use crate::layer::toc::{EntryKind, Toc, TocEntry};
use crate::layer::validate::{LowerView, NodeKind};

/// Points at one TOC entry of a view: `layer` indexes the view's layers, `entry` that layer's
/// entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryRef {
    /// Layer index within the view.
    pub layer: u32,
    /// Entry index within the layer's TOC.
    pub entry: u32,
}

/// One path of a merged view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    /// The entry that put the path there; `None` for an implied directory.
    pub source: Option<EntryRef>,
    /// Where the path's content and metadata come from: the source itself, or for a hardlink
    /// the entry that holds the data it links to. `None` for an implied directory.
    pub content: Option<EntryRef>,
    /// For directories: the layer from which on the directory's lower contents are hidden
    /// (it was created fresh, replaced something, or was made opaque there).
    pub fresh_at: Option<u32>,
    /// Layer that last set the node (the implied-directory layer for implied ones).
    pub layer: u32,
}

/// The merged file tree of a chain of layers.
#[derive(Debug, Clone, Default)]
pub struct MergedView {
    layers: Vec<Arc<Toc>>,
    nodes: BTreeMap<String, Node>,
}

fn descendants_range(p: &str) -> (String, String) {
    if p.is_empty() {
        (String::new(), "\u{10FFFF}".to_owned())
    } else {
        (format!("{p}/"), format!("{p}0"))
    }
}

impl MergedView {
    /// Composes `layers`, lowest (scratch) first.
    pub fn build(layers: Vec<Arc<Toc>>) -> Self {
        let mut v = MergedView {
            layers: Vec::new(),
            nodes: BTreeMap::new(),
        };
        for toc in layers {
            v.push(toc);
        }
        v
    }

    /// Applies one more layer on top.
    pub fn push(&mut self, toc: Arc<Toc>) {
        let li = self.layers.len() as u32;
        self.layers.push(toc.clone());
        // What hardlink targets are below this layer, before its markers: a link made before a
        // marker of the same layer deleted its target keeps the target's data.
        let mut lower_targets: HashMap<&str, EntryRef> = HashMap::new();
        for e in &toc.entries {
            if e.kind == EntryKind::Hardlink
                && let Some(t) = e.link.as_deref()
                && let Some(c) = self.nodes.get(t).and_then(|n| n.content)
            {
                lower_targets.insert(t, c);
            }
        }
        // Markers first: they only ever affect lower layers.
        for e in &toc.entries {
            match e.kind {
                EntryKind::Whiteout => {
                    self.remove_below(&e.path);
                    self.nodes.remove(&e.path);
                }
                EntryKind::Opaque => {
                    self.remove_below(&e.path);
                    if let Some(n) = self.nodes.get_mut(&e.path) {
                        n.fresh_at = Some(li);
                    }
                }
                _ => {}
            }
        }
        for (ei, e) in toc.entries.iter().enumerate() {
            if e.kind.is_marker() {
                continue;
            }
            let r = EntryRef {
                layer: li,
                entry: ei as u32,
            };
            self.imply_parents(&e.path, li);
            if !self.parent_is_dir(&e.path) {
                continue;
            }
            let existing = self.nodes.get(&e.path).copied();
            let was_dir = existing.is_some_and(|n| self.node_kind(&n) == NodeKind::Dir);
            let content = match e.kind {
                EntryKind::Hardlink => {
                    let target = e.link.as_deref().unwrap_or_default();
                    // An earlier entry of this layer, else what was below before the markers.
                    let here = self
                        .nodes
                        .get(target)
                        .filter(|n| n.layer == li && n.source.is_some())
                        .and_then(|n| n.content);
                    match here.or_else(|| lower_targets.get(target).copied()) {
                        Some(c) if self.entry(c).kind != EntryKind::Dir => c,
                        _ => continue,
                    }
                }
                _ => r,
            };
            let fresh_at = match e.kind {
                EntryKind::Dir if was_dir => existing.and_then(|n| n.fresh_at),
                EntryKind::Dir => Some(li),
                _ => None,
            };
            if was_dir && e.kind != EntryKind::Dir {
                self.remove_below(&e.path);
            }
            self.nodes.insert(
                e.path.clone(),
                Node {
                    source: Some(r),
                    content: Some(content),
                    fresh_at,
                    layer: li,
                },
            );
        }
    }

    fn parent_is_dir(&self, p: &str) -> bool {
        let parent = path::parent(p);
        parent.is_empty()
            || self
                .nodes
                .get(parent)
                .is_some_and(|n| self.node_kind(n) == NodeKind::Dir)
    }

    fn imply_parents(&mut self, p: &str, li: u32) {
        let mut missing: Vec<String> = Vec::new();
        for anc in path::ancestors(p) {
            if self.nodes.contains_key(anc) {
                break;
            }
            missing.push(anc.to_owned());
        }
        for m in missing.into_iter().rev() {
            self.nodes.insert(
                m,
                Node {
                    source: None,
                    content: None,
                    fresh_at: Some(li),
                    layer: li,
                },
            );
        }
    }

    fn remove_below(&mut self, p: &str) {
        let (lo, hi) = descendants_range(p);
        let doomed: Vec<String> = self.nodes.range(lo..hi).map(|(k, _)| k.clone()).collect();
        for k in doomed {
            self.nodes.remove(&k);
        }
    }

    /// The layers of the view, lowest first.
    pub fn layers(&self) -> &[Arc<Toc>] {
        &self.layers
    }

    /// The TOC entry `r` points at.
    pub fn entry(&self, r: EntryRef) -> &TocEntry {
        &self.layers[r.layer as usize].entries[r.entry as usize]
    }

    /// The node at a normalised path.
    pub fn get(&self, p: &str) -> Option<&Node> {
        self.nodes.get(p)
    }

    /// The entry giving a node's content and metadata, `None` for implied directories.
    pub fn content_of(&self, n: &Node) -> Option<&TocEntry> {
        n.content.map(|c| self.entry(c))
    }

    /// Every path and node, in path order (parents before children).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.nodes.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Paths below directory `dir` (not `dir` itself), in path order.
    pub fn below<'a>(&'a self, dir: &str) -> impl Iterator<Item = (&'a str, &'a Node)> + 'a {
        let (lo, hi) = descendants_range(dir);
        self.nodes.range(lo..hi).map(|(k, v)| (k.as_str(), v))
    }

    /// Number of paths.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when the view holds no path.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The kind of a node, as the ingest checks see it.
    pub fn node_kind(&self, n: &Node) -> NodeKind {
        match self.content_of(n).map(|e| e.kind) {
            None | Some(EntryKind::Dir) => NodeKind::Dir,
            Some(EntryKind::Symlink) => NodeKind::Symlink,
            Some(_) => NodeKind::Other,
        }
    }
}

impl LowerView for MergedView {
    fn kind(&self, p: &str) -> Option<NodeKind> {
        self.nodes.get(p).map(|n| self.node_kind(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toc(entries: &[(&str, EntryKind)]) -> Arc<Toc> {
        Arc::new(Toc {
            entries: entries
                .iter()
                .map(|(p, k)| {
                    let mut e = TocEntry::new(*p, *k, 0o644);
                    if *k == EntryKind::Hardlink {
                        e.link = Some("a/f".into());
                    }
                    e
                })
                .collect(),
            ..Toc::default()
        })
    }

    fn paths(v: &MergedView) -> Vec<&str> {
        v.iter().map(|(p, _)| p).collect()
    }

    use EntryKind::*;

    #[test]
    fn later_layers_win_and_whiteouts_delete() {
        let v = MergedView::build(vec![
            toc(&[
                ("a", Dir),
                ("a/f", File),
                ("a/g", File),
                ("b", Dir),
                ("b/x", File),
            ]),
            toc(&[
                ("a/g", Whiteout),
                ("b", Opaque),
                ("b/y", File),
                ("c/d", File),
            ]),
        ]);
        assert_eq!(paths(&v), vec!["a", "a/f", "b", "b/y", "c", "c/d"]);
        assert_eq!(v.get("c").and_then(|n| n.source), None, "c is implied");
        assert_eq!(
            v.get("a/f").and_then(|n| n.source).map(|r| r.layer),
            Some(0)
        );
    }

    #[test]
    fn markers_apply_to_lower_layers_only() {
        // The whiteout stands after a same-layer entry of the same name: the entry survives.
        let v = MergedView::build(vec![
            toc(&[("x", File)]),
            toc(&[("x", File), ("x", Whiteout), ("d/k", File), ("d", Opaque)]),
        ]);
        assert_eq!(v.get("x").and_then(|n| n.source).map(|r| r.layer), Some(1));
        assert!(v.get("d/k").is_some());
    }

    #[test]
    fn replacing_a_directory_drops_its_contents() {
        let v = MergedView::build(vec![toc(&[("d", Dir), ("d/a", File)]), toc(&[("d", File)])]);
        assert_eq!(paths(&v), vec!["d"]);
        let v = MergedView::build(vec![toc(&[("d", File)]), toc(&[("d/a", File)])]);
        assert_eq!(paths(&v), vec!["d"], "an entry below a file is dropped");
    }

    #[test]
    fn hardlinks_keep_the_content_they_linked() {
        let v = MergedView::build(vec![
            toc(&[("a", Dir), ("a/f", File), ("a/h", Hardlink)]),
            toc(&[("a/f", File)]),
        ]);
        let h = v.get("a/h").and_then(|n| n.content);
        let f = v.get("a/f").and_then(|n| n.content);
        assert_eq!(h, Some(EntryRef { layer: 0, entry: 1 }));
        assert_eq!(f, Some(EntryRef { layer: 1, entry: 0 }));
    }
}
