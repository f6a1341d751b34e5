//! The read-back before a disk commit (`verify::check_applied`) passes on what debugfs wrote
//! and fails, naming the path and the field, when the filesystem differs from the layer.

mod common;

use std::sync::Arc;

use anyhow::{Result, bail};
use common::*;
use imagestore::Error;
use imagestore::layer::ingest::{IngestLimits, toc_of_slice};
use imagestore::layer::validate::EmptyView;
use imagestore_vsphere::ext4::{self, LayerData};
use imagestore_vsphere::verify::check_applied;

#[test]
fn read_back_finds_what_the_filesystem_does_not_hold() -> Result<()> {
    if !have(&["debugfs", "mke2fs"]) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let work = dir.path().join("work");
    std::fs::create_dir(&work)?;
    let raw = dir.path().join("fs.raw");
    ext4::make_scratch(&raw, 64 << 20, &work)?;
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_size(5);
    h.set_mtime(1_600_000_000);
    b.append_data(&mut h, "app/file", &b"hello"[..])?;
    let bytes = b.into_inner()?;
    let tar = dir.path().join("layer.tar");
    std::fs::write(&tar, &bytes)?;
    let top = Arc::new(toc_of_slice(&bytes, &EmptyView, IngestLimits::default())?);
    let lower = vec![Arc::new(ext4::skeleton())];
    ext4::apply(&raw, &lower, top.clone(), LayerData::Tar(&tar), &work)?;
    let checked = check_applied(&raw, &lower, &top)?;
    if checked.bytes != 5 {
        bail!("read back {} bytes of file data, not 5", checked.bytes);
    }
    for (change, field) in [
        ("sif /app/file mode 0100600", "mode"),
        ("sif /app/file mtime @1600000001", "mtime"),
        ("rm /app/file", "missing"),
    ] {
        let changed = dir.path().join("changed.raw");
        std::fs::copy(&raw, &changed)?;
        run(std::process::Command::new("debugfs")
            .args(["-w", "-R", change])
            .arg(&changed))?;
        match check_applied(&changed, &lower, &top) {
            Err(Error::InvalidArgument(m)) if m.contains("/app/file") && m.contains(field) => {}
            other => bail!("after {change}: expected a mismatch naming {field}, got {other:?}"),
        }
    }
    Ok(())
}
