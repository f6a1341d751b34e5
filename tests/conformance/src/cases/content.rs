//! Export, diff and filters.

use std::collections::BTreeSet;

use anyhow::{Result, ensure};
use imagestore::{Error, FilterSpec, FilterType, Image, ImageId, StoreName};

use super::{fresh, put};
use crate::tars::{Entry, Layer, entries, find, gzip, paths, read_all, sum};
use crate::{Ctx, expect_err};

async fn export(
    ctx: &Ctx,
    s: &StoreName,
    img: &Image,
    ancestor: Option<&str>,
    filter: &FilterSpec,
    data: bool,
) -> Result<Vec<Entry>> {
    let anc = ancestor.map(ImageId::new).transpose()?;
    entries(
        ctx.store
            .export(s, &img.id, anc.as_ref(), filter, data)
            .await?,
    )
    .await
}

/// The merged image: later layers win, directories merge.
pub async fn export_merges_layers(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = put(
        ctx,
        &scratch,
        "m1",
        &Layer::new()
            .dir("app")
            .file("app/a", b"old")
            .file("app/b", b"b")
            .build(),
    )
    .await?;
    let b = put(
        ctx,
        &a,
        "m2",
        &Layer::new()
            .file("app/a", b"new")
            .file("app/c", b"c")
            .build(),
    )
    .await?;
    let tree = export(ctx, &s, &b, None, &FilterSpec::all(), true).await?;
    ensure!(find(&tree, "app/a").is_some_and(|e| e.data == b"new"));
    ensure!(find(&tree, "app/b").is_some_and(|e| e.data == b"b"));
    ensure!(find(&tree, "app/c").is_some_and(|e| e.data == b"c"));
    ensure!(
        find(&tree, "etc/hostname").is_some(),
        "scratch's skeleton is part of the image"
    );
    let ps = paths(&tree);
    let unique: BTreeSet<&str> = ps.iter().copied().collect();
    ensure!(unique.len() == ps.len(), "each path once: {ps:?}");
    ensure!(
        tree.iter().all(|e| !e.path.contains(".wh.")),
        "no whiteouts in a full export"
    );
    Ok(())
}

/// A whiteout deletes a lower file or a whole lower directory.
pub async fn whiteouts_delete_lower_entries(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = put(
        ctx,
        &scratch,
        "w1",
        &Layer::new()
            .dir("d")
            .file("d/x", b"x")
            .file("d/y", b"y")
            .dir("e")
            .file("e/z", b"z")
            .build(),
    )
    .await?;
    let b = put(
        ctx,
        &a,
        "w2",
        &Layer::new().whiteout("d/x").whiteout("e").build(),
    )
    .await?;
    let tree = export(ctx, &s, &b, None, &FilterSpec::all(), true).await?;
    ensure!(find(&tree, "d/x").is_none() && find(&tree, "d/y").is_some());
    ensure!(find(&tree, "e").is_none() && find(&tree, "e/z").is_none());
    Ok(())
}

/// An opaque marker hides everything a lower layer had in the directory.
pub async fn opaque_dirs_hide_lower_entries(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = put(
        ctx,
        &scratch,
        "o1",
        &Layer::new()
            .dir("d")
            .file("d/old", b"o")
            .dir("d/sub")
            .file("d/sub/deep", b"x")
            .build(),
    )
    .await?;
    let b = put(
        ctx,
        &a,
        "o2",
        &Layer::new()
            .dir("d")
            .opaque("d")
            .file("d/new", b"n")
            .build(),
    )
    .await?;
    let tree = export(ctx, &s, &b, None, &FilterSpec::all(), true).await?;
    ensure!(find(&tree, "d").is_some() && find(&tree, "d/new").is_some());
    ensure!(
        find(&tree, "d/old").is_none() && find(&tree, "d/sub/deep").is_none(),
        "{:?}",
        paths(&tree)
    );
    Ok(())
}

/// Whiteouts and opaque markers only affect lower layers, wherever they stand in the tar.
pub async fn markers_apply_to_lower_layers_only(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = put(
        ctx,
        &scratch,
        "l1",
        &Layer::new()
            .file("f", b"lower")
            .dir("d")
            .file("d/lower", b"l")
            .build(),
    )
    .await?;
    let b = put(
        ctx,
        &a,
        "l2",
        &Layer::new()
            .file("f", b"upper")
            .whiteout("f")
            .file("d/same", b"s")
            .opaque("d")
            .build(),
    )
    .await?;
    let tree = export(ctx, &s, &b, None, &FilterSpec::all(), true).await?;
    ensure!(find(&tree, "f").is_some_and(|e| e.data == b"upper"));
    ensure!(find(&tree, "d/same").is_some() && find(&tree, "d/lower").is_none());
    Ok(())
}

