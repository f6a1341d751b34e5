//! `cargo xtask bench import`: importing the three-layer debootstrap image (the fixture's
//! docker-archive, ~200 MB of uncompressed layers) into the local backend, against two peers
//! in the same run:
//!
//! * `skopeo copy docker-archive:… oci:…`: verified blobs into an OCI layout, the same end
//!   state as ours (blobs kept as they are, digests checked);
//! * `ctr images import` into a private containerd (fresh each run), which also unpacks the
//!   layers into its snapshotter.
//!
//! Every run starts from an empty destination and a `sync`.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};

use super::containerd::Containerd;
use super::{report, runs};
use crate::fixture;
use crate::util::{median, need, timed, work_dir};

fn sync() {
    let _ = Command::new("sync").status();
}

/// Runs the benchmark.
pub fn bench() -> Result<()> {
    need("skopeo", "skopeo")?;
    let bin = crate::util::release_cli(None)?;
    let f = fixture::debian()?;
    let archive = f.docker_archive.clone();
    let size = std::fs::metadata(&archive)?.len();
    eprintln!("input: {} ({size} bytes)", archive.display());
    let dir = work_dir("bench-import")?;

    let (mut ours, mut sko, mut ctr, mut rss) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut top = String::new();
    for i in 0..runs() {
        let store = dir.join("store");
        let _ = std::fs::remove_dir_all(&store);
        let url = format!("file://{}", store.display());
        sync();
        let t = timed(
            Command::new(&bin)
                .args(["--url", &url, "oci", "import", "--store", "bench"])
                .arg(&archive),
        )?;
        ours.push(t.secs);
        rss.push(t.peak_mib);
        let out = Command::new(&bin)
            .args(["--url", &url, "--json", "image", "ls", "--store", "bench"])
            .stderr(Stdio::inherit())
            .output()?;
        let images: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        ensure!(
            images.as_array().map(Vec::len) == Some(3),
            "expected 3 images after the import, got {images}"
        );
        if let Some(t) = images
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["depth"] == 3)
            .and_then(|i| i["id"].as_str())
        {
            top = t.to_owned();
        }

        let layout = dir.join("skopeo-oci");
        let _ = std::fs::remove_dir_all(&layout);
        sync();
        let t = timed(Command::new("skopeo").args([
            "copy",
            "--quiet",
            &format!("docker-archive:{}", archive.display()),
            &format!("oci:{}:latest", layout.display()),
        ]))
        .context("skopeo copy")?;
        sko.push(t.secs);

        let ctrd = Containerd::start(&dir.join("containerd"))?;
        sync();
        let t = timed(ctrd.ctr().args(["images", "import"]).arg(&archive))
            .context("ctr images import")?;
        ctr.push(t.secs);
        drop(ctrd);
        eprintln!(
            "run {i}: ours {:.3}s, skopeo {:.3}s, ctr {:.3}s",
            ours[i], sko[i], ctr[i]
        );
    }
    eprintln!("top image: {top}");
    let o = median(&mut ours);
    report("import", o, "skopeo-copy-to-oci", median(&mut sko));
    report("import", o, "ctr-images-import", median(&mut ctr));
    println!(
        "RSS name=import peak_mib={:.1}",
        rss.iter().copied().fold(0.0, f64::max)
    );
    Ok(())
}
