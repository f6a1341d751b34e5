//! The upload half of the distribution API: blob existence checks, cross-repository mounts,
//! monolithic and chunked blob uploads streamed from any reader, and manifest puts.
//!
//! A blob is streamed in pieces of at most a chunk's length; each piece is read from the
//! source while the request sending it is in flight, so no more than a few buffers of a
//! layer are ever in memory.

use std::sync::Arc;

use bytes::Bytes;
use imagestore_core::{ByteStream, Digest};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::progress::{Event, Phase, Progress};
use crate::registry::client::Client;

/// The answer to a cross-repository mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    /// The registry linked the blob into the repository: nothing to upload.
    Mounted,
    /// The registry could not mount it and started an upload at this location instead.
    Started(String),
}

/// Where the bytes of a blob being uploaded go, and what was learnt on the way.
pub struct Feed<'a> {
    /// The blob's bytes, from the first.
    pub reader: ByteStream,
    /// Its hash so far.
    pub hasher: imagestore_core::digest::Hasher,
    /// Bytes read so far.
    pub sent: u64,
    /// Progress of layer `.1`, if byte counts are wanted.
    pub progress: Option<(&'a Arc<dyn Progress>, usize)>,
}

impl std::fmt::Debug for Feed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed").field("sent", &self.sent).finish()
    }
}

const BUF: usize = 256 << 10;

impl Client {
    fn blob_path(&self, d: &Digest) -> String {
        format!("/v2/{}/blobs/{d}", self.repository())
    }

    /// The `Location` of an upload answer, as an absolute URL.
    fn location(&self, resp: &reqwest::Response, what: &str) -> Result<String> {
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| self.err(format!("{what}: the answer has no Location"), None, false))?;
        let base = url::Url::parse(&self.url("/"))
            .map_err(|e| self.err(format!("{what}: registry URL: {e}"), None, false))?;
        let url = base
            .join(loc)
            .map_err(|e| self.err(format!("{what}: Location {loc:?}: {e}"), None, false))?;
        Ok(url.to_string())
    }

    /// True if the repository holds blob `d` (`HEAD /v2/<repo>/blobs/<digest>`).
    pub async fn blob_exists(&self, d: &Digest) -> Result<bool> {
        let resp = self.send(Method::HEAD, &self.blob_path(d), &|r| r).await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => {
                self.check(resp, &format!("HEAD blob {d}")).await?;
                Ok(false)
            }
        }
    }

    /// Asks the registry to link blob `d` from repository `from` (of the same registry).
    pub async fn mount(&self, d: &Digest, from: &str) -> Result<Mount> {
        let what = format!("mounting blob {d} from {from}");
        let mut url =
            url::Url::parse(&self.url(&format!("/v2/{}/blobs/uploads/", self.repository())))
                .map_err(|e| self.err(format!("{what}: {e}"), None, false))?;
        url.query_pairs_mut()
            .append_pair("mount", &d.to_string())
            .append_pair("from", from);
        let resp = self
            .send(Method::POST, url.as_str(), &|r| r.header(CONTENT_LENGTH, 0))
            .await?;
        let resp = self.check(resp, &what).await?;
        match resp.status() {
            StatusCode::CREATED => Ok(Mount::Mounted),
            _ => Ok(Mount::Started(self.location(&resp, &what)?)),
        }
    }

    /// Starts an upload session and returns its location.
    pub async fn start_upload(&self) -> Result<String> {
        let what = "starting a blob upload";
        let path = format!("/v2/{}/blobs/uploads/", self.repository());
        let resp = self
            .send(Method::POST, &path, &|r| r.header(CONTENT_LENGTH, 0))
            .await?;
        let resp = self.check(resp, what).await?;
        self.location(&resp, what)
    }

    /// Sends the next `len` bytes of `feed` with `method` to `location` (with `digest` in the
    /// query to complete the upload, and a `Content-Range` from `start` for a chunk), and
    /// returns the answer's location for the next request.
    async fn piece(
        &self,
        method: Method,
        location: &str,
        digest: Option<&Digest>,
        range_start: Option<u64>,
        feed: &mut Feed<'_>,
        len: u64,
    ) -> Result<String> {
        let what = format!("uploading blob bytes {}..{}", feed.sent, feed.sent + len);
        let mut url = url::Url::parse(location)
            .map_err(|e| self.err(format!("{what}: Location {location:?}: {e}"), None, false))?;
        if let Some(d) = digest {
            url.query_pairs_mut().append_pair("digest", &d.to_string());
        }
        let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
        let body = reqwest::Body::wrap_stream(futures::stream::unfold(rx, |mut rx| async {
            rx.recv().await.map(|item| (item, rx))
        }));
        let request = self.send_once(method, url.as_str(), |r| {
            let mut r = r
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, len)
                .body(body);
            if let Some(start) = range_start
                && len > 0
            {
                r = r.header("Content-Range", format!("{start}-{}", start + len - 1));
            }
            r
        });
        let fill = fill(feed, tx, len);
        let (resp, filled) = tokio::join!(request, fill);
        let resp = resp?;
        filled?;
        let resp = self.check(resp, &what).await?;
        match resp.headers().get(LOCATION) {
            Some(_) => self.location(&resp, &what),
            None => Ok(location.to_owned()),
        }
    }

    /// Uploads `size` bytes of `feed` as blob `digest` at upload `location`: in one request
    /// when `chunk` is `None`, else in `PATCH`es of at most `chunk` bytes and a closing `PUT`.
    /// The bytes must hash to `digest` (checked before the upload is completed).
    pub async fn upload(
        &self,
        location: &str,
        digest: &Digest,
        size: u64,
        feed: &mut Feed<'_>,
        chunk: Option<u64>,
    ) -> Result<()> {
        let mut location = location.to_owned();
        match chunk {
            None => {
                self.piece(Method::PUT, &location, Some(digest), None, feed, size)
                    .await?;
                check_fed(feed, digest, size)?;
            }
            Some(chunk) => {
                let chunk = chunk.max(1);
                while feed.sent < size {
                    let len = chunk.min(size - feed.sent);
                    location = self
                        .piece(Method::PATCH, &location, None, Some(feed.sent), feed, len)
                        .await?;
                }
                check_fed(feed, digest, size)?;
                self.piece(Method::PUT, &location, Some(digest), None, feed, 0)
                    .await?;
            }
        }
        Ok(())
    }

    /// Puts manifest `bytes` of `media_type` under `reference` (a tag or a digest) and returns
    /// the digest the registry names it by.
    pub async fn put_manifest(
        &self,
        reference: &str,
        media_type: &str,
        bytes: Vec<u8>,
    ) -> Result<Digest> {
        let what = format!("putting manifest {reference}");
        let path = format!("/v2/{}/manifests/{reference}", self.repository());
        let body = Bytes::from(bytes);
        let ours = Digest::sha256_of(&body);
        let resp = self
            .send(Method::PUT, &path, &|r| {
                r.header(CONTENT_TYPE, media_type).body(body.clone())
            })
            .await?;
        let resp = self.check(resp, &what).await?;
        let theirs = resp
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Digest::parse(v).ok());
        match theirs {
            Some(d) if d != ours => Err(Error::DigestMismatch {
                what: format!("manifest {reference} as stored by {}", self.registry()),
                expected: ours,
                actual: d,
            }),
            _ => Ok(ours),
        }
    }
}

