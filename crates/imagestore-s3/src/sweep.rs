//! Finishing or undoing the work of hosts that died, and sweeping leftovers.
//!
//! Every change to a store happens under a lease (`leases/<id>`), and a lease is released
//! only after its work is complete or fully undone. So whatever a dead host left behind is
//! reachable from a lease that stopped being renewed: the sweep (on the first use of a store
//! by a backend instance) takes such leases over, finishes or undoes their operation, and
//! deletes them. Multipart uploads are listed too, and those of ids without a live lease are
//! aborted. Live work of other hosts is never touched: their leases are renewed, and the
//! sweep judges age by the server's clock, read from an object it writes for the purpose.
//! Each step is idempotent, so a sweep that dies is finished by the next one.

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use imagestore_core::{Error, ImageId, Result, StoreName};

use crate::layout::{self, StoreKeys};
use crate::lease::{self, LeaseOp, LeaseRecord, Observed, SLACK};
use crate::record::{LinkRecord, encode};
use crate::store::{S3Store, StoreCtx};

/// The server's current time: the `last_modified` of an object written (and removed) under
/// `dir` for the purpose.
pub(crate) async fn server_now(store: &S3Store, dir: &str) -> Result<DateTime<Utc>> {
    let o = store.objects();
    let key = format!("{dir}/{}", layout::nonce());
    o.put(&key, Vec::new()).await?;
    let meta = o.head(&key).await?;
    o.delete(&key).await?;
    meta.map(|m| m.last_modified)
        .ok_or_else(|| crate::objects::missing(&o.show(&key)))
}

/// Removes clock objects of sweeps that died (or failed to delete theirs) between writing
/// and removing them.
async fn remove_stale_clocks(store: &S3Store, dir: &str, now: DateTime<Utc>) -> Result<()> {
    let o = store.objects();
    let limit = store.ttl() + SLACK;
    let stale: Vec<String> = o
        .list(dir)
        .await?
        .iter()
        .filter(|m| {
            now.signed_duration_since(m.last_modified)
                .to_std()
                .is_ok_and(|age| age > limit)
        })
        .map(|m| o.rel(&m.location))
        .collect();
    o.delete_many(stale).await
}

/// True when a lease has not been renewed for longer than its TTL, by the server's clock.
pub(crate) fn is_dead(l: &Observed, now: DateTime<Utc>) -> bool {
    let age = now.signed_duration_since(l.last_modified);
    age.to_std().is_ok_and(|age| age > l.record.ttl() + SLACK)
}

/// Deletes every object under `dir` and aborts the uploads there.
async fn delete_tree(store: &S3Store, dir: &str, uploads: bool) -> Result<()> {
    let o = store.objects();
    if uploads {
        for u in o.list_uploads(dir).await? {
            o.abort_upload(&u.key, &u.id).await?;
        }
    }
    let keys = o.list_keys(dir).await?;
    for batch in keys.chunks(1000) {
        o.delete_many(batch.to_vec()).await?;
    }
    Ok(())
}

/// Deletes the link `parent → id` if it was made by `nonce`. If the id is committed on the
/// same parent by another write, the link is pointed at that write instead.
async fn unlink(
    store: &S3Store,
    st: &StoreCtx,
    parent: &ImageId,
    id: &ImageId,
    nonce: &str,
) -> Result<()> {
    let o = store.objects();
    let key = st.keys.child(parent, id);
    let Some(got) = o.get(&key).await? else {
        return Ok(());
    };
    let link = match LinkRecord::parse(&key, &got.bytes) {
        Ok(l) => l,
        Err(_) => return o.delete(&key).await,
    };
    if link.nonce != nonce {
        return Ok(());
    }
    if let Some(r) = store.find_record(st, id).await?
        && r.parent.as_ref() == Some(parent)
    {
        let parent_nonce = r.chain.last().map(|l| l.nonce.clone()).unwrap_or_default();
        o.put(
            &key,
            encode(&LinkRecord {
                nonce: r.nonce,
                kind: crate::record::LinkKind::Image,
                parent_nonce,
            }),
        )
        .await?;
        return Ok(());
    }
    o.delete(&key).await
}

