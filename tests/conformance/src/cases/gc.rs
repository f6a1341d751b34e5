//! Garbage collection: what nothing needs goes, leaf first; roots, their ancestors, and what
//! writers and references reach for while it runs stay.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use imagestore::{Digest, Expect, GcOptions, GcReport, RefTarget};
use imagestore::{Image, ImageId, ImageStorer, ImageStorerExt, Metadata, OwnerName, StoreName};

use super::refs::{gone, small, tag, target, target_with_blobs};
use super::{fresh, in_use_by};
use crate::Ctx;
use crate::tars::{Layer, sum};

/// A real collection with no grace period: every image and blob nothing keeps is old.
fn now_opts() -> GcOptions {
    GcOptions {
        grace: Duration::ZERO,
        ..GcOptions::default()
    }
}

fn ids(images: &[Image]) -> BTreeSet<ImageId> {
    images.iter().map(|i| i.id.clone()).collect()
}

/// Fails unless the images of `s` are exactly `want`, every parent exists, and the usage is
/// the sum of their sizes.
async fn left_exactly(store: &dyn ImageStorer, s: &StoreName, want: &[&Image]) -> Result<()> {
    let left = store.list_images(s, &[]).await?;
    let want_ids: BTreeSet<ImageId> = want.iter().map(|i| i.id.clone()).collect();
    ensure!(
        ids(&left) == want_ids,
        "left {:?}, expected {want_ids:?}",
        ids(&left)
    );
    for img in &left {
        if let Some(p) = &img.parent {
            store
                .get_image(s, p)
                .await
                .with_context(|| format!("{} has a dangling parent {p}", img.id))?;
        }
    }
    let total: u64 = left.iter().map(|i| i.size).sum();
    let usage = store.image_storage_usage(s).await?;
    ensure!(
        usage == total,
        "usage {usage} != {total}, the survivors' sizes"
    );
    Ok(())
}

/// Fails unless every reference of `s` names an image that exists.
async fn refs_resolve(store: &dyn ImageStorer, s: &StoreName) -> Result<()> {
    for r in store.list_references(s).await? {
        store
            .get_image(s, &r.target.image)
            .await
            .with_context(|| format!("reference {} names a missing image", r.name))?;
    }
    Ok(())
}

/// Fails unless no image of `report` comes after its own parent (leaf first).
fn leaf_first(report: &GcReport) -> Result<()> {
    for (i, img) in report.images.iter().enumerate() {
        if let Some(later) = report.images[i + 1..]
            .iter()
            .find(|l| l.parent.as_ref() == Some(&img.id))
        {
            bail!("{} was deleted before its child {}", img.id, later.id);
        }
    }
    Ok(())
}

/// The tree the collection cases share: scratch → a → b → {c, d}, scratch → e → f, and a
/// lone g.
struct Tree {
    a: Image,
    b: Image,
    c: Image,
    d: Image,
    e: Image,
    f: Image,
    g: Image,
}

async fn tree(ctx: &Ctx, scratch: &Image) -> Result<Tree> {
    let a = small(ctx, scratch, "a").await?;
    let b = small(ctx, &a, "b").await?;
    let c = small(ctx, &b, "c").await?;
    let d = put_sized(ctx, &b, "d", 20_000).await?;
    let e = small(ctx, scratch, "e").await?;
    let f = small(ctx, &e, "f").await?;
    let g = small(ctx, scratch, "g").await?;
    Ok(Tree {
        a,
        b,
        c,
        d,
        e,
        f,
        g,
    })
}

async fn put_sized(ctx: &Ctx, parent: &Image, id: &str, len: usize) -> Result<Image> {
    super::put(
        ctx,
        parent,
        id,
        &Layer::new().file(id, &vec![3u8; len]).build(),
    )
    .await
}

