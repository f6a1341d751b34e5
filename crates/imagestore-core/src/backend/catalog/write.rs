//! Writing an image: the checks before it reads its body, the staged folder, and the
//! commit point.

use std::sync::Arc;

use tracing::warn;

use crate::digest::Digest;
use crate::error::{Error, ObjectKind, Result};
use crate::image::{Image, Metadata};
use crate::names::{ImageId, StoreName};
use crate::storer::{check_depth, check_existing_write};

use crate::backend::blocking::run_blocking;
use crate::backend::record::{self, ImageRecord};
use crate::backend::storage::StorageLock;

use super::{Catalog, ImagePaths, Representation, StorePaths, image_name};

/// What a write should do, decided before it reads its body.
#[derive(Debug)]
pub enum Precheck {
    /// The image exists already (same parent and sum): return it.
    Found(Image),
    /// Go ahead: the store's paths and the parent's record.
    Write(StorePaths, ImageRecord),
}

/// A write that may go ahead ([`begin_write`]).
#[derive(Debug)]
pub struct WriteSlot {
    /// The id lock, held until the write ends.
    pub lock: StorageLock,
    /// The store.
    pub store: StorePaths,
    /// The parent's record.
    pub parent: ImageRecord,
}

/// What [`begin_write`] found.
#[derive(Debug)]
pub enum Begin {
    /// The image exists already: return it.
    Found(Image),
    /// Write it.
    Write(WriteSlot),
}

/// Waits for and takes the id lock of `id` in store `s` (`NotFound` if the store does not
/// exist), on the blocking pool: the `lock_id` of every catalogue backend.
pub async fn lock_id<R: Representation>(
    cat: &Arc<Catalog<R>>,
    s: &StoreName,
    id: &ImageId,
) -> Result<StorageLock> {
    let (s, id) = (s.clone(), id.clone());
    run_blocking(cat.scheme(), cat.clone(), move |c| {
        c.id_lock(&c.open_store(&s)?, &id)
    })
    .await
}

/// Checks a write of `id` on `parent` expecting `sum`, takes the id lock and checks again (a
/// writer that held the lock may have committed): the start of every image write. A hit
/// returns at once, without touching the body.
pub async fn begin_write<R: Representation>(
    cat: &Arc<Catalog<R>>,
    s: &StoreName,
    parent: &ImageId,
    id: &ImageId,
    sum: Option<&Digest>,
) -> Result<Begin> {
    let check = |cat: &Arc<Catalog<R>>| {
        let (s, p, i, sm) = (s.clone(), parent.clone(), id.clone(), sum.cloned());
        run_blocking(cat.scheme(), cat.clone(), move |c| {
            c.precheck(&s, &p, &i, sm.as_ref())
        })
    };
    let sp = match check(cat).await? {
        Precheck::Found(img) => return Ok(Begin::Found(img)),
        Precheck::Write(sp, _) => sp,
    };
    let (sp2, i) = (sp.clone(), id.clone());
    let lock = run_blocking(cat.scheme(), cat.clone(), move |c| c.id_lock(&sp2, &i)).await?;
    match check(cat).await? {
        Precheck::Found(img) => Ok(Begin::Found(img)),
        Precheck::Write(store, parent) => {
            let (s, sp, p, i) = (s.clone(), store.clone(), parent.id.clone(), id.clone());
            run_blocking(cat.scheme(), cat.clone(), move |c| {
                c.link_writer(&s, &sp, &p, &i)
            })
            .await?;
            Ok(Begin::Write(WriteSlot {
                lock,
                store,
                parent,
            }))
        }
    }
}

impl WriteSlot {
    /// Empties and creates image `id`'s folder (what an earlier writer of the id left there
    /// is uncommitted, and this write holds the id lock) and hands it to the write.
    pub async fn stage<R: Representation>(
        self,
        cat: &Arc<Catalog<R>>,
        id: &ImageId,
    ) -> Result<StagedImage<R>> {
        let paths = self.store.image(id);
        let p = paths.clone();
        run_blocking(cat.scheme(), cat.clone(), move |c| {
            c.storage().remove_all(&p.dir)?;
            c.storage().mkdir(&p.dir)?;
            Ok(())
        })
        .await?;
        Ok(StagedImage {
            cat: cat.clone(),
            store: self.store,
            paths,
            parent: self.parent,
            lock: Some(self.lock),
            committed: false,
        })
    }
}

