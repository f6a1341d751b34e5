//! References: names for images, changed by compare-and-swap, keeping their images in use.

use std::sync::Arc;

use anyhow::{Result, bail, ensure};
use imagestore::{Descriptor, Digest, Expect, RefName, RefTarget};
use imagestore::{Error, Image, ImageId, ImageStorerExt, ObjectKind, StoreName};

use super::{fresh, in_use_by, put};
use crate::tars::Layer;
use crate::{Ctx, expect_err};

/// A reference name.
pub(crate) fn tag(name: &str) -> Result<RefName> {
    Ok(RefName::new(name)?)
}

/// A target naming only `image`.
pub(crate) fn target(image: &Image) -> RefTarget {
    RefTarget::image(image.id.clone())
}

/// A target naming `image` with a manifest and a config, both stored as blobs of `s` first.
pub(crate) async fn target_with_blobs(
    ctx: &Ctx,
    s: &StoreName,
    image: &Image,
    seed: &str,
) -> Result<RefTarget> {
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","seed":"{seed}"}}"#
    )
    .into_bytes();
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":"{seed}"}}"#).into_bytes();
    let (md, cd) = (Digest::sha256_of(&manifest), Digest::sha256_of(&config));
    let size = manifest.len() as u64;
    ctx.store.put_blob(s, &md, manifest).await?;
    ctx.store.put_blob(s, &cd, config).await?;
    Ok(RefTarget {
        image: image.id.clone(),
        manifest: Some(Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".to_owned(),
            digest: md,
            size,
        }),
        config: Some(cd),
        platform: Some("linux/amd64".to_owned()),
    })
}

/// A small image with one file named after its id.
pub(crate) async fn small(ctx: &Ctx, parent: &Image, id: &str) -> Result<Image> {
    put(
        ctx,
        parent,
        id,
        &Layer::new().file(id, id.as_bytes()).build(),
    )
    .await
}

/// Fails unless `image` can no longer be found.
pub(crate) async fn gone(ctx: &Ctx, image: &Image) -> Result<()> {
    match ctx.store.get_image(&image.store, &image.id).await {
        Err(Error::NotFound { .. }) => Ok(()),
        Err(e) => bail!("get {}: {e}", image.id),
        Ok(_) => bail!("{} still exists", image.id),
    }
}

/// The users an `ImageInUse` names, or a failure for anything else.
fn users(r: imagestore::Result<Image>) -> Result<Vec<String>> {
    match r {
        Err(Error::ImageInUse { users, .. }) => Ok(users),
        other => bail!("expected ImageInUse, got {other:?}"),
    }
}

/// A reference is set (with its manifest, config and platform), read back, listed sorted by
/// name and deleted, and a deleted one is `NotFound`.
pub async fn reference_set_get_list_delete(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = small(ctx, &scratch, "a").await?;
    let full = target_with_blobs(ctx, &s, &a, "a").await?;
    let (r1, r2) = (tag("registry.local:5000/app:v1")?, tag("app@sha256:0abc")?);
    ensure!(ctx.store.list_references(&s).await?.is_empty());
    let set = ctx
        .store
        .set_reference(&s, &r1, &full, &Expect::Absent)
        .await?;
    ensure!(
        set.name == r1 && set.store == s && set.target == full,
        "{set:?}"
    );
    ensure!(set.updated_unix_ms > 0);
    ensure!(ctx.store.get_reference(&s, &r1).await? == set);
    let set2 = ctx
        .store
        .set_reference(&s, &r2, &target(&a), &Expect::Any)
        .await?;
    let listed = ctx.store.list_references(&s).await?;
    ensure!(listed == vec![set2.clone(), set.clone()], "{listed:?}");
    // Another instance sees the same.
    ensure!(ctx.reopen().await?.get_reference(&s, &r1).await? == set);

    let deleted = ctx.store.delete_reference(&s, &r1, &Expect::Any).await?;
    ensure!(deleted == set, "{deleted:?}");
    expect_err!(
        ctx.store.get_reference(&s, &r1).await,
        Error::NotFound {
            kind: ObjectKind::Reference,
            ..
        }
    );
    expect_err!(
        ctx.store.delete_reference(&s, &r1, &Expect::Any).await,
        Error::NotFound { .. }
    );
    ensure!(ctx.store.list_references(&s).await? == vec![set2]);
    Ok(())
}

