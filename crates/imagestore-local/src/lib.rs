//! The `file://` backend of imagestore: image stores in a directory on local disk.
//!
//! Each image keeps its layer's bytes exactly as received and its TOC beside the shared
//! catalogue's files (`imagestore_core::backend::catalog`: a JSON record, child and owner
//! links, and a `COMMITTED` marker written last); the layout is described in
//! `docs/layouts.md`. Open-file-description locks make the store safe for many threads and
//! processes at once; leftovers of crashes are swept when a store is first used.
//!
//! ```no_run
//! # async fn demo() -> imagestore_core::Result<()> {
//! use imagestore_local::{Config, LocalStore};
//! let store = LocalStore::open(Config { root: "/var/lib/imagestore".into() }).await?;
//! # let _ = store; Ok(()) }
//! ```

#![deny(missing_docs)]

mod config;
mod content;
mod error;
mod layout;
mod store;
mod tocs;
mod write;

use std::sync::Arc;

use imagestore_core::registry::{Backend, OpenFuture};
use imagestore_core::{ImageStorer, Url};

pub use config::Config;
pub use store::{LocalLayers, LocalStore, MAX_CHAIN_DEPTH};

/// The scheme this crate registers.
pub const SCHEME: &str = "file";

fn open(url: Url) -> OpenFuture {
    Box::pin(async move {
        let config = Config::from_url(&url)?;
        let store = LocalStore::open(config).await?;
        Ok(Arc::new(store) as Arc<dyn ImageStorer>)
    })
}

inventory::submit! {
    Backend {
        scheme: SCHEME,
        feature: "local",
        description: "a directory on local disk (file:///absolute/path)",
        open,
    }
}
