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

use imagestore_vsphere::build::{build_base, new_disk};
use imagestore_vsphere::disk::{descriptor, new_cid, open_chain};
use imagestore_vsphere::vmdk::chain::Chain;
use imagestore_vsphere::vmdk::format::DiskFormat;
use imagestore_vsphere::vmdk::overlay::Overlay;
use imagestore_vsphere::vmdk::stream::write_stream_optimized;
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
    overlay_in(DiskFormat::MonolithicSparse, out, name, parent)
}

/// [`overlay`] in `format`.
fn overlay_in(
    format: DiskFormat,
    out: &std::path::Path,
    name: &str,
    parent: Option<(Arc<Chain>, &str)>,
) -> Result<Overlay> {
    let parent_ids = parent.as_ref().map(|(c, h)| (c.top_cid(), *h));
    let d = descriptor(format, SIZE / SECTOR, name, new_cid(), parent_ids);
    let w = new_disk(out, &d, format)?;
    Ok(Overlay::boxed(parent.map(|(c, _)| c), w, SIZE)?)
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

/// Zeroes grain `zeroed` and writes a few bytes at `at` (inside a grain), in raw image
/// `raw` and through `o`.
fn zero_and_poke(raw: &std::path::Path, o: &mut Overlay, zeroed: u64, at: u64) -> Result<()> {
    let f = File::options().write(true).open(raw)?;
    let zeros = vec![0u8; GRAIN as usize];
    f.write_all_at(&zeros, zeroed * GRAIN)?;
    o.write_at(zeroed * GRAIN, &zeros)?;
    f.write_all_at(b"inside a grain", at)?;
    o.write_at(at, b"inside a grain")?;
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
    let at = 511 * GRAIN + 4096 + 100;
    zero_and_poke(&raw1, &mut o, 512, at)?;
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

/// A chain of native delta disks on a flat base disk: after each disk `qemu-img check`
/// passes, `info --backing-chain` shows the files and create types, and both qemu and our
/// reader turn the chain into exactly the raw image it stands for.
fn native_disks_pass_qemu_img(format: DiskFormat) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let ct = format.create_type();
    let base = d.join("base.vmdk");
    build_base(&base, SIZE / 1024)?;
    qemu_check(&base)?;
    assert_eq!(create_types(&base)?, vec!["vmfs"]);
    let raw0 = d.join("r0.raw");
    fill(&raw0, &[])?;
    let back = d.join("back.raw");
    to_raw(&base, &back)?;
    assert!(same(&raw0, &back)?, "the base disk is all zero");

    // The first delta: grains in the first and last grain tables of every format.
    let raw1 = d.join("r1.raw");
    let chain0 = Arc::new(open_chain(&base)?);
    let l1 = d.join("l1.vmdk");
    let mut o = overlay_in(format, &l1, "l1.vmdk", Some((chain0, "base.vmdk")))?;
    fill_both(
        &raw1,
        &mut o,
        &[(0, 1), (5, 2), (31, 3), (32, 4), (1535, 5)],
    )?;
    assert_eq!(o.grains()?, 5);
    o.finish()?;
    qemu_check(&l1)?;
    assert_eq!(backing_chain(&l1)?, vec!["l1.vmdk", "base.vmdk"]);
    assert_eq!(create_types(&l1)?, vec![ct, "vmfs"]);
    to_raw(&l1, &back)?;
    assert!(
        same(&raw1, &back)?,
        "{ct}: the chain holds the first delta's raw image"
    );
    let mine = d.join("mine.raw");
    chain_to_raw(&open_chain(&l1)?, &mine)?;
    assert!(same(&raw1, &mine)?, "{ct}: our reader agrees");

    // A second delta: a grain changed in part (the rest copied from below), one zeroed,
    // one new.
    let raw2 = d.join("r2.raw");
    std::fs::copy(&raw1, &raw2)?;
    let chain1 = Arc::new(open_chain(&l1)?);
    let l2 = d.join("l2.vmdk");
    let mut o = overlay_in(format, &l2, "l2.vmdk", Some((chain1, "l1.vmdk")))?;
    fill_both(&raw2, &mut o, &[(700, 7)])?;
    zero_and_poke(&raw2, &mut o, 32, 5 * GRAIN + 4096 + 100)?;
    assert_eq!(o.grains()?, 3);
    o.finish()?;
    qemu_check(&l2)?;
    assert_eq!(backing_chain(&l2)?, vec!["l2.vmdk", "l1.vmdk", "base.vmdk"]);
    assert_eq!(create_types(&l2)?, vec![ct, ct, "vmfs"]);
    to_raw(&l2, &back)?;
    assert!(
        same(&raw2, &back)?,
        "{ct}: the chain holds the second delta's raw image"
    );
    chain_to_raw(&open_chain(&l2)?, &mine)?;
    assert!(same(&raw2, &mine)?, "{ct}: our reader agrees");
    // The parent's files were not touched.
    to_raw(&l1, &back)?;
    assert!(same(&raw1, &back)?, "{ct}: the parent is unchanged");

    // The descriptor names the parent and the extent.
    let text = std::fs::read_to_string(&l2)?;
    let l1_cid = open_chain(&l1)?.top_cid();
    assert!(
        text.contains(&format!("parentCID={l1_cid:08x}\n")),
        "{text}"
    );
    assert!(text.contains("parentFileNameHint=\"l1.vmdk\"\n"), "{text}");
    assert!(text.contains(&format!("createType=\"{ct}\"\n")), "{text}");
    let extent = format.extent_name("l2.vmdk");
    let kind = format.extent_kind().keyword();
    assert!(
        text.contains(&format!("RW {} {kind} \"{extent}\"\n", SIZE / SECTOR)),
        "{text}"
    );
    Ok(())
}

/// In `d`: a flat base disk and one delta `l1.vmdk` on it in `format` holding `grains` (as
/// `fill` writes them, in that order), and the raw image it stands for.
fn one_delta(
    d: &std::path::Path,
    format: DiskFormat,
    grains: &[(u64, u8)],
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let base = d.join("base.vmdk");
    build_base(&base, SIZE / 1024)?;
    let raw = d.join("r.raw");
    let l1 = d.join("l1.vmdk");
    let parent = Some((Arc::new(open_chain(&base)?), "base.vmdk"));
    let mut o = overlay_in(format, &l1, "l1.vmdk", parent)?;
    fill_both(&raw, &mut o, grains)?;
    o.finish()?;
    Ok((raw, l1))
}

/// The bytes of a vmfsSparse extent, field by field, for a disk holding two grains: the
/// 2048-byte COWD header, the grain directory right after it, grains from the first 4 KiB
/// boundary as runs of 128 one-sector grains, then one grain table per 2 MiB that holds
/// grains.
fn cowd_extent_bytes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let (raw, l1) = one_delta(d, DiskFormat::VmfsSparse, &[(40, 0xa1), (2, 0xb2)])?;
    let b = std::fs::read(d.join("l1-delta.vmdk"))?;
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let sectors = (SIZE / SECTOR) as u32;
    let gd_entries = sectors.div_ceil(4096);
    assert_eq!(&b[0..4], b"COWD");
    assert_eq!(u32_at(4), 1, "version");
    assert_eq!(u32_at(8), 3, "flags");
    assert_eq!(u32_at(12), sectors, "numSectors");
    assert_eq!(u32_at(16), 1, "grainSize");
    assert_eq!(u32_at(20), 4, "gdOffset");
    assert_eq!(u32_at(24), gd_entries, "numGDEntries");
    // Directory: 96 entries = 384 bytes, one sector; grains from sector 8.
    let first = 8u32;
    // Grain 40 was written first, at sector 8; grain 2 at 8 + 128.
    let gt_at = first + 2 * 128;
    let gt_sectors = 4096 * 4 / 512;
    assert_eq!(
        u32_at(28),
        gt_at + 2 * gt_sectors,
        "freeSector: after two tables"
    );
    assert_eq!(b.len() as u64, u64::from(u32_at(28)) * SECTOR);
    let gd = |i: usize| u32_at(4 * 512 + 4 * i);
    assert_eq!(gd(0), gt_at, "64 KiB grain 2 is in the first 2 MiB");
    assert_eq!(gd(1), gt_at + gt_sectors, "64 KiB grain 40 in the second");
    assert!((2..gd_entries as usize).all(|i| gd(i) == 0));
    let gte = |t: u32, i: usize| u32_at((t * 512) as usize + 4 * i);
    for k in 0..128 {
        assert_eq!(gte(gd(0), 2 * 128 + k), first + 128 + k as u32);
        assert_eq!(gte(gd(1), 8 * 128 + k), first + k as u32);
    }
    assert_eq!(gte(gd(0), 0), 0);
    assert_eq!(gte(gd(1), 9 * 128), 0);
    assert_eq!(
        b[first as usize * 512 + 7],
        40,
        "the grain number `fill` puts at byte 7"
    );
    assert_eq!(b[first as usize * 512], 0xa1);
    assert_eq!(b[(first as usize + 128) * 512], 0xb2);
    // qemu reads exactly those bytes.
    let back = d.join("back.raw");
    to_raw(&l1, &back)?;
    assert!(same(&raw, &back)?);
    Ok(())
}

