//! The driver of `cargo xtask bench s3` (one process per measured step, so each gets its own
//! wall time and peak RSS):
//!
//! * `ours URL FILE DIGEST` — writes FILE as one image through the backend into store `bench`;
//! * `plain URL FILE` — the peer: a plain `object_store` multipart put of the same bytes
//!   (8 MiB parts, two in flight and SHA-256 part checksums, as the backend's defaults);
//! * `populate URL STORE N` — writes N tiny images into STORE through the backend;
//! * `list URL STORE N` — lists STORE and checks it holds N images (scratch excluded).

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use object_store::aws::{AmazonS3Builder, Checksum};
use object_store::path::Path;
use object_store::{ObjectStoreExt, WriteMultipart};
use tokio::io::AsyncReadExt;

use imagestore_core::{
    Digest, ImageId, ImageStorer, ImageStorerExt, Metadata, StoreName, Url, byte_stream,
};
use imagestore_s3::{Config, S3Store};

const PART: usize = 8 << 20;

async fn open(url: &str) -> Result<S3Store> {
    let u = Url::parse(url)?;
    Ok(S3Store::open(Config::from_url(&u)?).await?)
}

async fn store(s: &S3Store, name: &StoreName) -> Result<()> {
    if s.get_image_store(name).await.is_err() {
        s.create_image_store(name).await?;
    }
    Ok(())
}

async fn ours(url: &str, file: &str, digest: &str) -> Result<()> {
    let s = open(url).await?;
    let name = StoreName::new("bench")?;
    store(&s, &name).await?;
    let scratch = s.scratch(&name).await?;
    let id = ImageId::new(format!("layer-{:08x}", rand::random::<u32>()))?;
    let sum: Digest = digest.parse()?;
    let f = tokio::fs::File::open(file).await?;
    let img = s
        .write_image(&scratch, &id, Metadata::new(), &sum, byte_stream(f))
        .await?;
    println!("wrote {}", img.id);
    Ok(())
}

/// A plain `object_store` client for the bucket of `url`, with the backend's settings.
fn client(url: &str) -> Result<object_store::aws::AmazonS3> {
    let u = Url::parse(url)?;
    let q: HashMap<String, String> = u.query_pairs().into_owned().collect();
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(u.host_str().context("bucket")?)
        .with_allow_http(true);
    if let Some(e) = q.get("endpoint") {
        b = b.with_endpoint(e);
    }
    // The same client settings as the backend: SHA-256 part checksums unless turned off.
    if q.get("checksum").map(String::as_str) != Some("none") {
        b = b.with_checksum_algorithm(Checksum::SHA256);
    }
    imagestore_core::tls::install_crypto_provider();
    Ok(b.build()?)
}

async fn plain(url: &str, file: &str) -> Result<()> {
    let u = Url::parse(url)?;
    let s3 = client(url)?;
    let key = Path::from(format!(
        "{}/plain-{:08x}",
        u.path().trim_matches('/'),
        rand::random::<u32>()
    ));
    let upload = s3.put_multipart(&key).await?;
    let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
    let mut f = tokio::fs::File::open(file).await?;
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        w.wait_for_capacity(2).await?;
        w.write(&buf[..n]);
    }
    w.finish().await?;
    s3.delete(&key).await?;
    Ok(())
}

/// The peer of `bench gc`: puts `n` small objects, then deletes them one request each, 16 at
/// a time, as a client that knows exactly what to delete would; prints `secs=` of the
/// deletes.
async fn deletes(url: &str, n: usize) -> Result<()> {
    let s3 = Arc::new(client(url)?);
    let u = Url::parse(url)?;
    let prefix = format!(
        "{}/peer-{:08x}",
        u.path().trim_matches('/'),
        rand::random::<u32>()
    );
    let keys: Vec<Path> = (0..n)
        .map(|i| Path::from(format!("{prefix}/{i:05}")))
        .collect();
    let put: Vec<Result<()>> = futures::stream::iter(keys.clone())
        .map(|k| {
            let s3 = s3.clone();
            async move {
                s3.put(&k, vec![0u8; 64].into()).await?;
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    put.into_iter().collect::<Result<Vec<_>>>()?;
    let t = std::time::Instant::now();
    let del: Vec<Result<()>> = futures::stream::iter(keys)
        .map(|k| {
            let s3 = s3.clone();
            async move {
                s3.delete(&k).await?;
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    del.into_iter().collect::<Result<Vec<_>>>()?;
    println!("secs={:.3}", t.elapsed().as_secs_f64());
    Ok(())
}

/// A one-file layer tar, different per `i`.
fn tiny_layer(i: usize) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let body = format!("image {i}\n");
    let mut h = tar::Header::new_gnu();
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    b.append_data(&mut h, format!("etc/n{i}"), body.as_bytes())?;
    Ok(b.into_inner()?)
}

async fn populate(url: &str, store_name: &str, n: usize) -> Result<()> {
    let s = Arc::new(open(url).await?);
    let name = StoreName::new(store_name)?;
    store(&s, &name).await?;
    let scratch = Arc::new(s.scratch(&name).await?);
    let have = s.list_images(&name, &[]).await?.len();
    let results: Vec<Result<()>> = futures::stream::iter(have..n)
        .map(|i| {
            let (s, scratch) = (s.clone(), scratch.clone());
            async move {
                let id = ImageId::new(format!("img-{i:05}"))?;
                s.write_image_bytes(&scratch, &id, Metadata::new(), tiny_layer(i)?)
                    .await?;
                if i % 1000 == 0 {
                    eprintln!("populate: {i}/{n}");
                }
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<_>>>()?;
    Ok(())
}

async fn list(url: &str, store_name: &str, n: usize) -> Result<()> {
    let s = open(url).await?;
    let name = StoreName::new(store_name)?;
    let images = s.list_images(&name, &[]).await?;
    let count = images.len();
    ensure!(count == n, "listed {count} images, expected {n}");
    println!("listed {count}");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["ours", url, file, digest] => ours(url, file, digest).await,
        ["plain", url, file] => plain(url, file).await,
        ["populate", url, store, n] => populate(url, store, n.parse()?).await,
        ["list", url, store, n] => list(url, store, n.parse()?).await,
        ["deletes", url, n] => deletes(url, n.parse()?).await,
        _ => bail!("usage: s3bench ours|plain|populate|list|deletes ..."),
    }
}