/// Two tags of one image both survive and both keep it in use; removing one leaves it in use
/// by the other; removing both frees it.
pub async fn two_tags_pin_one_image(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = small(ctx, &scratch, "a").await?;
    let (latest, v1) = (tag("app:latest")?, tag("app:v1")?);
    for n in [&latest, &v1] {
        ctx.store
            .set_reference(&s, n, &target(&a), &Expect::Absent)
            .await?;
    }
    let names: Vec<RefName> = ctx
        .store
        .list_references(&s)
        .await?
        .into_iter()
        .map(|r| r.name)
        .collect();
    ensure!(names == vec![latest.clone(), v1.clone()], "{names:?}");
    let u = users(ctx.store.delete_image(&a).await)?;
    ensure!(
        u.contains(&"reference app:latest".to_owned())
            && u.contains(&"reference app:v1".to_owned()),
        "{u:?}"
    );
    ctx.store
        .delete_reference(&s, &latest, &Expect::Target(target(&a)))
        .await?;
    let u = users(ctx.store.delete_image(&a).await)?;
    ensure!(u == vec!["reference app:v1".to_owned()], "{u:?}");
    ensure!(ctx.store.get_reference(&s, &v1).await?.target == target(&a));
    ctx.store.delete_reference(&s, &v1, &Expect::Any).await?;
    ctx.store.delete_image(&a).await?;
    gone(ctx, &a).await
}

/// Moving a tag to another image unpins the image it named before and pins the new one.
pub async fn moving_a_tag_unpins_the_old_image(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = small(ctx, &scratch, "a").await?;
    let b = small(ctx, &scratch, "b").await?;
    let n = tag("app:latest")?;
    ctx.store
        .set_reference(&s, &n, &target(&a), &Expect::Absent)
        .await?;
    let moved = ctx
        .store
        .set_reference(&s, &n, &target(&b), &Expect::Target(target(&a)))
        .await?;
    ensure!(moved.target == target(&b));
    ensure!(ctx.store.get_reference(&s, &n).await?.target == target(&b));
    ensure!(ctx.store.list_references(&s).await?.len() == 1);
    let err = ctx.store.delete_image(&b).await.err();
    in_use_by(
        &err.ok_or_else(|| anyhow::anyhow!("deleted the image a tag names"))?,
        "reference app:latest",
    )?;
    ctx.store.delete_image(&a).await?;
    gone(ctx, &a).await
}

/// `Expect::Absent` on a reference that exists is a `Conflict` and changes nothing: the
/// reference still names its image, and the image it would have named stays unpinned.
pub async fn expect_absent_on_existing_conflicts(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = small(ctx, &scratch, "a").await?;
    let b = small(ctx, &scratch, "b").await?;
    let n = tag("app:v1")?;
    let before = ctx
        .store
        .set_reference(&s, &n, &target(&a), &Expect::Absent)
        .await?;
    expect_err!(
        ctx.store
            .set_reference(&s, &n, &target(&b), &Expect::Absent)
            .await,
        Error::Conflict {
            kind: ObjectKind::Reference,
            ..
        }
    );
    ensure!(ctx.store.get_reference(&s, &n).await? == before);
    ensure!(ctx.store.list_references(&s).await? == vec![before]);
    ctx.store.delete_image(&b).await?;
    expect_err!(ctx.store.delete_image(&a).await, Error::ImageInUse { .. });
    Ok(())
}

/// A change expecting a target the reference no longer names (a stale read) is a `Conflict`
/// and changes nothing; an expectation on an absent reference is one too.
pub async fn stale_expectation_conflicts(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = small(ctx, &scratch, "a").await?;
    let b = small(ctx, &scratch, "b").await?;
    let c = small(ctx, &scratch, "c").await?;
    let n = tag("app:v1")?;
    expect_err!(
        ctx.store
            .set_reference(&s, &n, &target(&c), &Expect::Target(target(&a)))
            .await,
        Error::Conflict { .. }
    );
    expect_err!(
        ctx.store.get_reference(&s, &n).await,
        Error::NotFound { .. }
    );
    ctx.store
        .set_reference(&s, &n, &target(&a), &Expect::Absent)
        .await?;
    let now = ctx
        .store
        .set_reference(&s, &n, &target(&b), &Expect::Target(target(&a)))
        .await?;
    // A writer that read `a` before the move.
    expect_err!(
        ctx.store
            .set_reference(&s, &n, &target(&c), &Expect::Target(target(&a)))
            .await,
        Error::Conflict {
            kind: ObjectKind::Reference,
            ..
        }
    );
    ensure!(ctx.store.get_reference(&s, &n).await? == now);
    // The same image with other blobs is another target.
    let richer = target_with_blobs(ctx, &s, &b, "b").await?;
    expect_err!(
        ctx.store
            .set_reference(&s, &n, &target(&c), &Expect::Target(richer))
            .await,
        Error::Conflict { .. }
    );
    ensure!(ctx.store.get_reference(&s, &n).await? == now);
    ctx.store.delete_image(&c).await?;
    Ok(())
}

