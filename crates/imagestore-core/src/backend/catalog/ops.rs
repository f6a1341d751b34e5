//! The storage operations of a catalogue backend, as [`BlockingCatalog`] calls.

use tracing::warn;
use url::Url;

use crate::digest::Digest;
use crate::error::{Error, ObjectKind, Result};
use crate::image::{Image, Metadata, store_url};
use crate::layer::stack::Stack;
use crate::names::{ImageId, OwnerName, StoreName};
use crate::refs::{BlobInfo, Expect, Pin, RefName, RefTarget, Reference};
use crate::storer::{ByteStream, Writable, store_not_empty};

use crate::backend::blocking::BlockingCatalog;
use crate::backend::lock::range_for;
use crate::backend::record::{self, ImageRecord, OwnerLease, WritableRecord};
use crate::backend::storage::StoragePath;

use super::{Catalog, Representation, image_name};

impl<R: Representation> BlockingCatalog for Catalog<R> {
    fn create_store(&self, s: &StoreName) -> Result<Url> {
        self.rep.prepare_root(self)?;
        let _guard = self.lock(&self.layout.root_lock, range_for(s.as_str()))?;
        let sp = self.store_paths(s);
        if self.is_committed(&sp.scratch())? {
            return Err(Error::already_exists(ObjectKind::Store, s));
        }
        // What a crashed creation or deletion left.
        self.storage.remove_all(&sp.dir)?;
        let made = (|| {
            let ds = self.storage.as_ref();
            ds.mkdir(&sp.dir)?;
            ds.mkdir(&sp.images())?;
            ds.mkdir(&sp.writables())?;
            ds.write(&sp.lock(), b"")?;
            ds.write(&sp.usage(), b"0")?;
            let p = sp.scratch();
            ds.mkdir(&p.dir)?;
            ds.mkdir(&p.children())?;
            let size = self.rep.write_scratch(self, &p)?;
            let r = ImageRecord::new(ImageId::scratch(), None, None, size, 0, &Metadata::new());
            ds.write(&p.record(), &record::encode(&r))?;
            if !ds.create_new(&p.marker(), b"")? {
                return Err(Error::invalid(format!(
                    "{} appeared while the store was created",
                    ds.describe(&p.marker())
                )));
            }
            Ok(())
        })();
        if let Err(e) = made {
            let _ = self.storage.remove_all(&sp.dir);
            return Err(e);
        }
        self.forget_swept(s, true);
        Ok(store_url(&self.storage.base_url(), s))
    }

    fn delete_store(&self, s: &StoreName) -> Result<()> {
        let sp = self.open_store(s)?;
        let _root = self.lock(&self.layout.root_lock, range_for(s.as_str()))?;
        let _guard = self.store_lock(&sp)?;
        let mut left: Vec<String> = Vec::new();
        for id in self.image_ids(&sp)? {
            if self.is_committed(&sp.image(&id))? {
                left.push(id.to_string());
            }
        }
        for name in self.storage.list(&sp.writables())? {
            if let Ok(id) = ImageId::new(name.as_str())
                && self.find_writable(&sp.writable(&id))?.is_some()
            {
                left.push(format!("writable {name}"));
            }
        }
        for r in self.all_refs(&sp)? {
            left.push(format!("reference {}", r.name));
        }
        if !left.is_empty() {
            return Err(store_not_empty(s, &left));
        }
        // Invisible first; a stop half way leaves a folder the next creation replaces.
        self.storage.remove_file(&sp.scratch().marker())?;
        self.forget_swept(s, false);
        self.storage.remove_all(&sp.dir)
    }

    fn store_url(&self, s: &StoreName) -> Result<Url> {
        self.open_store(s)?;
        Ok(store_url(&self.storage.base_url(), s))
    }

    fn list_stores(&self) -> Result<Vec<Url>> {
        let mut out = Vec::new();
        for name in self.storage.list(&self.layout.stores)? {
            if let Ok(s) = StoreName::new(name)
                && self.is_committed(&self.store_paths(&s).scratch())?
            {
                out.push(store_url(&self.storage.base_url(), &s));
            }
        }
        Ok(out)
    }

