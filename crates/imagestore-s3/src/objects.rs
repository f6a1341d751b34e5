//! The object-store access layer: every request the backend makes goes through [`Objects`],
//! which adds the configured prefix, retries transient failures with backoff and maps errors
//! into imagestore's kinds with the key in the message.
//!
//! `object_store` retries requests itself on throttling, 5xx and connection failures (up to
//! `max_retries` within `retry_timeout`); it does not retry a request whose connection broke
//! after it was sent unless the request is idempotent. [`Objects`] adds a few outer attempts
//! on top. A retried conditional request may therefore find its own earlier, successful
//! attempt (`AlreadyExists` or a failed precondition); callers tell that case apart by reading
//! the object back and comparing the nonce they wrote (see `docs/decisions/0006-s3-protocol.md`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, Checksum};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequestBody, HttpResponseBody, ReqwestConnector,
};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::signer::{SignedUrlOptions, Signer};
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, MultipartId, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig, UpdateVersion,
};
use tracing::debug;

use imagestore_core::Result;

use crate::config::Config;
use crate::error::{Failure, Refusal, backend, classify, is_transient, map};
use crate::xml::{BadAnswer, MAX_ERROR_BODY, MAX_LISTING_PAGE, UploadsPage, parse_uploads};

/// The request [`Objects::list_uploads`] makes, for errors.
const LIST_UPLOADS: &str = "ListMultipartUploads";

/// Outer attempts for a request that failed transiently after `object_store`'s own retries.
const OUTER_ATTEMPTS: u32 = 4;

/// An object read in full.
#[derive(Debug, Clone)]
pub struct Got {
    /// Its bytes.
    pub bytes: Bytes,
    /// Its ETag.
    pub etag: Option<String>,
    /// When it was last written (server clock).
    pub last_modified: DateTime<Utc>,
}

/// Outcome of a read that may be answered from a cached copy.
#[derive(Debug)]
pub enum Fetch {
    /// The object does not exist.
    Missing,
    /// The object still has the ETag the caller holds.
    Unchanged,
    /// The object, changed or read for the first time.
    Found(Got),
}

/// Outcome of a conditional create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// This request created the object; its ETag.
    Created(Option<String>),
    /// The object existed (possibly written by an earlier attempt of this very request).
    Exists,
}

/// Outcome of a conditional update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Updated {
    /// Replaced; the new ETag.
    Updated(Option<String>),
    /// The object had changed or is gone (possibly by an earlier attempt of this request).
    Changed,
}

/// An incomplete multipart upload found by listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// Key relative to the prefix.
    pub key: String,
    /// The upload id.
    pub id: String,
    /// When it was started (server clock; some servers report a fixed date).
    pub initiated: Option<DateTime<Utc>>,
}

/// Access to the bucket under the configured prefix.
pub struct Objects {
    s3: Arc<AmazonS3>,
    http: HttpClient,
    prefix: String,
    bucket: String,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the client: it holds the credential provider.
        f.debug_struct("Objects")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn client_options(c: &Config) -> ClientOptions {
    let env_http = std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v == "true" || v == "1");
    ClientOptions::new()
        .with_allow_http(c.allow_http || env_http)
        .with_timeout(c.timeout)
        .with_connect_timeout(c.connect_timeout)
}