/// Deleting a reference with a stale expectation is a `Conflict` and keeps it; expecting it
/// absent is `InvalidArgument`; the right expectation deletes it.
pub async fn delete_reference_stale_expectation_conflicts(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = small(ctx, &scratch, "a").await?;
    let b = small(ctx, &scratch, "b").await?;
    let n = tag("app:v1")?;
    ctx.store
        .set_reference(&s, &n, &target(&a), &Expect::Absent)
        .await?;
    let now = ctx
        .store
        .set_reference(&s, &n, &target(&b), &Expect::Any)
        .await?;
    expect_err!(
        ctx.store
            .delete_reference(&s, &n, &Expect::Target(target(&a)))
            .await,
        Error::Conflict {
            kind: ObjectKind::Reference,
            ..
        }
    );
    expect_err!(
        ctx.store.delete_reference(&s, &n, &Expect::Absent).await,
        Error::InvalidArgument(_)
    );
    ensure!(ctx.store.get_reference(&s, &n).await? == now);
    expect_err!(ctx.store.delete_image(&b).await, Error::ImageInUse { .. });
    let deleted = ctx
        .store
        .delete_reference(&s, &n, &Expect::Target(target(&b)))
        .await?;
    ensure!(deleted == now);
    ensure!(ctx.store.list_references(&s).await?.is_empty());
    ctx.store.delete_image(&b).await?;
    Ok(())
}

/// A reference to an image that does not exist (never written, or deleted) is `NotFound`
/// and nothing is set.
pub async fn reference_to_missing_image_not_found(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = small(ctx, &scratch, "a").await?;
    let n = tag("app:v1")?;
    let ghost = RefTarget::image(ImageId::new("never-written")?);
    expect_err!(
        ctx.store.set_reference(&s, &n, &ghost, &Expect::Any).await,
        Error::NotFound {
            kind: ObjectKind::Image,
            ..
        }
    );
    ctx.store.delete_image(&a).await?;
    expect_err!(
        ctx.store
            .set_reference(&s, &n, &target(&a), &Expect::Absent)
            .await,
        Error::NotFound {
            kind: ObjectKind::Image,
            ..
        }
    );
    expect_err!(
        ctx.store.get_reference(&s, &n).await,
        Error::NotFound { .. }
    );
    ensure!(ctx.store.list_references(&s).await?.is_empty());
    // The store can go: nothing was left behind.
    ctx.store.delete_image_store(&s).await?;
    Ok(())
}

/// A reference naming a manifest or config blob the store does not hold is `NotFound` with
/// kind `Blob`, and nothing is set; once the blobs are put it is set.
pub async fn reference_to_missing_blob_not_found(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = small(ctx, &scratch, "a").await?;
    let n = tag("app:v1")?;
    let manifest = br#"{"schemaVersion":2}"#.to_vec();
    let config = br#"{"os":"linux"}"#.to_vec();
    let (md, cd) = (Digest::sha256_of(&manifest), Digest::sha256_of(&config));
    let t = RefTarget {
        image: a.id.clone(),
        manifest: Some(Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".to_owned(),
            digest: md.clone(),
            size: manifest.len() as u64,
        }),
        config: Some(cd.clone()),
        platform: None,
    };
    expect_err!(
        ctx.store.set_reference(&s, &n, &t, &Expect::Any).await,
        Error::NotFound {
            kind: ObjectKind::Blob,
            ..
        }
    );
    // The manifest alone is not enough.
    ctx.store.put_blob(&s, &md, manifest).await?;
    expect_err!(
        ctx.store.set_reference(&s, &n, &t, &Expect::Any).await,
        Error::NotFound {
            kind: ObjectKind::Blob,
            ..
        }
    );
    expect_err!(
        ctx.store.get_reference(&s, &n).await,
        Error::NotFound { .. }
    );
    ctx.store.delete_image(&a).await?;
    let a = small(ctx, &scratch, "a").await?;
    ctx.store.put_blob(&s, &cd, config).await?;
    let set = ctx.store.set_reference(&s, &n, &t, &Expect::Absent).await?;
    ensure!(set.target == t);
    expect_err!(ctx.store.delete_image(&a).await, Error::ImageInUse { .. });
    Ok(())
}

/// Deleting a referenced image is refused with `ImageInUse` naming `reference <name>`, on
/// another instance too, and the image stays whole.
pub async fn referenced_image_delete_in_use(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = small(ctx, &scratch, "a").await?;
    let n = tag("docker.io/library/alpine:3.19")?;
    ctx.store
        .set_reference(&s, &n, &target(&a), &Expect::Absent)
        .await?;
    for store in [ctx.store.clone(), ctx.reopen().await?] {
        let err = store
            .delete_image(&a)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("deleted a referenced image"))?;
        in_use_by(&err, "reference docker.io/library/alpine:3.19")?;
    }
    expect_err!(
        ctx.store.delete_branch(&a, &[]).await,
        Error::ImageInUse { .. }
    );
    ensure!(ctx.store.get_image(&s, &a.id).await? == a);
    ensure!(ctx.store.image_storage_usage(&s).await? == a.size);
    Ok(())
}

