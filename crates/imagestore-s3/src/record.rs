//! The JSON records stored in the bucket: stores, images, writable layers, links, owners and
//! leases. Every record carries a version; decoders refuse versions they do not know.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use imagestore_core::{Digest, Error, ImageId, Metadata, Result, StoreName};

/// Version of every record format.
pub const RECORD_VERSION: u32 = 1;

/// Decodes a record stored at `key`.
pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::corrupt(key, format!("bad record: {e}")))
}

/// Encodes a record.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

fn check_version(key: &str, v: u32) -> Result<()> {
    if v == RECORD_VERSION {
        Ok(())
    } else {
        Err(Error::corrupt(
            key,
            format!("record version {v} is not supported"),
        ))
    }
}

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
        check_version(key, r.version)?;
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

impl StoreRecord {
    /// Decodes and checks a store record.
    pub fn parse(key: &str, bytes: &[u8]) -> Result<StoreRecord> {
        let r: StoreRecord = decode(key, bytes)?;
        check_version(key, r.version)?;
        Ok(r)
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

impl WritableRecord {
    /// Decodes and checks a writable record.
    pub fn parse(key: &str, bytes: &[u8]) -> Result<WritableRecord> {
        let r: WritableRecord = decode(key, bytes)?;
        check_version(key, r.version)?;
        Ok(r)
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

/// `owners/<id>/<owner>`: an owner registration, valid for one incarnation of the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerRecord {
    /// The image's nonce when the owner registered.
    pub image_nonce: String,
}
