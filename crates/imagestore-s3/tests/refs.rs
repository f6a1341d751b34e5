//! References, blobs, pins and quotas of the `s3://` backend on moto, with two backend
//! instances standing for two hosts sharing the bucket:
//!
//! * two hosts move one tag from the same old target at once: one wins, the other gets
//!   `Conflict`;
//! * one host deletes an image while another points a reference at it: never both, and a
//!   reference never names a missing image;
//! * two hosts write at the quota's edge at once: the usage never exceeds the quota, and the
//!   refused writes leave nothing behind.
//!
//! The server's URL comes from `IMAGESTORE_TEST_S3_MOTO` (set by `cargo xtask ci` and
//! `cargo xtask conformance s3`, which start moto); under `CI=true` a missing one fails.

// A libtest-mimic test binary: what clippy.toml allows in `#[test]` functions is allowed
// here too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;

use anyhow::{Result, bail, ensure};
use imagestore_core::{
    Descriptor, Digest, Error, Expect, Image, ImageId, ImageStorer, Importer, Metadata, ObjectKind,
    OwnerName, RefName, RefTarget, References, Resolver, StoreName, Url, byte_stream,
};
use imagestore_s3::{Config, S3Store};
use imagestore_test_support::{self as support, Trial};

const VAR: &str = "IMAGESTORE_TEST_S3_MOTO";
const START: &str = "start moto with `cargo xtask conformance s3`";

/// Two backend instances (two hosts) on one fresh prefix of the bucket, with store `s`.
async fn hosts(base: &str, test: &str) -> Result<(S3Store, S3Store, StoreName)> {
    let mut u = Url::parse(base)?;
    u.set_path(&format!("/refs-{test}-{:08x}", rand::random::<u32>()));
    u.query_pairs_mut().append_pair("lease_ttl", "5s");
    let a = S3Store::open(Config::from_url(&u)?).await?;
    let b = S3Store::open(Config::from_url(&u)?).await?;
    let s = StoreName::new("s")?;
    a.create_image_store(&s).await?;
    Ok((a, b, s))
}

/// A one-file tar of `size` bytes that differ with `seed`.
fn layer(seed: u64, size: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(size as u64);
    h.set_entry_type(tar::EntryType::Regular);
    let data: Vec<u8> = (0..size).map(|i| (i as u64 ^ seed) as u8).collect();
    b.append_data(&mut h, format!("f{seed}"), data.as_slice())
        .unwrap();
    b.into_inner().unwrap()
}

/// Writes image `id` on scratch from a layer of `size` bytes.
async fn write(
    h: &S3Store,
    s: &StoreName,
    id: &str,
    seed: u64,
    size: usize,
) -> imagestore_core::Result<Image> {
    let parent = h.get_image(s, &ImageId::scratch()).await?;
    let bytes = layer(seed, size);
    let sum = Digest::sha256_of(&bytes);
    h.write_image(
        &parent,
        &ImageId::new(id)?,
        Metadata::new(),
        &sum,
        byte_stream(std::io::Cursor::new(bytes)),
    )
    .await
}

fn target(id: &str) -> Result<RefTarget> {
    Ok(RefTarget::image(ImageId::new(id)?))
}

async fn tags_move_once_per_old_target(base: String) -> Result<()> {
    let (a, b, s) = hosts(&base, "cas").await?;
    let r = RefName::new("registry:5000/app:latest")?;
    write(&a, &s, "v0", 0, 64).await?;
    a.set_reference(&s, &r, &target("v0")?, &Expect::Absent)
        .await?;
    let mut old = "v0".to_owned();
    for round in 1..=4u64 {
        let (x, y) = (format!("a{round}"), format!("b{round}"));
        write(&a, &s, &x, round * 10, 64).await?;
        write(&b, &s, &y, round * 10 + 1, 64).await?;
        let expect = Expect::Target(target(&old)?);
        let (tx, ty) = (target(&x)?, target(&y)?);
        let (ra, rb) = tokio::join!(
            a.set_reference(&s, &r, &tx, &expect),
            b.set_reference(&s, &r, &ty, &expect),
        );
        let (winner, loser) = match (&ra, &rb) {
            (Ok(_), Err(Error::Conflict { .. })) => (x.clone(), y.clone()),
            (Err(Error::Conflict { .. }), Ok(_)) => (y.clone(), x.clone()),
            other => bail!("round {round}: expected one winner and one Conflict, got {other:?}"),
        };
        let now = b.get_reference(&s, &r).await?;
        ensure!(
            now.target.image.as_str() == winner,
            "round {round}: {now:?}"
        );
        // The old target and the loser are free again; the winner is in use.
        for free in [&old, &loser] {
            let img = a.get_image(&s, &ImageId::new(free.as_str())?).await?;
            a.delete_image(&img).await?;
        }
        let img = b.get_image(&s, &ImageId::new(winner.as_str())?).await?;
        match b.delete_image(&img).await {
            Err(Error::ImageInUse { users, .. }) => {
                ensure!(users == vec![format!("reference {r}")], "users: {users:?}")
            }
            other => bail!("deleting the tagged image: {other:?}"),
        }
        old = winner;
    }
    a.delete_reference(&s, &r, &Expect::Any).await?;
    let img = a.get_image(&s, &ImageId::new(old.as_str())?).await?;
    a.delete_image(&img).await?;
    // A reference alone keeps the store.
    let base_ref = RefName::new("empty")?;
    b.set_reference(
        &s,
        &base_ref,
        &RefTarget::image(ImageId::scratch()),
        &Expect::Absent,
    )
    .await?;
    match a.delete_image_store(&s).await {
        Err(Error::Conflict { reason, .. }) => {
            ensure!(reason.contains("reference empty"), "{reason}")
        }
        other => bail!("deleting a store with a reference: {other:?}"),
    }
    a.delete_reference(&s, &base_ref, &Expect::Any).await?;
    a.delete_image_store(&s).await?;
    Ok(())
}

