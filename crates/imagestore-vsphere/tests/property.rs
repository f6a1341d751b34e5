//! Property: any sequence of layers (files created and overwritten, whiteouts, opaque
//! directories, paths replaced by another kind, hardlinks, sparse files, symlinks, FIFOs,
//! extended attributes)
//! written through `vmdk://` leaves a filesystem equal to `file://`'s checkout of the same
//! layers. After every sequence the top disk passes `e2fsck -fn`, `debugfs rdump` of it
//! equals the local checkout (modes, owners, contents, links; devices and set-id bits by
//! `debugfs stat`), hardlinked paths share one inode, and the store's own checkout equals it
//! too.
//!
//! Sequence `i` depends only on `(seed, i)`: `IMAGESTORE_PROPERTY_SEED` replays a run and
//! `IMAGESTORE_PROPERTY_CASES` sets how many sequences run (default 25).

// A libtest-mimic test binary: what clippy.toml allows in `#[test]` functions is allowed
// here too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use common::chain::compare;
use common::*;
use imagestore::layer::checkout::CheckoutOptions;
use imagestore::{Digest, ImageId, ImageStorerExt, Metadata, StoreName, byte_stream};
use imagestore_conformance::support;
use imagestore_conformance::tars::Layer;
use imagestore_conformance::tree;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// What a path holds in the model of the image, enough to pick targets.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    File,
    Dir,
    Other,
}

const DIRS: [&str; 4] = ["a", "a/b", "c", "c/d"];

fn data(rng: &mut StdRng) -> Vec<u8> {
    let len = match rng.random_range(0..5) {
        0 => 0,
        1 => rng.random_range(1..100),
        2 => 4096,
        3 => rng.random_range(4097..70_000),
        _ => rng.random_range(100..4000),
    };
    let fill: u8 = rng.random();
    (0..len)
        .map(|i| fill.wrapping_add((i % 251) as u8))
        .collect()
}

/// One random layer over the image `model` describes; updates the model.
fn layer(rng: &mut StdRng, model: &mut BTreeMap<String, Kind>) -> Vec<u8> {
    let mut l = Layer::new();
    // Paths this layer touched (as entries or as parents).
    let mut touched: BTreeSet<String> = BTreeSet::new();
    let mut files_here: Vec<String> = Vec::new();
    let ops = rng.random_range(2..9);
    for _ in 0..ops {
        let dir = DIRS[rng.random_range(0..DIRS.len())];
        let path = format!("{dir}/n{}", rng.random_range(0..6));
        let parents_free = std::iter::successors(Some(dir.to_owned()), |d| {
            d.rsplit_once('/').map(|(p, _)| p.to_owned())
        })
        .all(|d| !touched.contains(&d) || model.get(&d) == Some(&Kind::Dir));
        if touched.contains(&path) || !parents_free {
            continue;
        }
        let existing: Vec<String> = model
            .keys()
            .filter(|p| {
                !touched
                    .iter()
                    .any(|t| t == *p || p.starts_with(&format!("{t}/")))
            })
            .cloned()
            .collect();
        let op = rng.random_range(0..12);
        match op {
            0 if !existing.is_empty() => {
                let victim = existing[rng.random_range(0..existing.len())].clone();
                l = l.whiteout(&victim);
                model.retain(|p, _| p != &victim && !p.starts_with(&format!("{victim}/")));
                touched.insert(victim);
                continue;
            }
            1 => {
                let d = DIRS[rng.random_range(0..DIRS.len())];
                if model.get(d) == Some(&Kind::Dir) && !touched.contains(d) {
                    l = l.opaque(d);
                    model.retain(|p, _| !p.starts_with(&format!("{d}/")));
                    touched.insert(d.to_owned());
                }
                continue;
            }
            2 if !files_here.is_empty() => {
                let target = files_here[rng.random_range(0..files_here.len())].clone();
                l = l.hardlink(&path, &target);
                model.insert(path.clone(), Kind::File);
            }
            3 => {
                let size = rng.random_range(1u64 << 16..1 << 22);
                let at = rng.random_range(0..size - 10);
                l = l.sparse(&path, size, &[(at - at % 512, b"0123456789")]);
                model.insert(path.clone(), Kind::File);
            }
            4 => {
                l = l.symlink(&path, "../target");
                model.insert(path.clone(), Kind::Other);
            }
            5 => {
                l = l.fifo(&path);
                model.insert(path.clone(), Kind::Other);
            }
            6 => {
                l = l.dir(&path);
                model.insert(path.clone(), Kind::Dir);
            }
            8 => {
                let v: Vec<u8> = (0..rng.random_range(0..300)).map(|i| i as u8).collect();
                l = l.file_xattrs(&path, &data(rng), &[("user.k", &v), ("trusted.t", b"1")]);
                files_here.push(path.clone());
                model.insert(path.clone(), Kind::File);
            }
            7 => {
                // A directory of hundreds of names: more than a block, so an indexed one;
                // its names may be whited out or overwritten by later layers.
                l = l.dir(&path);
                model.insert(path.clone(), Kind::Dir);
                for k in 0..rng.random_range(100..400) {
                    let name = format!("{path}/many-{k:04}-{}", "x".repeat(k % 40));
                    l = l.file(&name, b"");
                    model.insert(name, Kind::File);
                }
            }
            _ => {
                let mode = [0o644, 0o755, 0o4755, 0o600][rng.random_range(0..4)];
                l = l.file_mode(&path, &data(rng), mode);
                files_here.push(path.clone());
                model.insert(path.clone(), Kind::File);
            }
        }
        // The parents exist as directories now (replacing what was there).
        let mut d = dir.to_owned();
        loop {
            model.insert(d.clone(), Kind::Dir);
            touched.insert(d.clone());
            match d.rsplit_once('/') {
                Some((p, _)) => d = p.to_owned(),
                None => break,
            }
        }
        model.retain(|p, _| !p.starts_with(&format!("{path}/")));
        touched.insert(path);
    }
    l.build()
}

