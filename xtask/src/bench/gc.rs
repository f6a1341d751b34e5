//! `cargo xtask bench gc`: a store of 5,000 images of which 4,500 nothing keeps (500
//! referenced base images, 1,500 unreferenced chains of three), collected on `file://` and on
//! moto. Each run populates a fresh store, runs a dry run, then the real run, checks that the
//! real run deleted exactly what the dry run listed and that the 500 referenced images and an
//! exact usage remain. The measured side is the facade's `gcbench` example.
//!
//! Peers, measured in the same run: on `file://`, `rm -rf` of the same 4,500 image folders in
//! a copy of the store followed by `sync -f` (the bare file-system cost of the deletes,
//! without any checks); on moto, deleting 4,500 small objects one request each, 16 at a time
//! (the bare cost of one request per image). Targets: under 10 s on `file://`, under 60 s on
//! moto.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};

use super::{report, runs};
use crate::s3::S3Servers;
use crate::util::{cargo, median, output, run, target_dir, work_dir};

/// Images the collection must delete.
const DOOMED: usize = 4500;

/// `secs=<f>` from a measured step's output.
fn secs(out: &str) -> Result<f64> {
    out.lines()
        .find_map(|l| l.strip_prefix("secs="))
        .context("no secs= line")?
        .trim()
        .parse()
        .context("bad secs= line")
}

/// One populate / dry run / real run / check cycle on store `s` at `url`; `populated` runs
/// between the populate and the dry run. Returns the real run's seconds and the ids it
/// deleted.
fn cycle(
    bin: &Path,
    env: &dyn Fn(&mut Command),
    url: &str,
    dir: &Path,
    populated: &dyn Fn() -> Result<()>,
) -> Result<(f64, Vec<String>)> {
    let cmd = |args: &[&str]| {
        let mut c = Command::new(bin);
        c.args(args);
        env(&mut c);
        c
    };
    let t = std::time::Instant::now();
    run(&mut cmd(&["populate", url, "s"]))?;
    eprintln!("populated in {:.1}s", t.elapsed().as_secs_f64());
    populated()?;
    let (dry, real) = (dir.join("dry.txt"), dir.join("real.txt"));
    let dry_s = secs(&output(&mut cmd(&[
        "gc",
        url,
        "s",
        "dry",
        &dry.display().to_string(),
    ]))?)?;
    let real_s = secs(&output(&mut cmd(&[
        "gc",
        url,
        "s",
        "real",
        &real.display().to_string(),
    ]))?)?;
    let (dry, real) = (
        std::fs::read_to_string(&dry)?,
        std::fs::read_to_string(&real)?,
    );
    ensure!(
        dry == real,
        "the real run deleted other images than the dry run listed"
    );
    let ids: Vec<String> = dry
        .lines()
        .filter(|l| !l.starts_with("freed "))
        .map(str::to_owned)
        .collect();
    ensure!(
        ids.len() == DOOMED,
        "{} images collected, expected {DOOMED}",
        ids.len()
    );
    run(&mut cmd(&["check", url, "s"]))?;
    eprintln!("dry run {dry_s:.3}s, real run {real_s:.3}s, the same {DOOMED} images");
    Ok((real_s, ids))
}

/// Runs the benchmark on `file://` and moto (`parts`: `local`, `s3`, or both).
pub fn bench(parts: &[&str]) -> Result<()> {
    let part = |p: &str| parts.is_empty() || parts.contains(&p);
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "imagestore",
        "--features",
        "local,s3",
        "--example",
        "gcbench",
    ]))?;
    let bin = target_dir()?.join("release/examples/gcbench");
    let dir = work_dir("bench-gc")?;

    if part("local") {
        let (mut ours, mut peer) = (Vec::new(), Vec::new());
        let (root, copy) = (dir.join("local"), dir.join("local-peer"));
        for i in 0..runs() {
            let _ = std::fs::remove_dir_all(&root);
            let _ = std::fs::remove_dir_all(&copy);
            let url = format!("file://{}", root.display());
            // The peer deletes the same folders in a copy of the populated store.
            let copy_store = || {
                run(Command::new("cp").args([
                    "-a",
                    &root.display().to_string(),
                    &copy.display().to_string(),
                ]))
            };
            let (secs_ours, ids) = cycle(&bin, &|_| {}, &url, &dir, &copy_store)?;
            let images = copy.join("stores/s/images");
            // No shell between us and the paths: `rm` gets them as arguments.
            let t = std::time::Instant::now();
            let status = Command::new("rm")
                .arg("-rf")
                .args(ids.iter().map(|id| images.join(id)))
                .status()
                .context("starting rm")?;
            ensure!(
                status.success(),
                "rm -rf of the peer's folders failed: {status}"
            );
            run(Command::new("sync").arg("-f").arg(&copy))?;
            let secs_peer = t.elapsed().as_secs_f64();
            eprintln!("run {i}: ours {secs_ours:.3}s, rm -rf + sync {secs_peer:.3}s");
            ours.push(secs_ours);
            peer.push(secs_peer);
        }
        let _ = std::fs::remove_dir_all(&root);
        let _ = std::fs::remove_dir_all(&copy);
        report(
            "gc-local-4500",
            median(&mut ours),
            "rm-rf+sync",
            median(&mut peer),
        );
        println!("TARGET name=gc-local-4500 target_s=10.000");
    }

    if part("s3") {
        let servers = S3Servers::start()?;
        let url = servers.moto_url.replacen('?', "/gcbench?", 1);
        // Populating 5,000 images on moto takes minutes: one run.
        let (ours, _) = cycle(&bin, &|c| servers.env(c), &url, &dir, &|| Ok(()))?;
        run(cargo().args([
            "build",
            "--release",
            "-p",
            "imagestore-s3",
            "--example",
            "s3bench",
        ]))?;
        let mut c = Command::new(target_dir()?.join("release/examples/s3bench"));
        c.args(["deletes", &url, &DOOMED.to_string()]);
        servers.env(&mut c);
        let peer = secs(&output(&mut c)?)?;
        eprintln!("moto: ours {ours:.3}s, {DOOMED} plain deletes {peer:.3}s");
        report("gc-moto-4500", ours, "object_store-deletes", peer);
        println!("TARGET name=gc-moto-4500 target_s=60.000");
        drop(servers);
    }
    Ok(())
}