    fn image(&self, s: &StoreName, id: &ImageId) -> Result<Image> {
        let sp = self.open_store(s)?;
        let r = self.record(s, &sp, id)?;
        self.image_of(s, &sp, &r)
    }

    fn images(&self, s: &StoreName, ids: &[ImageId]) -> Result<Vec<Image>> {
        let sp = self.open_store(s)?;
        let wanted = if ids.is_empty() {
            self.image_ids(&sp)?
        } else {
            ids.to_vec()
        };
        let mut out = Vec::new();
        for id in &wanted {
            if let Some(r) = self.find_record(&sp.image(id))? {
                out.push(self.image_of(s, &sp, &r)?);
            }
        }
        Ok(out)
    }

    fn delete_image(&self, image: &Image) -> Result<Image> {
        let (s, id) = (&image.store, &image.id);
        if id.is_scratch() {
            return Err(Error::invalid(format!(
                "the scratch image of store {s} cannot be deleted"
            )));
        }
        let sp = self.open_store(s)?;
        let _guard = self.store_lock(&sp)?;
        let r = self.record(s, &sp, id)?;
        let users = self.users(&sp, id)?;
        if !users.is_empty() {
            return Err(Error::ImageInUse {
                image: image_name(s, id),
                users,
            });
        }
        let found = self.image_of(s, &sp, &r)?;
        let p = sp.image(id);
        self.usage_begin(&sp)?;
        if let Err(e) = self.storage.remove_file(&p.marker()) {
            // The answer may be lost though the marker is gone; then the delete happened.
            if self.is_committed(&p)? {
                return Err(e);
            }
        }
        // From here the image is gone, so the rest is tidying: a child link without its
        // child counts for nothing, a folder without a marker is swept, a pending usage
        // change is recomputed by the next reader.
        let tidy = || -> Result<()> {
            if let Some(parent) = &r.parent {
                self.storage.remove_file(&sp.image(parent).child(id))?;
            }
            self.usage_end(&sp, -i128::from(r.size))?;
            self.storage.remove_all(&p.dir)
        };
        if let Err(e) = tidy() {
            warn!(image = %image_name(s, id), error = %e, "deleted; leftovers left to the sweep");
        }
        Ok(found)
    }

    fn delete_images(&self, s: &StoreName, ids: &[ImageId]) -> Result<Vec<Result<Image>>> {
        Catalog::delete_batch(self, s, ids)
    }

    /// The usage counter; one a failed change left pending is recomputed first.
    fn store_usage(&self, s: &StoreName) -> Result<u64> {
        let sp = self.open_store(s)?;
        if self.storage.stat(&sp.usage_pending())?.is_some() {
            // Commits and deletes hold the store lock from marking to clearing, so a marker
            // seen under the lock is one a failure left.
            let _guard = self.store_lock(&sp)?;
            if self.storage.stat(&sp.usage_pending())?.is_some() {
                self.recompute_usage(&sp)?;
            }
        }
        self.read_usage(&sp)
    }

    fn layer_usage(&self, s: &StoreName, id: &ImageId) -> Result<u64> {
        let sp = self.open_store(s)?;
        let r = self.record(s, &sp, id)?;
        Ok(if id.is_scratch() { 0 } else { r.size })
    }

    fn url(&self, s: &StoreName, id: &ImageId) -> Result<Url> {
        let sp = self.open_store(s)?;
        self.record(s, &sp, id)?;
        Ok(self.locator(&sp.image(id)))
    }

    /// Registered owners, and the VMs the storage knows use the image (as `vm-<name>`).
    fn owners(&self, url: &Url) -> Result<Vec<OwnerName>> {
        let (s, id) = self.parse_locator(url)?;
        let sp = self.open_store(&s)?;
        self.record(&s, &sp, &id)?;
        let p = sp.image(&id);
        let mut names: Vec<OwnerName> = self
            .live_owners(&p)?
            .into_iter()
            .filter_map(|n| OwnerName::new(n).ok())
            .collect();
        for user in self.storage.disk_users(&self.rep.locator(&p))? {
            let name = user.strip_prefix("vm ").unwrap_or(&user);
            if let Ok(o) = OwnerName::new(format!("vm-{name}")) {
                names.push(o);
            }
        }
        Ok(names)
    }

