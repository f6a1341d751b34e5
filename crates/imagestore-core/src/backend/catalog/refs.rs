//! References, blobs, pins and quotas of a catalogue store.
//!
//! ```text
//! <store>/refs/<key>                     a reference's record (RefName::key)
//! <store>/images/<id>/refs/<key>         the link that makes the reference keep <id> in use
//! <store>/blobs/<algorithm>-<hex>        a manifest or config, byte for byte
//! <store>/quota                          the quota in bytes, absent without one
//! ```
//!
//! Every reference change holds the store lock, as deletes do: it links the new image first,
//! writes the record, then unlinks the old image. A link counts only while the record names
//! its image, so a crash between the steps leaves at most a link that counts for nothing
//! (the sweep removes it); a reference never names a deleted image.

use tracing::warn;

use crate::digest::Digest;
use crate::error::{Error, ObjectKind, Result};
use crate::names::{ImageId, StoreName};
use crate::refs::{
    BlobInfo, Expect, Pin, RefName, RefRecord, RefTarget, Reference, check_blob, check_quota,
};

use crate::backend::record;

use super::{Catalog, ImagePaths, Representation, StorePaths};

impl<R: Representation> Catalog<R> {
    /// The record of the reference with key `key`, `None` if absent.
    pub(super) fn find_ref(&self, sp: &StorePaths, key: &str) -> Result<Option<RefRecord>> {
        let p = sp.reference(key);
        match self.storage.read(&p)? {
            Some(bytes) => Ok(Some(record::decode(&self.storage.describe(&p), &bytes)?)),
            None => Ok(None),
        }
    }

