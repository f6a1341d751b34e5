//! Deleting many images at once: the S3 backend's [`imagestore_core::ImageStorer::delete_images`].
//!
//! ```text
//! index view (names each victim in its lease) ─► every lease, as a delete, 32 at a time,
//!   one nonce for all (a lease someone else holds: that image is deleted alone afterwards)
//!   ─► log listing, then the index snapshot: the records, fresh under the leases
//!   ─► one range listing each of children/, owners/, reflinks/ covering the batch
//!   ─► decisions in list order (a child deleted earlier in the batch no longer counts)
//!   ─► one intent log/<nonce>.b ─► record deletes in rounds, children before parents
//!   ─► bulk delete of layers, TOCs, links and registrations ─► the snapshot without them
//!   ─► the intent removed ─► every lease released in bulk
//! ```
//! Each image keeps the order of a single delete (0006): its lease before the listing of its
//! links, the listing before its decision, its intent before its record goes. The argument is
//! in `docs/decisions/0021-s3-batch-deletes.md`.

use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use tracing::warn;

use imagestore_core::{Error, Image, ImageId, Result, StoreName};

use crate::error::backend;
use crate::layout::{self, StoreKeys};
use crate::lease::{self, Acquired, CONCURRENT, LeaseGuard, LeaseOp, LeaseRecord};
use crate::record::{BatchIntent, ImageRecord, RECORD_VERSION, encode};
use crate::store::{Listed, S3Store, Sibling, StoreCtx, victim};

/// Where an image of the batch stands once its lease is held.
#[derive(Debug)]
enum State {
    /// Not decided yet, or refused: its record as read under the lease.
    Held(Option<ImageRecord>),
    /// Will be deleted, in round `round` (children in earlier rounds).
    Doomed { round: usize },
}

/// An image the batch will delete.
struct Doomed {
    index: usize,
    rec: ImageRecord,
    round: usize,
    /// Children in the batch whose deletion this image's check relied on.
    children: Vec<ImageId>,
}

impl S3Store {
    /// [`imagestore_core::ImageStorer::delete_images`]; see the module documentation.
    pub(crate) async fn delete_batch(
        &self,
        s: &StoreName,
        images: &[Image],
    ) -> Result<Vec<Result<Image>>> {
        if images.len() < 2 {
            let mut out = Vec::with_capacity(images.len());
            for image in images {
                out.push(self.delete(image).await);
            }
            return Ok(out);
        }
        let st = self.open_store(s).await?;
        let mut out: Vec<Option<Result<Image>>> = images.iter().map(|_| None).collect();
        // Deleted one by one after the batch, in list order: images of another store, repeated
        // ids, images whose lease someone else holds, and parents of those.
        let mut alone = vec![false; images.len()];
        let mut seen = HashSet::new();
        let mut eligible = Vec::new();
        for (i, image) in images.iter().enumerate() {
            if image.id.is_scratch() {
                out[i] = Some(Err(Error::invalid(format!(
                    "the scratch image of store {s} cannot be deleted"
                ))));
            } else if image.store != *s || !seen.insert(image.id.clone()) {
                alone[i] = true;
            } else {
                eligible.push(i);
            }
        }

        // The victims come from the index view, so the leases name them from the start; a
        // victim that changed since is named again once its record is read under the lease.
        let view = self.view(&st).await?;
        let nonce = layout::nonce();
        let acquired: Vec<(usize, Result<Acquired<()>>)> = futures::stream::iter(eligible)
            .map(|i| {
                let (st, view, nonce) = (&st, &view, &nonce);
                async move {
                    let id = &images[i].id;
                    let mut record = LeaseRecord::new(LeaseOp::Delete, nonce.clone(), self.ttl());
                    if let Some(r) = view.records.get(id) {
                        record = victim(record, r);
                    }
                    // Never waited for while others are held: two batches could wait on
                    // each other.
                    let r = lease::try_acquire(self.objects(), &st.keys.lease(id), record).await;
                    (i, r)
                }
            })
            .buffer_unordered(CONCURRENT)
            .collect()
            .await;
        let mut guards: HashMap<usize, LeaseGuard> = HashMap::new();
        for (i, r) in acquired {
            match r {
                Ok(Acquired::Held { guard, .. }) => {
                    guards.insert(i, guard);
                }
                Ok(Acquired::Answered(())) => alone[i] = true,
                Err(e) => out[i] = Some(Err(e)),
            }
        }

        let mut release = Vec::new();
        if let Err(e) = self
            .delete_held(
                &st,
                images,
                &nonce,
                &mut guards,
                &mut out,
                &mut alone,
                &mut release,
            )
            .await
        {
            // Nothing was removed: every image not yet answered stays, with this error.
            let msg = e.to_string();
            for (i, g) in guards.drain() {
                out[i] = Some(Err(backend(msg.clone(), true)));
                release.push(g);
            }
        }
        if let Err(e) = lease::release_all(self.objects(), release).await {
            warn!(store = %s, error = %e, "releasing the leases of a batch delete failed; they expire");
        }

        let mut results = Vec::with_capacity(images.len());
        for (i, r) in out.into_iter().enumerate() {
            results.push(match r {
                Some(r) => r,
                None if alone[i] => self.delete(&images[i]).await,
                None => Err(backend("the batch delete left this image undecided", true)),
            });
        }
        Ok(results)
    }

