//! [`LocalLayerToc`]: a stored layer's TOC for the layer engine, which answers single-path
//! questions from the `toc.idx` index without loading the TOC, and loads whole TOCs through
//! the catalogue's cache.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use imagestore_core::Result;
use imagestore_core::backend::cache::Cache;
use imagestore_core::layer::chain::{LayerToc, MemoryToc};
use imagestore_core::layer::index::IndexReader;
use imagestore_core::layer::toc::{Toc, TocEntry};

use crate::error::IoContext;

/// One stored layer's TOC for the engine.
#[derive(Debug)]
pub struct LocalLayerToc {
    cache: Arc<Cache<Arc<Toc>>>,
    key: String,
    what: String,
    toc: PathBuf,
    index_file: PathBuf,
    index: OnceLock<Option<IndexReader<std::fs::File>>>,
    memory: OnceLock<MemoryToc>,
}

impl LocalLayerToc {
    /// The layer whose TOC is file `toc` with index `index_file`; `key` identifies its
    /// content in `cache`, `what` names it in errors.
    pub fn new(
        cache: Arc<Cache<Arc<Toc>>>,
        key: String,
        what: String,
        toc: PathBuf,
        index_file: PathBuf,
    ) -> Self {
        LocalLayerToc {
            cache,
            key,
            what,
            toc,
            index_file,
            index: OnceLock::new(),
            memory: OnceLock::new(),
        }
    }

    fn index(&self) -> Option<&IndexReader<std::fs::File>> {
        self.index
            .get_or_init(|| {
                let f = std::fs::File::open(&self.index_file).ok()?;
                IndexReader::open(f, &self.what).ok()
            })
            .as_ref()
    }
}

impl LayerToc for LocalLayerToc {
    fn toc(&self) -> Result<Arc<Toc>> {
        self.cache.get_or_load(&self.key, || {
            let f = std::fs::File::open(&self.toc).at(&self.toc)?;
            Ok(Arc::new(Toc::decode(
                std::io::BufReader::new(f),
                &self.what,
            )?))
        })
    }

    fn lookup(&self, path: &str) -> Result<Vec<(u32, TocEntry)>> {
        if let Some(idx) = self.index() {
            return idx.lookup(path);
        }
        // Layers written before indexes existed: answer from the whole TOC.
        if self.memory.get().is_none() {
            let toc = self.toc()?;
            let _ = self.memory.set(MemoryToc::new(toc));
        }
        match self.memory.get() {
            Some(m) => m.lookup(path),
            None => Ok(Vec::new()),
        }
    }
}
