//! The JSON records stored with each image and writable layer.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use imagestore_core::image::{metadata_from_base64, metadata_to_base64};
use imagestore_core::{Digest, Error, Image, ImageId, Metadata, Result, StoreName, Url};

use crate::error::IoContext;

/// Version of the record format.
pub const RECORD_VERSION: u32 = 1;

/// `image.json`: everything about an image but its bytes and TOC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Record format version.
    pub version: u32,
    /// The image id.
    pub id: ImageId,
    /// The parent (absent for scratch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ImageId>,
    /// The sum the layer was written with (absent for scratch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sum: Option<Digest>,
    /// Bytes of the stored layer.
    pub size: u64,
    /// Layers between this image and scratch.
    pub depth: u32,
    /// Metadata, values in base64.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl ImageRecord {
    /// A record for an image.
    pub fn new(
        id: ImageId,
        parent: Option<ImageId>,
        sum: Option<Digest>,
        size: u64,
        depth: u32,
        meta: &Metadata,
    ) -> Self {
        let metadata = metadata_to_base64(meta);
        ImageRecord {
            version: RECORD_VERSION,
            id,
            parent,
            sum,
            size,
            depth,
            metadata,
        }
    }

    /// Reads a record file.
    pub fn read(path: &Path) -> Result<ImageRecord> {
        let bytes = std::fs::read(path).at(path)?;
        let r: ImageRecord = serde_json::from_slice(&bytes).map_err(|e| {
            Error::corrupt(path.display().to_string(), format!("bad image record: {e}"))
        })?;
        if r.version != RECORD_VERSION {
            return Err(Error::corrupt(
                path.display().to_string(),
                format!("record version {} is not supported", r.version),
            ));
        }
        Ok(r)
    }

    /// The record as JSON.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// The image this record describes.
    pub fn to_image(&self, store: &StoreName, locator: Url) -> Result<Image> {
        let metadata = metadata_from_base64(&self.metadata, &format!("{store}/{}", self.id))?;
        Ok(Image {
            id: self.id.clone(),
            store: store.clone(),
            parent: self.parent.clone(),
            metadata,
            locator,
            sum: self.sum.clone(),
            size: self.size,
            depth: self.depth,
        })
    }
}

/// `writable.json`: a writable layer's parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WritableRecord {
    /// Record format version.
    pub version: u32,
    /// The writable layer's id.
    pub id: ImageId,
    /// The image it was created on.
    pub parent: ImageId,
}

impl WritableRecord {
    /// Reads a record file.
    pub fn read(path: &Path) -> Result<WritableRecord> {
        let bytes = std::fs::read(path).at(path)?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::corrupt(
                path.display().to_string(),
                format!("bad writable record: {e}"),
            )
        })
    }

    /// The record as JSON.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}
