//! Concurrent writers, racing deletes, restarts and crash leftovers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Result, bail, ensure};
use imagestore::{Digest, Error, ImageId, ImageStorerExt, Metadata, byte_stream};

use super::{fresh, put};
use crate::tars::{Counted, Layer, parse, read_all, stream, sum};
use crate::{Ctx, expect_err};

/// VIC's TestParallel: ten layers written at once on one parent all succeed.
pub async fn parallel_layers_on_one_parent(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let store = ctx.store.clone();
        let parent = scratch.clone();
        tasks.push(tokio::spawn(async move {
            let id = ImageId::new(format!("par{i}"))?;
            store
                .write_image(
                    &parent,
                    &id,
                    Metadata::new(),
                    &Digest::empty_sha256(),
                    stream(b""),
                )
                .await
        }));
    }
    for t in tasks {
        t.await??;
    }
    ensure!(ctx.store.list_images(&s, &[]).await?.len() == 10);
    Ok(())
}

/// Concurrent writers of one id (on separate backend instances): one write, every caller gets
/// the same image, at most one body is read to its end.
pub async fn concurrent_same_id_single_write(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let layer = Layer::new().file("big", &vec![5u8; 2 << 20]).build();
    let digest = sum(&layer);
    let reads = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = if i % 2 == 0 {
            ctx.store.clone()
        } else {
            ctx.reopen().await?
        };
        let parent = scratch.clone();
        let body = Counted::new(layer.clone(), reads.clone(), None);
        let digest = digest.clone();
        tasks.push(tokio::spawn(async move {
            store
                .write_image(
                    &parent,
                    &ImageId::new("contended")?,
                    Metadata::new(),
                    &digest,
                    byte_stream(body),
                )
                .await
        }));
    }
    let mut images = Vec::new();
    for t in tasks {
        images.push(t.await??);
    }
    ensure!(
        images.windows(2).all(|w| w[0] == w[1]),
        "every caller gets the same image"
    );
    ensure!(
        reads.load(Ordering::SeqCst) <= 1,
        "{} bodies were read to the end",
        reads.load(Ordering::SeqCst)
    );
    ensure!(ctx.store.list_images(&s, &[]).await?.len() == 1);
    Ok(())
}

/// A child write racing the delete of its parent never leaves a dangling parent: either the
/// delete wins and the write fails `NotFound`, or the write wins and the delete is refused.
pub async fn delete_parent_racing_child_write(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let layer = Layer::new().file("k", &vec![1u8; 256 << 10]).build();
    for round in 0..6 {
        let parent = put(
            ctx,
            &scratch,
            &format!("p{round}"),
            &Layer::new().file("p", b"p").build(),
        )
        .await?;
        let other = ctx.reopen().await?;
        let done = Arc::new(AtomicUsize::new(0));
        let body = Counted::new(
            layer.clone(),
            done,
            Some(Duration::from_millis(20 * (round % 3))),
        );
        let (p2, digest) = (parent.clone(), sum(&layer));
        let writer = tokio::spawn(async move {
            other
                .write_image(
                    &p2,
                    &ImageId::new(format!("k{round}"))?,
                    Metadata::new(),
                    &digest,
                    byte_stream(body),
                )
                .await
        });
        tokio::time::sleep(Duration::from_millis(10 * (round % 4))).await;
        let deleted = ctx.store.delete_image(&parent).await;
        let written = writer.await?;
        match (&deleted, &written) {
            (Ok(_), Err(Error::NotFound { .. })) => {
                expect_err!(
                    ctx.store
                        .get_image(&s, &ImageId::new(format!("k{round}"))?)
                        .await,
                    Error::NotFound { .. }
                );
            }
            (Err(e), Ok(child)) if e.is_image_in_use() => {
                ensure!(ctx.store.get_image(&s, &parent.id).await.is_ok());
                ensure!(child.parent.as_ref() == Some(&parent.id));
            }
            other => bail!("round {round}: impossible outcome {other:?}"),
        }
        for img in ctx.store.list_images(&s, &[]).await? {
            if let Some(p) = &img.parent {
                ensure!(
                    ctx.store.get_image(&s, p).await.is_ok(),
                    "{} has a dangling parent {p}",
                    img.id
                );
            }
        }
    }
    Ok(())
}