    /// The batch under its leases (`guards`, by index in `images`). Answers the images it
    /// decides in `out`, marks those to delete alone in `alone`, and moves the guards to
    /// release into `release` (guards of images whose cleanup failed are dropped instead, so
    /// their leases expire and the sweep finishes the work). An error before any record was
    /// removed leaves the remaining guards in `guards`.
    #[allow(clippy::too_many_arguments)]
    async fn delete_held(
        &self,
        st: &StoreCtx,
        images: &[Image],
        nonce: &str,
        guards: &mut HashMap<usize, LeaseGuard>,
        out: &mut [Option<Result<Image>>],
        alone: &mut [bool],
        release: &mut Vec<LeaseGuard>,
    ) -> Result<()> {
        let o = self.objects();
        let mut held: Vec<usize> = guards.keys().copied().collect();
        held.sort_unstable();
        let ids: Vec<ImageId> = held.iter().map(|i| images[*i].id.clone()).collect();
        // Every lease is held: now the records, then the links.
        let fresh = self.fresh_records(st, &ids).await?;
        let listed = self.list_batch(st, &ids).await?;

        let mut states: HashMap<ImageId, State> = HashMap::new();
        for id in &ids {
            let rec = fresh.records.get(id).cloned().flatten();
            states.insert(id.clone(), State::Held(rec));
        }
        let mut doomed: Vec<Doomed> = Vec::new();
        let none = Listed::default();
        for &i in &held {
            let id = &images[i].id;
            let Some(State::Held(Some(rec))) = states.get(id) else {
                out[i] = Some(Err(Error::not_found(
                    imagestore_core::ObjectKind::Image,
                    st.name_of(id),
                )));
                release.extend(guards.remove(&i));
                continue;
            };
            let rec = rec.clone();
            let links = listed.get(id).unwrap_or(&none);
            let children: Vec<ImageId> = links
                .children
                .iter()
                .filter_map(|k| ImageId::new(layout::last_segment(k)).ok())
                .collect();
            // A child deleted alone after the batch: so is this image, after it.
            if children.iter().any(|c| is_alone(images, alone, c)) {
                alone[i] = true;
                release.extend(guards.remove(&i));
                continue;
            }
            let judged = async {
                if let Some(g) = guards.get(&i) {
                    let l = g.record().await;
                    if l.target.as_deref() != Some(rec.nonce.as_str()) || l.parent != rec.parent {
                        g.retarget(&rec.nonce, rec.parent.clone()).await?;
                    }
                }
                let sibling = |c: &ImageId| match states.get(c) {
                    Some(State::Doomed { .. }) => Sibling::Gone,
                    Some(State::Held(r)) => Sibling::Held(r.as_ref()),
                    None => Sibling::Other,
                };
                self.users(st, &rec, links, &sibling).await
            }
            .await;
            match judged {
                Ok(users) if users.is_empty() => {
                    let gone: Vec<ImageId> = children
                        .into_iter()
                        .filter(|c| matches!(states.get(c), Some(State::Doomed { .. })))
                        .collect();
                    let round = gone
                        .iter()
                        .filter_map(|c| match states.get(c) {
                            Some(State::Doomed { round }) => Some(round + 1),
                            _ => None,
                        })
                        .max()
                        .unwrap_or(0);
                    states.insert(id.clone(), State::Doomed { round });
                    doomed.push(Doomed {
                        index: i,
                        rec,
                        round,
                        children: gone,
                    });
                }
                Ok(users) => {
                    out[i] = Some(Err(Error::ImageInUse {
                        image: st.name_of(id),
                        users,
                    }));
                    release.extend(guards.remove(&i));
                }
                Err(e) => {
                    out[i] = Some(Err(e));
                    release.extend(guards.remove(&i));
                }
            }
        }
        if doomed.is_empty() {
            return Ok(());
        }

        // The intent, then fresh leases, then the records, children first.
        let intent_key = st.keys.batch_log(nonce);
        let intent = BatchIntent {
            version: RECORD_VERSION,
            ids: doomed.iter().map(|d| d.rec.id.clone()).collect(),
        };
        o.put(&intent_key, encode(&intent)).await?;
        let mut failed: HashMap<ImageId, Error> = HashMap::new();
        let handles: Vec<(ImageId, Option<lease::Fresh>)> = doomed
            .iter()
            .map(|d| {
                (
                    d.rec.id.clone(),
                    guards.get(&d.index).map(LeaseGuard::freshness),
                )
            })
            .collect();
        let checks: Vec<(ImageId, Result<()>)> = futures::stream::iter(handles)
            .map(|(id, fresh)| async move {
                let r = match fresh {
                    Some(f) => f.ensure().await,
                    None => Err(backend("lease missing", false)),
                };
                (id, r)
            })
            .buffer_unordered(CONCURRENT)
            .collect()
            .await;
        for (id, r) in checks {
            if let Err(e) = r {
                failed.insert(id, e);
            }
        }
        // Images whose record may or may not be gone: their leases are left to expire and the
        // intent to a later fold.
        let mut unsure: HashSet<ImageId> = HashSet::new();
        let mut gone: Vec<usize> = Vec::new();
        let mut gone_set: HashSet<usize> = HashSet::new();
        let rounds = doomed.iter().map(|d| d.round).max().unwrap_or(0);
        for round in 0..=rounds {
            let mut keys = Vec::new();
            let mut members = Vec::new();
            for (n, d) in doomed.iter().enumerate() {
                if d.round != round || failed.contains_key(&d.rec.id) {
                    continue;
                }
                if let Some(c) = d
                    .children
                    .iter()
                    .find(|c| failed.contains_key(*c) || unsure.contains(*c))
                {
                    failed.insert(
                        d.rec.id.clone(),
                        Error::ImageInUse {
                            image: st.name_of(&d.rec.id),
                            users: vec![format!("child {c}")],
                        },
                    );
                    continue;
                }
                keys.push(st.keys.image(&d.rec.id));
                members.push(n);
            }
            match o.delete_many(keys).await {
                Ok(()) => {
                    gone_set.extend(members.iter().copied());
                    gone.extend(members);
                }
                Err(e) => {
                    // Some may have gone through: look.
                    for n in members {
                        let id = &doomed[n].rec.id;
                        match self.find_record(st, id).await {
                            Ok(None) => {
                                gone_set.insert(n);
                                gone.push(n);
                            }
                            Ok(Some(_)) => {
                                failed.insert(id.clone(), backend(e.to_string(), true));
                            }
                            Err(e2) => {
                                unsure.insert(id.clone());
                                failed.insert(id.clone(), e2);
                            }
                        }
                    }
                }
            }
        }

        // The rest of each deleted image, in bulk, still under the leases.
        let mut leftovers = Vec::new();
        for &n in &gone {
            let d = &doomed[n];
            leftovers.extend(self.leftovers(st, &d.rec, listed.get(&d.rec.id).unwrap_or(&none)));
        }
        let tidy = o.delete_many(leftovers).await;
        if let Err(e) = &tidy {
            warn!(store = %st.name, error = %e, "cleanup after a batch delete failed; the sweep finishes it");
        }
        let gone_ids: Vec<ImageId> = gone.iter().map(|n| doomed[*n].rec.id.clone()).collect();
        let folded = match self
            .drop_from_index(st, fresh.etag.clone(), fresh.index.clone(), &gone_ids)
            .await
        {
            Ok(done) => done,
            Err(e) => {
                warn!(store = %st.name, error = %e, "updating the index after a batch delete failed");
                false
            }
        };
        if folded
            && unsure.is_empty()
            && let Err(e) = o.delete(&intent_key).await
        {
            warn!(store = %st.name, error = %e, "removing a batch intent failed; a fold removes it");
        }

        for (n, d) in doomed.into_iter().enumerate() {
            let guard = guards.remove(&d.index);
            if let Some(e) = failed.remove(&d.rec.id) {
                out[d.index] = Some(Err(e));
                if unsure.contains(&d.rec.id) {
                    drop(guard);
                } else {
                    release.extend(guard);
                }
                continue;
            }
            if gone_set.contains(&n) {
                out[d.index] = Some(self.image_of(st, &d.rec));
                if tidy.is_ok() {
                    release.extend(guard);
                } else {
                    drop(guard);
                }
            }
        }
        Ok(())
    }

