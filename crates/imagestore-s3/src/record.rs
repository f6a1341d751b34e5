//! The JSON records stored in the bucket: stores, images, writable layers, links, owners,
//! reference links, quotas and leases, encoded and decoded with core's record codec ([`imagestore_core::backend::record`]). Stores,
//! images, writable layers and leases carry a format version that decoding checks; links and
//! owners are small fixed shapes under a versioned store.

use serde::{Deserialize, Serialize};

use imagestore_core::backend::record::{OwnerLease, decode_unversioned};
pub use imagestore_core::backend::record::{RECORD_VERSION, Versioned, decode, encode};
use imagestore_core::{Digest, Error, ImageId, Metadata, RefName, Result, StoreName};

/// One layer of a chain: an image id and the nonce of the write that stored it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LayerRef {
    /// The image.
    pub id: ImageId,
    /// The write attempt whose layer and TOC the image uses.
    pub nonce: String,
}

/// An image's record; the object holding it is the image's commit marker. Core's image
/// record (id, parent, sum, size, depth, metadata) plus where its layer lives and its chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// What every backend records of an image.
    #[serde(flatten)]
    pub image: imagestore_core::backend::record::ImageRecord,
    /// The write attempt that stored the layer (names `layers/<id>/<nonce>/`).
    pub nonce: String,
    /// The ancestors, scratch first, parent last (empty for scratch): a stack is read without
    /// walking the chain record by record.
    #[serde(default)]
    pub chain: Vec<LayerRef>,
}

impl std::ops::Deref for ImageRecord {
    type Target = imagestore_core::backend::record::ImageRecord;

    fn deref(&self) -> &Self::Target {
        &self.image
    }
}

impl Versioned for ImageRecord {
    const NAME: &'static str = "image record";
    fn version(&self) -> u32 {
        self.image.version
    }
}

impl ImageRecord {
    /// A record for a new image.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: ImageId,
        nonce: String,
        parent: Option<ImageId>,
        chain: Vec<LayerRef>,
        sum: Option<Digest>,
        size: u64,
        depth: u32,
        meta: &Metadata,
    ) -> Self {
        ImageRecord {
            image: imagestore_core::backend::record::ImageRecord::new(
                id, parent, sum, size, depth, meta,
            ),
            nonce,
            chain,
        }
    }

    /// Decodes and checks a record stored at `key`.
    pub fn parse(key: &str, bytes: &[u8]) -> Result<ImageRecord> {
        let r: ImageRecord = decode(key, bytes)?;
        if r.chain.len() != r.depth as usize || r.chain.last().map(|l| &l.id) != r.parent.as_ref() {
            return Err(Error::corrupt(key, "chain does not match parent and depth"));
        }
        Ok(r)
    }

    /// This image as a layer of a chain.
    pub fn layer_ref(&self) -> LayerRef {
        LayerRef {
            id: self.id.clone(),
            nonce: self.nonce.clone(),
        }
    }

    /// The chain of a child of this image: its ancestors plus itself.
    pub fn child_chain(&self) -> Vec<LayerRef> {
        let mut c = self.chain.clone();
        c.push(self.layer_ref());
        c
    }
}

/// `stores/<s>.json`: the store exists while this record does. It names the generation all
/// the store's objects live under and holds the scratch image's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreRecord {
    /// Record format version.
    pub version: u32,
    /// The store's name.
    pub store: StoreName,
    /// The incarnation: objects live under `stores/<s>/<generation>/`.
    pub generation: String,
    /// The scratch root image.
    pub scratch: ImageRecord,
}

impl Versioned for StoreRecord {
    const NAME: &'static str = "store record";
    fn version(&self) -> u32 {
        self.version
    }
}

impl StoreRecord {
    /// Decodes and checks a store record.
    pub fn parse(key: &str, bytes: &[u8]) -> Result<StoreRecord> {
        decode(key, bytes)
    }
}

/// `writables/<id>`: a writable layer; the object is its commit marker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WritableRecord {
    /// Record format version.
    pub version: u32,
    /// The writable layer's id.
    pub id: ImageId,
    /// Names the directory of its imports (`imports/<id>/<nonce>/`).
    pub nonce: String,
    /// The image it was created on.
    pub parent: ImageId,
    /// The parent's chain plus the parent itself.
    pub chain: Vec<LayerRef>,
}

impl Versioned for WritableRecord {
    const NAME: &'static str = "writable record";
    fn version(&self) -> u32 {
        self.version
    }
}

impl WritableRecord {
    /// Decodes and checks a writable record.
    pub fn parse(key: &str, bytes: &[u8]) -> Result<WritableRecord> {
        decode(key, bytes)
    }
}

/// What a child link points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    /// A child image (committed or being written).
    Image,
    /// A writable layer.
    Writable,
}

/// `children/<parent>/<child>`: a dependent of `parent`, written before the dependent checks
/// that the parent is not being deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRecord {
    /// The nonce of the write (or writable layer) that made the link.
    pub nonce: String,
    /// Image or writable layer.
    pub kind: LinkKind,
    /// The parent's nonce when the link was made.
    pub parent_nonce: String,
}

impl LinkRecord {
    /// Decodes a link stored at `key`.
    pub fn parse(key: &str, bytes: &[u8]) -> Result<LinkRecord> {
        decode_unversioned(key, "link record", bytes)
    }
}