/// The bytes of a seSparse extent, field by field, for a disk holding three blocks in two
/// grain tables: the constant and volatile headers, the directory at sector 8, the tables
/// region sized for the whole disk, grains from the next 64 KiB boundary (16 grains of 4 KiB
/// per 64 KiB block, in the order they were written), then the free bitmap and backmap.
fn sesparse_extent_bytes() -> Result<()> {
    use imagestore_vsphere::vmdk::sesparse::stored_entry;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let grains = [(40, 0xa1), (2, 0xb2), (300, 0xc3)];
    let (raw, l1) = one_delta(d, DiskFormat::SeSparse, &grains)?;
    let b = std::fs::read(d.join("l1-sesparse.vmdk"))?;
    let at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let sectors = SIZE / SECTOR;
    let want: [(usize, u64); 26] = [
        (0, 0xcafe_babe),
        (8, 0x0000_0002_0000_0001),
        (16, sectors),
        (24, 8),
        (32, 64),
        (40, 0),
        (80, 1), // volatile header
        (88, 1),
        (96, 2), // journal header
        (104, 1),
        (112, 3), // journal
        (120, 1),
        (128, 8), // grain directory: 6 tables, one sector
        (136, 1),
        (144, 16), // grain tables: 6 × 64 sectors
        (152, 384),
        (160, 896), // free bitmap after 48 grains of 8 sectors from 512
        (168, 1),
        (176, 897), // backmap: 48 entries of 8 bytes
        (184, 1),
        (192, 512), // grains
        (200, 384),
        (512, 0xcafe_cafe), // volatile: two tables in use, next transaction 1
        (520, 2),
        (528, 1),
        (536, 0),
    ];
    for (o, v) in want {
        assert_eq!(at(o), v, "u64 at byte {o}");
    }
    assert_eq!(b.len(), 898 * 512);
    let gd = |i: usize| at(8 * 512 + 8 * i);
    assert_eq!(
        gd(0),
        0x1000_0000_0000_0000,
        "blocks 2 and 40 are in table 0"
    );
    assert_eq!(gd(1), 0x1000_0000_0000_0001, "block 300 is in table 1");
    assert!((2..6).all(|i| gd(i) == 0));
    let gte = |t: usize, i: usize| at((16 + 64 * t) * 512 + 8 * i);
    for k in 0..16 {
        assert_eq!(gte(0, 2 * 16 + k), stored_entry(16 + k as u64));
        assert_eq!(gte(0, 40 * 16 + k), stored_entry(k as u64));
        assert_eq!(gte(1, (300 - 256) * 16 + k), stored_entry(32 + k as u64));
    }
    assert_eq!(gte(0, 0), 0);
    assert_eq!(gte(1, 0), 0);
    assert_eq!(b[512 * 512], 0xa1);
    assert_eq!(b[(512 + 128) * 512], 0xb2);
    assert_eq!(b[(512 + 256) * 512], 0xc3);
    // qemu reads exactly those bytes.
    let back = d.join("back.raw");
    to_raw(&l1, &back)?;
    assert!(same(&raw, &back)?);
    Ok(())
}

