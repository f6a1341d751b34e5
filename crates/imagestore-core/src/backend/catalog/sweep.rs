//! The sweep: removing what only a crash leaves, on the first use of a store.

use tracing::info;

use crate::error::Result;
use crate::names::{ImageId, StoreName};

use super::{Catalog, Representation, StorePaths};

impl<R: Representation> Catalog<R> {
    /// Sweeps one store (see the module's documentation).
    pub(super) fn sweep_store(&self, s: &StoreName, sp: &StorePaths) -> Result<()> {
        let ds = self.storage.as_ref();
        let _guard = self.store_lock(sp)?;
        let mut removed = 0usize;
        let mut recompute =
            ds.stat(&sp.usage_pending())?.is_some() || ds.stat(&sp.usage())?.is_none();
        for id in self.image_ids(sp)? {
            let p = sp.image(&id);
            if self.is_committed(&p)? {
                continue;
            }
            let Some(_writer) = self.try_id_lock(sp, id.as_str())? else {
                continue;
            };
            ds.remove_all(&p.dir)?;
            removed += 1;
            recompute = true;
        }
        for name in ds.list(&sp.writables())? {
            let Ok(id) = ImageId::new(name.as_str()) else {
                continue;
            };
            let Some(_writer) = self.try_id_lock(sp, &name)? else {
                continue;
            };
            let w = sp.writable(&id);
            if self.find_writable(&w)?.is_none() {
                ds.remove_all(&w.dir)?;
                removed += 1;
                continue;
            }
            let done = self.imports(&w)?;
            removed += self.rep.sweep_imports(self, &w, done)?;
        }
        // Child links whose child never committed.
        for name in ds.list(&sp.images())? {
            let Ok(id) = ImageId::new(name.as_str()) else {
                continue;
            };
            let p = sp.image(&id);
            for c in ds.list(&p.children())? {
                let Ok(cid) = ImageId::new(c.as_str()) else {
                    continue;
                };
                let live = self.is_committed(&sp.image(&cid))?
                    || self.find_writable(&sp.writable(&cid))?.is_some();
                if !live && self.try_id_lock(sp, &c)?.is_some() {
                    ds.remove_file(&p.child(&cid))?;
                    removed += 1;
                }
            }
            removed += self.sweep_ref_links(sp, &p)?;
        }
        removed += self.rep.sweep_store(self, sp)?;
        if recompute {
            self.recompute_usage(sp)?;
        }
        if removed > 0 {
            info!(store = %s, removed, "swept leftovers");
        }
        Ok(())
    }
}
