//! `cargo xtask dist [--deb]`: the release of the CLI with every backend, as an archive (the
//! binary, man pages, completions, the sample image, README, LICENSE, CHANGELOG and a
//! CycloneDX SBOM), its debug file, optionally a Debian package, and `SHA256SUMS`; all
//! byte-reproducible from a commit. `cargo xtask ci-dist` builds and checks them;
//! `cargo xtask release-check` adds what only a release needs (see docs/releasing.md).

mod check;
mod compile;
mod deb;
mod payload;
mod release_check;
mod sbom;
mod tree;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

pub use check::ci_dist;
pub use compile::{WRAPPER_VAR, rustc_wrapper};
pub use release_check::release_check;

use compile::{Compiled, Source};
use payload::Payload;
use tree::{Tree, gzip};

/// Where the project lives; the same URL as `repository` in the workspace `Cargo.toml`.
pub const REPOSITORY: &str = "https://github.com/imagestore-rs/imagestore";

/// The released binary may not grow past this (bytes).
pub const MAX_BINARY_BYTES: u64 = 25_000_000;

/// The files of one release and what making them cost.
#[derive(Debug)]
pub struct Release {
    /// The folder holding them.
    pub dir: PathBuf,
    /// `imagestore-<version>-<target>`: the archive's top folder and the stem of its name.
    pub name: String,
    /// The archive.
    pub archive: PathBuf,
    /// The debug file beside it.
    pub debug: PathBuf,
    /// The Debian package, if asked for.
    pub deb: Option<PathBuf>,
    /// `SHA256SUMS` of the files above.
    pub sums: PathBuf,
    /// Size of the stripped binary, bytes.
    pub binary_bytes: u64,
    /// The build as cargo reported it.
    pub compiled: Compiled,
    /// Seconds per step: `(step, seconds)`.
    pub timings: Vec<(&'static str, f64)>,
}

/// The workspace version.
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// The archive's tree: a prefix to copy under `/usr/local` or `/opt/...`, documents at the top.
fn archive_tree(p: &Payload) -> Result<Tree> {
    let mut t = p.tree(&payload::Layout {
        binary: "bin/imagestore",
        man: "share/man/man1",
        completions: [
            "share/bash-completion/completions",
            "share/zsh/site-functions",
            "share/fish/vendor_completions.d",
        ],
        sample: "share/imagestore/samples/debian-mini",
    })?;
    for (name, data) in &p.docs {
        t.file(name, data.clone())?;
    }
    t.file("sbom.cdx.json", p.sbom.clone())?;
    Ok(t)
}

fn write(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}

/// Builds a release of `src` into `out` (emptied first), with cargo's outputs in `target_dir`.
pub fn release(src: &Source, target_dir: &Path, out: &Path, with_deb: bool) -> Result<Release> {
    let target = compile::host_triple()?;
    let name = format!("imagestore-{}-{target}", version());
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("emptying {}", out.display()))?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    // Build outputs that are not part of the release (the stripped binary the checks run,
    // generated pages): beside `out`, kept until the next release into it.
    let work = out.with_extension("work");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("emptying {}", work.display()))?;
    }
    let mut timings = Vec::new();

    let started = Instant::now();
    let compiled = compile::compile(src, target_dir, &work, &format!("{name}.debug"))?;
    timings.push((
        "cargo build --profile dist + objcopy",
        started.elapsed().as_secs_f64(),
    ));

    let started = Instant::now();
    let payload = payload::gather(src, &compiled, &target, &work)?;
    let archive = out.join(format!("{name}.tar.gz"));
    write(
        &archive,
        &gzip(&archive_tree(&payload)?.tar(&format!("{name}/"), src.epoch)?)?,
    )?;
    let debug = out.join(format!("{name}.debug"));
    std::fs::copy(&compiled.debug, &debug)
        .with_context(|| format!("copying {}", compiled.debug.display()))?;
    timings.push((
        "man pages, completions, SBOM, archive",
        started.elapsed().as_secs_f64(),
    ));

    let deb = if with_deb {
        let started = Instant::now();
        let (file, bytes) = deb::build(
            &payload,
            &compiled.binary,
            &src.root,
            version(),
            src.epoch,
            &work,
        )?;
        let path = out.join(file);
        write(&path, &bytes)?;
        timings.push(("Debian package", started.elapsed().as_secs_f64()));
        Some(path)
    } else {
        None
    };

    let mut sums = String::new();
    for p in [Some(&archive), Some(&debug), deb.as_ref()]
        .into_iter()
        .flatten()
    {
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        let file = p.file_name().map(|f| f.to_string_lossy().into_owned());
        let _ = writeln!(
            sums,
            "{:x}  {}",
            Sha256::digest(&bytes),
            file.unwrap_or_default()
        );
    }
    let sums_path = out.join("SHA256SUMS");
    write(&sums_path, sums.as_bytes())?;
    Ok(Release {
        dir: out.to_path_buf(),
        name,
        archive,
        debug,
        deb,
        sums: sums_path,
        binary_bytes: payload.binary.len() as u64,
        compiled,
        timings,
    })
}