/// Undoes a write of `id` with `nonce` that did not commit: its upload, layer, TOC and link.
/// Does nothing if the record carries that nonce (the write did commit).
pub(crate) async fn undo_write(
    store: &S3Store,
    st: &StoreCtx,
    id: &ImageId,
    parent: Option<&ImageId>,
    nonce: &str,
    uploads: bool,
) -> Result<()> {
    if store
        .find_record(st, id)
        .await?
        .is_some_and(|r| r.nonce == nonce)
    {
        return Ok(());
    }
    let o = store.objects();
    let dir = st.keys.layer_dir(id, nonce);
    if uploads {
        for u in o.list_uploads(&dir).await? {
            o.abort_upload(&u.key, &u.id).await?;
        }
    }
    o.delete_many(vec![st.keys.layer(id, nonce), st.keys.toc(id, nonce)])
        .await?;
    if let Some(p) = parent {
        unlink(store, st, p, id, nonce).await?;
    }
    Ok(())
}

/// The rest of a delete once the record is gone: layer, TOC, link, owner registrations,
/// reference links.
pub(crate) async fn finish_delete(
    store: &S3Store,
    st: &StoreCtx,
    id: &ImageId,
    nonce: &str,
    parent: Option<&ImageId>,
) -> Result<()> {
    let o = store.objects();
    o.delete_many(vec![st.keys.layer(id, nonce), st.keys.toc(id, nonce)])
        .await?;
    if let Some(p) = parent {
        unlink(store, st, p, id, nonce).await?;
    }
    // Under the image's lease with its record gone, a child link left belongs to a write
    // that fails its check of the parent, or to none.
    let mut stale = o.list_keys(&st.keys.children_dir(id)).await?;
    // Owners of this image, and of earlier images of the id (their registrations are never
    // removed while a delete decides, see `S3Store::users`): no image of this id exists
    // while its lease is held.
    for m in o.list(&st.keys.owners_dir(id)).await? {
        stale.push(o.rel(&m.location));
    }
    // Under the image's lease with its record gone, every reference link left belongs to a
    // change that fails its check of the image, or to none.
    for m in o.list(&st.keys.ref_links_dir(id)).await? {
        stale.push(o.rel(&m.location));
    }
    o.delete_many(stale).await
}

/// Undoes a writable-layer creation that did not commit.
pub(crate) async fn undo_create_writable(
    store: &S3Store,
    st: &StoreCtx,
    id: &ImageId,
    parent: &ImageId,
    nonce: &str,
) -> Result<()> {
    if store
        .find_writable(st, id)
        .await?
        .is_some_and(|w| w.nonce == nonce)
    {
        return Ok(());
    }
    unlink(store, st, parent, id, nonce).await
}

/// Removes the imports of writable layer `id` that never got their TOC.
pub(crate) async fn undo_imports(
    store: &S3Store,
    st: &StoreCtx,
    id: &ImageId,
    wnonce: &str,
    uploads: bool,
) -> Result<()> {
    let o = store.objects();
    let dir = st.keys.imports_dir(id, wnonce);
    if uploads {
        for u in o.list_uploads(&dir).await? {
            o.abort_upload(&u.key, &u.id).await?;
        }
    }
    let keys = o.list_keys(&dir).await?;
    let doomed: Vec<String> = keys
        .iter()
        .filter(|k| {
            k.strip_suffix("/layer")
                .is_some_and(|d| !keys.contains(&format!("{d}/toc")))
        })
        .cloned()
        .collect();
    o.delete_many(doomed).await
}

/// The rest of a writable-layer delete once its record is gone.
pub(crate) async fn finish_delete_writable(
    store: &S3Store,
    st: &StoreCtx,
    id: &ImageId,
    wnonce: &str,
    parent: &ImageId,
) -> Result<()> {
    delete_tree(store, &st.keys.imports_dir(id, wnonce), true).await?;
    unlink(store, st, parent, id, wnonce).await
}

/// Finishes or undoes the operations a taken-over lease carries (`record.pending`).
pub(crate) async fn resolve_pending(
    store: &S3Store,
    st: &StoreCtx,
    id: &ImageId,
    record: &LeaseRecord,
) -> Result<()> {
    for dead in record.pending_chain() {
        info!(image = %st.name_of(id), op = ?dead.op, holder = %dead.holder, "finishing the work of a dead host");
        resolve(store, st, id, &dead).await?;
    }
    Ok(())
}

