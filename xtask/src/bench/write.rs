//! `cargo xtask bench write`: writing a generated >= 1 GiB layer into the local backend,
//! against `ctr content ingest --expected-digest` into a private containerd (fresh content
//! each run) and against the floor: sha256 of the bytes plus writing them with fsync.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::containerd::Containerd;
use super::{report, runs};
use crate::util::{XorShift, median, run, timed, work_dir};

const BIG_FILES: usize = 4;
const BIG_SIZE: usize = 240 << 20;
const SMALL_FILES: usize = 12_000;

/// Generates the benchmark layer (large and small files), once.
pub(super) fn layer(path: &Path) -> Result<u64> {
    if let Ok(m) = std::fs::metadata(path)
        && m.len() >= 1 << 30
    {
        return Ok(m.len());
    }
    eprintln!("generating {} ...", path.display());
    let tmp = path.with_extension("partial");
    let mut b = tar::Builder::new(BufWriter::new(File::create(&tmp)?));
    let mut rng = XorShift(0x5eed_1234_abcd_ef01);
    let mut buf = vec![0u8; BIG_SIZE];
    for i in 0..BIG_FILES {
        rng.fill(&mut buf);
        let mut h = tar::Header::new_gnu();
        h.set_size(buf.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, format!("big/blob{i}.bin"), buf.as_slice())?;
    }
    for i in 0..SMALL_FILES {
        let n = (rng.next() % (16 << 10)) as usize;
        rng.fill(&mut buf[..n]);
        let mut h = tar::Header::new_gnu();
        h.set_size(n as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, format!("small/{:03}/f{i}", i % 200), &buf[..n])?;
    }
    b.into_inner()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(std::fs::metadata(path)?.len())
}

/// `sha256:<hex>` of a file's bytes.
pub(super) fn digest_of(path: &Path) -> Result<String> {
    let mut input = File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut input, &mut h)?;
    Ok(format!("sha256:{:x}", h.finalize()))
}

/// The floor: sha256 of the bytes while writing them, then fsync.
fn floor(src: &Path, dst: &Path) -> Result<(f64, String)> {
    let start = Instant::now();
    let mut input = File::open(src)?;
    let mut out = File::create(dst)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    out.sync_all()?;
    Ok((
        start.elapsed().as_secs_f64(),
        format!("sha256:{:x}", h.finalize()),
    ))
}

fn sync() {
    let _ = Command::new("sync").status();
}

/// Runs the benchmark.
pub fn bench() -> Result<()> {
    let bin = crate::util::release_cli(None)?;
    let dir = work_dir("bench-write")?;
    let src = dir.join("layer.tar");
    let size = layer(&src)?;
    let (_, digest) = floor(&src, &dir.join("warm.out"))?;
    let _ = std::fs::remove_file(dir.join("warm.out"));
    eprintln!("layer: {size} bytes, {digest}");

    let (mut ours, mut ctr, mut flo, mut rss) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs() {
        // Ours: a fresh store each run.
        let store = dir.join("store");
        let _ = std::fs::remove_dir_all(&store);
        let url = format!("file://{}", store.display());
        run(Command::new(&bin)
            .args(["--url", &url, "store", "create", "bench"])
            .stdout(Stdio::null()))?;
        sync();
        let t = timed(
            Command::new(&bin)
                .args([
                    "--url", &url, "image", "write", "--store", "bench", "--parent", "scratch",
                    "--id", "layer", "--sum", &digest,
                ])
                .arg(&src),
        )?;
        ours.push(t.secs);
        rss.push(t.peak_mib);

        // containerd: a fresh root each run, so the blob is really ingested.
        let ctrd = Containerd::start(&dir.join("containerd"))?;
        sync();
        let input = File::open(&src)?;
        let t = timed(
            ctrd.ctr()
                .args([
                    "content",
                    "ingest",
                    "--expected-size",
                    &size.to_string(),
                    "--expected-digest",
                    &digest,
                    &format!("bench-{i}"),
                ])
                .stdin(input),
        )
        .context("ctr content ingest")?;
        ctr.push(t.secs);
        drop(ctrd);

        let out = dir.join("floor.out");
        let _ = std::fs::remove_file(&out);
        sync();
        let (secs, d) = floor(&src, &out)?;
        anyhow::ensure!(d == digest, "floor digest changed");
        flo.push(secs);
        let _ = std::fs::remove_file(&out);
        eprintln!(
            "run {i}: ours {:.3}s, ctr {:.3}s, floor {:.3}s",
            ours[i], ctr[i], flo[i]
        );
    }
    let o = median(&mut ours);
    report("write", o, "ctr-content-ingest", median(&mut ctr));
    report("write", o, "sha256+fsync", median(&mut flo));
    println!(
        "RSS name=write peak_mib={:.1}",
        rss.iter().copied().fold(0.0, f64::max)
    );
    Ok(())
}