    /// The references whose links on image `p` are current: `reference <name>` for each.
    pub(super) fn ref_users(&self, sp: &StorePaths, p: &ImagePaths) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for key in self.storage.list(&p.ref_links())? {
            if key.starts_with('.') {
                continue;
            }
            if let Some(r) = self.find_ref(sp, &key)?
                && r.target.image == p.id
            {
                out.push(format!("reference {}", r.name));
            }
        }
        Ok(out)
    }

    /// Removes the links on `p` that no reference record backs (left by a crash).
    pub(super) fn sweep_ref_links(&self, sp: &StorePaths, p: &ImagePaths) -> Result<usize> {
        let mut removed = 0;
        for key in self.storage.list(&p.ref_links())? {
            let current = !key.starts_with('.')
                && self
                    .find_ref(sp, &key)?
                    .is_some_and(|r| r.target.image == p.id);
            if !current {
                self.storage.remove_file(&p.ref_link(&key))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// [`crate::refs::References::set_reference`].
    pub fn set_reference(
        &self,
        s: &StoreName,
        name: &RefName,
        target: &RefTarget,
        expect: &Expect,
    ) -> Result<Reference> {
        target.validate()?;
        let sp = self.open_store(s)?;
        let _guard = self.store_lock(&sp)?;
        self.record(s, &sp, &target.image)?;
        for d in target.blobs() {
            if self.storage.stat(&sp.blob(d))?.is_none() {
                return Err(Error::not_found(ObjectKind::Blob, format!("{s}/{d}")));
            }
        }
        let key = name.key();
        let current = self.find_ref(&sp, &key)?;
        expect.check(s, name, current.as_ref().map(|r| &r.target))?;
        let ip = sp.image(&target.image);
        self.storage.mkdir(&ip.ref_links())?;
        self.storage
            .write(&ip.ref_link(&key), name.as_str().as_bytes())?;
        self.storage.mkdir(&sp.refs())?;
        let rec = RefRecord::new(name.clone(), target.clone());
        self.storage
            .write(&sp.reference(&key), &record::encode(&rec))?;
        if let Some(old) = current
            && old.target.image != target.image
            && let Err(e) = self
                .storage
                .remove_file(&sp.image(&old.target.image).ref_link(&key))
        {
            warn!(reference = %name, error = %e, "moved; the old link is left to the sweep");
        }
        Ok(rec.to_reference(s))
    }

    /// [`crate::refs::References::get_reference`].
    pub fn reference(&self, s: &StoreName, name: &RefName) -> Result<Reference> {
        let sp = self.open_store(s)?;
        self.find_ref(&sp, &name.key())?
            .map(|r| r.to_reference(s))
            .ok_or_else(|| Error::not_found(ObjectKind::Reference, format!("{s}/{name}")))
    }

    /// [`crate::refs::References::list_references`].
    pub fn references(&self, s: &StoreName) -> Result<Vec<Reference>> {
        let sp = self.open_store(s)?;
        self.all_refs(&sp)
            .map(|v| v.iter().map(|r| r.to_reference(s)).collect())
    }

    /// Every reference record of a store, sorted by name.
    pub(super) fn all_refs(&self, sp: &StorePaths) -> Result<Vec<RefRecord>> {
        let mut out = Vec::new();
        for key in self.storage.list(&sp.refs())? {
            if key.starts_with('.') {
                continue;
            }
            if let Some(r) = self.find_ref(sp, &key)? {
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// [`crate::refs::References::delete_reference`].
    pub fn delete_reference(
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
        let sp = self.open_store(s)?;
        let _guard = self.store_lock(&sp)?;
        let key = name.key();
        let current = self
            .find_ref(&sp, &key)?
            .ok_or_else(|| Error::not_found(ObjectKind::Reference, format!("{s}/{name}")))?;
        expect.check(s, name, Some(&current.target))?;
        self.storage.remove_file(&sp.reference(&key))?;
        if let Err(e) = self
            .storage
            .remove_file(&sp.image(&current.target.image).ref_link(&key))
        {
            warn!(reference = %name, error = %e, "deleted; its link is left to the sweep");
        }
        Ok(current.to_reference(s))
    }

    /// [`crate::refs::References::put_blob`].
    pub fn put_blob(&self, s: &StoreName, d: &Digest, bytes: &[u8]) -> Result<()> {
        check_blob(d, bytes)?;
        let sp = self.open_store(s)?;
        self.storage.mkdir(&sp.blobs())?;
        // Rewriting an existing blob keeps its bytes and renews its time.
        self.storage.write(&sp.blob(d), bytes)
    }

    /// [`crate::refs::References::get_blob`].
    pub fn blob(&self, s: &StoreName, d: &Digest) -> Result<Vec<u8>> {
        let sp = self.open_store(s)?;
        self.storage
            .read(&sp.blob(d))?
            .ok_or_else(|| Error::not_found(ObjectKind::Blob, format!("{s}/{d}")))
    }

    /// [`crate::refs::References::list_blobs`].
    pub fn blobs(&self, s: &StoreName) -> Result<Vec<BlobInfo>> {
        let sp = self.open_store(s)?;
        let mut out = Vec::new();
        for name in self.storage.list(&sp.blobs())? {
            let Some((alg, hex)) = name.split_once('-') else {
                continue;
            };
            let Ok(digest) = Digest::parse(&format!("{alg}:{hex}")) else {
                continue;
            };
            if let Some(st) = self.storage.stat(&sp.blob(&digest))? {
                out.push(BlobInfo {
                    digest,
                    size: st.size,
                    modified_unix_ms: st.modified_unix_ms,
                });
            }
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    /// [`crate::refs::References::delete_blob`].
    pub fn delete_blob(&self, s: &StoreName, d: &Digest) -> Result<()> {
        let sp = self.open_store(s)?;
        let _guard = self.store_lock(&sp)?;
        if let Some(r) = self
            .all_refs(&sp)?
            .into_iter()
            .find(|r| r.target.blobs().any(|b| b == d))
        {
            return Err(Error::Conflict {
                kind: ObjectKind::Blob,
                name: format!("{s}/{d}"),
                reason: format!("reference {} names it", r.name),
            });
        }
        if self.storage.remove_file(&sp.blob(d))? {
            Ok(())
        } else {
            Err(Error::not_found(ObjectKind::Blob, format!("{s}/{d}")))
        }
    }

    /// [`crate::refs::References::pins`].
    pub fn pins(&self, s: &StoreName) -> Result<Vec<Pin>> {
        let sp = self.open_store(s)?;
        let mut out = Vec::new();
        let mut ids = self.image_ids(&sp)?;
        ids.push(ImageId::scratch());
        for id in ids {
            let p = sp.image(&id);
            for o in self.live_owners(&p)? {
                out.push(Pin {
                    image: id.clone(),
                    by: format!("owner {o}"),
                });
            }
            for c in self.storage.list(&p.children())? {
                let Ok(cid) = ImageId::new(c.as_str()) else {
                    continue;
                };
                let by = if self.find_writable(&sp.writable(&cid))?.is_some() {
                    format!("writable {cid}")
                } else if !self.is_committed(&sp.image(&cid))?
                    && self.try_id_lock(&sp, cid.as_str())?.is_none()
                {
                    format!("write {cid}")
                } else {
                    continue;
                };
                out.push(Pin {
                    image: id.clone(),
                    by,
                });
            }
        }
        Ok(out)
    }

    /// The store's quota.
    pub(super) fn read_quota(&self, sp: &StorePaths) -> Result<Option<u64>> {
        let p = sp.quota();
        match self.storage.read(&p)? {
            None => Ok(None),
            Some(bytes) => String::from_utf8_lossy(&bytes)
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| Error::corrupt(self.storage.describe(&p), "quota is not a number")),
        }
    }

    /// [`crate::refs::References::set_quota`].
    pub fn set_quota(&self, s: &StoreName, quota: Option<u64>) -> Result<()> {
        let sp = self.open_store(s)?;
        let _guard = self.store_lock(&sp)?;
        match quota {
            Some(q) => self.storage.write(&sp.quota(), q.to_string().as_bytes()),
            None => self.storage.remove_file(&sp.quota()).map(|_| ()),
        }
    }

    /// [`crate::refs::References::quota`].
    pub fn quota(&self, s: &StoreName) -> Result<Option<u64>> {
        let sp = self.open_store(s)?;
        self.read_quota(&sp)
    }

    /// `QuotaExceeded` if `size` more bytes do not fit under the store's quota. Call with the
    /// store lock held, before the usage change is marked.
    pub(super) fn check_quota_for(&self, s: &StoreName, sp: &StorePaths, size: u64) -> Result<()> {
        let Some(q) = self.read_quota(sp)? else {
            return Ok(());
        };
        if self.storage.stat(&sp.usage_pending())?.is_some() {
            self.recompute_usage(sp)?;
        }
        check_quota(s, self.read_usage(sp)?, size, Some(q))
    }
}