    fn set_owner(
        &self,
        s: &StoreName,
        id: &ImageId,
        owner: &OwnerName,
        lease: Option<OwnerLease>,
    ) -> Result<()> {
        let sp = self.open_store(s)?;
        let _guard = self.store_lock(&sp)?;
        self.record(s, &sp, id)?;
        let p = sp.image(id);
        let marker = p.owner(owner);
        if let Some(lease) = lease {
            self.storage.mkdir(&p.owners())?;
            // Replacing the file renews a lease, or makes the registration permanent.
            self.storage.write(&marker, &lease.to_file())?;
            Ok(())
        } else if self.storage.remove_file(&marker)? {
            Ok(())
        } else {
            Err(Error::not_found(
                ObjectKind::Owner,
                format!("{owner} on {}", image_name(s, id)),
            ))
        }
    }

    fn stack(&self, s: &StoreName, id: &ImageId) -> Result<Stack> {
        self.rep.stack(self, s, id)
    }

    fn create_writable(&self, parent: &Image, id: &ImageId) -> Result<Writable> {
        let s = &parent.store;
        let sp = self.open_store(s)?;
        let _guard = self.store_lock(&sp)?;
        self.record(s, &sp, &parent.id)?;
        if self.find_record(&sp.image(id))?.is_some()
            || self.find_writable(&sp.writable(id))?.is_some()
        {
            return Err(Error::already_exists(
                ObjectKind::Writable,
                image_name(s, id),
            ));
        }
        let w = sp.writable(id);
        self.storage.remove_all(&w.dir)?;
        self.storage.mkdir(&w.dir)?;
        let pp = sp.image(&parent.id);
        self.storage.mkdir(&pp.children())?;
        self.storage.create_new(&pp.child(id), b"")?;
        let rec = WritableRecord::new(id.clone(), parent.id.clone());
        self.storage.write(&w.record(), &record::encode(&rec))?;
        Ok(Writable {
            id: id.clone(),
            store: s.clone(),
            parent: parent.id.clone(),
            imports: 0,
        })
    }

    fn writable(&self, s: &StoreName, id: &ImageId) -> Result<Writable> {
        let sp = self.open_store(s)?;
        let record = self.writable_record(s, &sp, id)?;
        Ok(Writable {
            id: id.clone(),
            store: s.clone(),
            parent: record.parent,
            imports: self.imports(&sp.writable(id))?,
        })
    }

    fn delete_writable(&self, s: &StoreName, id: &ImageId) -> Result<()> {
        let sp = self.open_store(s)?;
        let _guard = self.store_lock(&sp)?;
        let rec = self.writable_record(s, &sp, id)?;
        let w = sp.writable(id);
        // The record first: from then on the layer is gone, whatever remains is swept.
        self.storage.remove_file(&w.record())?;
        let tidy = || -> Result<()> {
            self.storage.remove_file(&sp.image(&rec.parent).child(id))?;
            self.storage.remove_all(&w.dir)
        };
        if let Err(e) = tidy() {
            warn!(writable = %image_name(s, id), error = %e, "deleted; leftovers left to the sweep");
        }
        Ok(())
    }

    fn raw_layer(&self, s: &StoreName, id: &ImageId) -> Result<ByteStream> {
        self.rep.raw_layer(self, s, id)
    }

    fn raw_layer_file(&self, s: &StoreName, id: &ImageId) -> Result<Option<std::fs::File>> {
        self.rep.raw_layer_file(self, s, id)
    }

    fn set_reference(
        &self,
        s: &StoreName,
        name: &RefName,
        target: &RefTarget,
        expect: &Expect,
    ) -> Result<Reference> {
        Catalog::set_reference(self, s, name, target, expect)
    }

    fn reference(&self, s: &StoreName, name: &RefName) -> Result<Reference> {
        Catalog::reference(self, s, name)
    }

    fn references(&self, s: &StoreName) -> Result<Vec<Reference>> {
        Catalog::references(self, s)
    }

    fn delete_reference(
        &self,
        s: &StoreName,
        name: &RefName,
        expect: &Expect,
    ) -> Result<Reference> {
        Catalog::delete_reference(self, s, name, expect)
    }

