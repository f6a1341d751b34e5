//! Helpers for the tests that check disks with the real tools (qemu-img, e2fsprogs).
#![allow(dead_code, clippy::print_stderr)]

pub mod chain;
pub mod store_chain;

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Runs a command, failing with its output unless it exits 0; returns stdout.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `qemu-img check` passes.
pub fn qemu_check(disk: &Path) -> Result<()> {
    let out = run(Command::new("qemu-img")
        .args(["check", "-f", "vmdk"])
        .arg(disk))?;
    if !out.contains("No errors were found") {
        bail!("qemu-img check {}: {out}", disk.display());
    }
    Ok(())
}

/// `qemu-img info --backing-chain` as JSON, one object per disk, top first.
pub fn backing_info(disk: &Path) -> Result<Vec<serde_json::Value>> {
    let out = run(Command::new("qemu-img")
        .args(["info", "--backing-chain", "--output=json", "-f", "vmdk"])
        .arg(disk))?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let arr = v.as_array().context("info is not an array")?.clone();
    Ok(arr)
}

/// The file names of `qemu-img info --backing-chain`, top first.
pub fn backing_chain(disk: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for d in backing_info(disk)? {
        if d["format"] != "vmdk" {
            bail!("not vmdk: {d}");
        }
        let f = d["filename"].as_str().context("no filename")?;
        names.push(
            Path::new(f)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
    }
    Ok(names)
}

/// The create types `qemu-img info --backing-chain` reports, top first.
pub fn create_types(disk: &Path) -> Result<Vec<String>> {
    backing_info(disk)?
        .iter()
        .map(|d| {
            d["format-specific"]["data"]["create-type"]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("no create type in {d}"))
        })
        .collect()
}

/// `qemu-img convert -O raw` of a disk (and its chain).
pub fn to_raw(disk: &Path, raw: &Path) -> Result<()> {
    run(Command::new("qemu-img")
        .args(["convert", "-f", "vmdk", "-O", "raw"])
        .arg(disk)
        .arg(raw))?;
    Ok(())
}

/// `e2fsck -fn` finds the filesystem clean.
pub fn e2fsck_clean(raw: &Path) -> Result<()> {
    run(Command::new("e2fsck").arg("-fn").arg(raw))?;
    Ok(())
}

/// `debugfs -R CMD raw` stdout.
pub fn debugfs(raw: &Path, cmd: &str) -> Result<String> {
    run(Command::new("debugfs").arg("-R").arg(cmd).arg(raw))
}
