//! Shared by the S3 test files: test URLs, and hooks that reach into the S3 layout
//! (`docs/layouts.md`) directly through `object_store`, to fake crashes and inspect a store
//! independently of the backend.

#![allow(
    dead_code,
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::print_stderr
)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use async_trait::async_trait;
use imagestore::{ImageId, StoreName, Url};
use imagestore_conformance::support::{self, Missing, Need};
use imagestore_conformance::{Ctx, Hooks};
use object_store::ObjectStoreExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{HttpClient, HttpConnector, HttpRequestBody, ReqwestConnector};
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::signer::{SignedUrlOptions, Signer};
use object_store::{ClientOptions, ObjectStore, PutPayload};
use sha2::{Digest as _, Sha256};

/// What starts the S3 servers the tests run against.
pub const START: &str = "start moto and SeaweedFS with `cargo xtask conformance s3`";

/// The server URL in `var` with a prefix unique to this test binary run and the given
/// options appended, or what is missing when the server is not running.
pub fn test_url(var: &str, options: &[(&str, &str)]) -> Need<String> {
    static RUN: OnceLock<String> = OnceLock::new();
    let run = RUN.get_or_init(|| format!("run-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff));
    let base = support::env(var, START)?;
    let mut u = Url::parse(&base)
        .map_err(|e| Missing::new(format!("{var} is not a URL ({base}: {e})"), START))?;
    u.set_path(&format!("/{run}"));
    {
        let mut q = u.query_pairs_mut();
        for (k, v) in options {
            q.append_pair(k, v);
        }
    }
    Ok(u.to_string())
}

/// The conformance context for a server URL.
pub async fn ctx(url: String) -> Result<Ctx> {
    let hooks = S3Hooks::new(&url)?;
    Ctx::open(url, Arc::new(hooks)).await
}

/// Direct access to the bucket behind a test URL.
pub struct S3Hooks {
    pub s3: Arc<AmazonS3>,
    http: HttpClient,
    prefix: String,
}

impl S3Hooks {
    /// Hooks for the bucket and prefix of an `s3://` URL (endpoint and region from its query).
    pub fn new(url: &str) -> Result<S3Hooks> {
        let u = Url::parse(url)?;
        let q: HashMap<String, String> = u.query_pairs().into_owned().collect();
        let bucket = u.host_str().context("bucket")?;
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_allow_http(true);
        if let Some(e) = q.get("endpoint") {
            b = b.with_endpoint(e);
        }
        if let Some(r) = q.get("region") {
            b = b.with_region(r);
        }
        imagestore_core::tls::install_crypto_provider();
        let s3 = Arc::new(b.build()?);
        let http =
            ReqwestConnector::default().connect(&ClientOptions::new().with_allow_http(true))?;
        Ok(S3Hooks {
            s3,
            http,
            prefix: u.path().trim_matches('/').to_owned(),
        })
    }

    pub fn path(&self, rel: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(rel)
        } else {
            Path::from(format!("{}/{rel}", self.prefix))
        }
    }

    fn rel(&self, p: &Path) -> String {
        let s = p.as_ref();
        s.strip_prefix(&format!("{}/", self.prefix))
            .unwrap_or(s)
            .to_owned()
    }

    pub async fn get(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        match self.s3.get(&self.path(rel)).await {
            Ok(r) => Ok(Some(r.bytes().await?.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn put(&self, rel: &str, bytes: &[u8]) -> Result<()> {
        self.s3
            .put(&self.path(rel), PutPayload::from(bytes.to_vec()))
            .await?;
        Ok(())
    }

    /// Deletes one object (relative to the prefix).
    pub async fn delete(&self, rel: &str) -> Result<()> {
        self.s3.delete(&self.path(rel)).await?;
        Ok(())
    }

    /// `(relative key, size, etag)` of every object under `rel_dir`, sorted.
    pub async fn list(&self, rel_dir: &str) -> Result<Vec<(String, u64, String)>> {
        use futures::TryStreamExt;
        let mut out: Vec<(String, u64, String)> = self
            .s3
            .list(Some(&self.path(rel_dir)))
            .map_ok(|m| (self.rel(&m.location), m.size, m.e_tag.unwrap_or_default()))
            .try_collect()
            .await?;
        out.sort();
        Ok(out)
    }

    /// Incomplete multipart uploads under `rel_dir`: `(relative key, upload id)`.
    pub async fn uploads(&self, rel_dir: &str) -> Result<Vec<(String, String)>> {
        let prefix = format!("{}/", self.path(rel_dir));
        let url = self
            .s3
            .signed_url_opts(
                http::Method::GET,
                &Path::from(""),
                Duration::from_secs(60),
                &SignedUrlOptions::default()
                    .with_query([("uploads", ""), ("prefix", prefix.as_str())]),
            )
            .await?;
        let req = http::Request::builder()
            .uri(url.as_str())
            .body(HttpRequestBody::empty())?;
        let resp = self.http.execute(req).await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "ListMultipartUploads: {}",
            resp.status()
        );
        let body = String::from_utf8(resp.into_body().bytes().await?.to_vec())?;
        let mut out = Vec::new();
        for block in body.split("<Upload>").skip(1) {
            let field = |name: &str| -> Option<String> {
                let start = block.find(&format!("<{name}>"))? + name.len() + 2;
                let end = block[start..].find(&format!("</{name}>"))? + start;
                Some(block[start..end].to_owned())
            };
            if let (Some(k), Some(i)) = (field("Key"), field("UploadId")) {
                out.push((self.rel(&Path::from(k.as_str())), i));
            }
        }
        Ok(out)
    }

    /// The store's record, parsed.
    pub async fn store_record(&self, s: &StoreName) -> Result<serde_json::Value> {
        let bytes = self
            .get(&format!("stores/{s}.json"))
            .await?
            .ok_or_else(|| anyhow!("store {s} has no record"))?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// `stores/<s>/<generation>`.
    pub async fn base(&self, s: &StoreName) -> Result<String> {
        let rec = self.store_record(s).await?;
        let g = rec["generation"].as_str().context("generation")?;
        Ok(format!("stores/{s}/{g}"))
    }

    async fn record(&self, base: &str, id: &str) -> Result<Option<serde_json::Value>> {
        Ok(match self.get(&format!("{base}/images/{id}")).await? {
            Some(b) => Some(serde_json::from_slice(&b)?),
            None => None,
        })
    }

    /// What should not be in a store once every operation ended and the sweep ran, listed.
    pub async fn leftover_list(&self, s: &StoreName) -> Result<Vec<String>> {
        let base = self.base(s).await?;
        let rec = self.store_record(s).await?;
        let scratch_nonce = rec["scratch"]["nonce"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut out = Vec::new();
        for (k, _, _) in self.list(&format!("{base}/leases")).await? {
            out.push(format!("lease {k}"));
        }
        for (k, _) in self.uploads(&base).await? {
            out.push(format!("upload {k}"));
        }
        for (k, _, _) in self.list(&format!("{base}/log")).await? {
            out.push(format!("log entry {k}"));
        }
        for (k, _, _) in self.list(&format!("{base}/clock")).await? {
            out.push(format!("clock {k}"));
        }
        let mut attempts = BTreeSet::new();
        for (k, _, _) in self.list(&format!("{base}/layers")).await? {
            let rest = &k[base.len() + "/layers/".len()..];
            let mut parts = rest.split('/');
            if let (Some(id), Some(n)) = (parts.next(), parts.next()) {
                attempts.insert((id.to_owned(), n.to_owned()));
            }
        }
        for (id, n) in attempts {
            let committed = if id == "scratch" {
                n == scratch_nonce
            } else {
                self.record(&base, &id)
                    .await?
                    .is_some_and(|r| r["nonce"].as_str() == Some(n.as_str()))
            };
            if !committed {
                out.push(format!("layer {id}/{n}"));
            }
        }
        for (k, _, _) in self.list(&format!("{base}/children")).await? {
            let rest = &k[base.len() + "/children/".len()..];
            let Some((p, c)) = rest.split_once('/') else {
                continue;
            };
            let image_child = self
                .record(&base, c)
                .await?
                .is_some_and(|r| r["parent"].as_str() == Some(p));
            let writable_child = match self.get(&format!("{base}/writables/{c}")).await? {
                Some(b) => {
                    serde_json::from_slice::<serde_json::Value>(&b)?["parent"].as_str() == Some(p)
                }
                None => false,
            };
            if !image_child && !writable_child {
                out.push(format!("link {p}/{c}"));
            }
        }
        let imports = self.list(&format!("{base}/imports")).await?;
        let keys: BTreeSet<&str> = imports.iter().map(|(k, _, _)| k.as_str()).collect();
        for k in &keys {
            if let Some(dir) = k.strip_suffix("/layer")
                && !keys.contains(format!("{dir}/toc").as_str())
            {
                out.push(format!("import {dir}"));
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Hooks for S3Hooks {
    async fn leave_crashed_write(&self, s: &StoreName, id: &ImageId) -> Result<()> {
        let base = self.base(s).await?;
        let rec = self.store_record(s).await?;
        let scratch_nonce = rec["scratch"]["nonce"].as_str().unwrap_or_default();
        let n = "dead00000000beef";
        // A writer that died while uploading: its lease (a TTL of zero, so it is dead as soon
        // as the server's clock moves on), link, TOC, intent and an unfinished upload.
        self.put(
            &format!("{base}/leases/{id}"),
            format!(
                r#"{{"version":1,"nonce":"{n}","op":"write","ttl_ms":0,"seq":0,"holder":"crashed:1","parent":"scratch"}}"#
            )
            .as_bytes(),
        )
        .await?;
        self.put(
            &format!("{base}/children/scratch/{id}"),
            format!(r#"{{"nonce":"{n}","kind":"image","parent_nonce":"{scratch_nonce}"}}"#)
                .as_bytes(),
        )
        .await?;
        self.put(&format!("{base}/layers/{id}/{n}/toc"), b"half a toc")
            .await?;
        self.put(&format!("{base}/log/{id}.{n}.c"), b"").await?;
        let layer = self.path(&format!("{base}/layers/{id}/{n}/layer"));
        let upload = self.s3.create_multipart(&layer).await?;
        self.s3
            .put_part(&layer, &upload, 0, PutPayload::from(vec![7u8; 1024]))
            .await?;
        // Past the lease's TTL (0) plus the backend's slack, by the server's clock.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        Ok(())
    }

    async fn leftovers(&self, s: &StoreName) -> Result<usize> {
        let l = self.leftover_list(s).await?;
        if !l.is_empty() {
            eprintln!("leftovers in {s}: {l:?}");
        }
        Ok(l.len())
    }

    /// A link object as a child writer writes it before its lease is released; no lease, no
    /// record and no writable layer stand behind it.
    async fn leave_dangling_child(&self, s: &StoreName, p: &ImageId, c: &ImageId) -> Result<()> {
        let base = self.base(s).await?;
        self.put(
            &format!("{base}/children/{p}/{c}"),
            br#"{"nonce":"dead00000000beef","kind":"image","parent_nonce":"0"}"#,
        )
        .await
    }

    async fn fingerprint(&self, s: &StoreName) -> Result<String> {
        let mut h = Sha256::new();
        let mut all: BTreeMap<String, (u64, String)> = BTreeMap::new();
        for (k, size, etag) in self.list(&format!("stores/{s}")).await? {
            all.insert(k, (size, etag));
        }
        if let Some(b) = self.get(&format!("stores/{s}.json")).await? {
            h.update(&b);
        }
        for (k, (size, etag)) in all {
            h.update(format!("{k} {size} {etag}\n").as_bytes());
        }
        for (k, id) in self.uploads(&format!("stores/{s}")).await? {
            h.update(format!("upload {k} {id}\n").as_bytes());
        }
        Ok(format!("{:x}", h.finalize()))
    }
}
