//! `cargo xtask bench vmdk`, on the Debian fixture:
//!
//! * writing the debootstrap rootfs layer as a delta disk on the default scratch disk
//!   (gunzip, TOC pass, ext4 apply through debugfs, delta disk, fsync) against
//!   `mke2fs -t ext4 -d ROOTFS` + `qemu-img convert -O vmdk` + `sync` of the same tree,
//!   same run; the builder's work folder is on `/dev/shm` when there is one
//!   (`VMDK_WORK` overrides);
//! * the size of the delta disk of a layer adding one 1 MiB file (must stay under 4 MiB).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::{report, runs};
use crate::fixture;
use crate::util::{cargo, median, need, output, run, timed, work_dir};

fn sync() {
    let _ = Command::new("sync").status();
}

/// `cargo xtask bench vmdk`.
pub fn bench() -> Result<()> {
    need("qemu-img", "qemu-utils")?;
    need("mke2fs", "e2fsprogs")?;
    need("debugfs", "e2fsprogs")?;
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "imagestore-vsphere",
        "--example",
        "vmdk_build",
    ]))?;
    let bin = crate::util::root().join("target/release/examples/vmdk_build");
    let fx = fixture::debian()?;
    let dir = work_dir("bench-vmdk")?;
    let _ = std::fs::remove_dir_all(&dir);
    for d in ["scratch", "l0", "l1", "peer", "one"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    let work = match std::env::var_os("VMDK_WORK") {
        Some(w) => w.into(),
        None if Path::new("/dev/shm").is_dir() => {
            Path::new("/dev/shm").join("imagestore-bench-vmdk")
        }
        None => dir.join("work"),
    };
    let scratch = dir.join("scratch/scratch.vmdk");
    run(Command::new(&bin)
        .env("VMDK_WORK", &work)
        .arg("scratch")
        .arg(&scratch))?;
    let layer0 = &fx.layers[0];
    let l0 = dir.join("l0/l0.vmdk");
    let raw = dir.join("peer/p.raw");
    let peer_disk = dir.join("peer/p.vmdk");
    let (mut ours, mut peer) = (Vec::new(), Vec::new());
    for _ in 0..runs() {
        let _ = std::fs::remove_file(&l0);
        sync();
        let t = timed(
            Command::new(&bin)
                .env("VMDK_WORK", &work)
                .arg("layer")
                .arg(&scratch)
                .arg(&l0)
                .arg(layer0),
        )?;
        ours.push(t.secs);
        println!("RSS name=vmdk-rootfs-layer peak_mib={:.0}", t.peak_mib);
        let _ = std::fs::remove_file(&raw);
        let _ = std::fs::remove_file(&peer_disk);
        sync();
        let t = timed(Command::new("sh").arg("-c").arg(format!(
            "mke2fs -q -F -t ext4 -d '{}' '{}' 8000000k && qemu-img convert -O vmdk '{}' '{}' && sync '{}'",
            fx.rootfs.display(),
            raw.display(),
            raw.display(),
            peer_disk.display(),
            peer_disk.display()
        )))?;
        peer.push(t.secs);
    }
    report(
        "vmdk-rootfs-layer",
        median(&mut ours),
        "mke2fs-d+qemu-img-convert",
        median(&mut peer),
    );
    let _ = std::fs::remove_file(&raw);

    // A layer adding one 1 MiB file.
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
    let l1 = dir.join("l1/l1.vmdk");
    let out = output(
        Command::new(&bin)
            .env("VMDK_WORK", &work)
            .arg("layer")
            .arg(&l0)
            .arg(&l1)
            .arg(layer0)
            .arg(&tgz),
    )?;
    let size = std::fs::metadata(&l1).context("one-file delta disk")?.len();
    println!(
        "SIZE name=vmdk-one-mib-file-delta bytes={size} build={}",
        out.trim()
    );
    let _ = std::fs::remove_dir_all(&work);
    if size >= 4 << 20 {
        bail!("a 1 MiB file layer made a {size}-byte delta disk (limit 4 MiB)");
    }
    Ok(())
}
