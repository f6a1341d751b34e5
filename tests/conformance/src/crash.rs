//! The crash test every backend on local storage runs: a child process writes, deletes
//! (single images and whole branches), imports and commits layers, sets, moves and deletes
//! references and collects garbage in a loop and is killed with SIGKILL at random moments;
//! after each kill a fresh instance opens the store by URL and must see only complete,
//! verifiable images with their parents, references naming images and blobs that exist, a
//! usage counter that agrees with the images, and no leftovers once the store is swept.
//!
//! A backend's test file is a `harness = false` test whose `main` calls [`run`]; the same
//! binary is the child when `IMAGESTORE_CRASH_CHILD` is set.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use imagestore::{
    Digest, Error, FilterSpec, ImageId, ImageStorer, ImageStorerExt, Metadata, StoreName,
    byte_stream,
};
use imagestore::{Expect, GcOptions, RefName, RefTarget};
use tokio::io::AsyncReadExt;

use crate::{Ctx, Hooks};

const CHILD: &str = "IMAGESTORE_CRASH_CHILD";

fn layer(seed: u64, size: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(size as u64);
    h.set_entry_type(tar::EntryType::Regular);
    let data: Vec<u8> = (0..size)
        .map(|i| (i as u64).wrapping_mul(seed | 1).wrapping_add(seed) as u8)
        .collect();
    b.append_data(&mut h, format!("f/{seed}"), data.as_slice())
        .unwrap();
    let bytes = b.into_inner().unwrap();
    if seed.is_multiple_of(3) {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&bytes).unwrap();
        gz.finish().unwrap()
    } else {
        bytes
    }
}

fn store_name() -> StoreName {
    StoreName::new("crash").expect("valid name")
}