/// A new instance (a restart) sees every image with its parent.
pub async fn reopen_sees_every_image(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let mut top = scratch;
    let mut written = Vec::new();
    for i in 0..5 {
        top = put(
            ctx,
            &top,
            &format!("r{i}"),
            &Layer::new().file(&format!("f{i}"), b"x").build(),
        )
        .await?;
        written.push(top.clone());
    }
    let side = put(
        ctx,
        &written[1],
        "side",
        &Layer::new().file("s", b"s").build(),
    )
    .await?;
    written.push(side);
    let other = ctx.reopen().await?;
    let mut seen = other.list_images(&s, &[]).await?;
    seen.sort_by(|a, b| a.id.cmp(&b.id));
    written.sort_by(|a, b| a.id.cmp(&b.id));
    ensure!(seen == written);
    ensure!(other.chain(&s, &ImageId::new("r4")?).await?.len() == 6);
    Ok(())
}

/// What a crashed write leaves is invisible and swept when a new instance opens the store.
pub async fn leftover_is_swept(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let kept = put(ctx, &scratch, "kept", &Layer::new().file("a", b"1").build()).await?;
    let ghost = ImageId::new("crashed")?;
    ctx.hooks.leave_crashed_write(&s, &ghost).await?;
    ensure!(
        ctx.hooks.leftovers(&s).await? > 0,
        "the hook left something"
    );
    let other = ctx.reopen().await?;
    other.get_image_store(&s).await?;
    expect_err!(other.get_image(&s, &ghost).await, Error::NotFound { .. });
    ensure!(other.list_images(&s, &[]).await? == vec![kept.clone()]);
    ensure!(
        ctx.hooks.leftovers(&s).await? == 0,
        "leftovers remain after the sweep"
    );
    // The id is writable again.
    let layer = Layer::new().file("b", b"2").build();
    other
        .write_image(
            &scratch,
            &ghost,
            Metadata::new(),
            &sum(&layer),
            stream(&layer),
        )
        .await?;
    ensure!(
        other.image_storage_usage(&s).await? == kept.size + other.get_image(&s, &ghost).await?.size
    );
    Ok(())
}

/// A child link left by a writer that died before committing (no child image, no writable
/// layer) keeps nothing in use: its parent can be deleted at once, before any sweep.
pub async fn dangling_child_link_keeps_nothing_in_use(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = put(ctx, &scratch, "a", &Layer::new().file("a", b"1").build()).await?;
    ctx.hooks
        .leave_dangling_child(&s, &a.id, &ImageId::new("never-committed")?)
        .await?;
    ctx.store.delete_image(&a).await?;
    expect_err!(ctx.store.get_image(&s, &a.id).await, Error::NotFound { .. });
    ensure!(ctx.store.image_storage_usage(&s).await? == 0);
    Ok(())
}

/// On the catalogue backends (`file://`, `vmdk://`, `vsphere://`): a failure after the commit
/// point (here: the usage counter cannot be read or written) is logged, not returned. The
/// write returns the image, which is visible; the counter, left marked as being changed, is
/// recomputed by the next reader once it can be.
pub async fn failure_after_commit_is_not_returned(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = put(ctx, &scratch, "a", &Layer::new().file("a", b"1").build()).await?;
    let usage = ctx.hooks.usage_file(&s).await?;
    // A folder where the counter file was: neither readable nor replaceable as a file.
    std::fs::remove_file(&usage)?;
    std::fs::create_dir(&usage)?;
    let b = put(ctx, &a, "b", &Layer::new().file("b", b"22").build()).await;
    std::fs::remove_dir(&usage)?;
    let b = b?;
    ensure!(ctx.store.get_image(&s, &b.id).await? == b);
    ensure!(ctx.store.image_storage_usage(&s).await? == a.size + b.size);
    Ok(())
}

