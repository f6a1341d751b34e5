//! Where everything lives in the bucket (documented in `docs/layouts.md`).
//!
//! Keys here are relative to the configured prefix; [`crate::objects::Objects`] adds it.
//! Store names, image ids and owner names are validated types, so they are safe key segments.

use imagestore_core::{Digest, ImageId, OwnerName, RefName, StoreName};

/// The backend's format marker, created once.
pub const FORMAT_KEY: &str = "imagestore-s3.json";

/// Directory of the store records.
pub const STORES_DIR: &str = "stores";

/// Where the root sweep writes the object it reads the server's clock from.
pub const CLOCK_DIR: &str = "clock";

/// Directory of the store-level leases (creation and deletion of stores).
pub const STORE_LEASES_DIR: &str = "leases";

/// The lease serialising creation and deletion of store `s`.
pub fn store_lease(s: &StoreName) -> String {
    format!("{STORE_LEASES_DIR}/{s}")
}

/// The record of store `s`: it exists if and only if the store does.
pub fn store_record(s: &StoreName) -> String {
    format!("{STORES_DIR}/{s}.json")
}

/// Everything of one incarnation (generation) of a store lives under `stores/<s>/<gen>/`.
pub fn generation_dir(s: &StoreName, generation: &str) -> String {
    format!("{STORES_DIR}/{s}/{generation}")
}

/// A fresh random token for nonces and generations (16 hex digits).
pub fn nonce() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Index intents: what an operation is about to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOp {
    /// An image is about to be committed.
    Commit,
    /// An image is about to be deleted.
    Delete,
}

impl LogOp {
    fn letter(self) -> &'static str {
        match self {
            LogOp::Commit => "c",
            LogOp::Delete => "d",
        }
    }
}

/// The keys of one store generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreKeys {
    /// `stores/<s>/<gen>`.
    pub base: String,
}

impl StoreKeys {
    /// The keys of store `s`, generation `generation`.
    pub fn new(s: &StoreName, generation: &str) -> StoreKeys {
        StoreKeys {
            base: generation_dir(s, generation),
        }
    }

