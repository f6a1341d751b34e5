//! Store lifecycle: creating a store with its `scratch` root image, and deleting it.
//!
//! Both run under the store's lease (`leases/<store>`). A store is created by writing the
//! scratch layer, its TOC and an empty index under a fresh generation, then creating
//! `stores/<store>.json` conditionally: that one object makes the store exist. A store is
//! deleted by taking its scratch image's lease as a delete (so writers on scratch wait),
//! checking it holds nothing, removing the record (the store is gone from then on), then
//! removing the generation's objects.

use std::sync::Arc;

use imagestore_core::layer::ingest::{IngestLimits, read_toc};
use imagestore_core::layer::scratch::skeleton_tar;
use imagestore_core::layer::validate::EmptyView;
use imagestore_core::{Error, ImageId, Metadata, ObjectKind, Result, StoreName};

use crate::index::Index;
use crate::layout::{self, StoreKeys};
use crate::lease::{self, Acquired, LeaseOp};
use crate::objects::Created;
use crate::record::{ImageRecord, RECORD_VERSION, StoreRecord, encode};
use crate::store::{S3Store, StoreCtx};

/// Creates store `s`; `AlreadyExists` if it exists.
pub(crate) async fn create_store(store: &S3Store, s: &StoreName) -> Result<()> {
    let o = store.objects();
    if store.read_store(s).await?.is_some() {
        return Err(Error::already_exists(ObjectKind::Store, s));
    }
    let generation = layout::nonce();
    let record = store
        .lease_record(LeaseOp::CreateStore)
        .with_target(generation.clone());
    let guard = match lease::acquire(o, &layout::store_lease(s), record, || async {
        Ok(store.read_store(s).await?.map(|_| ()))
    })
    .await?
    {
        Acquired::Held { guard, taken_over } => {
            if taken_over.is_some() {
                for dead in guard.record().await.pending_chain() {
                    crate::sweep::resolve_store_op(store, s, &dead).await?;
                }
            }
            guard
        }
        Acquired::Answered(()) => return Err(Error::already_exists(ObjectKind::Store, s)),
    };
    let keys = StoreKeys::new(s, &generation);
    let r: Result<bool> = async {
        if store.read_store(s).await?.is_some() {
            return Ok(false);
        }
        let tar = skeleton_tar()?;
        let toc = read_toc(tar.as_slice(), &EmptyView, IngestLimits::default())?;
        let id = ImageId::scratch();
        let nonce = layout::nonce();
        let size = tar.len() as u64;
        o.put(&keys.layer(&id, &nonce), tar).await?;
        let toc_key = keys.toc(&id, &nonce);
        o.put(&toc_key, toc.to_bytes()?).await?;
        store.cache_toc(toc_key, Arc::new(toc));
        o.put(&keys.index(), Index::default().encode()).await?;
        let rec = StoreRecord {
            version: RECORD_VERSION,
            store: s.clone(),
            generation: generation.clone(),
            scratch: ImageRecord::new(id, nonce, None, Vec::new(), None, size, 0, &Metadata::new()),
        };
        guard.ensure_fresh().await?;
        match o.create(&layout::store_record(s), encode(&rec)).await? {
            Created::Created(_) => Ok(true),
            Created::Exists => Ok(store
                .read_store(s)
                .await?
                .is_some_and(|r| r.generation == generation)),
        }
    }
    .await;
    match r {
        Ok(true) => {
            store.mark_swept(s, &generation);
            guard.release().await
        }
        Ok(false) => {
            crate::sweep::resolve_store_op(store, s, &guard.record().await).await?;
            guard.release().await?;
            Err(Error::already_exists(ObjectKind::Store, s))
        }
        Err(e) => {
            if crate::sweep::resolve_store_op(store, s, &guard.record().await)
                .await
                .is_ok()
            {
                guard.release().await?;
            }
            Err(e)
        }
    }
}

/// Deletes store `s`, refusing while it holds images, writable layers or references.
pub(crate) async fn delete_store(store: &S3Store, s: &StoreName) -> Result<()> {
    let o = store.objects();
    let st = store.open_store(s).await?;
    let record = store
        .lease_record(LeaseOp::DeleteStore)
        .with_target(st.record.generation.clone());
    let guard = match lease::acquire(o, &layout::store_lease(s), record, || async {
        Ok(match store.read_store(s).await? {
            None => Some(()),
            Some(_) => None,
        })
    })
    .await?
    {
        Acquired::Held { guard, taken_over } => {
            if taken_over.is_some() {
                for dead in guard.record().await.pending_chain() {
                    crate::sweep::resolve_store_op(store, s, &dead).await?;
                }
            }
            guard
        }
        Acquired::Answered(()) => return Err(Error::not_found(ObjectKind::Store, s)),
    };
    let r = delete_locked(store, &st, s).await;
    match &r {
        Ok(()) | Err(Error::NotFound { .. } | Error::Conflict { .. }) => guard.release().await?,
        Err(_) => drop(guard),
    }
    r
}

async fn delete_locked(store: &S3Store, st: &StoreCtx, s: &StoreName) -> Result<()> {
    let o = store.objects();
    match store.read_store(s).await? {
        Some(r) if r.generation == st.record.generation => {}
        _ => return Err(Error::not_found(ObjectKind::Store, s)),
    }
    let scratch = ImageId::scratch();
    // Writers and writable layers on scratch wait while this lease says "delete".
    let sguard = match lease::acquire(
        o,
        &st.keys.lease(&scratch),
        store
            .lease_record(LeaseOp::Delete)
            .with_target(st.record.scratch.nonce.clone()),
        || async { Ok(None::<()>) },
    )
    .await?
    {
        Acquired::Held { guard, .. } => guard,
        Acquired::Answered(()) => return Err(Error::not_found(ObjectKind::Store, s)),
    };
    let mut left: Vec<String> = store
        .view(st)
        .await?
        .records
        .keys()
        .map(ToString::to_string)
        .collect();
    left.extend(
        o.list(&st.keys.writables_dir())
            .await?
            .iter()
            .map(|m| format!("writable {}", layout::last_segment(&o.rel(&m.location)))),
    );
    for m in o.list(&st.keys.refs_dir()).await? {
        let key = layout::last_segment(&o.rel(&m.location)).to_owned();
        if let Some((r, _)) = store.read_ref(st, &key).await? {
            left.push(format!("reference {}", r.name));
        }
    }
    if left.is_empty() {
        let listed = store.list_users(st, &st.record.scratch.id).await?;
        left = store
            .users(st, &st.record.scratch, &listed, &|_| {
                crate::store::Sibling::Other
            })
            .await?;
    }
    if !left.is_empty() {
        sguard.release().await?;
        return Err(imagestore_core::storer::store_not_empty(s, &left));
    }
    sguard.ensure_fresh().await?;
    // Gone from here on.
    o.delete(&layout::store_record(s)).await?;
    drop(sguard);
    crate::sweep::resolve_store_op(
        store,
        s,
        &store
            .lease_record(LeaseOp::DeleteStore)
            .with_target(st.record.generation.clone()),
    )
    .await
}
