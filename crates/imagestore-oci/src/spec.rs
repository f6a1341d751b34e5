//! The parts of the OCI image spec and of Docker's v2 schema 2 this crate reads and writes:
//! media types, descriptors, manifests, indexes (manifest lists) and the `rootfs` of a config.
//!
//! Digests are parsed into [`Digest`], which accepts only `sha256:`/`sha512:` and lower-case
//! hex, so a digest from a manifest is always safe to turn into a blob path.

use std::collections::BTreeMap;

use imagestore_core::Digest;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Media types.
pub mod media {
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// Uncompressed OCI layer.
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    /// Gzip OCI layer.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// Zstd OCI layer.
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// Docker manifest list.
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker v2 schema 2 manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// Docker gzip layer.
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// Docker uncompressed layer (rare, but written by some tools).
    pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
    /// Docker foreign (non-distributable) layer.
    pub const DOCKER_FOREIGN_LAYER: &str =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

    /// The `Accept` header for manifest requests: every manifest and index type we read.
    pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
        application/vnd.oci.image.manifest.v1+json, \
        application/vnd.docker.distribution.manifest.list.v2+json, \
        application/vnd.docker.distribution.manifest.v2+json";

    /// True for the media type of an index or a manifest list.
    pub fn is_index(m: &str) -> bool {
        m == OCI_INDEX || m == DOCKER_LIST
    }

    /// True for the media type of an image manifest.
    pub fn is_manifest(m: &str) -> bool {
        m == OCI_MANIFEST || m == DOCKER_MANIFEST
    }

    /// True for a layer media type this crate can store (plain, gzip or zstd tar, OCI or
    /// Docker, including non-distributable variants).
    pub fn is_layer(m: &str) -> bool {
        m.starts_with("application/vnd.oci.image.layer.")
            || m.starts_with("application/vnd.docker.image.rootfs.")
    }
}

/// Largest manifest, index or config read into memory.
pub const MAX_JSON: u64 = 4 << 20;

/// The annotation naming a manifest in an OCI layout's `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Where else the content may be fetched from (foreign layers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The platform of a manifest in an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    /// A descriptor without annotations or platform.
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            urls: Vec::new(),
            annotations: BTreeMap::new(),
            platform: None,
        }
    }
}

/// The platform of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture (`amd64`, `arm64`, ...).
    pub architecture: String,
    /// Operating system (`linux`).
    pub os: String,
    /// CPU variant (`v8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: (*os).to_owned(),
                architecture: (*arch).to_owned(),
                variant: parts.get(2).map(|v| (*v).to_owned()),
            }),
            _ => Err(Error::invalid(
                format!("platform {s:?}"),
                "expected OS/ARCH or OS/ARCH/VARIANT, such as linux/amd64",
            )),
        }
    }

    /// The platform this program runs on, in Go's names (`linux/amd64`).
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: None,
        }
    }

    /// True if `other` (from an index) is this platform; a missing variant matches any.
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || self.variant == other.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An image manifest (OCI or Docker v2 schema 2: the same shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// The manifest's own media type (optional in OCI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The layers, base first.
    pub layers: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index (OCI) or manifest list (Docker); also the shape of a layout's `index.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// The index's own media type (optional in OCI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The manifests (or nested indexes).
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Index {
    /// An empty index for a new layout.
    pub fn empty() -> Index {
        Index {
            schema_version: 2,
            media_type: Some(media::OCI_INDEX.into()),
            manifests: Vec::new(),
            annotations: BTreeMap::new(),
        }
    }

    /// Picks the manifest for `platform`; an entry without a platform matches only when it is
    /// the only one.
    pub fn select(&self, platform: &Platform, what: &str) -> Result<&Descriptor> {
        if let Some(d) = self
            .manifests
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| platform.matches(p)))
        {
            return Ok(d);
        }
        if let [only] = self.manifests.as_slice()
            && only.platform.is_none()
        {
            return Ok(only);
        }
        let available: Vec<String> = self
            .manifests
            .iter()
            .filter_map(|d| d.platform.as_ref().map(ToString::to_string))
            .collect();
        Err(Error::NotFound(format!(
            "platform {platform} not found in {what} (available: {})",
            if available.is_empty() {
                "none".to_owned()
            } else {
                available.join(", ")
            }
        )))
    }
}

