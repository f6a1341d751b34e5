//! The store index: what makes listing and usage cheap without walking the bucket.
//!
//! The truth is the set of image records (`images/<id>`, each created with a conditional
//! create). Listing them costs one request per thousand keys and, on some servers, much more;
//! reading them one by one costs a request each. So each store keeps:
//!
//! * `index`: a snapshot of every image record (JSON Lines, a header line first);
//! * `log/<id>.<nonce>.<c|d>`: an intent written by every commit and delete *before* it
//!   changes a record; `log/<nonce>.b`, one for a batch of deletes, naming its ids (every
//!   lease of the batch carries `<nonce>`; `docs/decisions/0021-s3-batch-deletes.md`).
//!
//! Invariant: whenever the snapshot disagrees with the truth about an id, a log entry for
//! that id exists. A reader therefore reads the snapshot, lists the (short) log, and reads
//! the records of the ids it names. A fold rewrites the snapshot with the current truth for
//! the ids in the log (conditional on the snapshot's ETag) and deletes the entries whose
//! operation has ended, that is, whose ids' leases no longer carry that entry's nonce. The
//! lease is read before the record, so the record read reflects everything the ended
//! operation did. The argument is written out in `docs/decisions/0006-s3-protocol.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use imagestore_core::{Error, ImageId, Result};

use crate::lease;
use crate::objects::{Created, Fetch, Updated};
use crate::record::{BatchIntent, ImageRecord};
use crate::store::{S3Store, StoreCtx};

/// A reader that finds this many ids in the log folds them into the snapshot.
pub const FOLD_AT: usize = 64;
/// An instance folds after this many of its own commits and deletes.
pub const FOLD_EVERY: usize = 32;
/// Concurrent record reads.
const READS: usize = 16;

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    count: u64,
    total: u64,
}

/// A snapshot of a store's image records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Index {
    /// Records by id (scratch is never in the index).
    pub records: BTreeMap<ImageId, ImageRecord>,
}

impl Index {
    /// Decodes a snapshot stored at `key`.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<Index> {
        let mut lines = bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty());
        let header: Header = lines
            .next()
            .ok_or_else(|| Error::corrupt(key, "empty index"))
            .and_then(|l| {
                serde_json::from_slice(l).map_err(|e| Error::corrupt(key, format!("header: {e}")))
            })?;
        if header.format != "imagestore-s3-index" || header.version != 1 {
            return Err(Error::corrupt(key, "not an imagestore-s3 index version 1"));
        }
        let mut records = BTreeMap::new();
        for l in lines {
            let r = ImageRecord::parse(key, l)?;
            records.insert(r.id.clone(), r);
        }
        if records.len() as u64 != header.count {
            return Err(Error::corrupt(key, "entry count does not match the header"));
        }
        Ok(Index { records })
    }

    /// The snapshot as JSON Lines.
    pub fn encode(&self) -> Vec<u8> {
        let header = Header {
            format: "imagestore-s3-index".to_owned(),
            version: 1,
            count: self.records.len() as u64,
            total: self.records.values().map(|r| r.size).sum(),
        };
        let mut out = serde_json::to_vec(&header).unwrap_or_default();
        out.push(b'\n');
        for r in self.records.values() {
            out.extend(serde_json::to_vec(r).unwrap_or_default());
            out.push(b'\n');
        }
        out
    }
}

/// The images of a store as of now.
#[derive(Debug)]
pub struct View {
    /// Records by id, scratch excluded.
    pub records: BTreeMap<ImageId, ImageRecord>,
}

/// A log entry: one id's intent, or a batch's.
#[derive(Debug, Clone)]
struct Entry {
    key: String,
    ids: Vec<ImageId>,
    nonce: String,
}

/// The records of some ids as of now, read for a caller that holds their leases; see
/// [`S3Store::fresh_records`].
#[derive(Debug)]
pub(crate) struct Fresh {
    /// The snapshot's ETag, for a conditional update.
    pub(crate) etag: Option<String>,
    /// The snapshot.
    pub(crate) index: Arc<Index>,
    /// The record of each id asked for; `None` if it has none.
    pub(crate) records: BTreeMap<ImageId, Option<ImageRecord>>,
}

impl S3Store {
    /// The snapshot and its ETag (`None` when it had to be rebuilt and could not be stored).
    async fn load_index(&self, st: &StoreCtx) -> Result<(Option<String>, Arc<Index>)> {
        let key = st.keys.index();
        let cached = self
            .inner
            .indexes
            .lock()
            .ok()
            .and_then(|c| c.get(&key).cloned());
        match self
            .objects()
            .get_cached(&key, cached.as_ref().map(|(e, _)| e.as_str()))
            .await?
        {
            Fetch::Unchanged => match cached {
                Some((etag, idx)) => Ok((Some(etag), idx)),
                None => Err(crate::objects::missing(&key)),
            },
            Fetch::Found(got) => {
                let idx = Arc::new(Index::decode(&self.objects().show(&key), &got.bytes)?);
                if let (Some(etag), Ok(mut c)) = (got.etag.clone(), self.inner.indexes.lock()) {
                    c.insert(key, (etag, idx.clone()));
                }
                Ok((got.etag, idx))
            }
            Fetch::Missing => self.rebuild_index(st).await,
        }
    }

