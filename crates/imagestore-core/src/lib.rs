//! The core of imagestore: the [`ImageStorer`] trait and its companions, the types they
//! speak ([`Image`], [`Digest`], validated names), the one public [`Error`], the scheme
//! registry, and the layer engine every backend shares (tar ingest with its defences, tables
//! of contents, whiteouts, filters, export, diff and checkout).
//!
//! Backends live in their own crates and only decide where bytes go and how a commit becomes
//! visible; the facade crate `imagestore` links them and re-exports this crate.

#![deny(missing_docs)]

pub mod backend;
pub mod digest;
pub mod error;
pub mod gc;
pub mod image;
pub mod layer;
pub mod names;
pub mod redact;
pub mod refs;
pub mod registry;
pub mod storer;
#[cfg(feature = "tls")]
pub mod tls;
pub mod wire;

pub use digest::{Algorithm, Digest};
pub use error::{Error, ObjectKind, Result, is_image_in_use};
pub use gc::{GcOptions, GcReport};
pub use image::{Image, ImageLink, Metadata};
pub use layer::filter::{FilterSpec, FilterType};
pub use names::{ImageId, OwnerName, StoreName};
pub use refs::{BlobInfo, Descriptor, Expect, Pin, RefName, RefTarget, Reference, References};
pub use storer::{
    ByteStream, Capabilities, Exporter, ImageStorer, ImageStorerExt, ImportSummary, Importer,
    JoinedImage, Resolver, Writable, byte_stream,
};

/// Re-exported so backends and callers agree on the version.
pub use url::Url;
