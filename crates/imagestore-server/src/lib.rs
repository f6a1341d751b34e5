//! imagestore over HTTP: one listener answering the native `/v1` API (every operation of the
//! [`ImageStorer`] trait, `docs/server-api.md`), VIC's port-layer storage API (`/storage…`,
//! `/archive`) and the operational routes (`/healthz`, `/readyz`, `/metrics`).
//!
//! [`router`] builds the routes over an [`AppState`]; [`Server`] binds a listener (TCP or
//! rustls TLS, refusing a non-loopback address without TLS and authentication) and serves
//! until shutdown, draining in-flight requests within a deadline.

#![deny(missing_docs)]

mod error;
mod layers;
mod metrics;
mod native;
mod ops;
mod serve;
mod stall;
mod vic;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use imagestore_core::ImageStorer;

pub use error::{ApiError, Redactor};
pub use metrics::Metrics;
pub use serve::{ServeConfig, ServeError, Server, TlsFiles, serve};

/// Largest JSON request body, in bytes: the 4 MiB of a metadata or blob plus JSON's
/// overhead.
pub const MAX_JSON_BODY: usize = (4 << 20) + (64 << 10);

/// A bearer token every request but `/healthz` must carry.
#[derive(Clone)]
pub struct Token(Arc<[u8]>);

impl Token {
    /// A token of these bytes (surrounding whitespace, such as a file's final newline, is
    /// dropped). `None` if nothing is left.
    pub fn new(bytes: &[u8]) -> Option<Token> {
        let s = bytes.trim_ascii();
        (!s.is_empty()).then(|| Token(Arc::from(s)))
    }

    /// True if `given` is this token, compared in time independent of where they differ.
    pub fn matches(&self, given: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        // Lengths differ only when the token is wrong; the comparison of equal lengths is
        // constant time.
        self.0.len() == given.len() && bool::from(self.0.as_ref().ct_eq(given))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

/// What every handler shares: the backend, the host name VIC's links use, metrics, the
/// error redaction and the authentication rule.
#[derive(Clone, Debug)]
pub struct AppState {
    pub(crate) storer: Arc<dyn ImageStorer>,
    pub(crate) host: String,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) redactor: Arc<Redactor>,
    pub(crate) token: Option<Token>,
    pub(crate) ready_timeout: Duration,
    pub(crate) body_idle: Duration,
}

impl AppState {
    /// The state of a server over `storer`, whose links name `host` (`host:port` as clients
    /// reach it). No token is required and errors redact only URL secrets until told more.
    pub fn new(storer: Arc<dyn ImageStorer>, host: impl Into<String>) -> AppState {
        AppState {
            storer,
            host: host.into(),
            metrics: Arc::new(Metrics::default()),
            redactor: Arc::new(Redactor::default()),
            token: None,
            ready_timeout: Duration::from_secs(5),
            body_idle: layers::DEFAULT_BODY_IDLE,
        }
    }

    /// Requires `token` on every route but `/healthz`.
    pub fn with_token(mut self, token: Option<Token>) -> AppState {
        self.token = token;
        self
    }

    /// Redacts error messages with `redactor` (for example naming the store's root
    /// directory, which never appears in an error).
    pub fn with_redactor(mut self, redactor: Redactor) -> AppState {
        self.redactor = Arc::new(redactor);
        self
    }

    /// Fails a request whose body sends nothing for `idle` (a stalled upload).
    pub fn with_body_idle_timeout(mut self, idle: Duration) -> AppState {
        self.body_idle = idle;
        self
    }

    /// The backend.
    pub fn storer(&self) -> &Arc<dyn ImageStorer> {
        &self.storer
    }

    /// The host name (`host:port`) that links in VIC's API name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

/// Every route of the server over `state`: the native API, VIC's API and the operational
/// routes, behind the Op-ID check, access log, metrics and authentication layers.
pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .merge(native::routes())
        .merge(vic::routes())
        .merge(ops::routes())
        .fallback(layers::not_found)
        .method_not_allowed_fallback(layers::method_not_allowed);
    layers::apply(routes, state.clone()).with_state(state)
}