    fn put_blob(&self, s: &StoreName, d: &Digest, bytes: &[u8]) -> Result<()> {
        Catalog::put_blob(self, s, d, bytes)
    }

    fn blob(&self, s: &StoreName, d: &Digest) -> Result<Vec<u8>> {
        Catalog::blob(self, s, d)
    }

    fn blobs(&self, s: &StoreName) -> Result<Vec<BlobInfo>> {
        Catalog::blobs(self, s)
    }

    fn delete_blob(&self, s: &StoreName, d: &Digest) -> Result<()> {
        Catalog::delete_blob(self, s, d)
    }

    fn pins(&self, s: &StoreName) -> Result<Vec<Pin>> {
        Catalog::pins(self, s)
    }

    fn set_quota(&self, s: &StoreName, quota: Option<u64>) -> Result<()> {
        Catalog::set_quota(self, s, quota)
    }

    fn quota(&self, s: &StoreName) -> Result<Option<u64>> {
        Catalog::quota(self, s)
    }
}

impl<R: Representation> Catalog<R> {
    /// Deletes images `ids` of store `s` under one hold of the store lock: each is checked as
    /// a single delete checks it (children deleted earlier in the batch do not count), the
    /// markers of the deletable ones are removed and made durable together (the commit point
    /// of every delete of the batch), then the counter and the folders are tidied together.
    pub fn delete_batch(&self, s: &StoreName, ids: &[ImageId]) -> Result<Vec<Result<Image>>> {
        let sp = self.open_store(s)?;
        let _guard = self.store_lock(&sp)?;
        let mut out: Vec<Result<Image>> = Vec::with_capacity(ids.len());
        let mut doomed: Vec<(usize, ImageRecord)> = Vec::new();
        let mut going: std::collections::HashSet<String> = std::collections::HashSet::new();
        for id in ids {
            if id.is_scratch() {
                out.push(Err(Error::invalid(format!(
                    "the scratch image of store {s} cannot be deleted"
                ))));
                continue;
            }
            let r = match self.record(s, &sp, id) {
                Ok(r) => r,
                Err(e) => {
                    out.push(Err(e));
                    continue;
                }
            };
            let users: Vec<String> = self
                .users(&sp, id)?
                .into_iter()
                .filter(|u| !u.strip_prefix("child ").is_some_and(|c| going.contains(c)))
                .collect();
            if !users.is_empty() {
                out.push(Err(Error::ImageInUse {
                    image: image_name(s, id),
                    users,
                }));
                continue;
            }
            out.push(self.image_of(s, &sp, &r));
            if out.last().is_some_and(Result::is_ok) {
                going.insert(id.to_string());
                doomed.push((out.len() - 1, r));
            }
        }
        if doomed.is_empty() {
            return Ok(out);
        }
        self.usage_begin(&sp)?;
        let markers: Vec<StoragePath> = doomed
            .iter()
            .map(|(_, r)| sp.image(&r.id).marker())
            .collect();
        if let Err(e) = self.storage.remove_batch(&markers) {
            // Some markers may be gone: those images are deleted, the others are not.
            let msg = e.to_string();
            let mut kept = Vec::new();
            for (i, r) in doomed {
                if self.is_committed(&sp.image(&r.id))? {
                    out[i] = Err(Error::backend(self.scheme(), msg.clone(), true));
                } else {
                    kept.push((i, r));
                }
            }
            doomed = kept;
        }
        // From here the images are gone; the rest is tidying, as after a single delete.
        let freed: i128 = doomed.iter().map(|(_, r)| i128::from(r.size)).sum();
        if let Err(e) = self.usage_end(&sp, -freed) {
            warn!(store = %s, error = %e, "deleted; usage counter left to recompute");
        }
        let mut tidy = Vec::new();
        for (_, r) in &doomed {
            if let Some(parent) = &r.parent {
                tidy.push(sp.image(parent).child(&r.id));
            }
            tidy.push(sp.image(&r.id).dir);
        }
        if let Err(e) = self.storage.remove_batch(&tidy) {
            warn!(store = %s, error = %e, "deleted; leftovers left to the sweep");
        }
        Ok(out)
    }
}