/// Finishes or undoes one dead holder's operation on `id`.
async fn resolve(store: &S3Store, st: &StoreCtx, id: &ImageId, dead: &LeaseRecord) -> Result<()> {
    match dead.op {
        LeaseOp::Write => undo_write(store, st, id, dead.parent.as_ref(), &dead.nonce, true).await,
        LeaseOp::Delete => {
            let Some(victim) = &dead.target else {
                // It died before choosing what to delete.
                return Ok(());
            };
            match store.find_record(st, id).await? {
                // It died before removing the record: nothing happened. A record other than
                // the victim means the same: records change only under this lease, so the
                // holder named a victim it expected (a batch names the one its listing
                // showed) and never removed this record.
                Some(_) => Ok(()),
                None => finish_delete(store, st, id, victim, dead.parent.as_ref()).await,
            }
        }
        LeaseOp::CreateWritable => match &dead.parent {
            Some(p) => undo_create_writable(store, st, id, p, &dead.nonce).await,
            None => Ok(()),
        },
        LeaseOp::Import => match &dead.target {
            Some(w) => undo_imports(store, st, id, w, true).await,
            None => Ok(()),
        },
        LeaseOp::DeleteWritable => {
            let Some(wnonce) = &dead.target else {
                return Ok(());
            };
            match store.find_writable(st, id).await? {
                Some(w) if &w.nonce == wnonce => Ok(()),
                _ => {
                    let parent = dead.parent.clone();
                    delete_tree(store, &st.keys.imports_dir(id, wnonce), true).await?;
                    if let Some(p) = parent {
                        unlink(store, st, &p, id, wnonce).await?;
                    }
                    Ok(())
                }
            }
        }
        // A commit of a writable layer writes the new image under that image's own lease,
        // then deletes the writable layer under this one; both are resolved on their own.
        LeaseOp::CommitWritable => Ok(()),
        LeaseOp::CreateStore
        | LeaseOp::DeleteStore
        | LeaseOp::Reference
        | LeaseOp::DeleteBlob
        | LeaseOp::Quota => Err(Error::corrupt(
            store.objects().show(&st.keys.lease(id)),
            format!("a {:?} lease among the image leases", dead.op),
        )),
    }
}

/// Sweeps one store: dead leases, abandoned uploads, then folds the index log.
pub(crate) async fn sweep_store(store: &S3Store, st: &StoreCtx) -> Result<()> {
    let o = store.objects();
    let clock_dir = format!("{}/clock", st.keys.base);
    let now = server_now(store, &clock_dir).await?;
    remove_stale_clocks(store, &clock_dir, now).await?;
    let mut resolved = 0usize;
    let mut live = std::collections::HashSet::new();
    for meta in o.list(&st.keys.leases_dir()).await? {
        let rel = o.rel(&meta.location);
        let Ok(id) = ImageId::new(layout::last_segment(&rel)) else {
            continue;
        };
        let l = match lease::read(o, &rel).await {
            Ok(Some(l)) => l,
            Ok(None) => continue,
            Err(e) => {
                warn!(lease = %rel, error = %e, "unreadable lease left alone");
                live.insert(id);
                continue;
            }
        };
        if !is_dead(&l, now) {
            live.insert(id);
            continue;
        }
        let Some(guard) = lease::take_over(o, &rel, &l, store.lease_record(l.record.op)).await?
        else {
            live.insert(id);
            continue;
        };
        resolve_pending(store, st, &id, &guard.record().await).await?;
        guard.release().await?;
        resolved += 1;
    }
    resolved += sweep_refs(store, st, now).await?;
    let mut aborted = 0usize;
    for u in o.list_uploads(&st.keys.base).await? {
        let Some((id, _)) = st.keys.owner_of_upload(&u.key) else {
            continue;
        };
        if live.contains(&id) {
            continue;
        }
        // A lease taken after our listing is live work: look again before aborting.
        if let Some(l) = lease::read(o, &st.keys.lease(&id)).await?
            && !is_dead(&l, now)
        {
            continue;
        }
        o.abort_upload(&u.key, &u.id).await?;
        aborted += 1;
    }
    if resolved + aborted > 0 {
        info!(store = %st.name, resolved, aborted, "swept leftovers of dead hosts");
    }
    store.fold(st).await
}