    /// One range listing each of child links, owner registrations and reference links,
    /// covering the ids of a batch (`ids`).
    ///
    /// Every key wanted is `<dir>/<id>/<name>` for an id of the batch. The listing must find
    /// them in byte order (S3) and in SeaweedFS's directory order alike (see
    /// [`crate::objects::Objects::list_range`]), whose order of two ids differs when one is a
    /// prefix of the other followed by `-` or `.`, which sort before `/`:
    ///
    /// * it starts after `<dir>/` and the lowest id without its last character: a key that
    ///   comes before every id of the batch in both orders and names no entry of them;
    /// * it stops at the first key whose id is past the batch in both orders: greater than
    ///   the highest id (directory order lists ids by name) and `id/` greater than the highest
    ///   `id/` (byte order lists ids by `id/`). In either order every later key is past too,
    ///   so nothing wanted is left behind.
    async fn list_batch(&self, st: &StoreCtx, ids: &[ImageId]) -> Result<HashMap<ImageId, Listed>> {
        let o = self.objects();
        let want: HashSet<&ImageId> = ids.iter().collect();
        let (Some(lo), Some(hi), Some(hi_slash)) = (
            ids.iter().map(ImageId::as_str).min(),
            ids.iter().map(ImageId::as_str).max(),
            ids.iter().map(|i| format!("{i}/")).max(),
        ) else {
            return Ok(HashMap::new());
        };
        // Ids are ASCII: dropping the last byte leaves a character boundary.
        let lo_cut = &lo[..lo.len() - 1];
        let dirs = [
            st.keys.all_children_dir(),
            st.keys.all_owners_dir(),
            st.keys.all_ref_links_dir(),
        ];
        let listings = futures::future::try_join_all(dirs.iter().map(|dir| {
            let after = (!lo_cut.is_empty()).then(|| format!("{dir}/{lo_cut}"));
            let hi_slash = hi_slash.as_str();
            let past = move |rel: &str| {
                StoreKeys::pair_under(dir, rel)
                    .is_some_and(|(a, _)| a > hi && format!("{a}/").as_str() > hi_slash)
            };
            async move { o.list_range(dir, after.as_deref(), &past).await }
        }))
        .await?;
        let mut out: HashMap<ImageId, Listed> = HashMap::new();
        for (kind, (dir, metas)) in dirs.iter().zip(listings).enumerate() {
            for m in metas {
                let rel = o.rel(&m.location);
                let Some((a, _)) = StoreKeys::pair_under(dir, &rel) else {
                    continue;
                };
                let Ok(id) = ImageId::new(a) else { continue };
                if !want.contains(&id) {
                    continue;
                }
                let l = out.entry(id).or_default();
                match kind {
                    0 => l.children.push(rel),
                    1 => l.owners.push(rel),
                    _ => l.reflinks.push(rel),
                }
            }
        }
        Ok(out)
    }
}

/// True if `id` is an image of the list to be deleted alone.
fn is_alone(images: &[Image], alone: &[bool], id: &ImageId) -> bool {
    images
        .iter()
        .zip(alone)
        .any(|(image, a)| *a && image.id == *id)
}