async fn deletes_and_tags_never_leave_a_dangling_reference(base: String) -> Result<()> {
    let (a, b, s) = hosts(&base, "del").await?;
    let (mut deleted, mut tagged) = (0, 0);
    for round in 0..8u64 {
        let id = format!("i{round}");
        let img = write(&a, &s, &id, round, 64).await?;
        let r = RefName::new(format!("app:{round}"))?;
        let t = target(&id)?;
        let (rd, rs) = tokio::join!(
            a.delete_image(&img),
            b.set_reference(&s, &r, &t, &Expect::Any),
        );
        match (&rd, &rs) {
            (Ok(_), Err(Error::NotFound { .. })) => {
                deleted += 1;
                ensure!(matches!(
                    a.get_reference(&s, &r).await,
                    Err(Error::NotFound { .. })
                ));
            }
            (Err(Error::ImageInUse { .. }), Ok(_)) => {
                tagged += 1;
                let now = a.get_reference(&s, &r).await?;
                a.get_image(&s, &now.target.image).await?;
                a.delete_reference(&s, &r, &Expect::Target(t)).await?;
                a.delete_image(&img).await?;
            }
            other => bail!("round {round}: an illegal outcome {other:?}"),
        }
    }
    eprintln!("delete first {deleted} times, reference first {tagged} times");
    ensure!(a.list_references(&s).await?.is_empty());
    a.delete_image_store(&s).await?;
    Ok(())
}

async fn the_quota_holds_across_hosts(base: String) -> Result<()> {
    const SIZE: usize = 4000;
    let (a, b, s) = hosts(&base, "quota").await?;
    let probe = write(&a, &s, "probe", 99, SIZE).await?;
    let size = a.image_layer_storage_usage(&s, &probe.id).await?;
    a.delete_image(&probe).await?;
    // Room for three layers and a half.
    let quota = size * 3 + size / 2;
    b.set_quota(&s, Some(quota)).await?;
    ensure!(a.quota(&s).await? == Some(quota));
    let ids: Vec<(String, u64)> = (0..6u64).map(|i| (format!("w{i}"), i)).collect();
    let run = |h: S3Store, mine: Vec<(String, u64)>| {
        let s = s.clone();
        async move {
            let mut out = Vec::new();
            for (id, seed) in mine {
                let r = write(&h, &s, &id, seed, SIZE).await;
                out.push((id, seed, r));
            }
            out
        }
    };
    let (ra, rb) = tokio::join!(
        run(a.clone(), ids[..3].to_vec()),
        run(b.clone(), ids[3..].to_vec())
    );
    let all: Vec<_> = ra.into_iter().chain(rb).collect();
    let ok = all.iter().filter(|(_, _, r)| r.is_ok()).count();
    let refused = all
        .iter()
        .filter(|(_, _, r)| matches!(r, Err(Error::QuotaExceeded { .. })))
        .count();
    ensure!(ok == 3 && refused == 3, "{all:?}");
    let usage = a.image_storage_usage(&s).await?;
    ensure!(
        usage == 3 * size && usage <= quota,
        "usage {usage}, quota {quota}"
    );
    ensure!(b.list_images(&s, &[]).await?.len() == 3);
    // A refused write left nothing: once there is room, the same id is written afresh.
    let (_, _, first) = all.iter().find(|(_, _, r)| r.is_ok()).unwrap();
    a.delete_image(first.as_ref().unwrap()).await?;
    let (id, seed, _) = all.iter().find(|(_, _, r)| r.is_err()).unwrap();
    write(&b, &s, id, *seed, SIZE).await?;
    ensure!(a.image_storage_usage(&s).await? == 3 * size);
    b.set_quota(&s, None).await?;
    ensure!(a.quota(&s).await?.is_none());
    Ok(())
}

