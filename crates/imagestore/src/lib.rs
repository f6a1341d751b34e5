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
//! # Choosing a backend
//!
//! A backend is compiled in by a feature of this crate and picked at run time by the scheme of
//! the URL given to [`open`]; the code above works unchanged on every one of them.
//!
//! | feature | scheme and URL | where the images are |
//! | --- | --- | --- |
//! | `local` (default) | `file:///var/lib/imagestore` | a directory on local disk |
//! | `s3` | `s3://bucket/prefix?endpoint=https://s3.example.net&region=eu-1` | an S3-compatible object store, shared by many hosts |
//! | `vmdk` | `vmdk:///vmfs/volumes/ds1/images` | delta VMDK disks holding ext4, in VIC's datastore layout (needs `libext2fs2` at run time) |
//! | `vsphere` (with `vmdk`) | `vsphere://vcenter.example.net/dc1/ds1/images` | the same, on a datastore behind vCenter or ESXi |
//! | `remote` | `imagestore+http://127.0.0.1:8080`, `imagestore+https://host:8443?token_file=/etc/token` | a store served by `imagestore serve` |
//! | `full` | all of the above | |
//!
//! ```toml
//! [dependencies]
//! # Local disk and S3, nothing else linked.
//! imagestore = { version = "0.1", default-features = false, features = ["local", "s3"] }
//! ```
//!
//! [`schemes`] lists what a build can open. A URL whose backend was left out is refused with
//! an error that names the feature providing it, and an unknown scheme with one that lists the
//! available ones:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! assert!(imagestore::schemes().contains(&"file"));
//! let err = imagestore::open("nosuch://x").await.err().map(|e| e.to_string());
//! assert!(err.is_some_and(|e| e.contains("file")));
//! # }
//! ```
//!
//! Each backend's own options (credentials, endpoints, TLS) are in its module: `local`,
//! `s3`, `vsphere` and `remote`, present when their feature is on.

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
