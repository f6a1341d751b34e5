//! The layer engine's view of stored layers: the stack of an image or writable layer (its
//! TOCs, and its layer files read from disk).

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use imagestore_core::backend::catalog::Catalog;
use imagestore_core::layer::chain::LayerToc;
use imagestore_core::layer::export::{LayerReader, LayerSource, layer_reader};
use imagestore_core::layer::ingest::sniff;
use imagestore_core::layer::stack::Stack;
use imagestore_core::{Error, ImageId, ObjectKind, Result, StoreName};

use crate::error::IoContext;
use crate::layout::{self, LayerFiles};
use crate::store::LocalLayers;
use crate::tocs::LocalLayerToc;

/// Reads layer files from disk; the compression is read from each file's first bytes.
#[derive(Debug)]
struct LocalSource {
    layers: Vec<PathBuf>,
}

impl LayerSource for LocalSource {
    fn open(&self, index: usize) -> Result<Box<dyn LayerReader>> {
        let path = self
            .layers
            .get(index)
            .ok_or_else(|| Error::invalid(format!("no layer {index} in this stack")))?;
        let mut f = std::fs::File::open(path).at(path)?;
        let mut magic = [0u8; 6];
        let n = f.read(&mut magic).at(path)?;
        f.seek(SeekFrom::Start(0)).at(path)?;
        layer_reader(f, sniff(&magic[..n])?)
    }
}

/// The stack of image or writable layer `id`, scratch first.
pub(crate) fn stack(cat: &Catalog<LocalLayers>, s: &StoreName, id: &ImageId) -> Result<Stack> {
    let sp = cat.open_store(s)?;
    let (top, imports) = if let Some(r) = cat.find_record(&sp.image(id))? {
        (r, 0)
    } else if let Some(w) = cat.find_writable(&sp.writable(id))? {
        let r = cat.record(s, &sp, &w.parent)?;
        (r, cat.imports(&sp.writable(id))?)
    } else {
        return Err(Error::not_found(ObjectKind::Image, format!("{s}/{id}")));
    };
    let rep = cat.rep();
    let mut stack = Stack {
        owners: Vec::new(),
        layers: Vec::new(),
        source: Arc::new(LocalSource { layers: Vec::new() }),
    };
    let mut paths = Vec::new();
    let mut push = |files: LayerFiles, key: String, what: String, owner: ImageId| {
        let toc = LocalLayerToc::new(
            cat.toc_cache().clone(),
            key,
            what,
            rep.local(&files.toc()),
            rep.local(&files.toc_index()),
        );
        stack.layers.push(Arc::new(toc) as Arc<dyn LayerToc>);
        stack.owners.push(owner);
        paths.push(rep.local(&files.layer()));
    };
    for r in cat.chain(s, &sp, top)? {
        let files = layout::image_files(&sp.image(&r.id));
        let key = Catalog::<LocalLayers>::toc_key(s, &r);
        push(files, key, format!("{s}/{}", r.id), r.id.clone());
    }
    let w = sp.writable(id);
    for n in 0..imports {
        let files = layout::import_files(&w, n);
        let key = format!("import:{}", rep.local(&files.dir).display());
        push(files, key, format!("{s}/{id} import {n}"), id.clone());
    }
    stack.source = Arc::new(LocalSource { layers: paths });
    Ok(stack)
}