/// A dry run reports exactly what the real run then deletes (the same images and blobs, the
/// same bytes freed) and deletes nothing itself.
pub async fn gc_dry_run_matches_real_run(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let t = tree(ctx, &scratch).await?;
    ctx.store
        .set_reference(&s, &tag("app:v1")?, &target(&t.c), &Expect::Absent)
        .await?;
    let loose = b"an unreferenced config".to_vec();
    let ld = Digest::sha256_of(&loose);
    ctx.store.put_blob(&s, &ld, loose).await?;
    let before = ctx.store.list_images(&s, &[]).await?;
    let usage = ctx.store.image_storage_usage(&s).await?;

    let plan = ctx
        .store
        .gc(
            &s,
            &GcOptions {
                dry_run: true,
                ..now_opts()
            },
        )
        .await?;
    ensure!(plan.dry_run);
    ensure!(
        ctx.store.list_images(&s, &[]).await? == before,
        "a dry run deleted images"
    );
    ensure!(ctx.store.image_storage_usage(&s).await? == usage);
    ensure!(
        ctx.store.get_blob(&s, &ld).await.is_ok(),
        "a dry run deleted a blob"
    );
    let want: BTreeSet<ImageId> = [&t.d, &t.e, &t.f, &t.g]
        .iter()
        .map(|i| i.id.clone())
        .collect();
    ensure!(ids(&plan.images) == want, "planned {:?}", ids(&plan.images));
    ensure!(plan.blobs == vec![ld.clone()], "{:?}", plan.blobs);
    ensure!(plan.kept == 3, "kept {}", plan.kept);
    leaf_first(&plan)?;

    let real = ctx.store.gc(&s, &now_opts()).await?;
    ensure!(!real.dry_run);
    ensure!(
        ids(&real.images) == ids(&plan.images),
        "deleted {:?}",
        ids(&real.images)
    );
    ensure!(real.blobs == plan.blobs, "{:?}", real.blobs);
    ensure!(
        real.freed_bytes == plan.freed_bytes,
        "freed {} but the plan said {}",
        real.freed_bytes,
        plan.freed_bytes
    );
    ensure!(real.skipped.is_empty(), "{:?}", real.skipped);
    left_exactly(ctx.store.as_ref(), &s, &[&t.a, &t.b, &t.c]).await
}

/// With no grace period, the images no root needs go leaf first, the bytes freed are their
/// sizes, and the usage afterwards is exactly the survivors' sizes; a second run finds
/// nothing.
pub async fn gc_deletes_unreferenced_leaf_first(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let t = tree(ctx, &scratch).await?;
    ctx.store
        .set_reference(&s, &tag("app:v1")?, &target(&t.a), &Expect::Absent)
        .await?;
    let report = ctx.store.gc(&s, &now_opts()).await?;
    let doomed = [&t.b, &t.c, &t.d, &t.e, &t.f, &t.g];
    let want: BTreeSet<ImageId> = doomed.iter().map(|i| i.id.clone()).collect();
    ensure!(
        ids(&report.images) == want,
        "deleted {:?}",
        ids(&report.images)
    );
    leaf_first(&report)?;
    let freed: u64 = doomed.iter().map(|i| i.size).sum();
    ensure!(
        report.freed_bytes == freed,
        "{} != {freed}",
        report.freed_bytes
    );
    for img in doomed {
        gone(ctx, img).await?;
    }
    left_exactly(ctx.store.as_ref(), &s, &[&t.a]).await?;
    let again = ctx.store.gc(&s, &now_opts()).await?;
    ensure!(
        again.images.is_empty() && again.freed_bytes == 0,
        "{again:?}"
    );
    Ok(())
}

