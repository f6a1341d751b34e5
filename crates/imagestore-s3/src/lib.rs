//! The `s3://` backend of imagestore: image stores in any S3-compatible object store, safe
//! for many hosts sharing one bucket.
//!
//! Each image keeps its layer's bytes exactly as received, its TOC and a JSON record; the
//! record is created with a conditional create (`If-None-Match: *`) as the single step that
//! makes the image visible. Layers stream in through multipart uploads with bounded memory
//! and are completed only after their digest matched. Hosts coordinate through the bucket
//! alone: leases made of conditional creates and updates, links written before checks, and
//! an index with an intent log for listing and usage. References, blobs and quotas follow the
//! same rules (`docs/decisions/0018-s3-references-and-quota.md`). The layout is in
//! `docs/layouts.md`, the protocol in `docs/decisions/0006-s3-protocol.md`.
//!
//! ```no_run
//! # async fn demo() -> imagestore_core::Result<()> {
//! use imagestore_s3::{Config, S3Store};
//! let url = imagestore_core::Url::parse("s3://layers/prod?region=eu-west-1")
//!     .map_err(|e| imagestore_core::Error::invalid(e.to_string()))?;
//! let store = S3Store::open(Config::from_url(&url)?).await?;
//! # let _ = store; Ok(()) }
//! ```

#![deny(missing_docs)]

mod batch;
mod config;
mod content;
mod error;
mod index;
mod layout;
mod lease;
mod objects;
mod pins;
mod quota;
mod reader;
mod record;
mod refs;
mod scratch;
mod store;
mod sweep;
mod upload;
mod write;
mod xml;

use std::sync::Arc;

use imagestore_core::registry::{Backend, OpenFuture};
use imagestore_core::{ImageStorer, Url};

pub use config::Config;
pub use store::{MAX_CHAIN_DEPTH, S3Store};
pub use upload::{MAX_PARTS, part_size};

/// The scheme this crate registers.
pub const SCHEME: &str = "s3";

fn open(url: Url) -> OpenFuture {
    Box::pin(async move {
        let config = Config::from_url(&url)?;
        let store = S3Store::open(config).await?;
        Ok(Arc::new(store) as Arc<dyn ImageStorer>)
    })
}

inventory::submit! {
    Backend {
        scheme: SCHEME,
        feature: "s3",
        description: "an S3-compatible object store (s3://bucket/prefix?endpoint=...)",
        open,
    }
}
