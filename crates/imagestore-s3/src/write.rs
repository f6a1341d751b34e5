//! Writing a layer: lease, link, stream, verify, commit.
//!
//! ```text
//! precheck (id absent or returned) ─► lease leases/<id> (conditional create; wait if held)
//!   ─► link children/<parent>/<id> ─► parent not being deleted and still there?
//!   ─► stream into layers/<id>/<nonce>/layer (multipart) ◄─ core ingest (hash, parse, TOC)
//!   ─► digest ok? complete : abort ─► toc ─► index intent log/<id>.<nonce>.c
//!   ─► [with a quota: quota lease, usage + size <= quota?]
//!   ─► images/<id> (conditional create: the one step that makes the image visible)
//!   ─► release the lease
//! ```
//! Writers of one id queue on its lease: the first writes, the others find the record and
//! return it without reading their body. The link is written before the parent is checked,
//! and a delete takes the parent's lease before it lists links, so either the delete sees the
//! link or the writer sees the delete (`docs/decisions/0006-s3-protocol.md`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use imagestore_core::layer::ingest::{IngestLimits, ingest};
use imagestore_core::layer::validate::LowerView;
use imagestore_core::storer::check_existing_write;
use imagestore_core::{
    ByteStream, Digest, Error, Image, ImageId, Metadata, ObjectKind, Result, StoreName,
};

use crate::layout;
use crate::lease::{self, Acquired, LeaseGuard, LeaseOp, SLACK};
use crate::objects::Created;
use crate::record::{ImageRecord, LinkKind, LinkRecord, encode};
use crate::store::{MAX_CHAIN_DEPTH, S3Store, StoreCtx};
use crate::upload::UploadSink;

/// What to do about an id that may already exist.
pub(crate) async fn existing_or_conflict(
    store: &S3Store,
    st: &StoreCtx,
    id: &ImageId,
    parent: &ImageId,
    sum: Option<&Digest>,
    check_writable: bool,
) -> Result<Option<Image>> {
    if check_writable && store.find_writable(st, id).await?.is_some() {
        return Err(Error::Conflict {
            kind: ObjectKind::Image,
            name: st.name_of(id),
            reason: "a writable layer has this id".to_owned(),
        });
    }
    let Some(r) = store.find_record(st, id).await? else {
        return Ok(None);
    };
    check_existing_write(
        st.name_of(id),
        r.parent.as_ref(),
        r.sum.as_ref(),
        parent,
        sum,
    )?;
    Ok(Some(store.image_of(st, &r)?))
}

