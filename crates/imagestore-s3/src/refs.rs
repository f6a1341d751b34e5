//! References and blobs of an S3 store, safe for many hosts sharing the bucket.
//!
//! ```text
//! refs/<key>                      a reference's record (layout::ref_key), changed by CAS on its ETag
//! refleases/<key>                 the lease every change of that reference holds
//! reflinks/<id>/<key>             the reference's link on image <id>
//! bloblinks/<blob>/<key>          the reference's link on a blob it names
//! blobs/<algorithm>-<hex>         a manifest or config, byte for byte
//! blobleases/<blob>               the lease a blob delete holds
//! ```
//!
//! A reference change takes the reference's lease, writes its links on the new image and
//! blobs, then checks each target the way a child write checks its parent (the target's lease
//! first, waiting while it is a delete, then the target itself), puts the record conditionally
//! on the ETag it read, removes the links the old target no longer needs and releases the
//! lease. A delete of an image or blob takes the target's lease, then lists its links: a link
//! counts while the reference's lease is held or the record names the target. The argument is
//! in `docs/decisions/0018-s3-references-and-quota.md`.

use std::collections::BTreeSet;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use tracing::{info, warn};

use imagestore_core::backend::record::decode;
use imagestore_core::refs::{RefRecord, check_blob};
use imagestore_core::{
    BlobInfo, Digest, Error, Expect, ObjectKind, Pin, RefName, RefTarget, Reference, References,
    Result, StoreName,
};

use crate::layout::{self, LinkTarget};
use crate::lease::{self, Acquired, LeaseGuard, LeaseOp, LeaseRecord, SLACK};
use crate::objects::{Created, Updated};
use crate::record::{RefLinkRecord, encode};
use crate::store::{S3Store, StoreCtx};

/// Concurrent record reads when listing references.
const READS: usize = 16;

/// Attempts of a reference change whose conditional put lost to another change.
const CAS_ATTEMPTS: usize = 8;

/// True if reference record `r` names `t`.
fn names(r: &RefRecord, t: &LinkTarget) -> bool {
    match t {
        LinkTarget::Image(id) => r.target.image == *id,
        LinkTarget::Blob(d) => r.target.blobs().any(|b| b == d),
    }
}

/// What a target keeps: its image and its blobs.
fn targets_of(t: &RefTarget) -> Vec<LinkTarget> {
    let mut out = vec![LinkTarget::Image(t.image.clone())];
    for d in t.blobs() {
        let l = LinkTarget::Blob(d.clone());
        if !out.contains(&l) {
            out.push(l);
        }
    }
    out
}

/// True if a lease naming links `held` names every one of `wanted`.
fn covers(held: &[String], wanted: &[String]) -> bool {
    wanted.iter().all(|w| held.contains(w))
}

impl S3Store {
    /// The record of the reference with key `key` and its ETag; `None` if absent.
    pub(crate) async fn read_ref(
        &self,
        st: &StoreCtx,
        key: &str,
    ) -> Result<Option<(RefRecord, String)>> {
        let k = st.keys.reference(key);
        match self.objects().get(&k).await? {
            None => Ok(None),
            Some(got) => Ok(Some((
                decode(&self.objects().show(&k), &got.bytes)?,
                got.etag.unwrap_or_default(),
            ))),
        }
    }

    /// Removes those of `links` (all of reference `key`) that the reference's record does not
    /// name. Call with the reference's lease held.
    pub(crate) async fn unlink_unbacked(
        &self,
        st: &StoreCtx,
        key: &str,
        links: &[String],
    ) -> Result<()> {
        if links.is_empty() {
            return Ok(());
        }
        let current = self.read_ref(st, key).await?.map(|(r, _)| r);
        let mut doomed = Vec::new();
        for l in links {
            let Some((target, k)) = st.keys.parse_link(l) else {
                continue;
            };
            if k == key && !current.as_ref().is_some_and(|r| names(r, &target)) {
                doomed.push(l.clone());
            }
        }
        self.objects().delete_many(doomed).await
    }

