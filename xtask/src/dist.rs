//! `cargo xtask dist`: a release build of the CLI with every backend, as a tarball with its
//! sha256.

use std::fs::File;
use std::io::Write;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::util::root;

/// Builds `target/dist/imagestore-<version>-<target>.tar.gz` and a `.sha256` beside it.
pub fn dist() -> Result<()> {
    let bin = crate::util::release_cli(Some("full"))?;
    let version = env!("CARGO_PKG_VERSION");
    let name = format!("imagestore-{version}-{}-linux", std::env::consts::ARCH);
    let dist = root().join("target").join("dist");
    std::fs::create_dir_all(&dist)?;
    let tarball = dist.join(format!("{name}.tar.gz"));
    let f = File::create(&tarball).with_context(|| format!("creating {}", tarball.display()))?;
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        f,
        flate2::Compression::best(),
    ));
    tar.mode(tar::HeaderMode::Deterministic);
    tar.append_path_with_name(&bin, format!("{name}/bin/imagestore"))
        .context("adding the binary")?;
    for doc in ["README.md", "LICENSE"] {
        let p = root().join(doc);
        if p.exists() {
            tar.append_path_with_name(&p, format!("{name}/{doc}"))?;
        }
    }
    let extra = root().join("target/dist/extra");
    if extra.exists() {
        tar.append_dir_all(format!("{name}/share"), &extra)?;
    }
    tar.into_inner()?.finish()?.sync_all()?;
    let bytes = std::fs::read(&tarball)?;
    let sum = format!("{:x}", Sha256::digest(&bytes));
    let sum_file = dist.join(format!("{name}.tar.gz.sha256"));
    let mut f = File::create(&sum_file)?;
    writeln!(f, "{sum}  {name}.tar.gz")?;
    println!("{}", tarball.display());
    println!("{}", sum_file.display());
    Ok(())
}
