//! The sparse VMDK reader and writer checked against qemu-img: base and delta disks written
//! through an overlay (whole grains, partial grains copied on write from the parent, zeroed
//! grains) pass `qemu-img check`, show their chain, and hold exactly the raw images they
//! stand for; disks qemu wrote read back byte for byte; the stream-optimized export holds
//! the chain.

// A libtest-mimic test binary: what clippy.toml allows in `#[test]` functions is allowed
// here too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::process::ExitCode;

use anyhow::Result;
use common::*;
use imagestore_conformance::support;
use std::sync::Arc;

use imagestore_vsphere::disk::{descriptor, new_cid, open_chain};
use imagestore_vsphere::vmdk::chain::Chain;
use imagestore_vsphere::vmdk::overlay::Overlay;
use imagestore_vsphere::vmdk::stream::write_stream_optimized;
use imagestore_vsphere::vmdk::writer::SparseWriter;
use imagestore_vsphere::vmdk::{GRAIN, SECTOR};

const SIZE: u64 = 96 << 20; // three grain tables

fn fill(raw: &std::path::Path, grains: &[(u64, u8)]) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(raw)?;
    f.set_len(SIZE)?;
    for (g, b) in grains {
        let mut buf = vec![*b; GRAIN as usize];
        buf[7] = (*g % 251) as u8;
        f.write_all_at(&buf, g * GRAIN)?;
    }
    Ok(())
}

fn same(a: &std::path::Path, b: &std::path::Path) -> Result<bool> {
    Ok(std::fs::read(a)? == std::fs::read(b)?)
}