/// The child: mutate the store forever.
async fn child(url: String) -> Result<()> {
    let store = imagestore::open(&url).await?;
    let s = store_name();
    let mut seed: u64 = std::process::id().into();
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    loop {
        let images = store.list_images(&s, &[]).await?;
        let r = next();
        let parent = if images.is_empty() || r % 4 == 0 {
            store.scratch(&s).await?
        } else {
            images[(r as usize / 4) % images.len()].clone()
        };
        // Keep the store small so every verification round stays quick.
        let delete = images.len() > 60 || r % 10 == 0;
        match r % 10 {
            _ if delete && !images.is_empty() => {
                let victim = &images[(r as usize / 10) % images.len()];
                // Every other delete takes the victim's whole unused branch with it.
                let done = if next() % 2 == 0 {
                    store.delete_branch(victim, &[]).await.map(|_| ())
                } else {
                    store.delete_image(victim).await.map(|_| ())
                };
                match done {
                    Ok(()) | Err(Error::ImageInUse { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            2 | 3 => reference_step(store.as_ref(), &s, &images, &mut next).await?,
            4 if next() % 12 == 0 => {
                let opts = GcOptions {
                    grace: Duration::ZERO,
                    ..GcOptions::default()
                };
                store.gc(&s, &opts).await?;
            }
            1 => {
                let w = ImageId::new(format!("w{}", next() % 1000))?;
                if store.create_writable(&parent, &w).await.is_ok() {
                    let tar = layer(next(), 20_000);
                    store
                        .import(
                            &s,
                            &w,
                            &FilterSpec::all(),
                            byte_stream(std::io::Cursor::new(tar)),
                        )
                        .await?;
                    let new = ImageId::new(format!("c{}", next() % 100_000))?;
                    match store.commit_writable(&s, &w, &new, Metadata::new()).await {
                        Ok(_) | Err(Error::AlreadyExists { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                    let _ = store.delete_writable(&s, &w).await;
                }
            }
            _ => {
                let size = [0usize, 1000, 100_000, 1 << 20][(next() % 4) as usize];
                let bytes = layer(next(), size);
                let id = ImageId::new(format!("i{}", next() % 100_000))?;
                match store
                    .write_image_bytes(&parent, &id, Metadata::new(), bytes)
                    .await
                {
                    Ok(_) | Err(Error::Conflict { .. }) | Err(Error::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}

/// Sets, moves (compare-and-swap on what was just read) or deletes one of a few references;
/// some name a config blob put just before.
async fn reference_step(
    store: &dyn ImageStorer,
    s: &StoreName,
    images: &[imagestore::Image],
    next: &mut impl FnMut() -> u64,
) -> Result<()> {
    let name = RefName::new(format!("app:t{}", next() % 6))?;
    let current = match store.get_reference(s, &name).await {
        Ok(r) => Some(r.target),
        Err(Error::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    if images.is_empty() || (current.is_some() && next().is_multiple_of(3)) {
        if let Some(t) = current {
            store.delete_reference(s, &name, &Expect::Target(t)).await?;
        }
        return Ok(());
    }
    let mut target = RefTarget::image(images[(next() as usize) % images.len()].id.clone());
    if next().is_multiple_of(2) {
        let config = format!("{{\"os\":\"linux\",\"n\":{}}}", next() % 20).into_bytes();
        let d = Digest::sha256_of(&config);
        store.put_blob(s, &d, config).await?;
        target.config = Some(d);
    }
    let expect = match current {
        Some(t) => Expect::Target(t),
        None => Expect::Absent,
    };
    // One writer: the reference cannot have changed since it was read, and a collection
    // only runs between steps, so the blob and the image are there.
    store.set_reference(s, &name, &target, &expect).await?;
    Ok(())
}

/// Opens a fresh instance and checks every image, the references, the usage counter and the
/// leftovers; returns how many images and references there are.
async fn verify(ctx: &Ctx) -> Result<(usize, usize)> {
    let store = ctx.reopen().await?;
    let s = store_name();
    store.get_image_store(&s).await?;
    let images = store.list_images(&s, &[]).await?;
    let raw_layers = store.capabilities().raw_layers;
    let mut total = 0u64;
    for img in &images {
        if raw_layers {
            let mut raw = Vec::new();
            store
                .export_raw(&s, &img.id)
                .await?
                .read_to_end(&mut raw)
                .await?;
            ensure!(
                img.sum == Some(Digest::sha256_of(&raw)),
                "{}: stored bytes do not match the sum",
                img.id
            );
            ensure!(img.size == raw.len() as u64);
        }
        let parent = img
            .parent
            .clone()
            .context("non-scratch image without parent")?;
        store
            .get_image(&s, &parent)
            .await
            .with_context(|| format!("{} has a dangling parent {parent}", img.id))?;
        if img.depth <= 2 || !raw_layers {
            // Reads every file, checked against the TOC's digests.
            let mut tree = Vec::new();
            store
                .export(&s, &img.id, None, &FilterSpec::all(), true)
                .await?
                .read_to_end(&mut tree)
                .await
                .with_context(|| format!("exporting {}", img.id))?;
            ctx.hooks.check_image(&s, img).await?;
        }
        total += img.size;
    }
    ensure!(
        store.image_storage_usage(&s).await? == total,
        "usage counter disagrees with the images"
    );
    let refs = store.list_references(&s).await?;
    for r in &refs {
        store
            .get_image(&s, &r.target.image)
            .await
            .with_context(|| format!("reference {} names a missing image", r.name))?;
        for d in r.target.blobs() {
            store
                .get_blob(&s, d)
                .await
                .with_context(|| format!("reference {} names a missing blob {d}", r.name))?;
        }
        ensure!(
            store
                .delete_image(&store.get_image(&s, &r.target.image).await?)
                .await
                .is_err(),
            "the image of reference {} could be deleted",
            r.name
        );
    }
    let left = ctx.hooks.leftovers(&s).await?;
    if left > 0 {
        bail!("{left} leftover(s) after the sweep");
    }
    Ok((images.len(), refs.len()))
}

/// Runs the crash test against the backend at `url` (`hooks` reach into its storage), with
/// `kills` SIGKILLs; or, in the child process, the writer.
pub fn run(url: String, hooks: Arc<dyn Hooks>, kills: usize) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Ok(url) = std::env::var(CHILD) {
        return rt.block_on(child(url));
    }
    let ctx = rt.block_on(async {
        let ctx = Ctx::open(url.clone(), hooks).await?;
        ctx.store.create_image_store(&store_name()).await?;
        Ok::<_, anyhow::Error>(ctx)
    })?;
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
    let (mut max_images, mut max_refs) = (0, 0);
    for round in 0..kills {
        let mut child = Command::new(&exe)
            .env(CHILD, &url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(20 + rng % 400));
        if let Some(status) = child.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                std::io::Read::read_to_string(&mut e, &mut err)?;
            }
            bail!("round {round}: the writer exited by itself ({status}): {err}");
        }
        child.kill()?;
        child.wait()?;
        let (n, r) = rt
            .block_on(verify(&ctx))
            .with_context(|| format!("after kill {round}"))?;
        max_images = max_images.max(n);
        max_refs = max_refs.max(r);
    }
    ensure!(
        max_images > 5,
        "the writer made too little progress to test anything ({max_images} images)"
    );
    ensure!(max_refs > 0, "the writer never set a reference");
    println!(
        "crash test on {}: {kills} kills, up to {max_images} images and {max_refs} references, \
         all verified, in {:?}",
        ctx.store.scheme(),
        started.elapsed()
    );
    Ok(())
}
