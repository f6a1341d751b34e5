//! `cargo xtask release-check [--baseline-rev REV]`: what the release procedure runs before
//! tagging (docs/releasing.md), too slow or too dependent on the registry for every CI run:
//! the public API against the previous release (cargo-semver-checks, installed if missing),
//! `cargo publish --dry-run` of the crates in dependency order, the CHANGELOG entry, and a
//! release build from scratch in a target folder of its own (no dependency output shared)
//! that must match `target/artifacts/`, as `cargo xtask ci-dist` left it.

use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

use super::compile::Source;
use crate::util::{cargo, root, run, work_dir};

/// The crates published to crates.io, in dependency order: the workspace's crates the
/// binary is built from.
pub const PUBLISHED: [&str; 9] = [
    "imagestore-core",
    "imagestore-local",
    "imagestore-s3",
    "imagestore-vsphere",
    "imagestore-remote",
    "imagestore",
    "imagestore-oci",
    "imagestore-server",
    "imagestore-cli",
];

/// The newest `v*` tag reachable from HEAD.
fn previous_tag() -> Result<Option<String>> {
    let out = Command::new("git")
        .args(["describe", "--tags", "--abbrev=0", "--match", "v*", "HEAD"])
        .current_dir(root())
        .output()
        .context("running git describe")?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string()))
}

/// `cargo semver-checks` of the library crates against `baseline`.
fn semver(baseline: &str) -> Result<()> {
    if !Command::new("cargo")
        .args(["semver-checks", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        run(cargo().args(["install", "--locked", "cargo-semver-checks"]))?;
    }
    let mut cmd = cargo();
    cmd.args(["semver-checks", "check-release", "--baseline-rev", baseline]);
    cmd.arg("--all-features");
    // The CLI is a binary: its interface is its command line, not a Rust API.
    for p in PUBLISHED.iter().filter(|p| **p != "imagestore-cli") {
        cmd.args(["-p", p]);
    }
    run(&mut cmd)
}

/// The CHANGELOG has a section for this version.
fn changelog() -> Result<()> {
    let path = root().join("CHANGELOG.md");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let want = format!("## [{}] - ", env!("CARGO_PKG_VERSION"));
    let dated = text.lines().any(|l| {
        l.strip_prefix(&want).is_some_and(|date| {
            date.len() == 10
                && date.bytes().enumerate().all(|(i, b)| {
                    if i == 4 || i == 7 {
                        b == b'-'
                    } else {
                        b.is_ascii_digit()
                    }
                })
        })
    });
    ensure!(
        dated,
        "CHANGELOG.md has no `{want}YYYY-MM-DD` section (the release date replaces `unreleased`)"
    );
    Ok(())
}

/// `cargo xtask release-check [--baseline-rev REV]`.
pub fn release_check(baseline: Option<&str>) -> Result<()> {
    let src = Source::of_git(&root())?;
    ensure!(
        !src.commit.ends_with("-dirty"),
        "the work tree has uncommitted changes; a release is made from a commit"
    );
    changelog()?;
    match baseline.map(str::to_string).or(previous_tag()?) {
        Some(rev) => semver(&rev)?,
        None => eprintln!(
            "release-check: no v* tag before HEAD and no --baseline-rev: the first release has no API to compare with"
        ),
    }
    let mut publish = cargo();
    publish.args(["publish", "--dry-run", "--locked"]);
    for p in PUBLISHED {
        publish.args(["-p", p]);
    }
    run(&mut publish)?;

    let artifacts = super::artifacts_dir()?;
    if !artifacts.join("SHA256SUMS").is_file() {
        bail!(
            "no release in {} to compare with; run `cargo xtask ci-dist` first",
            artifacts.display()
        );
    }
    let scratch = work_dir("release-check")?;
    let fresh_target = scratch.join("target");
    if fresh_target.exists() {
        std::fs::remove_dir_all(&fresh_target)
            .with_context(|| format!("removing {}", fresh_target.display()))?;
    }
    let again = super::release(&src, &fresh_target, &scratch.join("artifacts"), true)?;
    let ours = std::fs::read_to_string(&again.sums)?;
    let theirs = std::fs::read_to_string(artifacts.join("SHA256SUMS"))?;
    ensure!(
        ours == theirs,
        "a build from scratch differs from target/artifacts:\n{ours}\nvs\n{theirs}"
    );
    eprintln!("release-check: passed; the release is\n{ours}");
    Ok(())
}
