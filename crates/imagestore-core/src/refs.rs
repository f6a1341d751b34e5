//! References and blobs: the names a store gives its images, and the manifests and configs
//! those names carry.
//!
//! A [`Reference`] maps a [`RefName`] (an OCI reference such as `registry:5000/repo:tag`, or
//! any name of the same grammar) to a [`RefTarget`]: the top image id, and optionally the
//! manifest's descriptor, the config's digest and the platform. Manifests and configs are kept
//! once per store as content-addressed blobs ([`References::put_blob`]), so two tags of one
//! image share them and an export reproduces them byte for byte.
//!
//! A reference keeps its image in use: deleting it is refused with `ImageInUse` naming
//! `reference <name>`. Every change is a compare-and-swap on the reference ([`Expect`]).

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, ObjectKind, Result};
use crate::names::{ImageId, StoreName};

/// Longest reference name, in bytes (the longest OCI reference docker accepts).
pub const MAX_REF_NAME_LEN: usize = 255;

/// Largest blob a store keeps, in bytes: the manifest size limit registries apply.
pub const MAX_BLOB_BYTES: usize = 4 << 20;

/// Longest media type, in bytes (RFC 6838 allows 127 + 1 + 127).
pub const MAX_MEDIA_TYPE_LEN: usize = 255;

/// A reference name: 1 to [`MAX_REF_NAME_LEN`] bytes of `[A-Za-z0-9._:/@+-]`, starting with a
/// letter or digit, without `..`, `//` or a trailing `/`. Every OCI reference
/// (`[registry[:port]/]repository[:tag][@digest]`) is one.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RefName(String);

impl RefName {
    /// Validates `s` and wraps it.
    pub fn new(s: impl Into<String>) -> Result<RefName> {
        let s = s.into();
        let bad = |why: &str| {
            Err(Error::invalid(format!(
                "reference name {:?} {why}",
                s.chars().take(64).collect::<String>()
            )))
        };
        if s.is_empty() {
            return bad("must not be empty");
        }
        if s.len() > MAX_REF_NAME_LEN {
            return bad(&format!(
                "is {} bytes long; the maximum is {MAX_REF_NAME_LEN}",
                s.len()
            ));
        }
        if !s.as_bytes()[0].is_ascii_alphanumeric() {
            return bad("must start with a letter or digit");
        }
        if let Some(c) = s.chars().find(|c| {
            !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '@' | '+' | '-'))
        }) {
            return bad(&format!(
                "contains {c:?}; only letters, digits and . _ : / @ + - are allowed"
            ));
        }
        if s.contains("..") || s.contains("//") || s.ends_with('/') {
            return bad("must not contain \"..\" or \"//\" or end with '/'");
        }
        Ok(RefName(s))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A file or object name that stands for this reference: the name with every byte other
    /// than letters, digits, `_`, `-` and `.` percent-encoded, or, when that would be longer
    /// than 200 bytes, `%%` and the sha256 of the name. Records hold the name itself, so the
    /// key never has to be decoded.
    pub fn key(&self) -> String {
        let encoded = crate::backend::storage::encode_name(&self.0);
        if encoded.len() <= 200 {
            encoded
        } else {
            format!("%%{}", Digest::sha256_of(self.0.as_bytes()).hex())
        }
    }
}

impl fmt::Display for RefName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RefName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl FromStr for RefName {
    type Err = Error;
    fn from_str(s: &str) -> Result<RefName> {
        RefName::new(s)
    }
}

impl TryFrom<String> for RefName {
    type Error = Error;
    fn try_from(s: String) -> Result<RefName> {
        RefName::new(s)
    }
}

impl From<RefName> for String {
    fn from(n: RefName) -> String {
        n.0
    }
}

/// A blob named by its digest, as an OCI descriptor names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Descriptor {
    /// The media type (`application/vnd.oci.image.manifest.v1+json`, ...).
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// The digest of the bytes.
    pub digest: Digest,
    /// Their length.
    pub size: u64,
}

/// What a reference names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RefTarget {
    /// The top image of the chain.
    pub image: ImageId,
    /// The image manifest, kept as a blob of the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Descriptor>,
    /// The digest of the image config, kept as a blob of the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Digest>,
    /// The platform (`linux/amd64`, `linux/arm64/v8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

impl RefTarget {
    /// A target naming only an image.
    pub fn image(image: ImageId) -> RefTarget {
        RefTarget {
            image,
            manifest: None,
            config: None,
            platform: None,
        }
    }

    /// The blobs this target names: the manifest's and the config's digests.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        self.manifest
            .iter()
            .map(|m| &m.digest)
            .chain(self.config.iter())
    }

    /// Checks the sizes a caller controls: the media type's length and the platform's.
    pub fn validate(&self) -> Result<()> {
        if let Some(m) = &self.manifest
            && (m.media_type.is_empty()
                || m.media_type.len() > MAX_MEDIA_TYPE_LEN
                || m.media_type.chars().any(|c| c.is_control() || c == ' '))
        {
            return Err(Error::invalid(format!(
                "media type {:?} must be 1 to {MAX_MEDIA_TYPE_LEN} bytes without spaces",
                m.media_type.chars().take(64).collect::<String>()
            )));
        }
        if let Some(p) = &self.platform
            && (p.is_empty()
                || p.len() > 64
                || !p
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '.')))
        {
            return Err(Error::invalid(format!(
                "platform {:?} must be os/arch[/variant]",
                p.chars().take(64).collect::<String>()
            )));
        }
        Ok(())
    }
}

