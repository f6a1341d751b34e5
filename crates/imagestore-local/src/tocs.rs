//! Layer TOCs on disk: a cache of decoded TOCs, and the [`LayerToc`] the layer engine reads,
//! which answers single-path questions from the `toc.idx` index without loading the TOC.

use std::sync::{Arc, OnceLock};

use imagestore_core::Result;
use imagestore_core::cache::Cache;
use imagestore_core::layer::chain::{LayerToc, MemoryToc};
use imagestore_core::layer::index::IndexReader;
use imagestore_core::layer::toc::{Toc, TocEntry};

use crate::error::IoContext;
use crate::layout::ImageDir;

/// Largest number of TOCs kept in memory per backend instance.
const ENTRIES: usize = 4096;

/// Decoded TOCs by a key that identifies immutable content (`store/id@sum`, or an import's path).
#[derive(Debug)]
pub struct TocCache(Cache<Arc<Toc>>);

impl Default for TocCache {
    fn default() -> Self {
        TocCache(Cache::new(ENTRIES))
    }
}

impl TocCache {
    /// The TOC in `dir`, from the cache or the disk.
    pub fn get(&self, key: &str, dir: &ImageDir, what: &str) -> Result<Arc<Toc>> {
        self.0.get_or_load(key, || {
            let path = dir.toc();
            let f = std::fs::File::open(&path).at(&path)?;
            Ok(Arc::new(Toc::decode(std::io::BufReader::new(f), what)?))
        })
    }
}

/// One stored layer's TOC for the engine.
#[derive(Debug)]
pub struct LocalLayerToc {
    cache: Arc<TocCache>,
    key: String,
    what: String,
    dir: ImageDir,
    index: OnceLock<Option<IndexReader<std::fs::File>>>,
    memory: OnceLock<MemoryToc>,
}

impl LocalLayerToc {
    /// The layer stored in `dir`; `key` identifies its content for the cache.
    pub fn new(cache: Arc<TocCache>, key: String, what: String, dir: ImageDir) -> Self {
        LocalLayerToc {
            cache,
            key,
            what,
            dir,
            index: OnceLock::new(),
            memory: OnceLock::new(),
        }
    }

    fn index(&self) -> Option<&IndexReader<std::fs::File>> {
        self.index
            .get_or_init(|| {
                let f = std::fs::File::open(self.dir.toc_index()).ok()?;
                IndexReader::open(f, &self.what).ok()
            })
            .as_ref()
    }
}

impl LayerToc for LocalLayerToc {
    fn toc(&self) -> Result<Arc<Toc>> {
        self.cache.get(&self.key, &self.dir, &self.what)
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
