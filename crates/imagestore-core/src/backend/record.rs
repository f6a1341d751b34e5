//! The JSON records backends store with each image and writable layer, and how a record
//! becomes an [`Image`]. Every record carries a format version; decoding refuses versions it
//! does not know, so a newer store is never misread.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{Image, Metadata, metadata_from_base64, metadata_to_base64};
use crate::names::{ImageId, StoreName};

/// Version of the record formats.
pub const RECORD_VERSION: u32 = 1;

/// Decodes a versioned record stored at `what` (a path or key, for errors).
pub fn decode<T: DeserializeOwned + Versioned>(what: &str, bytes: &[u8]) -> Result<T> {
    let r: T = decode_unversioned(what, T::NAME, bytes)?;
    if r.version() != RECORD_VERSION {
        return Err(Error::corrupt(
            what,
            format!("{} version {} is not supported", T::NAME, r.version()),
        ));
    }
    Ok(r)
}

/// Decodes a record without a format version of its own (one whose format is fixed by the
/// versioned records or root marker it belongs to) stored at `what`; `name` says what it is in
/// errors.
pub fn decode_unversioned<T: DeserializeOwned>(what: &str, name: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::corrupt(what, format!("bad {name}: {e}")))
}

/// Encodes a record as JSON.
pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(record).unwrap_or_default()
}

/// A record with a format version.
pub trait Versioned {
    /// What the record is called in errors.
    const NAME: &'static str;
    /// Its format version.
    fn version(&self) -> u32;
}

/// Everything about an image but its layer's bytes and TOC.
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
    /// Bytes the layer occupies in the backend.
    pub size: u64,
    /// Layers between this image and scratch.
    pub depth: u32,
    /// Metadata, values in base64 (empty where the backend keeps metadata elsewhere).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// When the record was made, in milliseconds since the Unix epoch by the writer's clock
    /// (absent in records of earlier versions, which count as old).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_unix_ms: Option<u64>,
}

impl Versioned for ImageRecord {
    const NAME: &'static str = "image record";
    fn version(&self) -> u32 {
        self.version
    }
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
        ImageRecord {
            version: RECORD_VERSION,
            id,
            parent,
            sum,
            size,
            depth,
            metadata: metadata_to_base64(meta),
            created_unix_ms: Some(now_unix_ms()),
        }
    }

    /// The image this record describes, at `locator`.
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
            created_unix_ms: self.created_unix_ms,
        })
    }
}

/// An owner registration's lease: until when it protects its image. Without an expiry it
/// protects the image until released. Expiry is judged against the reader's clock, so hosts
/// sharing a store should keep their clocks in step (NTP); a skew only moves the moment the
/// protection ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerLease {
    /// Milliseconds since the Unix epoch after which the registration no longer counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_unix_ms: Option<u64>,
}

impl OwnerLease {
    /// A lease that lasts `ttl` from now, or one without expiry.
    pub fn new(ttl: Option<std::time::Duration>) -> OwnerLease {
        OwnerLease {
            // A TTL past what u64 milliseconds hold means "until released", never a wrap.
            expires_unix_ms: ttl.map(|t| {
                now_unix_ms().saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
            }),
        }
    }

    /// True while the registration protects its image.
    pub fn is_live(&self) -> bool {
        self.expires_unix_ms.is_none_or(|t| now_unix_ms() < t)
    }

    /// The lease stored in an owner file: empty (a registration without expiry, as every
    /// registration was before leases) or this type's JSON. A file that is neither counts as
    /// a registration without expiry, so damage never unprotects an image.
    pub fn from_file(bytes: &[u8]) -> OwnerLease {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return OwnerLease::default();
        }
        serde_json::from_slice(bytes).unwrap_or_default()
    }

    /// The bytes of an owner file holding this lease (empty without expiry).
    pub fn to_file(&self) -> Vec<u8> {
        if self.expires_unix_ms.is_none() {
            return Vec::new();
        }
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Milliseconds since the Unix epoch, by this host's clock.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A writable layer's parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WritableRecord {
    /// Record format version.
    pub version: u32,
    /// The writable layer's id.
    pub id: ImageId,
    /// The image it was created on.
    pub parent: ImageId,
}

impl Versioned for WritableRecord {
    const NAME: &'static str = "writable record";
    fn version(&self) -> u32 {
        self.version
    }
}

impl WritableRecord {
    /// A record for writable layer `id` on `parent`.
    pub fn new(id: ImageId, parent: ImageId) -> Self {
        WritableRecord {
            version: RECORD_VERSION,
            id,
            parent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_leases_expire_and_old_files_never_do() {
        assert!(OwnerLease::from_file(b"").is_live());
        assert!(OwnerLease::from_file(b"garbage").is_live());
        let live = OwnerLease::new(Some(std::time::Duration::from_secs(60)));
        assert!(OwnerLease::from_file(&live.to_file()).is_live());
        let gone = OwnerLease {
            expires_unix_ms: Some(now_unix_ms() - 1),
        };
        assert!(!OwnerLease::from_file(&gone.to_file()).is_live());
        assert!(OwnerLease::new(None).to_file().is_empty());
    }

    #[test]
    fn records_round_trip_and_refuse_other_versions() -> Result<()> {
        let mut meta = Metadata::new();
        meta.insert("k".into(), vec![0, 1, 2]);
        let r = ImageRecord::new(
            ImageId::new("a")?,
            Some(ImageId::scratch()),
            Some(Digest::empty_sha256()),
            7,
            1,
            &meta,
        );
        let back: ImageRecord = decode("a.json", &encode(&r))?;
        assert_eq!(back, r);
        let url = Url::parse("file:///x").map_err(|e| Error::invalid(e.to_string()))?;
        assert_eq!(back.to_image(&StoreName::new("s")?, url)?.metadata, meta);
        let newer =
            String::from_utf8_lossy(&encode(&r)).replace("\"version\": 1", "\"version\": 9");
        assert!(matches!(
            decode::<ImageRecord>("a.json", newer.as_bytes()),
            Err(Error::Corrupt { .. })
        ));
        Ok(())
    }

    #[test]
    fn unversioned_records_decode_and_name_themselves_in_errors() -> Result<()> {
        let m: BTreeMap<String, String> = decode_unversioned("k", "map", br#"{"a":"b"}"#)?;
        assert_eq!(m.get("a").map(String::as_str), Some("b"));
        match decode_unversioned::<BTreeMap<String, String>>("k", "link record", b"[") {
            Err(Error::Corrupt { object, reason }) => {
                assert_eq!(object, "k");
                assert!(reason.starts_with("bad link record: "), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        Ok(())
    }
}