/// Reads `len` bytes of `feed` into `tx` (hashing them and reporting progress); stops early,
/// without error, if the request stops taking them (its own error says why).
async fn fill(
    feed: &mut Feed<'_>,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    len: u64,
) -> Result<()> {
    let mut left = len;
    while left > 0 {
        let mut buf = vec![0u8; BUF.min(usize::try_from(left).unwrap_or(BUF))];
        let n = feed
            .reader
            .read(&mut buf)
            .await
            .map_err(|e| Error::invalid("reading the blob from the store", e))?;
        if n == 0 {
            let _ = tx
                .send(Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the blob ended early",
                )))
                .await;
            return Err(Error::invalid(
                "reading the blob from the store",
                format!("it ended after {} bytes", feed.sent),
            ));
        }
        buf.truncate(n);
        feed.hasher.update(&buf);
        feed.sent += n as u64;
        left -= n as u64;
        if let Some((p, layer)) = feed.progress {
            p.event(Event::Advance {
                layer,
                phase: Phase::Upload,
                bytes: n as u64,
            });
        }
        if tx.send(Ok(Bytes::from(buf))).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// `Ok` if the whole blob was read and hashes to `digest`.
fn check_fed(feed: &mut Feed<'_>, digest: &Digest, size: u64) -> Result<()> {
    if feed.sent != size {
        return Err(Error::invalid(
            format!("blob {digest}"),
            format!("read {} bytes from the store, expected {size}", feed.sent),
        ));
    }
    let actual = std::mem::replace(&mut feed.hasher, digest.algorithm().hasher()).finish();
    if &actual != digest {
        return Err(Error::DigestMismatch {
            what: format!("blob {digest} read from the store"),
            expected: digest.clone(),
            actual,
        });
    }
    Ok(())
}