/// Every kind of root survives with its ancestors: a referenced image, an image with an
/// owner, the parent of a writable layer and an image in the keep list; the rest goes.
pub async fn gc_keeps_roots_and_ancestors(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = small(ctx, &scratch, "a").await?;
    let referenced = small(ctx, &a, "referenced").await?;
    let b = small(ctx, &scratch, "b").await?;
    let owned = small(ctx, &b, "owned").await?;
    let c = small(ctx, &scratch, "c").await?;
    let under_writable = small(ctx, &c, "under-writable").await?;
    let d = small(ctx, &scratch, "d").await?;
    let kept = small(ctx, &d, "kept").await?;
    let loose_leaf = small(ctx, &kept, "loose-leaf").await?;
    let loose = small(ctx, &scratch, "loose").await?;
    ctx.store
        .set_reference(&s, &tag("app:v1")?, &target(&referenced), &Expect::Absent)
        .await?;
    ctx.store
        .acquire(&s, &owned.id, &OwnerName::new("container-1")?)
        .await?;
    ctx.store
        .create_writable(&under_writable, &ImageId::new("w")?)
        .await?;
    let report = ctx
        .store
        .gc(
            &s,
            &GcOptions {
                keep: vec![kept.id.clone()],
                ..now_opts()
            },
        )
        .await?;
    let want: BTreeSet<ImageId> = [&loose_leaf, &loose].iter().map(|i| i.id.clone()).collect();
    ensure!(
        ids(&report.images) == want,
        "deleted {:?}",
        ids(&report.images)
    );
    ensure!(report.kept == 8, "kept {}", report.kept);
    left_exactly(
        ctx.store.as_ref(),
        &s,
        &[&a, &referenced, &b, &owned, &c, &under_writable, &d, &kept],
    )
    .await?;
    ensure!(
        ctx.store
            .get_writable(&s, &ImageId::new("w")?)
            .await?
            .parent
            == under_writable.id
    );
    Ok(())
}

/// With the default grace period, images just committed and blobs just put stay even though
/// nothing else keeps them.
pub async fn gc_default_grace_keeps_young(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    tree(ctx, &scratch).await?;
    let bytes = b"a fresh manifest".to_vec();
    let d = Digest::sha256_of(&bytes);
    ctx.store.put_blob(&s, &d, bytes).await?;
    let before = ctx.store.list_images(&s, &[]).await?;
    for img in &before {
        ensure!(
            img.created_unix_ms.is_some(),
            "{} has no commit time",
            img.id
        );
    }
    let report = ctx.store.gc(&s, &GcOptions::default()).await?;
    ensure!(
        report.images.is_empty() && report.blobs.is_empty() && report.freed_bytes == 0,
        "{report:?}"
    );
    ensure!(report.kept == 7, "kept {}", report.kept);
    ensure!(ctx.store.list_images(&s, &[]).await? == before);
    ensure!(ctx.store.get_blob(&s, &d).await.is_ok());
    // Without a grace period they go.
    let report = ctx.store.gc(&s, &now_opts()).await?;
    ensure!(report.images.len() == 7, "{:?}", ids(&report.images));
    left_exactly(ctx.store.as_ref(), &s, &[]).await
}

/// With no grace period, blobs no reference names go and the ones a reference names stay,
/// with their bytes.
pub async fn gc_collects_unreferenced_blobs(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = small(ctx, &scratch, "a").await?;
    let named = target_with_blobs(ctx, &s, &a, "named").await?;
    ctx.store
        .set_reference(&s, &tag("app:v1")?, &named, &Expect::Absent)
        .await?;
    // Blobs a reference named once and no longer does.
    let dropped = target_with_blobs(ctx, &s, &a, "dropped").await?;
    ctx.store
        .set_reference(&s, &tag("app:old")?, &dropped, &Expect::Absent)
        .await?;
    ctx.store
        .delete_reference(&s, &tag("app:old")?, &Expect::Any)
        .await?;
    let loose = vec![9u8; 1000];
    let ld = Digest::sha256_of(&loose);
    ctx.store.put_blob(&s, &ld, loose).await?;
    let blob_of = |t: &RefTarget| -> Vec<Digest> { t.blobs().cloned().collect() };
    let mut kept_bytes = Vec::new();
    for d in blob_of(&named) {
        kept_bytes.push(ctx.store.get_blob(&s, &d).await?);
    }
    let sizes: Vec<(Digest, u64)> = ctx
        .store
        .list_blobs(&s)
        .await?
        .into_iter()
        .map(|b| (b.digest, b.size))
        .collect();

    let report = ctx.store.gc(&s, &now_opts()).await?;
    let mut want = blob_of(&dropped);
    want.push(ld.clone());
    want.sort();
    let mut got = report.blobs.clone();
    got.sort();
    ensure!(got == want, "deleted blobs {got:?}, expected {want:?}");
    ensure!(report.images.is_empty(), "{:?}", ids(&report.images));
    let freed: u64 = sizes
        .iter()
        .filter(|(d, _)| want.contains(d))
        .map(|(_, n)| n)
        .sum();
    ensure!(
        report.freed_bytes == freed,
        "freed {} != {freed}",
        report.freed_bytes
    );
    let mut listed: Vec<Digest> = ctx
        .store
        .list_blobs(&s)
        .await?
        .into_iter()
        .map(|b| b.digest)
        .collect();
    listed.sort();
    let mut named_ds = blob_of(&named);
    named_ds.sort();
    ensure!(listed == named_ds, "{listed:?}");
    for (d, bytes) in blob_of(&named).iter().zip(&kept_bytes) {
        ensure!(&ctx.store.get_blob(&s, d).await? == bytes);
    }
    Ok(())
}