/// An image folder a write is filling, with the write's id lock. [`StagedImage::finish`]
/// commits it, or removes it after a failure before the error is returned; dropped without
/// either (the write's future dropped mid way), the folder is removed on the blocking pool
/// before the id lock is released. Either way nothing of it is ever visible and the id can be
/// written again at once.
#[derive(Debug)]
pub struct StagedImage<R: Representation> {
    cat: Arc<Catalog<R>>,
    /// The store.
    pub store: StorePaths,
    /// The image's paths.
    pub paths: ImagePaths,
    /// The parent's record.
    pub parent: ImageRecord,
    lock: Option<StorageLock>,
    committed: bool,
}

impl<R: Representation> StagedImage<R> {
    /// Ends the write with what filling the folder gave: with `Ok((record, metadata))`,
    /// commits the image ([`Catalog::publish`]); with an error, or if the commit fails,
    /// removes the folder before the id lock is released and returns the error.
    pub async fn finish(
        mut self,
        s: &StoreName,
        filled: Result<(ImageRecord, Metadata)>,
    ) -> Result<Image> {
        let published = match filled {
            Ok((r, meta)) => {
                let (s, sp) = (s.clone(), self.store.clone());
                run_blocking(self.cat.scheme(), self.cat.clone(), move |c| {
                    c.publish(&s, &sp, &r, &meta)
                })
                .await
            }
            Err(e) => Err(e),
        };
        if published.is_err() {
            let (sp, parent, p, lock) = (
                self.store.clone(),
                self.parent.id.clone(),
                self.paths.clone(),
                self.lock.take(),
            );
            let _ = run_blocking(self.cat.scheme(), self.cat.clone(), move |c| {
                c.abandon(&sp, &parent, &p);
                drop(lock);
                Ok(())
            })
            .await;
        }
        self.committed = true;
        published
    }
}

impl<R: Representation> Drop for StagedImage<R> {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        // Dropped mid-write: no one waits for the answer, so the cleanup runs on its own.
        let (cat, sp, parent, p, lock) = (
            self.cat.clone(),
            self.store.clone(),
            self.parent.id.clone(),
            self.paths.clone(),
            self.lock.take(),
        );
        let clean = move || {
            cat.abandon(&sp, &parent, &p);
            drop(lock);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(clean);
            }
            Err(_) => clean(),
        }
    }
}

impl<R: Representation> Catalog<R> {
    /// What a write of `id` on `parent` (expecting `sum`) should do now.
    pub fn precheck(
        &self,
        s: &StoreName,
        parent: &ImageId,
        id: &ImageId,
        sum: Option<&Digest>,
    ) -> Result<Precheck> {
        let sp = self.open_store(s)?;
        let parent_rec = self.find_record(&sp.image(parent))?.ok_or_else(|| {
            Error::not_found(
                ObjectKind::Image,
                format!("{s}/{parent} (the parent of {id})"),
            )
        })?;
        if self.find_writable(&sp.writable(id))?.is_some() {
            return Err(Error::Conflict {
                kind: ObjectKind::Image,
                name: image_name(s, id),
                reason: "a writable layer has this id".to_owned(),
            });
        }
        if let Some(r) = self.find_record(&sp.image(id))? {
            check_existing_write(
                image_name(s, id),
                r.parent.as_ref(),
                r.sum.as_ref(),
                parent,
                sum,
            )?;
            return Ok(Precheck::Found(self.image_of(s, &sp, &r)?));
        }
        check_depth(parent_rec.depth, self.rep.max_chain_depth())?;
        Ok(Precheck::Write(sp, parent_rec))
    }

