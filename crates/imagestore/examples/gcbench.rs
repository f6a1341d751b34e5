//! The measured side of `cargo xtask bench gc`: one process per step, so each gets its own
//! wall time.
//!
//! * `populate URL STORE` — 500 referenced base images and 1,500 unreferenced chains of three
//!   (4,500 images nothing keeps), written 16 at a time;
//! * `gc URL STORE dry|real OUT` — collects the store with no grace period, writes the ids it
//!   deleted (or would), sorted, one per line, then `freed <bytes>`, to file OUT, and prints
//!   `secs=<seconds the collection took>`;
//! * `check URL STORE` — fails unless exactly the 500 referenced images remain and the usage
//!   equals their sizes.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use imagestore::{
    GcOptions, Image, ImageId, ImageStorer, ImageStorerExt, Metadata, RefName, RefTarget, StoreName,
};

/// Referenced images.
const KEPT: usize = 500;
/// Unreferenced chains, each three images deep.
const CHAINS: usize = 1500;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A one-file tar naming `name`.
fn layer(name: &str) -> Res<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(name.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, name, name.as_bytes())?;
    Ok(b.into_inner()?)
}

async fn put(s: &dyn ImageStorer, parent: &Image, id: String) -> Res<Image> {
    let bytes = layer(&id)?;
    Ok(
        s.write_image_bytes(parent, &ImageId::new(id)?, Metadata::new(), bytes)
            .await?,
    )
}

async fn populate(s: Arc<dyn ImageStorer>, store: &StoreName) -> Res<()> {
    if s.get_image_store(store).await.is_err() {
        s.create_image_store(store).await?;
    }
    let scratch = Arc::new(s.scratch(store).await?);
    let kept: Vec<Res<()>> = futures::stream::iter(0..KEPT)
        .map(|i| {
            let (s, scratch, store) = (s.clone(), scratch.clone(), store.clone());
            async move {
                let img = put(s.as_ref(), &scratch, format!("kept-{i:04}")).await?;
                let name = RefName::new(format!("bench/kept:{i}"))?;
                s.set_reference(
                    &store,
                    &name,
                    &RefTarget::image(img.id),
                    &imagestore::Expect::Any,
                )
                .await?;
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    kept.into_iter().collect::<Res<Vec<_>>>()?;
    let chains: Vec<Res<()>> = futures::stream::iter(0..CHAINS)
        .map(|i| {
            let (s, scratch) = (s.clone(), scratch.clone());
            async move {
                let a = put(s.as_ref(), &scratch, format!("loose-{i:04}-a")).await?;
                let b = put(s.as_ref(), &a, format!("loose-{i:04}-b")).await?;
                put(s.as_ref(), &b, format!("loose-{i:04}-c")).await?;
                if i % 250 == 0 {
                    eprintln!("populate: {i}/{CHAINS} chains");
                }
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    chains.into_iter().collect::<Res<Vec<_>>>()?;
    Ok(())
}

async fn gc(s: &dyn ImageStorer, store: &StoreName, dry_run: bool, out: &str) -> Res<()> {
    let opts = GcOptions {
        dry_run,
        grace: Duration::ZERO,
        keep: Vec::new(),
    };
    let t = Instant::now();
    let report = s.gc(store, &opts).await?;
    let secs = t.elapsed().as_secs_f64();
    if !report.skipped.is_empty() {
        return Err(format!(
            "{} images skipped: {:?}",
            report.skipped.len(),
            report.skipped
        )
        .into());
    }
    let mut ids: Vec<String> = report.images.iter().map(|i| i.id.to_string()).collect();
    ids.sort();
    let mut text = ids.join("\n");
    text.push_str(&format!("\nfreed {}\n", report.freed_bytes));
    std::fs::write(out, text)?;
    println!("secs={secs:.3}");
    eprintln!(
        "gc {}: {} images, {} bytes in {secs:.3}s",
        if dry_run { "dry run" } else { "real run" },
        ids.len(),
        report.freed_bytes
    );
    Ok(())
}

async fn check(s: &dyn ImageStorer, store: &StoreName) -> Res<()> {
    let images = s.list_images(store, &[]).await?;
    let usage = s.image_storage_usage(store).await?;
    let sizes: u64 = images.iter().map(|i| i.size).sum();
    let all_kept = images.iter().all(|i| i.id.as_str().starts_with("kept-"));
    if images.len() != KEPT || !all_kept || usage != sizes {
        return Err(format!(
            "{} images left (all referenced: {all_kept}), usage {usage} vs sizes {sizes}",
            images.len()
        )
        .into());
    }
    eprintln!("check: {KEPT} referenced images left, usage {usage} exact");
    Ok(())
}

#[tokio::main]
async fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (cmd, url, store) = match args.as_slice() {
        [cmd, url, store, ..] => (*cmd, *url, StoreName::new(*store)?),
        _ => return Err("usage: gcbench populate|gc|check URL STORE [dry|real OUT]".into()),
    };
    let s = imagestore::open(url).await?;
    match (cmd, args.get(3).copied()) {
        ("populate", None) => populate(s, &store).await,
        ("gc", Some(mode @ ("dry" | "real"))) => {
            let out = args.get(4).ok_or("gc needs an output file")?;
            gc(s.as_ref(), &store, mode == "dry", out).await
        }
        ("check", None) => check(s.as_ref(), &store).await,
        _ => Err(format!("unknown command {args:?}").into()),
    }
}
