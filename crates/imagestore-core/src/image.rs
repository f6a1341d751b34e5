//! The [`Image`] value, its seed-style links and its metadata.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::names::{ImageId, StoreName};

/// Opaque named blobs stored with an image (VIC keeps the docker v1 JSON under `metaData`).
pub type Metadata = BTreeMap<String, Vec<u8>>;

/// Longest metadata key, in bytes.
pub const MAX_METADATA_KEY_LEN: usize = 255;
/// Largest total size of an image's metadata (keys plus values), in bytes.
pub const MAX_METADATA_BYTES: usize = 4 << 20;

/// Checks metadata keys (non-empty, printable, at most [`MAX_METADATA_KEY_LEN`] bytes) and the
/// total size (at most [`MAX_METADATA_BYTES`]).
pub fn validate_metadata(meta: &Metadata) -> Result<()> {
    let mut total = 0usize;
    for (k, v) in meta {
        if k.is_empty() || k.len() > MAX_METADATA_KEY_LEN || k.chars().any(char::is_control) {
            return Err(Error::invalid(format!(
                "metadata key {k:?} must be 1 to {MAX_METADATA_KEY_LEN} bytes without control characters"
            )));
        }
        total += k.len() + v.len();
    }
    if total > MAX_METADATA_BYTES {
        return Err(Error::LimitExceeded {
            what: "metadata size in bytes",
            value: total as u64,
            max: MAX_METADATA_BYTES as u64,
        });
    }
    Ok(())
}

/// The seed's path-scheme link to an image: `/storage/<store>/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageLink {
    /// The store.
    pub store: StoreName,
    /// The image id.
    pub id: ImageId,
}

impl fmt::Display for ImageLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/storage/{}/{}", self.store, self.id)
    }
}

impl FromStr for ImageLink {
    type Err = Error;

    /// Parses `/storage/<store>/<id>`; unlike VIC's `Parse`, a short path is an error, not a panic.
    fn from_str(s: &str) -> Result<Self> {
        let rest = s.strip_prefix("/storage/").ok_or_else(|| {
            Error::invalid(format!(
                "{s:?} is not an image link (expected /storage/<store>/<id>)"
            ))
        })?;
        let (store, id) = rest.split_once('/').ok_or_else(|| {
            Error::invalid(format!(
                "{s:?} is not an image link (expected /storage/<store>/<id>)"
            ))
        })?;
        Ok(ImageLink {
            store: StoreName::new(store)?,
            id: ImageId::new(id)?,
        })
    }
}

/// A committed image: a parent image plus one layer.
///
/// Images are immutable once returned by a store; the value is a description, not a handle,
/// and stays valid (though possibly stale) after the image is deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The image id, unique within its store.
    pub id: ImageId,
    /// The store holding the image.
    pub store: StoreName,
    /// The parent image; `None` only for the store's `scratch` root.
    pub parent: Option<ImageId>,
    /// Caller-supplied metadata, exactly as written.
    pub metadata: Metadata,
    /// Backend-native locator of the image's storage (a `file://` directory, an `s3://` key
    /// prefix, a `vmdk://` disk).
    pub locator: Url,
    /// The sum the layer was written with (the sha256 of the bytes received); `None` for scratch.
    pub sum: Option<Digest>,
    /// Bytes the layer occupies in the backend (counted by storage usage).
    pub size: u64,
    /// Number of layers between this image and scratch (scratch is 0).
    pub depth: u32,
    /// When the image was committed, in milliseconds since the Unix epoch by its writer's
    /// clock; `None` for images stored before the store recorded it (they count as old).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_unix_ms: Option<u64>,
}

impl Image {
    /// `/storage/<store>/<id>`.
    pub fn self_link(&self) -> ImageLink {
        ImageLink {
            store: self.store.clone(),
            id: self.id.clone(),
        }
    }

    /// The parent's link, `None` for scratch.
    pub fn parent_link(&self) -> Option<ImageLink> {
        self.parent.as_ref().map(|p| ImageLink {
            store: self.store.clone(),
            id: p.clone(),
        })
    }

    /// True for the store's root image.
    pub fn is_scratch(&self) -> bool {
        self.id.is_scratch()
    }
}

/// The URL of a store under a backend URL: the backend URL with the store name appended as a
/// last path segment (`file:///data/images` + `s1` → `file:///data/images/s1`).
pub fn store_url(base: &Url, store: &StoreName) -> Url {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    let path = format!("{}/{}", base.path().trim_end_matches('/'), store);
    url.set_path(&path);
    url
}

/// The store name a store URL ends with (see [`store_url`]).
pub fn store_name_of(url: &Url) -> Result<StoreName> {
    let last = url
        .path_segments()
        .and_then(|mut s| s.next_back())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            Error::invalid(format!(
                "store URL {url} has no store name as its last path segment"
            ))
        })?;
    StoreName::new(last)
}

/// Metadata as stored in JSON records: values in standard base64.
pub fn metadata_to_base64(meta: &Metadata) -> BTreeMap<String, String> {
    use base64::Engine as _;
    meta.iter()
        .map(|(k, v)| {
            (
                k.clone(),
                base64::engine::general_purpose::STANDARD.encode(v),
            )
        })
        .collect()
}

/// Decodes metadata stored by [`metadata_to_base64`]; `Corrupt` (naming `what`) on bad base64.
pub fn metadata_from_base64(stored: &BTreeMap<String, String>, what: &str) -> Result<Metadata> {
    use base64::Engine as _;
    stored
        .iter()
        .map(|(k, v)| {
            base64::engine::general_purpose::STANDARD
                .decode(v)
                .map(|bytes| (k.clone(), bytes))
                .map_err(|e| Error::corrupt(what.to_owned(), format!("metadata {k:?}: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_round_trip() -> Result<()> {
        let link: ImageLink = "/storage/s1/abc".parse()?;
        assert_eq!(link.to_string(), "/storage/s1/abc");
        for bad in [
            "/storage/s1",
            "/storage",
            "storage/s1/x",
            "/storage/s1/a/b",
            "/storage//x",
        ] {
            assert!(bad.parse::<ImageLink>().is_err(), "{bad:?} accepted");
        }
        Ok(())
    }

    #[test]
    fn store_urls() -> Result<()> {
        let base = Url::parse("s3://bucket/prefix/?region=x")
            .map_err(|e| Error::invalid(e.to_string()))?;
        let s = StoreName::new("s1")?;
        let u = store_url(&base, &s);
        assert_eq!(u.as_str(), "s3://bucket/prefix/s1");
        assert_eq!(store_name_of(&u)?, s);
        Ok(())
    }

    #[test]
    fn metadata_limits() {
        let mut m = Metadata::new();
        m.insert("metaData".into(), b"{}".to_vec());
        assert!(validate_metadata(&m).is_ok());
        m.insert(String::new(), vec![]);
        assert!(validate_metadata(&m).is_err());
        let mut big = Metadata::new();
        big.insert("k".into(), vec![0; MAX_METADATA_BYTES]);
        assert!(matches!(
            validate_metadata(&big),
            Err(Error::LimitExceeded { .. })
        ));
    }
}