/// A directory replaced by a file takes its lower contents with it.
pub async fn dir_replaced_by_file(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = put(
        ctx,
        &scratch,
        "r1",
        &Layer::new().dir("x").file("x/in", b"i").build(),
    )
    .await?;
    let b = put(
        ctx,
        &a,
        "r2",
        &Layer::new().file("x", b"now a file").build(),
    )
    .await?;
    let tree = export(ctx, &s, &b, None, &FilterSpec::all(), true).await?;
    ensure!(find(&tree, "x").is_some_and(|e| e.kind == '0' && e.data == b"now a file"));
    ensure!(find(&tree, "x/in").is_none());
    Ok(())
}

/// `data = false` gives the same headers with no contents, each marked as VIC's are with
/// the `change_type` xattr (`A` for every path of a whole image).
pub async fn export_headers_only(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = put(
        ctx,
        &scratch,
        "h1",
        &Layer::new()
            .file("f", &vec![1u8; 5000])
            .symlink("l", "f")
            .build(),
    )
    .await?;
    let full = export(ctx, &s, &a, None, &FilterSpec::all(), true).await?;
    let heads = export(ctx, &s, &a, None, &FilterSpec::all(), false).await?;
    ensure!(paths(&full) == paths(&heads));
    ensure!(heads.iter().all(|e| e.data.is_empty()));
    ensure!(find(&heads, "l").and_then(|e| e.link.clone()) == Some("f".into()));
    let marks = |es: &[Entry]| -> Vec<Option<Vec<u8>>> {
        es.iter()
            .map(|e| e.xattrs.get("change_type").cloned())
            .collect()
    };
    ensure!(
        marks(&heads).iter().all(|m| m.as_deref() == Some(b"A")),
        "{:?}",
        marks(&heads)
    );
    ensure!(
        marks(&full).iter().all(Option::is_none),
        "data=true has no markers"
    );
    Ok(())
}

/// A headers-only diff marks each change as VIC's does: `A` added, `C` modified, `D` deleted
/// (whiteouts).
pub async fn diff_headers_mark_changes(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = put(
        ctx,
        &scratch,
        "m1",
        &Layer::new()
            .dir("app")
            .file("app/a", b"a")
            .file("app/b", b"b")
            .build(),
    )
    .await?;
    let b = put(
        ctx,
        &a,
        "m2",
        &Layer::new()
            .file("app/b", b"B")
            .file("app/c", b"c")
            .whiteout("app/a")
            .build(),
    )
    .await?;
    let d = export(ctx, &s, &b, Some("m1"), &FilterSpec::all(), false).await?;
    let mark = |p: &str| {
        find(&d, p)
            .and_then(|e| e.xattrs.get("change_type").cloned())
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    };
    ensure!(mark("app/b").as_deref() == Some("C"), "{d:?}");
    ensure!(mark("app/c").as_deref() == Some("A"), "{d:?}");
    ensure!(mark("app/.wh.a").as_deref() == Some("D"), "{d:?}");
    ensure!(d.iter().all(|e| e.data.is_empty()));
    Ok(())
}

/// Diff against the parent: exactly what the layer changed.
pub async fn diff_against_parent(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = put(
        ctx,
        &scratch,
        "d1",
        &Layer::new()
            .dir("app")
            .file("app/a", b"a")
            .file("app/b", b"b")
            .build(),
    )
    .await?;
    let b = put(
        ctx,
        &a,
        "d2",
        &Layer::new().file("app/b", b"B").file("app/c", b"c").build(),
    )
    .await?;
    let d = export(ctx, &s, &b, Some("d1"), &FilterSpec::all(), true).await?;
    let ps: BTreeSet<&str> = paths(&d).into_iter().collect();
    ensure!(ps == BTreeSet::from(["app/b", "app/c"]), "{ps:?}");
    ensure!(find(&d, "app/b").is_some_and(|e| e.data == b"B"));
    let none = export(ctx, &s, &b, Some("d2"), &FilterSpec::all(), true).await?;
    ensure!(none.is_empty(), "an image has no changes against itself");
    Ok(())
}

