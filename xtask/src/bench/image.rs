//! `cargo xtask bench checkout` and `cargo xtask bench export`, on the three-layer Debian
//! image of `cargo xtask fixture debian` written into a local store.
//!
//! * checkout: ours (`imagestore checkout --rootless`) against `umoci unpack --rootless` of the
//!   same image and against `tar -xzf` of the three layer tars in order, same run;
//! * export: the diff of a one-file layer on top of that image against its parent, and the
//!   full export of the same image, same run; then the same diff on a tiny base, to show the
//!   diff does not grow with the base.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::{report, runs};
use crate::fixture;
use crate::util::{median, need, run, timed, work_dir};

fn sha256_file(p: &Path) -> Result<String> {
    let mut f = std::fs::File::open(p)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(format!("sha256:{:x}", h.finalize()))
}

/// A local store at `dir` holding the Debian chain; returns the image ids, base first.
fn store_with_chain(bin: &Path, dir: &Path, layers: &[PathBuf]) -> Result<Vec<String>> {
    let _ = std::fs::remove_dir_all(dir);
    let url = format!("file://{}", dir.display());
    run(Command::new(bin)
        .args(["--url", &url, "store", "create", "bench"])
        .stdout(Stdio::null()))?;
    let mut parent = "scratch".to_owned();
    let mut ids = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let id = format!("layer{i}");
        let sum = sha256_file(layer)?;
        run(Command::new(bin)
            .args([
                "--url", &url, "image", "write", "--store", "bench", "--parent", &parent, "--id",
                &id, "--sum", &sum,
            ])
            .arg(layer)
            .stdout(Stdio::null()))?;
        parent = id.clone();
        ids.push(id);
    }
    Ok(ids)
}

fn build() -> Result<PathBuf> {
    crate::util::release_cli(None)
}

fn sync() {
    let _ = Command::new("sync").status();
}

/// `cargo xtask bench checkout`.
pub fn checkout() -> Result<()> {
    need("umoci", "umoci")?;
    let bin = build()?;
    let fx = fixture::debian()?;
    let dir = work_dir("bench-checkout")?;
    let ids = store_with_chain(&bin, &dir.join("store"), &fx.layers)?;
    let url = format!("file://{}", dir.join("store").display());
    let top = ids.last().context("no layers")?;
    let (mut ours, mut umoci, mut tar, mut rss) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs() {
        let out = dir.join("out");
        let _ = std::fs::remove_dir_all(&out);
        sync();
        let t = timed(
            Command::new(&bin)
                .args(["--url", &url, "checkout", "--store", "bench", top])
                .arg(&out)
                .arg("--rootless"),
        )?;
        ours.push(t.secs);
        rss.push(t.peak_mib);

        let bundle = dir.join("bundle");
        let _ = std::fs::remove_dir_all(&bundle);
        sync();
        let image = format!("{}:latest", fx.oci.display());
        umoci.push(
            timed(
                Command::new("umoci")
                    .args(["unpack", "--rootless", "--image", &image])
                    .arg(&bundle),
            )?
            .secs,
        );

        let plain = dir.join("tar");
        let _ = std::fs::remove_dir_all(&plain);
        std::fs::create_dir_all(&plain)?;
        sync();
        // GNU tar exits 2 ("Unexpected EOF") on umoci's small layers, which end without
        // padding or end-of-archive blocks, though it extracts them: time it all regardless.
        let script = fx
            .layers
            .iter()
            .map(|l| {
                format!(
                    "tar -xzf '{}' -C '{}' 2>/dev/null",
                    l.display(),
                    plain.display()
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
            + "; true";
        tar.push(timed(Command::new("sh").arg("-c").arg(script))?.secs);
        eprintln!(
            "run {i}: ours {:.3}s, umoci {:.3}s, tar {:.3}s",
            ours[i], umoci[i], tar[i]
        );
    }
    let o = median(&mut ours);
    report("checkout", o, "umoci-unpack-rootless", median(&mut umoci));
    report("checkout", o, "tar-x-layers", median(&mut tar));
    println!(
        "RSS name=checkout peak_mib={:.1}",
        rss.iter().copied().fold(0.0, f64::max)
    );
    Ok(())
}

/// Writes a one-file layer (`etc/bench-one-file`) on `parent` and returns its id.
fn one_file_layer(bin: &Path, url: &str, parent: &str, dir: &Path) -> Result<String> {
    let path = dir.join("one-file.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&path)?);
    let mut h = tar::Header::new_gnu();
    let data = b"one more file\n";
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    b.append_data(&mut h, "etc/bench-one-file", &data[..])?;
    b.into_inner()?.sync_all()?;
    let id = format!("{parent}-plus-one");
    run(Command::new(bin)
        .args([
            "--url",
            url,
            "image",
            "write",
            "--store",
            "bench",
            "--parent",
            parent,
            "--id",
            &id,
            "--sum",
            &sha256_file(&path)?,
        ])
        .arg(&path)
        .stdout(Stdio::null()))?;
    Ok(id)
}

/// `cargo xtask bench export`.
pub fn export() -> Result<()> {
    let bin = build()?;
    let fx = fixture::debian()?;
    let dir = work_dir("bench-export")?;
    let ids = store_with_chain(&bin, &dir.join("store"), &fx.layers)?;
    let url = format!("file://{}", dir.join("store").display());
    let top = ids.last().context("no layers")?.clone();
    let on_big = one_file_layer(&bin, &url, &top, &dir)?;
    // The same one-file layer on a tiny base (scratch only).
    let on_tiny = one_file_layer(&bin, &url, "scratch", &dir)?;
    // The tar goes to standard output, which `timed` sends to /dev/null: this measures making
    // the stream, not the disk it would land on.
    let export = |id: &str, ancestor: Option<&str>| -> Result<f64> {
        let mut c = Command::new(&bin);
        c.args(["--url", &url, "export", "--store", "bench", id]);
        if let Some(a) = ancestor {
            c.args(["--ancestor", a]);
        }
        Ok(timed(&mut c)?.secs)
    };
    let (mut diff, mut full, mut tiny) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs().max(5) {
        diff.push(export(&on_big, Some(&top))?);
        tiny.push(export(&on_tiny, Some("scratch"))?);
        full.push(export(&on_big, None)?);
        eprintln!(
            "run {i}: diff {:.4}s, diff on tiny base {:.4}s, full {:.3}s",
            diff[i], tiny[i], full[i]
        );
    }
    let d = median(&mut diff);
    report("export-diff", d, "full-export", median(&mut full));
    report("export-diff", d, "diff-on-tiny-base", median(&mut tiny));
    println!("TIME name=export-diff ms={:.1}", d * 1000.0);
    Ok(())
}