/// An owner whose lease expired no longer keeps its image from collection, while an owner
/// with a live lease does; `pins` lists only the live one.
pub async fn gc_ignores_expired_lease(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let short = small(ctx, &scratch, "short").await?;
    let long = small(ctx, &scratch, "long").await?;
    let (o1, o2) = (
        OwnerName::new("dead-worker")?,
        OwnerName::new("live-worker")?,
    );
    ctx.store
        .acquire_lease(&s, &short.id, &o1, Duration::from_millis(300))
        .await?;
    ctx.store
        .acquire_lease(&s, &long.id, &o2, Duration::from_secs(60))
        .await?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let pins = ctx.store.pins(&s).await?;
    ensure!(
        pins.iter()
            .any(|p| p.image == long.id && p.by == "owner live-worker"),
        "{pins:?}"
    );
    ensure!(pins.iter().all(|p| p.image != short.id), "{pins:?}");
    let report = ctx.store.gc(&s, &now_opts()).await?;
    ensure!(
        ids(&report.images) == ids(std::slice::from_ref(&short)),
        "deleted {:?}",
        ids(&report.images)
    );
    left_exactly(ctx.store.as_ref(), &s, &[&long]).await
}

/// A lease on an image that does not exist is `NotFound` and pins nothing.
pub async fn lease_on_missing_image_not_found(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = small(ctx, &scratch, "a").await?;
    ctx.store.delete_image(&a).await?;
    crate::expect_err!(
        ctx.store
            .acquire_lease(&s, &a.id, &OwnerName::new("w")?, Duration::from_secs(60))
            .await,
        imagestore::Error::NotFound { .. }
    );
    ensure!(ctx.store.pins(&s).await?.is_empty());
    let again = small(ctx, &scratch, "a").await?;
    ctx.store.delete_image(&again).await?;
    Ok(())
}