/// Checks that `parent` exists and is not being deleted, waiting while a delete of it is in
/// progress. Call after writing the dependent's link or registration. Returns the parent's
/// current record.
pub(crate) async fn check_parent(
    store: &S3Store,
    st: &StoreCtx,
    parent: &ImageId,
) -> Result<ImageRecord> {
    let gone = || {
        Error::not_found(
            ObjectKind::Image,
            format!("{} (deleted meanwhile)", st.name_of(parent)),
        )
    };
    let key = st.keys.lease(parent);
    let mut seen: Option<(String, Instant)> = None;
    let mut delay = Duration::from_millis(40);
    loop {
        // The lease first, then the record: a delete takes the lease before it lists links
        // and removes the record before it releases the lease.
        let held = lease::read(store.objects(), &key).await?;
        let rec = store.find_record_fresh(st, parent).await?;
        let Some(rec) = rec else { return Err(gone()) };
        let Some(l) = held.filter(|l| l.record.op.removes()) else {
            return Ok(rec);
        };
        // A delete is deciding: wait for it to roll back or to remove the record.
        let since = match &seen {
            Some((etag, since)) if *etag == l.etag => *since,
            _ => {
                seen = Some((l.etag.clone(), Instant::now()));
                Instant::now()
            }
        };
        if since.elapsed() > l.record.ttl() + SLACK {
            // Its holder died: finish or undo its work, then look again.
            if let Some(guard) = lease::take_over(
                store.objects(),
                &key,
                &l,
                store.lease_record(LeaseOp::Delete),
            )
            .await?
            {
                crate::sweep::resolve_pending(store, st, parent, &guard.record().await).await?;
                guard.release().await?;
            }
            seen = None;
            continue;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

/// Undoes a write that did not commit: the staged objects, the link and the intent. The lease
/// is released only if all of that worked; otherwise it expires and the sweep finishes.
async fn abandon(
    store: &S3Store,
    st: &StoreCtx,
    id: &ImageId,
    parent: &ImageId,
    nonce: &str,
    guard: LeaseGuard,
) {
    let r: Result<()> = async {
        // The sink aborted its own upload; if that failed, the sweep finds the upload
        // without a live lease.
        crate::sweep::undo_write(store, st, id, Some(parent), nonce, false).await?;
        store
            .objects()
            .delete(&st.keys.log(id, nonce, layout::LogOp::Commit))
            .await?;
        guard.release().await
    }
    .await;
    if let Err(e) = r {
        tracing::warn!(image = %st.name_of(id), error = %e, "cleaning up a failed write failed; the sweep will");
    }
}

impl S3Store {
    /// Writes image `id` on `parent` from `body`; with `sum`, the bytes must hash to it.
    pub(crate) async fn write_layer(
        &self,
        store: &StoreName,
        parent: &ImageId,
        id: &ImageId,
        meta: Metadata,
        sum: Option<Digest>,
        body: ByteStream,
    ) -> Result<Image> {
        let st = self.open_store(store).await?;
        // Cheap checks first: a hit returns at once without touching the body.
        let parent_rec = self.find_record(&st, parent).await?.ok_or_else(|| {
            Error::not_found(
                ObjectKind::Image,
                format!("{} (the parent of {id})", st.name_of(parent)),
            )
        })?;
        if let Some(img) = existing_or_conflict(self, &st, id, parent, sum.as_ref(), false).await? {
            return Ok(img);
        }
        check_depth(parent_rec.depth)?;

        let record = self
            .lease_record(LeaseOp::Write)
            .with_parent(parent.clone());
        let nonce = record.nonce.clone();
        let (guard, taken_over) =
            match lease::acquire(self.objects(), &st.keys.lease(id), record, || {
                existing_or_conflict(self, &st, id, parent, sum.as_ref(), false)
            })
            .await?
            {
                Acquired::Held { guard, taken_over } => (guard, taken_over),
                Acquired::Answered(img) => return Ok(img),
            };
        if taken_over.is_some()
            && let Err(e) =
                crate::sweep::resolve_pending(self, &st, id, &guard.record().await).await
        {
            drop(guard);
            return Err(e);
        }
        // Someone may have committed while we waited for the lease.
        match existing_or_conflict(self, &st, id, parent, sum.as_ref(), true).await {
            Ok(None) => {}
            Ok(Some(img)) => {
                guard.release().await?;
                return Ok(img);
            }
            Err(e) => {
                guard.release().await?;
                return Err(e);
            }
        }
        let staged = self
            .stage(&st, parent, id, &nonce, &guard, meta, sum.clone(), body)
            .await;
        let record = match staged {
            Ok(r) => r,
            Err(e) => {
                abandon(self, &st, id, parent, &nonce, guard).await;
                return Err(e);
            }
        };
        let image = self.image_of(&st, &record)?;
        // With a quota set, the check and the create below happen under the quota lease.
        let quota_guard = match self.quota_gate(&st, record.size).await {
            Ok(g) => g,
            Err(e) => {
                abandon(self, &st, id, parent, &nonce, guard).await;
                return Err(e);
            }
        };
        let key = st.keys.image(id);
        let created = self.objects().create(&key, encode(&record)).await;
        if let Some(q) = quota_guard
            && let Err(e) = q.release().await
        {
            tracing::debug!(error = %e, "releasing the quota lease failed; it expires");
        }
        match created {
            Ok(Created::Created(etag)) => {
                self.cache_record(key, etag, record);
            }
            Ok(Created::Exists) => {
                let winner = self.find_record(&st, id).await?;
                if winner.as_ref().map(|w| &w.nonce) != Some(&nonce) {
                    // Another writer committed first (it took our lease over while we
                    // stalled): ours goes, theirs answers.
                    abandon(self, &st, id, parent, &nonce, guard).await;
                    return match existing_or_conflict(self, &st, id, parent, sum.as_ref(), false)
                        .await?
                    {
                        Some(img) => Ok(img),
                        None => Err(crate::error::backend(
                            format!("image {} vanished during its write", st.name_of(id)),
                            true,
                        )),
                    };
                }
            }
            Err(e) => {
                // Unknown whether the create landed: look, and if even that fails, keep
                // everything; the lease expires and the sweep decides by the record.
                match self.find_record(&st, id).await {
                    Ok(Some(r)) if r.nonce == nonce => {}
                    Ok(_) => {
                        abandon(self, &st, id, parent, &nonce, guard).await;
                        return Err(e);
                    }
                    Err(_) => {
                        drop(guard);
                        return Err(e);
                    }
                }
            }
        }
        if let Err(e) = guard.release().await {
            tracing::debug!(error = %e, "releasing a write lease failed; it expires");
        }
        self.note_change(&st).await;
        Ok(image)
    }

    /// Everything of a write before its commit: link, parent check, upload, TOC, intent.
    /// Returns the record to commit.
    #[allow(clippy::too_many_arguments)]
    async fn stage(
        &self,
        st: &StoreCtx,
        parent: &ImageId,
        id: &ImageId,
        nonce: &str,
        guard: &LeaseGuard,
        meta: Metadata,
        sum: Option<Digest>,
        body: ByteStream,
    ) -> Result<ImageRecord> {
        let o = self.objects();
        let parent_rec = self.find_record(st, parent).await?.ok_or_else(|| {
            Error::not_found(
                ObjectKind::Image,
                format!("{} (the parent of {id})", st.name_of(parent)),
            )
        })?;
        o.put(
            &st.keys.child(parent, id),
            encode(&LinkRecord {
                nonce: nonce.to_owned(),
                kind: LinkKind::Image,
                parent_nonce: parent_rec.nonce.clone(),
            }),
        )
        .await?;
        let parent_rec = match check_parent(self, st, parent).await {
            Ok(r) if r.nonce == parent_rec.nonce => r,
            Ok(_) | Err(Error::NotFound { .. }) => {
                return Err(Error::not_found(
                    ObjectKind::Image,
                    format!(
                        "{} (the parent of {id}, deleted during the write)",
                        st.name_of(parent)
                    ),
                ));
            }
            Err(e) => return Err(e),
        };
        check_depth(parent_rec.depth)?;

        let lower: Arc<dyn LowerView> = Arc::new(
            self.stack_of_chain(st, &parent_rec.child_chain(), &[], id)
                .await?
                .chain(),
        );
        let cfg = &self.inner.config;
        let mut sink = UploadSink::new(
            o.clone(),
            st.keys.layer(id, nonce),
            cfg.part_size,
            cfg.upload_concurrency,
        );
        let ingested = match ingest(
            body,
            sum.as_ref(),
            &mut sink,
            lower,
            IngestLimits::default(),
        )
        .await
        {
            Ok(i) => i,
            Err(e) => {
                sink.abort().await;
                return Err(e);
            }
        };
        guard.ensure_fresh().await?;
        sink.finish().await?;
        let toc = ingested.toc.to_bytes()?;
        let toc_key = st.keys.toc(id, nonce);
        o.put(&toc_key, toc).await?;
        self.cache_toc(toc_key, Arc::new(ingested.toc));
        let record = ImageRecord::new(
            id.clone(),
            nonce.to_owned(),
            Some(parent.clone()),
            parent_rec.child_chain(),
            Some(ingested.digest.clone()),
            ingested.size,
            parent_rec.depth + 1,
            &meta,
        );
        o.put(&st.keys.log(id, nonce, layout::LogOp::Commit), Vec::new())
            .await?;
        guard.ensure_fresh().await?;
        Ok(record)
    }
}

fn check_depth(parent_depth: u32) -> Result<()> {
    imagestore_core::storer::check_depth(parent_depth, MAX_CHAIN_DEPTH)
}
