//! Sweeping leftovers of crashed writes, imports and deletes.
//!
//! Runs on the first use of each store by a backend instance, under the store lock. Work of
//! live writers is never touched: an uncommitted image folder, or an unfinished writable layer,
//! is removed only when its id lock can be taken. What else it removes (child markers of
//! children that never committed, disks of imports that never finished) can only exist after a
//! crash. Each step is idempotent, so a crash during a sweep is repaired by the next one.

use imagestore_core::{ImageId, Result, StoreName};
use tracing::info;

use crate::datastore::Datastore;
use crate::layer::WorkDir;
use crate::layout::{self, StorePaths};
use crate::store::Inner;

/// Removes the build folders of processes that are gone from the work and outbox
/// directories.
pub fn sweep_work(ds: &dyn Datastore) -> Result<()> {
    for dir in [ds.work_dir(), ds.outbox_dir()] {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if WorkDir::owner_alive(&name) == Some(false) {
                info!(leftover = %name, "removing the work folder of a build that stopped");
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(())
}

/// Sweeps one store.
pub fn sweep_store(inner: &Inner, s: &StoreName, sp: &StorePaths) -> Result<()> {
    let ds = inner.ds.as_ref();
    let _guard = inner.store_lock(sp)?;
    let mut removed = 0usize;
    let mut recompute = ds.stat(&sp.usage_pending())?.is_some() || ds.stat(&sp.usage())?.is_none();
    let images = ds.list(&sp.images())?;
    for name in &images {
        if !layout::is_layer_folder(name) {
            continue;
        }
        let Ok(id) = ImageId::new(name.as_str()) else {
            continue;
        };
        let p = sp.image(&id);
        if layout::is_committed(ds, &p)? {
            continue;
        }
        let Some(_writer) = inner.try_id_lock(sp, name)? else {
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
        let Some(_writer) = inner.try_id_lock(sp, &name)? else {
            continue;
        };
        let w = sp.writable(&id);
        if inner.find_writable(&w)?.is_none() {
            ds.remove_all(&w.dir)?;
            removed += 1;
            continue;
        }
        // Disks of imports that never finished, and disks an import replaced.
        let mut done = 0;
        while ds.stat(&w.toc(done))?.is_some() {
            done += 1;
        }
        for f in ds.list(&w.dir)? {
            let Some(n) = f.strip_suffix(".vmdk").and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if n + 1 != done {
                ds.remove_file(&w.disk(n))?;
                removed += 1;
            }
        }
    }
    // Child markers whose child never committed.
    for name in ds.list(&sp.images())? {
        let Ok(id) = ImageId::new(name.as_str()) else {
            continue;
        };
        let p = sp.image(&id);
        for c in ds.list(&p.children())? {
            let Ok(cid) = ImageId::new(c.as_str()) else {
                continue;
            };
            let live = layout::is_committed(ds, &sp.image(&cid))?
                || inner.find_writable(&sp.writable(&cid))?.is_some();
            if !live && inner.try_id_lock(sp, &c)?.is_some() {
                ds.remove_file(&p.child(&cid))?;
                removed += 1;
            }
        }
    }
    if recompute {
        inner.recompute_usage(sp)?;
    }
    if removed > 0 {
        info!(store = %s, removed, "swept leftovers");
    }
    Ok(())
}
