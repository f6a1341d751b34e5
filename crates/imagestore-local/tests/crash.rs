//! Crash test: a child process writes, deletes, imports and commits layers in a loop and is
//! killed with SIGKILL at random moments; after each kill, a fresh instance opens the store
//! and must see only complete, verifiable images, a correct usage counter and no leftovers.
//!
//! This is a `harness = false` test: the same binary is the child when
//! `IMAGESTORE_CRASH_CHILD` is set.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use imagestore_core::{
    Digest, Error, Exporter, FilterSpec, ImageId, ImageStorer, ImageStorerExt, Importer, Metadata,
    StoreName, byte_stream,
};
use imagestore_local::{Config, LocalStore};
use tokio::io::AsyncReadExt;

const KILLS: usize = 60;

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

async fn open(root: &Path) -> Result<LocalStore> {
    Ok(LocalStore::open(Config {
        root: root.to_owned(),
    })
    .await?)
}

/// The child: mutate the store forever.
async fn child(root: PathBuf) -> Result<()> {
    let store = open(&root).await?;
    let s = StoreName::new("crash")?;
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
                match store.delete_image(victim).await {
                    Ok(_) | Err(Error::ImageInUse { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
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

fn leftovers(store_dir: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for sub in ["staging", "trash"] {
        for e in std::fs::read_dir(store_dir.join(sub))? {
            found.push(format!("{sub}/{}", e?.file_name().to_string_lossy()));
        }
    }
    for e in std::fs::read_dir(store_dir.join("images"))? {
        let e = e?;
        if !e.path().join("COMMITTED").exists() {
            found.push(format!(
                "uncommitted images/{}",
                e.file_name().to_string_lossy()
            ));
        }
        if let Ok(children) = std::fs::read_dir(e.path().join("children")) {
            for c in children {
                let name = c?.file_name();
                if !store_dir
                    .join("images")
                    .join(&name)
                    .join("COMMITTED")
                    .exists()
                    && !store_dir
                        .join("writable")
                        .join(&name)
                        .join("COMMITTED")
                        .exists()
                {
                    found.push(format!("dangling child link {}", name.to_string_lossy()));
                }
            }
        }
    }
    for e in std::fs::read_dir(store_dir.join("writable"))? {
        let e = e?;
        if !e.path().join("COMMITTED").exists() {
            found.push(format!(
                "uncommitted writable/{}",
                e.file_name().to_string_lossy()
            ));
        }
    }
    if store_dir.join("usage.pending").exists() {
        found.push("usage.pending".into());
    }
    Ok(found)
}

async fn verify(root: &Path) -> Result<usize> {
    let store = open(root).await?;
    let s = StoreName::new("crash")?;
    store.get_image_store(&s).await?;
    let images = store.list_images(&s, &[]).await?;
    let mut total = 0u64;
    for img in &images {
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
        let parent = img
            .parent
            .clone()
            .context("non-scratch image without parent")?;
        store
            .get_image(&s, &parent)
            .await
            .with_context(|| format!("{} has a dangling parent {parent}", img.id))?;
        if img.depth <= 2 {
            let mut tree = Vec::new();
            store
                .export(&s, &img.id, None, &FilterSpec::all(), true)
                .await?
                .read_to_end(&mut tree)
                .await?;
        }
        total += img.size;
    }
    ensure!(
        store.image_storage_usage(&s).await? == total,
        "usage counter disagrees with the images"
    );
    let left = leftovers(&root.join("stores/crash"))?;
    if !left.is_empty() {
        bail!("leftovers after the sweep: {left:?}");
    }
    Ok(images.len())
}

fn main() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Ok(root) = std::env::var("IMAGESTORE_CRASH_CHILD") {
        return rt.block_on(child(PathBuf::from(root)));
    }
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    rt.block_on(async {
        let store = open(&root).await?;
        store.create_image_store(&StoreName::new("crash")?).await?;
        Ok::<_, anyhow::Error>(())
    })?;
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
    let mut max_images = 0;
    for round in 0..KILLS {
        let mut child = Command::new(&exe)
            .env("IMAGESTORE_CRASH_CHILD", &root)
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
        let n = rt
            .block_on(verify(&root))
            .with_context(|| format!("after kill {round}"))?;
        max_images = max_images.max(n);
    }
    ensure!(
        max_images > 5,
        "the writer made too little progress to test anything ({max_images} images)"
    );
    println!(
        "crash test: {KILLS} kills, up to {max_images} images, all verified, in {:?}",
        started.elapsed()
    );
    Ok(())
}