/// The contents of `chain`, read through our reader, into raw image `out`.
fn chain_to_raw(chain: &Chain, out: &std::path::Path) -> Result<()> {
    let f = File::create(out)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < chain.size_bytes() {
        let n = (chain.size_bytes() - at).min(buf.len() as u64) as usize;
        chain.read_at(at, &mut buf[..n])?;
        f.write_all_at(&buf[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// A new disk at `out` (named `name`), over `parent` with hint `hint` if given.
fn overlay(
    out: &std::path::Path,
    name: &str,
    parent: Option<(Arc<Chain>, &str)>,
) -> Result<Overlay> {
    let parent_ids = parent.as_ref().map(|(c, h)| (c.top_cid(), *h));
    let d = descriptor(SIZE / SECTOR, name, new_cid(), parent_ids);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(out)?;
    let w = SparseWriter::create(f, &d, name)?;
    Ok(Overlay::new(parent.map(|(c, _)| c), w, SIZE)?)
}

/// Writes what `fill` writes into raw image `raw` through `o` too.
fn fill_both(raw: &std::path::Path, o: &mut Overlay, grains: &[(u64, u8)]) -> Result<()> {
    fill(raw, grains)?;
    for (g, b) in grains {
        let mut buf = vec![*b; GRAIN as usize];
        buf[7] = (*g % 251) as u8;
        o.write_at(g * GRAIN, &buf)?;
    }
    Ok(())
}

fn base_and_delta_disks_pass_qemu_img() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::create_dir_all(d.join("base"))?;
    std::fs::create_dir_all(d.join("l1"))?;
    let raw0 = d.join("r0.raw");
    let base = d.join("base/base.vmdk");
    let mut o = overlay(&base, "base.vmdk", None)?;
    // Grains in the first, second and last grain table, and one straddling nothing.
    fill_both(
        &raw0,
        &mut o,
        &[(0, 1), (5, 2), (511, 3), (512, 4), (1535, 5)],
    )?;
    assert_eq!(o.grains()?, 5);
    o.finish()?;
    qemu_check(&base)?;
    let back = d.join("back0.raw");
    to_raw(&base, &back)?;
    assert!(same(&raw0, &back)?, "base disk holds its raw image");

    // A child: change two grains, zero one that the base holds, add a new one, and change
    // a few bytes inside a grain the base holds (the rest of it is copied on write).
    let raw1 = d.join("r1.raw");
    std::fs::copy(&raw0, &raw1)?;
    let chain0 = Arc::new(open_chain(&base)?);
    let l1 = d.join("l1/l1.vmdk");
    let mut o = overlay(&l1, "l1.vmdk", Some((chain0, "../base/base.vmdk")))?;
    fill_both(&raw1, &mut o, &[(5, 9), (700, 7)])?;
    let zeros = vec![0u8; GRAIN as usize];
    File::options()
        .write(true)
        .open(&raw1)?
        .write_all_at(&zeros, 512 * GRAIN)?;
    o.write_at(512 * GRAIN, &zeros)?;
    let at = 511 * GRAIN + 4096 + 100;
    File::options()
        .write(true)
        .open(&raw1)?
        .write_all_at(b"inside a grain", at)?;
    o.write_at(at, b"inside a grain")?;
    let mut seen = vec![0u8; 14];
    o.read_at(at, &mut seen)?;
    assert_eq!(&seen, b"inside a grain", "the overlay reads its own writes");
    assert_eq!(o.grains()?, 4, "only the written grains are stored");
    o.finish()?;
    qemu_check(&l1)?;
    assert_eq!(backing_chain(&l1)?, vec!["l1.vmdk", "base.vmdk"]);
    let back1 = d.join("back1.raw");
    to_raw(&l1, &back1)?;
    assert!(same(&raw1, &back1)?, "chain holds the child's raw image");

    // Our reader agrees, and the parent was not touched.
    let chain1 = open_chain(&l1)?;
    assert_eq!(chain1.disks().len(), 2);
    let mine = d.join("mine.raw");
    chain_to_raw(&chain1, &mine)?;
    assert!(same(&raw1, &mine)?);
    qemu_check(&base)?;
    to_raw(&base, &back)?;
    assert!(same(&raw0, &back)?, "parent unchanged");

    // Flattened stream-optimized export.
    let so = d.join("flat.vmdk");
    write_stream_optimized(&chain1, "flat.vmdk", 0x1234_5678, File::create(&so)?)?;
    let out = run(Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&so))?;
    assert!(out.contains("streamOptimized"), "{out}");
    run(Command::new("qemu-img").args(["check"]).arg(&so))?;
    let back2 = d.join("back2.raw");
    to_raw(&so, &back2)?;
    assert!(
        same(&raw1, &back2)?,
        "stream-optimized export holds the chain"
    );
    Ok(())
}

fn reads_chains_qemu_wrote() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let raw = d.join("q.raw");
    fill(&raw, &[(3, 0x11), (600, 0x22)])?;
    let base = d.join("qb.vmdk");
    run(Command::new("qemu-img")
        .args(["convert", "-O", "vmdk", "-o", "subformat=monolithicSparse"])
        .arg(&raw)
        .arg(&base))?;
    let top = d.join("qt.vmdk");
    run(Command::new("qemu-img")
        .args(["create", "-f", "vmdk", "-F", "vmdk", "-b", "qb.vmdk"])
        .arg(&top))?;
    run(Command::new("qemu-io")
        .args(["-f", "vmdk", "-c", "write -P 0x33 6553600 65536"])
        .arg(&top))?;
    let chain = open_chain(&top)?;
    assert_eq!(chain.disks().len(), 2);
    let mine = d.join("mine.raw");
    chain_to_raw(&chain, &mine)?;
    let theirs = d.join("theirs.raw");
    to_raw(&top, &theirs)?;
    assert!(same(&mine, &theirs)?);
    Ok(())
}

fn main() -> ExitCode {
    support::run(vec![
        support::trial(
            "base_and_delta_disks_pass_qemu_img",
            support::programs(&["qemu-img"]),
            |()| base_and_delta_disks_pass_qemu_img(),
        ),
        support::trial(
            "reads_chains_qemu_wrote",
            support::programs(&["qemu-img", "qemu-io"]),
            |()| reads_chains_qemu_wrote(),
        ),
    ])
}