    /// Finishes what the dead holders a reference lease carries left: removes their links the
    /// record does not back.
    pub(crate) async fn resolve_ref_pending(
        &self,
        st: &StoreCtx,
        key: &str,
        record: &LeaseRecord,
    ) -> Result<()> {
        for dead in record.pending_chain() {
            info!(store = %st.name, reference = key, holder = %dead.holder, "finishing a reference change of a dead host");
            self.unlink_unbacked(st, key, &dead.links).await?;
        }
        Ok(())
    }

    /// Takes reference `key`'s lease for a change touching `links`.
    async fn ref_lease(&self, st: &StoreCtx, key: &str, links: Vec<String>) -> Result<LeaseGuard> {
        let record = self.lease_record(LeaseOp::Reference).with_links(links);
        match lease::acquire(self.objects(), &st.keys.ref_lease(key), record, || async {
            Ok(None::<()>)
        })
        .await?
        {
            Acquired::Held { guard, taken_over } => {
                if taken_over.is_some()
                    && let Err(e) = self
                        .resolve_ref_pending(st, key, &guard.record().await)
                        .await
                {
                    drop(guard);
                    return Err(e);
                }
                Ok(guard)
            }
            Acquired::Answered(()) => Err(crate::error::backend(
                format!("reference lease {key} answered without a holder"),
                false,
            )),
        }
    }

    /// Ends a reference change: removes the links in `links` the record does not back and
    /// releases the lease; if the cleanup fails the lease is kept to expire, so whoever comes
    /// next (the sweep, a later change) finishes it.
    async fn end_ref_change(
        &self,
        st: &StoreCtx,
        key: &str,
        links: &[String],
        guard: LeaseGuard,
    ) -> Result<()> {
        match self.unlink_unbacked(st, key, links).await {
            Ok(()) => guard.release().await,
            Err(e) => {
                warn!(store = %st.name, reference = key, error = %e, "reference links left for the sweep");
                drop(guard);
                Ok(())
            }
        }
    }

    /// Checks that `target` exists and is not being deleted, waiting while a delete of it is
    /// in progress. Call after writing the link on it.
    async fn check_target(&self, st: &StoreCtx, target: &LinkTarget) -> Result<()> {
        match target {
            LinkTarget::Image(id) => crate::write::check_parent(self, st, id).await.map(|_| ()),
            LinkTarget::Blob(d) => self.check_blob_present(st, d).await,
        }
    }

    /// [`S3Store::check_target`] for a blob: its lease first, then the blob.
    async fn check_blob_present(&self, st: &StoreCtx, d: &Digest) -> Result<()> {
        let o = self.objects();
        let key = st.keys.blob_lease(d);
        let mut seen: Option<(String, std::time::Instant)> = None;
        let mut delay = std::time::Duration::from_millis(40);
        loop {
            let held = lease::read(o, &key).await?;
            if o.head(&st.keys.blob(d)).await?.is_none() {
                return Err(Error::not_found(
                    ObjectKind::Blob,
                    format!("{}/{d}", st.name),
                ));
            }
            let Some(l) = held else { return Ok(()) };
            let since = match &seen {
                Some((etag, since)) if *etag == l.etag => *since,
                _ => {
                    seen = Some((l.etag.clone(), std::time::Instant::now()));
                    std::time::Instant::now()
                }
            };
            if since.elapsed() > l.record.ttl() + SLACK {
                // Its holder died; a blob delete leaves nothing to finish.
                if let Some(g) =
                    lease::take_over(o, &key, &l, self.lease_record(LeaseOp::DeleteBlob)).await?
                {
                    g.release().await?;
                }
                seen = None;
                continue;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_millis(500));
        }
    }

    /// The references whose links on `target` count: `reference <name>` for those whose
    /// record names it, `reference <name> (in progress)` for those being changed. Links of
    /// changes whose host died are resolved on the way; other links are left alone (see the
    /// decision record for why a delete must not remove them). Call with the target's lease
    /// held as a delete.
    pub(crate) async fn link_users(
        &self,
        st: &StoreCtx,
        target: &LinkTarget,
    ) -> Result<Vec<String>> {
        let o = self.objects();
        let dir = match target {
            LinkTarget::Image(id) => st.keys.ref_links_dir(id),
            LinkTarget::Blob(d) => st.keys.blob_links_dir(d),
        };
        let links = o.list_keys(&dir).await?;
        self.link_users_of(st, target, &links).await
    }