    /// Rebuilds a missing snapshot from the records themselves (one listing and one read per
    /// image): the slow path, for a bucket whose index was removed by hand.
    async fn rebuild_index(&self, st: &StoreCtx) -> Result<(Option<String>, Arc<Index>)> {
        let o = self.objects();
        info!(store = %st.name, "the store index is missing; rebuilding it from the image records");
        let ids: Vec<ImageId> = o
            .list(&st.keys.images_dir())
            .await?
            .iter()
            .filter_map(|m| ImageId::new(crate::layout::last_segment(&o.rel(&m.location))).ok())
            .collect();
        let mut records = BTreeMap::new();
        let mut reads = futures::stream::iter(ids)
            .map(|id| async move { self.find_record(st, &id).await })
            .buffer_unordered(READS);
        while let Some(r) = reads.next().await {
            if let Some(r) = r? {
                records.insert(r.id.clone(), r);
            }
        }
        let idx = Arc::new(Index { records });
        let etag = match o.create(&st.keys.index(), idx.encode()).await? {
            Created::Created(etag) => etag,
            Created::Exists => None,
        };
        Ok((etag, idx))
    }

    /// The log: one entry per intent; a batch intent is read for its ids (one that vanished
    /// meanwhile was settled by a fold and is left out).
    async fn log_entries(&self, st: &StoreCtx) -> Result<Vec<Entry>> {
        let o = self.objects();
        let mut out = Vec::new();
        let mut batches = Vec::new();
        for m in o.list(&st.keys.log_dir()).await? {
            let key = o.rel(&m.location);
            if let Some((id, nonce, _)) = st.keys.parse_log(&key) {
                out.push(Entry {
                    key,
                    ids: vec![id],
                    nonce,
                });
            } else if let Some(nonce) = st.keys.parse_batch_log(&key) {
                batches.push((key, nonce));
            }
        }
        let mut reads = futures::stream::iter(batches)
            .map(|(key, nonce)| async move {
                let Some(got) = o.get(&key).await? else {
                    return Ok::<_, Error>(None);
                };
                let intent = BatchIntent::parse(&o.show(&key), &got.bytes)?;
                Ok(Some(Entry {
                    key,
                    ids: intent.ids,
                    nonce,
                }))
            })
            .buffer_unordered(READS);
        while let Some(e) = reads.next().await {
            out.extend(e?);
        }
        Ok(out)
    }

    /// The records of `ids` now, for a caller holding the lease of every one of them: the
    /// log is listed *before* the snapshot is read, so an id the listing does not name
    /// agrees with the snapshot (its entries could only have been removed by a fold that
    /// wrote its truth into the snapshot first, and no new entry for it can appear while its
    /// lease is held); the ids the log names are read one by one.
    pub(crate) async fn fresh_records(&self, st: &StoreCtx, ids: &[ImageId]) -> Result<Fresh> {
        let log = self.log_entries(st).await?;
        let (etag, index) = self.load_index(st).await?;
        let dirty: BTreeSet<&ImageId> = log.iter().flat_map(|e| e.ids.iter()).collect();
        let mut records = BTreeMap::new();
        let mut reads = Vec::new();
        for id in ids {
            if dirty.contains(id) {
                reads.push(id.clone());
            } else {
                records.insert(id.clone(), index.records.get(id).cloned());
            }
        }
        let mut reads = futures::stream::iter(reads)
            .map(|id| async move { (self.find_record(st, &id).await, id) })
            .buffer_unordered(READS);
        while let Some((r, id)) = reads.next().await {
            records.insert(id, r?);
        }
        drop(reads);
        Ok(Fresh {
            etag,
            index,
            records,
        })
    }

    /// Removes `gone` (images whose records this caller removed, still holding their leases)
    /// from the snapshot, conditionally on its ETag, reloading it when another host folded
    /// meanwhile. True if the snapshot now leaves them out.
    ///
    /// The snapshot is written even when the copy in hand already leaves them out: a fold
    /// that read their records before they were removed may still be about to write a
    /// snapshot naming them, conditionally on the ETag this caller read. Only a write of ours
    /// changes that ETag and makes such a fold's write fail; without it, the caller would
    /// remove its intent and leave the snapshot naming images that are gone.
    pub(crate) async fn drop_from_index(
        &self,
        st: &StoreCtx,
        mut etag: Option<String>,
        mut index: Arc<Index>,
        gone: &[ImageId],
    ) -> Result<bool> {
        let o = self.objects();
        let key = st.keys.index();
        for _ in 0..4 {
            let mut next = Index {
                records: index.records.clone(),
            };
            for id in gone {
                next.records.remove(id);
            }
            let written = match &etag {
                Some(e) => match o.update(&key, next.encode(), e).await? {
                    Updated::Updated(e) => Some(e),
                    Updated::Changed => None,
                },
                None => match o.create(&key, next.encode()).await? {
                    Created::Created(e) => Some(e),
                    Created::Exists => None,
                },
            };
            match written {
                Some(new_etag) => {
                    if let (Some(e), Ok(mut c)) = (new_etag, self.inner.indexes.lock()) {
                        c.insert(key, (e, Arc::new(next)));
                    }
                    return Ok(true);
                }
                None => (etag, index) = self.load_index(st).await?,
            }
        }
        Ok(false)
    }