/// `owners/<id>/<owner>`: an owner registration, valid for one incarnation of the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerRecord {
    /// The image's nonce when the owner registered.
    pub image_nonce: String,
    /// When the registration stops protecting the image (absent: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_unix_ms: Option<u64>,
}

impl OwnerRecord {
    /// True while the registration protects its image (see core's `OwnerLease`).
    pub fn is_live(&self) -> bool {
        OwnerLease {
            expires_unix_ms: self.expires_unix_ms,
        }
        .is_live()
    }

    /// Decodes an owner registration stored at `key`.
    pub fn parse(key: &str, bytes: &[u8]) -> Result<OwnerRecord> {
        decode_unversioned(key, "owner record", bytes)
    }
}

/// `reflinks/<id>/<key>` and `bloblinks/<blob>/<key>`: a reference's link on an image or
/// blob, written before the reference change checks that its target is not being deleted. It
/// counts only while the reference's lease is held or its record names the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefLinkRecord {
    /// The reference (keys may be hashed, so the link says it).
    pub name: RefName,
}

impl RefLinkRecord {
    /// Decodes a reference link stored at `key`.
    pub fn parse(key: &str, bytes: &[u8]) -> Result<RefLinkRecord> {
        decode_unversioned(key, "reference link", bytes)
    }
}

/// `log/<nonce>.b`: the index intent of a batch of deletes, written before the first of its
/// records is removed. Every image it names is deleted under a lease carrying `<nonce>`, so
/// the intent is settled once none of their leases carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchIntent {
    /// Record format version.
    pub version: u32,
    /// The images the batch deletes.
    pub ids: Vec<ImageId>,
}

impl Versioned for BatchIntent {
    const NAME: &'static str = "batch intent";
    fn version(&self) -> u32 {
        self.version
    }
}

impl BatchIntent {
    /// Decodes and checks a batch intent stored at `key`.
    pub fn parse(key: &str, bytes: &[u8]) -> Result<BatchIntent> {
        decode(key, bytes)
    }
}

/// `quota`: the store's quota in bytes; absent without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaRecord {
    /// The most bytes the store's images may take.
    pub quota: u64,
}

impl QuotaRecord {
    /// Decodes a quota stored at `key`.
    pub fn parse(key: &str, bytes: &[u8]) -> Result<QuotaRecord> {
        decode_unversioned(key, "quota record", bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: ImageId, chain: Vec<LayerRef>) -> ImageRecord {
        let parent = chain.last().map(|l| l.id.clone());
        let depth = u32::try_from(chain.len()).unwrap_or(u32::MAX);
        ImageRecord::new(
            id,
            "n1".into(),
            parent,
            chain,
            None,
            7,
            depth,
            &Metadata::new(),
        )
    }

    #[test]
    fn image_records_round_trip_and_are_checked() -> Result<()> {
        let scratch = LayerRef {
            id: ImageId::scratch(),
            nonce: "s".into(),
        };
        let r = image(ImageId::new("a")?, vec![scratch]);
        assert_eq!(ImageRecord::parse("k", &encode(&r))?, r);
        // Records written before they were pretty-printed read the same.
        let compact = serde_json::to_vec(&r).map_err(|e| Error::invalid(e.to_string()))?;
        assert_eq!(ImageRecord::parse("k", &compact)?, r);

        let text = String::from_utf8_lossy(&compact).into_owned();
        let newer = text.replace("\"version\":1", "\"version\":2");
        match ImageRecord::parse("k", newer.as_bytes()) {
            Err(Error::Corrupt { reason, .. }) => {
                assert_eq!(reason, "image record version 2 is not supported");
            }
            other => panic!("{other:?}"),
        }
        let no_chain = text.replace(r#""chain":[{"id":"scratch","nonce":"s"}]"#, r#""chain":[]"#);
        assert_ne!(no_chain, text);
        assert!(matches!(
            ImageRecord::parse("k", no_chain.as_bytes()),
            Err(Error::Corrupt { .. })
        ));
        Ok(())
    }

    #[test]
    fn versioned_records_refuse_other_versions() -> Result<()> {
        let w = WritableRecord {
            version: RECORD_VERSION,
            id: ImageId::new("w")?,
            nonce: "n".into(),
            parent: ImageId::scratch(),
            chain: Vec::new(),
        };
        assert_eq!(WritableRecord::parse("k", &encode(&w))?, w);
        let newer = WritableRecord { version: 9, ..w };
        assert!(matches!(
            WritableRecord::parse("k", &encode(&newer)),
            Err(Error::Corrupt { .. })
        ));
        let s = StoreRecord {
            version: 9,
            store: StoreName::new("s")?,
            generation: "g".into(),
            scratch: image(ImageId::scratch(), Vec::new()),
        };
        assert!(matches!(
            StoreRecord::parse("k", &encode(&s)),
            Err(Error::Corrupt { .. })
        ));
        Ok(())
    }

    #[test]
    fn links_and_owners_decode_with_core() -> Result<()> {
        let l = LinkRecord {
            nonce: "n".into(),
            kind: LinkKind::Writable,
            parent_nonce: "p".into(),
        };
        assert_eq!(LinkRecord::parse("k", &encode(&l))?, l);
        assert_eq!(
            LinkRecord::parse(
                "k",
                br#"{"nonce":"n","kind":"writable","parent_nonce":"p"}"#
            )?,
            l
        );
        match OwnerRecord::parse("owners/a/o", b"{}") {
            Err(Error::Corrupt { reason, .. }) => {
                assert!(reason.starts_with("bad owner record: "), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        Ok(())
    }
}
