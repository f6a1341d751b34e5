//! Sweeping leftovers of crashed writes, deletes and store creations.
//!
//! Runs when a backend is opened (root level) and on the first use of each store by a backend
//! instance, under the store's metadata lock. Work of live writers is never touched: a staging
//! directory is removed only when its image's write lock can be taken, and everything else it
//! removes (uncommitted image directories, trash, dangling child links) can only exist after a
//! crash, because commits and deletes finish under the same lock. Each step is idempotent, so a
//! crash during a sweep is repaired by the next one.

use imagestore_core::{ImageId, Result, StoreName};
use tracing::info;

use crate::fsx;
use crate::layout::StoreDir;
use crate::lock;
use crate::store::Inner;

/// Removes abandoned store creations and deleted stores.
pub fn sweep_root(inner: &Inner) -> Result<()> {
    for name in fsx::list_names(&inner.root.tmp())? {
        let store = name.split('.').next().unwrap_or_default();
        let Some(_g) = lock::try_lock(&inner.root.lock_file(), lock::range_for(store))? else {
            continue;
        };
        info!(leftover = %name, "removing an abandoned store creation");
        fsx::remove_all(&inner.root.tmp().join(&name))?;
    }
    for name in fsx::list_names(&inner.root.trash())? {
        fsx::remove_all(&inner.root.trash().join(&name))?;
    }
    Ok(())
}

/// Sweeps one store.
pub fn sweep_store(inner: &Inner, s: &StoreName, sd: &StoreDir) -> Result<()> {
    let _guard = inner.store_lock(sd)?;
    let mut removed = 0usize;
    for name in fsx::list_names(&sd.staging())? {
        let id = name.split('.').next().unwrap_or_default();
        let Some(_g) = lock::try_lock(&sd.lock_file(), lock::range_for(id))? else {
            continue;
        };
        fsx::remove_all(&sd.staging().join(&name))?;
        removed += 1;
    }
    for name in fsx::list_names(&sd.trash())? {
        fsx::remove_all(&sd.trash().join(&name))?;
        removed += 1;
    }
    let mut recompute = fsx::exists(&sd.usage_pending())?;
    let images = fsx::list_names(&sd.images())?;
    for name in &images {
        let Ok(id) = ImageId::new(name.as_str()) else {
            continue;
        };
        let d = sd.image(&id);
        if !fsx::exists(&d.committed())? && !id.is_scratch() {
            let doomed = sd.trash().join(format!("{name}.{}", fsx::nonce()));
            std::fs::rename(&d.dir, &doomed).map_err(|e| crate::error::io_err(&d.dir, e))?;
            fsx::remove_all(&doomed)?;
            removed += 1;
            recompute = true;
        }
    }
    for name in fsx::list_names(&sd.writables())? {
        let Ok(id) = ImageId::new(name.as_str()) else {
            continue;
        };
        let w = sd.writable(&id);
        if !fsx::exists(&w.committed())? {
            fsx::remove_all(&w.dir)?;
            removed += 1;
        } else {
            // Imports that never finished (their directory renamed in without a TOC).
            for imp in fsx::list_names(&w.imports())? {
                let p = w.imports().join(&imp);
                if imp.starts_with('.') || !fsx::exists(&p.join("toc"))? {
                    fsx::remove_all(&p)?;
                    removed += 1;
                }
            }
        }
    }
    // Child links whose child never committed.
    for name in fsx::list_names(&sd.images())? {
        let Ok(id) = ImageId::new(name.as_str()) else {
            continue;
        };
        let d = sd.image(&id);
        for c in fsx::list_names(&d.children())? {
            let Ok(cid) = ImageId::new(c.as_str()) else {
                continue;
            };
            let live = fsx::exists(&sd.image(&cid).committed())?
                || fsx::exists(&sd.writable(&cid).committed())?;
            if !live {
                fsx::remove_file(&d.child(&cid))?;
                removed += 1;
            }
        }
    }
    if recompute {
        inner.recompute_usage(sd)?;
    }
    if removed > 0 {
        info!(store = %s, removed, "swept leftovers");
    }
    Ok(())
}
