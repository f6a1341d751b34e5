//! `cargo xtask bench vmdk`, on the Debian fixture:
//!
//! * writing the debootstrap rootfs layer into a `vmdk://` store on the default scratch disk
//!   (`imagestore image write`: hash, TOC pass, files streamed into ext4 in-process, delta
//!   disk, read-back, commit) against `mke2fs -t ext4 -d ROOTFS`, `qemu-img convert -O vmdk`
//!   and `sync` of the same tree, same run. Everything is on the root disk under the project's
//!   target folder: the peer's intermediate raw image (ours keeps none; `VMDK_WORK` moves the
//!   work folder) and both disks;
//! * the size of the delta disk of a layer adding one 1 MiB file (must stay under 4 MiB).
//!
//! `cargo xtask bench vmdk-dir [N...]` (default 25,000 and 100,000) writes a layer holding one
//! directory of N empty files into a fresh `vmdk://` store, against `mke2fs -d` of the same
//! tree + `qemu-img convert`. `mke2fs -d` inserts names one by one (`ext2fs_link`, which
//! scans the directory), so it grows with the square of N; ours writes each directory once.
//! `PEER_MAX` (default 50,000) skips the peer above that many entries, where it takes many
//! minutes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use super::{report, runs};
use crate::fixture;
use crate::util::{median, need, run, timed, work_dir};

fn sync() {
    let _ = Command::new("sync").status();
}

fn sha256_file(p: &Path) -> Result<String> {
    let mut f = std::fs::File::open(p)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(format!("sha256:{:x}", h.finalize()))
}

/// `imagestore --url URL image write` of `layer` as `id` on `parent` in store `bench`.
fn write_cmd(bin: &Path, url: &str, parent: &str, id: &str, layer: &Path) -> Result<Command> {
    let mut cmd = Command::new(bin);
    cmd.args([
        "--url", url, "image", "write", "--store", "bench", "--parent",
    ])
    .args([parent, "--id", id, "--sum", &sha256_file(layer)?])
    .arg(layer)
    .stdout(Stdio::null());
    Ok(cmd)
}

/// The peer: `mke2fs -d TREE` into raw image `raw`, `qemu-img convert` of it into `disk`,
/// `sync` of the disk. The paths reach the shell as positional arguments, never as script text.
fn peer_cmd(tree: &Path, raw: &Path, disk: &Path) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"mke2fs -q -F -t ext4 -d "$1" "$2" 8000000k && qemu-img convert -O vmdk "$2" "$3" && sync "$3""#)
        .arg("sh")
        .args([tree, raw, disk]);
    cmd
}

/// Checks the tools and builds the release CLI with the disk backends; its path.
fn release_cli() -> Result<PathBuf> {
    need("qemu-img", "qemu-utils")?;
    need("mke2fs", "e2fsprogs")?;
    crate::util::release_cli(Some("vsphere"))
}