    /// An image's record, which is also its commit marker.
    pub fn image(&self, id: &ImageId) -> String {
        format!("{}/images/{id}", self.base)
    }
    /// Directory of the image records.
    pub fn images_dir(&self) -> String {
        format!("{}/images", self.base)
    }
    /// Directory of one write attempt's layer and TOC.
    pub fn layer_dir(&self, id: &ImageId, nonce: &str) -> String {
        format!("{}/layers/{id}/{nonce}", self.base)
    }
    /// The layer bytes of a write attempt.
    pub fn layer(&self, id: &ImageId, nonce: &str) -> String {
        format!("{}/layer", self.layer_dir(id, nonce))
    }
    /// The TOC of a write attempt.
    pub fn toc(&self, id: &ImageId, nonce: &str) -> String {
        format!("{}/toc", self.layer_dir(id, nonce))
    }
    /// The lease of an id (writes, deletes, writable-layer changes).
    pub fn lease(&self, id: &ImageId) -> String {
        format!("{}/leases/{id}", self.base)
    }
    /// Directory of the id leases.
    pub fn leases_dir(&self) -> String {
        format!("{}/leases", self.base)
    }
    /// Directory of the child links of `parent`.
    pub fn children_dir(&self, parent: &ImageId) -> String {
        format!("{}/children/{parent}", self.base)
    }
    /// The link from `parent` to a child image or writable layer.
    pub fn child(&self, parent: &ImageId, child: &ImageId) -> String {
        format!("{}/{child}", self.children_dir(parent))
    }
    /// Directory of the owners of `id`.
    pub fn owners_dir(&self, id: &ImageId) -> String {
        format!("{}/owners/{id}", self.base)
    }
    /// Directory of all owner registrations.
    pub fn all_owners_dir(&self) -> String {
        format!("{}/owners", self.base)
    }
    /// Directory of all child links.
    pub fn all_children_dir(&self) -> String {
        format!("{}/children", self.base)
    }
    /// `(first, second)` of a key `<dir>/<first>/<second>` directly under `dir`.
    pub fn pair_under<'a>(dir: &str, key: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = key.strip_prefix(dir)?.strip_prefix('/')?;
        let (a, b) = rest.split_once('/')?;
        (!b.contains('/')).then_some((a, b))
    }
    /// One owner registration.
    pub fn owner(&self, id: &ImageId, o: &OwnerName) -> String {
        format!("{}/{o}", self.owners_dir(id))
    }
    /// A writable layer's record (its commit marker).
    pub fn writable(&self, id: &ImageId) -> String {
        format!("{}/writables/{id}", self.base)
    }
    /// Directory of writable-layer records.
    pub fn writables_dir(&self) -> String {
        format!("{}/writables", self.base)
    }
    /// Directory of the imports of one writable layer.
    pub fn imports_dir(&self, id: &ImageId, wnonce: &str) -> String {
        format!("{}/imports/{id}/{wnonce}", self.base)
    }
    /// Directory of one import.
    pub fn import_dir(&self, id: &ImageId, wnonce: &str, seq: u32) -> String {
        format!("{}/{seq:06}", self.imports_dir(id, wnonce))
    }
    /// Directory of the index intents.
    pub fn log_dir(&self) -> String {
        format!("{}/log", self.base)
    }
    /// One index intent.
    pub fn log(&self, id: &ImageId, nonce: &str, op: LogOp) -> String {
        format!("{}/{id}.{nonce}.{}", self.log_dir(), op.letter())
    }
    /// The index intent of a batch of deletes: `<nonce>.b`, holding a
    /// [`crate::record::BatchIntent`] (the ids; `nonce` is the lease nonce of all of them).
    pub fn batch_log(&self, nonce: &str) -> String {
        format!("{}/{nonce}.b", self.log_dir())
    }
    /// The nonce of a batch intent's key (see [`StoreKeys::batch_log`]).
    pub fn parse_batch_log(&self, key: &str) -> Option<String> {
        let name = key.strip_prefix(&self.log_dir())?.strip_prefix('/')?;
        let nonce = name.strip_suffix(".b")?;
        (!nonce.is_empty() && !nonce.contains('.')).then(|| nonce.to_owned())
    }
    /// The index snapshot.
    pub fn index(&self) -> String {
        format!("{}/index", self.base)
    }

    /// A reference's record (`key` is [`imagestore_core::RefName::key`]).
    pub fn reference(&self, key: &str) -> String {
        format!("{}/refs/{key}", self.base)
    }
    /// Directory of the reference records.
    pub fn refs_dir(&self) -> String {
        format!("{}/refs", self.base)
    }
    /// The lease of a reference name, held by every change of that reference.
    pub fn ref_lease(&self, key: &str) -> String {
        format!("{}/refleases/{key}", self.base)
    }
    /// Directory of the reference leases.
    pub fn ref_leases_dir(&self) -> String {
        format!("{}/refleases", self.base)
    }
    /// Directory of the reference links on image `id`.
    pub fn ref_links_dir(&self, id: &ImageId) -> String {
        format!("{}/reflinks/{id}", self.base)
    }
    /// The link that makes reference `key` keep image `id` in use (while its record names
    /// `id`).
    pub fn ref_link(&self, id: &ImageId, key: &str) -> String {
        format!("{}/{key}", self.ref_links_dir(id))
    }
    /// Directory of all reference links on images.
    pub fn all_ref_links_dir(&self) -> String {
        format!("{}/reflinks", self.base)
    }
    /// A blob's bytes.
    pub fn blob(&self, d: &Digest) -> String {
        format!("{}/{}", self.blobs_dir(), blob_name(d))
    }
    /// Directory of the blobs.
    pub fn blobs_dir(&self) -> String {
        format!("{}/blobs", self.base)
    }
    /// The lease a blob delete holds; reference changes naming the blob wait while it exists.
    pub fn blob_lease(&self, d: &Digest) -> String {
        format!("{}/blobleases/{}", self.base, blob_name(d))
    }
    /// Directory of the blob leases.
    pub fn blob_leases_dir(&self) -> String {
        format!("{}/blobleases", self.base)
    }
    /// Directory of the reference links on blob `d`.
    pub fn blob_links_dir(&self, d: &Digest) -> String {
        format!("{}/bloblinks/{}", self.base, blob_name(d))
    }
    /// The link that makes reference `key` keep blob `d` (while its record names `d`).
    pub fn blob_link(&self, d: &Digest, key: &str) -> String {
        format!("{}/{key}", self.blob_links_dir(d))
    }
    /// Directory of all reference links on blobs.
    pub fn all_blob_links_dir(&self) -> String {
        format!("{}/bloblinks", self.base)
    }
    /// The store's quota, absent without one.
    pub fn quota(&self) -> String {
        format!("{}/quota", self.base)
    }
    /// The lease every commit holds around its quota check while a quota is set.
    pub fn quota_lease(&self) -> String {
        format!("{}/quota-lease", self.base)
    }

    /// What a reference-link key under this store links: `(target, reference key)`.
    pub fn parse_link(&self, key: &str) -> Option<(LinkTarget, String)> {
        let rest = key.strip_prefix(&self.base)?.strip_prefix('/')?;
        let mut parts = rest.split('/');
        let kind = parts.next()?;
        let target = parts.next()?;
        let refkey = parts.next()?.to_owned();
        if parts.next().is_some() {
            return None;
        }
        let target = match kind {
            "reflinks" => LinkTarget::Image(ImageId::new(target).ok()?),
            "bloblinks" => LinkTarget::Blob(parse_blob_name(target)?),
            _ => return None,
        };
        Some((target, refkey))
    }

    /// The key of the link of reference `refkey` on `target`.
    pub fn link(&self, target: &LinkTarget, refkey: &str) -> String {
        match target {
            LinkTarget::Image(id) => self.ref_link(id, refkey),
            LinkTarget::Blob(d) => self.blob_link(d, refkey),
        }
    }

    /// `(id, nonce)` of a layer or import key under this store, for uploads found by listing.
    pub fn owner_of_upload(&self, key: &str) -> Option<(ImageId, String)> {
        let rest = key.strip_prefix(&self.base)?.strip_prefix('/')?;
        let mut parts = rest.split('/');
        let kind = parts.next()?;
        if kind != "layers" && kind != "imports" {
            return None;
        }
        let id = ImageId::new(parts.next()?).ok()?;
        let nonce = parts.next()?.to_owned();
        Some((id, nonce))
    }

    /// `(id, nonce, op)` of an index-intent key.
    pub fn parse_log(&self, key: &str) -> Option<(ImageId, String, LogOp)> {
        let name = key.strip_prefix(&self.log_dir())?.strip_prefix('/')?;
        let mut it = name.rsplitn(3, '.');
        let op = match it.next()? {
            "c" => LogOp::Commit,
            "d" => LogOp::Delete,
            _ => return None,
        };
        let nonce = it.next()?.to_owned();
        let id = ImageId::new(it.next()?).ok()?;
        Some((id, nonce, op))
    }
}

