//! The HTTP side: building requests to the `/v1` API, sending them, turning refusals into
//! typed errors, and reading answers (JSON within bounds, or streams).
//!
//! Every request goes out on one pooled `reqwest` client with the bearer token as a default
//! header marked sensitive. Dropping a request's future closes its connection, which is how
//! the server learns that the caller gave up and cancels the operation.

use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use imagestore_core::layer::stream::error_from_io;
use imagestore_core::{ByteStream, Error, Result};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;

use crate::config::Config;
use crate::error::{self, BACKEND, MAX_ERROR_BODY};

/// Largest JSON answer read (a listing of a large store with its metadata).
pub const MAX_JSON: usize = 1 << 30;

/// Size of the chunks an upload reads from its body.
const UPLOAD_CHUNK: usize = 256 << 10;

/// A connection to one server.
pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    shown: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.shown)
            .finish_non_exhaustive()
    }
}

/// A path segment of the API: every byte but letters, digits, `.`, `_`, `-` and `:` is
/// percent-encoded. Store names, image ids and owner names are segments as they are, and so
/// are digests (`sha256:<hex>`); a reference name's `/`, `@` and `+` are encoded, and its `:`
/// with [`ref_segment`].
pub(crate) fn segment(s: &str) -> String {
    encode(s, |b| b == b':')
}

/// A reference name as one path segment: `/`, `:`, `@` and `+` percent-encoded.
pub(crate) fn ref_segment(s: &str) -> String {
    encode(s, |_| false)
}

fn encode(s: &str, keep: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') || keep(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// A client for the server `config` names, sending `token` (if any) with every request.
    pub(crate) fn new(config: &Config, token: Option<&str>) -> Result<Client> {
        let shown = config.shown();
        let mut headers = HeaderMap::new();
        if let Some(token) = token {
            let mut v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                Error::invalid(format!(
                    "remote {shown}: the token file holds characters a header cannot carry"
                ))
            })?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        imagestore_core::tls::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("imagestore/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            // A redirect could carry the token elsewhere; the API never redirects.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .pool_idle_timeout(std::time::Duration::from_secs(20))
            .tcp_nodelay(true);
        if let Some(t) = config.timeout {
            builder = builder.timeout(t);
        }
        if let Some(ca) = &config.ca {
            let pem = std::fs::read(ca).map_err(|e| {
                Error::invalid(format!(
                    "remote {shown}: reading the CA file {}: {e}",
                    ca.display()
                ))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Error::invalid(format!(
                    "remote {shown}: the CA file {} holds no PEM certificate: {e}",
                    ca.display()
                ))
            })?;
            if certs.is_empty() {
                return Err(Error::invalid(format!(
                    "remote {shown}: the CA file {} holds no PEM certificate",
                    ca.display()
                )));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| {
            Error::backend(
                BACKEND,
                format!("remote {shown}: setting up the HTTP client: {e}"),
                false,
            )
        })?;
        Ok(Client {
            http,
            base: config.base.clone(),
            shown,
        })
    }

    /// The server as messages show it (`imagestore+http://host:port`).
    pub(crate) fn shown(&self) -> &str {
        &self.shown
    }

    /// A request `method` to `path` (below the base, starting with `/v1/`, its segments
    /// already encoded) with query pairs.
    pub(crate) fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Call> {
        let mut url = reqwest::Url::parse(&format!("{}{path}", self.base)).map_err(|e| {
            Error::invalid(format!("remote {}: request path {path:?}: {e}", self.shown))
        })?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let what = format!("{} {}: {method} {path}", "remote", self.shown);
        Ok(Call {
            builder: self.http.request(method, url),
            what,
        })
    }
}

/// One request being built, with the words that name it in errors.
pub(crate) struct Call {
    builder: RequestBuilder,
    /// `remote imagestore+http://host:port: GET /v1/...`.
    pub(crate) what: String,
}

impl Call {
    /// Adds a JSON body.
    pub(crate) fn json(mut self, value: &impl serde::Serialize) -> Result<Call> {
        let body = serde_json::to_vec(value)
            .map_err(|e| Error::invalid(format!("{}: encoding the body: {e}", self.what)))?;
        self.builder = self
            .builder
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        Ok(self)
    }

    /// Adds a body of bytes held in memory.
    pub(crate) fn bytes(mut self, body: Vec<u8>) -> Call {
        self.builder = self
            .builder
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        self
    }

    /// Adds a header.
    pub(crate) fn header(mut self, name: &'static str, value: String) -> Call {
        self.builder = self.builder.header(name, value);
        self
    }

    /// Sends the request and returns the answer if its status is a success; a refusal is
    /// its typed error.
    pub(crate) async fn send(self) -> Result<Response> {
        let Call { builder, what } = self;
        let resp = builder
            .send()
            .await
            .map_err(|e| error::transport(&what, e))?;
        check(resp, &what).await
    }

    /// Sends the request with `prefix` and then `body` as its streamed body (chunked, read
    /// as the connection takes it), on a connection of its own that is closed afterwards. If
    /// reading `body` fails, that failure is returned, not the aborted exchange it caused.
    pub(crate) async fn send_stream(self, prefix: Vec<u8>, body: ByteStream) -> Result<Response> {
        let Call { builder, what } = self;
        let failed: Arc<Mutex<Option<Error>>> = Arc::new(Mutex::new(None));
        let slot = failed.clone();
        let chunks = tokio_util::io::ReaderStream::with_capacity(body, UPLOAD_CHUNK).map_err(
            move |e: io::Error| {
                let message = e.to_string();
                if let Ok(mut s) = slot.lock() {
                    s.get_or_insert(error_from_io(e, BACKEND));
                }
                io::Error::other(message)
            },
        );
        let stream = futures::stream::once(async move { Ok(Bytes::from(prefix)) }).chain(chunks);
        // A server may answer before it read the body (a missing parent) and then close
        // the connection; such a connection must not go back to the pool for the next request.
        let sent = builder
            .header(reqwest::header::CONNECTION, "close")
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await;
        let body_error = failed.lock().ok().and_then(|mut s| s.take());
        match (sent, body_error) {
            (Err(_), Some(e)) => Err(e),
            (Err(e), None) => Err(error::transport(&what, e)),
            (Ok(resp), _) => check(resp, &what).await,
        }
    }

    /// Sends the request and reads its JSON answer.
    pub(crate) async fn send_json<T: DeserializeOwned>(self) -> Result<T> {
        let what = self.what.clone();
        let resp = self.send().await?;
        read_json(resp, &what).await
    }

    /// Sends the request and expects an answer without a body worth reading (204).
    pub(crate) async fn send_empty(self) -> Result<()> {
        self.send().await.map(drop)
    }
}

/// `resp` if its status is a success, else the error its body describes.
async fn check(resp: Response, what: &str) -> Result<Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    // A refusal's body is small; what could not be read stays unread.
    let body = read_limited(resp, what, MAX_ERROR_BODY, true)
        .await
        .unwrap_or_default();
    Err(error::refusal(what, status.as_u16(), &body))
}

