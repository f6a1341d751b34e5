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

/// Bytes a layer file is read in, each read straight into the buffer that goes out.
const FILE_CHUNK: usize = 1 << 20;

/// The raw layer of image `id` ([`imagestore_core::Exporter::export_raw`]) as a response
/// body, with its length when it is known. A layer the backend keeps as a local file
/// (`export_raw_file`) is read on the blocking pool in 1 MiB reads straight into the buffers
/// hyper sends, one copy fewer than a stream; one read is in flight at a time, as the client
/// takes them.
pub(crate) async fn raw_layer_body(
    storer: &dyn imagestore_core::ImageStorer,
    store: &imagestore_core::StoreName,
    id: &imagestore_core::ImageId,
) -> Result<(Body, Option<u64>), Error> {
    let Some(file) = storer.export_raw_file(store, id).await? else {
        return Ok((stream_body(storer.export_raw(store, id).await?), None));
    };
    let (file, len) = tokio::task::spawn_blocking(move || {
        let len = file.metadata()?.len();
        Ok::<_, std::io::Error>((file, len))
    })
    .await
    .map_err(|e| Error::backend(storer.scheme(), format!("blocking task failed: {e}"), false))?
    .map_err(|e| Error::backend(storer.scheme(), format!("reading a layer: {e}"), true))?;
    let chunks = futures::stream::try_unfold(Some(file), |file| async move {
        let Some(mut file) = file else {
            return Ok(None);
        };
        let (file, chunk) = tokio::task::spawn_blocking(move || {
            let mut buf = bytes::BytesMut::zeroed(FILE_CHUNK);
            let mut filled = 0;
            while filled < buf.len() {
                match std::io::Read::read(&mut file, &mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            buf.truncate(filled);
            Ok((file, buf.freeze()))
        })
        .await
        .map_err(std::io::Error::other)??;
        if chunk.is_empty() {
            return Ok(None);
        }
        let more = chunk.len() == FILE_CHUNK;
        Ok::<_, std::io::Error>(Some((chunk, more.then_some(file))))
    });
    Ok((Body::from_stream(chunks), Some(len)))
}