/// A branch delete walks up until a referenced parent and leaves it (and what is below it).
pub async fn delete_branch_stops_at_referenced_parent(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = small(ctx, &scratch, "a").await?;
    let b = small(ctx, &a, "b").await?;
    let c = small(ctx, &b, "c").await?;
    let d = small(ctx, &c, "d").await?;
    ctx.store
        .set_reference(&s, &tag("base:1")?, &target(&b), &Expect::Absent)
        .await?;
    let gone_ids: Vec<ImageId> = ctx
        .store
        .delete_branch(&d, &[])
        .await?
        .into_iter()
        .map(|i| i.id)
        .collect();
    ensure!(gone_ids == vec![d.id.clone(), c.id.clone()], "{gone_ids:?}");
    let left = ctx.store.list_images(&s, &[]).await?;
    ensure!(left == vec![a.clone(), b.clone()], "{left:?}");
    ensure!(ctx.store.image_storage_usage(&s).await? == a.size + b.size);
    Ok(())
}

/// A store with references cannot be deleted; once they and the images are gone it can.
pub async fn store_delete_refused_while_references_exist(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = small(ctx, &scratch, "a").await?;
    let n = tag("app:v1")?;
    ctx.store
        .set_reference(&s, &n, &target(&a), &Expect::Absent)
        .await?;
    match ctx.store.delete_image_store(&s).await {
        Err(Error::Conflict {
            kind: ObjectKind::Store,
            reason,
            ..
        }) => ensure!(
            reason.contains("app:v1"),
            "the refusal names the reference: {reason}"
        ),
        other => bail!("expected a Conflict on the store, got {other:?}"),
    }
    ensure!(ctx.store.get_reference(&s, &n).await?.target == target(&a));
    ensure!(ctx.store.get_image(&s, &a.id).await? == a);
    ctx.store.delete_reference(&s, &n, &Expect::Any).await?;
    ctx.store.delete_image(&a).await?;
    ctx.store.delete_image_store(&s).await?;
    expect_err!(ctx.store.get_image_store(&s).await, Error::NotFound { .. });
    Ok(())
}

/// Concurrent moves of one reference from two backend instances, each expecting the target
/// they all read: exactly one wins, every other is a `Conflict`, and the reference names the
/// winner's image, which alone is pinned.
pub async fn reference_cas_race_across_instances(ctx: &Ctx) -> Result<()> {
    // Four racers: enough to contend, few enough for stores whose conditional writes are slow.
    const RACERS: usize = 4;
    let (s, scratch) = fresh(ctx).await?;
    let n = tag("app:latest")?;
    let mut base = small(ctx, &scratch, "old").await?;
    ctx.store
        .set_reference(&s, &n, &target(&base), &Expect::Absent)
        .await?;
    let instances = [ctx.store.clone(), ctx.reopen().await?];
    for round in 0..2 {
        let mut candidates = Vec::new();
        for i in 0..RACERS {
            candidates.push(small(ctx, &scratch, &format!("r{round}-{i}")).await?);
        }
        let start = Arc::new(tokio::sync::Barrier::new(RACERS));
        let mut tasks = Vec::new();
        for (i, img) in candidates.iter().enumerate() {
            let store = instances[i % 2].clone();
            let (s, n, t) = (s.clone(), n.clone(), target(img));
            let expect = Expect::Target(target(&base));
            let start = start.clone();
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                store.set_reference(&s, &n, &t, &expect).await
            }));
        }
        let mut winners = Vec::new();
        for (i, t) in tasks.into_iter().enumerate() {
            match t.await? {
                Ok(r) => winners.push((i, r)),
                Err(Error::Conflict { .. }) => {}
                Err(e) => bail!("round {round}: racer {i}: {e}"),
            }
        }
        ensure!(
            winners.len() == 1,
            "round {round}: {} winners",
            winners.len()
        );
        let (w, set) = winners.remove(0);
        let now = instances[1].get_reference(&s, &n).await?;
        ensure!(now == set, "round {round}: {now:?} != {set:?}");
        ensure!(now.target == target(&candidates[w]));
        for (i, img) in candidates.iter().enumerate() {
            let pinned = instances[i % 2]
                .delete_image(img)
                .await
                .err()
                .is_some_and(|e| e.is_image_in_use());
            ensure!(
                pinned == (i == w),
                "round {round}: {} pinned: {pinned}",
                img.id
            );
        }
        // The image the reference named before the race is free.
        ctx.store.delete_image(&base).await?;
        base = candidates.swap_remove(w);
    }
    ensure!(ctx.store.list_images(&s, &[]).await? == vec![base]);
    Ok(())
}