    /// The store's images now: the snapshot, corrected by reading the records the log names.
    pub(crate) async fn view(&self, st: &StoreCtx) -> Result<View> {
        let (_, idx) = self.load_index(st).await?;
        let log = self.log_entries(st).await?;
        let dirty: BTreeSet<ImageId> = log.into_iter().flat_map(|e| e.ids).collect();
        let mut records = idx.records.clone();
        let n = dirty.len();
        let mut reads = futures::stream::iter(dirty)
            .map(|id| async move { (self.find_record(st, &id).await, id) })
            .buffer_unordered(READS);
        while let Some((r, id)) = reads.next().await {
            match r? {
                Some(r) => records.insert(id, r),
                None => records.remove(&id),
            };
        }
        if n >= FOLD_AT
            && let Err(e) = self.fold(st).await
        {
            debug!(store = %st.name, error = %e, "index fold failed");
        }
        Ok(View { records })
    }

    /// Folds the log into the snapshot; see the module documentation. Safe to run anywhere,
    /// any number of times, by any number of hosts at once.
    pub(crate) async fn fold(&self, st: &StoreCtx) -> Result<()> {
        let o = self.objects();
        let (etag, idx) = self.load_index(st).await?;
        let log = self.log_entries(st).await?;
        if log.is_empty() {
            return Ok(());
        }
        // Every lease first, then the records (see the module documentation). An entry is
        // settled when none of its ids' leases carries its nonce (a batch's leases all carry
        // the batch's).
        let ids: BTreeSet<ImageId> = log.iter().flat_map(|e| e.ids.iter().cloned()).collect();
        let mut held: BTreeMap<ImageId, Option<String>> = BTreeMap::new();
        let mut leases = futures::stream::iter(ids)
            .map(|id| async move {
                let l = lease::read(o, &st.keys.lease(&id)).await?;
                Ok::<_, Error>((id, l.map(|l| l.record.nonce)))
            })
            .buffer_unordered(READS);
        while let Some(r) = leases.next().await {
            let (id, nonce) = r?;
            held.insert(id, nonce);
        }
        drop(leases);
        let mut done = Vec::new();
        let mut settled_ids: BTreeSet<ImageId> = BTreeSet::new();
        for e in log {
            let live = e
                .ids
                .iter()
                .any(|id| held.get(id).and_then(Option::as_ref) == Some(&e.nonce));
            if !live {
                settled_ids.extend(e.ids);
                done.push(e.key);
            }
        }
        let mut work = futures::stream::iter(settled_ids)
            .map(|id| async move { Ok::<_, Error>((self.find_record(st, &id).await?, id)) })
            .buffer_unordered(READS);
        let mut records = idx.records.clone();
        while let Some(r) = work.next().await {
            match r? {
                (Some(r), id) => records.insert(id, r),
                (None, id) => records.remove(&id),
            };
        }
        drop(work);
        if done.is_empty() {
            return Ok(());
        }
        let next = Index { records };
        let key = st.keys.index();
        let written = match &etag {
            Some(etag) => match o.update(&key, next.encode(), etag).await? {
                Updated::Updated(e) => e,
                // Another host folded first; its snapshot covers at least as much.
                Updated::Changed => return Ok(()),
            },
            None => match o.create(&key, next.encode()).await? {
                Created::Created(e) => e,
                Created::Exists => return Ok(()),
            },
        };
        if let (Some(etag), Ok(mut c)) = (written, self.inner.indexes.lock()) {
            c.insert(key, (etag, Arc::new(next)));
        }
        debug!(store = %st.name, entries = done.len(), "folded the index log");
        o.delete_many(done).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imagestore_core::Metadata;

    #[test]
    fn round_trips_and_checks_the_count() -> Result<()> {
        let mut idx = Index::default();
        for (i, id) in ["a", "b"].iter().enumerate() {
            let id = ImageId::new(*id)?;
            let r = ImageRecord::new(
                id.clone(),
                format!("n{i}"),
                Some(ImageId::scratch()),
                vec![crate::record::LayerRef {
                    id: ImageId::scratch(),
                    nonce: "s".into(),
                }],
                None,
                10 + i as u64,
                1,
                &Metadata::new(),
            );
            idx.records.insert(id, r);
        }
        let bytes = idx.encode();
        assert_eq!(Index::decode("k", &bytes)?, idx);
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.starts_with(
                r#"{"format":"imagestore-s3-index","version":1,"count":2,"total":21}"#
            )
        );
        let cut: Vec<u8> = bytes[..bytes.len() - 2].to_vec();
        assert!(Index::decode("k", &cut).is_err());
        let first_line = text.lines().next().unwrap_or_default().to_owned();
        assert!(Index::decode("k", first_line.as_bytes()).is_err());
        Ok(())
    }
}
