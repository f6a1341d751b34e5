//! `cargo xtask bench vmdk`, on the Debian fixture:
//!
//! * writing the debootstrap rootfs layer into a `vmdk://` store on the default scratch disk
//!   (`imagestore image write`: hash, TOC pass, ext4 apply through debugfs, delta disk,
//!   commit) against `mke2fs -t ext4 -d ROOTFS` + `qemu-img convert -O vmdk` + `sync` of the
//!   same tree, same run. Both keep their intermediate raw image in the same work folder
//!   (`/dev/shm` when there is one, `VMDK_WORK` overrides) and write their disk to the
//!   project's target folder;
//! * the size of the delta disk of a layer adding one 1 MiB file (must stay under 4 MiB).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use super::{report, runs};
use crate::fixture;
use crate::util::{cargo, median, need, run, timed, work_dir};

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

/// `cargo xtask bench vmdk`.
pub fn bench() -> Result<()> {
    need("qemu-img", "qemu-utils")?;
    need("mke2fs", "e2fsprogs")?;
    need("debugfs", "e2fsprogs")?;
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "imagestore-cli",
        "--features",
        "vsphere",
    ]))?;
    let bin = crate::util::root().join("target/release/imagestore");
    let fx = fixture::debian()?;
    let dir = work_dir("bench-vmdk")?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("peer"))?;
    let work: PathBuf = match std::env::var_os("VMDK_WORK") {
        Some(w) => w.into(),
        None if Path::new("/dev/shm").is_dir() => {
            Path::new("/dev/shm").join("imagestore-bench-vmdk")
        }
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
        let t = timed(Command::new("sh").arg("-c").arg(format!(
            "mke2fs -q -F -t ext4 -d '{}' '{}' 8000000k && qemu-img convert -O vmdk '{}' '{}' && sync '{}'",
            fx.rootfs.display(),
            raw.display(),
            raw.display(),
            peer_disk.display(),
            peer_disk.display()
        )))?;
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
