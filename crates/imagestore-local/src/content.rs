//! Image contents: stacks for the layer engine, export, checkout, writable layers and import.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use imagestore_core::layer::chain::LayerToc;
use imagestore_core::layer::export::{LayerReader, LayerSource, layer_reader};
use imagestore_core::layer::ingest::sniff;
use imagestore_core::layer::stack::Stack;
use imagestore_core::{Error, ImageId, ObjectKind, Result, StoreName, Writable};

use crate::error::IoContext;
use crate::fsx;
use crate::layout::{ImageDir, StoreDir};
use crate::record::WritableRecord;
use crate::store::Inner;
use crate::tocs::LocalLayerToc;
use imagestore_core::record;

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

impl Inner {
    /// A stored layer's TOC for the engine.
    fn layer_toc(&self, key: String, what: String, dir: ImageDir) -> Arc<dyn LayerToc> {
        Arc::new(LocalLayerToc::new(self.tocs.clone(), key, what, dir))
    }

    /// The stack of an image or writable layer, scratch first.
    pub(crate) fn stack_sync(&self, s: &StoreName, id: &ImageId) -> Result<Stack> {
        let sd = self.open_store(s)?;
        let (mut chain_top, imports) = if let Some(r) = self.find_record(&sd, id)? {
            (r, Vec::new())
        } else if self.writable_exists(&sd, id)? {
            let w = self.writable_record(s, &sd, id)?;
            let r = self.record(s, &sd, &w.parent)?;
            let wd = sd.writable(id);
            let mut imports = Vec::new();
            for name in fsx::list_names(&wd.imports())? {
                if name.starts_with('.') {
                    continue;
                }
                let n: u32 = name.parse().map_err(|_| {
                    Error::corrupt(
                        wd.imports().display().to_string(),
                        format!("bad import {name:?}"),
                    )
                })?;
                imports.push(wd.import(n));
            }
            (r, imports)
        } else {
            return Err(Error::not_found(ObjectKind::Image, format!("{s}/{id}")));
        };
        let mut chain = vec![chain_top.clone()];
        while let Some(p) = chain_top.parent.clone() {
            chain_top = self.record(s, &sd, &p)?;
            chain.push(chain_top.clone());
        }
        chain.reverse();
        let mut owners = Vec::new();
        let mut tocs: Vec<Arc<dyn LayerToc>> = Vec::new();
        let mut layers = Vec::new();
        for r in &chain {
            let dir = sd.image(&r.id);
            let key = format!(
                "{s}/{}@{}",
                r.id,
                r.sum
                    .as_ref()
                    .map_or_else(|| "scratch".to_owned(), ToString::to_string)
            );
            tocs.push(self.layer_toc(key, format!("{s}/{}", r.id), dir.clone()));
            layers.push(dir.layer());
            owners.push(r.id.clone());
        }
        for imp in imports {
            let key = format!("import:{}", imp.dir.display());
            tocs.push(self.layer_toc(key, format!("{s}/{id} import"), imp.clone()));
            layers.push(imp.layer());
            owners.push(id.clone());
        }
        Ok(Stack {
            owners,
            layers: tocs,
            source: Arc::new(LocalSource { layers }),
        })
    }

    pub(crate) fn create_writable_sync(
        &self,
        s: &StoreName,
        parent: &ImageId,
        id: &ImageId,
    ) -> Result<Writable> {
        let sd = self.open_store(s)?;
        let _guard = self.store_lock(&sd)?;
        self.record(s, &sd, parent)?;
        if self.find_record(&sd, id)?.is_some() || self.writable_exists(&sd, id)? {
            return Err(Error::already_exists(
                ObjectKind::Writable,
                format!("{s}/{id}"),
            ));
        }
        let w = sd.writable(id);
        fsx::remove_all(&w.dir)?;
        let staged = sd.staging().join(format!("{id}.{}", fsx::nonce()));
        fsx::mkdir(&staged, false)?;
        let rec = WritableRecord::new(id.clone(), parent.clone());
        fsx::write_new_synced(&staged.join("writable.json"), &record::encode(&rec))?;
        fsx::mkdir(&staged.join("imports"), false)?;
        fsx::sync_dir(&staged)?;
        let pd = sd.image(parent);
        fsx::mkdir(&pd.children(), true)?;
        fsx::write_new_synced(&pd.child(id), b"")?;
        fsx::sync_dir(&pd.children())?;
        std::fs::rename(&staged, &w.dir).at(&w.dir)?;
        fsx::sync_dir(&sd.writables())?;
        fsx::write_new_synced(&w.committed(), b"")?;
        fsx::sync_dir(&w.dir)?;
        Ok(Writable {
            id: id.clone(),
            store: s.clone(),
            parent: parent.clone(),
            imports: 0,
        })
    }

    pub(crate) fn get_writable_sync(&self, s: &StoreName, id: &ImageId) -> Result<Writable> {
        let sd = self.open_store(s)?;
        let rec = self.writable_record(s, &sd, id)?;
        let imports = fsx::list_names(&sd.writable(id).imports())?
            .iter()
            .filter(|n| !n.starts_with('.'))
            .count() as u32;
        Ok(Writable {
            id: id.clone(),
            store: s.clone(),
            parent: rec.parent,
            imports,
        })
    }

    pub(crate) fn delete_writable_sync(
        &self,
        s: &StoreName,
        sd: &StoreDir,
        id: &ImageId,
    ) -> Result<()> {
        let _guard = self.store_lock(sd)?;
        let rec = self.writable_record(s, sd, id)?;
        let w = sd.writable(id);
        fsx::remove_file(&w.committed())?;
        fsx::sync_dir(&w.dir)?;
        let pd = sd.image(&rec.parent);
        fsx::remove_file(&pd.child(id))?;
        fsx::sync_dir(&pd.children())?;
        let doomed = sd.trash().join(format!("{id}.{}", fsx::nonce()));
        std::fs::rename(&w.dir, &doomed).at(&w.dir)?;
        fsx::sync_dir(&sd.writables())?;
        fsx::remove_all(&doomed)
    }
}