    /// [`S3Store::link_users`] for links already listed (`links`, keys of `target`'s links).
    pub(crate) async fn link_users_of(
        &self,
        st: &StoreCtx,
        target: &LinkTarget,
        links: &[String],
    ) -> Result<Vec<String>> {
        let o = self.objects();
        let mut users = Vec::new();
        let mut now: Option<DateTime<Utc>> = None;
        for rel in links {
            let rel = rel.clone();
            let key = layout::last_segment(&rel).to_owned();
            let shown = match o.get(&rel).await? {
                Some(got) => RefLinkRecord::parse(&rel, &got.bytes)
                    .map(|l| l.name.to_string())
                    .unwrap_or_else(|_| key.clone()),
                None => continue,
            };
            // The lease first: links change only under it, and it is released only after the
            // record names the target or the link is gone.
            let lease_key = st.keys.ref_lease(&key);
            if let Some(l) = lease::read(o, &lease_key).await? {
                let t = match now {
                    Some(t) => t,
                    None => {
                        let t = crate::sweep::server_now(self, &format!("{}/clock", st.keys.base))
                            .await?;
                        now = Some(t);
                        t
                    }
                };
                let resolved = if crate::sweep::is_dead(&l, t) {
                    match lease::take_over(o, &lease_key, &l, self.lease_record(LeaseOp::Reference))
                        .await?
                    {
                        Some(g) => {
                            self.resolve_ref_pending(st, &key, &g.record().await)
                                .await?;
                            g.release().await?;
                            true
                        }
                        None => false,
                    }
                } else {
                    false
                };
                if !resolved {
                    users.push(format!("reference {shown} (in progress)"));
                    continue;
                }
            }
            if let Some((r, _)) = self.read_ref(st, &key).await?
                && names(&r, target)
            {
                users.push(format!("reference {}", r.name));
            }
        }
        Ok(users)
    }

    async fn set_ref(
        &self,
        s: &StoreName,
        name: &RefName,
        target: &RefTarget,
        expect: &Expect,
    ) -> Result<Reference> {
        target.validate()?;
        let st = self.open_store(s).await?;
        // Cheap checks before any lease; they are made again, race-safely, after linking.
        self.record(&st, &target.image).await?;
        for d in target.blobs() {
            if self.objects().head(&st.keys.blob(d)).await?.is_none() {
                return Err(Error::not_found(ObjectKind::Blob, format!("{s}/{d}")));
            }
        }
        let key = layout::ref_key(name);
        let before = self.read_ref(&st, &key).await?;
        expect.check(s, name, before.as_ref().map(|(r, _)| &r.target))?;
        let new_links: Vec<String> = targets_of(target)
            .iter()
            .map(|t| st.keys.link(t, &key))
            .collect();
        let mut links: BTreeSet<String> = new_links.iter().cloned().collect();
        if let Some((r, _)) = &before {
            links.extend(targets_of(&r.target).iter().map(|t| st.keys.link(t, &key)));
        }
        let guard = self
            .ref_lease(&st, &key, links.iter().cloned().collect())
            .await?;
        let r = self
            .set_locked(&st, name, &key, target, expect, &new_links, &guard)
            .await;
        let touched = guard.record().await.links;
        self.end_ref_change(&st, &key, &touched, guard).await?;
        r
    }