/// A reference as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reference {
    /// Its name.
    pub name: RefName,
    /// Its store.
    pub store: StoreName,
    /// What it names.
    pub target: RefTarget,
    /// When it was last set, in milliseconds since the Unix epoch by the setter's clock.
    pub updated_unix_ms: u64,
}

/// The precondition of a reference change (compare-and-swap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Whatever the reference names now, or that it does not exist.
    Any,
    /// The reference must not exist.
    Absent,
    /// The reference must name exactly this target.
    Target(RefTarget),
}

impl Expect {
    /// `Ok` if `current` (the reference's target now, `None` if absent) meets the
    /// precondition; otherwise the `Conflict` every backend returns.
    pub fn check(
        &self,
        store: &StoreName,
        name: &RefName,
        current: Option<&RefTarget>,
    ) -> Result<()> {
        let ok = match self {
            Expect::Any => true,
            Expect::Absent => current.is_none(),
            Expect::Target(t) => current == Some(t),
        };
        if ok {
            return Ok(());
        }
        let now = match current {
            Some(t) => format!("it names image {}", t.image),
            None => "it does not exist".to_owned(),
        };
        let wanted = match self {
            Expect::Absent => "absent".to_owned(),
            Expect::Target(t) => format!("naming image {}", t.image),
            Expect::Any => String::new(),
        };
        Err(Error::Conflict {
            kind: ObjectKind::Reference,
            name: format!("{store}/{name}"),
            reason: format!("expected it {wanted}, but {now}"),
        })
    }
}

/// A blob of a store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobInfo {
    /// Its digest.
    pub digest: Digest,
    /// Its length in bytes.
    pub size: u64,
    /// When it was last put, in milliseconds since the Unix epoch (`None` if the storage
    /// cannot tell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_unix_ms: Option<u64>,
}

/// Something that keeps an image from being deleted, other than its children and references
/// (see [`References::pins`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// The pinned image.
    pub image: ImageId,
    /// Who pins it: `owner <name>`, `writable <id>` or `write <id>` (a write in progress
    /// with the image as its parent), as [`crate::Error::ImageInUse`] names users.
    pub by: String,
}

/// References, blobs, pins and quotas: what a store keeps about images beyond their layers.
///
/// Every method is object safe and, like the rest of the storage traits, may be dropped
/// mid-way: a change then completes or does not happen, never half of it.
#[async_trait]
pub trait References: Send + Sync {
    /// Points reference `name` at `target` if `expect` holds, and returns it. The target's
    /// image must exist (`NotFound` otherwise) and so must the blobs it names (`NotFound`,
    /// with kind `Blob`); a precondition that does not hold is a `Conflict` and changes
    /// nothing. From then on the image is in use; the image the reference named before is
    /// no longer pinned by it.
    async fn set_reference(
        &self,
        store: &StoreName,
        name: &RefName,
        target: &RefTarget,
        expect: &Expect,
    ) -> Result<Reference>;

    /// Reference `name`; `NotFound` if absent.
    async fn get_reference(&self, store: &StoreName, name: &RefName) -> Result<Reference>;

    /// Every reference of the store, sorted by name.
    async fn list_references(&self, store: &StoreName) -> Result<Vec<Reference>>;

    /// Removes reference `name` if `expect` holds (`Expect::Absent` is refused as
    /// `InvalidArgument`) and returns what it named. `NotFound` if absent.
    async fn delete_reference(
        &self,
        store: &StoreName,
        name: &RefName,
        expect: &Expect,
    ) -> Result<Reference>;

    /// Stores `bytes` as the blob `digest` (at most [`MAX_BLOB_BYTES`]); `DigestMismatch` if
    /// they do not hash to it. Putting a blob that exists keeps it and marks it as put now, so
    /// garbage collection's grace period counts from the last put.
    async fn put_blob(&self, store: &StoreName, digest: &Digest, bytes: Vec<u8>) -> Result<()>;

    /// The bytes of blob `digest`; `NotFound` if absent.
    async fn get_blob(&self, store: &StoreName, digest: &Digest) -> Result<Vec<u8>>;

    /// Every blob of the store, sorted by digest.
    async fn list_blobs(&self, store: &StoreName) -> Result<Vec<BlobInfo>>;

    /// Removes blob `digest`. `Conflict` while a reference names it; `NotFound` if absent.
    async fn delete_blob(&self, store: &StoreName, digest: &Digest) -> Result<()>;

    /// What keeps images of the store in use besides children and references: live owners,
    /// writable layers (pinning their parents) and writes in progress (pinning their
    /// parents). Garbage collection treats these images as roots.
    async fn pins(&self, store: &StoreName) -> Result<Vec<Pin>>;

