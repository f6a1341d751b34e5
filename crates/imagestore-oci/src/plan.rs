//! An image ready to be written: its layers in chain order with their blob digests, diff ids
//! and chain ids, and the manifest and config kept as metadata. Every source (layout, archive,
//! registry) resolves to a [`Plan`]; [`crate::import::write_chain`] writes any plan.
//!
//! Image ids are OCI chain ids in hex: `ChainID(L0) = DiffID(L0)` and
//! `ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln))`. They depend only on the
//! uncompressed layers and their order, so the same layer on the same parent is stored once,
//! whether it came gzip-compressed from a registry or uncompressed from a docker-archive.

use imagestore_core::{Digest, ImageId};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::spec::media;

/// Metadata key of every image written from OCI content: the layer's diff id (the sha256 of
/// its uncompressed tar), verified while writing.
pub const META_DIFF_ID: &str = "oci.diff_id";
/// Metadata key of every image written from OCI content: the layer blob's media type as the
/// source described it.
pub const META_MEDIA_TYPE: &str = "oci.media_type";
/// Metadata key of the top image of a chain written before stores kept references: the image
/// config, byte for byte. Read for such images; no longer written (the config is a blob of
/// the store, named by the image's references).
pub const META_CONFIG: &str = "oci.config";
/// Metadata key of the top image of a chain written before stores kept references: the image
/// manifest, byte for byte. Read for such images; no longer written.
pub const META_MANIFEST: &str = "oci.manifest";
/// Metadata key of the top image of a chain written before stores kept references: where it
/// came from (`registry/repo:tag`, a docker-archive's repo tag or a layout's tag). Read for
/// such images; no longer written.
pub const META_REF: &str = "oci.ref";

/// The chain ids of a list of diff ids, base first.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => Digest::sha256_of(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// The image id for a chain id: its hex.
pub fn image_id(chain_id: &Digest) -> Result<ImageId> {
    Ok(ImageId::new(chain_id.hex())?)
}

/// One layer to write.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedLayer {
    /// Digest of the blob as it will be streamed into the store: the `sum` of the write.
    pub digest: Digest,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Chain id of the image this layer makes; its hex is the image id.
    pub chain_id: Digest,
    /// Media type, as the source described it.
    pub media_type: String,
    /// Size of the blob in bytes.
    pub size: u64,
    /// Where the source finds the blob (a path inside a layout or archive, or a digest).
    #[serde(skip)]
    pub blob: String,
}

/// An image resolved from a source, ready to be written in chain order.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The source, for messages (`oci-archive /x.tar`).
    pub source: String,
    /// The reference the image came under, if any (the first of `references`).
    pub reference: Option<String>,
    /// Every name the image comes under: the store sets a reference for each.
    pub references: Vec<String>,
    /// The manifest's media type.
    pub manifest_media_type: String,
    /// The image's platform from its config (`linux/amd64`), when it names one.
    pub platform: Option<String>,
    /// The manifest's bytes.
    #[serde(skip)]
    pub manifest: Vec<u8>,
    /// Digest of the manifest's bytes.
    pub manifest_digest: Digest,
    /// The config's bytes.
    #[serde(skip)]
    pub config: Vec<u8>,
    /// Digest of the config's bytes.
    pub config_digest: Digest,
    /// Layers, base first.
    pub layers: Vec<PlannedLayer>,
}

/// A layer as a source lists it, before chain ids are computed.
#[derive(Debug, Clone)]
pub struct SourceLayer {
    /// Blob digest.
    pub digest: Digest,
    /// Media type.
    pub media_type: String,
    /// Blob size.
    pub size: u64,
    /// Location in the source.
    pub blob: String,
}

impl Plan {
    /// Builds a plan from a manifest's layers and the config's diff ids, checking that they
    /// agree in number and that every layer is a tar this store can keep.
    pub fn new(
        source: String,
        reference: Option<String>,
        manifest: Vec<u8>,
        config: Vec<u8>,
        layers: Vec<SourceLayer>,
        diff_ids: Vec<Digest>,
    ) -> Result<Plan> {
        if layers.is_empty() {
            return Err(Error::invalid(&source, "the image has no layers"));
        }
        if layers.len() != diff_ids.len() {
            return Err(Error::invalid(
                &source,
                format!(
                    "the manifest lists {} layers but the config has {} diff ids",
                    layers.len(),
                    diff_ids.len()
                ),
            ));
        }
        for (i, l) in layers.iter().enumerate() {
            if !media::is_layer(&l.media_type) {
                return Err(Error::invalid(
                    &source,
                    format!(
                        "layer {i} has media type {:?}, not a layer tar",
                        l.media_type
                    ),
                ));
            }
        }
        let chains = chain_ids(&diff_ids);
        let layers = layers
            .into_iter()
            .zip(diff_ids)
            .zip(chains)
            .map(|((l, diff_id), chain_id)| PlannedLayer {
                digest: l.digest,
                diff_id,
                chain_id,
                media_type: l.media_type,
                size: l.size,
                blob: l.blob,
            })
            .collect();
        let manifest_media_type = crate::spec::sniff_manifest_type(&manifest, None)
            .unwrap_or_else(|| media::OCI_MANIFEST.to_owned());
        let platform = crate::spec::config_platform(&config);
        Ok(Plan {
            source,
            references: reference.iter().cloned().collect(),
            reference,
            manifest_media_type,
            platform,
            manifest_digest: Digest::sha256_of(&manifest),
            manifest,
            config_digest: Digest::sha256_of(&config),
            config,
            layers,
        })
    }

    /// The id of the top image.
    pub fn top_id(&self) -> Result<ImageId> {
        match self.layers.last() {
            Some(l) => image_id(&l.chain_id),
            None => Err(Error::invalid(&self.source, "the image has no layers")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() -> Result<()> {
        // Two arbitrary diff ids: the base's chain id is its diff id, the next hashes both.
        let a = Digest::parse(
            "sha256:a9561eb1b190625c9adb5a9513e72c4dedafc1cb2d4c5236c9a6957ec7dfd5a9",
        )?;
        let b = Digest::parse(
            "sha256:ed9a5b8b6a2f8b9c5b1f8d8c7e7a3c1f2e4d6b8a9c0d1e2f3a4b5c6d7e8f9a0b",
        )?;
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        assert_eq!(ids[1], Digest::sha256_of(format!("{a} {b}").as_bytes()));
        // The same layer on another parent is another image.
        let other = chain_ids(&[b.clone(), b.clone()]);
        assert_ne!(other[1], ids[1]);
        assert_eq!(image_id(&ids[1])?.as_str(), ids[1].hex());
        Ok(())
    }
}
