//! Builds disks from the command line, for `cargo xtask bench vmdk`:
//!
//! * `vmdk_build scratch OUT.vmdk [CAPACITY_KIB]` — the scratch disk;
//! * `vmdk_build layer PARENT.vmdk OUT.vmdk LOWER.tar.gz... TOP.tar.gz` — the delta disk of
//!   the last (gzip) layer tar; the others are the layers the parent already holds.
//!
//! Prints one JSON line: the disk's size, grains, and the apply's counts.
#![allow(clippy::print_stdout)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use imagestore_core::layer::chain::{ChainView, LayerToc, MemoryToc};
use imagestore_core::layer::ingest::{IngestLimits, read_toc};
use imagestore_core::layer::toc::Toc;
use imagestore_vsphere::layer::{DEFAULT_CAPACITY_KIB, build_layer, build_scratch};

/// Decompresses a gzip layer once into the work folder, so the TOC pass and the apply read
/// a plain tar.
fn plain(p: &Path, work: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(work)?;
    let out = work.join(format!(
        "{}.tar",
        p.file_name().context("layer file name")?.to_string_lossy()
    ));
    let mut gz = flate2::read::GzDecoder::new(std::io::BufReader::new(File::open(p)?));
    std::io::copy(&mut gz, &mut File::create(&out)?)?;
    Ok(out)
}

fn toc(p: &Path, lower: &[Arc<Toc>]) -> Result<Arc<Toc>> {
    let view = ChainView::new(
        lower
            .iter()
            .map(|t| Arc::new(MemoryToc::new(t.clone())) as Arc<dyn LayerToc>)
            .collect(),
    );
    let r = std::io::BufReader::new(File::open(p)?);
    Ok(Arc::new(read_toc(r, &view, IngestLimits::default())?))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let work = std::env::var_os("VMDK_WORK")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("vmdk-build-work"));
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["scratch", out, rest @ ..] => {
            let kib = match rest.first() {
                Some(k) => k.parse().context("capacity in KiB")?,
                None => DEFAULT_CAPACITY_KIB,
            };
            let out = Path::new(out);
            let name = out
                .file_name()
                .context("output file name")?
                .to_string_lossy()
                .into_owned();
            let s = build_scratch(out, &name, kib, &work)?;
            println!("{{\"bytes\":{},\"grains\":{}}}", s.bytes, s.grains);
        }
        ["layer", parent, out, layers @ ..] if !layers.is_empty() => {
            let mut paths = Vec::new();
            for l in layers.iter() {
                paths.push(plain(Path::new(l), &work)?);
            }
            let mut tocs = Vec::new();
            for p in &paths {
                let t = toc(p, &tocs)?;
                tocs.push(t);
            }
            let top = tocs.pop().context("no layers")?;
            let parent = Path::new(parent);
            let hint = format!(
                "../{}/{}",
                parent
                    .parent()
                    .and_then(Path::file_name)
                    .context("parent folder")?
                    .to_string_lossy(),
                parent.file_name().context("parent file")?.to_string_lossy()
            );
            let top_tar = paths.last().context("no layers")?;
            let s = build_layer(
                parent,
                &hint,
                Path::new(out),
                &tocs,
                top,
                Some(top_tar),
                &work,
            )?;
            for p in paths {
                let _ = std::fs::remove_file(p);
            }
            println!(
                "{{\"bytes\":{},\"grains\":{},\"commands\":{},\"file_bytes\":{}}}",
                s.disk.bytes, s.disk.grains, s.apply.commands, s.apply.bytes
            );
        }
        _ => bail!("usage: vmdk_build scratch OUT [KIB] | layer PARENT OUT LAYER.tar.gz..."),
    }
    Ok(())
}