    #[allow(clippy::too_many_arguments)]
    async fn set_locked(
        &self,
        st: &StoreCtx,
        name: &RefName,
        key: &str,
        target: &RefTarget,
        expect: &Expect,
        new_links: &[String],
        guard: &LeaseGuard,
    ) -> Result<Reference> {
        let o = self.objects();
        let link = encode(&RefLinkRecord { name: name.clone() });
        let rkey = st.keys.reference(key);
        for _ in 0..CAS_ATTEMPTS {
            let current = self.read_ref(st, key).await?;
            expect.check(&st.name, name, current.as_ref().map(|(r, _)| &r.target))?;
            let mut wanted: Vec<String> = new_links.to_vec();
            if let Some((r, _)) = &current {
                wanted.extend(targets_of(&r.target).iter().map(|t| st.keys.link(t, key)));
            }
            let held = guard.record().await.links;
            if !covers(&held, &wanted) {
                let mut all: BTreeSet<String> = held.into_iter().collect();
                all.extend(wanted);
                guard.set_links(all.into_iter().collect()).await?;
            }
            // Links first, then the checks: a delete of a target takes the target's lease
            // before it lists links, so one of the two sees the other.
            for l in new_links {
                o.put(l, link.clone()).await?;
            }
            for t in targets_of(target) {
                self.check_target(st, &t).await?;
            }
            let rec = RefRecord::new(name.clone(), target.clone());
            guard.ensure_fresh().await?;
            let won = match &current {
                None => matches!(o.create(&rkey, encode(&rec)).await?, Created::Created(_)),
                Some((_, etag)) => matches!(
                    o.update(&rkey, encode(&rec), etag).await?,
                    Updated::Updated(_)
                ),
            };
            // A lost precondition may be our own earlier attempt of this very request.
            let won = won || self.read_ref(st, key).await?.is_some_and(|(r, _)| r == rec);
            if won {
                return Ok(rec.to_reference(&st.name));
            }
            // Another host changed the reference (it took our lease over while we stalled):
            // read it again and check the expectation against what it names now.
        }
        Err(crate::error::backend(
            format!(
                "reference {}/{name} kept changing while setting it",
                st.name
            ),
            true,
        ))
    }

    async fn delete_ref(
        &self,
        s: &StoreName,
        name: &RefName,
        expect: &Expect,
    ) -> Result<Reference> {
        if *expect == Expect::Absent {
            return Err(Error::invalid(
                "a reference expected to be absent cannot be deleted",
            ));
        }
        let st = self.open_store(s).await?;
        let key = layout::ref_key(name);
        let missing = || Error::not_found(ObjectKind::Reference, format!("{s}/{name}"));
        let (before, _) = self.read_ref(&st, &key).await?.ok_or_else(missing)?;
        expect.check(s, name, Some(&before.target))?;
        let links: Vec<String> = targets_of(&before.target)
            .iter()
            .map(|t| st.keys.link(t, &key))
            .collect();
        let guard = self.ref_lease(&st, &key, links).await?;
        let r: Result<Reference> = async {
            let (current, _) = self.read_ref(&st, &key).await?.ok_or_else(missing)?;
            expect.check(s, name, Some(&current.target))?;
            let wanted: Vec<String> = targets_of(&current.target)
                .iter()
                .map(|t| st.keys.link(t, &key))
                .collect();
            let held = guard.record().await.links;
            if !covers(&held, &wanted) {
                let mut all: BTreeSet<String> = held.into_iter().collect();
                all.extend(wanted);
                guard.set_links(all.into_iter().collect()).await?;
            }
            guard.ensure_fresh().await?;
            self.objects().delete(&st.keys.reference(&key)).await?;
            Ok(current.to_reference(s))
        }
        .await;
        let touched = guard.record().await.links;
        self.end_ref_change(&st, &key, &touched, guard).await?;
        r
    }

