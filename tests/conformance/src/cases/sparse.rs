//! Sparse files that declare far more than they store, and hardlinks whose target their own
//! layer deletes.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result, anyhow, ensure};
use imagestore::layer::checkout::CheckoutOptions;
use imagestore::layer::tar_reader::{TarLimits, TarReader};
use imagestore::{FilterSpec, ImageId};

use super::{fresh, put};
use crate::Ctx;
use crate::tars::{Layer, entries, find, read_all};

/// One entry as the engine's own reader sees it: `(path, logical size, sparse map, stored data)`.
type Stored = (String, u64, Option<Vec<(u64, u64)>>, Vec<u8>);

/// The entries of an exported tar read with the engine's own reader, so holes are never
/// expanded.
fn sparse_entries(bytes: &[u8]) -> Result<Vec<Stored>> {
    let mut r = TarReader::new(bytes, TarLimits::default());
    let mut out = Vec::new();
    while let Some(e) = r.next_entry()? {
        let mut data = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = r.read_data(&mut buf)?;
            if n == 0 {
                break;
            }
            data.extend_from_slice(&buf[..n]);
        }
        out.push((
            e.name.trim_end_matches('/').to_owned(),
            e.size,
            e.sparse,
            data,
        ));
    }
    Ok(out)
}

/// A tiny layer declaring a sparse file of `size` bytes (two 4-byte segments, at its start and
/// its end) is written, exported whole and as a diff, and checked out, all at the cost of
/// what it stores: the exports are GNU sparse entries of a few KiB and the checked-out file
/// keeps its holes (its allocated blocks, not its length, are asserted). The raw export is the
/// layer byte for byte.
pub async fn large_sparse_file_stays_sparse(ctx: &Ctx, size: u64) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let layer = Layer::new()
        .file("small", b"s")
        .sparse("big.img", size, &[(0, b"head"), (size - 4, b"tail")])
        .build();
    ensure!(layer.len() < 8 << 10, "the layer is {} bytes", layer.len());
    let a = put(ctx, &scratch, "sparse-big", &layer).await?;
    // Exports pad segments to 512 bytes, as GNU tar writes them.
    let map = vec![(0, 512), (size - 4, 4)];
    let mut stored = b"head".to_vec();
    stored.resize(512, 0);
    stored.extend_from_slice(b"tail");
    for ancestor in [None, Some(ImageId::scratch())] {
        let bytes = read_all(
            ctx.store
                .export(&s, &a.id, ancestor.as_ref(), &FilterSpec::all(), true)
                .await?,
        )
        .await?;
        ensure!(bytes.len() < 64 << 10, "export is {} bytes", bytes.len());
        let got = sparse_entries(&bytes)?;
        let big = got
            .iter()
            .find(|e| e.0 == "big.img")
            .ok_or_else(|| anyhow!("no big.img in the export"))?;
        ensure!(
            big.1 == size && big.2.as_ref() == Some(&map),
            "{:?}",
            (big.1, &big.2)
        );
        ensure!(big.3 == stored, "stored data of {} bytes", big.3.len());
    }
    let raw = read_all(ctx.store.export_raw(&s, &a.id).await?).await?;
    ensure!(raw == layer, "the raw export is not the layer");

    let dir = tempfile::tempdir()?;
    let dest = dir.path().join("root");
    let opts = CheckoutOptions { rootless: true };
    let report = ctx.store.checkout(&s, &a.id, &dest, &opts).await?;
    ensure!(
        report.bytes < 1 << 20,
        "checkout wrote {} bytes",
        report.bytes
    );
    let path = dest.join("big.img");
    let meta = std::fs::metadata(&path)?;
    ensure!(meta.len() == size, "length {}", meta.len());
    ensure!(
        meta.blocks() * 512 < 1 << 20,
        "{} blocks are allocated",
        meta.blocks()
    );
    let mut f = std::fs::File::open(&path)?;
    let mut head = [0u8; 8];
    f.read_exact(&mut head)?;
    ensure!(&head == b"head\0\0\0\0");
    f.seek(SeekFrom::Start(size - 8))?;
    f.read_exact(&mut head)?;
    ensure!(&head == b"\0\0\0\0tail");
    Ok(())
}

/// A hardlink made before a whiteout of the same layer deletes its target keeps the target's
/// data: the link becomes the file in the image, its export, its diff and its checkout.
pub async fn hardlink_kept_when_target_whited_out(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = put(
        ctx,
        &scratch,
        "hw1",
        &Layer::new().dir("d").file("d/t", b"kept data").build(),
    )
    .await?;
    let b = put(
        ctx,
        &a,
        "hw2",
        &Layer::new().hardlink("h", "d/t").whiteout("d/t").build(),
    )
    .await?;
    for ancestor in [None, Some(a.id.clone())] {
        let tree = entries(
            ctx.store
                .export(&s, &b.id, ancestor.as_ref(), &FilterSpec::all(), true)
                .await?,
        )
        .await?;
        let h = find(&tree, "h").ok_or_else(|| anyhow!("no h in {ancestor:?}"))?;
        ensure!(
            h.kind == '0' && h.data == b"kept data",
            "{ancestor:?}: {h:?}"
        );
        ensure!(
            !tree.iter().any(|e| e.path == "d/t"),
            "{ancestor:?}: d/t is still there"
        );
        if ancestor.is_some() {
            ensure!(find(&tree, "d/.wh.t").is_some(), "the diff deletes d/t");
        }
    }
    let dir = tempfile::tempdir()?;
    let dest = dir.path().join("root");
    ctx.store
        .checkout(&s, &b.id, &dest, &CheckoutOptions { rootless: true })
        .await?;
    ensure!(std::fs::read(dest.join("h")).context("h")? == b"kept data");
    ensure!(!dest.join("d/t").exists());
    Ok(())
}
