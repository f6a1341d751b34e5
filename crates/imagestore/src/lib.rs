//! imagestore stores container image layers as chains: each image is a parent image plus one
//! layer applied from a tar stream, verified against an expected sha256 sum, with metadata.
//!
//! This facade links the backends selected by its features and re-exports the core API.
//! Open a backend by URL and use the [`ImageStorer`] trait:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> imagestore::Result<()> {
//! use imagestore::{ImageId, ImageStorerExt, Metadata, StoreName};
//!
//! let dir = tempfile::tempdir().map_err(|e| imagestore::Error::invalid(e.to_string()))?;
//! let url = format!("file://{}", dir.path().display());
//! let store = imagestore::open(&url).await?;
//!
//! let name = StoreName::new("demo")?;
//! store.create_image_store(&name).await?;
//! let scratch = store.scratch(&name).await?;
//!
//! // An empty layer: the sha256 of no bytes.
//! let base = store.write_image_bytes(&scratch, &ImageId::new("base")?, Metadata::new(), Vec::new()).await?;
//! assert_eq!(base.parent, Some(ImageId::scratch()));
//! assert_eq!(store.list_images(&name, &[]).await?.len(), 1);
//! # Ok(()) }
//! ```
//!
//! Schemes: `file://` (feature `local`, on by default), `s3://` (feature `s3`), `vmdk://`
//! (feature `vmdk`), `vsphere://` (feature `vsphere`, which includes `vmdk`),
//! `imagestore+http://` and `imagestore+https://` (feature `remote`: a store served by
//! `imagestore serve`). [`schemes`] lists what this build can open.

#![deny(missing_docs)]

use std::sync::Arc;

// What a library user needs: opening by URL, the traits, the types, the errors, the layer
// engine's options. What only backend authors need stays in `imagestore_core::backend`.
pub use imagestore_core::{
    Algorithm, ByteStream, Capabilities, Digest, Error, Exporter, FilterSpec, FilterType, Image,
    ImageId, ImageLink, ImageStorer, ImageStorerExt, ImportSummary, Importer, JoinedImage,
    Metadata, ObjectKind, OwnerName, Resolver, Result, StoreName, Url, Writable, byte_stream,
    is_image_in_use,
};
pub use imagestore_core::{
    BlobInfo, Descriptor, Expect, GcOptions, GcReport, Pin, RefName, RefTarget, Reference,
    References,
};
pub use imagestore_core::{digest, error, gc, image, layer, names, redact, refs, registry, storer};

/// The local-disk backend (feature `local`).
#[cfg(feature = "local")]
pub use imagestore_local as local;

/// The S3 backend (feature `s3`).
#[cfg(feature = "s3")]
pub use imagestore_s3 as s3;

/// The VMDK backends (feature `vmdk`; `vsphere` adds the vCenter/ESXi client).
#[cfg(feature = "vmdk")]
pub use imagestore_vsphere as vsphere;

/// The remote backend, a store served by `imagestore serve` (feature `remote`).
#[cfg(feature = "remote")]
pub use imagestore_remote as remote;

/// Makes sure every backend compiled into this build is linked, so its registration is
/// visible to the registry.
fn link_backends() {
    #[cfg(feature = "local")]
    std::hint::black_box(imagestore_local::SCHEME);
    #[cfg(feature = "s3")]
    std::hint::black_box(imagestore_s3::SCHEME);
    #[cfg(feature = "vmdk")]
    std::hint::black_box(imagestore_vsphere::SCHEME);
    #[cfg(feature = "remote")]
    std::hint::black_box(imagestore_remote::SCHEME);
}

/// Opens the backend for `url`, chosen by its scheme among those this build links.
pub async fn open(url: &str) -> Result<Arc<dyn ImageStorer>> {
    link_backends();
    registry::check_unique()?;
    registry::open(url).await
}

/// The schemes this build can open, sorted.
pub fn schemes() -> Vec<&'static str> {
    link_backends();
    registry::schemes()
}

/// The README's examples, compiled and run as doctests.
#[cfg(all(doctest, feature = "local"))]
#[doc = include_str!("../../../README.md")]
mod readme {}