/// Where `cargo xtask ci-dist` copies the sources for its second build:
/// `target/xtask/dist-repro/src`, its release beside in `artifacts/`.
pub fn copy_dir() -> Result<PathBuf> {
    crate::util::work_dir("dist-repro")
}

/// The workspace's crates in the binary.
const WORKSPACE_CRATES: [&str; 9] = release_check::PUBLISHED;

/// Removes the release-profile outputs of the workspace's crates that a build of the copied
/// sources left in the shared target folder, and the copy.
///
/// Cargo names a workspace crate's outputs by its path relative to the workspace root, so
/// both source trees write the same files; after a build of the copy, cargo would take the
/// copy's outputs for up to date in the original tree (its sources are older). Only the
/// dependencies are meant to be shared.
pub fn forget_copy_build() -> Result<()> {
    let copy = copy_dir()?.join("src");
    if !copy.exists() {
        return Ok(());
    }
    let mut clean = crate::util::cargo();
    clean
        .args(["clean", "--profile", compile::PROFILE])
        .env("CARGO_TARGET_DIR", crate::util::target_dir()?);
    for c in WORKSPACE_CRATES {
        clean.args(["-p", c]);
    }
    crate::util::run(&mut clean)?;
    std::fs::remove_dir_all(&copy).with_context(|| format!("removing {}", copy.display()))
}

/// Where `cargo xtask dist` puts a release: `target/artifacts/`.
pub fn artifacts_dir() -> Result<PathBuf> {
    Ok(crate::util::target_dir()?.join("artifacts"))
}

/// `cargo xtask dist [--deb]`.
pub fn dist(with_deb: bool) -> Result<()> {
    forget_copy_build()?;
    let src = Source::of_git(&crate::util::root())?;
    let r = release(
        &src,
        &crate::util::target_dir()?,
        &artifacts_dir()?,
        with_deb,
    )?;
    report(&r);
    for p in [
        Some(&r.archive),
        Some(&r.debug),
        r.deb.as_ref(),
        Some(&r.sums),
    ]
    .into_iter()
    .flatten()
    {
        println!("{}", p.display());
    }
    Ok(())
}

/// Prints the size and the timings of a release on stderr.
fn report(r: &Release) {
    eprintln!(
        "dist: {} binary {:.1} MB (limit {:.0} MB), commit build {}",
        r.name,
        r.binary_bytes as f64 / 1e6,
        MAX_BINARY_BYTES as f64 / 1e6,
        if r.compiled.fresh {
            "up to date"
        } else {
            "linked"
        }
    );
    for (step, secs) in &r.timings {
        eprintln!("dist:   {step}: {secs:.1} s");
    }
}