/// The body of `resp`, at most `max` bytes; past that, an error, or with `truncate` the first
/// `max` bytes.
pub(crate) async fn read_limited(
    resp: Response,
    what: &str,
    max: usize,
    truncate: bool,
) -> Result<Vec<u8>> {
    if let Some(len) = resp.content_length()
        && len > max as u64
        && !truncate
    {
        return Err(error::unreadable(
            what,
            format!("{len} bytes, more than the {max} expected at most"),
        ));
    }
    let mut out = Vec::new();
    let mut chunks = resp.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| error::transport(what, e))?;
        if out.len() + chunk.len() > max {
            if truncate {
                let room = max - out.len();
                out.extend_from_slice(&chunk[..room]);
                return Ok(out);
            }
            return Err(error::unreadable(
                what,
                format!("more than the {max} bytes expected at most"),
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The JSON answer of `resp`, read within [`MAX_JSON`].
pub(crate) async fn read_json<T: DeserializeOwned>(resp: Response, what: &str) -> Result<T> {
    let bytes = read_limited(resp, what, MAX_JSON, false).await?;
    serde_json::from_slice(&bytes).map_err(|e| error::unreadable(what, e))
}

/// The body of `resp` as a [`ByteStream`], read as the caller reads it. A transport failure
/// mid-way ends the stream with an error (never a clean, short end), which
/// `imagestore_core::layer::stream::error_from_io` turns back into the `Backend` error.
pub(crate) fn byte_stream(resp: Response, what: String) -> ByteStream {
    let chunks = resp.bytes_stream().map_err(move |e| {
        io::Error::other(error::transport(&format!("{what}: reading the stream"), e))
    });
    Box::pin(tokio_util::io::StreamReader::new(chunks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_follow_the_contract() {
        assert_eq!(segment("store-1.a_b"), "store-1.a_b");
        assert_eq!(
            segment(&format!("sha256:{}", "ab".repeat(32))),
            format!("sha256:{}", "ab".repeat(32))
        );
        assert_eq!(
            ref_segment("registry:5000/repo/x:tag@sha256:ab+1"),
            "registry%3A5000%2Frepo%2Fx%3Atag%40sha256%3Aab%2B1"
        );
    }
}