/// On the catalogue backends: the sweep of a new instance spares what a live writer holds (its
/// staged image folder, and a child link naming its id) and removes both once the writer is
/// gone.
pub async fn sweep_spares_what_a_live_writer_holds(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = put(ctx, &scratch, "a", &Layer::new().file("a", b"1").build()).await?;
    let layer = Layer::new().file("c", &vec![7u8; 1 << 20]).build();
    let (sender, body) = stalled_body(&layer[..layer.len() / 2]).await?;
    let (store, parent, digest) = (ctx.store.clone(), a.clone(), sum(&layer));
    let writer = tokio::spawn(async move {
        store
            .write_image(&parent, &ImageId::new("c")?, Metadata::new(), &digest, body)
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    ctx.hooks
        .leave_dangling_child(&s, &a.id, &ImageId::new("c")?)
        .await?;
    let before = ctx.hooks.leftovers(&s).await?;
    ensure!(before >= 2, "a staged folder and a link: {before}");
    ctx.reopen().await?.get_image_store(&s).await?;
    ensure!(
        ctx.hooks.leftovers(&s).await? == before,
        "the sweep removed what a live writer holds"
    );
    writer.abort();
    drop(sender);
    let _ = writer.await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    ctx.reopen().await?.get_image_store(&s).await?;
    ensure!(ctx.hooks.leftovers(&s).await? == 0, "leftovers remain");
    put(ctx, &a, "c", &layer).await?;
    Ok(())
}

/// A body that yields `prefix` and then stalls, as a client that stops sending mid-layer;
/// the returned writer keeps the stall going while it lives.
async fn stalled_body(prefix: &[u8]) -> Result<(tokio::io::DuplexStream, imagestore::ByteStream)> {
    // The pipe holds the whole prefix, so writing it needs no reader.
    let (mut tx, rx) = tokio::io::duplex(prefix.len() + 1);
    tokio::io::AsyncWriteExt::write_all(&mut tx, prefix).await?;
    Ok((tx, Box::pin(rx)))
}

/// A write whose future is dropped mid-stream (its caller gave up) leaves nothing visible:
/// the image is absent, the usage unchanged, and the id can be written again at once.
pub async fn dropped_write_leaves_nothing(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let layer = Layer::new()
        .file("a", &vec![1u8; 1 << 20])
        .file("b", &vec![2u8; 1 << 20])
        .build();
    let id = ImageId::new("dropped")?;
    let (_sender, body) = stalled_body(&layer[..layer.len() / 2]).await?;
    let digest = sum(&layer);
    let write = ctx
        .store
        .write_image(&scratch, &id, Metadata::new(), &digest, body);
    ensure!(
        tokio::time::timeout(Duration::from_millis(500), write)
            .await
            .is_err(),
        "a write whose body stalls cannot finish"
    );
    expect_err!(ctx.store.get_image(&s, &id).await, Error::NotFound { .. });
    ensure!(ctx.store.list_images(&s, &[]).await?.is_empty());
    ensure!(ctx.store.image_storage_usage(&s).await? == 0);
    let again = tokio::time::timeout(
        Duration::from_secs(60),
        put(ctx, &scratch, "dropped", &layer),
    )
    .await??;
    ensure!(ctx.store.list_images(&s, &[]).await? == vec![again.clone()]);
    ensure!(ctx.store.image_storage_usage(&s).await? == again.size);
    Ok(())
}

/// An import whose future is dropped mid-stream leaves the writable layer as it was, and the
/// next import into it works.
pub async fn dropped_import_leaves_nothing(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let base = put(
        ctx,
        &scratch,
        "base",
        &Layer::new().file("keep", b"k").build(),
    )
    .await?;
    let w = ImageId::new("w-dropped")?;
    ctx.store.create_writable(&base, &w).await?;
    let layer = Layer::new().file("big", &vec![3u8; 2 << 20]).build();
    let (_sender, body) = stalled_body(&layer[..layer.len() / 2]).await?;
    let all = imagestore::FilterSpec::all();
    let import = ctx.store.import(&s, &w, &all, body);
    ensure!(
        tokio::time::timeout(Duration::from_millis(500), import)
            .await
            .is_err(),
        "an import whose body stalls cannot finish"
    );
    ensure!(ctx.store.get_writable(&s, &w).await?.imports == 0);
    let small = Layer::new().file("new", b"n").build();
    let summary = tokio::time::timeout(
        Duration::from_secs(60),
        ctx.store.import(&s, &w, &all, stream(&small)),
    )
    .await??;
    ensure!(summary.entries >= 1);
    ensure!(ctx.store.get_writable(&s, &w).await?.imports == 1);
    let exported = read_all(ctx.store.export(&s, &w, None, &all, false).await?).await?;
    let names: Vec<String> = parse(&exported)?.into_iter().map(|e| e.path).collect();
    ensure!(
        names.iter().any(|n| n == "new") && !names.iter().any(|n| n == "big"),
        "{names:?}"
    );
    Ok(())
}