/// Diff against ancestors further down accumulates the layers in between.
pub async fn diff_against_several_ancestors(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = put(ctx, &scratch, "a1", &Layer::new().file("one", b"1").build()).await?;
    let b = put(ctx, &a, "a2", &Layer::new().file("two", b"2").build()).await?;
    let c = put(
        ctx,
        &b,
        "a3",
        &Layer::new().file("three", b"3").file("one", b"1'").build(),
    )
    .await?;
    let set = |e: &[Entry]| {
        paths(e)
            .into_iter()
            .map(String::from)
            .collect::<BTreeSet<_>>()
    };
    let to_b = set(&export(ctx, &s, &c, Some("a2"), &FilterSpec::all(), true).await?);
    let to_a = set(&export(ctx, &s, &c, Some("a1"), &FilterSpec::all(), true).await?);
    let to_scratch = set(&export(ctx, &s, &c, Some("scratch"), &FilterSpec::all(), true).await?);
    ensure!(
        to_b == BTreeSet::from(["one".into(), "three".into()]),
        "{to_b:?}"
    );
    ensure!(
        to_a == BTreeSet::from(["one".into(), "two".into(), "three".into()]),
        "{to_a:?}"
    );
    ensure!(to_scratch == to_a);
    Ok(())
}

/// Deletions since the ancestor become `.wh.` entries; a deleted directory is one whiteout.
pub async fn diff_emits_whiteouts(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = put(
        ctx,
        &scratch,
        "x1",
        &Layer::new()
            .dir("d")
            .file("d/gone", b"g")
            .file("d/kept", b"k")
            .dir("t")
            .file("t/in", b"i")
            .build(),
    )
    .await?;
    let b = put(ctx, &a, "x2", &Layer::new().whiteout("d/gone").build()).await?;
    let c = put(ctx, &b, "x3", &Layer::new().whiteout("t").build()).await?;
    let d = export(ctx, &s, &c, Some("x1"), &FilterSpec::all(), true).await?;
    let ps: BTreeSet<&str> = paths(&d).into_iter().collect();
    ensure!(ps == BTreeSet::from(["d/.wh.gone", ".wh.t"]), "{ps:?}");
    Ok(())
}

/// A directory made opaque since the ancestor is exported with an opaque marker.
pub async fn diff_emits_opaque_markers(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = put(
        ctx,
        &scratch,
        "q1",
        &Layer::new().dir("d").file("d/old", b"o").build(),
    )
    .await?;
    let b = put(
        ctx,
        &a,
        "q2",
        &Layer::new().opaque("d").file("d/new", b"n").build(),
    )
    .await?;
    let d = export(ctx, &s, &b, Some("q1"), &FilterSpec::all(), true).await?;
    let ps: BTreeSet<&str> = paths(&d).into_iter().collect();
    ensure!(
        ps.contains("d/.wh..wh..opq") && ps.contains("d/new"),
        "{ps:?}"
    );
    ensure!(!ps.iter().any(|p| p.contains("old")));
    Ok(())
}

/// An ancestor that is not an ancestor is `InvalidArgument`.
pub async fn export_of_non_ancestor_invalid(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = put(ctx, &scratch, "n1", &Layer::new().file("a", b"a").build()).await?;
    let b = put(ctx, &scratch, "n2", &Layer::new().file("b", b"b").build()).await?;
    let c = put(ctx, &a, "n3", &Layer::new().file("c", b"c").build()).await?;
    expect_err!(
        ctx.store
            .export(&s, &c.id, Some(&b.id), &FilterSpec::all(), true)
            .await
            .map(|_| ()),
        Error::InvalidArgument(_)
    );
    expect_err!(
        ctx.store
            .export(&s, &a.id, Some(&c.id), &FilterSpec::all(), true)
            .await
            .map(|_| ()),
        Error::InvalidArgument(_)
    );
    Ok(())
}

/// Inclusions and exclusions by longest prefix.
pub async fn export_filter_include_exclude(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = put(
        ctx,
        &scratch,
        "f1",
        &Layer::new()
            .dir("etc")
            .file("etc/a", b"a")
            .dir("etc/ssl")
            .file("etc/ssl/key", b"k")
            .dir("usr")
            .file("usr/bin", b"b")
            .build(),
    )
    .await?;
    let f = FilterSpec::from_types([
        ("/", FilterType::Exclude),
        ("/etc", FilterType::Include),
        ("/etc/ssl", FilterType::Exclude),
    ])?;
    let tree = export(ctx, &s, &a, Some("scratch"), &f, true).await?;
    let ps: BTreeSet<&str> = paths(&tree).into_iter().collect();
    ensure!(ps == BTreeSet::from(["etc", "etc/a"]), "{ps:?}");
    Ok(())
}