/// Damaged or hostile native disks are refused with an error naming what is wrong, never
/// read wrong: scattered grains, tables past the end of the file, extents outside the
/// disk's folder, absurd capacities, unknown header values, a dirty SEsparse journal.
fn damaged_native_disks_are_refused() -> Result<()> {
    use std::os::unix::fs::FileExt as _;
    fn refused(disk: &std::path::Path, want: &str) -> Result<()> {
        match open_chain(disk) {
            Ok(_) => anyhow::bail!("{} opened; want an error with {want:?}", disk.display()),
            Err(e) if e.to_string().contains(want) => Ok(()),
            Err(e) => anyhow::bail!("error {e}; want one with {want:?}"),
        }
    }
    fn poke(path: &std::path::Path, at: u64, bytes: &[u8]) -> Result<()> {
        File::options()
            .write(true)
            .open(path)?
            .write_all_at(bytes, at)?;
        Ok(())
    }
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    // vmfsSparse: the grains of block 2 start at sector 8; its table is the first.
    let (_, l1) = one_delta(d, DiskFormat::VmfsSparse, &[(2, 0xb2)])?;
    let extent = d.join("l1-delta.vmdk");
    let pristine = std::fs::read(&extent)?;
    let u32_at = |o: usize| u32::from_le_bytes(pristine[o..o + 4].try_into().unwrap());
    let gt = u64::from(u32_at(4 * 512)) * SECTOR;
    poke(&extent, gt + 4 * (2 * 128 + 5), &9999u32.to_le_bytes())?;
    refused(&l1, "are not stored together")?;
    std::fs::write(&extent, &pristine)?;
    poke(&extent, 4 * 512, &0x00ff_ffffu32.to_le_bytes())?;
    refused(&l1, "lies past the end of the file")?;
    std::fs::write(&extent, &pristine)?;
    poke(&extent, 16, &3u32.to_le_bytes())?;
    refused(&l1, "grain size of 3 sectors")?;
    std::fs::write(&extent, &pristine)?;
    open_chain(&l1)?;
    let text = std::fs::read_to_string(&l1)?;
    std::fs::write(
        &l1,
        text.replace("\"l1-delta.vmdk\"", "\"../l1-delta.vmdk\""),
    )?;
    refused(&l1, "is not a file name in the disk's folder")?;
    let base = d.join("base.vmdk");
    let text = std::fs::read_to_string(&base)?;
    let sectors = (SIZE / SECTOR).to_string();
    std::fs::write(&base, text.replace(&sectors, "4398046511104"))?;
    refused(&base, "capacity of 4398046511104 sectors")?;

    // seSparse.
    let d = &d.join("se");
    std::fs::create_dir(d)?;
    let (_, l1) = one_delta(d, DiskFormat::SeSparse, &[(2, 0xb2)])?;
    let extent = d.join("l1-sesparse.vmdk");
    let pristine = std::fs::read(&extent)?;
    poke(&extent, 8 * 512, &0x2000_0000_0000_0000u64.to_le_bytes())?;
    refused(&l1, "bad grain directory entry 0")?;
    std::fs::write(&extent, &pristine)?;
    poke(&extent, 8 * 512, &0x1000_0000_0000_0777u64.to_le_bytes())?;
    refused(&l1, "grain table 1911 lies outside the tables region")?;
    std::fs::write(&extent, &pristine)?;
    poke(&extent, 40, &1u64.to_le_bytes())?;
    refused(&l1, "unsupported flags")?;
    std::fs::write(&extent, &pristine)?;
    poke(&extent, 512 + 24, &1u64.to_le_bytes())?;
    refused(&l1, "the journal must be replayed")?;
    std::fs::write(&extent, &pristine)?;
    // Half of block 2's grains zeroed: not one run.
    poke(
        &extent,
        16 * 512 + 8 * 32,
        &0x2000_0000_0000_0000u64.to_le_bytes(),
    )?;
    refused(&l1, "not one run of stored grains")?;
    std::fs::write(&extent, &pristine)?;
    open_chain(&l1)?;
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
            "vmfs_sparse_disks_pass_qemu_img",
            support::programs(&["qemu-img"]),
            |()| native_disks_pass_qemu_img(DiskFormat::VmfsSparse),
        ),
        support::trial(
            "se_sparse_disks_pass_qemu_img",
            support::programs(&["qemu-img"]),
            |()| native_disks_pass_qemu_img(DiskFormat::SeSparse),
        ),
        support::trial(
            "sesparse_extent_bytes",
            support::programs(&["qemu-img"]),
            |()| sesparse_extent_bytes(),
        ),
        support::trial(
            "damaged_native_disks_are_refused",
            support::programs(&["qemu-img"]),
            |()| damaged_native_disks_are_refused(),
        ),
        support::trial(
            "cowd_extent_bytes",
            support::programs(&["qemu-img"]),
            |()| cowd_extent_bytes(),
        ),
        support::trial(
            "reads_chains_qemu_wrote",
            support::programs(&["qemu-img", "qemu-io"]),
            |()| reads_chains_qemu_wrote(),
        ),
    ])
}