    async fn list_refs(&self, s: &StoreName) -> Result<Vec<Reference>> {
        let st = self.open_store(s).await?;
        let o = self.objects();
        let keys: Vec<String> = o
            .list(&st.keys.refs_dir())
            .await?
            .iter()
            .map(|m| layout::last_segment(&o.rel(&m.location)).to_owned())
            .collect();
        let st_ref = &st;
        let mut out: Vec<Reference> = futures::stream::iter(keys)
            .map(|k| async move { self.read_ref(st_ref, &k).await })
            .buffered(READS)
            .try_filter_map(|r| async move { Ok(r.map(|(r, _)| r.to_reference(&st_ref.name))) })
            .try_collect()
            .await?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn delete_blob_at(&self, s: &StoreName, d: &Digest) -> Result<()> {
        let st = self.open_store(s).await?;
        let o = self.objects();
        let missing = || Error::not_found(ObjectKind::Blob, format!("{s}/{d}"));
        if o.head(&st.keys.blob(d)).await?.is_none() {
            return Err(missing());
        }
        let guard = match lease::acquire(
            o,
            &st.keys.blob_lease(d),
            self.lease_record(LeaseOp::DeleteBlob),
            || async { Ok(None::<()>) },
        )
        .await?
        {
            Acquired::Held { guard, .. } => guard,
            Acquired::Answered(()) => return Err(missing()),
        };
        let r: Result<()> = async {
            if o.head(&st.keys.blob(d)).await?.is_none() {
                return Err(missing());
            }
            let target = LinkTarget::Blob(d.clone());
            let users = self.link_users(&st, &target).await?;
            if !users.is_empty() {
                return Err(Error::Conflict {
                    kind: ObjectKind::Blob,
                    name: format!("{s}/{d}"),
                    reason: format!("{} names it", users.join(", ")),
                });
            }
            guard.ensure_fresh().await?;
            o.delete(&st.keys.blob(d)).await?;
            // Under the blob's lease with the blob gone, every link left belongs to a change
            // that fails its check or to none.
            let links: Vec<String> = o
                .list(&st.keys.blob_links_dir(d))
                .await?
                .iter()
                .map(|m| o.rel(&m.location))
                .collect();
            o.delete_many(links).await
        }
        .await;
        guard.release().await?;
        r
    }

    async fn blobs_of(&self, s: &StoreName) -> Result<Vec<BlobInfo>> {
        let st = self.open_store(s).await?;
        let o = self.objects();
        let mut out: Vec<BlobInfo> = o
            .list(&st.keys.blobs_dir())
            .await?
            .iter()
            .filter_map(|m| {
                let rel = o.rel(&m.location);
                let digest = layout::parse_blob_name(layout::last_segment(&rel))?;
                Some(BlobInfo {
                    digest,
                    size: m.size,
                    modified_unix_ms: u64::try_from(m.last_modified.timestamp_millis()).ok(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }
}

#[async_trait]
impl References for S3Store {
    async fn set_reference(
        &self,
        store: &StoreName,
        name: &RefName,
        target: &RefTarget,
        expect: &Expect,
    ) -> Result<Reference> {
        self.set_ref(store, name, target, expect).await
    }

    async fn get_reference(&self, store: &StoreName, name: &RefName) -> Result<Reference> {
        let st = self.open_store(store).await?;
        self.read_ref(&st, &layout::ref_key(name))
            .await?
            .map(|(r, _)| r.to_reference(store))
            .ok_or_else(|| Error::not_found(ObjectKind::Reference, format!("{store}/{name}")))
    }

    async fn list_references(&self, store: &StoreName) -> Result<Vec<Reference>> {
        self.list_refs(store).await
    }

    async fn delete_reference(
        &self,
        store: &StoreName,
        name: &RefName,
        expect: &Expect,
    ) -> Result<Reference> {
        self.delete_ref(store, name, expect).await
    }

    async fn put_blob(&self, store: &StoreName, digest: &Digest, bytes: Vec<u8>) -> Result<()> {
        check_blob(digest, &bytes)?;
        let st = self.open_store(store).await?;
        // A plain PUT: rewriting an existing blob keeps its bytes and renews its time.
        self.objects().put(&st.keys.blob(digest), bytes).await?;
        Ok(())
    }

    async fn get_blob(&self, store: &StoreName, digest: &Digest) -> Result<Vec<u8>> {
        let st = self.open_store(store).await?;
        self.objects()
            .get(&st.keys.blob(digest))
            .await?
            .map(|g| g.bytes.to_vec())
            .ok_or_else(|| Error::not_found(ObjectKind::Blob, format!("{store}/{digest}")))
    }

    async fn list_blobs(&self, store: &StoreName) -> Result<Vec<BlobInfo>> {
        self.blobs_of(store).await
    }

    async fn delete_blob(&self, store: &StoreName, digest: &Digest) -> Result<()> {
        self.delete_blob_at(store, digest).await
    }

    async fn pins(&self, store: &StoreName) -> Result<Vec<Pin>> {
        self.pins_of(store).await
    }

    async fn set_quota(&self, store: &StoreName, quota: Option<u64>) -> Result<()> {
        self.put_quota(store, quota).await
    }

    async fn quota(&self, store: &StoreName) -> Result<Option<u64>> {
        let st = self.open_store(store).await?;
        self.read_quota(&st).await
    }
}