/// Strip and rebase rename every kept path.
pub async fn export_filter_rebase_strip(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = put(
        ctx,
        &scratch,
        "rb1",
        &Layer::new()
            .dir("var")
            .dir("var/lib")
            .file("var/lib/data", b"d")
            .build(),
    )
    .await?;
    let f = FilterSpec::from_types([
        ("/var/lib", FilterType::Strip),
        ("/mnt/out", FilterType::Rebase),
        ("/var/lib", FilterType::Include),
        ("/", FilterType::Exclude),
    ])?;
    let tree = export(ctx, &s, &a, Some("scratch"), &f, true).await?;
    ensure!(
        find(&tree, "mnt/out/data").is_some_and(|e| e.data == b"d"),
        "{:?}",
        paths(&tree)
    );
    ensure!(
        tree.iter().all(|e| e.path.starts_with("mnt/out")),
        "{:?}",
        paths(&tree)
    );
    Ok(())
}

/// Filters select and rename whiteouts by the path they delete.
pub async fn export_filter_applies_to_whiteouts(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = put(
        ctx,
        &scratch,
        "fw1",
        &Layer::new()
            .dir("keep")
            .file("keep/x", b"x")
            .dir("drop")
            .file("drop/y", b"y")
            .build(),
    )
    .await?;
    let b = put(
        ctx,
        &a,
        "fw2",
        &Layer::new().whiteout("keep/x").whiteout("drop/y").build(),
    )
    .await?;
    let f = FilterSpec::from_types([
        ("/drop", FilterType::Exclude),
        ("/base", FilterType::Rebase),
    ])?;
    let d = export(ctx, &s, &b, Some("fw1"), &f, true).await?;
    let ps: BTreeSet<&str> = paths(&d).into_iter().collect();
    ensure!(ps == BTreeSet::from(["base/keep/.wh.x"]), "{ps:?}");
    Ok(())
}

/// A raw export is the exact bytes written, hashing to the sum.
pub async fn raw_export_digest_equals_sum(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let layer = Layer::new()
        .file("r", &vec![8u8; 70_000])
        .symlink("l", "/r")
        .build();
    let img = put(ctx, &scratch, "raw1", &layer).await?;
    if !ctx.store.capabilities().raw_layers {
        expect_err!(
            ctx.store.export_raw(&s, &img.id).await.map(|_| ()),
            Error::Unsupported { .. }
        );
        return Ok(());
    }
    let bytes = read_all(ctx.store.export_raw(&s, &img.id).await?).await?;
    ensure!(bytes == layer && Some(sum(&bytes)) == img.sum);
    Ok(())
}

/// A compressed layer's raw export is the compressed bytes as sent.
pub async fn raw_export_keeps_compressed_bytes(ctx: &Ctx) -> Result<()> {
    if !ctx.store.capabilities().raw_layers {
        return Ok(());
    }
    let (s, scratch) = fresh(ctx).await?;
    let gz = gzip(&Layer::new().file("g", &vec![4u8; 90_000]).build());
    let img = put(ctx, &scratch, "raw2", &gz).await?;
    let bytes = read_all(ctx.store.export_raw(&s, &img.id).await?).await?;
    ensure!(bytes == gz);
    Ok(())
}

/// Hardlinked paths come out as one file and hardlinks to it.
pub async fn hardlinks_exported_as_links(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = put(
        ctx,
        &scratch,
        "hl1",
        &Layer::new()
            .dir("bin")
            .file("bin/sh", b"shell")
            .hardlink("bin/dash", "bin/sh")
            .build(),
    )
    .await?;
    let b = put(
        ctx,
        &a,
        "hl2",
        &Layer::new().hardlink("bin/bash", "bin/sh").build(),
    )
    .await?;
    let tree = export(ctx, &s, &b, None, &FilterSpec::all(), true).await?;
    let sh = find(&tree, "bin/sh").ok_or_else(|| anyhow::anyhow!("no bin/sh"))?;
    ensure!(sh.kind == '0' && sh.data == b"shell");
    for l in ["bin/dash", "bin/bash"] {
        let e = find(&tree, l).ok_or_else(|| anyhow::anyhow!("no {l}"))?;
        ensure!(
            e.kind == '1' && e.link.as_deref() == Some("bin/sh"),
            "{e:?}"
        );
    }
    Ok(())
}