/// The fields of an image config this crate needs; the rest is kept as bytes.
#[derive(Debug, Clone, Deserialize)]
pub struct ConfigRootfs {
    /// `rootfs`.
    pub rootfs: Rootfs,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, Deserialize)]
pub struct Rootfs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The digests of the uncompressed layers, base first.
    pub diff_ids: Vec<Digest>,
}

/// Parses JSON, naming `what` in the error.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::invalid(what, e))
}

/// The diff ids of a config.
pub fn diff_ids(config: &[u8], what: &str) -> Result<Vec<Digest>> {
    let c: ConfigRootfs = parse_json(config, what)?;
    if c.rootfs.kind != "layers" {
        return Err(Error::invalid(
            what,
            format!("rootfs.type is {:?}, expected \"layers\"", c.rootfs.kind),
        ));
    }
    Ok(c.rootfs.diff_ids)
}

/// The platform an image config names (`os/architecture[/variant]`), or `None` when it
/// names none or an odd one.
pub fn config_platform(config: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        os: String,
        #[serde(default)]
        architecture: String,
        #[serde(default)]
        variant: Option<String>,
    }
    let p: Probe = serde_json::from_slice(config).ok()?;
    let platform = Platform {
        os: p.os,
        architecture: p.architecture,
        variant: p.variant.filter(|v| !v.is_empty()),
    };
    let s = platform.to_string();
    let ok = !platform.os.is_empty()
        && !platform.architecture.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '.'));
    ok.then_some(s)
}

/// The media type of a manifest body: its `mediaType` field, else the HTTP content type,
/// else by shape (`manifests` for an index, `config` for a manifest).
pub fn sniff_manifest_type(body: &[u8], content_type: Option<&str>) -> Option<String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(body).ok()?;
    if let Some(m) = probe.media_type {
        return Some(m);
    }
    if let Some(ct) = content_type.map(|c| c.split(';').next().unwrap_or(c).trim())
        && (media::is_index(ct) || media::is_manifest(ct))
    {
        return Some(ct.to_owned());
    }
    if probe.manifests.is_some() {
        Some(media::OCI_INDEX.into())
    } else if probe.config.is_some() {
        Some(media::OCI_MANIFEST.into())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse_and_match() -> Result<()> {
        let p = Platform::parse("linux/arm64/v8")?;
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("/amd64").is_err());
        let any = Platform::parse("linux/arm64")?;
        assert!(any.matches(&p));
        assert!(!p.matches(&any));
        Ok(())
    }

    #[test]
    fn index_selects_platform() -> Result<()> {
        let d = |arch: &str, n: u8| {
            let mut d = Descriptor::new(media::OCI_MANIFEST, Digest::sha256_of(&[n]), 1);
            d.platform = Some(Platform {
                os: "linux".into(),
                architecture: arch.into(),
                variant: None,
            });
            d
        };
        let idx = Index {
            manifests: vec![d("arm64", 1), d("amd64", 2)],
            ..Index::empty()
        };
        let got = idx.select(&Platform::parse("linux/amd64")?, "index")?;
        assert_eq!(got.digest, Digest::sha256_of(&[2]));
        let e = idx
            .select(&Platform::parse("linux/s390x")?, "index")
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("platform linux/s390x not found in index (available: linux/arm64, linux/amd64)")
        );
        Ok(())
    }

    #[test]
    fn hostile_digests_are_refused() {
        let bad = r#"{"mediaType":"x","digest":"sha256:../../etc/passwd","size":1}"#;
        assert!(parse_json::<Descriptor>(bad.as_bytes(), "d").is_err());
    }

    #[test]
    fn manifest_types_are_sniffed() {
        assert_eq!(
            sniff_manifest_type(br#"{"schemaVersion":2,"manifests":[]}"#, None).as_deref(),
            Some(media::OCI_INDEX)
        );
        assert_eq!(
            sniff_manifest_type(
                br#"{"schemaVersion":2,"config":{}}"#,
                Some("application/vnd.docker.distribution.manifest.v2+json; charset=utf-8")
            )
            .as_deref(),
            Some(media::DOCKER_MANIFEST)
        );
    }
}
