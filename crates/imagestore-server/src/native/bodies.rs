//! Request and response bodies: bounded reads of JSON and blobs, and the streams that carry
//! layers and tars both ways with backpressure.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use futures::{StreamExt, TryStreamExt};
use imagestore_core::image::MAX_METADATA_BYTES;
use imagestore_core::{ByteStream, Error, Metadata, byte_stream};
use serde::de::DeserializeOwned;
use tokio_util::io::{ReaderStream, StreamReader};

use crate::MAX_JSON_BODY;
use crate::error::ApiError;

/// Largest metadata JSON (`{"key":[bytes…]}`): every byte of the largest metadata written as
/// `255,`, plus the keys' quoting.
pub(crate) const MAX_METADATA_JSON: usize = MAX_METADATA_BYTES * 4 + (64 << 10);

/// Bytes an export or a layer download is read in. Backends that read files through tokio's
/// blocking pool pay one hop per read, so a layer goes out in large reads; a stream holds
/// one chunk at a time.
pub(crate) const CHUNK: usize = 512 << 10;

/// The error of a body that broke off (the client went away, or sent nothing for too long).
fn broken(e: impl std::fmt::Display) -> ApiError {
    ApiError::plain(
        StatusCode::BAD_REQUEST,
        400,
        format!("reading the request body: {e}"),
    )
}

fn too_large(what: &'static str, value: u64, max: usize) -> ApiError {
    Error::LimitExceeded {
        what,
        value,
        max: max as u64,
    }
    .into()
}

/// The whole body, refused with `413 LimitExceeded` past `max` bytes (before reading, when
/// `Content-Length` says so).
pub(crate) async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    max: usize,
    what: &'static str,
) -> Result<Vec<u8>, ApiError> {
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > max as u64
    {
        // What is left of the body is drained once the answer is sent (see the layers).
        return Err(too_large(what, len, max));
    }
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(broken)?;
        if buf.len() + chunk.len() > max {
            return Err(too_large(what, (buf.len() + chunk.len()) as u64, max));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// A JSON value from `bytes`; `400 InvalidArgument` if it does not parse.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid(format!("{what} is not valid JSON: {e}")).into())
}

/// A JSON body of at most [`MAX_JSON_BODY`] bytes.
pub(crate) async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    what: &'static str,
) -> Result<T, ApiError> {
    let bytes = read_limited(headers, body, MAX_JSON_BODY, "JSON body size in bytes").await?;
    parse_json(&bytes, what)
}

/// Metadata in its serde form; the empty string is no metadata.
pub(crate) fn parse_metadata(bytes: &[u8]) -> Result<Metadata, ApiError> {
    if bytes.trim_ascii().is_empty() {
        return Ok(Metadata::new());
    }
    parse_json(bytes, "metadata")
}

/// The body as a reader, read as the backend asks for it (so a slow backend slows the
/// client down and nothing piles up).
pub(crate) fn reader(
    body: Body,
) -> StreamReader<impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send, bytes::Bytes> {
    StreamReader::new(body.into_data_stream().map_err(std::io::Error::other))
}

/// The body as a [`ByteStream`].
pub(crate) fn body_stream(body: Body) -> ByteStream {
    byte_stream(reader(body))
}

/// A response body streaming `stream` as the client reads it.
pub(crate) fn stream_body(stream: ByteStream) -> Body {
    Body::from_stream(ReaderStream::with_capacity(stream, CHUNK))
}