/// A collection while a write on an unreferenced old parent is in flight keeps the parent
/// (the write pins it); the write then commits on it.
pub async fn gc_spares_parent_of_write_in_flight(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let parent = small(ctx, &scratch, "parent").await?;
    let other = small(ctx, &scratch, "other").await?;
    let layer = Layer::new().file("child", &vec![4u8; 256 << 10]).build();
    let half = layer.len() / 2;
    // The body: the first half at once, the rest when the collection is over.
    let (mut tx, rx) = tokio::io::duplex(half + 1);
    tokio::io::AsyncWriteExt::write_all(&mut tx, &layer[..half]).await?;
    let (store, p, digest) = (ctx.reopen().await?, parent.clone(), sum(&layer));
    let writer = tokio::spawn(async move {
        store
            .write_image(
                &p,
                &ImageId::new("child")?,
                Metadata::new(),
                &digest,
                Box::pin(rx),
            )
            .await
    });
    // Wait until the write has begun (it pins its parent).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let pins = ctx.store.pins(&s).await?;
        if pins
            .iter()
            .any(|p| p.image == parent.id && p.by == "write child")
        {
            break;
        }
        ensure!(!writer.is_finished(), "the write ended early");
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the write never pinned its parent: {pins:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let report = ctx.store.gc(&s, &now_opts()).await?;
    ensure!(
        ids(&report.images) == ids(std::slice::from_ref(&other)),
        "deleted {:?}",
        ids(&report.images)
    );
    ensure!(ctx.store.get_image(&s, &parent.id).await? == parent);
    let rest = layer[half..].to_vec();
    tokio::spawn(async move {
        let _ = tokio::io::AsyncWriteExt::write_all(&mut tx, &rest).await;
    });
    let child = tokio::time::timeout(Duration::from_secs(60), writer).await???;
    ensure!(child.parent.as_ref() == Some(&parent.id));
    left_exactly(ctx.store.as_ref(), &s, &[&parent, &child]).await
}

/// References set from another instance onto images a concurrent collection is deleting:
/// each set either fails `NotFound` (the image went first) or wins and keeps its image;
/// afterwards no reference names a missing image.
pub async fn gc_racing_reference_moves(ctx: &Ctx) -> Result<()> {
    const CANDIDATES: usize = 4;
    let (s, scratch) = fresh(ctx).await?;
    let other = ctx.reopen().await?;
    for round in 0..2u64 {
        let mut candidates = Vec::new();
        for i in 0..CANDIDATES {
            candidates.push(small(ctx, &scratch, &format!("c{round}-{i}")).await?);
        }
        let n = tag(&format!("moving:{round}"))?;
        let (store, s2, cands, n2) = (other.clone(), s.clone(), candidates.clone(), n.clone());
        let mover = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5 * round)).await;
            let mut outcomes = Vec::new();
            for img in &cands {
                outcomes.push(
                    store
                        .set_reference(&s2, &n2, &target(img), &Expect::Any)
                        .await,
                );
            }
            outcomes
        });
        let report = ctx.store.gc(&s, &now_opts()).await?;
        let outcomes = mover.await?;
        let deleted = ids(&report.images);
        for (img, outcome) in candidates.iter().zip(&outcomes) {
            match outcome {
                Ok(_) | Err(imagestore::Error::NotFound { .. }) => {}
                Err(e) => bail!("round {round}: setting {n} to {}: {e}", img.id),
            }
        }
        refs_resolve(ctx.store.as_ref(), &s).await?;
        if let Ok(r) = ctx.store.get_reference(&s, &n).await {
            ensure!(
                !deleted.contains(&r.target.image),
                "round {round}: deleted {}",
                r.target.image
            );
        }
        let left = ctx.store.list_images(&s, &[]).await?;
        for img in &left {
            ensure!(
                !deleted.contains(&img.id),
                "round {round}: {} both deleted and listed",
                img.id
            );
        }
        let usage: u64 = left.iter().map(|i| i.size).sum();
        ensure!(ctx.store.image_storage_usage(&s).await? == usage);
        // Unpin for the next round.
        let _ = ctx.store.delete_reference(&s, &n, &Expect::Any).await;
    }
    Ok(())
}