/// Groups of paths sharing an inode in a checkout.
fn link_groups(root: &std::path::Path) -> Result<Vec<Vec<String>>> {
    let t = tree::walk(root)?;
    let mut by_ino: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (p, n) in &t.nodes {
        if n.kind == 'f' {
            let m = std::fs::symlink_metadata(root.join(p))?;
            by_ino.entry(m.ino()).or_default().push(p.clone());
        }
    }
    Ok(by_ino.into_values().filter(|g| g.len() > 1).collect())
}

async fn random_layers_read_back_as_the_local_checkout() -> Result<()> {
    let seed: u64 = match std::env::var("IMAGESTORE_PROPERTY_SEED") {
        Ok(s) => s.parse().context("IMAGESTORE_PROPERTY_SEED")?,
        Err(_) => rand::random(),
    };
    let cases: u64 = std::env::var("IMAGESTORE_PROPERTY_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(25);
    let (mut written, mut refused) = (0, 0);
    for case in 0..cases {
        let (w, r) = run_case(seed, case)
            .await
            .with_context(|| format!("IMAGESTORE_PROPERTY_SEED={seed}, sequence {case}"))?;
        written += w;
        refused += r;
    }
    eprintln!(
        "property: {cases} sequences of seed {seed}: {written} layers written, {refused} \
         refused by both backends"
    );
    if written < cases {
        bail!("too few layers were written ({written}) for the property to mean anything");
    }
    Ok(())
}

/// Runs sequence `case`; how many layers both backends wrote, and refused.
async fn run_case(seed: u64, case: u64) -> Result<(u64, u64)> {
    let mut rng = StdRng::seed_from_u64(seed ^ case.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let dir = tempfile::tempdir()?;
    let ds = dir.path().join("ds");
    let vmdk = imagestore::open(&format!("vmdk://{}?capacity_kib=131072", ds.display())).await?;
    let local = imagestore::open(&format!("file://{}", dir.path().join("local").display())).await?;
    let s = StoreName::new("prop")?;
    vmdk.create_image_store(&s).await?;
    local.create_image_store(&s).await?;
    let (mut top, mut local_top) = (vmdk.scratch(&s).await?, local.scratch(&s).await?);
    let mut model = BTreeMap::new();
    let layers = rng.random_range(1..5);
    let (mut written, mut refused) = (0, 0);
    for i in 0..layers {
        let tar = layer(&mut rng, &mut model);
        let sum = Digest::sha256_of(&tar);
        let id = ImageId::new(format!("l{i}"))?;
        let theirs = local
            .write_image(
                &local_top,
                &id,
                Metadata::new(),
                &sum,
                byte_stream(std::io::Cursor::new(tar.clone())),
            )
            .await;
        let ours = vmdk
            .write_image(
                &top,
                &id,
                Metadata::new(),
                &sum,
                byte_stream(std::io::Cursor::new(tar)),
            )
            .await;
        match (ours, theirs) {
            (Ok(o), Ok(t)) => {
                top = o;
                local_top = t;
                written += 1;
            }
            (Err(_), Err(_)) => {
                refused += 1;
                break;
            }
            (o, t) => bail!("layer {i}: vmdk:// gave {o:?}, file:// {t:?}"),
        }
    }
    let want = dir.path().join("local-checkout");
    local
        .checkout(
            &s,
            &local_top.id,
            &want,
            &CheckoutOptions { rootless: false },
        )
        .await?;
    let disk = if top.id == ImageId::scratch() {
        ds.join("VIC/prop/images/scratch/scratch.vmdk")
    } else {
        ds.join(format!("VIC/prop/images/{}/{}.vmdk", top.id, top.id))
    };
    let raw = dir.path().join("top.raw");
    to_raw(&disk, &raw)?;
    e2fsck_clean(&raw)?;
    let got = dir.path().join("rdump");
    std::fs::create_dir(&got)?;
    debugfs(&raw, &format!("rdump / {}", got.display()))?;
    let skeleton = common::chain::skeleton_paths();
    compare(&raw, &got, &want, &skeleton)?;
    for group in link_groups(&want)? {
        let inodes: BTreeSet<String> = group
            .iter()
            .map(|p| common::chain::inode_of(&raw, &format!("/{p}")))
            .collect::<Result<_>>()?;
        if inodes.len() != 1 {
            bail!("hardlinks {group:?} are inodes {inodes:?} on ext4");
        }
    }
    let ours = dir.path().join("vmdk-checkout");
    vmdk.checkout(&s, &top.id, &ours, &CheckoutOptions { rootless: false })
        .await?;
    let d = tree::differences(&tree::walk(&ours)?, &tree::walk(&want)?, &BTreeSet::new());
    if !d.is_empty() {
        bail!("the vmdk checkout differs:\n{}", d.join("\n"));
    }
    Ok((written, refused))
}

fn main() -> ExitCode {
    support::run(vec![support::trial_async(
        "random_layers_read_back_as_the_local_checkout",
        support::programs(&["qemu-img", "e2fsck", "debugfs"]),
        2,
        |()| random_layers_read_back_as_the_local_checkout(),
    )])
}
