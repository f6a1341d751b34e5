//! Checkout into a directory.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result, ensure};
use imagestore::layer::checkout::CheckoutOptions;
use imagestore::{FilterSpec, ImageId};

use super::{fresh, put};
use crate::Ctx;
use crate::tars::{Layer, stream};

fn rootless() -> CheckoutOptions {
    CheckoutOptions { rootless: true }
}

/// A checkout holds the merged tree: files, modes, symlinks, directories.
pub async fn checkout_tree(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = put(
        ctx,
        &scratch,
        "co1",
        &Layer::new()
            .dir("bin")
            .file_mode("bin/tool", b"#!/bin/sh\n", 0o755)
            .file("gone", b"g")
            .build(),
    )
    .await?;
    let b = put(
        ctx,
        &a,
        "co2",
        &Layer::new()
            .file_mode("secret", b"s", 0o600)
            .symlink("bin/link", "tool")
            .whiteout("gone")
            .build(),
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let dest = dir.path().join("root");
    let report = ctx.store.checkout(&s, &b.id, &dest, &rootless()).await?;
    ensure!(report.entries > 0);
    ensure!(std::fs::read(dest.join("bin/tool"))? == b"#!/bin/sh\n");
    ensure!(
        std::fs::metadata(dest.join("bin/tool"))?
            .permissions()
            .mode()
            & 0o7777
            == 0o755
    );
    ensure!(std::fs::metadata(dest.join("secret"))?.permissions().mode() & 0o7777 == 0o600);
    ensure!(std::fs::read_link(dest.join("bin/link"))? == Path::new("tool"));
    ensure!(std::fs::read_link(dest.join("etc/mtab"))? == Path::new("/proc/mounts"));
    ensure!(std::fs::metadata(dest.join("proc"))?.permissions().mode() & 0o777 == 0o555);
    ensure!(!dest.join("gone").exists());
    ensure!(std::fs::metadata(dest.join("bin/tool"))?.mtime() == 1_700_000_000);
    Ok(())
}

/// Hardlinks stay hardlinks.
pub async fn checkout_keeps_hardlinks(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = put(
        ctx,
        &scratch,
        "ch1",
        &Layer::new()
            .file("a", b"same")
            .hardlink("b", "a")
            .hardlink("c", "a")
            .build(),
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let dest = dir.path().join("root");
    ctx.store.checkout(&s, &a.id, &dest, &rootless()).await?;
    let ino = |p: &str| std::fs::metadata(dest.join(p)).map(|m| (m.ino(), m.nlink()));
    let (ia, na) = ino("a")?;
    ensure!(ino("b")?.0 == ia && ino("c")?.0 == ia && na == 3);
    Ok(())
}

/// Absolute symlinks in the image never make a checkout write outside its directory.
pub async fn checkout_stays_inside(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let outside = tempfile::tempdir()?;
    let victim = outside.path().join("victim");
    std::fs::write(&victim, b"untouched")?;
    let target = outside.path().display().to_string();
    let a = put(
        ctx,
        &scratch,
        "ci1",
        &Layer::new()
            .symlink("escape", &target)
            .dir("d")
            .symlink("d/up", "../../../../..")
            .build(),
    )
    .await?;
    // A later layer writes a file whose parent directory is named like the link target.
    let b = put(
        ctx,
        &a,
        "ci2",
        &Layer::new()
            .file(
                &format!("{}/victim", target.trim_start_matches('/')),
                b"inside",
            )
            .build(),
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let dest = dir.path().join("root");
    ctx.store.checkout(&s, &b.id, &dest, &rootless()).await?;
    ensure!(std::fs::read(&victim)? == b"untouched");
    ensure!(std::fs::read(dest.join(target.trim_start_matches('/')).join("victim"))? == b"inside");
    ensure!(
        std::fs::symlink_metadata(dest.join("escape"))?
            .file_type()
            .is_symlink()
    );
    // A non-empty destination is refused.
    let again = ctx.store.checkout(&s, &b.id, &dest, &rootless()).await;
    ensure!(
        matches!(again, Err(imagestore::Error::InvalidArgument(_))),
        "{again:?}"
    );
    Ok(())
}

/// A writable layer checks out with its imports applied.
pub async fn checkout_writable_layer(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let base = put(
        ctx,
        &scratch,
        "cw",
        &Layer::new().file("f", b"base").build(),
    )
    .await?;
    let w = ctx
        .store
        .create_writable(&base, &ImageId::new("rw6")?)
        .await?;
    ctx.store
        .import(
            &s,
            &w.id,
            &FilterSpec::all(),
            stream(&Layer::new().file("f", b"written").build()),
        )
        .await?;
    let dir = tempfile::tempdir()?;
    let dest = dir.path().join("root");
    ctx.store.checkout(&s, &w.id, &dest, &rootless()).await?;
    ensure!(std::fs::read(dest.join("f")).context("f")? == b"written");
    Ok(())
}