    /// Links a write of `id` as a child of `parent`, under the store lock, after checking the
    /// parent is committed: from then until the write releases its id lock, the parent is in
    /// use ([`Catalog::users`]), so neither a delete nor garbage collection removes it.
    pub fn link_writer(
        &self,
        s: &StoreName,
        sp: &StorePaths,
        parent: &ImageId,
        id: &ImageId,
    ) -> Result<()> {
        let _guard = self.store_lock(sp)?;
        let pp = sp.image(parent);
        if !self.is_committed(&pp)? {
            return Err(parent_deleted(s, parent, id));
        }
        self.storage.mkdir(&pp.children())?;
        self.storage.create_new(&pp.child(id), b"")?;
        Ok(())
    }

    /// Removes the folder of image `p` and its link on `parent` after a failed write, unless
    /// it is committed; if even that cannot be told, the sweep removes them later. The
    /// parent's children folder was made with the parent, so the store is left as the write
    /// found it.
    pub fn abandon(&self, sp: &StorePaths, parent: &ImageId, p: &ImagePaths) {
        if let Ok(false) = self.is_committed(p) {
            let _ = self.storage.remove_all(&p.dir);
            let _ = self.storage.remove_file(&sp.image(parent).child(&p.id));
        }
    }

    /// `e`, or `NotFound` if it happened because a concurrent delete removed `parent`.
    pub fn unless_parent_gone(
        &self,
        e: Error,
        s: &StoreName,
        sp: &StorePaths,
        parent: &ImageId,
        id: &ImageId,
    ) -> Error {
        match self.is_committed(&sp.image(parent)) {
            Ok(false) => parent_deleted(s, parent, id),
            _ => e,
        }
    }

    /// Commits an image whose files are in its folder: writes its record, then, under the
    /// store lock, checks the parent is still committed and the store's quota, marks the usage counter, links the
    /// child and writes the marker (the commit point). `meta` is the image's metadata.
    pub fn publish(
        &self,
        s: &StoreName,
        sp: &StorePaths,
        r: &ImageRecord,
        meta: &Metadata,
    ) -> Result<Image> {
        let p = sp.image(&r.id);
        self.storage.write(&p.record(), &record::encode(r))?;
        // Made with the image, so a write on it later only adds its link.
        self.storage.mkdir(&p.children())?;
        let _guard = self.store_lock(sp)?;
        let parent = match &r.parent {
            Some(parent) => {
                let pp = sp.image(parent);
                if !self.is_committed(&pp)? {
                    // Deleted while we wrote: never leave a dangling child.
                    return Err(parent_deleted(s, parent, &r.id));
                }
                Some(pp)
            }
            None => None,
        };
        self.check_quota_for(s, sp, r.size)?;
        self.usage_begin(sp)?;
        if let Some(pp) = parent {
            self.storage.mkdir(&pp.children())?;
            self.storage.create_new(&pp.child(&r.id), b"")?;
        }
        match self.storage.create_new(&p.marker(), b"") {
            Ok(true) => {}
            Ok(false) => {
                return Err(Error::already_exists(
                    ObjectKind::Image,
                    image_name(s, &r.id),
                ));
            }
            // The marker may be in place though the answer was lost: then the image is
            // committed, and what follows is the same as after a success.
            Err(e) if !self.is_committed(&p)? => return Err(e),
            Err(_) => {}
        }
        // From here the image is visible, so a failure must not undo it or be reported as
        // the write's: the usage change stays marked and the next reader recomputes it.
        if let Err(e) = self.usage_end(sp, i128::from(r.size)) {
            warn!(image = %image_name(s, &r.id), error = %e, "committed; usage counter left to recompute");
        }
        let mut image = r.to_image(s, self.locator(&p))?;
        image.metadata = meta.clone();
        Ok(image)
    }
}

fn parent_deleted(s: &StoreName, parent: &ImageId, id: &ImageId) -> Error {
    Error::not_found(
        ObjectKind::Image,
        format!("{s}/{parent} (the parent of {id}, deleted during the write)"),
    )
}
