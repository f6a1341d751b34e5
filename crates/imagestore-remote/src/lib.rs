//! The `imagestore+http://` and `imagestore+https://` backend of imagestore: a store served by
//! `imagestore serve` on another host (or process), reached over the server's native `/v1`
//! HTTP API (`docs/server-api.md`) with a streaming client.
//!
//! Every operation of the storage traits is one request (or a few, for long lists); layer
//! uploads, imports and exports stream with backpressure and never hold a layer in memory.
//! The server's typed errors come back as the same [`imagestore_core::Error`] variants
//! (`imagestore_core::wire`); a server that cannot be reached is a retryable `Backend` error.
//! Checkout exports the merged image and materialises it on this host with the layer engine's
//! own rules. Dropping an operation's future closes its connection and the server cancels the
//! operation, which then leaves what the trait method documents.
//!
//! ```no_run
//! # async fn demo() -> imagestore_core::Result<()> {
//! use imagestore_remote::{Config, RemoteStore};
//! let url = imagestore_core::Url::parse("imagestore+http://127.0.0.1:7000")
//!     .map_err(|e| imagestore_core::Error::invalid(e.to_string()))?;
//! let store = RemoteStore::open(Config::from_url(&url)?).await?;
//! # let _ = store; Ok(()) }
//! ```

#![deny(missing_docs)]

mod checkout;
mod client;
mod config;
mod content;
mod error;
mod refs;
mod store;
mod writes;

use imagestore_core::Url;
use imagestore_core::registry::{Backend, OpenFuture};

pub use client::MAX_JSON;
pub use config::{Config, REMOTE_OPTIONS, SCHEME_HTTP, SCHEME_HTTPS};
pub use error::BACKEND;
pub use store::{RemoteStore, ServerInfo};

/// The scheme this crate registers first (it registers [`SCHEME_HTTPS`] too); the facade
/// names it to keep the registrations linked.
pub const SCHEME: &str = SCHEME_HTTP;

fn open(url: Url) -> OpenFuture {
    Box::pin(store::open_url(url))
}

inventory::submit! {
    Backend {
        scheme: SCHEME_HTTP,
        feature: "remote",
        description: "a store served by `imagestore serve`, over plain HTTP (imagestore+http://host:port)",
        open,
    }
}

inventory::submit! {
    Backend {
        scheme: SCHEME_HTTPS,
        feature: "remote",
        description: "a store served by `imagestore serve`, over HTTPS (imagestore+https://host:port?ca=...)",
        open,
    }
}