/// A hardlink keeps the content its target had when it was applied.
pub async fn hardlink_keeps_content_after_target_replaced(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = put(
        ctx,
        &scratch,
        "hk1",
        &Layer::new()
            .file("t", b"original")
            .hardlink("h", "t")
            .build(),
    )
    .await?;
    let b = put(ctx, &a, "hk2", &Layer::new().file("t", b"replaced").build()).await?;
    let tree = export(ctx, &s, &b, None, &FilterSpec::all(), true).await?;
    ensure!(find(&tree, "t").is_some_and(|e| e.data == b"replaced"));
    let h = find(&tree, "h").ok_or_else(|| anyhow::anyhow!("no h"))?;
    ensure!(h.kind == '0' && h.data == b"original", "{h:?}");
    Ok(())
}

/// Absolute and dangling symlinks, device nodes and fifos are kept exactly.
pub async fn special_entries_kept(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let layer = Layer::new()
        .dir("dev")
        .symlink("dev/fd", "/proc/self/fd")
        .symlink("dangling", "../../nowhere")
        .chardev("dev/null", 1, 3)
        .fifo("pipe")
        .build();
    let a = put(ctx, &scratch, "sp1", &layer).await?;
    let tree = export(ctx, &s, &a, Some("scratch"), &FilterSpec::all(), true).await?;
    ensure!(
        find(&tree, "dev/fd")
            .is_some_and(|e| e.kind == '2' && e.link.as_deref() == Some("/proc/self/fd"))
    );
    ensure!(find(&tree, "dangling").is_some_and(|e| e.link.as_deref() == Some("../../nowhere")));
    ensure!(find(&tree, "dev/null").is_some_and(|e| e.kind == '3'));
    ensure!(find(&tree, "pipe").is_some_and(|e| e.kind == '6'));
    let raw = read_all(
        ctx.store
            .export(
                &s,
                &a.id,
                Some(&ImageId::scratch()),
                &FilterSpec::all(),
                true,
            )
            .await?,
    )
    .await?;
    let mut ar = tar::Archive::new(raw.as_slice());
    for e in ar.entries()? {
        let e = e?;
        if e.path()?.to_string_lossy().ends_with("dev/null") {
            ensure!(e.header().device_major()? == Some(1) && e.header().device_minor()? == Some(3));
        }
    }
    Ok(())
}

/// xattrs (binary values too) and long names and link targets survive.
pub async fn xattrs_and_long_names_kept(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let long = format!("{}/file", "deep".repeat(40));
    let target = format!("/{}", "t".repeat(200));
    let layer = Layer::new()
        .file_xattrs(
            "x",
            b"data",
            &[
                ("user.comment", b"hello"),
                ("security.capability", &[1, 0, 0, 2, 0, 32, 0, 0]),
            ],
        )
        .file(&long, b"long")
        .symlink("longlink", &target)
        .build();
    let a = put(ctx, &scratch, "xa1", &layer).await?;
    let tree = export(ctx, &s, &a, Some("scratch"), &FilterSpec::all(), true).await?;
    let x = find(&tree, "x").ok_or_else(|| anyhow::anyhow!("no x"))?;
    ensure!(
        x.xattrs.get("user.comment").map(Vec::as_slice) == Some(b"hello".as_slice()),
        "{:?}",
        x.xattrs
    );
    ensure!(
        x.xattrs.get("security.capability").map(Vec::as_slice)
            == Some([1u8, 0, 0, 2, 0, 32, 0, 0].as_slice())
    );
    ensure!(find(&tree, &long).is_some_and(|e| e.data == b"long"));
    ensure!(find(&tree, "longlink").and_then(|e| e.link.clone()) == Some(target));
    Ok(())
}

/// A GNU sparse file reads back with its holes as zeros.
pub async fn sparse_file_contents(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let layer = Layer::new()
        .sparse("sparse.img", 3 << 20, &[(0, b"head"), (2 << 20, b"middle")])
        .build();
    let a = put(ctx, &scratch, "sp2", &layer).await?;
    let tree = export(ctx, &s, &a, Some("scratch"), &FilterSpec::all(), true).await?;
    let e = find(&tree, "sparse.img").ok_or_else(|| anyhow::anyhow!("no sparse file"))?;
    let mut want = vec![0u8; 3 << 20];
    want[..4].copy_from_slice(b"head");
    want[2 << 20..(2 << 20) + 6].copy_from_slice(b"middle");
    ensure!(e.data.len() == want.len() && e.data == want);
    Ok(())
}
