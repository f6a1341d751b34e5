//! OCI interop for imagestore: import images from OCI layouts, oci-archives and
//! docker-archives, pull them from distribution registries, and export chains as OCI layouts.
//!
//! Every source resolves to a [`Plan`] (layers in chain order with blob digests, diff ids and
//! chain ids; the manifest and config), which [`import::write_chain`] writes into any
//! [`imagestore_core::ImageStorer`]: each layer is the image whose id is its OCI chain id, its
//! blob digest is the sum the store verifies, and a compressed blob's diff id is verified on
//! the way. The manifest and config are stored as blobs of the store and each name of the
//! image becomes a reference of the store ([`import::set_references`]), so
//! [`export::export_reference`] gives back the same manifest, config and layer digests, and
//! [`registry::push()`] sends them to a registry.
//!
//! ```no_run
//! # async fn demo(store: &dyn imagestore_core::ImageStorer) -> imagestore_oci::Result<()> {
//! use std::sync::Arc;
//! use imagestore_core::StoreName;
//! use imagestore_oci::{Platform, Quiet, import::import_path};
//!
//! let name = StoreName::new("images")?;
//! let done = import_path(store, &name, "debian.tar".as_ref(), None, &Platform::host(), Arc::new(Quiet)).await?;
//! println!("{} layers written, top image {}", done.written, done.top);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod error;
pub mod export;
pub mod import;
pub mod plan;
pub mod progress;
pub mod registry;
pub mod source;
pub mod spec;
mod verify;

pub use error::{Error, Result};
pub use plan::{Plan, PlannedLayer, chain_ids};
pub use progress::{Event, Phase, Progress, Quiet};
pub use spec::Platform;