/// Finishes reference changes and blob deletes whose hosts died, then removes reference links
/// no record backs, each under its reference's lease so that no change is running meanwhile.
/// Returns how many dead leases it resolved.
async fn sweep_refs(store: &S3Store, st: &StoreCtx, now: DateTime<Utc>) -> Result<usize> {
    let o = store.objects();
    let mut resolved = 0;
    for (dir, op) in [
        (st.keys.ref_leases_dir(), LeaseOp::Reference),
        (st.keys.blob_leases_dir(), LeaseOp::DeleteBlob),
    ] {
        for meta in o.list(&dir).await? {
            let rel = o.rel(&meta.location);
            let Ok(Some(l)) = lease::read(o, &rel).await else {
                continue;
            };
            if !is_dead(&l, now) {
                continue;
            }
            let Some(guard) = lease::take_over(o, &rel, &l, store.lease_record(op)).await? else {
                continue;
            };
            if op == LeaseOp::Reference {
                let key = layout::last_segment(&rel).to_owned();
                store
                    .resolve_ref_pending(st, &key, &guard.record().await)
                    .await?;
            }
            guard.release().await?;
            resolved += 1;
        }
    }
    let mut links = o.list(&st.keys.all_ref_links_dir()).await?;
    links.extend(o.list(&st.keys.all_blob_links_dir()).await?);
    for meta in links {
        let rel = o.rel(&meta.location);
        let Some((_, key)) = st.keys.parse_link(&rel) else {
            continue;
        };
        let backed = store.read_ref(st, &key).await?.is_some_and(|(r, _)| {
            st.keys.parse_link(&rel).is_some_and(|(t, _)| match t {
                layout::LinkTarget::Image(id) => r.target.image == id,
                layout::LinkTarget::Blob(d) => r.target.blobs().any(|b| *b == d),
            })
        });
        if backed {
            continue;
        }
        // Only while no change of the reference runs: take its lease if it is free.
        let record = store
            .lease_record(LeaseOp::Reference)
            .with_links(vec![rel.clone()]);
        if let lease::Acquired::Held { guard, .. } =
            lease::try_acquire(o, &st.keys.ref_lease(&key), record).await?
        {
            store.unlink_unbacked(st, &key, &[rel]).await?;
            guard.release().await?;
        }
    }
    Ok(resolved)
}

/// Finishes or undoes store creations and deletions whose hosts died. Runs when a backend
/// instance opens.
pub(crate) async fn sweep_root(store: &S3Store) -> Result<()> {
    let o = store.objects();
    let leases = o.list(layout::STORE_LEASES_DIR).await?;
    let clocks = o.list(layout::CLOCK_DIR).await?;
    if leases.is_empty() && clocks.is_empty() {
        return Ok(());
    }
    let now = server_now(store, layout::CLOCK_DIR).await?;
    remove_stale_clocks(store, layout::CLOCK_DIR, now).await?;
    for meta in leases {
        let rel = o.rel(&meta.location);
        let Ok(s) = StoreName::new(layout::last_segment(&rel)) else {
            continue;
        };
        let l = match lease::read(o, &rel).await {
            Ok(Some(l)) => l,
            Ok(None) => continue,
            Err(e) => {
                warn!(lease = %rel, error = %e, "unreadable store lease left alone");
                continue;
            }
        };
        if !is_dead(&l, now) {
            continue;
        }
        let Some(guard) = lease::take_over(o, &rel, &l, store.lease_record(l.record.op)).await?
        else {
            continue;
        };
        for dead in guard.record().await.pending_chain() {
            resolve_store_op(store, &s, &dead).await?;
        }
        guard.release().await?;
    }
    Ok(())
}

/// Finishes or undoes a dead host's creation or deletion of store `s`.
pub(crate) async fn resolve_store_op(
    store: &S3Store,
    s: &StoreName,
    dead: &LeaseRecord,
) -> Result<()> {
    let Some(generation) = &dead.target else {
        return Ok(());
    };
    let current = store.read_store(s).await?;
    if current
        .as_ref()
        .is_some_and(|r| &r.generation == generation)
    {
        // The creation committed, or the deletion never removed the record: all is well
        // (a half-deleted store keeps working; its images were checked to be gone).
        return Ok(());
    }
    info!(store = %s, op = ?dead.op, "removing the objects of a store generation a dead host left");
    let keys = StoreKeys::new(s, generation);
    delete_tree(store, &keys.base, true).await
}