    /// Sets the store's quota in bytes (`None`: no quota). A quota below the current usage is
    /// allowed; it only refuses writes from then on.
    async fn set_quota(&self, store: &StoreName, quota: Option<u64>) -> Result<()>;

    /// The store's quota, `None` if it has none.
    async fn quota(&self, store: &StoreName) -> Result<Option<u64>>;
}

/// `DigestMismatch` or `LimitExceeded` unless `bytes` may be stored as blob `digest`: the
/// check every backend makes before it stores a blob.
pub fn check_blob(digest: &Digest, bytes: &[u8]) -> Result<()> {
    if bytes.len() > MAX_BLOB_BYTES {
        return Err(Error::LimitExceeded {
            what: "blob size in bytes",
            value: bytes.len() as u64,
            max: MAX_BLOB_BYTES as u64,
        });
    }
    let mut h = digest.algorithm().hasher();
    h.update(bytes);
    let actual = h.finish();
    if &actual != digest {
        return Err(Error::DigestMismatch {
            expected: digest.clone(),
            actual,
        });
    }
    Ok(())
}

/// The `QuotaExceeded` error, or `Ok` if `size` more bytes fit under `quota`.
pub fn check_quota(store: &StoreName, usage: u64, size: u64, quota: Option<u64>) -> Result<()> {
    match quota {
        Some(quota) if usage.saturating_add(size) > quota => Err(Error::QuotaExceeded {
            store: store.to_string(),
            usage,
            size,
            quota,
        }),
        _ => Ok(()),
    }
}

/// The stored form of a reference, shared by the backends: the reference and a format
/// version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefRecord {
    /// Record format version ([`crate::backend::record::RECORD_VERSION`]).
    pub version: u32,
    /// The name (keys may be hashed, so the record says it).
    pub name: RefName,
    /// The target.
    pub target: RefTarget,
    /// When it was set.
    pub updated_unix_ms: u64,
}

impl crate::backend::record::Versioned for RefRecord {
    const NAME: &'static str = "reference record";
    fn version(&self) -> u32 {
        self.version
    }
}

impl RefRecord {
    /// A record of `name` naming `target`, set now.
    pub fn new(name: RefName, target: RefTarget) -> RefRecord {
        RefRecord {
            version: crate::backend::record::RECORD_VERSION,
            name,
            target,
            updated_unix_ms: crate::backend::record::now_unix_ms(),
        }
    }

    /// The reference of store `store` this record holds.
    pub fn to_reference(&self, store: &StoreName) -> Reference {
        Reference {
            name: self.name.clone(),
            store: store.clone(),
            target: self.target.clone(),
            updated_unix_ms: self.updated_unix_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_take_oci_references_and_refuse_the_rest() {
        for ok in [
            "alpine",
            "docker.io/library/alpine:3.19",
            "localhost:5000/a/b:tag",
            "r/x@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "v1.2+build",
        ] {
            assert!(RefName::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "/a", ".a", "a b", "a/../b", "a//b", "a/", "a\nb", "ä", "-x",
        ] {
            assert!(RefName::new(bad).is_err(), "{bad:?}");
        }
        assert!(RefName::new("a".repeat(256)).is_err());
    }

    #[test]
    fn keys_are_single_safe_segments() -> Result<()> {
        let n = RefName::new("localhost:5000/a/b:tag")?;
        assert_eq!(n.key(), "localhost%3A5000%2Fa%2Fb%3Atag");
        let long = RefName::new(format!("r/{}", "a/".repeat(120) + "x"))?;
        assert!(long.key().starts_with("%%") && long.key().len() == 66);
        Ok(())
    }

    #[test]
    fn expectations_compare_targets() -> Result<()> {
        let (s, n) = (StoreName::new("s")?, RefName::new("r")?);
        let a = RefTarget::image(ImageId::new("a")?);
        let b = RefTarget::image(ImageId::new("b")?);
        assert!(Expect::Any.check(&s, &n, Some(&a)).is_ok());
        assert!(Expect::Absent.check(&s, &n, None).is_ok());
        assert!(matches!(
            Expect::Absent.check(&s, &n, Some(&a)),
            Err(Error::Conflict { .. })
        ));
        assert!(Expect::Target(a.clone()).check(&s, &n, Some(&a)).is_ok());
        assert!(Expect::Target(a).check(&s, &n, Some(&b)).is_err());
        Ok(())
    }

    #[test]
    fn blobs_and_quotas_are_checked() -> Result<()> {
        let d = Digest::sha256_of(b"x");
        assert!(check_blob(&d, b"x").is_ok());
        assert!(matches!(
            check_blob(&d, b"y"),
            Err(Error::DigestMismatch { .. })
        ));
        let s = StoreName::new("s")?;
        assert!(check_quota(&s, 10, 5, Some(15)).is_ok());
        assert!(matches!(
            check_quota(&s, 10, 6, Some(15)),
            Err(Error::QuotaExceeded { .. })
        ));
        assert!(check_quota(&s, u64::MAX, 1, None).is_ok());
        Ok(())
    }
}