/// What a reference link keeps: an image or a blob.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LinkTarget {
    /// An image (`reflinks/<id>/<key>`).
    Image(ImageId),
    /// A blob (`bloblinks/<algorithm>-<hex>/<key>`).
    Blob(Digest),
}

/// The key segment of reference `name`: [`RefName::key`] with `%` written as `=`, since
/// `object_store` would percent-encode a `%` again and listings would not give the key back.
/// `=` appears nowhere else in such keys, so the mapping stays one to one.
pub fn ref_key(name: &RefName) -> String {
    name.key().replace('%', "=")
}

/// A blob's object name: `<algorithm>-<hex>`.
pub fn blob_name(d: &Digest) -> String {
    format!("{}-{}", d.algorithm().name(), d.hex())
}

/// The digest a blob object name stands for.
pub fn parse_blob_name(name: &str) -> Option<Digest> {
    let (alg, hex) = name.split_once('-')?;
    Digest::parse(&format!("{alg}:{hex}")).ok()
}

/// The last segment of a key.
pub fn last_segment(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() -> imagestore_core::Result<()> {
        let k = StoreKeys::new(&StoreName::new("s1")?, "00ff");
        let id = ImageId::new("a.b-c")?;
        assert_eq!(k.image(&id), "stores/s1/00ff/images/a.b-c");
        let log = k.log(&id, "1234", LogOp::Delete);
        assert_eq!(log, "stores/s1/00ff/log/a.b-c.1234.d");
        assert_eq!(
            k.parse_log(&log),
            Some((id.clone(), "1234".into(), LogOp::Delete))
        );
        let batch = k.batch_log("abcd");
        assert_eq!(batch, "stores/s1/00ff/log/abcd.b");
        assert_eq!(k.parse_batch_log(&batch), Some("abcd".into()));
        assert_eq!(k.parse_log(&batch), None);
        assert_eq!(k.parse_batch_log(&log), None);
        assert_eq!(
            k.owner_of_upload(&k.layer(&id, "77")),
            Some((id.clone(), "77".into()))
        );
        assert_eq!(
            k.owner_of_upload(&format!("{}/layer", k.import_dir(&id, "88", 3))),
            Some((id, "88".into()))
        );
        assert_eq!(k.owner_of_upload("stores/s1/00ff/index"), None);
        let d = Digest::sha256_of(b"x");
        let link = k.blob_link(&d, "r%3At");
        assert_eq!(
            k.parse_link(&link),
            Some((LinkTarget::Blob(d.clone()), "r%3At".into()))
        );
        assert_eq!(parse_blob_name(&blob_name(&d)), Some(d));
        let img = LinkTarget::Image(ImageId::new("i")?);
        assert_eq!(k.parse_link(&k.link(&img, "r")), Some((img, "r".into())));
        Ok(())
    }
}