/// `cargo xtask bench vmdk-dir [N...]`.
pub fn bench_dir(sizes: &[&str]) -> Result<()> {
    let sizes: Vec<usize> = if sizes.is_empty() {
        vec![25_000, 100_000]
    } else {
        sizes
            .iter()
            .map(|s| s.parse().with_context(|| format!("{s:?} is not a count")))
            .collect::<Result<_>>()?
    };
    let peer_max: usize = match std::env::var("PEER_MAX") {
        Ok(v) => v.parse().with_context(|| format!("PEER_MAX={v:?}"))?,
        Err(_) => 50_000,
    };
    let bin = release_cli()?;
    let dir = work_dir("bench-vmdk-dir")?;
    for n in sizes {
        let _ = std::fs::remove_dir_all(&dir);
        let tree = dir.join("tree");
        let big = tree.join("big");
        std::fs::create_dir_all(&big)?;
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        tar.append_data(&mut h, "big", std::io::empty())?;
        for i in 0..n {
            let name = format!("entry-{i:07}");
            std::fs::File::create(big.join(&name))?;
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o644);
            h.set_size(0);
            tar.append_data(&mut h, format!("big/{name}"), std::io::empty())?;
        }
        let layer = dir.join("big.tar");
        std::fs::write(&layer, tar.into_inner()?)?;
        let url = format!("vmdk://{}", dir.join("ds").display());
        run(Command::new(&bin)
            .args(["--url", &url, "store", "create", "bench"])
            .stdout(Stdio::null()))?;
        sync();
        let ours = timed(&mut write_cmd(&bin, &url, "scratch", "big", &layer)?)?;
        println!("TIME name=vmdk-dir-{n} secs={:.2}", ours.secs);
        println!("RSS name=vmdk-dir-{n} peak_mib={:.0}", ours.peak_mib);
        if n <= peer_max {
            let raw = dir.join("peer.raw");
            let disk = dir.join("peer.vmdk");
            sync();
            let peer = timed(&mut peer_cmd(&tree, &raw, &disk))?;
            report(
                &format!("vmdk-dir-{n}"),
                ours.secs,
                "mke2fs-d+qemu-img-convert",
                peer.secs,
            );
        }
        if n >= 100_000 && ours.secs >= 10.0 {
            bail!("a {n}-entry directory took {:.1} s (limit 10 s)", ours.secs);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `cargo xtask bench vmdk`.
pub fn bench() -> Result<()> {
    let bin = release_cli()?;
    let fx = fixture::debian()?;
    let dir = work_dir("bench-vmdk")?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("peer"))?;
    let work: PathBuf = match std::env::var_os("VMDK_WORK") {
        Some(w) => w.into(),
        None => dir.join("work"),
    };
    std::fs::create_dir_all(&work)?;
    let layer0 = &fx.layers[0];
    let raw = work.join("peer.raw");
    let peer_disk = dir.join("peer/p.vmdk");
    let (mut ours, mut peer) = (Vec::new(), Vec::new());
    let mut url = String::new();
    for i in 0..runs() {
        let ds = dir.join(format!("ds{i}"));
        url = format!("vmdk://{}?work={}", ds.display(), work.display());
        run(Command::new(&bin)
            .args(["--url", &url, "store", "create", "bench"])
            .stdout(Stdio::null()))?;
        sync();
        let t = timed(&mut write_cmd(&bin, &url, "scratch", "l0", layer0)?)?;
        ours.push(t.secs);
        println!("RSS name=vmdk-rootfs-layer peak_mib={:.0}", t.peak_mib);
        let _ = std::fs::remove_file(&raw);
        let _ = std::fs::remove_file(&peer_disk);
        sync();
        let t = timed(&mut peer_cmd(&fx.rootfs, &raw, &peer_disk))?;
        peer.push(t.secs);
        let _ = std::fs::remove_file(&raw);
    }
    report(
        "vmdk-rootfs-layer",
        median(&mut ours),
        "mke2fs-d+qemu-img-convert",
        median(&mut peer),
    );

    // A layer adding one 1 MiB file, on the last run's rootfs image.
    let src = dir.join("one/src");
    std::fs::create_dir_all(&src)?;
    let mut rng = crate::util::XorShift(0x9e37_79b9_7f4a_7c15);
    let mut data = vec![0u8; 1 << 20];
    rng.fill(&mut data);
    std::fs::write(src.join("one.bin"), &data)?;
    let tgz = dir.join("one/one.tar.gz");
    run(Command::new("tar")
        .arg("-C")
        .arg(&src)
        .arg("-czf")
        .arg(&tgz)
        .arg("one.bin"))?;
    run(&mut write_cmd(&bin, &url, "l0", "l1", &tgz)?)?;
    let ds = dir.join(format!("ds{}", runs() - 1));
    let l1 = ds.join("VIC/bench/images/l1/l1.vmdk");
    let size = std::fs::metadata(&l1)
        .with_context(|| format!("one-file delta disk {}", l1.display()))?
        .len();
    println!("SIZE name=vmdk-one-mib-file-delta bytes={size}");
    let _ = std::fs::remove_dir_all(&work);
    if size >= 4 << 20 {
        bail!("a 1 MiB file layer made a {size}-byte delta disk (limit 4 MiB)");
    }
    Ok(())
}
