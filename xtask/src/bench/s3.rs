//! `cargo xtask bench s3`: against moto started for the run, writing the generated >= 1 GiB
//! layer through the backend versus a plain `object_store` multipart put of the same bytes, and
//! listing a store of 10,000 images. The measured steps run in `imagestore-s3`'s `s3bench`
//! example, one process each, so each gets its own wall time and peak RSS.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use anyhow::Result;
use sha2::{Digest, Sha256};

use super::{report, runs};
use crate::s3::S3Servers;
use crate::util::{cargo, median, run, target_dir, timed, work_dir};

/// Images in the listed store.
const LIST_IMAGES: usize = 10_000;

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{:x}", h.finalize()))
}

/// Runs the benchmark: both parts, or only `write` or `list`.
pub fn bench(parts: &[&str]) -> Result<()> {
    let part = |p: &str| parts.is_empty() || parts.contains(&p);
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "imagestore-s3",
        "--example",
        "s3bench",
    ]))?;
    let bin = target_dir()?.join("release/examples/s3bench");
    let dir = work_dir("bench-write")?;
    let src = dir.join("layer.tar");
    let size = super::write::layer(&src)?;
    let digest = sha256_file(&src)?;
    eprintln!("layer: {size} bytes, {digest}");
    let servers = S3Servers::start()?;
    let base = servers.moto_url.replacen("?", "/bench?", 1);
    let cmd = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.args(args);
        servers.env(&mut c);
        c
    };

    if part("write") {
        write(&cmd, &src, &base, &digest)?;
    }
    if part("list") {
        list(&cmd, &base)?;
    }
    drop(servers);
    Ok(())
}

/// The write comparison.
fn write(cmd: &dyn Fn(&[&str]) -> Command, src: &Path, base: &str, digest: &str) -> Result<()> {
    let (mut ours, mut plain, mut rss, mut plain_rss) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let file = src.display().to_string();
    for i in 0..runs() {
        let t = timed(&mut cmd(&["ours", base, &file, digest]))?;
        ours.push(t.secs);
        rss.push(t.peak_mib);
        let t = timed(&mut cmd(&["plain", base, &file]))?;
        plain.push(t.secs);
        plain_rss.push(t.peak_mib);
        eprintln!(
            "run {i}: ours {:.3}s ({:.1} MiB), plain multipart {:.3}s ({:.1} MiB)",
            ours[i], rss[i], plain[i], plain_rss[i]
        );
    }
    report(
        "s3-write",
        median(&mut ours),
        "object_store-multipart",
        median(&mut plain),
    );
    println!(
        "RSS name=s3-write peak_mib={:.1} peer_peak_mib={:.1}",
        rss.iter().copied().fold(0.0, f64::max),
        plain_rss.iter().copied().fold(0.0, f64::max)
    );
    Ok(())
}

/// Populating (not timed against a target) and listing a store of [`LIST_IMAGES`] images.
fn list(cmd: &dyn Fn(&[&str]) -> Command, base: &str) -> Result<()> {
    let n = LIST_IMAGES.to_string();
    let t = timed(&mut cmd(&["populate", base, "listing", &n]))?;
    eprintln!("populated {n} images in {:.1}s", t.secs);
    let mut list = Vec::new();
    for _ in 0..runs() {
        list.push(timed(&mut cmd(&["list", base, "listing", &n]))?.secs);
    }
    println!(
        "BENCH name=s3-list-{n} ours_s={:.3} target_s=5.000",
        median(&mut list)
    );
    Ok(())
}
