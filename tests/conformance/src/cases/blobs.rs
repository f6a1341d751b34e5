//! Blobs: the manifests and configs references name, kept byte for byte by digest.

use anyhow::{Result, ensure};
use imagestore::refs::MAX_BLOB_BYTES;
use imagestore::{Digest, Expect};
use imagestore::{Error, ObjectKind};

use super::fresh;
use super::refs::{small, tag, target_with_blobs};
use crate::{Ctx, expect_err};

/// Bytes no text encoding or line-ending conversion leaves alone: every byte value, CR LF,
/// a NUL, and no trailing newline.
fn awkward_bytes(len: usize) -> Vec<u8> {
    let mut b: Vec<u8> = (0..=255u8).collect();
    b.extend_from_slice(b"\r\n\0{\"k\":\"v\"}\r");
    b.iter().copied().cycle().take(len).collect()
}

/// A blob comes back exactly as put (same bytes, same digest), on another instance too.
pub async fn blob_round_trip_byte_exact(ctx: &Ctx) -> Result<()> {
    let (s, _) = fresh(ctx).await?;
    for len in [0usize, 1, 300, 70_001] {
        let bytes = awkward_bytes(len);
        let d = Digest::sha256_of(&bytes);
        ctx.store.put_blob(&s, &d, bytes.clone()).await?;
        for store in [ctx.store.clone(), ctx.reopen().await?] {
            let got = store.get_blob(&s, &d).await?;
            ensure!(
                got == bytes,
                "blob of {len} bytes came back as {} bytes",
                got.len()
            );
            ensure!(Digest::sha256_of(&got) == d);
        }
    }
    Ok(())
}

/// Bytes that do not hash to the digest given are `DigestMismatch` naming both digests, and
/// nothing is stored.
pub async fn blob_wrong_digest_mismatch(ctx: &Ctx) -> Result<()> {
    let (s, _) = fresh(ctx).await?;
    let claimed = Digest::sha256_of(b"the manifest");
    match ctx.store.put_blob(&s, &claimed, b"another".to_vec()).await {
        Err(Error::DigestMismatch { expected, actual }) => {
            ensure!(expected == claimed, "{expected}");
            ensure!(actual == Digest::sha256_of(b"another"), "{actual}");
        }
        other => anyhow::bail!("expected DigestMismatch, got {other:?}"),
    }
    expect_err!(
        ctx.store.get_blob(&s, &claimed).await,
        Error::NotFound {
            kind: ObjectKind::Blob,
            ..
        }
    );
    ensure!(ctx.store.list_blobs(&s).await?.is_empty());
    Ok(())
}

/// A blob one byte over the limit is `LimitExceeded` and not stored; one at the limit is.
pub async fn blob_oversize_limit_exceeded(ctx: &Ctx) -> Result<()> {
    let (s, _) = fresh(ctx).await?;
    let over = vec![7u8; MAX_BLOB_BYTES + 1];
    let d = Digest::sha256_of(&over);
    expect_err!(
        ctx.store.put_blob(&s, &d, over).await,
        Error::LimitExceeded { .. }
    );
    expect_err!(ctx.store.get_blob(&s, &d).await, Error::NotFound { .. });
    ensure!(ctx.store.list_blobs(&s).await?.is_empty());
    let max = vec![7u8; MAX_BLOB_BYTES];
    let d = Digest::sha256_of(&max);
    ctx.store.put_blob(&s, &d, max).await?;
    ensure!(ctx.store.get_blob(&s, &d).await?.len() == MAX_BLOB_BYTES);
    Ok(())
}

/// The blob listing holds every blob with its size, sorted by digest.
pub async fn blobs_listed_with_size(ctx: &Ctx) -> Result<()> {
    let (s, _) = fresh(ctx).await?;
    let mut want = Vec::new();
    for len in [0usize, 17, 4096] {
        let bytes = awkward_bytes(len);
        let d = Digest::sha256_of(&bytes);
        ctx.store.put_blob(&s, &d, bytes).await?;
        want.push((d, len as u64));
    }
    want.sort();
    let listed: Vec<(Digest, u64)> = ctx
        .store
        .list_blobs(&s)
        .await?
        .into_iter()
        .map(|b| (b.digest, b.size))
        .collect();
    ensure!(listed == want, "{listed:?} != {want:?}");
    Ok(())
}

/// A blob a reference names cannot be deleted (`Conflict`, kind `Blob`) and stays readable;
/// once the reference is gone it can, and is then `NotFound`.
pub async fn referenced_blob_delete_conflicts(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = small(ctx, &scratch, "a").await?;
    let t = target_with_blobs(ctx, &s, &a, "a").await?;
    let n = tag("app:v1")?;
    ctx.store.set_reference(&s, &n, &t, &Expect::Absent).await?;
    let manifest = t.manifest.clone().map(|m| m.digest);
    for d in manifest.iter().chain(t.config.iter()) {
        let before = ctx.store.get_blob(&s, d).await?;
        expect_err!(
            ctx.store.delete_blob(&s, d).await,
            Error::Conflict {
                kind: ObjectKind::Blob,
                ..
            }
        );
        ensure!(ctx.store.get_blob(&s, d).await? == before);
    }
    ctx.store.delete_reference(&s, &n, &Expect::Any).await?;
    for d in manifest.iter().chain(t.config.iter()) {
        ctx.store.delete_blob(&s, d).await?;
        expect_err!(ctx.store.get_blob(&s, d).await, Error::NotFound { .. });
    }
    ensure!(ctx.store.list_blobs(&s).await?.is_empty());
    Ok(())
}

/// Deleting a blob that does not exist (never put, or deleted already) is `NotFound`.
pub async fn delete_missing_blob_not_found(ctx: &Ctx) -> Result<()> {
    let (s, _) = fresh(ctx).await?;
    let d = Digest::sha256_of(b"never put");
    expect_err!(
        ctx.store.delete_blob(&s, &d).await,
        Error::NotFound {
            kind: ObjectKind::Blob,
            ..
        }
    );
    ctx.store.put_blob(&s, &d, b"never put".to_vec()).await?;
    ctx.store.delete_blob(&s, &d).await?;
    expect_err!(ctx.store.delete_blob(&s, &d).await, Error::NotFound { .. });
    expect_err!(ctx.store.get_blob(&s, &d).await, Error::NotFound { .. });
    Ok(())
}

/// Putting a blob again (also while a reference names it) is fine: one blob, same bytes,
/// its time not older than before.
pub async fn blob_put_again_is_fine(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = small(ctx, &scratch, "a").await?;
    let t = target_with_blobs(ctx, &s, &a, "again").await?;
    let d = t
        .config
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no config"))?;
    let bytes = ctx.store.get_blob(&s, &d).await?;
    let first = ctx.store.list_blobs(&s).await?;
    ctx.store.put_blob(&s, &d, bytes.clone()).await?;
    ctx.store
        .set_reference(&s, &tag("app:v1")?, &t, &Expect::Absent)
        .await?;
    ctx.reopen().await?.put_blob(&s, &d, bytes.clone()).await?;
    let second = ctx.store.list_blobs(&s).await?;
    ensure!(second.len() == 2, "{second:?}");
    for (b1, b2) in first.iter().zip(&second) {
        ensure!(
            b1.digest == b2.digest && b1.size == b2.size,
            "{b1:?} {b2:?}"
        );
        ensure!(b1.modified_unix_ms <= b2.modified_unix_ms, "{b1:?} {b2:?}");
    }
    ensure!(ctx.store.get_blob(&s, &d).await? == bytes);
    Ok(())
}