impl Objects {
    /// Builds the client for `config`; credentials come from the environment and the AWS
    /// credential chain.
    pub fn connect(config: &Config) -> Result<Objects> {
        imagestore_core::tls::install_crypto_provider();
        let mut b = AmazonS3Builder::from_env().with_bucket_name(&config.bucket);
        if let Some(e) = &config.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some(r) = &config.region {
            b = b.with_region(r);
        }
        if config.checksum {
            b = b.with_checksum_algorithm(Checksum::SHA256);
        }
        let options = client_options(config);
        let s3 = b
            .with_virtual_hosted_style_request(config.virtual_hosted_style)
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: config.max_retries,
                retry_timeout: config.retry_timeout,
            })
            .with_client_options(options.clone())
            .build()
            .map_err(|e| {
                map(
                    format!("configuring the S3 client for bucket {}", config.bucket),
                    e,
                )
            })?;
        let http = ReqwestConnector::default()
            .connect(&options)
            .map_err(|e| map("configuring the HTTP client", e))?;
        Ok(Objects {
            s3: Arc::new(s3),
            http,
            prefix: config.prefix.clone(),
            bucket: config.bucket.clone(),
        })
    }

    /// The full path of a relative key.
    pub fn path(&self, rel: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(rel)
        } else {
            Path::from(format!("{}/{rel}", self.prefix))
        }
    }

    /// The key relative to the prefix of a full path from a listing.
    pub fn rel(&self, full: &Path) -> String {
        let s = full.as_ref();
        if self.prefix.is_empty() {
            return s.to_owned();
        }
        s.strip_prefix(&self.prefix)
            .and_then(|r| r.strip_prefix('/'))
            .unwrap_or(s)
            .to_owned()
    }

    /// `bucket/prefix/rel`, for messages.
    pub fn show(&self, rel: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.path(rel))
    }

    /// The S3 client, for multipart uploads and streaming reads.
    pub fn s3(&self) -> &Arc<AmazonS3> {
        &self.s3
    }

    /// Runs `f` until it succeeds, fails permanently, or the outer attempts are used up.
    pub async fn retry<T, F, Fut>(&self, f: F) -> object_store::Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = object_store::Result<T>>,
    {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match f().await {
                Err(e) if attempt < OUTER_ATTEMPTS && is_transient(&e) => {
                    debug!(attempt, error = %e, "transient S3 failure; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 3;
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    /// Reads an object; `None` if it does not exist.
    pub async fn get(&self, rel: &str) -> Result<Option<Got>> {
        match self.get_cached(rel, None).await? {
            Fetch::Found(g) => Ok(Some(g)),
            Fetch::Missing | Fetch::Unchanged => Ok(None),
        }
    }

    /// Reads an object unless it still has ETag `etag`.
    pub async fn get_cached(&self, rel: &str, etag: Option<&str>) -> Result<Fetch> {
        let path = self.path(rel);
        let r = self
            .retry(|| async {
                let opts = GetOptions {
                    if_none_match: etag.map(str::to_owned),
                    ..GetOptions::default()
                };
                let res = self.s3.get_opts(&path, opts).await?;
                let meta = res.meta.clone();
                let bytes = res.bytes().await?;
                Ok(Got {
                    bytes,
                    etag: meta.e_tag,
                    last_modified: meta.last_modified,
                })
            })
            .await;
        match r {
            Ok(g) => Ok(Fetch::Found(g)),
            Err(object_store::Error::NotFound { .. }) => Ok(Fetch::Missing),
            Err(object_store::Error::NotModified { .. }) => Ok(Fetch::Unchanged),
            Err(e) => Err(map(format!("reading {}", self.show(rel)), e)),
        }
    }

    /// An object's metadata; `None` if it does not exist.
    pub async fn head(&self, rel: &str) -> Result<Option<ObjectMeta>> {
        let path = self.path(rel);
        match self.retry(|| self.s3.head(&path)).await {
            Ok(m) => Ok(Some(m)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(map(format!("reading {}", self.show(rel)), e)),
        }
    }

    /// Writes an object, replacing any previous one; returns its ETag.
    pub async fn put(&self, rel: &str, bytes: impl Into<Bytes>) -> Result<Option<String>> {
        let path = self.path(rel);
        let payload = PutPayload::from(bytes.into());
        self.retry(|| self.s3.put(&path, payload.clone()))
            .await
            .map(|r| r.e_tag)
            .map_err(|e| map(format!("writing {}", self.show(rel)), e))
    }

    /// Writes a whole payload (possibly many chunks) in one request.
    pub async fn put_payload(&self, rel: &str, payload: PutPayload) -> Result<Option<String>> {
        let path = self.path(rel);
        self.retry(|| self.s3.put(&path, payload.clone()))
            .await
            .map(|r| r.e_tag)
            .map_err(|e| map(format!("writing {}", self.show(rel)), e))
    }

    /// Creates an object only if none exists (`If-None-Match: *`).
    pub async fn create(&self, rel: &str, bytes: impl Into<Bytes>) -> Result<Created> {
        let path = self.path(rel);
        let payload = PutPayload::from(bytes.into());
        let r = self
            .retry(|| {
                self.s3.put_opts(
                    &path,
                    payload.clone(),
                    PutOptions {
                        mode: PutMode::Create,
                        ..PutOptions::default()
                    },
                )
            })
            .await;
        match r {
            Ok(r) => Ok(Created::Created(r.e_tag)),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Created::Exists),
            // Some servers answer a lost create race with a plain 412.
            Err(object_store::Error::Precondition { .. }) => Ok(Created::Exists),
            Err(e) => Err(map(format!("creating {}", self.show(rel)), e)),
        }
    }

    /// Replaces an object only if it still has ETag `etag` (`If-Match`).
    pub async fn update(&self, rel: &str, bytes: impl Into<Bytes>, etag: &str) -> Result<Updated> {
        let path = self.path(rel);
        let payload = PutPayload::from(bytes.into());
        let r = self
            .retry(|| {
                self.s3.put_opts(
                    &path,
                    payload.clone(),
                    PutOptions {
                        mode: PutMode::Update(UpdateVersion {
                            e_tag: Some(etag.to_owned()),
                            version: None,
                        }),
                        ..PutOptions::default()
                    },
                )
            })
            .await;
        match r {
            Ok(r) => Ok(Updated::Updated(r.e_tag)),
            Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            ) => Ok(Updated::Changed),
            Err(e) => Err(map(format!("updating {}", self.show(rel)), e)),
        }
    }

    /// Deletes an object; deleting a missing object succeeds.
    pub async fn delete(&self, rel: &str) -> Result<()> {
        let path = self.path(rel);
        match self.retry(|| self.s3.delete(&path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map(format!("deleting {}", self.show(rel)), e)),
        }
    }

    /// Deletes many objects with bulk requests.
    pub async fn delete_many(&self, rels: Vec<String>) -> Result<()> {
        if rels.is_empty() {
            return Ok(());
        }
        let paths: Vec<Path> = rels.iter().map(|r| self.path(r)).collect();
        let r = self
            .retry(|| {
                let paths = paths.clone();
                async move {
                    let input = futures::stream::iter(paths.into_iter().map(Ok)).boxed();
                    let mut out = self.s3.delete_stream(input);
                    while let Some(r) = out.next().await {
                        match r {
                            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(())
                }
            })
            .await;
        r.map_err(|e| {
            map(
                format!(
                    "deleting {} objects under {}",
                    rels.len(),
                    self.show(&rels[0])
                ),
                e,
            )
        })
    }

    /// Every object under directory `rel_dir` (recursively).
    pub async fn list(&self, rel_dir: &str) -> Result<Vec<ObjectMeta>> {
        let path = self.path(rel_dir);
        self.retry(|| self.s3.list(Some(&path)).try_collect::<Vec<_>>())
            .await
            .map_err(|e| map(format!("listing {}/", self.show(rel_dir)), e))
    }

    /// The keys (relative) of every object under directory `rel_dir` (recursively).
    pub async fn list_keys(&self, rel_dir: &str) -> Result<Vec<String>> {
        Ok(self
            .list(rel_dir)
            .await?
            .iter()
            .map(|m| self.rel(&m.location))
            .collect())
    }

    /// The objects under directory `rel_dir` whose keys (relative) come after `after`, read
    /// until `past` says a key lies beyond everything wanted: one listing that starts after
    /// `after` (`start-after`; `None` lists from the start) and stops reading pages there. A
    /// server that ignores `start-after` only makes it read more.
    ///
    /// Servers disagree on what follows what: S3 lists keys in byte order, SeaweedFS walks its
    /// directories entry by entry (`a/x` before `a-b/y`, though `-` sorts before `/`), and
    /// takes `start-after` as a directory entry, skipping everything below the entry it names.
    /// Callers choose `after` and `past` to hold under both orders.
    pub async fn list_range(
        &self,
        rel_dir: &str,
        after: Option<&str>,
        past: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Vec<ObjectMeta>> {
        let path = self.path(rel_dir);
        let offset = after.map(|a| self.path(a));
        self.retry(|| async {
            let mut out = Vec::new();
            let mut pages = match &offset {
                Some(offset) => self.s3.list_with_offset(Some(&path), offset),
                None => self.s3.list(Some(&path)),
            };
            while let Some(m) = pages.next().await {
                let m = m?;
                let rel = self.rel(&m.location);
                if past(&rel) {
                    break;
                }
                if after.is_none_or(|a| rel.as_str() > a) {
                    out.push(m);
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| map(format!("listing {}/", self.show(rel_dir)), e))
    }

    /// The objects directly under `rel_dir` and its sub-directories (relative keys).
    pub async fn list_dir(&self, rel_dir: &str) -> Result<(Vec<ObjectMeta>, Vec<String>)> {
        let path = self.path(rel_dir);
        let r = self
            .retry(|| self.s3.list_with_delimiter(Some(&path)))
            .await
            .map_err(|e| map(format!("listing {}/", self.show(rel_dir)), e))?;
        let dirs = r.common_prefixes.iter().map(|p| self.rel(p)).collect();
        Ok((r.objects, dirs))
    }

    /// A stream of an object's bytes from `offset` on; `None` when `offset` is at or past the
    /// object's end (the server refuses the range).
    pub async fn read_from(
        &self,
        rel: &str,
        offset: u64,
    ) -> Result<Option<BoxStream<'static, object_store::Result<Bytes>>>> {
        let path = self.path(rel);
        let r = self
            .retry(|| async {
                let opts = GetOptions {
                    range: (offset > 0).then_some(GetRange::Offset(offset)),
                    ..GetOptions::default()
                };
                self.s3.get_opts(&path, opts).await
            })
            .await;
        match r {
            Ok(r) => Ok(Some(r.into_stream())),
            Err(e) if offset > 0 && classify(&e) == Failure::PastEnd => Ok(None),
            Err(e) => Err(map(
                format!("reading {} from offset {offset}", self.show(rel)),
                e,
            )),
        }
    }

    /// Starts a multipart upload.
    pub async fn create_upload(&self, rel: &str) -> Result<MultipartId> {
        let path = self.path(rel);
        self.retry(|| self.s3.create_multipart(&path))
            .await
            .map_err(|e| map(format!("starting an upload to {}", self.show(rel)), e))
    }

    /// Uploads part `index` (0-based).
    pub async fn put_part(
        s3: &Arc<AmazonS3>,
        path: &Path,
        id: &MultipartId,
        index: usize,
        data: PutPayload,
    ) -> object_store::Result<PartId> {
        s3.put_part(path, id, index, data).await
    }

    /// Completes a multipart upload.
    pub async fn complete_upload(
        &self,
        rel: &str,
        id: &MultipartId,
        parts: Vec<PartId>,
    ) -> Result<Option<String>> {
        let path = self.path(rel);
        self.retry(|| self.s3.complete_multipart(&path, id, parts.clone()))
            .await
            .map(|r| r.e_tag)
            .map_err(|e| map(format!("completing the upload to {}", self.show(rel)), e))
    }

    /// Aborts a multipart upload; aborting one that is gone succeeds.
    pub async fn abort_upload(&self, rel: &str, id: &str) -> Result<()> {
        let path = self.path(rel);
        let id = id.to_owned();
        match self.retry(|| self.s3.abort_multipart(&path, &id)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map(format!("aborting the upload to {}", self.show(rel)), e)),
        }
    }

    /// The incomplete multipart uploads under `rel_dir`, by `ListMultipartUploads` (which
    /// `object_store` does not offer; the request is signed with its presigning support).
    pub async fn list_uploads(&self, rel_dir: &str) -> Result<Vec<Upload>> {
        let prefix = format!("{}/", self.path(rel_dir));
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (String::new(), String::new());
        loop {
            let page = self
                .retry(|| self.list_uploads_page(&prefix, &key_marker, &id_marker))
                .await
                .map_err(|e| {
                    map(
                        format!("listing the uploads under {}/", self.show(rel_dir)),
                        e,
                    )
                })?;
            for u in page.uploads {
                out.push(Upload {
                    key: self.rel(&Path::from(u.key.as_str())),
                    ..u
                });
            }
            match (page.truncated, page.next_key, page.next_id) {
                (true, Some(k), Some(i))
                    if (k.as_str(), i.as_str()) != (key_marker.as_str(), id_marker.as_str()) =>
                {
                    key_marker = k;
                    id_marker = i;
                }
                _ => return Ok(out),
            }
        }
    }

    async fn list_uploads_page(
        &self,
        prefix: &str,
        key_marker: &str,
        id_marker: &str,
    ) -> object_store::Result<UploadsPage> {
        let mut query = vec![("uploads", ""), ("prefix", prefix)];
        if !key_marker.is_empty() {
            query.push(("key-marker", key_marker));
            query.push(("upload-id-marker", id_marker));
        }
        let url = self
            .s3
            .signed_url_opts(
                http::Method::GET,
                &Path::from(""),
                Duration::from_secs(300),
                &SignedUrlOptions::default().with_query(query),
            )
            .await?;
        let generic = |e: Box<dyn std::error::Error + Send + Sync>| object_store::Error::Generic {
            store: "S3",
            source: e,
        };
        let req = http::Request::builder()
            .method(http::Method::GET)
            .uri(url.as_str())
            .body(HttpRequestBody::empty())
            .map_err(|e| generic(Box::new(e)))?;
        let resp = self
            .http
            .execute(req)
            .await
            .map_err(|e| generic(Box::new(e)))?;
        let status = resp.status();
        // Not the URL in errors: its query holds the signature.
        if !status.is_success() {
            let body = read_capped(resp.into_body(), MAX_ERROR_BODY)
                .await
                .map_err(|e| generic(Box::new(e)))?;
            return Err(generic(Box::new(Refusal::new(LIST_UPLOADS, status, &body))));
        }
        let body = read_capped(resp.into_body(), MAX_LISTING_PAGE)
            .await
            .map_err(|e| generic(Box::new(e)))?;
        if body.len() >= MAX_LISTING_PAGE {
            return Err(generic(Box::new(BadAnswer {
                request: LIST_UPLOADS,
                reason: format!("more than {MAX_LISTING_PAGE} bytes"),
            })));
        }
        std::str::from_utf8(&body)
            .map_err(|e| BadAnswer {
                request: LIST_UPLOADS,
                reason: e.to_string(),
            })
            .and_then(parse_uploads)
            .map_err(|e| generic(Box::new(e)))
    }
}

/// The first `cap` bytes of a body (the rest is not read).
async fn read_capped(
    body: HttpResponseBody,
    cap: usize,
) -> std::result::Result<Vec<u8>, HttpError> {
    let mut out = Vec::new();
    let mut chunks = body.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        let take = chunk.len().min(cap - out.len());
        out.extend_from_slice(&chunk[..take]);
        if out.len() == cap {
            break;
        }
    }
    Ok(out)
}

/// A backend error for a failed upload step.
pub fn upload_error(what: String, e: object_store::Error) -> imagestore_core::Error {
    map(what, e)
}

/// A backend error for a missing piece of a committed image.
pub fn missing(rel: &str) -> imagestore_core::Error {
    backend(format!("{rel} is missing"), false)
}