/// Two collections at once from two instances both succeed; between them they delete each
/// doomed image exactly once, and what is left is exactly what the roots keep.
pub async fn gc_concurrent_runs_consistent(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let t = tree(ctx, &scratch).await?;
    ctx.store
        .set_reference(&s, &tag("app:v1")?, &target(&t.c), &Expect::Absent)
        .await?;
    let loose = b"loose".to_vec();
    let ld = Digest::sha256_of(&loose);
    ctx.store.put_blob(&s, &ld, loose).await?;
    let (s1, s2) = (ctx.store.clone(), ctx.reopen().await?);
    let (sa, sb) = (s.clone(), s.clone());
    let one = tokio::spawn(async move { s1.gc(&sa, &now_opts()).await });
    let two = tokio::spawn(async move { s2.gc(&sb, &now_opts()).await });
    let (r1, r2) = (one.await??, two.await??);
    let (i1, i2) = (ids(&r1.images), ids(&r2.images));
    ensure!(
        i1.is_disjoint(&i2),
        "both deleted {:?}",
        i1.intersection(&i2).collect::<Vec<_>>()
    );
    let all: BTreeSet<ImageId> = i1.union(&i2).cloned().collect();
    let doomed = [&t.d, &t.e, &t.f, &t.g];
    let want: BTreeSet<ImageId> = doomed.iter().map(|i| i.id.clone()).collect();
    ensure!(all == want, "deleted {all:?}");
    let mut blobs: Vec<Digest> = r1.blobs.iter().chain(&r2.blobs).cloned().collect();
    blobs.sort();
    ensure!(blobs == vec![ld], "{blobs:?}");
    let freed: u64 = doomed.iter().map(|i| i.size).sum::<u64>() + 5;
    ensure!(
        r1.freed_bytes + r2.freed_bytes == freed,
        "freed {} + {}",
        r1.freed_bytes,
        r2.freed_bytes
    );
    left_exactly(ctx.store.as_ref(), &s, &[&t.a, &t.b, &t.c]).await?;
    ensure!(ctx.store.list_blobs(&s).await?.is_empty());
    Ok(())
}

/// One call of `delete_images` over images whose ids sort differently by name than by key
/// (`a` before `a-1` by name, after it as `a/` against `a-1/`): every image with a user is
/// refused, whatever its place in the list, and the others go. The lowest id of the batch
/// carries a reference, the highest id an owner, one in between a child outside the batch.
pub async fn delete_images_keeps_users_whatever_the_ids(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let mut batch = Vec::new();
    for id in ["a", "a-1", "a-1-b", "a.2", "a0", "a_3", "a_4"] {
        batch.push(small(ctx, &scratch, id).await?);
    }
    let by_id = |id: &str| -> Result<Image> {
        batch
            .iter()
            .find(|i| i.id.as_str() == id)
            .cloned()
            .with_context(|| format!("no image {id}"))
    };
    let (lowest, prefixed, dotted, highest) =
        (by_id("a")?, by_id("a-1")?, by_id("a.2")?, by_id("a_4")?);
    ctx.store
        .set_reference(&s, &tag("keep:lowest")?, &target(&lowest), &Expect::Absent)
        .await?;
    ctx.store
        .set_reference(&s, &tag("keep:dotted")?, &target(&dotted), &Expect::Absent)
        .await?;
    let child = small(ctx, &prefixed, "b").await?;
    ctx.store
        .acquire(&s, &highest.id, &OwnerName::new("container-1")?)
        .await?;

    let results = ctx.store.delete_images(&s, &batch).await?;
    ensure!(results.len() == batch.len(), "{} results", results.len());
    let mut deleted = Vec::new();
    for (img, r) in batch.iter().zip(&results) {
        let user = match img.id.as_str() {
            "a" => Some("keep:lowest"),
            "a.2" => Some("keep:dotted"),
            "a-1" => Some("child b"),
            "a_4" => Some("container-1"),
            _ => None,
        };
        match (user, r) {
            (Some(user), Err(e)) => {
                in_use_by(e, user).with_context(|| format!("deleting {}", img.id))?
            }
            (Some(user), Ok(_)) => bail!("{} was deleted though {user} uses it", img.id),
            (None, Ok(got)) => {
                ensure!(got.id == img.id, "deleting {} answered {}", img.id, got.id);
                deleted.push(img);
            }
            (None, Err(e)) => bail!("deleting {}: {e}", img.id),
        }
    }
    for img in &deleted {
        gone(ctx, img).await?;
    }
    refs_resolve(ctx.store.as_ref(), &s).await?;
    left_exactly(
        ctx.store.as_ref(),
        &s,
        &[&lowest, &prefixed, &dotted, &highest, &child],
    )
    .await
}