async fn blobs_pins_and_targets(base: String) -> Result<()> {
    let (a, b, s) = hosts(&base, "blobs").await?;
    let manifest = br#"{"schemaVersion":2}"#.to_vec();
    let md = Digest::sha256_of(&manifest);
    let config = b"{}".to_vec();
    let cd = Digest::sha256_of(&config);
    ensure!(matches!(
        a.put_blob(&s, &md, b"other".to_vec()).await,
        Err(Error::DigestMismatch { .. })
    ));
    a.put_blob(&s, &md, manifest.clone()).await?;
    let img = write(&a, &s, "base", 1, 64).await?;
    let t = RefTarget {
        image: img.id.clone(),
        manifest: Some(Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: md.clone(),
            size: manifest.len() as u64,
        }),
        config: Some(cd.clone()),
        platform: Some("linux/amd64".into()),
    };
    let r = RefName::new("app:1")?;
    match b.set_reference(&s, &r, &t, &Expect::Absent).await {
        Err(Error::NotFound { kind, .. }) => ensure!(kind == ObjectKind::Blob),
        other => bail!("a reference to a missing blob: {other:?}"),
    }
    b.put_blob(&s, &cd, config.clone()).await?;
    b.set_reference(&s, &r, &t, &Expect::Absent).await?;
    ensure!(a.get_blob(&s, &cd).await? == config);
    let listed = a.list_blobs(&s).await?;
    ensure!(
        listed.len() == 2 && listed.iter().all(|bi| bi.modified_unix_ms.is_some()),
        "{listed:?}"
    );
    match a.delete_blob(&s, &md).await {
        Err(Error::Conflict { reason, .. }) => {
            ensure!(reason.contains("reference app:1"), "{reason}")
        }
        other => bail!("deleting a blob a reference names: {other:?}"),
    }
    match a
        .set_reference(&s, &r, &target("nope")?, &Expect::Any)
        .await
    {
        Err(Error::NotFound { .. }) => {}
        other => bail!("a reference to a missing image: {other:?}"),
    }
    ensure!(matches!(
        a.delete_reference(&s, &r, &Expect::Absent).await,
        Err(Error::InvalidArgument { .. })
    ));

    // Pins: an owner and a writable layer.
    let o = OwnerName::new("vm1")?;
    a.acquire(&s, &img.id, &o).await?;
    let w = ImageId::new("rw")?;
    b.create_writable(&img, &w).await?;
    let pins = a.pins(&s).await?;
    let by: Vec<String> = pins
        .iter()
        .filter(|p| p.image == img.id)
        .map(|p| p.by.clone())
        .collect();
    ensure!(
        by == vec!["owner vm1".to_owned(), "writable rw".to_owned()],
        "{pins:?}"
    );
    b.delete_writable(&s, &w).await?;
    a.release(&s, &img.id, &o).await?;
    ensure!(a.pins(&s).await?.is_empty());

    b.delete_reference(&s, &r, &Expect::Target(t)).await?;
    a.delete_blob(&s, &md).await?;
    ensure!(matches!(
        a.delete_blob(&s, &md).await,
        Err(Error::NotFound { .. })
    ));
    a.delete_image(&img).await?;
    Ok(())
}

type Body = fn(String) -> Pin<Box<dyn Future<Output = Result<()>>>>;

fn main() -> ExitCode {
    let tests: Vec<(&str, Body)> = vec![
        ("tags_move_once_per_old_target", |u| {
            Box::pin(tags_move_once_per_old_target(u))
        }),
        ("deletes_and_tags_never_leave_a_dangling_reference", |u| {
            Box::pin(deletes_and_tags_never_leave_a_dangling_reference(u))
        }),
        ("the_quota_holds_across_hosts", |u| {
            Box::pin(the_quota_holds_across_hosts(u))
        }),
        ("blobs_pins_and_targets", |u| {
            Box::pin(blobs_pins_and_targets(u))
        }),
    ];
    let trials: Vec<Trial> = tests
        .into_iter()
        .map(|(name, body)| support::trial_async(name, support::env(VAR, START), 2, body))
        .collect();
    support::run(trials)
}
